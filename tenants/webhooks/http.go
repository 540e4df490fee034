package webhooks

import (
	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/web"
)

// Handlers serves /api/v1/webhooks.
type Handlers struct{ s *Service }

// NewHandlers returns the handlers of s.
func NewHandlers(s *Service) *Handlers { return &Handlers{s: s} }

// Create handles POST /webhooks.
func (h *Handlers) Create(c *fiber.Ctx) error {
	var in Input
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	v, err := h.s.Create(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(v)
}

// List handles GET /webhooks?cursor=&limit=.
func (h *Handlers) List(c *fiber.Ctx) error {
	page, err := web.PageOf(c)
	if err != nil {
		return err
	}
	vs, err := h.s.List(c.UserContext(), page.After, page.Limit)
	if err != nil {
		return err
	}
	return c.JSON(web.NewList(vs, page.Limit, func(v View) uuid.UUID { return v.ID }))
}

// Get handles GET /webhooks/:id.
func (h *Handlers) Get(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "webhook endpoint")
	if err != nil {
		return err
	}
	v, err := h.s.Get(c.UserContext(), id)
	if err != nil {
		return err
	}
	return c.JSON(v)
}

// Delete handles DELETE /webhooks/:id: the endpoint is disabled, its
// history kept.
func (h *Handlers) Delete(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "webhook endpoint")
	if err != nil {
		return err
	}
	if err := h.s.Disable(c.UserContext(), id); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// Deliveries handles GET /webhooks/:id/deliveries?status=&cursor=&limit=.
func (h *Handlers) Deliveries(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "webhook endpoint")
	if err != nil {
		return err
	}
	page, err := web.PageOf(c)
	if err != nil {
		return err
	}
	f := DeliveryFilter{Status: Status(c.Query("status")), After: page.After, Limit: page.Limit}
	switch f.Status {
	case "", Pending, Delivered, Failed:
	default:
		return tenants.Invalid(tenants.FieldError{Field: "status", Message: "must be pending, delivered or failed"})
	}
	ds, err := h.s.Deliveries(c.UserContext(), id, f)
	if err != nil {
		return err
	}
	return c.JSON(web.NewList(ds, page.Limit, func(d DeliveryView) uuid.UUID { return d.ID }))
}
