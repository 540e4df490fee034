package visitors

import (
	"github.com/gofiber/fiber/v2"

	"github.com/keyrelay/keyrelay/tenants/web"
)

// Handlers serves the visitor calls of /api/v1: decode, call the service,
// encode.
type Handlers struct {
	svc *Service
}

// NewHandlers returns the visitor handlers.
func NewHandlers(svc *Service) *Handlers { return &Handlers{svc: svc} }

// Search handles GET /visitors?q=.
func (h *Handlers) Search(c *fiber.Ctx) error {
	items, err := h.svc.Search(c.UserContext(), c.Query("q"))
	if err != nil {
		return err
	}
	return c.JSON(web.List[Summary]{Items: items})
}

// Export handles GET /visitors/{id}/export.
func (h *Handlers) Export(c *fiber.Ctx) error {
	e, err := h.svc.Export(c.UserContext(), c.Params("id"))
	if err != nil {
		return err
	}
	c.Set(fiber.HeaderContentDisposition, `attachment; filename="visitor-`+e.ID+`.json"`)
	return c.JSON(e)
}

// Erase handles DELETE /visitors/{id} {confirm}.
func (h *Handlers) Erase(c *fiber.Ctx) error {
	var in EraseInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	out, err := h.svc.Erase(c.UserContext(), c.Params("id"), in)
	if err != nil {
		return err
	}
	return c.JSON(out)
}
