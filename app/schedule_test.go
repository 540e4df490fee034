package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants/outbox"
)

func reminder(to string, at time.Time) outbox.Message {
	return outbox.Message{Kind: "return_reminder", Channel: outbox.Email, Recipient: to, Priority: outbox.Low, NotBefore: at, TimeZone: "UTC",
		Data: map[string]string{"name": "Val", "key": "Golf 12", "box": "Main St", "ends_at": "18:00"}}
}

func (s *server) inScope(t *testing.T, tenantID uuid.UUID, fn func(ctx context.Context) error) {
	t.Helper()
	if err := s.app.scope.Do(context.Background(), tenantID, fn); err != nil {
		t.Fatal(err)
	}
}

// TestScheduledMessages: a reminder waits for its time, can be moved (and
// then goes out once, at the new time) or cancelled.
func TestScheduledMessages(t *testing.T) {
	s := startServer(t, withWorkers)
	f := s.signup(t)
	t.Run("WaitsForItsTime", func(t *testing.T) {
		to := "wait-" + uuid.NewString()[:6] + "@example.com"
		at := time.Now().Add(2 * time.Second)
		id := s.queueMessage(t, f.ID, reminder(to, at))
		time.Sleep(time.Second)
		if n := len(s.mailbox(t, to)); n != 0 {
			t.Fatal("sent before its time")
		}
		row := s.waitStatus(t, f.ID, id, outbox.Delivered)
		if row.SentAt.Before(at) {
			t.Fatalf("sent at %v, before %v", row.SentAt, at)
		}
	})
	t.Run("MovedGoesOutOnceAtTheNewTime", func(t *testing.T) {
		to := "moved-" + uuid.NewString()[:6] + "@example.com"
		id := s.queueMessage(t, f.ID, reminder(to, time.Now().Add(time.Second)))
		later := time.Now().Add(3 * time.Second)
		s.inScope(t, f.ID, func(ctx context.Context) error { return s.app.outbox.Reschedule(ctx, id, later, time.Time{}) })
		time.Sleep(2500 * time.Millisecond) // the first time has passed
		if n := len(s.mailbox(t, to)); n != 0 {
			t.Fatal("sent at the old time")
		}
		s.waitStatus(t, f.ID, id, outbox.Delivered)
		time.Sleep(500 * time.Millisecond)
		if n := len(s.mailbox(t, to)); n != 1 {
			t.Fatalf("%d copies, want 1", n)
		}
	})
	t.Run("Cancelled", func(t *testing.T) {
		to := "cancel-" + uuid.NewString()[:6] + "@example.com"
		id := s.queueMessage(t, f.ID, reminder(to, time.Now().Add(time.Second)))
		s.inScope(t, f.ID, func(ctx context.Context) error { return s.app.outbox.Cancel(ctx, id) })
		time.Sleep(2500 * time.Millisecond)
		if n := len(s.mailbox(t, to)); n != 0 {
			t.Fatal("a cancelled message went out")
		}
		if st := s.message(t, f.ID, id).Status; st != outbox.Canceled {
			t.Fatalf("status %s", st)
		}
		r := f.Owner.expect(t, 200, "GET", "/api/v1/messages?status=canceled", nil)
		if !strings.Contains(string(r.Body), id.String()) {
			t.Fatal("cancelled message not listed")
		}
	})
}

// TestQuietHoursAndLanguage: reminders wait out the tenant's quiet hours,
// codes do not; a message without a language takes the tenant's.
func TestQuietHoursAndLanguage(t *testing.T) {
	s := startServer(t, withWorkers)
	f := s.signup(t)
	now := time.Now().UTC()
	start, end := now.Add(-time.Hour).Format("15:04"), now.Add(time.Hour).Format("15:04")
	problemOf(t, f.Owner.do(t, "PUT", "/api/v1/notification-settings", map[string]any{"default_language": "de", "quiet_hours": map[string]string{"start": "25:00", "end": end}}), 422)
	set := f.Owner.expect(t, 200, "PUT", "/api/v1/notification-settings", map[string]any{"default_language": "fr", "quiet_hours": map[string]string{"start": start, "end": end}}).JSON(t)
	if set["default_language"] != "fr" || set["quiet_hours"].(map[string]any)["start"] != start {
		t.Fatalf("settings = %v", set)
	}
	rid := s.queueMessage(t, f.ID, reminder("quiet@example.com", time.Time{}))
	row := s.message(t, f.ID, rid)
	if row.NotBefore == nil || row.NotBefore.Sub(now) < 59*time.Minute || row.NotBefore.Sub(now) > 61*time.Minute {
		t.Fatalf("reminder scheduled at %v, want the end of quiet hours about an hour from now", row.NotBefore)
	}
	cid := s.queueMessage(t, f.ID, outbox.Message{Kind: "login_code", Channel: outbox.SMS, Recipient: "+14155550111", Priority: outbox.Critical, Data: map[string]string{"code": "123456"}})
	s.waitStatus(t, f.ID, cid, outbox.Delivered)
	mail := s.mailbox(t, "+14155550111")
	if len(mail) != 1 || !strings.HasPrefix(mail[0].Body, "Votre code de connexion keyrelay") {
		t.Fatalf("the code went out as %+v, want at once and in French", mail)
	}
	list := f.Owner.expect(t, 200, "GET", "/api/v1/messages?status=queued", nil)
	if !strings.Contains(string(list.Body), `"not_before"`) || !strings.Contains(string(list.Body), rid.String()) {
		t.Fatalf("waiting reminder not listed with its time: %s", list.Body)
	}
}
