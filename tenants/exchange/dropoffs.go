package exchange

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/bookings"
	"github.com/keyrelay/keyrelay/tenants/guard"
)

// DropoffInput names the key being returned: by the booking code, or by
// the fob serial the box read.
type DropoffInput struct {
	Code      string     `json:"code,omitempty"`
	FobSerial string     `json:"fob_serial,omitempty"`
	BoxTime   *time.Time `json:"box_time,omitempty"`
}

type keyRow struct {
	ID          uuid.UUID
	Name        string
	State       string
	HomeBoxID   uuid.UUID
	HomeBin     int
	OutAccessID *uuid.UUID
}

// Dropoff gives the box a free bin for a key coming back: the bin this
// key was given here already when it is still free (a visitor trying
// again), else its home bin when this is its home box and the bin is
// free, else a bin no key calls home, else any free bin. A bin held for
// another key's dropoff in progress is not free. The bin is kept with the
// key (dropoff_assignments) so that the box's report of where the key
// went can be checked against it. Accepted after the access ended or was
// revoked: a key must always be able to come back.
func (s *Service) Dropoff(ctx context.Context, in DropoffInput) (Result, error) {
	p, err := tenants.RequireBox(ctx)
	if err != nil {
		return Result{}, err
	}
	code, fob := strings.TrimSpace(in.Code), strings.TrimSpace(in.FobSerial)
	if (code == "") == (fob == "") {
		return Result{}, tenants.Invalid(tenants.FieldError{Field: "code", Message: "send either code or fob_serial"})
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Result{}, err
	}
	var k keyRow
	found := false
	method := "fob"
	if code != "" {
		method = "code"
		// A code typed at the keypad is a guess like any other.
		att, err := s.guard.Begin(ctx, guard.BoxCooldown, boxKey(p))
		if err != nil {
			return Result{}, err
		}
		if digitsOnly(code) && len(code) >= 6 && len(code) <= 16 {
			err = tx.Raw(`SELECT k.id, k.name, k.state, k.home_box_id, k.home_bin, k.out_access_id
				FROM codes c JOIN bookings b ON b.tenant_id = c.tenant_id AND b.code_id = c.id
				JOIN keys k ON k.tenant_id = b.tenant_id AND k.id = b.key_id AND k.deleted_at IS NULL
				WHERE c.code_hash = ? AND c.freed_at IS NULL
				ORDER BY (k.out_access_id = b.id) DESC NULLS LAST, b.id DESC LIMIT 1`,
				bookings.CodeHash(s.keys, p.TenantID, code)).Take(&k).Error
			found = err == nil
			if err != nil && !errors.Is(err, gorm.ErrRecordNotFound) {
				return Result{}, errf("find code: %w", err)
			}
		}
		if !found {
			if err := s.failedAtBox(ctx, p, att); err != nil {
				return Result{}, err
			}
			return denied(UnknownCode), s.record(ctx, p, "dropoff.denied", method, in.BoxTime, map[string]string{"reason": UnknownCode})
		}
		if err := att.Succeeded(ctx); err != nil {
			return Result{}, err
		}
	} else {
		err = tx.Raw(`SELECT id, name, state, home_box_id, home_bin, out_access_id FROM keys WHERE fob_serial = ? AND deleted_at IS NULL`, fob).Take(&k).Error
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return denied(UnknownKey), s.record(ctx, p, "dropoff.denied", method, in.BoxTime, map[string]string{"reason": UnknownKey, "fob_serial": fob})
		}
		if err != nil {
			return Result{}, errf("find fob: %w", err)
		}
	}
	details := map[string]string{"key": k.ID.String()}
	if k.OutAccessID != nil {
		details["booking"] = k.OutAccessID.String()
	}
	if k.State == "in_bin" {
		return denied(NotOut), s.record(ctx, p, "dropoff.denied", method, in.BoxTime, mergeDetails(details, map[string]string{"reason": NotOut}))
	}
	// Choosing and reserving a bin is one step per box at a time: without
	// the lock two dropoffs would both see the same bin free. NO KEY
	// UPDATE leaves the foreign-key checks of other writers unblocked.
	if err := tx.Exec(`SELECT 1 FROM boxes WHERE id = ? FOR NO KEY UPDATE`, p.BoxID).Error; err != nil {
		return Result{}, errf("lock box: %w", err)
	}
	now := s.now()
	bin, err := freeBin(ctx, p.BoxID, k, now)
	if err != nil {
		return Result{}, err
	}
	if bin == 0 {
		return denied(NoFreeBin), s.record(ctx, p, "dropoff.denied", method, in.BoxTime, mergeDetails(details, map[string]string{"reason": NoFreeBin}))
	}
	if err := assign(ctx, p, k.ID, bin, now, now.Add(s.cfg.DropoffHold)); err != nil {
		return Result{}, err
	}
	details["bin"] = strconv.Itoa(bin)
	if err := s.record(ctx, p, "dropoff.opened", method, in.BoxTime, details); err != nil {
		return Result{}, err
	}
	return Result{Result: "open", Bin: &bin, KeyID: &k.ID, AccessID: k.OutAccessID}, nil
}

// freeBin picks the bin for k at boxID, or 0 when none is free. A bin
// is free when no key is in it and no other key's dropoff holds it (an
// assignment not expired, of a key still on its way back).
func freeBin(ctx context.Context, boxID uuid.UUID, k keyRow, now time.Time) (int, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return 0, err
	}
	home := 0
	if k.HomeBoxID == boxID {
		home = k.HomeBin
	}
	var bin int
	err = tx.Raw(`SELECT n FROM boxes bx, generate_series(1, bx.bins) AS n
		WHERE bx.id = @box
		  AND NOT EXISTS (SELECT 1 FROM keys k WHERE k.box_id = bx.id AND k.bin = n AND k.state = 'in_bin' AND k.deleted_at IS NULL)
		  AND NOT EXISTS (SELECT 1 FROM dropoff_assignments a JOIN keys ak ON ak.tenant_id = a.tenant_id AND ak.id = a.key_id
		      WHERE a.box_id = bx.id AND a.bin = n AND a.key_id <> @key AND a.expires_at > @now
		        AND ak.state <> 'in_bin' AND ak.deleted_at IS NULL)
		ORDER BY EXISTS (SELECT 1 FROM dropoff_assignments a WHERE a.key_id = @key AND a.box_id = bx.id AND a.bin = n) DESC,
		  (n = @home) DESC,
		  EXISTS (SELECT 1 FROM keys k WHERE k.home_box_id = bx.id AND k.home_bin = n AND k.deleted_at IS NULL),
		  n
		LIMIT 1`, map[string]any{"box": boxID, "key": k.ID, "now": now, "home": home}).Scan(&bin).Error
	if err != nil {
		return 0, errf("find a free bin: %w", err)
	}
	return bin, nil
}

// assign keeps the bin a dropoff gave keyID, replacing the key's earlier
// assignment. Another key's row on that bin can only be one freeBin let
// go (expired, or its key already in a bin), and it makes way.
func assign(ctx context.Context, p tenants.Principal, keyID uuid.UUID, bin int, now, until time.Time) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Exec(`DELETE FROM dropoff_assignments WHERE box_id = ? AND bin = ? AND key_id <> ?`, p.BoxID, bin, keyID).Error; err != nil {
		return errf("free an old assignment: %w", err)
	}
	err = tx.Exec(`INSERT INTO dropoff_assignments (tenant_id, key_id, box_id, bin, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant_id, key_id) DO UPDATE SET box_id = EXCLUDED.box_id, bin = EXCLUDED.bin, created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at`,
		p.TenantID, keyID, p.BoxID, bin, now, until).Error
	if err != nil {
		return errf("assign bin: %w", err)
	}
	return nil
}

// assignment is where the last dropoff of a key told it to go.
type assignment struct {
	BoxID     uuid.UUID
	Bin       int
	CreatedAt time.Time
}

// assignmentOf returns keyID's assignment, and false when it has none.
func assignmentOf(ctx context.Context, keyID uuid.UUID) (assignment, bool, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return assignment{}, false, err
	}
	var as []assignment
	if err := tx.Raw(`SELECT box_id, bin, created_at FROM dropoff_assignments WHERE key_id = ?`, keyID).Scan(&as).Error; err != nil {
		return assignment{}, false, errf("read assignment: %w", err)
	}
	if len(as) == 0 {
		return assignment{}, false, nil
	}
	return as[0], true, nil
}

// forgetAssignment drops keyID's assignment once the key is in a bin, is
// taken, or is missing: it no longer says where the key is going.
func forgetAssignment(ctx context.Context, keyID uuid.UUID) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Exec(`DELETE FROM dropoff_assignments WHERE key_id = ?`, keyID).Error; err != nil {
		return errf("forget assignment: %w", err)
	}
	return nil
}
