package bookings

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/webhooks"
)

// row is a booking with the key and box it belongs to.
type row struct {
	Booking     `gorm:"embedded"`
	KeyName     string
	BoxID       uuid.UUID
	BoxName     string
	BoxAddress  string
	BoxTimezone string
	LocationID  *uuid.UUID
}

func (r row) key() keyRef {
	return keyRef{ID: r.KeyID, Name: r.KeyName, BoxID: r.BoxID, BoxName: r.BoxName, BoxAddress: r.BoxAddress, BoxTimezone: r.BoxTimezone, LocationID: r.LocationID}
}

// selectRows reads bookings with their key and its boxes: the one the
// booking names (where its code opens the key, pickupBoxSQL) and the home
// box, whose location limits who sees it.
const selectRows = `SELECT bk.*, k.name AS key_name, ` + pickupBoxColumns + `, bx.location_id
	FROM bookings bk
	JOIN keys k ON k.tenant_id = bk.tenant_id AND k.id = bk.key_id
	JOIN boxes bx ON bx.tenant_id = k.tenant_id AND bx.id = k.home_box_id
	` + pickupBoxSQL

// load returns booking id when p sees it. forUpdate locks the booking row
// until the transaction ends, so that two edits of one booking (a resend
// and a revoke, two resends) run one after the other.
func load(ctx context.Context, p tenants.Principal, id uuid.UUID, forUpdate bool) (row, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return row{}, err
	}
	q := selectRows + " WHERE bk.id = ?"
	if forUpdate {
		q += " FOR UPDATE OF bk"
	}
	var rs []row
	if err := tx.Raw(q, id).Scan(&rs).Error; err != nil {
		return row{}, wrap("load booking", err)
	}
	if len(rs) == 0 || !p.Sees(rs[0].LocationID) {
		return row{}, tenants.NotFound("booking")
	}
	return rs[0], nil
}

// Get returns one booking ("About Booking"), its code and URL included:
// staff may read them to help a visitor.
func (s *Service) Get(ctx context.Context, id uuid.UUID) (View, error) {
	p, err := staff(ctx)
	if err != nil {
		return View{}, err
	}
	r, err := load(ctx, p, id, false)
	if err != nil {
		return View{}, err
	}
	return s.fullView(ctx, r)
}

// ByURLToken returns the booking a booking URL token stands for, for the
// visitor's page: the token is its credential, so no principal is needed,
// and it is read in the transaction of the tenant the token names
// (TenantOfURLToken), where only that tenant's bookings are visible.
// Anything that is not a live token of this tenant is not found.
func (s *Service) ByURLToken(ctx context.Context, tok string) (View, error) {
	tenantID, ok := TenantOfURLToken(tok)
	if !ok {
		return View{}, tenants.NotFound("booking")
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return View{}, err
	}
	var rs []row
	if err := tx.Raw(selectRows+" WHERE bk.url_token_hash = ?", URLTokenHash(tok)).Scan(&rs).Error; err != nil {
		return View{}, wrap("load booking by URL token", err)
	}
	if len(rs) != 1 || rs[0].TenantID != tenantID {
		return View{}, tenants.NotFound("booking")
	}
	return s.fullView(ctx, rs[0])
}

func (s *Service) fullView(ctx context.Context, r row) (View, error) {
	code, err := s.openCode(ctx, r.CodeID)
	if err != nil {
		return View{}, err
	}
	url, err := s.bookingURL(r.Booking)
	if err != nil {
		return View{}, err
	}
	return s.view(r.Booking, r.key(), code, url, s.now()), nil
}

// Filter selects bookings for a list.
type Filter struct {
	Status  Status
	KeyID   uuid.UUID
	Visitor string // part of the visitor's name or email, or the phone number
	After   uuid.UUID
	Limit   int
}

// List returns a page of the bookings p sees, newest first, without codes
// and URLs (GET /bookings/{id} shows them).
func (s *Service) List(ctx context.Context, f Filter) ([]View, error) {
	p, err := staff(ctx)
	if err != nil {
		return nil, err
	}
	var v tenants.Validator
	v.Check(f.Status == "" || statusSQL[f.Status] != "", "status", "must be upcoming, active, ended, revoked or held")
	v.Check(utf8.RuneCountInString(f.Visitor) <= 200, "visitor", "must be at most 200 characters")
	if err := v.Err(); err != nil {
		return nil, err
	}
	now := s.now()
	args := map[string]any{"now": now, "limit": f.Limit}
	where := []string{"true"}
	if f.Status != "" {
		where = append(where, statusSQL[f.Status])
	}
	if f.KeyID != uuid.Nil {
		where, args["key"] = append(where, "bk.key_id = @key"), f.KeyID
	}
	if v := strings.TrimSpace(f.Visitor); v != "" {
		where = append(where, `(bk.visitor_name ILIKE @like ESCAPE '\' OR bk.visitor_email ILIKE @like ESCAPE '\' OR bk.visitor_phone = @visitor)`)
		args["like"], args["visitor"] = "%"+likeEscaper.Replace(v)+"%", v
	}
	if f.After != uuid.Nil {
		where, args["after"] = append(where, "bk.id < @after"), f.After
	}
	if p.Limited() {
		where, args["locations"] = append(where, "bx.location_id IN @locations"), p.Locations
	}
	var rs []row
	q := selectRows + " WHERE " + strings.Join(where, " AND ") + " ORDER BY bk.id DESC LIMIT @limit"
	// The list is the read-mostly query of the dashboard and of
	// integrations that poll: on the read replica when there is one.
	read := func(ctx context.Context) error {
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return err
		}
		rs = nil
		if err := tx.Raw(q, args).Scan(&rs).Error; err != nil {
			return wrap("list bookings", err)
		}
		return nil
	}
	if s.repl != nil {
		err = s.repl.Read(ctx, read)
	} else {
		err = read(ctx)
	}
	if err != nil {
		return nil, err
	}
	views := make([]View, len(rs))
	for i, r := range rs {
		views[i] = s.view(r.Booking, r.key(), "", "", now)
	}
	return views, nil
}

var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)

// Visitors lists the live accesses on a key (not revoked, not ended; held
// ones included), newest first.
func (s *Service) Visitors(ctx context.Context, keyID uuid.UUID, after uuid.UUID, limit int) ([]View, error) {
	p, err := staff(ctx)
	if err != nil {
		return nil, err
	}
	if _, ok, err := liveKey(ctx, p, keyID, false); err != nil {
		return nil, err
	} else if !ok {
		return nil, tenants.NotFound("key")
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now()
	args := map[string]any{"now": now, "key": keyID, "limit": limit}
	q := selectRows + " WHERE bk.key_id = @key AND " + liveSQL
	if after != uuid.Nil {
		q, args["after"] = q+" AND bk.id < @after", after
	}
	q += " ORDER BY bk.id DESC LIMIT @limit"
	var rs []row
	if err := tx.Raw(q, args).Scan(&rs).Error; err != nil {
		return nil, wrap("list visitors", err)
	}
	views := make([]View, len(rs))
	for i, r := range rs {
		views[i] = s.view(r.Booking, r.key(), "", "", now)
	}
	return views, nil
}

// LiveAccessCount counts the live accesses on a key: one-time bookings that
// have neither ended nor been revoked, held ones included, and ongoing
// access not revoked. It first locks the key row until the transaction
// ends, so that no booking can be created on the key between this count
// and the caller's deletion of the key (a create takes a share lock on the
// same row).
func (s *Service) LiveAccessCount(ctx context.Context, keyID uuid.UUID) (int, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return 0, err
	}
	if err := tx.Exec("SELECT 1 FROM keys WHERE id = ? FOR UPDATE", keyID).Error; err != nil {
		return 0, wrap("lock key", err)
	}
	var n int64
	err = tx.Raw("SELECT count(*) FROM bookings bk WHERE bk.key_id = @key AND "+liveSQL, map[string]any{"key": keyID, "now": s.now()}).Scan(&n).Error
	if err != nil {
		return 0, wrap("count live accesses", err)
	}
	return int(n), nil
}

// BookingPatch lists what may change on a booking; nil means unchanged.
type BookingPatch struct {
	StartsAt       *string `json:"starts_at"`
	EndsAt         *string `json:"ends_at"`
	ReturnReminder *bool   `json:"return_reminder"`
}

// Update moves a booking's window or turns its return reminder on or off.
// The new window is checked like a new booking's (overlap too), reminders
// move with it, and the key's out_until follows when the key is out with
// this access.
func (s *Service) Update(ctx context.Context, id uuid.UUID, in BookingPatch) (View, error) {
	p, err := staff(ctx)
	if err != nil {
		return View{}, err
	}
	r, err := load(ctx, p, id, true)
	if err != nil {
		return View{}, err
	}
	now := s.now()
	if !r.live(now) {
		return View{}, tenants.Errorf(tenants.EConflict, "the booking is %s: it can no longer be changed", r.StatusAt(now))
	}
	var v tenants.Validator
	b := r.Booking
	changed := map[string]string{}
	if t := parseTime(&v, "starts_at", in.StartsAt); t != nil {
		b.StartsAt, changed["starts_at"] = *t, t.UTC().Format(time.RFC3339)
	}
	endMoved := false
	if in.EndsAt != nil && b.Kind == Ongoing {
		v.Add("ends_at", "must be absent: ongoing access has no end")
	} else if t := parseTime(&v, "ends_at", in.EndsAt); t != nil {
		b.EndsAt, changed["ends_at"], endMoved = t, t.UTC().Format(time.RFC3339), true
	}
	if in.ReturnReminder != nil {
		b.ReturnReminder, changed["return_reminder"] = *in.ReturnReminder, fmt.Sprint(*in.ReturnReminder)
		v.Check(!b.ReturnReminder || b.Kind == OneTime, "return_reminder", "must be false: ongoing access has no end to remind of")
	}
	if b.EndsAt != nil && v.Err() == nil {
		v.Check(b.EndsAt.After(b.StartsAt), "ends_at", "must be after starts_at")
		v.Check(b.EndsAt.After(now), "ends_at", "must be in the future")
	}
	if err := v.Err(); err != nil {
		return View{}, err
	}
	b.LiveFrom, b.UpdatedAt = later(b.StartsAt, now), now
	if err := s.save(ctx, b); err != nil {
		return View{}, err
	}
	if endMoved {
		if err := followKeyOut(ctx, b.ID, b.EndsAt); err != nil {
			return View{}, err
		}
	}
	k := r.key()
	if err := s.scheduleReturnReminder(ctx, b, k, false); err != nil {
		return View{}, err
	}
	if err := s.scheduleHeldReminders(ctx, b, k, false); err != nil {
		return View{}, err
	}
	if err := audit.Record(ctx, p.Actor(), "booking.updated", "booking:"+b.ID.String(), changed); err != nil {
		return View{}, err
	}
	if err := emit(ctx, webhooks.BookingUpdated, b, now); err != nil {
		return View{}, err
	}
	r.Booking = b
	return s.fullView(ctx, r)
}

// save writes b's window and reminder, under the same overlap rule as
// insert.
func (s *Service) save(ctx context.Context, b Booking) error {
	if b.Kind == OneTime {
		if id, err := s.overlapping(ctx, b); err != nil || id != uuid.Nil {
			if err == nil {
				err = overlaps(id)
			}
			return err
		}
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Exec("SAVEPOINT booking_write").Error; err != nil {
		return wrap("savepoint", err)
	}
	err = tx.Model(&Booking{}).Where("id = ?", b.ID).Updates(map[string]any{
		"starts_at": b.StartsAt, "ends_at": b.EndsAt, "live_from": b.LiveFrom, "return_reminder": b.ReturnReminder, "updated_at": b.UpdatedAt,
	}).Error
	if err != nil {
		if violates(err, "23P01", "bookings_no_overlap") {
			return s.lostRace(ctx, b)
		}
		return wrap("update booking", err)
	}
	return wrap0("release savepoint", tx.Exec("RELEASE SAVEPOINT booking_write").Error)
}

// lostRace rolls back to save's savepoint after an overlap the pre-check
// could not see (the other booking committed meanwhile) and names it.
func (s *Service) lostRace(ctx context.Context, b Booking) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Exec("ROLLBACK TO SAVEPOINT booking_write").Error; err != nil {
		return wrap("rollback to savepoint", err)
	}
	id, err := s.overlapping(ctx, b)
	if err != nil {
		return err
	}
	if id == uuid.Nil {
		return tenants.Errorf(tenants.EConflict, "the key was booked for part of this window meanwhile; try again")
	}
	return overlaps(id)
}

// followKeyOut keeps keys.out_until in step with the access that has the
// key out, so that "overdue" stays a comparison with now().
func followKeyOut(ctx context.Context, bookingID uuid.UUID, until *time.Time) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Exec("UPDATE keys SET out_until = ?, updated_at = now() WHERE out_access_id = ? AND state = 'out'", until, bookingID).Error; err != nil {
		return wrap("update key whereabouts", err)
	}
	return nil
}

// Release ends the hold of a booking: the access instructions go out (and
// the return reminder is scheduled), the reminder to the admins is called
// off.
func (s *Service) Release(ctx context.Context, id uuid.UUID) (View, error) {
	p, err := staff(ctx)
	if err != nil {
		return View{}, err
	}
	r, err := load(ctx, p, id, true)
	if err != nil {
		return View{}, err
	}
	now := s.now()
	if st := r.StatusAt(now); st != Held {
		return View{}, tenants.Errorf(tenants.EConflict, "only a held booking can be released; this one is %s", st)
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return View{}, err
	}
	if err := tx.Model(&Booking{}).Where("id = ?", id).Updates(map[string]any{"released_at": now, "sent_at": now, "updated_at": now}).Error; err != nil {
		return View{}, wrap("release booking", err)
	}
	r.ReleasedAt, r.SentAt, r.UpdatedAt = &now, &now, now
	v, err := s.fullView(ctx, r)
	if err != nil {
		return View{}, err
	}
	k := r.key()
	if err := s.sendInstructions(ctx, r.Booking, k, v.Code, v.URL); err != nil {
		return View{}, err
	}
	if err := s.scheduleReturnReminder(ctx, r.Booking, k, false); err != nil {
		return View{}, err
	}
	if err := s.scheduleHeldReminders(ctx, r.Booking, k, false); err != nil {
		return View{}, err
	}
	if err := emit(ctx, webhooks.BookingReleased, r.Booking, now); err != nil {
		return View{}, err
	}
	return v, audit.Record(ctx, p.Actor(), "booking.released", "booking:"+id.String(), nil)
}

// Revoke ends an access now: no pickup from then on (a key already out can
// still be dropped off, and is overdue from now), reminders are called off,
// and a linked alias code is free for another booking. Revoking twice
// changes nothing.
func (s *Service) Revoke(ctx context.Context, id uuid.UUID) (View, error) {
	p, err := staff(ctx)
	if err != nil {
		return View{}, err
	}
	r, err := load(ctx, p, id, true)
	if err != nil {
		return View{}, err
	}
	if r.RevokedAt != nil {
		return s.fullView(ctx, r)
	}
	now := s.now()
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return View{}, err
	}
	if err := tx.Model(&Booking{}).Where("id = ?", id).Updates(map[string]any{"revoked_at": now, "updated_at": now}).Error; err != nil {
		return View{}, wrap("revoke booking", err)
	}
	r.RevokedAt, r.UpdatedAt = &now, now
	if err := tx.Exec("UPDATE keys SET out_until = least(coalesce(out_until, ?), ?), updated_at = now() WHERE out_access_id = ? AND state = 'out'", now, now, id).Error; err != nil {
		return View{}, wrap("update key whereabouts", err)
	}
	if r.AliasCodeID != nil {
		if err := tx.Exec("UPDATE alias_codes SET booking_id = NULL WHERE id = ? AND booking_id = ?", *r.AliasCodeID, id).Error; err != nil {
			return View{}, wrap("unlink alias code", err)
		}
	}
	if err := s.cancelReminders(ctx, id, kindReturn); err != nil {
		return View{}, err
	}
	if err := s.cancelReminders(ctx, id, kindHeld); err != nil {
		return View{}, err
	}
	if err := audit.Record(ctx, p.Actor(), "booking.revoked", "booking:"+id.String(), nil); err != nil {
		return View{}, err
	}
	if err := emit(ctx, webhooks.BookingRevoked, r.Booking, now); err != nil {
		return View{}, err
	}
	return s.fullView(ctx, r)
}

// Resend sends the access instructions again by the original channel, at
// most once per ResendAfter since they last went out.
func (s *Service) Resend(ctx context.Context, id uuid.UUID) (View, error) {
	p, err := staff(ctx)
	if err != nil {
		return View{}, err
	}
	r, err := load(ctx, p, id, true)
	if err != nil {
		return View{}, err
	}
	now := s.now()
	switch st := r.StatusAt(now); st {
	case Revoked, Ended:
		return View{}, tenants.Errorf(tenants.EConflict, "the booking is %s: there is nothing to resend", st)
	case Held:
		return View{}, tenants.Errorf(tenants.EConflict, "the booking is held: release it to send the instructions")
	}
	if r.SentAt != nil {
		if wait := r.SentAt.Add(s.cfg.ResendAfter).Sub(now); wait > 0 {
			return View{}, tenants.RateLimited(fmt.Sprintf("the instructions were sent less than %s ago; resend in %d minutes",
				s.cfg.ResendAfter, int(math.Ceil(wait.Minutes()))), wait)
		}
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return View{}, err
	}
	if err := tx.Model(&Booking{}).Where("id = ?", id).Updates(map[string]any{"sent_at": now, "resent_at": now, "updated_at": now}).Error; err != nil {
		return View{}, wrap("record resend", err)
	}
	r.SentAt, r.ResentAt, r.UpdatedAt = &now, &now, now
	v, err := s.fullView(ctx, r)
	if err != nil {
		return View{}, err
	}
	if err := s.sendInstructions(ctx, r.Booking, r.key(), v.Code, v.URL); err != nil {
		return View{}, err
	}
	return v, audit.Record(ctx, p.Actor(), "booking.resent", "booking:"+id.String(), map[string]string{"notify_via": string(r.NotifyVia)})
}

// Details is the text behind "Copy details": the key, the access window in
// the box's time zone (named), the booking code and the URL.
func (s *Service) Details(ctx context.Context, id uuid.UUID) (string, error) {
	p, err := staff(ctx)
	if err != nil {
		return "", err
	}
	r, err := load(ctx, p, id, false)
	if err != nil {
		return "", err
	}
	v, err := s.fullView(ctx, r)
	if err != nil {
		return "", err
	}
	return detailsText(r, v, s.now()), nil
}

func detailsText(r row, v View, now time.Time) string {
	loc := r.key().location()
	var b strings.Builder
	fmt.Fprintf(&b, "Key: %s\n", r.KeyName)
	box := r.BoxName
	if r.BoxAddress != "" {
		box += ", " + strings.ReplaceAll(r.BoxAddress, "\n", ", ")
	}
	fmt.Fprintf(&b, "Box: %s\n", box)
	const layout = "Mon 2 Jan 2006 15:04"
	if r.EndsAt != nil {
		fmt.Fprintf(&b, "Access: %s to %s (%s)\n", r.StartsAt.In(loc).Format(layout), r.EndsAt.In(loc).Format(layout), loc)
	} else {
		fmt.Fprintf(&b, "Access: from %s (%s), ongoing\n", r.StartsAt.In(loc).Format(layout), loc)
	}
	fmt.Fprintf(&b, "Booking code: %s\n", v.Code)
	fmt.Fprintf(&b, "Booking page: %s", v.URL)
	switch r.StatusAt(now) {
	case Held:
		b.WriteString("\nOn hold: the code opens nothing until the booking is released.")
	case Revoked:
		b.WriteString("\nRevoked: the code no longer opens the box.")
	case Ended:
		b.WriteString("\nEnded: the code no longer opens the box; the key can still be dropped off.")
	}
	return b.String()
}
