package bookings

import (
	"context"
	"time"

	"github.com/keyrelay/keyrelay/tenants/webhooks"
)

// emit tells the tenant's webhook endpoints about b, in the transaction of
// the change. The event carries what an integration needs to match the
// booking with its own records, not the visitor's contact details nor the
// code or URL: a receiver reads more with GET /bookings/{id}.
func emit(ctx context.Context, event string, b Booking, now time.Time) error {
	var ends *time.Time
	if b.EndsAt != nil {
		e := b.EndsAt.UTC()
		ends = &e
	}
	return webhooks.Emit(ctx, event, map[string]any{
		"booking_id": b.ID, "key_id": b.KeyID, "kind": b.Kind, "status": b.StatusAt(now),
		"starts_at": b.StartsAt.UTC(), "ends_at": ends, "hold": b.Hold, "alias_code_id": b.AliasCodeID,
	})
}
