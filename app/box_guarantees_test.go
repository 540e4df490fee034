package main

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/keyrelay/keyrelay/firmware/health"
	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
	"github.com/keyrelay/keyrelay/tenants/exchange"
	"github.com/keyrelay/keyrelay/tenants/webhooks"
)

// takeOut books the key in bin n of st, opens its bin with the booking
// code and reports it taken: the key is out with that booking.
func (st *site) takeOut(t *testing.T, n int) (bookingID, code string) {
	t.Helper()
	bookingID, code = st.book(t, n, -time.Minute, time.Hour)
	r := st.call(t, "/box/v1/pickups", map[string]any{"code": code})
	wantOpen(t, r, n)
	st.events(t, exchange.Event{Type: "key_taken", Bin: n, AccessID: r.AccessID}, exchange.Event{Type: "bin_closed", Bin: n})
	if w := st.keyState(t, n); w["state"] != "out" || w["access_id"] != bookingID {
		t.Fatalf("key %d after its pickup: %v, want out with %s", n, w, bookingID)
	}
	return bookingID, code
}

// auditDetails returns the details of the tenant's audit entries of action,
// newest first.
func auditDetails(t *testing.T, f tenantFixture, action string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, it := range f.Owner.expect(t, 200, "GET", "/api/v1/audit?action="+action, nil).JSON(t)["items"].([]any) {
		out = append(out, it.(map[string]any)["details"].(map[string]any))
	}
	return out
}

// TestDropoffRefusals: what POST /box/v1/dropoffs refuses, with the reason
// the box shows and an audit entry, and what it must accept anyway (a key
// whose access was revoked still comes back).
func TestDropoffRefusals(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 1, 2, 3)
	ctx := context.Background()

	t.Run("ErrKeyNotOut", func(t *testing.T) {
		_, code := st.book(t, 1, -time.Minute, time.Hour)
		wantDenied(t, st.call(t, "/box/v1/dropoffs", map[string]any{"fob_serial": st.fobs[1]}), exchange.NotOut)
		wantDenied(t, st.call(t, "/box/v1/dropoffs", map[string]any{"code": code}), exchange.NotOut)
		if w := st.keyState(t, 1); w["state"] != "in_bin" || w["bin"] != float64(1) {
			t.Errorf("key 1 after refused dropoffs: %v", w)
		}
		n := 0
		for _, d := range auditDetails(t, f, "dropoff.denied") {
			if d["reason"] == exchange.NotOut && d["key"] == st.keys[1] {
				n++
			}
		}
		if n != 2 {
			t.Errorf("%d dropoff.denied entries for key_not_out, want 2", n)
		}
		if opened := auditDetails(t, f, "dropoff.opened"); len(opened) != 0 {
			t.Errorf("dropoff.opened entries after refusals: %v", opened)
		}
	})
	t.Run("ErrUnknownFob", func(t *testing.T) {
		wantDenied(t, st.call(t, "/box/v1/dropoffs", map[string]any{"fob_serial": "FOB-NOBODY"}), exchange.UnknownKey)
		found := false
		for _, d := range auditDetails(t, f, "dropoff.denied") {
			found = found || d["reason"] == exchange.UnknownKey && d["fob_serial"] == "FOB-NOBODY"
		}
		if !found {
			t.Error("no dropoff.denied entry naming the unknown fob")
		}
	})
	t.Run("ErrUnknownCode", func(t *testing.T) {
		wantDenied(t, st.call(t, "/box/v1/dropoffs", map[string]any{"code": "0000000000"}), exchange.UnknownCode)
		wantDenied(t, st.call(t, "/box/v1/dropoffs", map[string]any{"code": "not digits"}), exchange.UnknownCode)
	})
	t.Run("ErrCodeOrFobNotBoth", func(t *testing.T) {
		for _, b := range []map[string]any{{}, {"code": " ", "fob_serial": ""}, {"code": "1234567890", "fob_serial": st.fobs[2]}} {
			if err := st.box.Call(ctx, 422, "POST", "/box/v1/dropoffs", b, nil); err != nil {
				t.Errorf("dropoff %v: %v", b, err)
			}
		}
	})
	t.Run("ErrUnknownCodesCountAtBox", func(t *testing.T) {
		// A code typed at the keypad is a guess: dropoff codes count
		// towards the box's cool-down like pickup codes.
		other := s.newSite(t, f)
		for i := range 20 {
			code := fmt.Sprintf("%010d", 7000+i)
			if i%2 == 1 {
				code = fmt.Sprintf("x%d", i)
			}
			wantDenied(t, other.call(t, "/box/v1/dropoffs", map[string]any{"code": code}), exchange.UnknownCode)
		}
		status, body, err := other.box.Request(ctx, "POST", "/box/v1/dropoffs", map[string]any{"code": "1234567890"})
		if err != nil || status != 429 {
			t.Fatalf("21st unknown dropoff code: %d %s %v, want 429", status, body, err)
		}
	})
	t.Run("OKAfterRevoke", func(t *testing.T) {
		bookingID, code := st.takeOut(t, 2)
		f.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+bookingID+"/revoke", nil)
		d := st.call(t, "/box/v1/dropoffs", map[string]any{"code": code})
		wantOpen(t, d, 2)
		if d.KeyID == nil || d.KeyID.String() != st.keys[2] || d.AccessID == nil || d.AccessID.String() != bookingID {
			t.Errorf("dropoff %+v, want key %s of access %s", d, st.keys[2], bookingID)
		}
		st.events(t, exchange.Event{Type: "bin_closed", Bin: 2, FobSerial: fob(st.fobs[2])})
		if w := st.keyState(t, 2); w["state"] != "in_bin" || w["bin"] != float64(2) {
			t.Fatalf("key 2 after its dropoff: %v", w)
		}
		found := false
		for _, det := range auditDetails(t, f, "key.returned") {
			found = found || det["key"] == st.keys[2] && det["booking"] == bookingID
		}
		if !found {
			t.Error("no key.returned entry for the revoked access's key")
		}
	})
	t.Run("OKHomeBinElseUnclaimedBin", func(t *testing.T) {
		// Key 3 out, its home bin free: back home, by fob too.
		st.takeOut(t, 3)
		wantOpen(t, st.call(t, "/box/v1/dropoffs", map[string]any{"fob_serial": st.fobs[3]}), 3)
		// Key 3 out and its home bin taken by a stray key; key 2 out too,
		// so bin 2 is free but is key 2's home: key 3 goes to the first
		// bin no key calls home (4), not to bin 2.
		stray := s.newSite(t, f, 9)
		st.events(t, exchange.Event{Type: "bin_closed", Bin: 3, FobSerial: fob(stray.fobs[9])})
		st.takeOut(t, 2)
		wantOpen(t, st.call(t, "/box/v1/dropoffs", map[string]any{"fob_serial": st.fobs[3]}), 4)
	})
	t.Run("ErrNoFreeBin", func(t *testing.T) {
		// A full box (12 bins, 12 keys) refuses a key coming back from
		// another box of the tenant; once a bin is free, it takes it.
		all := make([]int, 12)
		for i := range all {
			all[i] = i + 1
		}
		full := s.newSite(t, f, all...)
		away := s.newSite(t, f, 1)
		_, code := away.takeOut(t, 1)
		wantDenied(t, full.call(t, "/box/v1/dropoffs", map[string]any{"code": code}), exchange.NoFreeBin)
		wantDenied(t, full.call(t, "/box/v1/dropoffs", map[string]any{"fob_serial": away.fobs[1]}), exchange.NoFreeBin)
		n := 0
		for _, d := range auditDetails(t, f, "dropoff.denied") {
			if d["reason"] == exchange.NoFreeBin && d["key"] == away.keys[1] {
				n++
			}
		}
		if n != 2 {
			t.Errorf("%d dropoff.denied entries for no_free_bin, want 2", n)
		}
		if w := away.keyState(t, 1); w["state"] != "out" {
			t.Errorf("the key after refused dropoffs: %v, want still out", w)
		}
		full.takeOut(t, 7)
		wantOpen(t, full.call(t, "/box/v1/dropoffs", map[string]any{"code": code}), 7)
	})
}

// tenantTrace is what a tenant's records hold that another tenant's box
// must not change.
type tenantTrace struct {
	Keys                             map[int]map[string]any
	Audit, Outbox, Flags, Challenges int64
	UsedChallenges                   int64
}

func traceOf(t *testing.T, st *site) tenantTrace {
	t.Helper()
	tr := tenantTrace{Keys: map[int]map[string]any{}}
	for n := range st.keys {
		tr.Keys[n] = st.keyState(t, n)
	}
	id := st.f.ID
	tr.Audit = ownerCount(t, `SELECT count(*) FROM audit_events WHERE tenant_id = $1`, id)
	tr.Outbox = ownerCount(t, `SELECT count(*) FROM outbox WHERE tenant_id = $1`, id)
	tr.Flags = ownerCount(t, `SELECT count(*) FROM inventory_flags WHERE tenant_id = $1`, id)
	tr.Challenges = ownerCount(t, `SELECT count(*) FROM pickup_challenges WHERE tenant_id = $1`, id)
	tr.UsedChallenges = ownerCount(t, `SELECT count(*) FROM pickup_challenges WHERE tenant_id = $1 AND used_at IS NOT NULL`, id)
	return tr
}

// TestBoxCrossTenant: a box of tenant B, handed tenant A's codes, fob
// serials, access ids, challenge ids and phone numbers, acts on nothing of
// A's: B's box sees them as unknown, and A's keys, audit trail, messages,
// flags and challenges stay as they were.
func TestBoxCrossTenant(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	fa, fb := s.signup(t), s.signup(t)
	a := s.newSite(t, fa, 1, 2)
	b := s.newSite(t, fb, 1, 3)

	// A: key 1 out with a booking (its code and fob would bring it back),
	// key 2 in its bin with a booking for the same visitor, a pickup by
	// phone waiting for its SMS code, and a member of staff with a phone.
	const visitor = "+14155550199"
	outBooking, outCode := a.takeOut(t, 1)
	a.book(t, 2, -time.Minute, time.Hour)
	ch := a.call(t, "/box/v1/pickups", map[string]any{"phone": visitor})
	if ch.Result != "challenge" || ch.ChallengeID == nil {
		t.Fatalf("A's pickup by phone: %+v, want a challenge", ch)
	}
	smsCode := s.exchangeCode(t, fa.ID, visitor)
	staffPhone := fmt.Sprintf("+1415555%04d", time.Now().Nanosecond()%10000)
	fa.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Sam Staff", "email": "sam-" + uuid.NewString()[:8] + "@example.com", "phone": staffPhone, "role": "staff"})
	before := traceOf(t, a)
	bBefore := traceOf(t, b)

	t.Run("ErrDropoffWithOthersCode", func(t *testing.T) {
		wantDenied(t, b.call(t, "/box/v1/dropoffs", map[string]any{"code": outCode}), exchange.UnknownCode)
	})
	t.Run("ErrDropoffWithOthersFob", func(t *testing.T) {
		wantDenied(t, b.call(t, "/box/v1/dropoffs", map[string]any{"fob_serial": a.fobs[1]}), exchange.UnknownKey)
		wantDenied(t, b.call(t, "/box/v1/dropoffs", map[string]any{"fob_serial": a.fobs[2]}), exchange.UnknownKey)
	})
	t.Run("ErrBinClosedWithOthersFob", func(t *testing.T) {
		// A's key 1 is out: were its fob known here, this would "return"
		// it into B's box; A's key 2 would be moved out of A's box.
		r := b.events(t, exchange.Event{Type: "bin_closed", Bin: 5, FobSerial: fob(a.fobs[1])}, exchange.Event{Type: "bin_closed", Bin: 6, FobSerial: fob(a.fobs[2])})
		if len(r.Flags) != 2 || r.Flags[0].Kind != "unknown_fob" || r.Flags[1].Kind != "unknown_fob" || r.Flags[0].KeyID != nil || r.Flags[1].KeyID != nil {
			t.Fatalf("flags %+v, want two unknown_fob flags naming no key", r.Flags)
		}
		if n := ownerCount(t, `SELECT count(*) FROM inventory_flags WHERE tenant_id = $1 AND kind = 'unknown_fob'`, fb.ID); n != 2 {
			t.Errorf("%d unknown_fob flags stored for B, want 2", n)
		}
	})
	t.Run("ErrKeyTakenWithOthersAccess", func(t *testing.T) {
		access := uuid.MustParse(outBooking)
		if err := b.box.Call(ctx, 422, "POST", "/box/v1/events", exchange.EventsInput{Events: []exchange.Event{{Type: "key_taken", Bin: 1, AccessID: &access}}}, nil); err != nil {
			t.Fatal(err)
		}
		if w := b.keyState(t, 1); w["state"] != "in_bin" || w["bin"] != float64(1) {
			t.Errorf("B's key 1 after a key_taken naming A's access: %v", w)
		}
		if n := ownerCount(t, `SELECT count(*) FROM keys WHERE out_access_id = $1`, access); n != 1 {
			t.Errorf("%d keys out with A's access, want 1 (A's own)", n)
		}
	})
	t.Run("ErrVerifyOthersChallenge", func(t *testing.T) {
		if err := b.box.Call(ctx, 404, "POST", "/box/v1/pickups/verify", map[string]any{"challenge_id": ch.ChallengeID, "code": smsCode, "key_id": a.keys[2]}, nil); err != nil {
			t.Fatal(err)
		}
		if err := b.box.Call(ctx, 404, "POST", "/box/v1/pickups/verify", map[string]any{"challenge_id": ch.ChallengeID, "code": smsCode, "key_id": b.keys[1]}, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ErrPickupByOthersPhone", func(t *testing.T) {
		// A's visitor, and A's staff (who may take every key of a box of
		// A's): nothing at B's box, and no code sent to anyone.
		wantDenied(t, b.call(t, "/box/v1/pickups", map[string]any{"phone": visitor}), exchange.NoAccess)
		wantDenied(t, b.call(t, "/box/v1/pickups", map[string]any{"phone": staffPhone}), exchange.NoAccess)
		for _, m := range s.outboxOf(t, fb.ID) {
			if m.Kind == "exchange_code" {
				t.Errorf("B's outbox holds a pickup code to %s", m.Recipient)
			}
		}
	})

	// Nothing of A's moved; B's box changed only B's own records.
	if after := traceOf(t, a); !reflect.DeepEqual(after, before) {
		t.Errorf("A's records changed through B's box:\nbefore %+v\nafter  %+v", before, after)
	}
	if after := traceOf(t, b); !reflect.DeepEqual(after.Keys, bBefore.Keys) {
		t.Errorf("B's keys changed: before %v, after %v", bBefore.Keys, after.Keys)
	}
	for _, d := range auditDetails(t, fb, "dropoff.denied") {
		if d["key"] != nil {
			t.Errorf("a denial at B's box names a key: %v", d)
		}
	}
	// A's challenge was not used up by B: A's box still completes it.
	wantOpen(t, a.call(t, "/box/v1/pickups/verify", map[string]any{"challenge_id": ch.ChallengeID, "code": smsCode, "key_id": a.keys[2]}), 2)
}

// boxRoute is one /box/v1 call as a box would make it.
type boxRoute struct {
	route        string // method and Fiber path, as app/routes.go registers it
	method, path string
	body         any
}

// TestRevokedBoxRefusedEverywhere: once its credential is revoked, a box
// gets 401 on every /box/v1 route (the list is checked against the routes
// the server registers), and none of its calls leaves a trace. The same
// calls from a live box of the tenant are not refused, so a 401 here is
// the revocation's doing.
func TestRevokedBoxRefusedEverywhere(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	ctx := context.Background()
	st := s.newSite(t, f, 1, 2)
	live := s.newSite(t, f, 1, 2)

	const visitor = "+14155550199"
	_, code := st.book(t, 1, -time.Minute, time.Hour)
	ch := st.call(t, "/box/v1/pickups", map[string]any{"phone": visitor})
	if ch.Result != "challenge" || ch.ChallengeID == nil {
		t.Fatalf("pickup by phone: %+v, want a challenge", ch)
	}
	smsCode := s.exchangeCode(t, f.ID, visitor)
	cmd := f.Owner.expect(t, 202, "POST", "/api/v1/boxes/"+st.boxID+"/bins/2/release", nil).JSON(t)["command_id"].(string)
	journal := boxsync.SignBatch(st.box.ID.PrivateKey, st.box.ID.BoxID, journalOf(t, st, 1))
	release := uuid.NewString()
	lvl := 10
	routes := []boxRoute{
		{"GET /box/v1/me", "GET", "/box/v1/me", nil},
		{"GET /box/v1/commands", "GET", "/box/v1/commands?wait=0", nil},
		{"POST /box/v1/commands/:id/ack", "POST", "/box/v1/commands/" + cmd + "/ack", map[string]any{"result": "done"}},
		{"POST /box/v1/pickups", "POST", "/box/v1/pickups", map[string]any{"code": code}},
		{"POST /box/v1/pickups/verify", "POST", "/box/v1/pickups/verify", map[string]any{"challenge_id": ch.ChallengeID, "code": smsCode, "key_id": st.keys[1]}},
		{"POST /box/v1/dropoffs", "POST", "/box/v1/dropoffs", map[string]any{"fob_serial": st.fobs[2]}},
		{"POST /box/v1/events", "POST", "/box/v1/events", exchange.EventsInput{Events: []exchange.Event{{Type: "bin_closed", Bin: 1}}}},
		{"POST /box/v1/heartbeat", "POST", "/box/v1/heartbeat", map[string]any{"firmware_version": "5.2.0", "power_source": "battery", "battery_level": &lvl}},
		{"GET /box/v1/bundle", "GET", "/box/v1/bundle", nil},
		{"POST /box/v1/sync", "POST", "/box/v1/sync", journal},
		{"GET /box/v1/sync", "GET", "/box/v1/sync", nil},
		{"GET /box/v1/firmware", "GET", "/box/v1/firmware", nil},
		{"GET /box/v1/firmware/:id/artifact", "GET", "/box/v1/firmware/" + release + "/artifact", nil},
		{"POST /box/v1/firmware/status", "POST", "/box/v1/firmware/status", map[string]any{"release_id": release, "status": "installed"}},
	}

	t.Run("OKEveryBoxRouteListed", func(t *testing.T) {
		listed := map[string]bool{}
		for _, r := range routes {
			listed[r.route] = true
		}
		registered := map[string]bool{}
		for _, r := range s.app.http.GetRoutes(true) {
			if r.Method == "HEAD" || !strings.HasPrefix(r.Path, "/box/v1/") || r.Method+" "+r.Path == "POST /box/v1/provision" {
				continue
			}
			registered[r.Method+" "+r.Path] = true
			if !listed[r.Method+" "+r.Path] {
				t.Errorf("route %s %s is not in this test's table: add it", r.Method, r.Path)
			}
		}
		for r := range listed {
			if !registered[r] {
				t.Errorf("this test's table lists %s, which the server does not register", r)
			}
		}
	})
	t.Run("OKLiveBoxNotRefused", func(t *testing.T) {
		for _, r := range routes {
			if status, body, err := live.box.Request(ctx, r.method, r.path, r.body); err != nil || status == 401 {
				t.Errorf("live box, %s: %d %s %v", r.route, status, body, err)
			}
		}
	})

	// The server has this credential cached (devices.Authenticate): the
	// revocation must win over the cache.
	if err := st.box.Call(ctx, 200, "GET", "/box/v1/me", nil, nil); err != nil {
		t.Fatal(err)
	}
	f.Owner.expect(t, 204, "DELETE", "/api/v1/boxes/"+st.boxID+"/credential", nil)
	boxID := uuid.MustParse(st.boxID)
	audited := func(t *testing.T) int64 {
		return ownerCount(t, `SELECT count(*) FROM audit_events WHERE tenant_id = $1`, f.ID)
	}
	auditBefore, outboxBefore := audited(t), len(s.outboxOf(t, f.ID))

	t.Run("ErrRevoked401", func(t *testing.T) {
		for _, r := range routes {
			if status, body, err := st.box.Request(ctx, r.method, r.path, r.body); err != nil || status != 401 {
				t.Errorf("revoked box, %s: %d %s %v; want 401", r.route, status, body, err)
			}
		}
	})
	t.Run("OKRevokedLeavesNoTrace", func(t *testing.T) {
		if n := audited(t) - auditBefore; n != 0 {
			t.Errorf("%d audit entries from a revoked box's calls", n)
		}
		if n := len(s.outboxOf(t, f.ID)) - outboxBefore; n != 0 {
			t.Errorf("%d messages queued by a revoked box's calls", n)
		}
		if w := st.keyState(t, 1); w["state"] != "in_bin" {
			t.Errorf("key 1 %v: a revoked box's pickup or bin report counted", w)
		}
		if n := ownerCount(t, `SELECT count(*) FROM pickup_challenges WHERE id = $1 AND used_at IS NOT NULL`, *ch.ChallengeID); n != 0 {
			t.Error("a revoked box used up a pickup challenge")
		}
		if n := ownerCount(t, `SELECT count(*) FROM box_status WHERE box_id = $1`, boxID); n != 0 {
			t.Error("a revoked box's heartbeat was recorded")
		}
		if n := ownerCount(t, `SELECT count(*) FROM box_journal WHERE box_id = $1`, boxID); n != 0 {
			t.Errorf("%d journal entries stored from a revoked box", n)
		}
	})
}

// TestBoxHealthWebhooks: the incidents a box's heartbeats (POST
// /box/v1/heartbeat) and its silence reveal reach the tenant's webhook
// endpoints as box.power_lost, box.battery_low and box.offline, once per
// incident: not on every heartbeat, not on every sweep, and again only
// after the incident has closed (mains back, battery recharged past the
// recovery mark, a heartbeat).
func TestBoxHealthWebhooks(t *testing.T) {
	s := startServer(t, func(c *Config) { c.BoxOfflineAfter, c.BoxOfflineAlertAfter = time.Second, time.Second })
	f := s.signup(t)
	rcv := newReceiver(t, nil)
	hookID, secret := endpoint(t, f.Owner, rcv.srv.URL, webhooks.BoxOffline, webhooks.BoxPowerLost, webhooks.BoxBatteryLow)
	st := s.newSite(t, f, 1)
	ctx := context.Background()
	beat := func(t *testing.T, power string, battery int) {
		t.Helper()
		if err := st.box.Call(ctx, 200, "POST", "/box/v1/heartbeat", health.Heartbeat{FirmwareVersion: "5.2.0", PowerSource: power, BatteryLevel: &battery}, nil); err != nil {
			t.Fatal(err)
		}
	}
	want := func(t *testing.T, when string, power, battery, offline int) {
		t.Helper()
		got := map[string]int{}
		for _, d := range deliveriesOf(t, f.Owner, hookID) {
			got[d["event"].(string)]++
		}
		exp := map[string]int{webhooks.BoxPowerLost: power, webhooks.BoxBatteryLow: battery, webhooks.BoxOffline: offline}
		for k, v := range exp {
			if v == 0 {
				delete(exp, k)
			}
		}
		if !reflect.DeepEqual(got, exp) {
			t.Fatalf("%s: deliveries %v, want %v", when, got, exp)
		}
	}
	// Heartbeats stop for longer than both thresholds; the workers' sweep
	// runs (twice: a second sweep must not report the incident again).
	silence := func(t *testing.T) {
		t.Helper()
		time.Sleep(2100 * time.Millisecond)
		for range 2 {
			if _, err := s.app.health.Sweep(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}

	beat(t, "mains", 95)
	beat(t, "mains", 90)
	want(t, "on mains", 0, 0, 0)

	t.Run("OKPowerLostOncePerIncident", func(t *testing.T) {
		beat(t, "battery", 80)
		beat(t, "battery", 70)
		beat(t, "battery", 60)
		want(t, "three heartbeats on battery", 1, 0, 0)
		beat(t, "mains", 60)
		beat(t, "battery", 59)
		want(t, "mains back, then lost again", 2, 0, 0)
	})
	t.Run("OKBatteryLowOncePerIncident", func(t *testing.T) {
		beat(t, "battery", 15)
		beat(t, "battery", 12)
		// Above the low mark but below the recovery mark: the same
		// incident, not a new one.
		beat(t, "battery", 25)
		beat(t, "battery", 14)
		want(t, "battery low, wavering", 2, 1, 0)
		beat(t, "mains", 35)
		beat(t, "mains", 10)
		want(t, "recharged past the recovery mark, then low again", 2, 2, 0)
	})
	t.Run("OKOfflineOncePerIncident", func(t *testing.T) {
		silence(t)
		want(t, "heartbeats stopped", 2, 2, 1)
		if _, err := s.app.health.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
		want(t, "a later sweep", 2, 2, 1)
		// The same deadline handed out again (a sweep that failed puts
		// it back; a replica re-adds it): the incident was reported.
		alertSet, member := s.app.cfg.LimitPrefix+":box-health:alert", f.ID.String()+":"+st.boxID
		if err := s.app.redis.ZAdd(ctx, alertSet, redis.Z{Score: 0, Member: member}).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.app.health.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.app.redis.ZScore(ctx, alertSet, member).Err(); err != redis.Nil {
			t.Fatalf("the sweep did not claim the re-added deadline (%v): is %s still the alert set?", err, alertSet)
		}
		want(t, "a deadline handed out twice", 2, 2, 1)
		beat(t, "mains", 90)
		want(t, "back online", 2, 2, 1)
		silence(t)
		want(t, "heartbeats stopped again", 2, 2, 2)
	})
	t.Run("OKDelivered", func(t *testing.T) {
		d := s.dispatcher(t)
		pump(t, d, func() bool { return len(rcv.requests()) >= 6 })
		if n := len(rcv.requests()); n != 6 {
			t.Fatalf("receiver got %d events, want 6", n)
		}
		levels := []any{}
		for _, g := range rcv.requests() {
			verify(t, secret, g)
			if g.Event.TenantID != f.ID.String() || g.Event.Data["box_id"] != st.boxID || g.Event.Data["box_name"] == "" || g.Event.Data["box_name"] == nil {
				t.Errorf("%s: tenant %s, data %v", g.Event.Type, g.Event.TenantID, g.Event.Data)
			}
			switch g.Event.Type {
			case webhooks.BoxBatteryLow:
				levels = append(levels, g.Event.Data["battery_level"])
			case webhooks.BoxOffline:
				if _, err := time.Parse(time.RFC3339, fmt.Sprint(g.Event.Data["offline_since"])); err != nil {
					t.Errorf("box.offline data %v: offline_since %v", g.Event.Data, err)
				}
			}
		}
		if len(levels) != 2 || !slices.Contains(levels, any(float64(15))) || !slices.Contains(levels, any(float64(10))) {
			t.Errorf("box.battery_low levels %v, want 15 and 10 (the heartbeats that opened each incident)", levels)
		}
	})
}
