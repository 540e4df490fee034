package bookings

import (
	"context"
	"fmt"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/guard"
)

// Unlock lifts a booking's lock and clears its failure count after the
// owner was told it locked (ten wrong codes or PINs against it at a box):
// its code and its phone pickups work again. Staff may do it within their locations; it is
// audited, and harmless on a booking that is not locked.
func (s *Service) Unlock(ctx context.Context, id uuid.UUID) (View, error) {
	p, err := staff(ctx)
	if err != nil {
		return View{}, err
	}
	r, err := load(ctx, p, id, false)
	if err != nil {
		return View{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return View{}, err
	}
	if err := tx.Exec(`UPDATE bookings SET locked_at = NULL WHERE id = ? AND locked_at IS NOT NULL`, id).Error; err != nil {
		return View{}, fmt.Errorf("bookings: unlock: %w", err)
	}
	if err := s.locks.Reset(ctx, guard.BookingCode, guard.BookingSubject(p.TenantID.String(), id.String())); err != nil {
		return View{}, err
	}
	if err := audit.Record(ctx, p.Actor(), "booking.unlocked", "booking:"+id.String(), nil); err != nil {
		return View{}, err
	}
	return s.fullView(ctx, r)
}

// Unlock handles POST /bookings/{id}/unlock.
func (h *Handlers) Unlock(c *fiber.Ctx) error {
	return one(c, func(id uuid.UUID) (View, error) { return h.svc.Unlock(c.UserContext(), id) })
}

// Lock locks booking id from at on: the key exchange calls it when a wrong
// second factor reaches guard.BookingCode's limit. Its code and its phone
// pickups then open nothing until Unlock. A booking locked already keeps
// its first time.
func Lock(ctx context.Context, id uuid.UUID, at time.Time) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Exec(`UPDATE bookings SET locked_at = ? WHERE id = ? AND locked_at IS NULL`, at, id).Error; err != nil {
		return fmt.Errorf("bookings: lock: %w", err)
	}
	return nil
}
