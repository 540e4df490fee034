package dashboard

import (
	"context"
	"errors"

	"github.com/gofiber/fiber/v2"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/bookings"
)

// visitorPage is GET /b/{token}: what the visitor needs to take and return
// the key, and nothing else of the tenant. The token names its tenant; the
// booking is found by the token in that tenant's scope
// (bookings.Service.ByURLToken), with the same status, code and window as
// the staff's view.
func (d *Dashboard) visitorPage(c *fiber.Ctx) error {
	tok := c.Params("token")
	notFound := func() error {
		return d.render(c.Status(fiber.StatusNotFound), "visitor_missing", "Booking not found", nil)
	}
	tenantID, ok := bookings.TenantOfURLToken(tok)
	if !ok {
		return notFound()
	}
	var v bookings.View
	err := d.Scope.Do(c.UserContext(), tenantID, func(ctx context.Context) error {
		var err error
		v, err = d.Bookings.ByURLToken(ctx, tok)
		return err
	})
	if tenants.ErrorCode(err) == tenants.ENotFound {
		return notFound()
	}
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			d.Log.ErrorContext(c.UserContext(), "visitor page", "error", err.Error())
		}
		return d.render(c.Status(fiber.StatusInternalServerError), "visitor_missing", "Something went wrong", map[string]any{"Broken": true})
	}
	// Only what the visitor needs: the visitor's own contact details and
	// the tenant's ids stay out of the page.
	return d.render(c, "visitor", "Your booking", map[string]any{
		"Token": tok, "KeyName": v.KeyName, "Box": v.Box, "Code": v.Code, "Status": v.Status, "Kind": v.Kind,
		"StartsAt": v.StartsAt, "EndsAt": v.EndsAt, "VisitorName": v.Visitor.Name, "Bare": true,
	})
}
