package exchange

import (
	"context"

	"github.com/gofiber/fiber/v2"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/bookings"

	"github.com/keyrelay/keyrelay/tenants/web"
)

// Handlers serve /box/v1's exchange calls and the booking page's "Open".
type Handlers struct {
	svc   *Service
	scope *tenants.Scope
}

// NewHandlers returns the handlers.
func NewHandlers(svc *Service, scope *tenants.Scope) *Handlers {
	return &Handlers{svc: svc, scope: scope}
}

// OpenFromPage handles POST /b/{token}/open: the visitor's booking page
// opens the key's bin with the code on the box's screen.
func (h *Handlers) OpenFromPage(c *fiber.Ctx) error {
	tok := c.Params("token")
	tenantID, ok := bookings.TenantOfURLToken(tok)
	if !ok {
		return tenants.NotFound("booking")
	}
	var in OpenInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	var res Result
	err := h.scope.Do(c.UserContext(), tenantID, func(ctx context.Context) error {
		var err error
		res, err = h.svc.OpenFromPage(ctx, tok, in)
		return err
	})
	if err != nil {
		return err
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(res)
}

// Pickup handles POST /box/v1/pickups.
func (h *Handlers) Pickup(c *fiber.Ctx) error {
	var in PickupInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	res, err := h.svc.Pickup(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.JSON(res)
}

// Verify handles POST /box/v1/pickups/verify.
func (h *Handlers) Verify(c *fiber.Ctx) error {
	var in VerifyInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	res, err := h.svc.Verify(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.JSON(res)
}

// Dropoff handles POST /box/v1/dropoffs.
func (h *Handlers) Dropoff(c *fiber.Ctx) error {
	var in DropoffInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	res, err := h.svc.Dropoff(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.JSON(res)
}

// Events handles POST /box/v1/events.
func (h *Handlers) Events(c *fiber.Ctx) error {
	var in EventsInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	res, err := h.svc.Record(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.JSON(res)
}
