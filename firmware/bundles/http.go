package bundles

import (
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/web"
)

// ContentType is a packed bundle's media type (signing.Pack).
const ContentType = "application/vnd.keyrelay.bundle"

// Handlers serve the bundle calls.
type Handlers struct{ svc *Service }

// NewHandlers returns the handlers.
func NewHandlers(svc *Service) *Handlers { return &Handlers{svc: svc} }

// Fetch handles GET /box/v1/bundle: the calling box's signed bundle, or
// 304 when If-None-Match names the current one.
func (h *Handlers) Fetch(c *fiber.Ctx) error {
	p, err := tenants.RequireBox(c.UserContext())
	if err != nil {
		return err
	}
	etag, bundle, err := h.svc.Current(c.UserContext(), p.BoxID)
	if err != nil {
		return err
	}
	c.Set(fiber.HeaderETag, etag)
	// The box revalidates every time; shared caches keep nothing of it.
	c.Set(fiber.HeaderCacheControl, "private, no-cache")
	for _, t := range strings.Split(c.Get(fiber.HeaderIfNoneMatch), ",") {
		if t = strings.TrimSpace(t); t == etag || t == "W/"+etag {
			return c.SendStatus(fiber.StatusNotModified)
		}
	}
	c.Set(fiber.HeaderContentType, ContentType)
	return c.Send(bundle)
}

// Status handles GET /api/v1/boxes/{id}/bundle.
func (h *Handlers) Status(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "box")
	if err != nil {
		return err
	}
	st, err := h.svc.StatusOf(c.UserContext(), id)
	if err != nil {
		return err
	}
	return c.JSON(st)
}
