package inventory

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm/clause"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// WhereaboutsInput is where a member of staff found a key: in a bin
// (BoxID and Bin), out (with the access that has it, or, without one,
// held at the desk), or missing. Note goes to the audit log.
type WhereaboutsInput struct {
	State    State   `json:"state"`
	BoxID    *string `json:"box_id"`
	Bin      *int    `json:"bin"`
	AccessID *string `json:"access_id"`
	Note     string  `json:"note"`
}

// SetWhereabouts corrects where a key is, by hand: a key handed back at
// the desk, found in another bin, or lost. Boxes correct the records on
// their own only when a bin closes; this is the way for everything a box
// does not see. Staff and up, within their locations (the key's home box,
// and the box it is put in). The key's open flags that the correction
// settles are resolved with it; everything is audited in the one
// transaction.
func (s *Service) SetWhereabouts(ctx context.Context, id uuid.UUID, in WhereaboutsInput) (Key, error) {
	p, err := staff(ctx)
	if err != nil {
		return Key{}, err
	}
	var v tenants.Validator
	note, ok := cleanNote(in.Note)
	v.Check(ok, "note", noteRule)
	var boxID, accessID uuid.UUID
	switch in.State {
	case InBin:
		if in.BoxID != nil {
			boxID, ok = parseRef(*in.BoxID)
			v.Check(ok, "box_id", "must be the id of a box")
		} else {
			v.Add("box_id", "is required with state in_bin")
		}
		v.Check(in.Bin != nil, "bin", "is required with state in_bin")
		v.Check(in.Bin == nil || *in.Bin >= 1, "bin", "must be a bin number of the box, from 1")
		v.Check(in.AccessID == nil, "access_id", "is only for state out")
	case Out, Missing:
		v.Check(in.BoxID == nil, "box_id", "is only for state in_bin")
		v.Check(in.Bin == nil, "bin", "is only for state in_bin")
		if in.AccessID != nil {
			boxless := in.State == Out
			v.Check(boxless, "access_id", "is only for state out")
			if boxless {
				accessID, ok = parseRef(*in.AccessID)
				v.Check(ok, "access_id", "must be the id of a booking or ongoing access of this key")
			}
		}
	default:
		v.Add("state", "must be in_bin, out or missing")
	}
	if err := v.Err(); err != nil {
		return Key{}, err
	}
	k, _, err := loadKey(ctx, p, id, "UPDATE")
	if err != nil {
		return Key{}, err
	}
	was := k
	now := s.now()
	outBy := ""
	var box Box
	k.BoxID, k.Bin, k.OutAccessID, k.OutSince, k.OutUntil = nil, nil, nil, nil, nil
	switch in.State {
	case InBin:
		// Held until the key is in, so that the box cannot shrink or be
		// archived under it.
		if box, err = loadBox(ctx, p, boxID, "SHARE"); err != nil {
			return Key{}, err
		}
		bin := *in.Bin
		if bin > box.Bins {
			return Key{}, tenants.Invalid(tenants.FieldError{Field: "bin", Message: fmt.Sprintf("must be from 1 to %d (the bins of box %q)", box.Bins, box.Name)})
		}
		if err := binEmpty(ctx, p, box, bin, k.ID); err != nil {
			return Key{}, err
		}
		k.BoxID, k.Bin = &box.ID, &bin
	case Out:
		outBy = p.Actor()
		if accessID != uuid.Nil {
			until, err := s.access.AccessEnd(ctx, k.ID, accessID)
			if tenants.ErrorCode(err) == tenants.ENotFound {
				return Key{}, tenants.Invalid(tenants.FieldError{Field: "access_id", Message: "must be the id of a booking or ongoing access of this key"})
			}
			if err != nil {
				return Key{}, wrap("read access", err)
			}
			k.OutAccessID, k.OutUntil, outBy = &accessID, until, "booking:"+accessID.String()
		}
		// A key out already keeps the time it left: what is corrected is
		// who holds it.
		k.OutSince = &now
		if was.State == Out && was.OutSince != nil {
			k.OutSince = was.OutSince
		}
	}
	k.State, k.UpdatedAt = in.State, now
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Key{}, err
	}
	err = tx.Model(&Key{}).Where("id = ?", k.ID).Updates(map[string]any{
		"state": k.State, "box_id": k.BoxID, "bin": k.Bin, "out_access_id": k.OutAccessID, "out_since": k.OutSince,
		"out_until": k.OutUntil, "out_by": nullIfEmpty(outBy), "updated_at": now}).Error
	if err != nil {
		return Key{}, keyWriteError("set whereabouts", err, box, deref(k.Bin), k.FobSerial)
	}
	if err := s.followReminders(ctx, was, k); err != nil {
		return Key{}, err
	}
	if k.PickupBoxID() != was.PickupBoxID() {
		if err := s.access.KeysMoved(ctx, []uuid.UUID{k.ID}); err != nil {
			return Key{}, wrap("follow reminders", err)
		}
	}
	resolved, err := s.settleFlags(ctx, p, k, note, now)
	if err != nil {
		return Key{}, err
	}
	details := map[string]string{"from": placeOf(was), "to": placeOf(k)}
	if note != "" {
		details["note"] = note
	}
	if len(resolved) > 0 {
		details["resolved_flags"] = strings.Join(resolved, ",")
	}
	return k, audit.Record(ctx, p.Actor(), "key.whereabouts_set", "key:"+k.ID.String(), details)
}

// followReminders tells bookings that the access that held the key no
// longer does (its waiting return reminder is called off) and that the
// access now holding it does (its reminder is queued again). A key
// declared missing calls nothing off: nobody knows it is back.
func (s *Service) followReminders(ctx context.Context, was, is Key) error {
	held := func(k Key) uuid.UUID {
		if k.State == Out && k.OutAccessID != nil {
			return *k.OutAccessID
		}
		return uuid.Nil
	}
	before, after := held(was), held(is)
	if before == after {
		return nil
	}
	if before != uuid.Nil && is.State != Missing {
		if err := s.access.KeysReturned(ctx, []uuid.UUID{before}); err != nil {
			return wrap("call off return reminder", err)
		}
	}
	if after != uuid.Nil {
		if err := s.access.KeysTaken(ctx, []uuid.UUID{after}); err != nil {
			return wrap("queue return reminder", err)
		}
	}
	return nil
}

// settleFlags resolves the open flags about k that its new whereabouts
// answer, in the boxes the caller sees, and returns their ids. Every flag
// naming a key asks where that key is; a key declared missing answers all
// but missing_key, which stays open until the key is found.
func (s *Service) settleFlags(ctx context.Context, p tenants.Principal, k Key, note string, now time.Time) ([]string, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var fs []struct {
		Flag
		LocationID *uuid.UUID
	}
	q := tx.Table("inventory_flags f").Select("f.*, b.location_id").
		Joins("JOIN boxes b ON b.tenant_id = f.tenant_id AND b.id = f.box_id").
		Where("f.key_id = ? AND f.resolved_at IS NULL", k.ID).Order("f.id").
		Clauses(clause.Locking{Strength: "UPDATE", Table: clause.Table{Name: "f"}})
	if k.State == Missing {
		q = q.Where("f.kind <> 'missing_key'")
	}
	if err := q.Scan(&fs).Error; err != nil {
		return nil, wrap("find flags", err)
	}
	var ids []uuid.UUID
	var names []string
	for _, f := range fs {
		if !p.Sees(f.LocationID) {
			continue
		}
		ids = append(ids, f.ID)
		names = append(names, f.ID.String())
		details := map[string]string{"flag": f.ID.String(), "kind": f.Kind, "bin": strconv.Itoa(f.Bin), "by": "key.whereabouts_set"}
		if note != "" {
			details["note"] = note
		}
		if err := audit.Record(ctx, p.Actor(), "inventory.flag_resolved", "box:"+f.BoxID.String(), details); err != nil {
			return nil, err
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	if err := tx.Model(&Flag{}).Where("id IN ?", ids).Update("resolved_at", now).Error; err != nil {
		return nil, wrap("resolve flags", err)
	}
	return names, nil
}

// placeOf says where the records have k, for the audit log.
func placeOf(k Key) string {
	switch {
	case k.State == InBin && k.BoxID != nil && k.Bin != nil:
		return fmt.Sprintf("in_bin box:%s bin:%d", *k.BoxID, *k.Bin)
	case k.State == Out && k.OutAccessID != nil:
		return "out booking:" + k.OutAccessID.String()
	}
	return string(k.State)
}

func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func deref(n *int) int {
	if n == nil {
		return 0
	}
	return *n
}
