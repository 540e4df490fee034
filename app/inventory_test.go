package main

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants/inventory"
)

// invMember invites a user of role into f's tenant (limited to locs, if
// any), lets them set a password through the invitation and signs them in.
func (s *server) invMember(t *testing.T, f tenantFixture, role string, locs ...string) *client {
	t.Helper()
	email := fmt.Sprintf("%s-%s@example.com", role, uuid.NewString()[:8])
	if locs == nil {
		locs = []string{}
	}
	f.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "New " + role, "email": email, "role": role, "location_ids": locs})
	tok := s.resetToken(t, f.ID, email)
	s.client().expect(t, 204, "POST", "/api/v1/auth/password/reset", map[string]any{"token": tok, "new_password": "invited-pass-8"})
	return s.login(t, email, "invited-pass-8")
}

// invID creates something and returns its id.
func invID(t *testing.T, c *client, path string, body map[string]any) string {
	t.Helper()
	return c.expect(t, 201, "POST", path, body).JSON(t)["id"].(string)
}

func invBox(name, locationID string, bins int) map[string]any {
	b := map[string]any{"name": name, "model": "MS5", "timezone": "Europe/Paris", "bins": bins}
	if locationID != "" {
		b["location_id"] = locationID
	}
	return b
}

// fieldsOf lists the fields a 422 answer names.
func fieldsOf(t *testing.T, r response) []string {
	t.Helper()
	p := problemOf(t, r, 422)
	var out []string
	errs, _ := p["errors"].([]any)
	for _, e := range errs {
		out = append(out, e.(map[string]any)["field"].(string))
	}
	return out
}

// itemIDs lists the ids of a list answer's items.
func itemIDs(t *testing.T, r response) []string {
	t.Helper()
	var out []string
	for _, it := range r.JSON(t)["items"].([]any) {
		out = append(out, it.(map[string]any)["id"].(string))
	}
	return out
}

func TestInventoryRoles(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	admin := s.invMember(t, f, "admin")
	staff := s.invMember(t, f, "staff")
	visitor := s.invMember(t, f, "visitor")

	loc := invID(t, admin, "/api/v1/locations", map[string]any{"name": "Airport", "address": "Terminal 1"})
	box := invID(t, admin, "/api/v1/boxes", invBox("Lobby", loc, 8))

	t.Run("OKStaffManageKeys", func(t *testing.T) {
		key := invID(t, staff, "/api/v1/keys", map[string]any{"name": "Room 1", "fob_serial": "ROOM-1", "box_id": box, "bin": 1})
		staff.expect(t, 200, "PATCH", "/api/v1/keys/"+key, map[string]any{"name": "Room 1 (suite)"})
		staff.expect(t, 200, "GET", "/api/v1/boxes/"+box, nil)
		staff.expect(t, 200, "GET", "/api/v1/locations/"+loc, nil)
		staff.expect(t, 204, "DELETE", "/api/v1/keys/"+key, nil)
	})
	t.Run("ErrStaffCannotInstall", func(t *testing.T) {
		problemOf(t, staff.do(t, "POST", "/api/v1/boxes", invBox("Staff box", loc, 4)), 403)
		problemOf(t, staff.do(t, "PATCH", "/api/v1/boxes/"+box, map[string]any{"bins": 2}), 403)
		problemOf(t, staff.do(t, "DELETE", "/api/v1/boxes/"+box, nil), 403)
		problemOf(t, staff.do(t, "POST", "/api/v1/locations", map[string]any{"name": "Harbour"}), 403)
		problemOf(t, staff.do(t, "PATCH", "/api/v1/locations/"+loc, map[string]any{"name": "Harbour"}), 403)
		problemOf(t, staff.do(t, "DELETE", "/api/v1/locations/"+loc, nil), 403)
	})
	t.Run("ErrVisitorSeesNothing", func(t *testing.T) {
		for _, path := range []string{"/api/v1/keys", "/api/v1/boxes", "/api/v1/locations", "/api/v1/keys/export", "/api/v1/boxes/" + box} {
			problemOf(t, visitor.do(t, "GET", path, nil), 403)
		}
		problemOf(t, visitor.do(t, "POST", "/api/v1/keys", map[string]any{"name": "V", "fob_serial": "V-1", "box_id": box, "bin": 2}), 403)
	})
	t.Run("ErrAnonymous", func(t *testing.T) {
		problemOf(t, s.client().do(t, "GET", "/api/v1/keys", nil), 401)
		problemOf(t, s.client().do(t, "GET", "/api/v1/keys/export", nil), 401)
	})
	t.Run("OKStaffAPIKey", func(t *testing.T) {
		tok := f.Owner.expect(t, 201, "POST", "/api/v1/api-keys", map[string]any{"name": "Front desk", "role": "staff"}).JSON(t)["key"].(string)
		integ := s.client()
		integ.token = tok
		invID(t, integ, "/api/v1/keys", map[string]any{"name": "Room 2", "fob_serial": "ROOM-2", "box_id": box, "bin": 2})
		problemOf(t, integ.do(t, "POST", "/api/v1/boxes", invBox("Integration box", loc, 4)), 403)
	})
}

func TestInventoryLimitedStaff(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	airport := invID(t, f.Owner, "/api/v1/locations", map[string]any{"name": "Airport"})
	station := invID(t, f.Owner, "/api/v1/locations", map[string]any{"name": "Station"})
	lobby := invID(t, f.Owner, "/api/v1/boxes", invBox("Lobby", airport, 8))
	kiosk := invID(t, f.Owner, "/api/v1/boxes", invBox("Kiosk", station, 8))
	loose := invID(t, f.Owner, "/api/v1/boxes", invBox("Loose", "", 2))
	room := invID(t, f.Owner, "/api/v1/keys", map[string]any{"name": "Room 1", "fob_serial": "ROOM-1", "box_id": lobby, "bin": 1})
	car := invID(t, f.Owner, "/api/v1/keys", map[string]any{"name": "Car 1", "fob_serial": "CAR-1", "box_id": kiosk, "bin": 1})

	desk := s.invMember(t, f, "staff", airport)

	if got := itemIDs(t, desk.expect(t, 200, "GET", "/api/v1/locations", nil)); !slices.Equal(got, []string{airport}) {
		t.Errorf("locations of the airport desk: %v", got)
	}
	if got := itemIDs(t, desk.expect(t, 200, "GET", "/api/v1/boxes", nil)); !slices.Equal(got, []string{lobby}) {
		t.Errorf("boxes of the airport desk: %v", got)
	}
	if got := itemIDs(t, desk.expect(t, 200, "GET", "/api/v1/keys", nil)); !slices.Equal(got, []string{room}) {
		t.Errorf("keys of the airport desk: %v", got)
	}
	if got := itemIDs(t, desk.expect(t, 200, "GET", "/api/v1/keys?location_id="+station, nil)); len(got) != 0 {
		t.Errorf("filtering on the station shows %v", got)
	}
	if got := itemIDs(t, desk.expect(t, 200, "GET", "/api/v1/keys?box_id="+kiosk, nil)); len(got) != 0 {
		t.Errorf("filtering on the kiosk shows %v", got)
	}
	for _, path := range []string{"/api/v1/boxes/" + kiosk, "/api/v1/boxes/" + loose, "/api/v1/keys/" + car, "/api/v1/locations/" + station} {
		problemOf(t, desk.do(t, "GET", path, nil), 404)
	}
	problemOf(t, desk.do(t, "PATCH", "/api/v1/keys/"+car, map[string]any{"name": "Mine"}), 404)
	problemOf(t, desk.do(t, "DELETE", "/api/v1/keys/"+car, nil), 404)
	// A key in a box outside the desk's locations: the box is unknown.
	problemOf(t, desk.do(t, "POST", "/api/v1/keys", map[string]any{"name": "Car 2", "fob_serial": "CAR-2", "box_id": kiosk, "bin": 2}), 404)
	problemOf(t, desk.do(t, "PATCH", "/api/v1/keys/"+room, map[string]any{"box_id": kiosk}), 404)
	invID(t, desk, "/api/v1/keys", map[string]any{"name": "Room 2", "fob_serial": "ROOM-2", "box_id": lobby, "bin": 2})

	sheet := desk.expect(t, 200, "GET", "/api/v1/keys/export", nil)
	rows, err := csv.NewReader(bytes.NewReader(sheet.Body)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || rows[1][0] != "Room 1" || rows[2][0] != "Room 2" {
		t.Errorf("the desk's sheet: %q", rows)
	}
	if strings.Contains(string(sheet.Body), "Car 1") {
		t.Error("the desk's sheet lists another location's key")
	}
	if n := len(itemIDs(t, f.Owner.expect(t, 200, "GET", "/api/v1/keys", nil))); n != 3 {
		t.Errorf("the owner sees %d keys, want 3", n)
	}
}

func TestInventoryBadInput(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	o := f.Owner
	loc := invID(t, o, "/api/v1/locations", map[string]any{"name": "Airport"})
	box := invID(t, o, "/api/v1/boxes", invBox("Lobby", loc, 4))
	room := invID(t, o, "/api/v1/keys", map[string]any{"name": "Room 1", "fob_serial": "ROOM-1", "box_id": box, "bin": 1})

	for _, tc := range []struct {
		name, method, path string
		body               any
		fields             []string
	}{
		{"BoxTimezone", "POST", "/api/v1/boxes", map[string]any{"name": "B", "model": "MS5", "timezone": "Mars/Base", "bins": 4}, []string{"timezone"}},
		{"BoxModel", "POST", "/api/v1/boxes", map[string]any{"name": "B", "model": "MS9", "timezone": "UTC", "bins": 4}, []string{"model"}},
		{"BoxOneCoordinate", "POST", "/api/v1/boxes", map[string]any{"name": "B", "model": "MS3", "timezone": "UTC", "bins": 4, "latitude": 48.8}, []string{"longitude"}},
		{"BoxBins", "POST", "/api/v1/boxes", map[string]any{"name": "B", "model": "MS3", "timezone": "UTC", "bins": 0}, []string{"bins"}},
		{"BoxLocationID", "POST", "/api/v1/boxes", map[string]any{"name": "B", "model": "MS3", "timezone": "UTC", "bins": 4, "location_id": "airport"}, []string{"location_id"}},
		{"BoxPatchCoordinate", "PATCH", "/api/v1/boxes/" + box, map[string]any{"latitude": 12.5}, []string{"longitude"}},
		{"KeyEmpty", "POST", "/api/v1/keys", map[string]any{}, []string{"name", "fob_serial", "box_id", "bin"}},
		{"KeyBinBeyondBox", "POST", "/api/v1/keys", map[string]any{"name": "K", "fob_serial": "K-1", "box_id": box, "bin": 5}, []string{"bin"}},
		{"KeyFobSerial", "POST", "/api/v1/keys", map[string]any{"name": "K", "fob_serial": "K 1", "box_id": box, "bin": 2}, []string{"fob_serial"}},
		{"KeyBoxID", "POST", "/api/v1/keys", map[string]any{"name": "K", "fob_serial": "K-1", "box_id": "lobby", "bin": 2}, []string{"box_id"}},
		{"KeyPatchBin", "PATCH", "/api/v1/keys/" + room, map[string]any{"bin": 9}, []string{"bin"}},
		{"LocationName", "POST", "/api/v1/locations", map[string]any{"name": ""}, []string{"name"}},
		{"KeyListState", "GET", "/api/v1/keys?state=lost", nil, []string{"state"}},
		{"KeyListBoxID", "GET", "/api/v1/keys?box_id=lobby", nil, []string{"box_id"}},
		{"BoxListLocationID", "GET", "/api/v1/boxes?location_id=x", nil, []string{"location_id"}},
		{"Cursor", "GET", "/api/v1/locations?cursor=x", nil, []string{"cursor"}},
	} {
		t.Run("Err"+tc.name, func(t *testing.T) {
			if got := fieldsOf(t, o.do(t, tc.method, tc.path, tc.body)); !slices.Equal(got, tc.fields) {
				t.Errorf("errors on %v, want %v", got, tc.fields)
			}
		})
	}
	t.Run("ErrUnknownField", func(t *testing.T) {
		problemOf(t, o.do(t, "POST", "/api/v1/keys", map[string]any{"name": "K", "fob_serial": "K-1", "box_id": box, "bin": 2, "state": "out"}), 400)
		problemOf(t, o.do(t, "PATCH", "/api/v1/boxes/"+box, map[string]any{"tenant_id": uuid.NewString()}), 400)
		problemOf(t, o.do(t, "PATCH", "/api/v1/boxes/"+box, map[string]any{"latitude": "north"}), 400)
	})
	t.Run("ErrConflicts", func(t *testing.T) {
		keysBefore := len(itemIDs(t, o.expect(t, 200, "GET", "/api/v1/keys", nil)))
		auditBefore := len(o.expect(t, 200, "GET", "/api/v1/audit?limit=200", nil).JSON(t)["items"].([]any))

		p := problemOf(t, o.do(t, "POST", "/api/v1/keys", map[string]any{"name": "Room 1b", "fob_serial": "ROOM-1B", "box_id": box, "bin": 1}), 409)
		if d := p["detail"].(string); !strings.Contains(d, `"Room 1"`) || !strings.Contains(d, room) {
			t.Errorf("home bin taken: the problem does not name the key: %s", d)
		}
		problemOf(t, o.do(t, "POST", "/api/v1/keys", map[string]any{"name": "Room 2", "fob_serial": "ROOM-1", "box_id": box, "bin": 2}), 409)
		problemOf(t, o.do(t, "POST", "/api/v1/locations", map[string]any{"name": "Airport"}), 409)
		problemOf(t, o.do(t, "PATCH", "/api/v1/boxes/"+box, map[string]any{"bins": 0}), 422)
		invID(t, o, "/api/v1/keys", map[string]any{"name": "Room 3", "fob_serial": "ROOM-3", "box_id": box, "bin": 3})
		p = problemOf(t, o.do(t, "PATCH", "/api/v1/boxes/"+box, map[string]any{"bins": 2}), 409)
		if d := p["detail"].(string); !strings.Contains(d, "Room 3") {
			t.Errorf("shrinking: %s", d)
		}
		problemOf(t, o.do(t, "DELETE", "/api/v1/boxes/"+box, nil), 409)
		problemOf(t, o.do(t, "DELETE", "/api/v1/locations/"+loc, nil), 409)

		// Refused requests wrote nothing (the one key created in between
		// aside) and audited nothing.
		if n := len(itemIDs(t, o.expect(t, 200, "GET", "/api/v1/keys", nil))); n != keysBefore+1 {
			t.Errorf("%d keys after the refusals, want %d", n, keysBefore+1)
		}
		if n := len(o.expect(t, 200, "GET", "/api/v1/audit?limit=200", nil).JSON(t)["items"].([]any)); n != auditBefore+1 {
			t.Errorf("%d audit entries after the refusals, want %d", n, auditBefore+1)
		}
		if b := o.expect(t, 200, "GET", "/api/v1/boxes/"+box, nil).JSON(t); b["bins"] != float64(4) {
			t.Errorf("a refused shrink changed the box: %v", b["bins"])
		}
	})
}

func TestInventoryOtherTenant(t *testing.T) {
	s := startServer(t)
	a, b := s.signup(t), s.signup(t)
	loc := invID(t, a.Owner, "/api/v1/locations", map[string]any{"name": "Airport"})
	box := invID(t, a.Owner, "/api/v1/boxes", invBox("Lobby", loc, 4))
	key := invID(t, a.Owner, "/api/v1/keys", map[string]any{"name": "Room 1", "fob_serial": "ROOM-1", "box_id": box, "bin": 1})

	for _, r := range []struct{ method, path string }{
		{"GET", "/api/v1/locations/" + loc}, {"PATCH", "/api/v1/locations/" + loc}, {"DELETE", "/api/v1/locations/" + loc},
		{"GET", "/api/v1/boxes/" + box}, {"PATCH", "/api/v1/boxes/" + box}, {"DELETE", "/api/v1/boxes/" + box},
		{"GET", "/api/v1/keys/" + key}, {"PATCH", "/api/v1/keys/" + key}, {"DELETE", "/api/v1/keys/" + key},
	} {
		var body any
		if r.method == "PATCH" {
			body = map[string]any{"name": "Mine"}
		}
		problemOf(t, b.Owner.do(t, r.method, r.path, body), 404)
	}
	problemOf(t, b.Owner.do(t, "POST", "/api/v1/keys", map[string]any{"name": "K", "fob_serial": "K-1", "box_id": box, "bin": 2}), 404)
	problemOf(t, b.Owner.do(t, "POST", "/api/v1/boxes", invBox("Theirs", loc, 4)), 404)
	for _, path := range []string{"/api/v1/keys", "/api/v1/boxes", "/api/v1/locations"} {
		if got := itemIDs(t, b.Owner.expect(t, 200, "GET", path, nil)); len(got) != 0 {
			t.Errorf("%s of another tenant: %v", path, got)
		}
	}
	if got := a.Owner.expect(t, 200, "GET", "/api/v1/keys/"+key, nil).JSON(t); got["name"] != "Room 1" {
		t.Errorf("the key changed: %v", got)
	}
}

func TestInventoryWhereabouts(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	o := f.Owner
	box := invID(t, o, "/api/v1/boxes", map[string]any{"name": "Lobby", "model": "MS3", "timezone": "America/New_York", "bins": 6, "latitude": 40.7, "longitude": -74})
	other := invID(t, o, "/api/v1/boxes", invBox("Garage", "", 6))
	key := o.expect(t, 201, "POST", "/api/v1/keys", map[string]any{"name": "Room 1", "fob_serial": "ROOM-1", "box_id": box, "bin": 1}).JSON(t)
	w := key["whereabouts"].(map[string]any)
	if w["state"] != "in_bin" || w["box_id"] != box || w["bin"] != float64(1) || w["access_id"] != nil || w["since"] != nil || w["until"] != nil {
		t.Fatalf("a new key's whereabouts: %v", w)
	}
	id := key["id"].(string)

	// The box's view: not offline capable (MS3), its bins and what they hold.
	bx := o.expect(t, 200, "GET", "/api/v1/boxes/"+box, nil).JSON(t)
	bins := bx["bin_contents"].([]any)
	if bx["offline_capable"] != false || len(bins) != 6 {
		t.Fatalf("box: %v", bx)
	}
	if b1 := bins[0].(map[string]any); b1["occupied"] != true || b1["key"].(map[string]any)["fob_serial"] != "ROOM-1" || b1["home_of"].(map[string]any)["id"] != id {
		t.Errorf("bin 1: %v", b1)
	}
	if b2 := bins[1].(map[string]any); b2["occupied"] != false || b2["key"] != nil || b2["home_of"] != nil {
		t.Errorf("bin 2: %v", b2)
	}

	// Moving the home moves the key that is in it.
	moved := o.expect(t, 200, "PATCH", "/api/v1/keys/"+id, map[string]any{"box_id": other, "bin": 3}).JSON(t)
	if w := moved["whereabouts"].(map[string]any); moved["box_id"] != other || moved["bin"] != float64(3) || w["box_id"] != other || w["bin"] != float64(3) {
		t.Fatalf("after moving home: %v", moved)
	}

	// Out with a visitor whose access ended an hour ago: overdue.
	access := uuid.New()
	ownerExec(t, `UPDATE keys SET state = 'out', box_id = NULL, bin = NULL, out_access_id = $1, out_since = now() - interval '1 day', out_until = now() - interval '1 hour' WHERE tenant_id = $2 AND id = $3`, access, f.ID, id)
	got := o.expect(t, 200, "GET", "/api/v1/keys/"+id, nil).JSON(t)
	w = got["whereabouts"].(map[string]any)
	if w["state"] != "overdue" || w["access_id"] != access.String() || w["box_id"] != nil || w["since"] == nil || w["until"] == nil {
		t.Fatalf("overdue key: %v", w)
	}
	if _, err := time.Parse(time.RFC3339, w["until"].(string)); err != nil || !strings.HasSuffix(w["until"].(string), "Z") {
		t.Errorf("until is not RFC 3339 UTC: %v", w["until"])
	}
	if got := itemIDs(t, o.expect(t, 200, "GET", "/api/v1/keys?state=overdue", nil)); !slices.Equal(got, []string{id}) {
		t.Errorf("overdue list: %v", got)
	}
	if got := itemIDs(t, o.expect(t, 200, "GET", "/api/v1/keys?state=out", nil)); len(got) != 0 {
		t.Errorf("an overdue key is listed as out: %v", got)
	}

	// Null clears the coordinates; absent fields stay.
	bx = o.expect(t, 200, "PATCH", "/api/v1/boxes/"+box, map[string]any{"latitude": nil, "longitude": nil, "model": "MS4"}).JSON(t)
	if bx["latitude"] != nil || bx["longitude"] != nil || bx["timezone"] != "America/New_York" || bx["offline_capable"] != true {
		t.Errorf("after clearing the coordinates: %v", bx)
	}
}

func TestInventoryExportCSV(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	o := f.Owner
	loc := invID(t, o, "/api/v1/locations", map[string]any{"name": "Airport"})
	box := invID(t, o, "/api/v1/boxes", invBox("Lobby, east", loc, 4))
	invID(t, o, "/api/v1/keys", map[string]any{"name": `=HYPERLINK("http://evil.example","open me")`, "fob_serial": "-1", "box_id": box, "bin": 2})
	invID(t, o, "/api/v1/keys", map[string]any{"name": "Room 1", "fob_serial": "ROOM-1", "box_id": box, "bin": 1})

	r := o.expect(t, 200, "GET", "/api/v1/keys/export", nil)
	if ct := r.Header.Get("Content-Type"); ct != "text/csv; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	wantName := "keys-" + time.Now().UTC().Format("2006-01-02") + ".csv"
	if cd := r.Header.Get("Content-Disposition"); cd != `attachment; filename="`+wantName+`"` {
		t.Errorf("Content-Disposition = %q", cd)
	}
	rows, err := csv.NewReader(bytes.NewReader(r.Body)).ReadAll()
	if err != nil {
		t.Fatalf("not CSV: %v\n%s", err, r.Body)
	}
	want := [][]string{
		{"key_name", "fob_serial", "box", "bin", "location"},
		{"Room 1", "ROOM-1", "Lobby, east", "1", "Airport"},
		{`'=HYPERLINK("http://evil.example","open me")`, "'-1", "Lobby, east", "2", "Airport"},
	}
	if !slices.EqualFunc(rows, want, slices.Equal) {
		t.Errorf("sheet:\n%q\nwant\n%q", rows, want)
	}
}

func TestInventoryIdempotentCreate(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	box := invID(t, f.Owner, "/api/v1/boxes", invBox("Lobby", "", 4))
	body := map[string]any{"name": "Room 1", "fob_serial": "ROOM-1", "box_id": box, "bin": 1}
	k := uuid.NewString()
	first := f.Owner.expect(t, 201, "POST", "/api/v1/keys", body, "Idempotency-Key", k)
	again := f.Owner.expect(t, 201, "POST", "/api/v1/keys", body, "Idempotency-Key", k)
	if !bytes.Equal(first.Body, again.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the retry was not replayed: %s / %s", first.Body, again.Body)
	}
	if n := len(itemIDs(t, f.Owner.expect(t, 200, "GET", "/api/v1/keys", nil))); n != 1 {
		t.Errorf("%d keys after a retried create, want 1", n)
	}
	// Without the key, the same request is a new one: the fob is taken.
	problemOf(t, f.Owner.do(t, "POST", "/api/v1/keys", body), 409)
}

// TestOpenAPIInventory drives every inventory operation through the real
// server and checks requests and answers against the document.
func TestOpenAPIInventory(t *testing.T) {
	doc := loadOpenAPI(t, mergedOpenAPI(t))
	s := startServer(t)
	sc := &specCheck{t: t, srv: s, url: s.url, doc: doc, ops: documentedOps(doc)}
	f := s.signup(t)
	owner := caller{token: f.Owner.token}
	var anon caller

	// The schemas written straight from Go types carry their fields.
	boxDetail := doc.Components.Schemas["BoxDetail"].Value
	for name, typ := range map[string]reflect.Type{
		"Location":              reflect.TypeOf(inventory.LocationView{}),
		"CreateLocationRequest": reflect.TypeOf(inventory.LocationInput{}),
		"UpdateLocationRequest": reflect.TypeOf(inventory.LocationPatch{}),
		"Box":                   reflect.TypeOf(inventory.BoxView{}),
		"BoxStatus":             reflect.TypeOf(inventory.BoxStatus{}),
		"BoxBin":                reflect.TypeOf(inventory.Bin{}),
		"BinKey":                reflect.TypeOf(inventory.BinKey{}),
		"KeyName":               reflect.TypeOf(inventory.KeyName{}),
		"CreateBoxRequest":      reflect.TypeOf(inventory.BoxInput{}),
		"UpdateBoxRequest":      reflect.TypeOf(inventory.BoxPatch{}),
		"Key":                   reflect.TypeOf(inventory.KeyView{}),
		"KeyWhereabouts":        reflect.TypeOf(inventory.Whereabouts{}),
		"CreateKeyRequest":      reflect.TypeOf(inventory.KeyInput{}),
		"UpdateKeyRequest":      reflect.TypeOf(inventory.KeyPatch{}),
	} {
		s := doc.Components.Schemas[name]
		if s == nil {
			t.Errorf("no %s schema", name)
			continue
		}
		checkFields(t, name, s.Value, typ)
	}
	if s := doc.Components.Schemas["SetKeyWhereaboutsRequest"]; s == nil {
		t.Error("no SetKeyWhereaboutsRequest schema")
	} else {
		checkFields(t, "SetKeyWhereaboutsRequest", s.Value, reflect.TypeOf(inventory.WhereaboutsInput{}))
	}
	if len(boxDetail.AllOf) != 2 || boxDetail.AllOf[0].Ref != "#/components/schemas/Box" || boxDetail.AllOf[1].Value.Properties["bin_contents"] == nil {
		t.Error("BoxDetail must be Box with bin_contents")
	}

	staffClient := s.invMember(t, f, "staff")
	staff := caller{token: staffClient.token}
	visitor := caller{token: s.invMember(t, f, "visitor").token}
	idem := func() []string { return []string{"Idempotency-Key", uuid.NewString()} }

	// Locations.
	loc := sc.call(owner, 201, true, "POST", "/api/v1/locations", map[string]any{"name": "Airport", "address": "Terminal 1"}, idem()...).JSON(t)["id"].(string)
	other := sc.call(owner, 201, true, "POST", "/api/v1/locations", map[string]any{"name": "Station"}).JSON(t)["id"].(string)
	sc.call(owner, 409, true, "POST", "/api/v1/locations", map[string]any{"name": "Airport"})
	sc.call(owner, 422, false, "POST", "/api/v1/locations", map[string]any{"name": ""})
	sc.call(owner, 400, false, "POST", "/api/v1/locations", map[string]any{"name": "X", "city": "Y"})
	sc.call(staff, 403, true, "POST", "/api/v1/locations", map[string]any{"name": "Harbour"})
	sc.call(anon, 401, true, "POST", "/api/v1/locations", map[string]any{"name": "Harbour"})
	page := sc.call(staff, 200, true, "GET", "/api/v1/locations?limit=1", nil).JSON(t)
	sc.call(staff, 200, true, "GET", "/api/v1/locations?limit=1&cursor="+page["next_cursor"].(string), nil)
	sc.call(owner, 422, false, "GET", "/api/v1/locations?limit=0", nil)
	sc.call(visitor, 403, true, "GET", "/api/v1/locations", nil)
	sc.call(staff, 200, true, "GET", "/api/v1/locations/"+loc, nil)
	sc.call(staff, 404, true, "GET", "/api/v1/locations/"+uuid.NewString(), nil)
	sc.call(owner, 200, true, "PATCH", "/api/v1/locations/"+other, map[string]any{"name": "Station north", "address": nil}, idem()...)
	sc.call(owner, 409, true, "PATCH", "/api/v1/locations/"+other, map[string]any{"name": "Airport"})
	sc.call(owner, 422, false, "PATCH", "/api/v1/locations/"+other, map[string]any{"name": ""})
	sc.call(owner, 404, true, "PATCH", "/api/v1/locations/"+uuid.NewString(), map[string]any{"name": "X"})
	sc.call(staff, 403, true, "PATCH", "/api/v1/locations/"+other, map[string]any{"name": "X"})

	// Boxes.
	boxBody := map[string]any{"name": "Lobby", "model": "MS5", "location_id": loc, "address": "Gate A", "latitude": 48.85, "longitude": 2.35, "timezone": "Europe/Paris", "bins": 4}
	box := sc.call(owner, 201, true, "POST", "/api/v1/boxes", boxBody, idem()...).JSON(t)
	boxID := box["id"].(string)
	if box["offline_capable"] != true {
		t.Errorf("an MS5 is not offline capable: %v", box)
	}
	spare := sc.call(owner, 201, true, "POST", "/api/v1/boxes", map[string]any{"name": "Spare", "model": "MS3", "timezone": "UTC", "bins": 2, "location_id": nil}).JSON(t)["id"].(string)
	sc.call(owner, 422, true, "POST", "/api/v1/boxes", map[string]any{"name": "Mars", "model": "MS3", "timezone": "Mars/Base", "bins": 2})
	sc.call(owner, 422, false, "POST", "/api/v1/boxes", map[string]any{"name": "Bad", "model": "MS9", "timezone": "UTC", "bins": 0})
	sc.call(owner, 404, true, "POST", "/api/v1/boxes", map[string]any{"name": "Far", "model": "MS3", "timezone": "UTC", "bins": 2, "location_id": uuid.NewString()})
	sc.call(owner, 400, false, "POST", "/api/v1/boxes", "{not json")
	sc.call(staff, 403, true, "POST", "/api/v1/boxes", boxBody)
	sc.call(staff, 200, true, "GET", "/api/v1/boxes", nil)
	sc.call(staff, 200, true, "GET", "/api/v1/boxes?location_id="+loc+"&limit=1", nil)
	sc.call(staff, 422, false, "GET", "/api/v1/boxes?location_id=x", nil)
	sc.call(visitor, 403, true, "GET", "/api/v1/boxes", nil)
	sc.call(staff, 200, true, "GET", "/api/v1/boxes/"+boxID, nil)
	sc.call(staff, 404, true, "GET", "/api/v1/boxes/"+uuid.NewString(), nil)
	sc.call(owner, 200, true, "PATCH", "/api/v1/boxes/"+spare, map[string]any{"location_id": other, "latitude": 1.5, "longitude": 2.5, "bins": 3, "name": nil}, idem()...)
	sc.call(owner, 200, true, "PATCH", "/api/v1/boxes/"+spare, map[string]any{"location_id": nil, "latitude": nil, "longitude": nil, "model": "MS4"})
	sc.call(owner, 422, true, "PATCH", "/api/v1/boxes/"+spare, map[string]any{"latitude": 10})
	sc.call(owner, 404, true, "PATCH", "/api/v1/boxes/"+uuid.NewString(), map[string]any{"bins": 3})
	sc.call(staff, 403, true, "PATCH", "/api/v1/boxes/"+spare, map[string]any{"bins": 3})

	// Keys.
	keyBody := map[string]any{"name": "Room 1", "fob_serial": "04A1B2C3", "box_id": boxID, "bin": 1}
	key := sc.call(staff, 201, true, "POST", "/api/v1/keys", keyBody, idem()...).JSON(t)["id"].(string)
	sc.call(staff, 409, true, "POST", "/api/v1/keys", map[string]any{"name": "Room 1b", "fob_serial": "04A1B2C4", "box_id": boxID, "bin": 1})
	sc.call(staff, 422, true, "POST", "/api/v1/keys", map[string]any{"name": "Room 9", "fob_serial": "ROOM-9", "box_id": boxID, "bin": 9})
	sc.call(staff, 422, false, "POST", "/api/v1/keys", map[string]any{"name": "", "fob_serial": "no spaces", "box_id": "x", "bin": 0})
	sc.call(staff, 404, true, "POST", "/api/v1/keys", map[string]any{"name": "Lost", "fob_serial": "LOST", "box_id": uuid.NewString(), "bin": 1})
	sc.call(visitor, 403, true, "POST", "/api/v1/keys", keyBody)
	sc.call(staff, 200, true, "GET", "/api/v1/keys", nil)
	sc.call(staff, 200, true, "GET", "/api/v1/keys?box_id="+boxID+"&location_id="+loc+"&state=in_bin&limit=10", nil)
	sc.call(staff, 200, true, "GET", "/api/v1/keys?state=overdue", nil)
	sc.call(staff, 422, false, "GET", "/api/v1/keys?state=lost", nil)
	sc.call(staff, 200, true, "GET", "/api/v1/keys/"+key, nil)
	sc.call(staff, 404, true, "GET", "/api/v1/keys/"+uuid.NewString(), nil)
	sc.call(staff, 404, true, "GET", "/api/v1/keys/not-a-key", nil)
	sc.call(staff, 200, true, "PATCH", "/api/v1/keys/"+key, map[string]any{"name": "Room 1 (suite)", "bin": 2, "box_id": nil}, idem()...)
	sc.call(staff, 422, false, "PATCH", "/api/v1/keys/"+key, map[string]any{"fob_serial": "no spaces"})
	sc.call(staff, 400, false, "PATCH", "/api/v1/keys/"+key, map[string]any{"state": "out"})
	sc.call(staff, 404, true, "PATCH", "/api/v1/keys/"+uuid.NewString(), map[string]any{"name": "X"})
	// Where the key is, corrected by hand, and back in its (new) home bin.
	where := "/api/v1/keys/" + key + "/whereabouts"
	if w := sc.call(staff, 200, true, "PUT", where, map[string]any{"state": "out", "access_id": nil, "note": "handed over at the desk"}, idem()...).JSON(t)["whereabouts"].(map[string]any); w["state"] != "out" || w["since"] == nil {
		t.Errorf("whereabouts after a correction to out: %v", w)
	}
	sc.call(staff, 200, true, "PUT", where, map[string]any{"state": "missing"})
	sc.call(staff, 422, false, "PUT", where, map[string]any{"state": "overdue"})
	sc.call(staff, 422, true, "PUT", where, map[string]any{"state": "in_bin", "box_id": boxID, "bin": 9})
	sc.call(staff, 422, true, "PUT", where, map[string]any{"state": "out", "access_id": uuid.NewString()})
	sc.call(staff, 404, true, "PUT", where, map[string]any{"state": "in_bin", "box_id": uuid.NewString(), "bin": 1})
	sc.call(staff, 404, true, "PUT", "/api/v1/keys/"+uuid.NewString()+"/whereabouts", map[string]any{"state": "missing"})
	sc.call(staff, 400, false, "PUT", where, map[string]any{"state": "missing", "home": 1})
	sc.call(visitor, 403, true, "PUT", where, map[string]any{"state": "missing"})
	sc.call(anon, 401, true, "PUT", where, map[string]any{"state": "missing"})
	sc.call(staff, 200, true, "PUT", where, map[string]any{"state": "in_bin", "box_id": boxID, "bin": 2})
	sheet := sc.call(staff, 200, true, "GET", "/api/v1/keys/export", nil)
	if !strings.Contains(string(sheet.Body), "Room 1 (suite),04A1B2C3,Lobby,2,Airport") {
		t.Errorf("sheet: %s", sheet.Body)
	}
	sc.call(visitor, 403, true, "GET", "/api/v1/keys/export", nil)
	sc.call(anon, 401, true, "GET", "/api/v1/keys/export", nil)
	bx := sc.call(staff, 200, true, "GET", "/api/v1/boxes/"+boxID, nil).JSON(t)
	if b2 := bx["bin_contents"].([]any)[1].(map[string]any); b2["key"] == nil || b2["home_of"] == nil {
		t.Errorf("bin 2 after the move: %v", b2)
	}
	// A key out with a visitor (overdue) and one out on ongoing access.
	late := sc.call(staff, 201, true, "POST", "/api/v1/keys", map[string]any{"name": "Car 1", "fob_serial": "CAR-1", "box_id": boxID, "bin": 3}).JSON(t)["id"].(string)
	ongoing := sc.call(staff, 201, true, "POST", "/api/v1/keys", map[string]any{"name": "Car 2", "fob_serial": "CAR-2", "box_id": boxID, "bin": 4}).JSON(t)["id"].(string)
	ownerExec(t, `UPDATE keys SET state = 'out', box_id = NULL, bin = NULL, out_access_id = gen_random_uuid(), out_since = now() - interval '1 day', out_until = now() - interval '1 hour' WHERE tenant_id = $1 AND id = $2`, f.ID, late)
	ownerExec(t, `UPDATE keys SET state = 'out', box_id = NULL, bin = NULL, out_access_id = gen_random_uuid(), out_since = now() - interval '1 day' WHERE tenant_id = $1 AND id = $2`, f.ID, ongoing)
	if w := sc.call(staff, 200, true, "GET", "/api/v1/keys/"+late, nil).JSON(t)["whereabouts"].(map[string]any); w["state"] != "overdue" {
		t.Errorf("whereabouts of an overdue key: %v", w)
	}
	sc.call(staff, 200, true, "GET", "/api/v1/keys?state=out", nil)
	sc.call(staff, 200, true, "GET", "/api/v1/keys", nil)
	bx = sc.call(staff, 200, true, "GET", "/api/v1/boxes/"+boxID, nil).JSON(t)
	if b3 := bx["bin_contents"].([]any)[2].(map[string]any); b3["occupied"] != false || b3["key"] != nil || b3["home_of"] == nil {
		t.Errorf("bin 3 with its key out: %v", b3)
	}
	for _, id := range []string{late, ongoing} {
		sc.call(staff, 204, true, "DELETE", "/api/v1/keys/"+id, nil)
	}

	// Deleting, in the order the rules allow.
	sc.call(owner, 409, true, "DELETE", "/api/v1/boxes/"+boxID, nil)
	sc.call(owner, 409, true, "DELETE", "/api/v1/locations/"+loc, nil)
	sc.call(owner, 409, true, "PATCH", "/api/v1/boxes/"+boxID, map[string]any{"bins": 1})
	sc.call(visitor, 403, true, "DELETE", "/api/v1/keys/"+key, nil)
	sc.call(staff, 204, true, "DELETE", "/api/v1/keys/"+key, nil, idem()...)
	sc.call(staff, 404, true, "DELETE", "/api/v1/keys/"+key, nil)
	sc.call(staff, 403, true, "DELETE", "/api/v1/boxes/"+boxID, nil)
	sc.call(owner, 204, true, "DELETE", "/api/v1/boxes/"+boxID, nil, idem()...)
	sc.call(owner, 404, true, "DELETE", "/api/v1/boxes/"+boxID, nil)
	sc.call(staff, 403, true, "DELETE", "/api/v1/locations/"+loc, nil)
	sc.call(owner, 204, true, "DELETE", "/api/v1/locations/"+loc, nil, idem()...)
	sc.call(owner, 404, true, "DELETE", "/api/v1/locations/"+loc, nil)

	// Every inventory operation of the document was driven above.
	for _, path := range []string{"/locations", "/locations/{id}", "/boxes", "/boxes/{id}", "/keys", "/keys/export", "/keys/{id}", "/keys/{id}/whereabouts"} {
		if doc.Paths.Find(path) == nil {
			t.Errorf("%s is not documented", path)
		}
	}
}

// A key with a live booking is not deleted: the bookings service counts its
// accesses in the request's transaction.
func TestInventoryDeleteKeyWithBooking(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	box := invID(t, f.Owner, "/api/v1/boxes", invBox("Lobby", "", 4))
	key := invID(t, f.Owner, "/api/v1/keys", map[string]any{"name": "Room 1", "fob_serial": "ROOM-1", "box_id": box, "bin": 1})
	start := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	booking := invID(t, f.Owner, "/api/v1/bookings", map[string]any{"key_id": key, "kind": "one_time",
		"visitor":   map[string]any{"name": "Val Visitor", "phone": "+14155550123", "email": nil},
		"starts_at": start.Format(time.RFC3339), "ends_at": start.Add(24 * time.Hour).Format(time.RFC3339), "notify_via": "sms"})

	p := problemOf(t, f.Owner.do(t, "DELETE", "/api/v1/keys/"+key, nil), 409)
	if d := p["detail"].(string); !strings.Contains(d, "1 live") {
		t.Errorf("refusal: %s", d)
	}
	f.Owner.expect(t, 200, "GET", "/api/v1/keys/"+key, nil)

	f.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+booking+"/revoke", nil)
	f.Owner.expect(t, 204, "DELETE", "/api/v1/keys/"+key, nil)
	problemOf(t, f.Owner.do(t, "GET", "/api/v1/keys/"+key, nil), 404)
}
