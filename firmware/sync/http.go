package boxsync

import (
	"github.com/gofiber/fiber/v2"

	"github.com/keyrelay/keyrelay/tenants/web"
)

// Handlers serve /box/v1/sync.
type Handlers struct{ svc *Service }

// NewHandlers returns the handlers.
func NewHandlers(svc *Service) *Handlers { return &Handlers{svc: svc} }

// Ingest handles POST /box/v1/sync.
func (h *Handlers) Ingest(c *fiber.Ctx) error {
	var in Batch
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	res, err := h.svc.Ingest(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.JSON(res)
}

// State handles GET /box/v1/sync.
func (h *Handlers) State(c *fiber.Ctx) error {
	st, err := h.svc.State(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(st)
}
