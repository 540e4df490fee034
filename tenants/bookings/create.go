package bookings

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm/clause"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/outbox"
	"github.com/keyrelay/keyrelay/tenants/webhooks"
)

// NewBookingInput is what a desk or an integration gives to grant access.
// Times are RFC 3339 strings, parsed here so that a bad one is reported on
// its field (422) rather than as an unreadable body.
type NewBookingInput struct {
	KeyID          string         `json:"key_id"`
	Kind           Kind           `json:"kind"`
	Visitor        *Visitor       `json:"visitor"`
	StartsAt       *string        `json:"starts_at"`
	EndsAt         *string        `json:"ends_at"`
	ReturnReminder *bool          `json:"return_reminder"`
	NotifyVia      outbox.Channel `json:"notify_via"`
	AliasCodeID    *string        `json:"alias_code_id"`
	Hold           *bool          `json:"hold"`
}

// newBooking is a validated NewBookingInput.
type newBooking struct {
	keyID    uuid.UUID
	aliasID  uuid.UUID
	visitor  Visitor
	start    time.Time
	end      *time.Time
	reminder bool
	hold     bool
}

func (in NewBookingInput) validate(now time.Time) (newBooking, error) {
	var v tenants.Validator
	var nb newBooking
	id, err := uuid.Parse(in.KeyID)
	v.Check(err == nil && id != uuid.Nil, "key_id", "is required: the id of one of the tenant's keys")
	nb.keyID = id
	v.Check(in.Kind == OneTime || in.Kind == Ongoing, "kind", "must be one_time or ongoing")
	if in.Visitor == nil {
		v.Add("visitor", "is required: {name, phone, email}")
		checkChannel(&v, in.NotifyVia)
	} else {
		nb.visitor = *in.Visitor
		nb.visitor.validate(&v, in.NotifyVia)
	}
	if in.StartsAt == nil {
		v.Add("starts_at", "is required")
	} else if t := parseTime(&v, "starts_at", in.StartsAt); t != nil {
		nb.start = *t
	}
	nb.end = parseTime(&v, "ends_at", in.EndsAt)
	nb.reminder = in.Kind == OneTime
	if in.ReturnReminder != nil {
		nb.reminder = *in.ReturnReminder
	}
	switch in.Kind {
	case OneTime:
		if in.EndsAt == nil {
			v.Add("ends_at", "is required for a one-time booking")
		}
		if nb.end != nil && !nb.start.IsZero() {
			v.Check(nb.end.After(nb.start), "ends_at", "must be after starts_at")
			v.Check(nb.end.After(now), "ends_at", "must be in the future")
		}
	case Ongoing:
		v.Check(in.EndsAt == nil, "ends_at", "must be absent: ongoing access has no end")
		v.Check(!nb.reminder, "return_reminder", "must be false: ongoing access has no end to remind of")
	}
	if in.AliasCodeID != nil {
		id, err := uuid.Parse(*in.AliasCodeID)
		v.Check(err == nil && id != uuid.Nil, "alias_code_id", "must be the id of one of the tenant's alias codes")
		nb.aliasID = id
	}
	nb.hold = in.Hold != nil && *in.Hold
	return nb, v.Err()
}

// overlapError is a one-time booking whose window overlaps a live one of the
// same key: a conflict that names the booking in the way.
type overlapError struct {
	err *tenants.Error
	id  uuid.UUID
}

func (e *overlapError) Error() string { return e.err.Error() }
func (e *overlapError) Unwrap() error { return e.err }

// ConflictingBookingID is the booking in the way; the HTTP layer adds it to
// the problem document as conflicting_booking_id.
func (e *overlapError) ConflictingBookingID() uuid.UUID { return e.id }

func overlaps(id uuid.UUID) error {
	return &overlapError{err: tenants.Errorf(tenants.EConflict, "the key is booked for part of this window by booking %s", id), id: id}
}

// Create grants access to a key. Unless the booking is held, the access
// instructions go to the visitor (and the return reminder is scheduled) in
// the same transaction; a held booking instead schedules a reminder to the
// admins for when it starts.
func (s *Service) Create(ctx context.Context, in NewBookingInput) (View, error) {
	p, err := staff(ctx)
	if err != nil {
		return View{}, err
	}
	now := s.now()
	nb, err := in.validate(now)
	if err != nil {
		return View{}, err
	}
	k, ok, err := liveKey(ctx, p, nb.keyID, true)
	if err != nil {
		return View{}, err
	}
	if !ok {
		// A field of the body, not the resource addressed: 422, and the
		// same answer for another tenant's key, another location's, an
		// archived one and one that never existed.
		return View{}, tenants.Invalid(tenants.FieldError{Field: "key_id", Message: "names no key you can book"})
	}
	tenantID := mustTenant(ctx)
	b := Booking{TenantID: tenantID, ID: newID(), KeyID: k.ID, Kind: in.Kind, VisitorName: nb.visitor.Name,
		VisitorPhone: nb.visitor.Phone, VisitorEmail: nb.visitor.Email, NotifyVia: in.NotifyVia, StartsAt: nb.start,
		EndsAt: nb.end, LiveFrom: later(nb.start, now), ReturnReminder: nb.reminder, Hold: nb.hold,
		CreatedBy: p.Actor(), CreatedAt: now, UpdatedAt: now}
	if !b.Hold {
		b.SentAt = &now
	}

	var code string
	var alias *AliasCode
	if nb.aliasID != uuid.Nil {
		a, err := s.lockAliasForLink(ctx, p, nb.aliasID)
		if err != nil {
			return View{}, err
		}
		alias = &a
		b.CodeID, b.AliasCodeID = a.CodeID, &a.ID
	} else if b.CodeID, code, err = s.drawCode(ctx); err != nil {
		return View{}, err
	}
	tok, hash, err := newURLToken(tenantID)
	if err != nil {
		return View{}, err
	}
	b.URLTokenHash = hash
	if b.URLTokenSealed, err = s.keys.Seal([]byte(tok), urlSealContext(tenantID, b.ID)); err != nil {
		return View{}, wrap("seal URL token", err)
	}
	if err := s.insert(ctx, b); err != nil {
		return View{}, err
	}
	if alias != nil {
		if err := linkAlias(ctx, alias.ID, b.ID); err != nil {
			return View{}, err
		}
	}
	if code == "" {
		if code, err = s.openCode(ctx, b.CodeID); err != nil {
			return View{}, err
		}
	}
	url := s.cfg.BaseURL + "/b/" + tok
	if !b.Hold {
		if err := s.sendInstructions(ctx, b, k, code, url); err != nil {
			return View{}, err
		}
	}
	if err := s.scheduleReturnReminder(ctx, b, k, true); err != nil {
		return View{}, err
	}
	if err := s.scheduleHeldReminders(ctx, b, k, true); err != nil {
		return View{}, err
	}
	details := map[string]string{"key_id": k.ID.String(), "kind": string(b.Kind), "notify_via": string(b.NotifyVia), "hold": fmt.Sprint(b.Hold)}
	if alias != nil {
		details["alias_code_id"] = alias.ID.String()
	}
	if err := audit.Record(ctx, p.Actor(), "booking.created", "booking:"+b.ID.String(), details); err != nil {
		return View{}, err
	}
	if err := emit(ctx, webhooks.BookingCreated, b, now); err != nil {
		return View{}, err
	}
	return s.view(b, k, code, url, now), nil
}

// insert writes b. The exclusion constraint bookings_no_overlap is the
// judge of overlaps, so that two concurrent creates cannot both pass. With
// ON CONFLICT DO NOTHING (which exclusion constraints answer too) a window
// in the way writes nothing and keeps the transaction usable, so the
// booking in the way is looked up after it: no query before the insert
// and no savepoint on the way of every create, only on a refused one.
// (The unique constraints, on random ids and tokens, do not collide.)
func (s *Service) insert(ctx context.Context, b Booking) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	res := tx.Clauses(clause.OnConflict{DoNothing: true}).Create(&b)
	if res.Error != nil {
		return wrap("insert booking", res.Error)
	}
	if res.RowsAffected == 1 {
		return nil
	}
	if b.Kind != OneTime { // no window to overlap: an id collided
		return tenants.Errorf(tenants.EConflict, "the booking could not be written; try again")
	}
	id, err := s.overlapping(ctx, b)
	if err != nil {
		return err
	}
	if id == uuid.Nil {
		// The booking in the way was revoked or moved since the insert
		// met it.
		return tenants.Errorf(tenants.EConflict, "the key was booked for part of this window meanwhile; try again")
	}
	return overlaps(id)
}

// overlapping returns a live one-time booking of b's key (not b) whose
// window overlaps b's from now on, the condition the exclusion constraint
// enforces; uuid.Nil when there is none.
//
// The live one-time bookings of a key never overlap one another (the
// exclusion constraint bookings_no_overlap), so the only one that can
// overlap b's window is the latest that starts before it ends: one step
// of the btree bookings_key_live_from (migrations/00027), where the range
// test would filter every live booking the key ever had (under row-level
// security && cannot be an index condition).
func (s *Service) overlapping(ctx context.Context, b Booking) (uuid.UUID, error) {
	if b.EndsAt == nil {
		// Only one-time bookings are checked, and they always end (the
		// table's CHECK); the query below needs a bound to be an index step.
		return uuid.Nil, fmt.Errorf("check overlap: one-time booking %s without an end", b.ID)
	}
	var id uuid.UUID
	err := tenants.QueryRow(ctx, overlapSQL, b.KeyID, b.ID, *b.EndsAt, b.LiveFrom).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return uuid.Nil, nil
	}
	if err != nil {
		return uuid.Nil, wrap("check overlap", err)
	}
	return id, nil
}

// overlapSQL is overlapping's query. Every comparison under row-level
// security must be leakproof to be an index condition, and that includes
// the generic plan PostgreSQL switches to after five runs of a prepared
// statement, where parameters are not folded: coalesce($3, 'infinity')
// there turned "live_from < …" into a filter over every live booking of
// the key (TestOverlapCheckIsOneIndexStep).
const overlapSQL = `SELECT id FROM (
		SELECT id, ends_at FROM bookings
		WHERE key_id = $1 AND kind = 'one_time' AND revoked_at IS NULL AND id <> $2 AND live_from < $3
		ORDER BY live_from DESC LIMIT 1) latest
	WHERE ends_at > $4`

// sendInstructions queues the access instructions to the visitor by the
// chosen channel.
func (s *Service) sendInstructions(ctx context.Context, b Booking, k keyRef, code, url string) error {
	company, err := s.msgs.Company(ctx)
	if err != nil {
		return err
	}
	loc := k.location()
	data := map[string]string{"name": b.VisitorName, "company": company, "key": k.Name, "box": k.BoxName, "address": k.BoxAddress,
		"starts_at": localTime(b.StartsAt, loc), "code": code, "url": url}
	if b.EndsAt != nil {
		data["ends_at"] = localTime(*b.EndsAt, loc)
	}
	_, err = s.msgs.Add(ctx, outbox.Message{Kind: kindInstructions, Channel: b.NotifyVia,
		Recipient: recipient(b.VisitorPhone, b.VisitorEmail, b.NotifyVia), TimeZone: loc.String(), Data: data})
	if err != nil {
		return wrap("queue access instructions", err)
	}
	return nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func wrap0(what string, err error) error {
	if err == nil {
		return nil
	}
	return wrap(what, err)
}
