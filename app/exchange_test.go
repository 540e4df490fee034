package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/box"
	"github.com/keyrelay/keyrelay/firmware/boxkeys"
	"github.com/keyrelay/keyrelay/firmware/commands"
	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
	"github.com/keyrelay/keyrelay/tenants/exchange"
	"github.com/keyrelay/keyrelay/tenants/guard"
)

// site is a tenant with a provisioned box holding keys, built through the
// API as a tenant would.
type site struct {
	s     *server
	f     tenantFixture
	boxID string
	box   *box.Client
	keys  map[int]string // bin → key id
	fobs  map[int]string // bin → fob serial
}

func (s *server) newSite(t testing.TB, f tenantFixture, bins ...int) *site {
	t.Helper()
	b := f.Owner.expect(t, 201, "POST", "/api/v1/boxes", map[string]any{"name": "Front desk " + uuid.NewString()[:6], "model": "MS5", "timezone": "Europe/Paris", "bins": 12}).JSON(t)
	st := &site{s: s, f: f, boxID: b["id"].(string), keys: map[int]string{}, fobs: map[int]string{}}
	for _, n := range bins {
		fob := "FOB-" + uuid.NewString()[:8]
		k := f.Owner.expect(t, 201, "POST", "/api/v1/keys", map[string]any{"name": fmt.Sprintf("Car %d", n), "fob_serial": fob, "box_id": st.boxID, "bin": n}).JSON(t)
		st.keys[n], st.fobs[n] = k["id"].(string), fob
	}
	st.box = s.provisionBox(t, f, uuid.MustParse(st.boxID))
	return st
}

// book creates a one-time booking of the key in bin n, from start to end
// relative to now, and returns its id and code.
func (st *site) book(t testing.TB, n int, start, end time.Duration, extra ...map[string]any) (string, string) {
	t.Helper()
	now := time.Now().UTC()
	in := map[string]any{"key_id": st.keys[n], "kind": "one_time", "visitor": map[string]any{"name": "Vic Visitor", "phone": "+14155550199", "email": "vic@example.com"},
		"starts_at": now.Add(start).Format(time.RFC3339), "ends_at": now.Add(end).Format(time.RFC3339), "return_reminder": false, "notify_via": "sms"}
	for _, e := range extra {
		for k, v := range e {
			in[k] = v
		}
	}
	m := st.f.Owner.expect(t, 201, "POST", "/api/v1/bookings", in).JSON(t)
	return m["id"].(string), m["code"].(string)
}

func (st *site) call(t *testing.T, path string, body any) exchange.Result {
	t.Helper()
	var r exchange.Result
	if err := st.box.Call(context.Background(), 200, "POST", path, body, &r); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return r
}

func (st *site) events(t *testing.T, evs ...exchange.Event) exchange.Recorded {
	t.Helper()
	var r exchange.Recorded
	if err := st.box.Call(context.Background(), 200, "POST", "/box/v1/events", exchange.EventsInput{Events: evs}, &r); err != nil {
		t.Fatalf("events: %v", err)
	}
	return r
}

func (st *site) keyState(t *testing.T, n int) map[string]any {
	t.Helper()
	return st.f.Owner.expect(t, 200, "GET", "/api/v1/keys/"+st.keys[n], nil).JSON(t)["whereabouts"].(map[string]any)
}

func wantOpen(t *testing.T, r exchange.Result, bin int) {
	t.Helper()
	if r.Result != "open" || r.Bin == nil || *r.Bin != bin {
		t.Fatalf("result %+v, want open bin %d", r, bin)
	}
}

func wantDenied(t *testing.T, r exchange.Result, reason string) {
	t.Helper()
	if r.Result != "denied" || r.Reason != reason || r.Message == "" {
		t.Fatalf("result %+v, want denied %s with a message", r, reason)
	}
}

func fob(s string) *string { return &s }

func TestPickupWithCode(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 2, 3)
	bookingID, code := st.book(t, 2, -time.Minute, time.Hour)

	r := st.call(t, "/box/v1/pickups", map[string]any{"code": code})
	wantOpen(t, r, 2)
	if r.AccessID == nil || r.AccessID.String() != bookingID || r.KeyID.String() != st.keys[2] {
		t.Fatalf("open %+v, want access %s key %s", r, bookingID, st.keys[2])
	}
	// The box reports the key taken: the key is out with this access.
	st.events(t, exchange.Event{Type: "bin_opened", Bin: 2}, exchange.Event{Type: "key_taken", Bin: 2, AccessID: r.AccessID}, exchange.Event{Type: "bin_closed", Bin: 2})
	w := st.keyState(t, 2)
	if w["state"] != "out" || w["access_id"] != bookingID {
		t.Fatalf("whereabouts %v, want out with %s", w, bookingID)
	}
	// Picked up already: the code finds the key gone.
	wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": code}), exchange.KeyNotHere)

	// Dropoff after the access ended is accepted, into the home bin.
	ownerExec(t, `UPDATE bookings SET starts_at = now() - interval '2 hours', live_from = now() - interval '2 hours', ends_at = now() - interval '1 minute' WHERE id = $1`, bookingID)
	wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": code}), exchange.Ended)
	d := st.call(t, "/box/v1/dropoffs", map[string]any{"code": code})
	wantOpen(t, d, 2)
	st.events(t, exchange.Event{Type: "bin_closed", Bin: 2, FobSerial: fob(st.fobs[2])})
	if w := st.keyState(t, 2); w["state"] != "in_bin" || w["bin"] != float64(2) {
		t.Fatalf("after dropoff: %v", w)
	}
	audit := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=key.returned", nil).JSON(t)["items"].([]any)
	if len(audit) != 1 {
		t.Errorf("key.returned audit entries: %v", audit)
	}
	opened := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=pickup.opened", nil).JSON(t)["items"].([]any)
	if len(opened) != 1 {
		t.Fatalf("pickup.opened entries: %v", opened)
	}
	det := opened[0].(map[string]any)["details"].(map[string]any)
	if det["bin"] != "2" || det["booking"] != bookingID || det["method"] != "code" || det["key"] != st.keys[2] {
		t.Errorf("audit details %v: want who, which key, which bin, how", det)
	}

	t.Run("Denials", func(t *testing.T) {
		_, future := st.book(t, 3, time.Hour, 2*time.Hour)
		wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": future}), exchange.NotStarted)
		revokedID, revoked := st.book(t, 3, 3*time.Hour, 4*time.Hour)
		f.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+revokedID+"/revoke", nil)
		wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": revoked}), exchange.Revoked)
		_, held := st.book(t, 3, 5*time.Hour, 6*time.Hour, map[string]any{"hold": true})
		wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": held}), exchange.OnHold)
		wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": "0000000000"}), exchange.UnknownCode)
		wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": "not digits"}), exchange.UnknownCode)
		if err := st.box.Call(context.Background(), 422, "POST", "/box/v1/pickups", map[string]any{}, nil); err != nil {
			t.Error(err)
		}
	})
	t.Run("WrongBox", func(t *testing.T) {
		other := s.newSite(t, f, 5)
		_, code := other.book(t, 5, -time.Minute, time.Hour)
		wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": code}), exchange.WrongBox)
		wantOpen(t, other.call(t, "/box/v1/pickups", map[string]any{"code": code}), 5)
	})
	t.Run("OtherTenantsCode", func(t *testing.T) {
		g := s.signup(t)
		theirs := s.newSite(t, g, 4)
		mine := s.newSite(t, f, 6)
		_, code := mine.book(t, 6, -time.Minute, time.Hour)
		wantOpen(t, mine.call(t, "/box/v1/pickups", map[string]any{"code": code}), 6)
		wantDenied(t, theirs.call(t, "/box/v1/pickups", map[string]any{"code": code}), exchange.UnknownCode)
	})
}

// TestPickupByRevokedBox: a box whose credential this server has read (so
// a pickup reads it again only with the code lookup, devices
// CheckWithFirstStatement) is refused with 401 on every kind of pickup once
// revoked, and none of those pickups leaves a trace: no bin opened, no
// audit entry, nothing counted against the box's attempt limit.
func TestPickupByRevokedBox(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 1)
	_, code := st.book(t, 1, -time.Minute, time.Hour)
	wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": "0000000001"}), exchange.UnknownCode)
	boxID := uuid.MustParse(st.boxID)
	audited := func() int64 {
		return ownerCount(t, "SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND action LIKE 'pickup.%'", f.ID)
	}
	before := audited()
	f.Owner.expect(t, 204, "DELETE", "/api/v1/boxes/"+st.boxID+"/credential", nil)

	ctx := context.Background()
	bodies := []any{
		map[string]any{"code": code},
		map[string]any{"code": "not digits"},
		map[string]any{"phone": "+14155550199"},
		map[string]any{}, // 422 for a live box
		map[string]any{"code": code, "phone": "+14155550199"},
	}
	for i := range 25 { // over the limit, were they counted: codes not even looked up
		bodies = append(bodies, map[string]any{"code": fmt.Sprintf("x%09d", i)}, map[string]any{"code": fmt.Sprintf("%010d", 1000+i)})
	}
	for _, b := range bodies {
		if status, body, err := st.box.Request(ctx, "POST", "/box/v1/pickups", b); err != nil || status != 401 {
			t.Fatalf("revoked box, pickup %v: %d %s %v; want 401", b, status, body, err)
		}
	}
	if n := audited() - before; n != 0 {
		t.Errorf("%d pickup audit entries for a revoked box", n)
	}
	if w := st.keyState(t, 1); w["state"] != "in_bin" {
		t.Errorf("whereabouts %v after a revoked box's pickups", w)
	}
	// Re-provisioned, the box is under its limit still (one failure, from
	// before the revocation), and the code opens.
	st.box = s.provisionBox(t, f, boxID)
	wantOpen(t, st.call(t, "/box/v1/pickups", map[string]any{"code": code}), 1)
}

// TestArchivedBoxLosesCredential: an archived box is a retired one; its
// credential goes with it, and the events it would send (moving a key into
// a box nobody sees) are refused.
func TestArchivedBoxLosesCredential(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f)
	ctx := context.Background()
	if status, body, err := st.box.Request(ctx, "GET", "/box/v1/me", nil); err != nil || status != 200 {
		t.Fatalf("live box: %d %s %v", status, body, err)
	}
	f.Owner.expect(t, 204, "DELETE", "/api/v1/boxes/"+st.boxID, nil)
	for _, r := range []struct {
		method, path string
		body         any
	}{{"GET", "/box/v1/me", nil}, {"POST", "/box/v1/events", map[string]any{"events": []any{map[string]any{"type": "bin_closed", "bin": 1}}}}} {
		if status, body, err := st.box.Request(ctx, r.method, r.path, r.body); err != nil || status != 401 {
			t.Errorf("archived box, %s %s: %d %s %v; want 401", r.method, r.path, status, body, err)
		}
	}
	if n := ownerCount(t, "SELECT count(*) FROM box_credentials WHERE box_id = $1 AND revoked_at IS NOT NULL AND revoked_by = 'box_archived'", uuid.MustParse(st.boxID)); n != 1 {
		t.Errorf("%d credentials revoked by the archive, want 1", n)
	}
}

func TestBoxCooldown(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 1)
	for i := range 20 {
		wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": fmt.Sprintf("%010d", i)}), exchange.UnknownCode)
	}
	status, body, err := st.box.Request(context.Background(), "POST", "/box/v1/pickups", map[string]any{"code": "1234567890"})
	if err != nil || status != 429 {
		t.Fatalf("21st failure: %d %s %v, want 429", status, body, err)
	}
	alerts := 0
	for _, m := range s.outboxOf(t, f.ID) {
		if m.Kind == "box_cooldown" {
			alerts++
		}
	}
	if alerts != 1 {
		t.Errorf("%d cool-down alerts, want 1 (to the owner, once)", alerts)
	}
}

// exchangeCode is the newest pickup code sent to recipient.
func (s *server) exchangeCode(t *testing.T, tenantID uuid.UUID, recipient string) string {
	t.Helper()
	for _, m := range s.outboxOf(t, tenantID) {
		if m.Kind == "exchange_code" && m.Recipient == recipient {
			return m.Data["code"]
		}
	}
	t.Fatalf("no pickup code sent to %s", recipient)
	return ""
}

func TestPickupWithPhone(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 1, 2, 3)
	const visitor = "+14155550199"
	b1, _ := st.book(t, 1, -time.Minute, time.Hour)
	b2, _ := st.book(t, 2, -time.Minute, time.Hour)

	t.Run("SMSCode", func(t *testing.T) {
		r := st.call(t, "/box/v1/pickups", map[string]any{"phone": visitor})
		if r.Result != "challenge" || r.Channel != "sms" || r.ChallengeID == nil || len(r.Accesses) != 2 {
			t.Fatalf("result %+v, want an SMS challenge listing both keys", r)
		}
		code := s.exchangeCode(t, f.ID, visitor)
		wrong := fmt.Sprintf("%06d", (atoi(code)+1)%1_000_000)
		wantDenied(t, st.call(t, "/box/v1/pickups/verify", map[string]any{"challenge_id": r.ChallengeID, "code": wrong, "key_id": st.keys[2]}), exchange.WrongCode)
		// Several keys: the box must say which.
		if err := st.box.Call(context.Background(), 422, "POST", "/box/v1/pickups/verify", map[string]any{"challenge_id": r.ChallengeID, "code": code}, nil); err != nil {
			t.Fatal(err)
		}
		open := st.call(t, "/box/v1/pickups/verify", map[string]any{"challenge_id": r.ChallengeID, "code": code, "key_id": st.keys[2]})
		wantOpen(t, open, 2)
		if open.AccessID.String() != b2 {
			t.Errorf("access %v, want %s", open.AccessID, b2)
		}
		// Single use.
		wantDenied(t, st.call(t, "/box/v1/pickups/verify", map[string]any{"challenge_id": r.ChallengeID, "code": code, "key_id": st.keys[1]}), exchange.Expired)
	})
	t.Run("ErrUnknownPhone", func(t *testing.T) {
		wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"phone": "+14155550777"}), exchange.NoAccess)
		if err := st.box.Call(context.Background(), 422, "POST", "/box/v1/pickups", map[string]any{"phone": "555-0199"}, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Email", func(t *testing.T) {
		f.Owner.expect(t, 200, "PUT", "/api/v1/security", map[string]any{"owner_pickups_2fa": true, "visitor_pickups": "email"})
		r := st.call(t, "/box/v1/pickups", map[string]any{"phone": visitor})
		if r.Result != "challenge" || r.Channel != "email" {
			t.Fatalf("result %+v, want an email challenge", r)
		}
		code := s.exchangeCode(t, f.ID, "vic@example.com")
		wantOpen(t, st.call(t, "/box/v1/pickups/verify", map[string]any{"challenge_id": r.ChallengeID, "code": code, "key_id": st.keys[1]}), 1)
		_ = b1
	})
	t.Run("PIN", func(t *testing.T) {
		f.Owner.expect(t, 200, "PUT", "/api/v1/security", map[string]any{"owner_pickups_2fa": true, "visitor_pickups": "pin"})
		// No PIN set for this number yet.
		wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"phone": visitor}), exchange.NoPIN)
		email := "vic-" + uuid.NewString()[:6] + "@example.com"
		f.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Vic", "email": email, "phone": visitor, "role": "visitor"})
		s.client().expect(t, 204, "POST", "/api/v1/auth/password/reset", map[string]any{"token": s.resetToken(t, f.ID, email), "new_password": "visitor-pass-42"})
		vic := s.login(t, email, "visitor-pass-42")
		vic.expect(t, 204, "PUT", "/api/v1/me/pin", map[string]any{"pin": "4821"})

		r := st.call(t, "/box/v1/pickups", map[string]any{"phone": visitor})
		if r.Result != "pin_required" || r.ChallengeID == nil {
			t.Fatalf("result %+v, want pin_required", r)
		}
		wantDenied(t, st.call(t, "/box/v1/pickups/verify", map[string]any{"challenge_id": r.ChallengeID, "pin": "1111", "key_id": st.keys[1]}), exchange.WrongPIN)
		if err := st.box.Call(context.Background(), 422, "POST", "/box/v1/pickups/verify", map[string]any{"challenge_id": r.ChallengeID, "pin": "12a4", "key_id": st.keys[1]}, nil); err != nil {
			t.Fatal(err)
		}
		wantOpen(t, st.call(t, "/box/v1/pickups/verify", map[string]any{"challenge_id": r.ChallengeID, "pin": "4821", "key_id": st.keys[1]}), 1)
	})
	t.Run("Owner2FAOn", func(t *testing.T) {
		r := st.call(t, "/box/v1/pickups", map[string]any{"phone": "+14155550100"}) // the owner's number
		if r.Result != "challenge" || r.Channel != "sms" || len(r.Accesses) != 3 {
			t.Fatalf("result %+v, want an SMS challenge over every key in the box", r)
		}
		code := s.exchangeCode(t, f.ID, "+14155550100")
		wantOpen(t, st.call(t, "/box/v1/pickups/verify", map[string]any{"challenge_id": r.ChallengeID, "code": code, "key_id": st.keys[3]}), 3)
	})
	t.Run("Owner2FAOff", func(t *testing.T) {
		f.Owner.expect(t, 200, "PUT", "/api/v1/security", map[string]any{"owner_pickups_2fa": false, "visitor_pickups": "sms"})
		sent := len(s.outboxOf(t, f.ID))
		r := st.call(t, "/box/v1/pickups", map[string]any{"phone": "+14155550100"})
		if r.Result != "choose" || len(r.Accesses) != 3 {
			t.Fatalf("result %+v, want a choice without a code", r)
		}
		if len(s.outboxOf(t, f.ID)) != sent {
			t.Error("a code was sent with owner pickups 2FA off")
		}
		wantOpen(t, st.call(t, "/box/v1/pickups/verify", map[string]any{"challenge_id": r.ChallengeID, "key_id": st.keys[1]}), 1)
	})
}

// TestPickupByPhoneRechecksAccess: what staff change between the two
// steps of a pickup by phone counts, and only the owner's number may skip
// the second factor.
func TestPickupByPhoneRechecksAccess(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 1, 2)
	t.Run("ErrBookingRevokedMeanwhile", func(t *testing.T) {
		id, _ := st.book(t, 1, -time.Minute, time.Hour)
		r := st.call(t, "/box/v1/pickups", map[string]any{"phone": "+14155550199"})
		if r.Result != "challenge" {
			t.Fatalf("result %+v, want a challenge", r)
		}
		code := s.exchangeCode(t, f.ID, "+14155550199")
		f.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+id+"/revoke", nil)
		wantDenied(t, st.call(t, "/box/v1/pickups/verify", map[string]any{"challenge_id": r.ChallengeID, "code": code}), exchange.Revoked)
		if w := st.keyState(t, 1); w["state"] != "in_bin" {
			t.Fatalf("key 1 %v, want still in its bin", w)
		}
	})
	staffPhone := "+14155550" + fmt.Sprint(300+time.Now().Nanosecond()%600)
	staff := f.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Sam Staff", "email": "sam-" + uuid.NewString()[:8] + "@example.com", "phone": staffPhone, "role": "staff"}).JSON(t)["id"].(string)
	t.Run("ErrStaffDisabledMeanwhile", func(t *testing.T) {
		r := st.call(t, "/box/v1/pickups", map[string]any{"phone": staffPhone})
		if r.Result != "challenge" || r.Channel != "sms" {
			t.Fatalf("result %+v, want an SMS challenge", r)
		}
		code := s.exchangeCode(t, f.ID, staffPhone)
		f.Owner.expect(t, 200, "PATCH", "/api/v1/users/"+staff, map[string]any{"disabled": true})
		wantDenied(t, st.call(t, "/box/v1/pickups/verify", map[string]any{"challenge_id": r.ChallengeID, "code": code, "key_id": st.keys[2]}), exchange.NoAccess)
		f.Owner.expect(t, 200, "PATCH", "/api/v1/users/"+staff, map[string]any{"disabled": false})
	})
	t.Run("StaffNeedsCodeWith2FAOff", func(t *testing.T) {
		f.Owner.expect(t, 200, "PUT", "/api/v1/security", map[string]any{"owner_pickups_2fa": false, "visitor_pickups": "sms"})
		r := st.call(t, "/box/v1/pickups", map[string]any{"phone": staffPhone})
		if r.Result != "challenge" || r.Channel != "sms" {
			t.Fatalf("result %+v, want an SMS challenge: the policy exempts the owner only", r)
		}
	})
}

func atoi(s string) int {
	n := 0
	fmt.Sscanf(s, "%d", &n)
	return n
}

func TestInventoryReconciled(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 1, 2)
	// Key 2's fob turns up in bin 5, and bin 2 is found empty.
	r := st.events(t, exchange.Event{Type: "bin_closed", Bin: 5, FobSerial: fob(st.fobs[2])})
	if len(r.Flags) != 1 || r.Flags[0].Kind != "wrong_bin" {
		t.Fatalf("flags %+v, want wrong_bin", r.Flags)
	}
	if w := st.keyState(t, 2); w["state"] != "in_bin" || w["bin"] != float64(5) {
		t.Errorf("key 2 whereabouts %v, want moved to bin 5", w)
	}
	r = st.events(t, exchange.Event{Type: "bin_closed", Bin: 7, FobSerial: fob("STRANGER-1")})
	if len(r.Flags) != 1 || r.Flags[0].Kind != "unknown_fob" {
		t.Fatalf("flags %+v, want unknown_fob", r.Flags)
	}
	r = st.events(t, exchange.Event{Type: "bin_closed", Bin: 1})
	if len(r.Flags) != 1 || r.Flags[0].Kind != "missing_key" {
		t.Fatalf("flags %+v, want missing_key", r.Flags)
	}
	if w := st.keyState(t, 1); w["state"] != "missing" {
		t.Errorf("key 1 whereabouts %v, want missing", w)
	}
	if items := f.Owner.expect(t, 200, "GET", "/api/v1/keys?state=missing", nil).JSON(t)["items"].([]any); len(items) != 1 || items[0].(map[string]any)["id"] != st.keys[1] {
		t.Errorf("missing keys: %v", items)
	}
	alerts := 0
	for _, m := range s.outboxOf(t, f.ID) {
		if m.Kind == "inventory_flag" {
			alerts++
		}
	}
	if alerts != 3 {
		t.Errorf("%d inventory alerts, want 3", alerts)
	}
	// A bin out of range or an unknown event type is refused whole.
	if err := st.box.Call(context.Background(), 422, "POST", "/box/v1/events", exchange.EventsInput{Events: []exchange.Event{{Type: "bin_closed", Bin: 13}}}, nil); err != nil {
		t.Error(err)
	}
	if err := st.box.Call(context.Background(), 422, "POST", "/box/v1/events", exchange.EventsInput{Events: []exchange.Event{{Type: "exploded", Bin: 1}}}, nil); err != nil {
		t.Error(err)
	}
}

func TestPickupWithBookingURL(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 4)
	now := time.Now().UTC()
	m := f.Owner.expect(t, 201, "POST", "/api/v1/bookings", map[string]any{"key_id": st.keys[4], "kind": "one_time",
		"visitor": map[string]any{"name": "Vic", "phone": "+14155550199"}, "starts_at": now.Add(-time.Minute).Format(time.RFC3339),
		"ends_at": now.Add(time.Hour).Format(time.RFC3339), "return_reminder": false, "notify_via": "sms"}).JSON(t)
	bookingID := m["id"].(string)
	token := m["url"].(string)[len(s.app.cfg.BaseURL+"/b/"):]
	ctx := context.Background()
	if err := st.box.Call(ctx, 200, "GET", "/box/v1/me", nil, nil); err != nil { // the box is online
		t.Fatal(err)
	}
	boxID := uuid.MustParse(st.boxID)
	visitor := s.client()
	open := func(code string) exchange.Result {
		t.Helper()
		var r exchange.Result
		if err := json.Unmarshal(visitor.expect(t, 200, "POST", "/b/"+token+"/open", map[string]any{"screen_code": code}).Body, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	screen := func(at time.Time) string {
		code, err := boxkeys.ScreenCode(st.box.ID.Secret, boxID, at)
		if err != nil {
			t.Fatal(err)
		}
		return code
	}

	t.Run("ErrWrongOrStaleScreenCode", func(t *testing.T) {
		current := screen(time.Now())
		wrong := fmt.Sprintf("%06d", (atoi(current)+1)%1_000_000)
		wantDenied(t, open(wrong), exchange.WrongScreen)
		stale := screen(time.Now().Add(-2 * boxkeys.ScreenStep))
		if stale != current {
			wantDenied(t, open(stale), exchange.WrongScreen)
		}
		problemOf(t, visitor.do(t, "POST", "/b/"+token+"/open", map[string]any{"screen_code": "12ab56"}), 422)
		problemOf(t, visitor.do(t, "POST", "/b/not-a-token/open", map[string]any{"screen_code": current}), 404)
	})

	waiting := poll(st.box, 20)
	time.Sleep(100 * time.Millisecond)
	r := open(screen(time.Now()))
	wantOpen(t, r, 4)
	l := <-waiting
	if len(l.Commands) != 1 {
		t.Fatalf("the box got %+v, want one open-bin command", l.Commands)
	}
	var p commands.OpenBinPayload
	json.Unmarshal(l.Commands[0].Payload, &p)
	if p.Bin != 4 || p.AccessID == nil || p.AccessID.String() != bookingID || p.Reason != "booking_url" {
		t.Fatalf("payload %s", l.Commands[0].Payload)
	}
	if by := ownerQuery[string](t, `SELECT created_by FROM box_commands WHERE id = $1`, l.Commands[0].ID); by != "visitor:booking:"+bookingID {
		t.Errorf("the command is recorded as %q's", by)
	}
	// The box opens, acknowledges and reports the key taken.
	if err := st.box.Call(ctx, 204, "POST", "/box/v1/commands/"+l.Commands[0].ID.String()+"/ack", map[string]any{"result": "done"}, nil); err != nil {
		t.Fatal(err)
	}
	st.events(t, exchange.Event{Type: "key_taken", Bin: 4, AccessID: p.AccessID}, exchange.Event{Type: "bin_closed", Bin: 4})
	if w := st.keyState(t, 4); w["state"] != "out" {
		t.Errorf("whereabouts %v after a booking-URL pickup", w)
	}

	t.Run("BoxOffline", func(t *testing.T) {
		st.events(t, exchange.Event{Type: "bin_closed", Bin: 4, FobSerial: fob(st.fobs[4])}) // back in
		ownerExec(t, `UPDATE box_credentials SET last_seen_at = now() - interval '10 minutes' WHERE box_id = $1`, boxID)
		wantDenied(t, open(screen(time.Now())), exchange.BoxOffline)
	})
	t.Run("OKBoxClockAhead", func(t *testing.T) {
		// A box whose clock runs three minutes ahead (its requests still
		// within the signing skew) shows the code of the server's time,
		// learnt from the answer to its last call.
		ahead := box.NewClient(st.box.BaseURL, st.box.HTTP, st.box.ID)
		ahead.Clock = func() time.Time { return time.Now().Add(3 * time.Minute) }
		if err := ahead.Call(ctx, 200, "GET", "/box/v1/me", nil, nil); err != nil {
			t.Fatal(err)
		}
		code, err := ahead.ScreenCode()
		if err != nil {
			t.Fatal(err)
		}
		wantOpen(t, open(code), 4)
	})
	t.Run("ErrLocked", func(t *testing.T) {
		// Locked by wrong tries at the box: the URL opens nothing either.
		if err := st.box.Call(ctx, 200, "GET", "/box/v1/me", nil, nil); err != nil {
			t.Fatal(err)
		}
		ownerExec(t, `UPDATE bookings SET locked_at = now() WHERE id = $1`, uuid.MustParse(bookingID))
		wantDenied(t, open(screen(time.Now())), exchange.Locked)
	})
}

// Ten wrong second factors against a booking lock it (the owner is told
// once); the booking code then opens nothing until the owner acts.
func TestBookingLocksAfterTenFailures(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 1)
	const visitor = "+14155550199"
	bookingID, code := st.book(t, 1, -time.Minute, time.Hour)
	f.Owner.expect(t, 200, "PUT", "/api/v1/security", map[string]any{"owner_pickups_2fa": true, "visitor_pickups": "pin"})
	email := "vic-" + uuid.NewString()[:6] + "@example.com"
	vicID := f.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Vic", "email": email, "phone": visitor, "role": "visitor"}).JSON(t)["id"].(string)
	s.client().expect(t, 204, "POST", "/api/v1/auth/password/reset", map[string]any{"token": s.resetToken(t, f.ID, email), "new_password": "visitor-pass-42"})
	vic := s.login(t, email, "visitor-pass-42")
	vic.expect(t, 204, "PUT", "/api/v1/me/pin", map[string]any{"pin": "4821"})

	ctx := context.Background()
	pinPause := guard.PINSubject(f.ID.String(), vicID)
	for i := range 10 {
		r := st.call(t, "/box/v1/pickups", map[string]any{"phone": visitor})
		if r.Result != "pin_required" {
			t.Fatalf("try %d: %+v", i, r)
		}
		verify := map[string]any{"challenge_id": r.ChallengeID, "pin": fmt.Sprintf("%04d", 5000+i)}
		if i == 4 {
			// A pause after each wrong PIN past the third (guard.PIN),
			// whichever box it is tried at: the fifth try waits.
			status, body, err := st.box.Request(ctx, "POST", "/box/v1/pickups/verify", verify)
			if err != nil || status != 429 {
				t.Fatalf("a fifth PIN at once: %d %s %v, want 429", status, body, err)
			}
		}
		if i >= 4 {
			// The pause is over (as if it had been waited out); the
			// count of wrong PINs in the database goes on.
			if err := s.app.guard.Reset(ctx, guard.PIN, pinPause); err != nil {
				t.Fatal(err)
			}
		}
		wantDenied(t, st.call(t, "/box/v1/pickups/verify", verify), exchange.WrongPIN)
	}
	if n := s.alertsOf(t, st, "booking_locked"); n != 1 {
		t.Errorf("%d booking-locked alerts, want 1", n)
	}
	wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": code}), exchange.Locked)
	if locked := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=booking.locked", nil).JSON(t)["items"].([]any); len(locked) != 1 {
		t.Errorf("booking.locked audit entries: %v", locked)
	}
	// The lock is the booking's, not the Redis counter's: it holds when
	// the counter is gone (its 30-day window over, Redis restarted).
	keys, err := s.app.redis.Keys(ctx, s.app.cfg.LimitPrefix+":*booking-code*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("booking counters in Redis: %v %v", keys, err)
	}
	if err := s.app.redis.Del(ctx, keys...).Err(); err != nil {
		t.Fatal(err)
	}
	wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": code}), exchange.Locked)
	// The owner unlocks it: the code works again.
	f.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+bookingID+"/unlock", nil)
	wantOpen(t, st.call(t, "/box/v1/pickups", map[string]any{"code": code}), 1)
	// A new PIN starts without the old one's wrong tries.
	if n, _, err := s.app.guard.Peek(ctx, guard.PIN, pinPause); err != nil || n == 0 {
		t.Fatalf("PIN failures before a new PIN: %d %v", n, err)
	}
	vic.expect(t, 204, "PUT", "/api/v1/me/pin", map[string]any{"pin": "4822"})
	if n, wait, err := s.app.guard.Peek(ctx, guard.PIN, pinPause); err != nil || n != 0 || wait != 0 {
		t.Fatalf("PIN failures after a new PIN: %d, pause %v, %v", n, wait, err)
	}
}

// Pickup codes by SMS are budgeted per phone number and booking.
func TestPickupSMSBudgetPerBooking(t *testing.T) {
	s := startServer(t, func(c *Config) { c.SMSPerPhoneHour = 3 })
	f := s.signup(t)
	st := s.newSite(t, f, 1)
	st.book(t, 1, -time.Minute, time.Hour)
	for i := range 3 {
		if r := st.call(t, "/box/v1/pickups", map[string]any{"phone": "+14155550199"}); r.Result != "challenge" {
			t.Fatalf("code %d: %+v", i+1, r)
		}
	}
	status, body, err := st.box.Request(context.Background(), "POST", "/box/v1/pickups", map[string]any{"phone": "+14155550199"})
	if err != nil || status != 429 {
		t.Fatalf("4th code in an hour: %d %s %v, want 429", status, body, err)
	}
}

// TestReturnReminderFollowsTheKeyAtTheBox: a key coming back calls its
// access's waiting return reminder off, and the access taking it again
// queues a new one, whether the box reports it online or syncs its
// offline journal.
func TestReturnReminderFollowsTheKeyAtTheBox(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 2, 3)
	book := func(bin int) (string, string, string) {
		phone := bkPhone()
		id, code := st.book(t, bin, -time.Minute, 48*time.Hour, map[string]any{"return_reminder": true,
			"visitor": map[string]any{"name": "Rita Returner", "phone": phone}})
		return id, code, phone
	}
	// reminders lists the statuses of the return reminders to phone,
	// oldest first.
	reminders := func(phone string) string {
		var out []string
		rows := s.outboxOf(t, f.ID)
		for i := len(rows) - 1; i >= 0; i-- {
			if rows[i].Kind == "return_reminder" && rows[i].Recipient == phone {
				out = append(out, string(rows[i].Status))
			}
		}
		return strings.Join(out, ",")
	}

	t.Run("Online", func(t *testing.T) {
		id, code, phone := book(2)
		pickup := func() {
			t.Helper()
			r := st.call(t, "/box/v1/pickups", map[string]any{"code": code})
			wantOpen(t, r, 2)
			st.events(t, exchange.Event{Type: "bin_opened", Bin: 2}, exchange.Event{Type: "key_taken", Bin: 2, AccessID: r.AccessID}, exchange.Event{Type: "bin_closed", Bin: 2})
		}
		pickup()
		if got := reminders(phone); got != "queued" {
			t.Fatalf("after the pickup: %s, want queued", got)
		}
		wantOpen(t, st.call(t, "/box/v1/dropoffs", map[string]any{"code": code}), 2)
		st.events(t, exchange.Event{Type: "bin_closed", Bin: 2, FobSerial: fob(st.fobs[2])})
		if got := reminders(phone); got != "canceled" {
			t.Fatalf("after the return of booking %s's key: %s, want canceled", id, got)
		}
		pickup()
		if got := reminders(phone); got != "canceled,queued" {
			t.Fatalf("after taking the key again: %s, want canceled,queued", got)
		}
	})
	t.Run("Offline", func(t *testing.T) {
		id, _, phone := book(3)
		j, err := box.OpenJournal(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer j.Close()
		add := func(kind string) {
			t.Helper()
			e := boxsync.Entry{BoxTime: time.Now().UTC(), Kind: kind, Bin: 3, FobSerial: st.fobs[3]}
			if kind == boxsync.KindPickup {
				e.Method, e.AccessID = boxsync.MethodVerifier, id
			}
			if _, err := j.Append(e); err != nil {
				t.Fatal(err)
			}
		}
		send := func() {
			t.Helper()
			var res boxsync.Result
			evs := j.Pending(j.Acked(), boxsync.MaxEvents)
			if err := st.box.Call(context.Background(), 200, "POST", "/box/v1/sync", boxsync.SignBatch(st.box.ID.PrivateKey, st.box.ID.BoxID, evs), &res); err != nil {
				t.Fatal(err)
			}
			if err := j.Ack(res.HighSeq); err != nil {
				t.Fatal(err)
			}
		}
		// Taken and brought back while the box was offline.
		add(boxsync.KindPickup)
		add(boxsync.KindDropoff)
		send()
		if got := reminders(phone); got != "canceled" {
			t.Fatalf("after an offline pickup and return: %s, want canceled", got)
		}
		// Back, out again, back, out again: what counts is the last.
		add(boxsync.KindPickup)
		add(boxsync.KindDropoff)
		add(boxsync.KindPickup)
		send()
		if got := reminders(phone); got != "canceled,queued" {
			t.Fatalf("after taking the key again offline: %s, want canceled,queued", got)
		}
	})
}
