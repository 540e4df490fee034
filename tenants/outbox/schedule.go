package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// Canceled is a scheduled message that was called off before it went out.
const Canceled Status = "canceled"

// QuietHours is a daily window, in the recipient's local time, during which
// low-priority messages (reminders) wait. Start after End spans midnight
// (22:00–08:00). Security codes never wait.
type QuietHours struct {
	Start string `json:"start"` // "22:00"
	End   string `json:"end"`   // "08:00"
}

func parseClock(s string) (time.Duration, error) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, err
	}
	return time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute, nil
}

// After returns t, or the end of the quiet window that t falls in, in loc.
func (q QuietHours) After(t time.Time, loc *time.Location) (time.Time, error) {
	start, err := parseClock(q.Start)
	if err != nil {
		return t, err
	}
	end, err := parseClock(q.End)
	if err != nil {
		return t, err
	}
	if start == end {
		return t, nil
	}
	lt := t.In(loc)
	midnight := time.Date(lt.Year(), lt.Month(), lt.Day(), 0, 0, 0, 0, loc)
	at := func(day int, d time.Duration) time.Time {
		// Built from the date, not by adding hours, so days of 23 or 25
		// hours (DST) keep the wall-clock time.
		y, m, dd := midnight.AddDate(0, 0, day).Date()
		return time.Date(y, m, dd, int(d/time.Hour), int(d%time.Hour/time.Minute), 0, 0, loc)
	}
	since := lt.Sub(midnight)
	switch {
	case start < end && since >= start && since < end:
		return at(0, end), nil
	case start > end && since >= start:
		return at(1, end), nil
	case start > end && since < end:
		return at(0, end), nil
	}
	return t, nil
}

// Settings are a tenant's notification preferences.
type Settings struct {
	DefaultLanguage string      `json:"default_language"`
	QuietHours      *QuietHours `json:"quiet_hours"`
}

// tenantRow is what messages need of the tenant: its name (messages are
// signed with it) and its settings.
type tenantRow struct {
	Name            string
	DefaultLanguage string
	QuietHoursStart *string
	QuietHoursEnd   *string
}

// tenantKey is tenantOf's tenants.Memo key.
type tenantKey struct{}

// tenantOf reads ctx's tenant's row once per transaction, in one
// statement for both its name and its settings: a booking's instructions
// need both.
func tenantOf(ctx context.Context) (tenantRow, error) {
	return tenants.Memo(ctx, tenantKey{}, func() (tenantRow, error) {
		tenantID, _ := tenants.TenantOf(ctx)
		var r tenantRow
		err := tenants.QueryRow(ctx, "SELECT name, default_language, to_char(quiet_hours_start, 'HH24:MI'), to_char(quiet_hours_end, 'HH24:MI') FROM tenants WHERE tenant_id = $1", tenantID).
			Scan(&r.Name, &r.DefaultLanguage, &r.QuietHoursStart, &r.QuietHoursEnd)
		if err != nil {
			return tenantRow{}, fmt.Errorf("outbox: tenant: %w", err)
		}
		return r, nil
	})
}

// SettingsOf returns ctx's tenant's settings, read once per transaction:
// every message Add queues needs them.
func (o *Outbox) SettingsOf(ctx context.Context) (Settings, error) {
	r, err := tenantOf(ctx)
	if err != nil {
		return Settings{}, err
	}
	s := Settings{DefaultLanguage: r.DefaultLanguage}
	if r.QuietHoursStart != nil && r.QuietHoursEnd != nil {
		s.QuietHours = &QuietHours{Start: *r.QuietHoursStart, End: *r.QuietHoursEnd}
	}
	return s, nil
}

// Company returns the tenant's name, which messages are signed with; read
// with the settings, once per transaction.
func (o *Outbox) Company(ctx context.Context) (string, error) {
	r, err := tenantOf(ctx)
	return r.Name, err
}

// SetSettings replaces the tenant's settings (owner and admin).
func (o *Outbox) SetSettings(ctx context.Context, s Settings) (Settings, error) {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return Settings{}, err
	}
	var v tenants.Validator
	v.Check(s.DefaultLanguage == "en" || s.DefaultLanguage == "fr", "default_language", "must be en or fr")
	var start, end any
	if s.QuietHours != nil {
		_, e1 := parseClock(s.QuietHours.Start)
		_, e2 := parseClock(s.QuietHours.End)
		v.Check(e1 == nil, "quiet_hours.start", "must be a time of day such as 22:00")
		v.Check(e2 == nil, "quiet_hours.end", "must be a time of day such as 08:00")
		start, end = s.QuietHours.Start, s.QuietHours.End
	}
	if err := v.Err(); err != nil {
		return Settings{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Settings{}, err
	}
	if err := tx.Exec("UPDATE tenants SET default_language = ?, quiet_hours_start = ?::time, quiet_hours_end = ?::time WHERE tenant_id = ?", s.DefaultLanguage, start, end, p.TenantID).Error; err != nil {
		return Settings{}, fmt.Errorf("outbox: set settings: %w", err)
	}
	tenants.Forget(ctx, tenantKey{})
	if err := audit.Record(ctx, p.Actor(), "notifications.settings_changed", "tenant:"+p.TenantID.String(), nil); err != nil {
		return Settings{}, err
	}
	return o.SettingsOf(ctx)
}

// schedule decides when a message may go: its own time, pushed past the
// tenant's quiet hours for low-priority messages unless that would take it
// to or past its deadline. Then it goes at its own time, quiet hours or
// not: a reminder at night still helps, one after the fact does not.
func schedule(m Message, s Settings, now time.Time) (*time.Time, error) {
	at := now
	if m.NotBefore.After(now) {
		at = m.NotBefore
	}
	if m.Priority == Low && s.QuietHours != nil {
		loc := time.UTC
		if m.TimeZone != "" {
			var err error
			if loc, err = time.LoadLocation(m.TimeZone); err != nil {
				return nil, fmt.Errorf("outbox: time zone %q: %w", m.TimeZone, err)
			}
		}
		after, err := s.QuietHours.After(at, loc)
		if err != nil {
			return nil, err
		}
		if m.Deadline.IsZero() || after.Before(m.Deadline) {
			at = after
		}
	}
	if !at.After(now) {
		return nil, nil
	}
	return &at, nil
}

// Reschedule moves a queued message to another time (quiet hours applied
// again, under deadline as for Message.Deadline; zero: none). A task
// already queued for the old time finds itself stale.
func (o *Outbox) Reschedule(ctx context.Context, id uuid.UUID, notBefore, deadline time.Time) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	var r record
	if err := tx.Where("id = ? AND status = 'queued'", id).Take(&r).Error; err != nil {
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return tenants.Errorf(tenants.EConflict, "the message is not waiting to be sent")
		}
		return fmt.Errorf("outbox: reschedule: %w", err)
	}
	s, err := o.SettingsOf(ctx)
	if err != nil {
		return err
	}
	at, err := schedule(Message{Priority: Priority(r.Priority), NotBefore: notBefore, Deadline: deadline, TimeZone: deref(r.TimeZone)}, s, time.Now())
	if err != nil {
		return err
	}
	// relayed_at NULL hands it to the relay again, under the next revision.
	return tx.Model(&record{}).Where("id = ?", id).Updates(map[string]any{
		"not_before": at, "schedule_rev": gorm.Expr("schedule_rev + 1"), "relayed_at": nil, "updated_at": time.Now(),
	}).Error
}

// Statuses returns the status of each of ids of ctx's tenant, without
// opening their data; ids that do not exist are absent.
func (o *Outbox) Statuses(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]Status, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var rs []struct {
		ID     uuid.UUID
		Status Status
	}
	if err := tx.Model(&record{}).Select("id, status").Where("id IN ?", ids).Scan(&rs).Error; err != nil {
		return nil, fmt.Errorf("outbox: statuses: %w", err)
	}
	out := make(map[uuid.UUID]Status, len(rs))
	for _, r := range rs {
		out[r.ID] = r.Status
	}
	return out, nil
}

// Cancel calls off the queued messages of ids, in one statement; those
// already sent are left alone.
func (o *Outbox) Cancel(ctx context.Context, ids ...uuid.UUID) error {
	if len(ids) == 0 {
		return nil
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	return tx.Model(&record{}).Where("id IN ? AND status = 'queued'", ids).
		Updates(map[string]any{"status": string(Canceled), "reason": "canceled", "updated_at": time.Now()}).Error
}
