package devices

import (
	"encoding/base64"

	"github.com/gofiber/fiber/v2"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/web"
)

// Handlers serve the device-identity calls of /api/v1 and /box/v1.
type Handlers struct{ svc *Service }

// NewHandlers returns the handlers.
func NewHandlers(svc *Service) *Handlers { return &Handlers{svc: svc} }

// IssueToken handles POST /api/v1/boxes/{id}/provisioning-token.
func (h *Handlers) IssueToken(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "box")
	if err != nil {
		return err
	}
	tok, err := h.svc.IssueToken(c.UserContext(), id)
	if err != nil {
		return err
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Status(fiber.StatusCreated).JSON(tok)
}

// Revoke handles DELETE /api/v1/boxes/{id}/credential.
func (h *Handlers) Revoke(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "box")
	if err != nil {
		return err
	}
	if err := h.svc.Revoke(c.UserContext(), id); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// ProvisionInput is what a box sends once.
type ProvisionInput struct {
	Token string `json:"token"`
	// PublicKey is the box's ed25519 public key, base64.
	PublicKey string `json:"public_key"`
}

// Provision handles POST /box/v1/provision.
func (h *Handlers) Provision(c *fiber.Ctx) error {
	var in ProvisionInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	pub, err := base64.StdEncoding.DecodeString(in.PublicKey)
	if err != nil {
		return tenants.Invalid(tenants.FieldError{Field: "public_key", Message: "must be base64"})
	}
	out, err := h.svc.Provision(c.UserContext(), in.Token, pub)
	if err != nil {
		return err
	}
	// The box secret is in this answer: no cache may keep it.
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Status(fiber.StatusCreated).JSON(out)
}

// Whoami handles GET /box/v1/me.
func (h *Handlers) Whoami(c *fiber.Ctx) error {
	me, err := h.svc.Whoami(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(me)
}
