package audit

import (
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/web"
)

// ListHandler handles GET /audit?actor=&action=&since=&cursor=&limit=.
func ListHandler(c *fiber.Ctx) error {
	if _, err := tenants.Require(c.UserContext(), tenants.RoleAdmin); err != nil {
		return err
	}
	page, err := web.PageOf(c)
	if err != nil {
		return err
	}
	f := Filter{Actor: c.Query("actor"), Action: c.Query("action"), After: page.After, Limit: page.Limit}
	if s := c.Query("since"); s != "" {
		if f.Since, err = time.Parse(time.RFC3339, s); err != nil {
			return tenants.Invalid(tenants.FieldError{Field: "since", Message: "must be an RFC 3339 time, e.g. 2026-11-25T00:00:00Z"})
		}
	}
	evs, err := List(c.UserContext(), f)
	if err != nil {
		return err
	}
	return c.JSON(web.NewList(evs, page.Limit, func(e Event) uuid.UUID { return e.ID }))
}
