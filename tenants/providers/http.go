package providers

import (
	"github.com/gofiber/fiber/v2"

	"github.com/keyrelay/keyrelay/tenants/web"
)

// Handlers serves GET/PUT /providers.
type Handlers struct{ store *Store }

// NewHandlers returns the provider handlers.
func NewHandlers(s *Store) *Handlers { return &Handlers{store: s} }

// Get handles GET /providers.
func (h *Handlers) Get(c *fiber.Ctx) error {
	vs, err := h.store.Views(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"items": vs})
}

// Put handles PUT /providers: {"sms": {...}, "email": {...}}; channels not
// named keep their route.
func (h *Handlers) Put(c *fiber.Ctx) error {
	var in map[string]RouteInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	if err := h.store.Put(c.UserContext(), in); err != nil {
		return err
	}
	return h.Get(c)
}
