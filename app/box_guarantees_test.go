package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/tenants/exchange"
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
