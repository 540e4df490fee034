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

// Dropoff gives the box a free bin for a key coming back: its home bin when
// this is its home box and the bin is free, else a bin no key calls home,
// else any free bin. Accepted after the access ended or was revoked: a
// key must always be able to come back.
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
	bin, err := freeBin(ctx, p.BoxID, k)
	if err != nil {
		return Result{}, err
	}
	if bin == 0 {
		return denied(NoFreeBin), s.record(ctx, p, "dropoff.denied", method, in.BoxTime, mergeDetails(details, map[string]string{"reason": NoFreeBin}))
	}
	details["bin"] = strconv.Itoa(bin)
	if err := s.record(ctx, p, "dropoff.opened", method, in.BoxTime, details); err != nil {
		return Result{}, err
	}
	return Result{Result: "open", Bin: &bin, KeyID: &k.ID, AccessID: k.OutAccessID}, nil
}

// freeBin picks the bin for k at boxID, or 0 when none is free.
func freeBin(ctx context.Context, boxID uuid.UUID, k keyRow) (int, error) {
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
		WHERE bx.id = ?
		  AND NOT EXISTS (SELECT 1 FROM keys k WHERE k.box_id = bx.id AND k.bin = n AND k.state = 'in_bin' AND k.deleted_at IS NULL)
		ORDER BY (n = ?) DESC,
		  EXISTS (SELECT 1 FROM keys k WHERE k.home_box_id = bx.id AND k.home_bin = n AND k.deleted_at IS NULL),
		  n
		LIMIT 1`, boxID, home).Scan(&bin).Error
	if err != nil {
		return 0, errf("find a free bin: %w", err)
	}
	return bin, nil
}
