package visitors

import (
	"context"
	"time"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// Anonymised counts what AnonymiseEnded changed in one tenant.
type Anonymised struct {
	Bookings   int
	AliasCodes int
}

// AnonymiseEnded removes the visitor's name, phone and email from ctx's
// tenant's bookings that ended (or were revoked) before before, and from
// its alias codes retired before then. The booking's key, window and audit
// history stay. It runs as the application role in the tenant's own
// transaction (the retention job opens one per tenant), so the bundle
// triggers run as for any other change. A tenant with nothing due gets no
// audit entry.
func AnonymiseEnded(ctx context.Context, before time.Time) (Anonymised, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Anonymised{}, err
	}
	args := map[string]any{"before": before, "name": AnonymisedName}
	b := tx.Exec(`UPDATE bookings SET visitor_name = @name, visitor_phone = NULL, visitor_email = NULL,
			visitor_anonymised_at = now(), updated_at = now()
		WHERE visitor_anonymised_at IS NULL AND coalesce(revoked_at, ends_at) < @before`, args)
	if b.Error != nil {
		return Anonymised{}, wrap("anonymise bookings", b.Error)
	}
	a := tx.Exec(`UPDATE alias_codes SET visitor_name = @name, visitor_phone = NULL, visitor_email = NULL, visitor_anonymised_at = now()
		WHERE visitor_anonymised_at IS NULL AND retired_at < @before`, args)
	if a.Error != nil {
		return Anonymised{}, wrap("anonymise alias codes", a.Error)
	}
	out := Anonymised{Bookings: int(b.RowsAffected), AliasCodes: int(a.RowsAffected)}
	if out.Bookings+out.AliasCodes == 0 {
		return out, nil
	}
	return out, audit.Record(ctx, "platform", "retention.visitors_anonymised", "", map[string]string{
		"bookings": itoa(out.Bookings), "alias_codes": itoa(out.AliasCodes), "ended_before": before.UTC().Format(time.RFC3339)})
}
