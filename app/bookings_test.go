package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/keyrelay/keyrelay/tenants/bookings"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// bkWorld is a signed-up tenant with a location and a box in it, in the
// box's time zone tz; keys are added with key.
type bkWorld struct {
	tenantFixture
	s        *server
	location uuid.UUID
	box      uuid.UUID
	tz       *time.Location
	bins     int
}

func bkSetup(t *testing.T, s *server, tz string) *bkWorld {
	t.Helper()
	w := &bkWorld{tenantFixture: s.signup(t), s: s, location: uuid.New(), box: uuid.New()}
	var err error
	if w.tz, err = time.LoadLocation(tz); err != nil {
		t.Fatal(err)
	}
	ownerExec(t, "INSERT INTO locations (tenant_id, id, name) VALUES ($1, $2, $3)", w.ID, w.location, "Airport "+w.location.String()[:6])
	w.addBox(t, w.box, w.location, tz)
	return w
}

func (w *bkWorld) addBox(t *testing.T, id, location uuid.UUID, tz string) {
	t.Helper()
	ownerExec(t, "INSERT INTO boxes (tenant_id, id, location_id, name, model, address, timezone, bins) VALUES ($1, $2, $3, $4, 'MS5', '1 Main St', $5, 40)",
		w.ID, id, location, "Box "+id.String()[:6], tz)
}

// key adds a key to the world's box (or to box).
func (w *bkWorld) key(t *testing.T, name string, box ...uuid.UUID) uuid.UUID {
	t.Helper()
	home := w.box
	if len(box) > 0 {
		home = box[0]
	}
	w.bins++
	id := uuid.New()
	ownerExec(t, "INSERT INTO keys (tenant_id, id, name, fob_serial, home_box_id, home_bin, box_id, bin) VALUES ($1, $2, $3, $4, $5, $6, $5, $6)",
		w.ID, id, name, "FOB-"+id.String()[:8], home, w.bins)
	return id
}

var bkSeq atomic.Int64

// bkPhone is a phone number no other test uses, so the outbox rows to a
// visitor can be told apart.
func bkPhone() string { return fmt.Sprintf("+1415%07d", bkSeq.Add(1)) }

func rfc(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// bkBody is a valid one-time booking of key for a visitor reached by SMS.
func bkBody(key uuid.UUID, phone string, start, end time.Time) map[string]any {
	return map[string]any{"key_id": key.String(), "kind": "one_time", "visitor": map[string]any{"name": "Val Visitor", "phone": phone, "email": nil},
		"starts_at": rfc(start), "ends_at": rfc(end), "notify_via": "sms"}
}

// messagesTo returns the tenant's outbox rows of kind to recipient, newest
// first.
func (w *bkWorld) messagesTo(t *testing.T, kind, to string) []outbox.Row {
	t.Helper()
	var out []outbox.Row
	for _, r := range w.s.outboxOf(t, w.ID) {
		if r.Kind == kind && r.Recipient == to {
			out = append(out, r)
		}
	}
	return out
}

func (w *bkWorld) oneMessage(t *testing.T, kind, to string) outbox.Row {
	t.Helper()
	ms := w.messagesTo(t, kind, to)
	if len(ms) != 1 {
		t.Fatalf("%d %s messages to %s, want 1", len(ms), kind, to)
	}
	return ms[0]
}

func fieldsOfProblem(t *testing.T, r response) []string {
	t.Helper()
	var out []string
	for _, e := range problemOf(t, r, 422)["errors"].([]any) {
		out = append(out, e.(map[string]any)["field"].(string))
	}
	return out
}

// ownerQuery reads one value as the database owner, past row-level
// security.
func ownerQuery[T any](t *testing.T, sql string, args ...any) T {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), testDB.OwnerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var v T
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func TestBookingsCreate(t *testing.T) {
	s := startServer(t)
	w := bkSetup(t, s, "Europe/Paris")
	key := w.key(t, "Golf 12")
	start := time.Now().Add(24 * time.Hour).Truncate(time.Minute)
	end := start.Add(48 * time.Hour)
	phone := bkPhone()
	first := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(key, phone, start, end)).JSON(t)
	id := first["id"].(string)

	t.Run("OKCodeURLAndInstructions", func(t *testing.T) {
		if !regexp.MustCompile(`^[0-9]{10}$`).MatchString(first["code"].(string)) {
			t.Errorf("code %v: want 10 digits", first["code"])
		}
		if !strings.HasPrefix(first["url"].(string), s.app.cfg.BaseURL+"/b/") || first["status"] != "upcoming" || first["key_name"] != "Golf 12" {
			t.Errorf("booking = %v", first)
		}
		msg := w.oneMessage(t, "access_instructions", phone)
		if msg.Channel != outbox.SMS || msg.Data["code"] != first["code"] || msg.Data["url"] != first["url"] || msg.Data["key"] != "Golf 12" ||
			!strings.Contains(msg.Data["starts_at"], "(Europe/Paris)") {
			t.Errorf("instructions = %+v", msg)
		}
		w.oneMessage(t, "return_reminder", phone)
		got := w.Owner.expect(t, 200, "GET", "/api/v1/bookings/"+id, nil).JSON(t)
		if got["code"] != first["code"] || got["url"] != first["url"] || got["box"].(map[string]any)["timezone"] != "Europe/Paris" {
			t.Errorf("About Booking = %v", got)
		}
	})
	t.Run("ErrOverlapNamesTheBooking", func(t *testing.T) {
		p := problemOf(t, w.Owner.do(t, "POST", "/api/v1/bookings", bkBody(key, bkPhone(), start.Add(time.Hour), end.Add(time.Hour))), 409)
		if p["conflicting_booking_id"] != id || !strings.Contains(p["detail"].(string), id) {
			t.Fatalf("problem = %v, want conflicting_booking_id %s", p, id)
		}
	})
	t.Run("OverlapAmongNeighbours", func(t *testing.T) {
		// Two bookings a day apart on a key of their own: a window inside
		// the gap fits, windows touching either edge fit (half-open), and a
		// window over one of them names that one, not its neighbour.
		k := w.key(t, "Neighbours")
		day := start.Add(72 * time.Hour).Truncate(time.Hour)
		a := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(k, bkPhone(), day, day.Add(2*time.Hour))).JSON(t)["id"]
		b := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(k, bkPhone(), day.Add(24*time.Hour), day.Add(26*time.Hour))).JSON(t)["id"]
		for _, tc := range []struct {
			from, to time.Duration
			want     any // the conflicting booking, or nil
		}{
			{time.Hour, 3 * time.Hour, a},
			{-time.Hour, 30 * time.Hour, b}, // over both: the latest to start
			{23 * time.Hour, 25 * time.Hour, b},
			{25 * time.Hour, 27 * time.Hour, b},
			{-time.Hour, 0, nil},
			{2 * time.Hour, 24 * time.Hour, nil},
			{26 * time.Hour, 27 * time.Hour, nil},
		} {
			res := w.Owner.do(t, "POST", "/api/v1/bookings", bkBody(k, bkPhone(), day.Add(tc.from), day.Add(tc.to)))
			if tc.want == nil {
				if res.Status != 201 {
					t.Fatalf("%v–%v: %d %s, want 201", tc.from, tc.to, res.Status, res.Body)
				}
				w.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+res.JSON(t)["id"].(string)+"/revoke", nil)
				continue
			}
			if p := problemOf(t, res, 409); p["conflicting_booking_id"] != tc.want {
				t.Fatalf("%v–%v: conflicting %v, want %v", tc.from, tc.to, p["conflicting_booking_id"], tc.want)
			}
		}
	})
	t.Run("OKOngoingDoesNotOverlap", func(t *testing.T) {
		body := bkBody(key, bkPhone(), start, end)
		body["kind"], body["ends_at"] = "ongoing", nil
		m := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", body).JSON(t)
		if m["ends_at"] != nil || m["return_reminder"] != false || m["kind"] != "ongoing" {
			t.Fatalf("ongoing = %v", m)
		}
	})
	for _, tc := range []struct {
		name  string
		edit  func(b map[string]any)
		field string
	}{
		{"ErrBadPhone", func(b map[string]any) { b["visitor"].(map[string]any)["phone"] = "0612345678" }, "visitor.phone"},
		{"ErrEndBeforeStart", func(b map[string]any) { b["ends_at"] = rfc(start.Add(-time.Hour)) }, "ends_at"},
		{"ErrEndInThePast", func(b map[string]any) {
			b["starts_at"], b["ends_at"] = rfc(time.Now().Add(-3*time.Hour)), rfc(time.Now().Add(-time.Hour))
		}, "ends_at"},
		{"ErrNoEndForOneTime", func(b map[string]any) { delete(b, "ends_at") }, "ends_at"},
		{"ErrOngoingWithEnd", func(b map[string]any) { b["kind"] = "ongoing" }, "ends_at"},
		{"ErrNoContactForChannel", func(b map[string]any) { b["notify_via"] = "email" }, "visitor.email"},
		{"ErrBadEmail", func(b map[string]any) {
			b["notify_via"], b["visitor"].(map[string]any)["email"] = "email", "not-an-address"
		}, "visitor.email"},
		{"ErrBadTime", func(b map[string]any) { b["starts_at"] = "tomorrow" }, "starts_at"},
		{"ErrBadKind", func(b map[string]any) { b["kind"] = "weekly" }, "kind"},
		{"ErrNoName", func(b map[string]any) { b["visitor"].(map[string]any)["name"] = " " }, "visitor.name"},
		{"ErrUnknownKey", func(b map[string]any) { b["key_id"] = uuid.NewString() }, "key_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			other := w.key(t, "Spare")
			body := bkBody(other, bkPhone(), start, end)
			tc.edit(body)
			if f := fieldsOfProblem(t, w.Owner.do(t, "POST", "/api/v1/bookings", body)); !slices.Contains(f, tc.field) {
				t.Fatalf("errors on %v, want %s", f, tc.field)
			}
			if n := ownerQuery[int64](t, "SELECT count(*) FROM bookings WHERE tenant_id = $1 AND key_id = $2", w.ID, other); n != 0 {
				t.Fatalf("a refused booking was stored")
			}
		})
	}
	t.Run("ErrOtherTenantsKey", func(t *testing.T) {
		other := bkSetup(t, s, "UTC")
		foreign := other.key(t, "Theirs")
		if f := fieldsOfProblem(t, w.Owner.do(t, "POST", "/api/v1/bookings", bkBody(foreign, bkPhone(), start, end))); !slices.Equal(f, []string{"key_id"}) {
			t.Fatalf("errors on %v, want [key_id]", f)
		}
		if n := ownerQuery[int64](t, "SELECT count(*) FROM bookings WHERE key_id = $1", foreign); n != 0 {
			t.Fatal("a booking was stored on another tenant's key")
		}
		// Their booking ids are unknown here.
		theirs := other.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(foreign, bkPhone(), start, end)).JSON(t)["id"].(string)
		problemOf(t, w.Owner.do(t, "GET", "/api/v1/bookings/"+theirs, nil), 404)
		problemOf(t, w.Owner.do(t, "POST", "/api/v1/bookings/"+theirs+"/revoke", nil), 404)
		problemOf(t, w.Owner.do(t, "GET", "/api/v1/keys/"+foreign.String()+"/visitors", nil), 404)
	})
	t.Run("ErrArchivedKey", func(t *testing.T) {
		gone := w.key(t, "Gone")
		ownerExec(t, "UPDATE keys SET deleted_at = now() WHERE tenant_id = $1 AND id = $2", w.ID, gone)
		if f := fieldsOfProblem(t, w.Owner.do(t, "POST", "/api/v1/bookings", bkBody(gone, bkPhone(), start, end))); !slices.Equal(f, []string{"key_id"}) {
			t.Fatalf("errors on %v, want [key_id]", f)
		}
	})
	t.Run("ErrUnknownField", func(t *testing.T) {
		body := bkBody(w.key(t, "Extra"), bkPhone(), start, end)
		body["code"] = "1234567890"
		problemOf(t, w.Owner.do(t, "POST", "/api/v1/bookings", body), 400)
	})
}

// TestBookingsConcurrentCreates: overlapping creates racing over HTTP; one
// wins, the others are told which booking is in the way.
func TestBookingsConcurrentCreates(t *testing.T) {
	s := startServer(t)
	w := bkSetup(t, s, "UTC")
	key := w.key(t, "Contested")
	start := time.Now().Add(time.Hour).Truncate(time.Second)
	const n = 6
	answers := make([]response, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = w.Owner.do(t, "POST", "/api/v1/bookings", bkBody(key, bkPhone(), start.Add(time.Duration(i)*time.Minute), start.Add(3*time.Hour)))
		}()
	}
	wg.Wait()
	var winner string
	for _, a := range answers {
		if a.Status == 201 {
			if winner != "" {
				t.Fatal("two overlapping bookings were created")
			}
			winner = a.JSON(t)["id"].(string)
		}
	}
	if winner == "" {
		t.Fatal("no create succeeded")
	}
	for _, a := range answers {
		if a.Status != 201 {
			if p := problemOf(t, a, 409); p["conflicting_booking_id"] != winner {
				t.Errorf("loser's problem %v does not name %s", p, winner)
			}
		}
	}
	if c := ownerQuery[int64](t, "SELECT count(*) FROM bookings WHERE tenant_id = $1", w.ID); c != 1 {
		t.Fatalf("%d bookings stored, want 1", c)
	}
}

// bkStaff invites a staff user limited to locations and signs them in.
func (w *bkWorld) bkStaff(t *testing.T, locations ...uuid.UUID) *client {
	t.Helper()
	email := "staff-" + uuid.NewString()[:8] + "@example.com"
	ids := make([]string, len(locations))
	for i, l := range locations {
		ids[i] = l.String()
	}
	w.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Sam Staff", "email": email, "role": "staff", "location_ids": ids})
	tok := w.s.resetToken(t, w.ID, email)
	w.s.client().expect(t, 204, "POST", "/api/v1/auth/password/reset", map[string]any{"token": tok, "new_password": "invited-pass-8"})
	return w.s.login(t, email, "invited-pass-8")
}

// TestBookingsLocationLimit: a staff user limited to a location books,
// reads and manages only the keys of its boxes; the others are unknown.
func TestBookingsLocationLimit(t *testing.T) {
	s := startServer(t)
	w := bkSetup(t, s, "UTC")
	elsewhere, otherBox := uuid.New(), uuid.New()
	ownerExec(t, "INSERT INTO locations (tenant_id, id, name) VALUES ($1, $2, 'Station')", w.ID, elsewhere)
	w.addBox(t, otherBox, elsewhere, "UTC")
	mine, theirs := w.key(t, "Mine"), w.key(t, "Theirs", otherBox)
	staff := w.bkStaff(t, w.location)
	start := time.Now().Add(time.Hour)

	if f := fieldsOfProblem(t, staff.do(t, "POST", "/api/v1/bookings", bkBody(theirs, bkPhone(), start, start.Add(time.Hour)))); !slices.Equal(f, []string{"key_id"}) {
		t.Fatalf("booking another location's key: errors on %v, want [key_id]", f)
	}
	own := staff.expect(t, 201, "POST", "/api/v1/bookings", bkBody(mine, bkPhone(), start, start.Add(time.Hour))).JSON(t)["id"].(string)
	other := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(theirs, bkPhone(), start, start.Add(time.Hour))).JSON(t)["id"].(string)
	for _, call := range [][2]string{
		{"GET", "/api/v1/bookings/" + other}, {"GET", "/api/v1/bookings/" + other + "/details"},
		{"POST", "/api/v1/bookings/" + other + "/revoke"}, {"POST", "/api/v1/bookings/" + other + "/resend"},
		{"GET", "/api/v1/keys/" + theirs.String() + "/visitors"},
	} {
		problemOf(t, staff.do(t, call[0], call[1], nil), 404)
	}
	problemOf(t, staff.do(t, "PATCH", "/api/v1/bookings/"+other, map[string]any{"return_reminder": false}), 404)
	ids := func(c *client, path string) []string {
		var out []string
		for _, it := range c.expect(t, 200, "GET", path, nil).JSON(t)["items"].([]any) {
			out = append(out, it.(map[string]any)["id"].(string))
		}
		return out
	}
	if got := ids(staff, "/api/v1/bookings"); !slices.Equal(got, []string{own}) {
		t.Fatalf("the limited staff user lists %v, want only %s", got, own)
	}
	if got := ids(w.Owner, "/api/v1/bookings"); len(got) != 2 {
		t.Fatalf("the owner lists %v, want both", got)
	}
	if got := ids(staff, "/api/v1/keys/"+mine.String()+"/visitors"); !slices.Equal(got, []string{own}) {
		t.Fatalf("visitors of the staff user's key: %v", got)
	}
	if n := ownerQuery[int64](t, "SELECT count(*) FROM bookings WHERE id = $1 AND revoked_at IS NULL", uuid.MustParse(other)); n != 1 {
		t.Fatal("the refused revoke changed the booking")
	}
}

// TestBookingsResend: once an hour, by the original channel.
func TestBookingsResend(t *testing.T) {
	s := startServer(t)
	w := bkSetup(t, s, "UTC")
	email := "val-" + uuid.NewString()[:8] + "@example.com"
	body := bkBody(w.key(t, "Golf"), bkPhone(), time.Now().Add(time.Hour), time.Now().Add(5*time.Hour))
	body["notify_via"], body["visitor"].(map[string]any)["email"] = "email", email
	id := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", body).JSON(t)["id"].(string)

	// An integration retries a refusal with its Idempotency-Key once
	// Retry-After has passed: the 429 is not kept, so the retry runs.
	idem := uuid.NewString()
	r := w.Owner.do(t, "POST", "/api/v1/bookings/"+id+"/resend", nil, "Idempotency-Key", idem)
	problemOf(t, r, 429)
	after, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil || after < 3590 || after > 3600 {
		t.Fatalf("Retry-After %q, want about 3600 seconds", r.Header.Get("Retry-After"))
	}
	if n := len(w.messagesTo(t, "access_instructions", email)); n != 1 {
		t.Fatalf("%d instructions after a refused resend, want 1", n)
	}
	// An hour and a bit later (the clock is the database's record).
	ownerExec(t, "UPDATE bookings SET sent_at = sent_at - interval '61 minutes' WHERE id = $1", uuid.MustParse(id))
	m := w.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+id+"/resend", nil, "Idempotency-Key", idem).JSON(t)
	if m["resent_at"] == nil {
		t.Fatalf("resent_at not set: %v", m)
	}
	sent := w.messagesTo(t, "access_instructions", email)
	if len(sent) != 2 || sent[0].Channel != outbox.Email || sent[1].Channel != outbox.Email {
		t.Fatalf("instructions after a resend: %+v, want 2 by email", sent)
	}
	problemOf(t, w.Owner.do(t, "POST", "/api/v1/bookings/"+id+"/resend", nil), 429)
	w.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+id+"/revoke", nil)
	problemOf(t, w.Owner.do(t, "POST", "/api/v1/bookings/"+id+"/resend", nil), 409)
}

// TestBookingsHeld: a held booking has a code staff can see, sends nothing
// and reminds the admins at its start until it is released.
func TestBookingsHeld(t *testing.T) {
	s := startServer(t)
	w := bkSetup(t, s, "Europe/Paris")
	phone := bkPhone()
	start := time.Now().Add(3 * time.Hour).Truncate(time.Second)
	body := bkBody(w.key(t, "Clio"), phone, start, start.Add(24*time.Hour))
	body["hold"] = true
	m := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", body).JSON(t)
	id := m["id"].(string)
	if m["status"] != "held" || m["code"] == "" || m["sent_at"] != nil || m["hold"] != true {
		t.Fatalf("held booking = %v", m)
	}
	for _, kind := range []string{"access_instructions", "return_reminder"} {
		if n := len(w.messagesTo(t, kind, phone)); n != 0 {
			t.Fatalf("a held booking sent %d %s", n, kind)
		}
	}
	reminder := w.oneMessage(t, "held_booking_reminder", w.Email)
	if reminder.NotBefore == nil || !reminder.NotBefore.Equal(start) || reminder.Status != outbox.Queued {
		t.Fatalf("the admins' reminder = %+v, want queued for %v", reminder, start)
	}
	list := w.Owner.expect(t, 200, "GET", "/api/v1/bookings?status=held", nil).JSON(t)["items"].([]any)
	if len(list) != 1 || list[0].(map[string]any)["id"] != id {
		t.Fatalf("held list = %v", list)
	}
	problemOf(t, w.Owner.do(t, "POST", "/api/v1/bookings/"+id+"/resend", nil), 409)

	// Moving the start moves the admins' reminder.
	later := start.Add(time.Hour)
	w.Owner.expect(t, 200, "PATCH", "/api/v1/bookings/"+id, map[string]any{"starts_at": rfc(later)})
	if moved := s.message(t, w.ID, reminder.ID); !moved.NotBefore.Equal(later) {
		t.Fatalf("admins' reminder at %v after the start moved to %v", moved.NotBefore, later)
	}

	rel := w.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+id+"/release", nil).JSON(t)
	if rel["status"] != "upcoming" || rel["released_at"] == nil {
		t.Fatalf("released = %v", rel)
	}
	if msg := w.oneMessage(t, "access_instructions", phone); msg.Data["code"] != m["code"] {
		t.Fatalf("instructions on release carry %q, want the held code %v", msg.Data["code"], m["code"])
	}
	w.oneMessage(t, "return_reminder", phone)
	if st := s.message(t, w.ID, reminder.ID).Status; st != outbox.Canceled {
		t.Fatalf("the admins' reminder is %s after the release, want canceled", st)
	}
	problemOf(t, w.Owner.do(t, "POST", "/api/v1/bookings/"+id+"/release", nil), 409)
	if n := len(w.messagesTo(t, "access_instructions", phone)); n != 1 {
		t.Fatalf("%d instructions, want 1", n)
	}
}

// TestBookingsReminderDay: the return reminder goes out on the day access
// ends in the box's zone, which may not be the UTC day.
func TestBookingsReminderDay(t *testing.T) {
	s := startServer(t)
	for _, tc := range []struct {
		name, zone string
		endHour    int
		endMin     int
		wantHour   int // local hour of the reminder
		utcDayOff  int // the end's UTC day minus its local day
	}{
		// 00:30 in Paris is 22:30 or 23:30 UTC the day before: the reminder
		// is at the start of the Paris day, not on the UTC day.
		{"ParisJustAfterMidnight", "Europe/Paris", 0, 30, 0, -1},
		// UTC+13: 08:00 in Tonga is 19:00 UTC the day before.
		{"TongaUTCPlus13", "Pacific/Tongatapu", 8, 0, 7, -1},
		// UTC-10: 20:00 in Honolulu is 06:00 UTC the day after.
		{"HonoluluUTCMinus10", "Pacific/Honolulu", 20, 0, 9, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := bkSetup(t, s, tc.zone)
			in3 := time.Now().In(w.tz).AddDate(0, 0, 3)
			end := time.Date(in3.Year(), in3.Month(), in3.Day(), tc.endHour, tc.endMin, 0, 0, w.tz)
			ly, lm, ld := end.Date()
			uy, um, ud := end.UTC().Date()
			if d := int(time.Date(uy, um, ud, 0, 0, 0, 0, time.UTC).Sub(time.Date(ly, lm, ld, 0, 0, 0, 0, time.UTC)).Hours() / 24); d != tc.utcDayOff {
				t.Fatalf("fixture: the end's UTC day is %+d from its local day, want %+d", d, tc.utcDayOff)
			}
			phone := bkPhone()
			w.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(w.key(t, "Golf"), phone, time.Now().Add(time.Hour), end))
			r := w.oneMessage(t, "return_reminder", phone)
			if r.NotBefore == nil {
				t.Fatal("the reminder is not scheduled")
			}
			local := r.NotBefore.In(w.tz)
			if local.Year() != end.Year() || local.YearDay() != end.YearDay() || local.Hour() != tc.wantHour || !r.NotBefore.Before(end) {
				t.Fatalf("reminder at %v local (%v UTC), want %02d:00 on %s local, before the end",
					local, r.NotBefore.UTC(), tc.wantHour, end.Format("2006-01-02"))
			}
			if r.Priority != outbox.Low || r.Channel != outbox.SMS {
				t.Fatalf("reminder priority %s channel %s", r.Priority, r.Channel)
			}
		})
	}
}

// TestBookingsReminderFollowsChanges: PATCH moves the return reminder (the
// same message), turning it off or revoking cancels it, and the key's
// out_until follows the access that has it out.
func TestBookingsReminderFollowsChanges(t *testing.T) {
	s := startServer(t)
	w := bkSetup(t, s, "Europe/Paris")
	key := w.key(t, "Golf")
	phone := bkPhone()
	in2 := time.Now().In(w.tz).AddDate(0, 0, 2)
	end := time.Date(in2.Year(), in2.Month(), in2.Day(), 18, 0, 0, 0, w.tz)
	id := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(key, phone, time.Now().Add(time.Hour), end)).JSON(t)["id"].(string)
	first := w.oneMessage(t, "return_reminder", phone)
	if want := time.Date(end.Year(), end.Month(), end.Day(), 9, 0, 0, 0, w.tz); !first.NotBefore.Equal(want) {
		t.Fatalf("reminder at %v, want %v", first.NotBefore, want)
	}
	// The key is out with this access (the box issue sets this at pickup).
	ownerExec(t, "UPDATE keys SET state = 'out', box_id = NULL, bin = NULL, out_access_id = $3, out_since = now(), out_until = $4 WHERE tenant_id = $1 AND id = $2",
		w.ID, key, uuid.MustParse(id), end)

	t.Run("PatchMovesIt", func(t *testing.T) {
		newEnd := end.AddDate(0, 0, 1)
		m := w.Owner.expect(t, 200, "PATCH", "/api/v1/bookings/"+id, map[string]any{"ends_at": rfc(newEnd)}).JSON(t)
		if m["ends_at"] != rfc(newEnd) {
			t.Fatalf("ends_at = %v", m["ends_at"])
		}
		moved := s.message(t, w.ID, first.ID)
		if want := time.Date(newEnd.Year(), newEnd.Month(), newEnd.Day(), 9, 0, 0, 0, w.tz); !moved.NotBefore.Equal(want) || moved.Status != outbox.Queued || moved.ScheduleRev != first.ScheduleRev+1 {
			t.Fatalf("after PATCH the reminder is %+v, want queued at %v", moved, want)
		}
		if n := len(w.messagesTo(t, "return_reminder", phone)); n != 1 {
			t.Fatalf("%d reminders after a move, want 1", n)
		}
		if until := ownerQuery[time.Time](t, "SELECT out_until FROM keys WHERE id = $1", key); !until.Equal(newEnd) {
			t.Fatalf("key out_until %v, want %v", until, newEnd)
		}
	})
	t.Run("OffCancelsOnCancelsAnew", func(t *testing.T) {
		w.Owner.expect(t, 200, "PATCH", "/api/v1/bookings/"+id, map[string]any{"return_reminder": false})
		if st := s.message(t, w.ID, first.ID).Status; st != outbox.Canceled {
			t.Fatalf("reminder %s after turning it off", st)
		}
		w.Owner.expect(t, 200, "PATCH", "/api/v1/bookings/"+id, map[string]any{"return_reminder": true})
		if ms := w.messagesTo(t, "return_reminder", phone); len(ms) != 2 || ms[0].Status != outbox.Queued {
			t.Fatalf("turning the reminder on again: %+v", ms)
		}
	})
	t.Run("RevokeCancelsIt", func(t *testing.T) {
		m := w.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+id+"/revoke", nil).JSON(t)
		if m["status"] != "revoked" || m["revoked_at"] == nil {
			t.Fatalf("revoked = %v", m)
		}
		for _, r := range w.messagesTo(t, "return_reminder", phone) {
			if r.Status != outbox.Canceled {
				t.Fatalf("a reminder is %s after the revocation", r.Status)
			}
		}
		if until := ownerQuery[time.Time](t, "SELECT out_until FROM keys WHERE id = $1", key); until.After(time.Now()) {
			t.Fatalf("key out_until %v after the revocation: the key is overdue now", until)
		}
		problemOf(t, w.Owner.do(t, "PATCH", "/api/v1/bookings/"+id, map[string]any{"return_reminder": true}), 409)
		w.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+id+"/revoke", nil) // twice: no change
		visitors := w.Owner.expect(t, 200, "GET", "/api/v1/keys/"+key.String()+"/visitors", nil).JSON(t)["items"].([]any)
		if len(visitors) != 0 {
			t.Fatalf("a revoked access is among the key's visitors: %v", visitors)
		}
	})
}

// TestBookingsReminderFollowsBox: a box's time zone set right after
// bookings were made (created in Paris, the box is in New York) re-times
// their waiting return reminders in the new zone and names the box as it is
// now; a reminder sent already is not sent again.
func TestBookingsReminderFollowsBox(t *testing.T) {
	s := startServer(t)
	w := bkSetup(t, s, "Europe/Paris")
	ny, _ := time.LoadLocation("America/New_York")
	key, sentKey := w.key(t, "Golf"), w.key(t, "Polo")
	phone, sentPhone := bkPhone(), bkPhone()
	in3 := time.Now().In(ny).AddDate(0, 0, 3)
	end := time.Date(in3.Year(), in3.Month(), in3.Day(), 15, 0, 0, 0, ny) // 21:00 in Paris: the same day in both zones
	w.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(key, phone, time.Now().Add(time.Hour), end))
	w.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(sentKey, sentPhone, time.Now().Add(time.Hour), end))
	first := w.oneMessage(t, "return_reminder", phone)
	if want := time.Date(end.In(w.tz).Year(), end.In(w.tz).Month(), end.In(w.tz).Day(), 9, 0, 0, 0, w.tz); !first.NotBefore.Equal(want) {
		t.Fatalf("reminder at %v, want 09:00 Paris %v", first.NotBefore, want)
	}
	sent := w.oneMessage(t, "return_reminder", sentPhone)
	ownerExec(t, "UPDATE outbox SET status = 'sent' WHERE id = $1", sent.ID)

	w.Owner.expect(t, 200, "PATCH", "/api/v1/boxes/"+w.box.String(), map[string]any{"timezone": "America/New_York", "name": "Front desk NY"})
	var queued []outbox.Row
	ms := w.messagesTo(t, "return_reminder", phone)
	for _, m := range ms {
		switch {
		case m.Status == outbox.Queued:
			queued = append(queued, m)
		case m.ID == first.ID && m.Status == outbox.Canceled:
		default:
			t.Fatalf("reminder %+v after the zone was set right", m)
		}
	}
	if len(ms) != 2 || len(queued) != 1 {
		t.Fatalf("reminders after the zone was set right: %+v, want the old one called off and one queued", ms)
	}
	if want := time.Date(end.Year(), end.Month(), end.Day(), 9, 0, 0, 0, ny); !queued[0].NotBefore.Equal(want) || queued[0].Data["box"] != "Front desk NY" {
		t.Fatalf("the new reminder is at %v naming %q, want 09:00 New York %v naming the box as it is now", queued[0].NotBefore, queued[0].Data["box"], want)
	}
	if got := w.messagesTo(t, "return_reminder", sentPhone); len(got) != 1 || got[0].Status != outbox.Sent {
		t.Fatalf("a reminder sent already: %+v, want it alone", got)
	}

	// The key found in a bin of another box (in Tokyo), and the records
	// set right: its booking is picked up there now, and its reminder
	// names that box, timed in its zone.
	tokyo, _ := time.LoadLocation("Asia/Tokyo")
	other := uuid.New()
	w.addBox(t, other, w.location, "Asia/Tokyo")
	w.Owner.expect(t, 200, "PUT", "/api/v1/keys/"+key.String()+"/whereabouts", map[string]any{"state": "in_bin", "box_id": other.String(), "bin": 5})
	queued = nil
	for _, m := range w.messagesTo(t, "return_reminder", phone) {
		if m.Status == outbox.Queued {
			queued = append(queued, m)
		}
	}
	if len(queued) != 1 || queued[0].Data["box"] != "Box "+other.String()[:6] || queued[0].Data["ends_at"] != end.In(tokyo).Format("15:04")+" (Asia/Tokyo)" || !queued[0].NotBefore.Before(end) {
		t.Fatalf("after the key moved to the Tokyo box the waiting reminders are %+v", queued)
	}
}

// TestBookingsCodesAtRest: the rows hold no code and no URL token in clear.
func TestBookingsCodesAtRest(t *testing.T) {
	s := startServer(t)
	w := bkSetup(t, s, "UTC")
	m := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(w.key(t, "Golf"), bkPhone(), time.Now().Add(time.Hour), time.Now().Add(2*time.Hour))).JSON(t)
	code, url := m["code"].(string), m["url"].(string)
	token := url[strings.LastIndex(url, "/")+1:]
	for _, q := range []string{
		"SELECT t::text FROM bookings t WHERE tenant_id = $1",
		"SELECT string_agg(t::text, '|') FROM codes t WHERE tenant_id = $1",
		"SELECT string_agg(t::text, '|') FROM audit_events t WHERE tenant_id = $1",
		"SELECT string_agg(t::text, '|') FROM outbox t WHERE tenant_id = $1",
	} {
		row := ownerQuery[string](t, q, w.ID)
		for _, secret := range []string{code, hex.EncodeToString([]byte(code)), token, hex.EncodeToString([]byte(token))} {
			if strings.Contains(row, secret) {
				t.Fatalf("%s: a code or token is stored in clear", q)
			}
		}
	}
	if !bytes.Contains([]byte(w.Owner.expect(t, 200, "GET", "/api/v1/bookings/"+m["id"].(string)+"/details", nil).JSON(t)["text"].(string)), []byte(code)) {
		t.Fatal("the details do not show the code")
	}
}

// TestBookingsAPIKeyIdempotent: an integration with an API key retries a
// create with the same Idempotency-Key and gets the same booking, once.
func TestBookingsAPIKeyIdempotent(t *testing.T) {
	s := startServer(t)
	w := bkSetup(t, s, "UTC")
	apiKey := w.Owner.expect(t, 201, "POST", "/api/v1/api-keys", map[string]any{"name": "Rental system", "role": "staff"}).JSON(t)["key"].(string)
	integ := s.client()
	integ.token = apiKey
	key := w.key(t, "Golf")
	phone := bkPhone()
	body := bkBody(key, phone, time.Now().Add(time.Hour), time.Now().Add(2*time.Hour))
	idem := uuid.NewString()
	first := integ.expect(t, 201, "POST", "/api/v1/bookings", body, "Idempotency-Key", idem)
	again := integ.expect(t, 201, "POST", "/api/v1/bookings", body, "Idempotency-Key", idem)
	if !bytes.Equal(first.Body, again.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("the retry was not replayed: %s / %s", first.Body, again.Body)
	}
	if n := ownerQuery[int64](t, "SELECT count(*) FROM bookings WHERE key_id = $1", key); n != 1 {
		t.Fatalf("%d bookings, want 1", n)
	}
	if n := len(w.messagesTo(t, "access_instructions", phone)); n != 1 {
		t.Fatalf("%d instructions, want 1", n)
	}
	id := first.JSON(t)["id"].(string)
	if got := integ.expect(t, 200, "GET", "/api/v1/bookings/"+id, nil).JSON(t); got["created_by"] != "api_key:"+ownerQuery[string](t, "SELECT id::text FROM api_keys WHERE tenant_id = $1", w.ID) {
		t.Fatalf("created_by = %v", got["created_by"])
	}
	revoke := "/api/v1/bookings/" + id + "/revoke"
	r1 := integ.expect(t, 200, "POST", revoke, nil, "Idempotency-Key", idem)
	r2 := integ.expect(t, 200, "POST", revoke, nil, "Idempotency-Key", idem)
	if !bytes.Equal(r1.Body, r2.Body) || r2.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatal("the revoke retry was not replayed")
	}
	action := ownerQuery[string](t, "SELECT string_agg(action, ',' ORDER BY id) FROM audit_events WHERE tenant_id = $1 AND target = $2", w.ID, "booking:"+id)
	if action != "booking.created,booking.revoked" {
		t.Fatalf("audit of the booking: %s", action)
	}
	// The same key (and the same empty body) on another booking is another
	// request: it revokes that booking instead of replaying the first.
	other := integ.expect(t, 201, "POST", "/api/v1/bookings", bkBody(key, bkPhone(), time.Now().Add(3*time.Hour), time.Now().Add(4*time.Hour))).JSON(t)["id"].(string)
	r3 := integ.expect(t, 200, "POST", "/api/v1/bookings/"+other+"/revoke", nil, "Idempotency-Key", idem)
	if r3.Header.Get("Idempotent-Replayed") != "" || r3.JSON(t)["id"] != other {
		t.Fatalf("revoking another booking with the same key answered %s (replayed: %q)", r3.Body, r3.Header.Get("Idempotent-Replayed"))
	}
	if n := ownerQuery[int64](t, "SELECT count(*) FROM bookings WHERE id = $1 AND revoked_at IS NOT NULL", uuid.MustParse(other)); n != 1 {
		t.Fatal("the second booking was not revoked")
	}
}

// TestAliasCodes: chosen or drawn, sent ahead, unique among live codes, one
// live booking at a time, retired once free.
func TestAliasCodes(t *testing.T) {
	s := startServer(t)
	w := bkSetup(t, s, "UTC")
	phone := bkPhone()
	const chosen = "7305184926"
	alias := w.Owner.expect(t, 201, "POST", "/api/v1/alias-codes", map[string]any{"code": chosen, "visitor": map[string]any{"name": "Hana Guest", "phone": phone}, "notify_via": "sms", "send": true}).JSON(t)
	aliasID := alias["id"].(string)
	if alias["code"] != chosen || alias["status"] != "free" || alias["sent_at"] == nil {
		t.Fatalf("alias = %v", alias)
	}
	if msg := w.oneMessage(t, "alias_code", phone); msg.Data["code"] != chosen {
		t.Fatalf("alias message %+v", msg)
	}
	t.Run("ErrAliasLive", func(t *testing.T) {
		problemOf(t, w.Owner.do(t, "POST", "/api/v1/alias-codes", map[string]any{"code": chosen, "visitor": map[string]any{"name": "Other", "phone": bkPhone()}, "notify_via": "sms", "send": false}), 409)
	})
	t.Run("ErrBookingCodeLive", func(t *testing.T) {
		code := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(w.key(t, "Live"), bkPhone(), time.Now().Add(time.Hour), time.Now().Add(2*time.Hour))).JSON(t)["code"].(string)
		problemOf(t, w.Owner.do(t, "POST", "/api/v1/alias-codes", map[string]any{"code": code, "visitor": map[string]any{"name": "Other", "phone": bkPhone()}, "notify_via": "sms"}), 409)
	})
	t.Run("ErrTooShort", func(t *testing.T) {
		if f := fieldsOfProblem(t, w.Owner.do(t, "POST", "/api/v1/alias-codes", map[string]any{"code": "482913", "visitor": map[string]any{"name": "Other", "phone": bkPhone()}, "notify_via": "sms"})); !slices.Equal(f, []string{"code"}) {
			t.Fatalf("errors on %v", f)
		}
	})
	t.Run("OKDrawn", func(t *testing.T) {
		m := w.Owner.expect(t, 201, "POST", "/api/v1/alias-codes", map[string]any{"visitor": map[string]any{"name": "Drawn", "email": "drawn@example.com"}, "notify_via": "email"}).JSON(t)
		if !regexp.MustCompile(`^[0-9]{10}$`).MatchString(m["code"].(string)) || m["sent_at"] != nil {
			t.Fatalf("drawn alias = %v", m)
		}
	})
	start := time.Now().Add(time.Hour)
	linked := bkBody(w.key(t, "Room 101"), phone, start, start.Add(48*time.Hour))
	linked["alias_code_id"] = aliasID
	booking := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", linked).JSON(t)
	bookingID := booking["id"].(string)
	if booking["code"] != chosen || booking["alias_code_id"] != aliasID {
		t.Fatalf("linked booking = %v", booking)
	}
	if got := w.Owner.expect(t, 200, "GET", "/api/v1/alias-codes/"+aliasID, nil).JSON(t); got["status"] != "linked" || got["booking_id"] != bookingID {
		t.Fatalf("alias after linking = %v", got)
	}
	t.Run("ErrLinkTwice", func(t *testing.T) {
		twice := bkBody(w.key(t, "Room 102"), bkPhone(), start, start.Add(time.Hour))
		twice["alias_code_id"] = aliasID
		problemOf(t, w.Owner.do(t, "POST", "/api/v1/bookings", twice), 409)
	})
	t.Run("ErrRetireLinked", func(t *testing.T) {
		problemOf(t, w.Owner.do(t, "DELETE", "/api/v1/alias-codes/"+aliasID, nil), 409)
	})
	t.Run("ErrOtherTenantsAlias", func(t *testing.T) {
		other := bkSetup(t, s, "UTC")
		body := bkBody(other.key(t, "Theirs"), bkPhone(), start, start.Add(time.Hour))
		body["alias_code_id"] = aliasID
		if f := fieldsOfProblem(t, other.Owner.do(t, "POST", "/api/v1/bookings", body)); !slices.Equal(f, []string{"alias_code_id"}) {
			t.Fatalf("errors on %v", f)
		}
		problemOf(t, other.Owner.do(t, "GET", "/api/v1/alias-codes/"+aliasID, nil), 404)
	})
	w.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+bookingID+"/revoke", nil)
	if got := w.Owner.expect(t, 200, "GET", "/api/v1/alias-codes/"+aliasID, nil).JSON(t); got["status"] != "free" || got["booking_id"] != nil {
		t.Fatalf("alias after its booking was revoked = %v", got)
	}
	w.Owner.expect(t, 204, "DELETE", "/api/v1/alias-codes/"+aliasID, nil)
	w.Owner.expect(t, 204, "DELETE", "/api/v1/alias-codes/"+aliasID, nil)
	if got := w.Owner.expect(t, 200, "GET", "/api/v1/alias-codes/"+aliasID, nil).JSON(t); got["status"] != "retired" {
		t.Fatalf("alias after DELETE = %v", got)
	}
	// Retired, its digits are free again.
	w.Owner.expect(t, 201, "POST", "/api/v1/alias-codes", map[string]any{"code": chosen, "visitor": map[string]any{"name": "Next Guest", "phone": bkPhone()}, "notify_via": "sms"})
	relink := bkBody(w.key(t, "Room 103"), bkPhone(), start, start.Add(time.Hour))
	relink["alias_code_id"] = aliasID
	problemOf(t, w.Owner.do(t, "POST", "/api/v1/bookings", relink), 409)
}

// TestOpenAPIBookings drives every booking and alias-code operation through
// the real server, checking requests and answers against the document.
func TestOpenAPIBookings(t *testing.T) {
	doc := loadOpenAPI(t, mergedOpenAPI(t))
	// A small body limit: a body over it still fits the socket buffers, so
	// the server's early 413 never resets a client still writing.
	s := startServer(t, func(c *Config) { c.BodyLimit = 16 << 10 })
	sc := &specCheck{t: t, srv: s, url: s.url, doc: doc, ops: documentedOps(doc)}
	w := bkSetup(t, s, "Europe/Paris")
	owner := caller{token: w.Owner.token}
	integ := caller{token: w.Owner.expect(t, 201, "POST", "/api/v1/api-keys", map[string]any{"name": "Rentals", "role": "staff"}).JSON(t)["key"].(string)}
	var anon caller
	visitorEmail := "visitor-" + uuid.NewString()[:8] + "@example.com"
	w.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Vi", "email": visitorEmail, "role": "visitor"})
	tok := s.resetToken(t, w.ID, visitorEmail)
	s.client().expect(t, 204, "POST", "/api/v1/auth/password/reset", map[string]any{"token": tok, "new_password": "invited-pass-8"})
	visitor := caller{token: s.login(t, visitorEmail, "invited-pass-8").token}

	key, key2 := w.key(t, "Golf 12"), w.key(t, "Clio 3")
	start := time.Now().Add(2 * time.Hour).Truncate(time.Second)
	end := start.Add(24 * time.Hour)
	body := bkBody(key, bkPhone(), start, end)
	body["return_reminder"], body["hold"], body["alias_code_id"] = true, false, nil
	idem := uuid.NewString()
	created := sc.call(integ, 201, true, "POST", "/api/v1/bookings", body, "Idempotency-Key", idem).JSON(t)
	sc.call(integ, 201, true, "POST", "/api/v1/bookings", body, "Idempotency-Key", idem)
	id := created["id"].(string)
	conflict := sc.call(owner, 409, true, "POST", "/api/v1/bookings", bkBody(key, bkPhone(), start, end)).JSON(t)
	if conflict["conflicting_booking_id"] != id {
		t.Errorf("conflict = %v", conflict)
	}
	bad := bkBody(key2, "555", start, end)
	sc.call(owner, 422, false, "POST", "/api/v1/bookings", bad)
	sc.call(owner, 422, true, "POST", "/api/v1/bookings", bkBody(key2, bkPhone(), end, start))
	sc.call(owner, 400, false, "POST", "/api/v1/bookings", map[string]any{"key_id": key2.String(), "tenant_id": uuid.NewString()})
	sc.call(owner, 400, false, "POST", "/api/v1/bookings", "{not json")
	sc.call(owner, 413, false, "POST", "/api/v1/bookings", `{"kind":"`+strings.Repeat("x", 20<<10)+`"}`)
	sc.call(visitor, 403, true, "POST", "/api/v1/bookings", bkBody(key2, bkPhone(), start, end))
	sc.call(anon, 401, true, "POST", "/api/v1/bookings", bkBody(key2, bkPhone(), start, end))
	held := bkBody(key2, bkPhone(), start, end)
	held["hold"] = true
	heldID := sc.call(owner, 201, true, "POST", "/api/v1/bookings", held).JSON(t)["id"].(string)
	ongoing := bkBody(key2, bkPhone(), start, end)
	ongoing["kind"], ongoing["ends_at"], ongoing["return_reminder"] = "ongoing", nil, false
	ongoingID := sc.call(owner, 201, true, "POST", "/api/v1/bookings", ongoing).JSON(t)["id"].(string)

	sc.call(owner, 200, true, "GET", "/api/v1/bookings", nil)
	page := sc.call(owner, 200, true, "GET", "/api/v1/bookings?limit=1", nil).JSON(t)
	sc.call(owner, 200, true, "GET", "/api/v1/bookings?limit=1&cursor="+page["next_cursor"].(string), nil)
	sc.call(integ, 200, true, "GET", "/api/v1/bookings?status=held&key_id="+key2.String()+"&visitor=val", nil)
	sc.call(owner, 422, false, "GET", "/api/v1/bookings?status=lost", nil)
	sc.call(owner, 422, false, "GET", "/api/v1/bookings?key_id=nope", nil)
	sc.call(owner, 422, false, "GET", "/api/v1/bookings?visitor="+strings.Repeat("v", 201), nil)
	sc.call(visitor, 403, true, "GET", "/api/v1/bookings", nil)
	sc.call(anon, 401, true, "GET", "/api/v1/bookings", nil)

	sc.call(owner, 200, true, "GET", "/api/v1/bookings/"+id, nil)
	sc.call(owner, 200, true, "GET", "/api/v1/bookings/"+ongoingID, nil)
	sc.call(owner, 404, true, "GET", "/api/v1/bookings/"+uuid.NewString(), nil)
	sc.call(owner, 404, false, "GET", "/api/v1/bookings/nope", nil)
	sc.call(visitor, 403, true, "GET", "/api/v1/bookings/"+id, nil)
	sc.call(anon, 401, true, "GET", "/api/v1/bookings/"+id, nil)

	sc.call(owner, 200, true, "PATCH", "/api/v1/bookings/"+id, map[string]any{"ends_at": rfc(end.Add(time.Hour)), "starts_at": nil, "return_reminder": false}, "Idempotency-Key", uuid.NewString())
	sc.call(owner, 422, true, "PATCH", "/api/v1/bookings/"+id, map[string]any{"ends_at": rfc(start.Add(-time.Hour))})
	sc.call(owner, 422, true, "PATCH", "/api/v1/bookings/"+ongoingID, map[string]any{"ends_at": rfc(end)})
	sc.call(owner, 400, false, "PATCH", "/api/v1/bookings/"+id, map[string]any{"key_id": key2.String()})
	sc.call(owner, 404, true, "PATCH", "/api/v1/bookings/"+uuid.NewString(), map[string]any{})
	sc.call(visitor, 403, true, "PATCH", "/api/v1/bookings/"+id, map[string]any{})

	sc.call(owner, 200, true, "GET", "/api/v1/bookings/"+id+"/details", nil)
	details := sc.call(owner, 200, true, "GET", "/api/v1/bookings/"+ongoingID+"/details", nil).JSON(t)["text"].(string)
	if !strings.Contains(details, "Clio 3") || !strings.Contains(details, "(Europe/Paris)") || !strings.Contains(details, "ongoing") {
		t.Errorf("details = %q", details)
	}
	sc.call(owner, 404, true, "GET", "/api/v1/bookings/"+uuid.NewString()+"/details", nil)
	sc.call(visitor, 403, true, "GET", "/api/v1/bookings/"+id+"/details", nil)

	sc.call(owner, 200, true, "GET", "/api/v1/keys/"+key2.String()+"/visitors", nil)
	sc.call(owner, 200, true, "GET", "/api/v1/keys/"+key2.String()+"/visitors?limit=1", nil)
	sc.call(owner, 404, true, "GET", "/api/v1/keys/"+uuid.NewString()+"/visitors", nil)
	sc.call(owner, 422, false, "GET", "/api/v1/keys/"+key2.String()+"/visitors?limit=0", nil)
	sc.call(visitor, 403, true, "GET", "/api/v1/keys/"+key2.String()+"/visitors", nil)

	r := sc.call(owner, 429, true, "POST", "/api/v1/bookings/"+id+"/resend", nil)
	if r.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	sc.call(owner, 409, true, "POST", "/api/v1/bookings/"+heldID+"/resend", nil)
	sc.call(owner, 404, true, "POST", "/api/v1/bookings/"+uuid.NewString()+"/resend", nil)
	sc.call(visitor, 403, true, "POST", "/api/v1/bookings/"+id+"/resend", nil)
	ownerExec(t, "UPDATE bookings SET sent_at = sent_at - interval '2 hours' WHERE id = $1", uuid.MustParse(id))
	sc.call(integ, 200, true, "POST", "/api/v1/bookings/"+id+"/resend", nil, "Idempotency-Key", uuid.NewString())

	sc.call(owner, 409, true, "POST", "/api/v1/bookings/"+id+"/release", nil)
	sc.call(owner, 200, true, "POST", "/api/v1/bookings/"+heldID+"/release", nil, "Idempotency-Key", uuid.NewString())
	sc.call(owner, 404, true, "POST", "/api/v1/bookings/"+uuid.NewString()+"/release", nil)
	sc.call(visitor, 403, true, "POST", "/api/v1/bookings/"+heldID+"/release", nil)

	sc.call(owner, 200, true, "POST", "/api/v1/bookings/"+ongoingID+"/revoke", nil, "Idempotency-Key", uuid.NewString())
	sc.call(owner, 409, true, "PATCH", "/api/v1/bookings/"+ongoingID, map[string]any{"starts_at": rfc(start)})
	sc.call(owner, 404, true, "POST", "/api/v1/bookings/"+uuid.NewString()+"/revoke", nil)
	sc.call(visitor, 403, true, "POST", "/api/v1/bookings/"+id+"/revoke", nil)
	sc.call(anon, 401, true, "POST", "/api/v1/bookings/"+id+"/revoke", nil)

	aliasBody := map[string]any{"code": "5093817264", "visitor": map[string]any{"name": "Hana", "phone": bkPhone(), "email": nil}, "notify_via": "sms", "send": true}
	alias := sc.call(integ, 201, true, "POST", "/api/v1/alias-codes", aliasBody, "Idempotency-Key", uuid.NewString()).JSON(t)
	sc.call(owner, 409, true, "POST", "/api/v1/alias-codes", aliasBody)
	sc.call(owner, 422, true, "POST", "/api/v1/alias-codes", map[string]any{"code": "1234", "visitor": map[string]any{"name": "Hana", "phone": bkPhone()}, "notify_via": "sms"})
	sc.call(owner, 422, false, "POST", "/api/v1/alias-codes", map[string]any{"visitor": map[string]any{"name": "Hana"}, "notify_via": "fax"})
	sc.call(owner, 400, false, "POST", "/api/v1/alias-codes", map[string]any{"visitor": map[string]any{"name": "Hana", "room": "12"}, "notify_via": "sms"})
	sc.call(owner, 201, true, "POST", "/api/v1/alias-codes", map[string]any{"visitor": map[string]any{"name": "Drawn", "email": "drawn@example.com"}, "notify_via": "email"})
	sc.call(visitor, 403, true, "POST", "/api/v1/alias-codes", aliasBody)
	sc.call(owner, 200, true, "GET", "/api/v1/alias-codes", nil)
	ap := sc.call(owner, 200, true, "GET", "/api/v1/alias-codes?limit=1", nil).JSON(t)
	sc.call(owner, 200, true, "GET", "/api/v1/alias-codes?cursor="+ap["next_cursor"].(string), nil)
	sc.call(owner, 422, false, "GET", "/api/v1/alias-codes?cursor=nope", nil)
	sc.call(visitor, 403, true, "GET", "/api/v1/alias-codes", nil)
	sc.call(owner, 200, true, "GET", "/api/v1/alias-codes/"+alias["id"].(string), nil)
	sc.call(owner, 404, true, "GET", "/api/v1/alias-codes/"+uuid.NewString(), nil)
	linked := bkBody(w.key(t, "Room 7"), bkPhone(), start, end)
	linked["alias_code_id"] = alias["id"]
	sc.call(owner, 201, true, "POST", "/api/v1/bookings", linked)
	sc.call(owner, 409, true, "DELETE", "/api/v1/alias-codes/"+alias["id"].(string), nil)
	drawn := sc.call(owner, 201, true, "POST", "/api/v1/alias-codes", map[string]any{"visitor": map[string]any{"name": "Free", "phone": bkPhone()}, "notify_via": "sms"}).JSON(t)
	sc.call(integ, 204, true, "DELETE", "/api/v1/alias-codes/"+drawn["id"].(string), nil, "Idempotency-Key", uuid.NewString())
	sc.call(owner, 404, true, "DELETE", "/api/v1/alias-codes/"+uuid.NewString(), nil)
	sc.call(visitor, 403, true, "DELETE", "/api/v1/alias-codes/"+drawn["id"].(string), nil)
	sc.call(anon, 401, true, "DELETE", "/api/v1/alias-codes/"+drawn["id"].(string), nil)

	// The schemas written straight from Go types carry their fields.
	for name, typ := range map[string]reflect.Type{
		"Booking":                reflect.TypeOf(bookings.View{}),
		"BookingBox":             reflect.TypeOf(bookings.BoxView{}),
		"BookingVisitor":         reflect.TypeOf(bookings.Visitor{}),
		"BookingVisitorInput":    reflect.TypeOf(bookings.Visitor{}),
		"CreateBookingRequest":   reflect.TypeOf(bookings.NewBookingInput{}),
		"UpdateBookingRequest":   reflect.TypeOf(bookings.BookingPatch{}),
		"AliasCode":              reflect.TypeOf(bookings.AliasView{}),
		"CreateAliasCodeRequest": reflect.TypeOf(bookings.NewAliasInput{}),
	} {
		schema := doc.Components.Schemas[name]
		if schema == nil {
			t.Errorf("no %s schema", name)
			continue
		}
		checkFields(t, name, schema.Value, typ)
	}
}
