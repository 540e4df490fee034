package exchange

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/inventory"
	"github.com/keyrelay/keyrelay/tenants/webhooks"
)

// Event is one thing that happened at the box, as it happened.
//   - bin_opened {bin}
//   - key_taken {bin, access_id?}: the key in that bin left with the person
//     the box just opened it for (access_id from the pickup's answer)
//   - bin_closed {bin, fob_serial}: what the closed bin now holds (null:
//     empty). The server reconciles it with the records.
type Event struct {
	Type      string     `json:"type"`
	Bin       int        `json:"bin"`
	FobSerial *string    `json:"fob_serial,omitempty"`
	AccessID  *uuid.UUID `json:"access_id,omitempty"`
	At        *time.Time `json:"at,omitempty"` // the box's clock
}

// EventsInput is a batch of events, in the order they happened.
type EventsInput struct {
	Events []Event `json:"events"`
}

// MaxEvents bounds one batch.
const MaxEvents = 100

// Flag is an inventory mismatch the tenant should look at.
type Flag struct {
	Kind      string     `json:"kind"` // wrong_bin, wrong_box, unknown_fob, missing_key
	Bin       int        `json:"bin"`
	KeyID     *uuid.UUID `json:"key_id,omitempty"`
	FobSerial *string    `json:"fob_serial,omitempty"`
	Detail    string     `json:"detail"`
}

// Recorded is the answer to a batch: the flags it raised.
type Recorded struct {
	Accepted int    `json:"accepted"`
	Flags    []Flag `json:"flags"`
}

// Record applies a batch of box events to the key records.
func (s *Service) Record(ctx context.Context, in EventsInput) (Recorded, error) {
	p, err := tenants.RequireBox(ctx)
	if err != nil {
		return Recorded{}, err
	}
	var v tenants.Validator
	v.Check(len(in.Events) > 0 && len(in.Events) <= MaxEvents, "events", fmt.Sprintf("must hold 1 to %d events", MaxEvents))
	var bins int
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Recorded{}, err
	}
	if err := tx.Raw(`SELECT bins FROM boxes WHERE id = ?`, p.BoxID).Scan(&bins).Error; err != nil {
		return Recorded{}, errf("load box: %w", err)
	}
	for i, e := range in.Events {
		f := "events[" + strconv.Itoa(i) + "]"
		v.Check(e.Type == "bin_opened" || e.Type == "bin_closed" || e.Type == "key_taken", f+".type", "must be bin_opened, bin_closed or key_taken")
		v.Check(e.Bin >= 1 && e.Bin <= bins, f+".bin", "must be a bin of this box")
		v.Check(e.FobSerial == nil || len(*e.FobSerial) <= 64, f+".fob_serial", "must be at most 64 characters")
	}
	if err := v.Err(); err != nil {
		return Recorded{}, err
	}
	out := Recorded{Flags: []Flag{}}
	for _, e := range in.Events {
		var flags []Flag
		var err error
		switch e.Type {
		case "bin_opened":
			err = s.record(ctx, p, "bin.opened", "box", e.At, map[string]string{"bin": strconv.Itoa(e.Bin)})
		case "key_taken":
			err = s.keyTaken(ctx, p, e)
		case "bin_closed":
			flags, err = s.binClosed(ctx, p, e)
		}
		if err != nil {
			return Recorded{}, err
		}
		out.Flags = append(out.Flags, flags...)
		out.Accepted++
	}
	return out, nil
}

// keyTaken marks the key of a bin as out, with the access that took it
// and until when that access runs (for "overdue").
func (s *Service) keyTaken(ctx context.Context, p tenants.Principal, e Event) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	var k struct{ ID uuid.UUID }
	err = tx.Raw(`SELECT id FROM keys WHERE box_id = ? AND bin = ? AND state = 'in_bin' AND deleted_at IS NULL`, p.BoxID, e.Bin).Take(&k).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		// The records had no key there; the bin_closed report that follows
		// reconciles what is really in the bin.
		return s.record(ctx, p, "key.taken_unrecorded", "box", e.At, map[string]string{"bin": strconv.Itoa(e.Bin)})
	}
	if err != nil {
		return errf("find key: %w", err)
	}
	now := s.now()
	var until *time.Time
	outBy := "box:" + p.BoxID.String()
	if e.AccessID != nil {
		var b struct {
			KeyID  uuid.UUID
			EndsAt *time.Time
		}
		if err := tx.Raw(`SELECT key_id, ends_at FROM bookings WHERE id = ?`, *e.AccessID).Take(&b).Error; err != nil || b.KeyID != k.ID {
			return tenants.Invalid(tenants.FieldError{Field: "access_id", Message: "is not the access of the key in this bin"})
		}
		until, outBy = b.EndsAt, "booking:"+e.AccessID.String()
	}
	if err := tx.Exec(`UPDATE keys SET state = 'out', box_id = NULL, bin = NULL, out_access_id = ?, out_since = ?, out_until = ?, out_by = ?, updated_at = ?
		WHERE id = ?`, e.AccessID, now, until, outBy, now, k.ID).Error; err != nil {
		return errf("mark key out: %w", err)
	}
	if err := forgetAssignment(ctx, k.ID); err != nil {
		return err
	}
	details := map[string]string{"key": k.ID.String(), "bin": strconv.Itoa(e.Bin)}
	if e.AccessID != nil {
		details["booking"] = e.AccessID.String()
		if err := s.reminders.KeysTaken(ctx, []uuid.UUID{*e.AccessID}); err != nil {
			return err
		}
	}
	if err := s.record(ctx, p, "key.picked_up", "box", e.At, details); err != nil {
		return err
	}
	return webhooks.Emit(ctx, webhooks.KeyPickedUp, map[string]any{"key_id": k.ID, "box_id": p.BoxID, "bin": e.Bin,
		"booking_id": e.AccessID, "at": now.UTC(), "due_at": until})
}

type placed struct {
	ID          uuid.UUID
	Name        string
	State       string
	BoxID       *uuid.UUID
	Bin         *int
	HomeBoxID   uuid.UUID
	HomeBin     int
	OutAccessID *uuid.UUID
	OutSince    *time.Time
}

const placedColumns = `id, name, state, box_id, bin, home_box_id, home_bin, out_access_id, out_since`

// binClosed reconciles what a closed bin holds with the records: a key
// coming back is put in, and flagged when it is not where it was expected
// (misplaced); a key found where the records do not have it is moved there
// and flagged; an unknown fob is flagged; a key the records have in an
// empty bin becomes missing and is flagged. The records always follow what
// the box saw: a flag asks someone to look, it does not undo the move.
func (s *Service) binClosed(ctx context.Context, p tenants.Principal, e Event) ([]Flag, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now()
	var recorded placed
	err = tx.Raw(`SELECT `+placedColumns+` FROM keys WHERE box_id = ? AND bin = ? AND state = 'in_bin' AND deleted_at IS NULL`, p.BoxID, e.Bin).Take(&recorded).Error
	hasRecorded := err == nil
	if err != nil && !errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, errf("find bin's key: %w", err)
	}
	var flags []Flag
	if e.FobSerial == nil || *e.FobSerial == "" {
		if !hasRecorded {
			return nil, s.record(ctx, p, "bin.closed", "box", e.At, map[string]string{"bin": strconv.Itoa(e.Bin), "fob_serial": ""})
		}
		if err := tx.Exec(`UPDATE keys SET state = 'missing', box_id = NULL, bin = NULL, updated_at = ? WHERE id = ?`, now, recorded.ID).Error; err != nil {
			return nil, errf("mark key missing: %w", err)
		}
		if err := forgetAssignment(ctx, recorded.ID); err != nil {
			return nil, err
		}
		f := Flag{Kind: "missing_key", Bin: e.Bin, KeyID: &recorded.ID, Detail: fmt.Sprintf("%s should be in bin %d, which is empty", recorded.Name, e.Bin)}
		return []Flag{f}, s.raise(ctx, p, f, e.At)
	}
	fob := *e.FobSerial
	var k placed
	err = tx.Raw(`SELECT `+placedColumns+` FROM keys WHERE fob_serial = ? AND deleted_at IS NULL`, fob).Take(&k).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		f := Flag{Kind: "unknown_fob", Bin: e.Bin, FobSerial: &fob, Detail: fmt.Sprintf("bin %d holds a fob this business does not know (%s)", e.Bin, fob)}
		return []Flag{f}, s.raise(ctx, p, f, e.At)
	}
	if err != nil {
		return nil, errf("find fob: %w", err)
	}
	if hasRecorded && recorded.ID == k.ID {
		return nil, s.record(ctx, p, "bin.closed", "box", e.At, map[string]string{"bin": strconv.Itoa(e.Bin), "key": k.ID.String()})
	}
	if hasRecorded {
		// Another key was recorded in this bin; it is not there.
		if err := tx.Exec(`UPDATE keys SET state = 'missing', box_id = NULL, bin = NULL, updated_at = ? WHERE id = ?`, now, recorded.ID).Error; err != nil {
			return nil, errf("mark key missing: %w", err)
		}
		if err := forgetAssignment(ctx, recorded.ID); err != nil {
			return nil, err
		}
		f := Flag{Kind: "missing_key", Bin: e.Bin, KeyID: &recorded.ID, Detail: fmt.Sprintf("%s should be in bin %d, which holds %s", recorded.Name, e.Bin, k.Name)}
		flags = append(flags, f)
		if err := s.raise(ctx, p, f, e.At); err != nil {
			return nil, err
		}
	}
	if err := tx.Exec(`UPDATE keys SET state = 'in_bin', box_id = ?, bin = ?, out_access_id = NULL, out_since = NULL, out_until = NULL, out_by = NULL, updated_at = ? WHERE id = ?`,
		p.BoxID, e.Bin, now, k.ID).Error; err != nil {
		return nil, errf("put key in bin: %w", err)
	}
	switch k.State {
	case "out", "missing":
		// Read before the assignment goes, below.
		f, wrong, err := misplaced(ctx, p, k, e.Bin, fob)
		if err != nil {
			return nil, err
		}
		details := map[string]string{"key": k.ID.String(), "bin": strconv.Itoa(e.Bin)}
		if k.OutAccessID != nil {
			details["booking"] = k.OutAccessID.String()
			if err := s.reminders.KeysReturned(ctx, []uuid.UUID{*k.OutAccessID}); err != nil {
				return nil, err
			}
		}
		if err := s.record(ctx, p, "key.returned", "box", e.At, details); err != nil {
			return nil, err
		}
		if err := webhooks.Emit(ctx, webhooks.KeyReturned, map[string]any{"key_id": k.ID, "key_name": k.Name, "box_id": p.BoxID, "bin": e.Bin,
			"booking_id": k.OutAccessID, "at": now.UTC()}); err != nil {
			return nil, err
		}
		if wrong {
			flags = append(flags, f)
			if err := s.raise(ctx, p, f, e.At); err != nil {
				return nil, err
			}
		}
	default: // in another bin or box according to the records
		f := Flag{Kind: "wrong_bin", Bin: e.Bin, KeyID: &k.ID, FobSerial: &fob, Detail: fmt.Sprintf("%s was found in bin %d; the records had it in another bin, and now have it here", k.Name, e.Bin)}
		if k.BoxID == nil || *k.BoxID != p.BoxID {
			f.Kind = "wrong_box"
			f.Detail = fmt.Sprintf("%s was found in bin %d of this box; the records had it in box %q, and now have it here", k.Name, e.Bin, boxName(ctx, k.BoxID))
		}
		flags = append(flags, f)
		if err := s.raise(ctx, p, f, e.At); err != nil {
			return nil, err
		}
	}
	// The reminders of the key's waiting accesses name the box it is
	// picked up at, and so do those of a key found gone from here.
	var moved []uuid.UUID
	was := k.HomeBoxID // out or missing: picked up at home, once back
	if k.State == "in_bin" && k.BoxID != nil {
		was = *k.BoxID
	}
	if was != p.BoxID {
		moved = append(moved, k.ID)
	}
	if hasRecorded && recorded.HomeBoxID != p.BoxID {
		moved = append(moved, recorded.ID)
	}
	if err := s.reminders.KeysMoved(ctx, moved); err != nil {
		return nil, err
	}
	if err := forgetAssignment(ctx, k.ID); err != nil {
		return nil, err
	}
	return flags, nil
}

// misplaced reports whether a key coming back turned up somewhere else
// than expected, and the flag that says so. Expected is the box and bin
// its dropoff was given; without a dropoff since the key last went out (a
// bin opened for something else, an assignment left from an earlier
// return), its home bin. A key dropped off at any box where it was told
// is where it should be.
func misplaced(ctx context.Context, p tenants.Principal, k placed, bin int, fob string) (Flag, bool, error) {
	a, dropped, err := assignmentOf(ctx, k.ID)
	if err != nil {
		return Flag{}, false, err
	}
	if dropped && k.OutSince != nil && a.CreatedAt.Before(*k.OutSince) {
		dropped = false
	}
	f := Flag{Bin: bin, KeyID: &k.ID, FobSerial: &fob}
	switch {
	case dropped && a.BoxID != p.BoxID:
		f.Kind = "wrong_box"
		f.Detail = fmt.Sprintf("%s was returned to bin %d of this box, but its dropoff was given bin %d of box %q; the records now have it here",
			k.Name, bin, a.Bin, boxName(ctx, &a.BoxID))
	case dropped && a.Bin != bin:
		f.Kind = "wrong_bin"
		f.Detail = fmt.Sprintf("%s was returned to bin %d, but its dropoff was given bin %d; the records now have it in bin %d", k.Name, bin, a.Bin, bin)
	case dropped:
		return Flag{}, false, nil
	case k.HomeBoxID != p.BoxID:
		f.Kind = "wrong_box"
		f.Detail = fmt.Sprintf("%s was returned to bin %d of this box without a dropoff, not to its home box %q (bin %d); the records now have it here",
			k.Name, bin, boxName(ctx, &k.HomeBoxID), k.HomeBin)
	case k.HomeBin != bin:
		f.Kind = "wrong_bin"
		f.Detail = fmt.Sprintf("%s was returned to bin %d without a dropoff, not to its home bin %d; the records now have it in bin %d", k.Name, bin, k.HomeBin, bin)
	default:
		return Flag{}, false, nil
	}
	return f, true, nil
}

// boxName names a box in a flag's text; an unreadable name leaves the
// flag worth raising.
func boxName(ctx context.Context, id *uuid.UUID) string {
	if id == nil {
		return "unknown"
	}
	if n := inventory.BoxName(ctx, *id); n != "" {
		return n
	}
	return id.String()
}

// raise stores a flag, audits it and tells the tenant's admins.
func (s *Service) raise(ctx context.Context, p tenants.Principal, f Flag, at *time.Time) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Exec(`INSERT INTO inventory_flags (tenant_id, id, box_id, bin, kind, key_id, fob_serial, detail, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		p.TenantID, uuid.Must(uuid.NewV7()), p.BoxID, f.Bin, f.Kind, f.KeyID, f.FobSerial, f.Detail, s.now()).Error; err != nil {
		return errf("store flag: %w", err)
	}
	details := map[string]string{"kind": f.Kind, "bin": strconv.Itoa(f.Bin), "detail": f.Detail}
	if at != nil {
		details["box_time"] = at.UTC().Format(time.RFC3339)
	}
	if f.KeyID != nil {
		details["key"] = f.KeyID.String()
	}
	if err := audit.Record(ctx, p.Actor(), "inventory.flagged", "box:"+p.BoxID.String(), details); err != nil {
		return err
	}
	return s.alertStaff(ctx, "inventory_flag", map[string]string{"box": inventory.BoxName(ctx, p.BoxID), "detail": f.Detail})
}
