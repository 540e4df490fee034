package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants/exchange"
)

// Staff correct where a key is through the API: a key the box found
// missing turns up at the desk, goes back in a bin, and the box agrees.
// Every refusal writes nothing.
func TestKeyWhereaboutsCorrected(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	airport := invID(t, f.Owner, "/api/v1/locations", map[string]any{"name": "Airport"})
	station := invID(t, f.Owner, "/api/v1/locations", map[string]any{"name": "Station"})
	st := s.newSite(t, f, 1, 2)
	f.Owner.expect(t, 200, "PATCH", "/api/v1/boxes/"+st.boxID, map[string]any{"location_id": airport})
	kiosk := invID(t, f.Owner, "/api/v1/boxes", invBox("Kiosk", station, 4))
	car := invID(t, f.Owner, "/api/v1/keys", map[string]any{"name": "Car 9", "fob_serial": "CAR-9", "box_id": kiosk, "bin": 1})
	desk := s.invMember(t, f, "staff", airport)
	deskID := desk.expect(t, 200, "GET", "/api/v1/me", nil).JSON(t)["id"].(string)
	where := func(n int) string { return "/api/v1/keys/" + st.keys[n] + "/whereabouts" }
	corrections := func() int {
		return len(f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=key.whereabouts_set", nil).JSON(t)["items"].([]any))
	}

	// The box finds bin 1 empty: key 1 is missing and flagged.
	if r := st.events(t, exchange.Event{Type: "bin_closed", Bin: 1}); len(r.Flags) != 1 || r.Flags[0].Kind != "missing_key" {
		t.Fatalf("flags %+v, want missing_key", r.Flags)
	}

	t.Run("OKHandedInAtTheDesk", func(t *testing.T) {
		k := desk.expect(t, 200, "PUT", where(1), map[string]any{"state": "out", "note": "a guest handed it in at the desk"}).JSON(t)
		if w := k["whereabouts"].(map[string]any); w["state"] != "out" || w["access_id"] != nil || w["since"] == nil {
			t.Fatalf("whereabouts %v, want out at the desk", w)
		}
		// The correction answers the box's flag.
		if fl := st.openFlags(t); len(fl) != 0 {
			t.Errorf("open flags after the correction: %v", fl)
		}
		if b := f.Owner.expect(t, 200, "GET", "/api/v1/boxes/"+st.boxID, nil).JSON(t); b["status"].(map[string]any)["open_flags"] != float64(0) {
			t.Errorf("box status: %v", b["status"])
		}
		items := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=key.whereabouts_set", nil).JSON(t)["items"].([]any)
		if len(items) != 1 {
			t.Fatalf("%d key.whereabouts_set entries, want 1", len(items))
		}
		e := items[0].(map[string]any)
		d := e["details"].(map[string]any)
		if e["actor"] != "user:"+deskID || e["target"] != "key:"+st.keys[1] || d["from"] != "missing" || d["to"] != "out" ||
			d["note"] != "a guest handed it in at the desk" || d["resolved_flags"] == nil {
			t.Errorf("audit entry %v", e)
		}
	})
	t.Run("ErrRefusalsWriteNothing", func(t *testing.T) {
		other := s.signup(t)
		theirs := invID(t, other.Owner, "/api/v1/boxes", invBox("Theirs", "", 4))
		visitor := s.invMember(t, f, "visitor")
		before := corrections()

		p := problemOf(t, desk.do(t, "PUT", where(1), map[string]any{"state": "in_bin", "box_id": st.boxID, "bin": 2}), 409)
		if !strings.Contains(p["detail"].(string), "Car 2") {
			t.Errorf("the conflict does not name the key in the bin: %v", p["detail"])
		}
		problemOf(t, f.Owner.do(t, "PUT", where(1), map[string]any{"state": "in_bin", "box_id": theirs, "bin": 1}), 404)
		problemOf(t, desk.do(t, "PUT", where(1), map[string]any{"state": "in_bin", "box_id": kiosk, "bin": 2}), 404)
		problemOf(t, desk.do(t, "PUT", "/api/v1/keys/"+car+"/whereabouts", map[string]any{"state": "missing"}), 404)
		problemOf(t, other.Owner.do(t, "PUT", where(1), map[string]any{"state": "missing"}), 404)
		problemOf(t, visitor.do(t, "PUT", where(1), map[string]any{"state": "missing"}), 403)
		if got := fieldsOf(t, desk.do(t, "PUT", where(1), map[string]any{"state": "in_bin", "bin": 0})); len(got) != 2 || got[0] != "box_id" || got[1] != "bin" {
			t.Errorf("errors on %v, want box_id and bin", got)
		}
		if w := st.keyState(t, 1); w["state"] != "out" {
			t.Errorf("a refused correction moved the key: %v", w)
		}
		if n := corrections(); n != before {
			t.Errorf("%d corrections audited after the refusals, want %d", n, before)
		}
	})
	t.Run("OKBackInABinIdempotently", func(t *testing.T) {
		body := map[string]any{"state": "in_bin", "box_id": st.boxID, "bin": 5}
		k := uuid.NewString()
		first := desk.expect(t, 200, "PUT", where(1), body, "Idempotency-Key", k)
		again := desk.expect(t, 200, "PUT", where(1), body, "Idempotency-Key", k)
		if !bytes.Equal(first.Body, again.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("the retry was not replayed: %s / %s", first.Body, again.Body)
		}
		wantInBin(t, st.keyState(t, 1), st.boxID, 5)
		// The box reports what the records say: nothing to flag.
		if r := st.events(t, exchange.Event{Type: "bin_closed", Bin: 5, FobSerial: fob(st.fobs[1])}); len(r.Flags) != 0 {
			t.Errorf("flags %+v after the box agreed", r.Flags)
		}
	})
	t.Run("OKOutWithABooking", func(t *testing.T) {
		booking, _ := st.book(t, 2, -time.Hour, time.Hour)
		k := desk.expect(t, 200, "PUT", where(2), map[string]any{"state": "out", "access_id": booking}).JSON(t)
		w := k["whereabouts"].(map[string]any)
		if w["state"] != "out" || w["access_id"] != booking || w["until"] == nil {
			t.Fatalf("whereabouts %v, want out with booking %s", w, booking)
		}
		// A booking of another key is not one that can hold this key.
		if got := fieldsOf(t, desk.do(t, "PUT", where(1), map[string]any{"state": "out", "access_id": booking})); len(got) != 1 || got[0] != "access_id" {
			t.Errorf("errors on %v, want access_id", got)
		}
		var entry struct {
			Items []struct {
				Details map[string]string `json:"details"`
			} `json:"items"`
		}
		raw := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=key.whereabouts_set&limit=1", nil).Body
		if err := json.Unmarshal(raw, &entry); err != nil || len(entry.Items) != 1 || entry.Items[0].Details["to"] != "out booking:"+booking {
			t.Errorf("audit: %s", raw)
		}
	})
}

// The key's edit page corrects where it is with a form of its own; its
// field errors show on that form, not on the home's fields of the same
// names.
func TestKeyWhereaboutsPage(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 1, 2)
	owner := s.client()
	owner.http.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	s.signIn(t, owner, f.Email, f.Password)
	edit := "/keys/" + st.keys[1] + "/edit"
	page := string(owner.expect(t, 200, "GET", edit, nil).Body)
	if !strings.Contains(page, `action="/keys/`+st.keys[1]+`/whereabouts"`) || !strings.Contains(page, `id="where-now"`) {
		t.Fatalf("the edit page has no whereabouts form:\n%s", page)
	}
	m := regexp.MustCompile(`name="_csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no CSRF token on the page")
	}
	post := func(form url.Values) response {
		form.Set("_csrf", m[1])
		return owner.do(t, "POST", "/keys/"+st.keys[1]+"/whereabouts", form.Encode(), "Content-Type", "application/x-www-form-urlencoded")
	}

	r := post(url.Values{"where_state": {"in_bin"}, "where_box_id": {st.boxID}, "where_bin": {"2"}})
	if r.Status != 409 || !strings.Contains(string(r.Body), "Car 2") {
		t.Errorf("an occupied bin: %d\n%s", r.Status, r.Body)
	}
	r = post(url.Values{"where_state": {"in_bin"}, "where_box_id": {st.boxID}, "where_bin": {"99"}})
	if body := string(r.Body); r.Status != 422 || !regexp.MustCompile(`name="where_bin"[^>]*>\s*<span class="field-error">`).MatchString(body) ||
		regexp.MustCompile(`name="bin"[^>]*>\s*<span class="field-error">`).MatchString(body) {
		t.Errorf("a bin beyond the box: %d, the error not on the correction form's bin\n%s", r.Status, body)
	}
	if w := st.keyState(t, 1); w["state"] != "in_bin" || w["bin"] != float64(1) {
		t.Fatalf("refused corrections moved the key: %v", w)
	}
	r = post(url.Values{"where_state": {"out"}, "where_access_id": {""}, "where_note": {"at the desk for cleaning"}})
	if r.Status != 303 || !strings.HasPrefix(r.Header.Get("Location"), "/keys?done=") {
		t.Fatalf("the correction answered %d %v", r.Status, r.Header)
	}
	if w := st.keyState(t, 1); w["state"] != "out" || w["access_id"] != nil {
		t.Errorf("whereabouts %v, want out at the desk", w)
	}
	items := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=key.whereabouts_set", nil).JSON(t)["items"].([]any)
	if len(items) != 1 || items[0].(map[string]any)["details"].(map[string]any)["note"] != "at the desk for cleaning" {
		t.Errorf("audit: %v", items)
	}
}

// A key staff record as back calls its access's return reminder off, as a
// box's report does; handed to the access again, it queues a new one.
func TestKeyWhereaboutsReturnReminder(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 2)
	phone := bkPhone()
	id, code := st.book(t, 2, -time.Minute, 48*time.Hour, map[string]any{"return_reminder": true,
		"visitor": map[string]any{"name": "Rita Returner", "phone": phone}})
	reminders := func() string {
		var out []string
		rows := s.outboxOf(t, f.ID)
		for i := len(rows) - 1; i >= 0; i-- {
			if rows[i].Kind == "return_reminder" && rows[i].Recipient == phone {
				out = append(out, string(rows[i].Status))
			}
		}
		return strings.Join(out, ",")
	}
	r := st.call(t, "/box/v1/pickups", map[string]any{"code": code})
	wantOpen(t, r, 2)
	st.events(t, exchange.Event{Type: "key_taken", Bin: 2, AccessID: r.AccessID})
	if got := reminders(); got != "queued" {
		t.Fatalf("after the pickup: %s, want queued", got)
	}
	f.Owner.expect(t, 200, "PUT", "/api/v1/keys/"+st.keys[2]+"/whereabouts", map[string]any{"state": "in_bin", "box_id": st.boxID, "bin": 2, "note": "returned at the desk"})
	if got := reminders(); got != "canceled" {
		t.Fatalf("after the key was recorded back: %s, want canceled", got)
	}
	f.Owner.expect(t, 200, "PUT", "/api/v1/keys/"+st.keys[2]+"/whereabouts", map[string]any{"state": "out", "access_id": id})
	if got := reminders(); got != "canceled,queued" {
		t.Fatalf("after the key was handed over again: %s, want canceled,queued", got)
	}
}
