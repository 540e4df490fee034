package bookings

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// Reminder kinds (outbox message kinds, and booking_reminders.kind).
const (
	kindInstructions = "access_instructions"
	kindReturn       = "return_reminder"
	kindHeld         = "held_booking_reminder"
	kindAlias        = "alias_code"
)

// returnReminderAt is when the visitor is reminded to bring the key back:
// at clock (09:00) on the day access ends, in the box's zone loc — the
// visitor's day, not UTC's. When access ends before that time of day, an
// hour before the end, but never before that local day begins; and never
// before the access starts. A time already past means "now" to the outbox.
// The result is always before end.
//
// The day access ends is the local day of its last moment: an end at
// exactly 00:00 closes the day before (access covers none of the new day),
// so the reminder goes out on that day rather than at the very moment
// access ends.
func returnReminderAt(start, end time.Time, loc *time.Location, clock time.Duration) time.Time {
	y, m, d := lastDay(end, loc)
	dayStart := time.Date(y, m, d, 0, 0, 0, 0, loc)
	// Built from the date, not by adding hours to midnight, so a day of 23
	// or 25 hours (DST) keeps the wall-clock time.
	at := time.Date(y, m, d, int(clock/time.Hour), int(clock%time.Hour/time.Minute), 0, 0, loc)
	if !at.Before(end) {
		at = end.Add(-time.Hour)
		if at.Before(dayStart) {
			at = dayStart
		}
	}
	if at.Before(start) {
		at = start
	}
	return at
}

// lastDay is the local date of access's last moment before end.
func lastDay(end time.Time, loc *time.Location) (int, time.Month, int) {
	return end.Add(-time.Nanosecond).In(loc).Date()
}

// reminderRow is a row of booking_reminders.
type reminderRow struct {
	TenantID  uuid.UUID `gorm:"primaryKey"`
	OutboxID  uuid.UUID `gorm:"primaryKey"`
	BookingID uuid.UUID
	Kind      string
	CreatedAt time.Time
}

func (reminderRow) TableName() string { return "booking_reminders" }

// remember records that message id is b's reminder of kind.
// The row follows its message (outbox.Add) in the transaction's next
// round trip.
func (s *Service) remember(ctx context.Context, b Booking, kind string, id uuid.UUID) error {
	if err := tenants.ExecLater(ctx, `INSERT INTO booking_reminders (tenant_id, outbox_id, booking_id, kind, created_at) VALUES ($1, $2, $3, $4, $5)`,
		b.TenantID, id, b.ID, kind, s.now()); err != nil {
		return wrap("record reminder", err)
	}
	return nil
}

// KeysReturned calls off the waiting return reminders of accesses
// bookingIDs: their keys are back in a bin, and asking the visitors to
// bring them back would be wrong. The key exchange calls it in the
// transaction that records the returns (a box's report, or an offline
// box's journal); reminders sent already are left alone. A visitor who
// takes the key again under the same access gets one again (KeysTaken).
//
// A booking whose key was never taken keeps its reminder: when it is due,
// nothing tells whether the visitor will still come before the end, and it
// also says when access ends.
func (s *Service) KeysReturned(ctx context.Context, bookingIDs []uuid.UUID) error {
	if len(bookingIDs) == 0 {
		return nil
	}
	ids, err := remindersOf(ctx, kindReturn, bookingIDs...)
	if err != nil {
		return err
	}
	if err := s.msgs.Cancel(ctx, ids...); err != nil {
		return wrap("cancel reminders", err)
	}
	return nil
}

// KeysTaken queues the return reminders of accesses bookingIDs again when
// their keys are taken after a return called them off (KeysReturned): an
// access may take its key more than once within its window. One that is
// waiting or went out already stays the only one. Called in the
// transaction that records the pickups.
func (s *Service) KeysTaken(ctx context.Context, bookingIDs []uuid.UUID) error {
	if len(bookingIDs) == 0 {
		return nil
	}
	all, err := s.reminderStates(ctx, bookingIDs, kindReturn)
	if err != nil {
		return err
	}
	// Revoking a booking or turning its reminder off cancel the reminder
	// too; such a booking wants none, and scheduleReturnReminder adds none.
	var again []uuid.UUID
	for _, id := range bookingIDs {
		if rs := all[id]; len(rs) > 0 && rs[len(rs)-1].status == outbox.Canceled {
			again = append(again, id)
		}
	}
	if len(again) == 0 {
		return nil
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	var rs []row
	if err := tx.Raw(selectRows+" WHERE bk.id IN ?", again).Scan(&rs).Error; err != nil {
		return wrap("load bookings", err)
	}
	for _, r := range rs {
		if err := s.scheduleReturnReminder(ctx, r.Booking, r.key(), true); err != nil {
			return err
		}
	}
	return nil
}

type reminderState struct {
	id     uuid.UUID
	status outbox.Status
}

// KeysMoved brings the waiting reminders of the live accesses of keys
// keyIDs up to date with the box they name: the box a key is picked up at
// changed (the key turned up in another box, or its home moved while it is
// out), or staff renamed that box or set its time zone right. A reminder
// names the box and was timed in its zone, so a waiting one is called off
// and queued again from the booking as it stands. Reminders sent already
// stay sent, and none is added where none was waiting. Called in the
// transaction that made the change, once it is written.
func (s *Service) KeysMoved(ctx context.Context, keyIDs []uuid.UUID) error {
	if len(keyIDs) == 0 {
		return nil
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	var rs []row
	if err := tx.Raw(selectRows+" WHERE bk.key_id IN ? AND bk.revoked_at IS NULL AND (bk.ends_at IS NULL OR bk.ends_at > ?) ORDER BY bk.id FOR UPDATE OF bk",
		keyIDs, s.now()).Scan(&rs).Error; err != nil {
		return wrap("load bookings", err)
	}
	if len(rs) == 0 {
		return nil
	}
	ids := make([]uuid.UUID, len(rs))
	for i, r := range rs {
		ids[i] = r.ID
	}
	for _, kind := range []string{kindReturn, kindHeld} {
		all, err := s.reminderStates(ctx, ids, kind)
		if err != nil {
			return err
		}
		var waiting []uuid.UUID
		var again []row
		for _, r := range rs {
			n := len(waiting)
			for _, st := range all[r.ID] {
				if st.status == outbox.Queued {
					waiting = append(waiting, st.id)
				}
			}
			if len(waiting) > n {
				again = append(again, r)
			}
		}
		if err := s.msgs.Cancel(ctx, waiting...); err != nil {
			return wrap("cancel reminders", err)
		}
		for _, r := range again {
			if kind == kindReturn {
				err = s.scheduleReturnReminder(ctx, r.Booking, r.key(), true)
			} else {
				err = s.scheduleHeldReminders(ctx, r.Booking, r.key(), true)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// reminderStates lists the reminders of kind of each of bookingIDs, oldest
// first, with their status.
func (s *Service) reminderStates(ctx context.Context, bookingIDs []uuid.UUID, kind string) (map[uuid.UUID][]reminderState, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var rs []reminderRow
	if err := tx.Where("booking_id IN ? AND kind = ?", bookingIDs, kind).Order("created_at, outbox_id").Find(&rs).Error; err != nil {
		return nil, wrap("load reminders", err)
	}
	if len(rs) == 0 {
		return nil, nil
	}
	ids := make([]uuid.UUID, len(rs))
	for i, r := range rs {
		ids[i] = r.OutboxID
	}
	st, err := s.msgs.Statuses(ctx, ids)
	if err != nil {
		return nil, wrap("reminder status", err)
	}
	out := map[uuid.UUID][]reminderState{}
	for _, r := range rs {
		out[r.BookingID] = append(out[r.BookingID], reminderState{id: r.OutboxID, status: st[r.OutboxID]})
	}
	return out, nil
}

// remindersOf lists the ids of the reminders of kind of bookingIDs, oldest
// first.
func remindersOf(ctx context.Context, kind string, bookingIDs ...uuid.UUID) ([]uuid.UUID, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var ids []uuid.UUID
	if err := tx.Model(&reminderRow{}).Where("booking_id IN ? AND kind = ?", bookingIDs, kind).Order("created_at, outbox_id").Pluck("outbox_id", &ids).Error; err != nil {
		return nil, wrap("load reminders", err)
	}
	return ids, nil
}

// cancelReminders calls off b's waiting reminders of kind; those sent are
// left alone.
func (s *Service) cancelReminders(ctx context.Context, bookingID uuid.UUID, kind string) error {
	ids, err := remindersOf(ctx, kind, bookingID)
	if err != nil {
		return err
	}
	if err := s.msgs.Cancel(ctx, ids...); err != nil {
		return wrap("cancel reminders", err)
	}
	return nil
}

// moveReminders moves b's waiting reminders of kind to at (under deadline,
// as for outbox.Message), and reports how many were still waiting (those
// sent or cancelled cannot move).
func (s *Service) moveReminders(ctx context.Context, bookingID uuid.UUID, kind string, at, deadline time.Time) (int, error) {
	ids, err := remindersOf(ctx, kind, bookingID)
	if err != nil {
		return 0, err
	}
	moved := 0
	for _, id := range ids {
		err := s.msgs.Reschedule(ctx, id, at, deadline)
		switch {
		case err == nil:
			moved++
		case tenants.ErrorCode(err) == tenants.EConflict: // sent or cancelled already
		default:
			return moved, wrap("move reminder", err)
		}
	}
	return moved, nil
}

// scheduleReturnReminder makes b's return reminder match b: one waiting
// message at the right time when b is a one-time access whose instructions
// went out with the reminder on, none otherwise. A reminder that went out
// already (the end was moved afterwards) is followed by a new one. fresh
// says b was just created and has no reminders yet to look up.
func (s *Service) scheduleReturnReminder(ctx context.Context, b Booking, k keyRef, fresh bool) error {
	if b.Kind != OneTime || !b.ReturnReminder || b.held() || !b.live(s.now()) {
		if fresh {
			return nil
		}
		return s.cancelReminders(ctx, b.ID, kindReturn)
	}
	at := returnReminderAt(b.StartsAt, *b.EndsAt, k.location(), s.cfg.ReminderClock)
	// The end is the reminder's deadline: quiet hours that would hold it
	// until the access has ended (22:00–08:00 and an end at 07:00) let it
	// go at its own time instead. The outbox applies quiet hours, so it is
	// told the deadline rather than bookings reading the tenant's quiet
	// hours and second-guessing it.
	if !fresh {
		moved, err := s.moveReminders(ctx, b.ID, kindReturn, at, *b.EndsAt)
		if err != nil || moved > 0 {
			return err
		}
	}
	id, err := s.msgs.Add(ctx, outbox.Message{
		Kind: kindReturn, Channel: b.NotifyVia, Recipient: recipient(b.VisitorPhone, b.VisitorEmail, b.NotifyVia),
		Priority: outbox.Low, NotBefore: at, Deadline: *b.EndsAt, TimeZone: k.location().String(),
		Data: map[string]string{"name": b.VisitorName, "key": k.Name, "box": k.BoxName, "ends_at": endClock(*b.EndsAt, k.location())},
	})
	if err != nil {
		return wrap("queue return reminder", err)
	}
	return s.remember(ctx, b, kindReturn, id)
}

// heldReminderAt is when the admins hear of a held booking still not
// released: at its start, or a grace period after it is created (or moved)
// when it has started already.
func (s *Service) heldReminderAt(b Booking) time.Time {
	if earliest := s.now().Add(s.cfg.HeldGrace); b.StartsAt.Before(earliest) {
		return earliest
	}
	return b.StartsAt
}

type adminRow struct {
	Name     string
	Email    string
	Language *string
}

// scheduleHeldReminders makes the reminders about held booking b match it:
// one waiting email per active admin and owner at heldReminderAt while b is
// held and live, none otherwise. fresh as for scheduleReturnReminder.
func (s *Service) scheduleHeldReminders(ctx context.Context, b Booking, k keyRef, fresh bool) error {
	if !b.held() || !b.live(s.now()) {
		if fresh {
			return nil
		}
		return s.cancelReminders(ctx, b.ID, kindHeld)
	}
	at := s.heldReminderAt(b)
	if !fresh {
		moved, err := s.moveReminders(ctx, b.ID, kindHeld, at, time.Time{})
		if err != nil || moved > 0 {
			return err
		}
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	var admins []adminRow
	if err := tx.Raw("SELECT name, email, language FROM users WHERE role IN ('owner', 'admin') AND disabled_at IS NULL ORDER BY id").Scan(&admins).Error; err != nil {
		return wrap("load admins", err)
	}
	for _, a := range admins {
		lang := ""
		if a.Language != nil {
			lang = *a.Language
		}
		id, err := s.msgs.Add(ctx, outbox.Message{
			Kind: kindHeld, Channel: outbox.Email, Recipient: a.Email, Language: lang, NotBefore: at, TimeZone: k.location().String(),
			Data: map[string]string{"name": a.Name, "key": k.Name, "box": k.BoxName, "visitor": b.VisitorName,
				"starts_at": localTime(b.StartsAt, k.location()), "booking_id": b.ID.String()},
		})
		if err != nil {
			return wrap("queue held-booking reminder", err)
		}
		if err := s.remember(ctx, b, kindHeld, id); err != nil {
			return err
		}
	}
	return nil
}

// localTime writes t in the box's zone for people: 2026-05-01 10:00
// (Europe/Paris). Numeric, so it reads the same in every language.
func localTime(t time.Time, loc *time.Location) string {
	return t.In(loc).Format("2006-01-02 15:04") + " (" + loc.String() + ")"
}

// endClock writes only the time of day of end, for "ends today at …". An
// end at exactly 00:00 is written 24:00: its reminder goes out the day
// before (returnReminderAt), where "today at 00:00" would name a time
// already past.
func endClock(end time.Time, loc *time.Location) string {
	le := end.In(loc)
	clock := le.Format("15:04")
	if y, m, d := lastDay(end, loc); d != le.Day() || m != le.Month() || y != le.Year() {
		clock = "24:00"
	}
	return clock + " (" + loc.String() + ")"
}
