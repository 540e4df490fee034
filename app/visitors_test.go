package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/keyrelay/keyrelay/tenants/exchange"
)

// visitorStaff invites a member of staff with role and signs them in.
func visitorStaff(t *testing.T, s *server, f tenantFixture, role string) *client {
	t.Helper()
	email := role + "-" + uuid.NewString()[:8] + "@example.com"
	f.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Sam Staff", "email": email, "role": role})
	tok := s.resetToken(t, f.ID, email)
	s.client().expect(t, 204, "POST", "/api/v1/auth/password/reset", map[string]any{"token": tok, "new_password": "invited-pass-8"})
	return s.login(t, email, "invited-pass-8")
}

// ownerScan counts, as the database owner past row-level security, the rows
// of every table of the tenant whose text form contains needle.
func ownerScan(t *testing.T, tenantID uuid.UUID, needle string) map[string]int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testDB.OwnerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT c.relname::text FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
		WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) < 20 {
		t.Fatalf("only %d tenant tables found: %v", len(tables), tables)
	}
	found := map[string]int{}
	for _, tb := range tables {
		var n int
		q := fmt.Sprintf(`SELECT count(*) FROM %s x WHERE x.tenant_id = $1 AND strpos(x::text, $2) > 0`, pgx.Identifier{tb}.Sanitize())
		if err := conn.QueryRow(ctx, q, tenantID, needle).Scan(&n); err != nil {
			t.Fatalf("%s: %v", tb, err)
		}
		if n > 0 {
			found[tb] = n
		}
	}
	return found
}

// TestVisitorErasure: a visitor with bookings (live and ended), an alias
// code, a visitor account with a PIN, a pickup by phone at a box and
// messages is found, exported and erased; afterwards no table of the
// tenant holds the phone or email, the live access is revoked, the box's
// bundle is due for a rebuild and the audit entries carry a pseudonym.
func TestVisitorErasure(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	other := s.signup(t)
	st := s.newSite(t, f, 2, 3)
	n := seq.Add(1)
	phone := fmt.Sprintf("+3361%07d", n)
	email := fmt.Sprintf("vera%d-%s@example.net", n, uuid.NewString()[:6])
	visitor := map[string]any{"name": "Vera Visitor", "phone": phone, "email": email}
	live, liveCode := st.book(t, 2, -time.Hour, 24*time.Hour, map[string]any{"visitor": visitor})
	ended, _ := st.book(t, 3, time.Hour, 2*time.Hour, map[string]any{"visitor": visitor})
	ownerExec(t, `UPDATE bookings SET starts_at = now() - interval '10 days', live_from = now() - interval '10 days', ends_at = now() - interval '9 days' WHERE tenant_id = $1 AND id = $2`, f.ID, ended)
	f.Owner.expect(t, 201, "POST", "/api/v1/alias-codes", map[string]any{"visitor": map[string]any{"name": "Vera V.", "email": email}, "notify_via": "email", "send": true})
	vu := f.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Vera Visitor", "email": email, "phone": phone, "role": "visitor"}).JSON(t)
	ownerExec(t, `UPDATE users SET pin_hash = '\x0102' WHERE tenant_id = $1 AND id = $2`, f.ID, vu["id"])
	if r := st.call(t, "/box/v1/pickups", map[string]any{"phone": phone}); r.Result != "challenge" {
		t.Fatalf("pickup by phone: %+v, want a challenge", r)
	}
	staff := visitorStaff(t, s, f, "staff")
	admin := visitorStaff(t, s, f, "admin")

	var id string
	t.Run("OKSearch", func(t *testing.T) {
		for _, q := range []string{phone, strings.ToUpper(email)} {
			items := staff.expect(t, 200, "GET", "/api/v1/visitors?q="+urlQuery(q), nil).JSON(t)["items"].([]any)
			if len(items) != 1 {
				t.Fatalf("q=%s: %d visitors, want 1", q, len(items))
			}
			v := items[0].(map[string]any)
			if fmt.Sprint(v["phones"]) != "["+phone+"]" || fmt.Sprint(v["emails"]) != "["+email+"]" || v["bookings"] != 2.0 || v["alias_codes"] != 1.0 || v["visitor_user"] != true {
				t.Fatalf("visitor %v", v)
			}
			if q == phone {
				id = v["id"].(string)
			}
		}
		if items := staff.expect(t, 200, "GET", "/api/v1/visitors?q=%2B14155559999", nil).JSON(t)["items"].([]any); len(items) != 0 {
			t.Fatalf("unknown phone found %v", items)
		}
		problemOf(t, staff.do(t, "GET", "/api/v1/visitors?q=vera", nil), 422)
	})

	t.Run("OKExport", func(t *testing.T) {
		problemOf(t, staff.do(t, "GET", "/api/v1/visitors/"+id+"/export", nil), 403)
		r := admin.expect(t, 200, "GET", "/api/v1/visitors/"+id+"/export", nil)
		var e struct {
			Bookings []struct {
				ID, Status, KeyName string
				StartsAt            time.Time `json:"starts_at"`
			} `json:"bookings"`
			AliasCodes []map[string]any `json:"alias_codes"`
			Users      []struct {
				PINSet bool `json:"pin_set"`
			} `json:"users"`
			Pickups  []map[string]any `json:"pickups_by_phone"`
			Messages []struct {
				Kind, To string
				Content  map[string]string `json:"content"`
			} `json:"messages"`
			Audit []struct{ Action, Target string } `json:"audit"`
		}
		if err := json.Unmarshal(r.Body, &e); err != nil {
			t.Fatal(err)
		}
		if len(e.Bookings) != 2 || e.Bookings[0].StartsAt.IsZero() || len(e.AliasCodes) != 1 || len(e.Users) != 1 || !e.Users[0].PINSet || len(e.Pickups) != 1 {
			t.Fatalf("export %s", r.Body)
		}
		statuses := map[string]string{}
		for _, b := range e.Bookings {
			statuses[b.ID] = b.Status
		}
		if statuses[live] != "active" || statuses[ended] != "ended" {
			t.Errorf("statuses %v", statuses)
		}
		kinds := map[string]bool{}
		for _, m := range e.Messages {
			kinds[m.Kind] = true
			if m.Kind == "access_instructions" && (m.Content["code"] != "[withheld]" || m.Content == nil) {
				t.Errorf("instructions content %v: the code must be withheld", m.Content)
			}
			if strings.Contains(fmt.Sprint(m.Content), liveCode) {
				t.Errorf("export shows the booking code: %v", m.Content)
			}
		}
		if !kinds["access_instructions"] || !kinds["alias_code"] || !kinds["exchange_code"] {
			t.Errorf("message kinds %v", kinds)
		}
		actions := map[string]bool{}
		for _, a := range e.Audit {
			actions[a.Action] = true
		}
		if !actions["booking.created"] || !actions["pickup.challenged"] || !actions["alias_code.created"] {
			t.Errorf("audit actions %v", actions)
		}
	})

	t.Run("ErrOtherTenant", func(t *testing.T) {
		problemOf(t, other.Owner.do(t, "GET", "/api/v1/visitors/"+id+"/export", nil), 404)
		problemOf(t, other.Owner.do(t, "DELETE", "/api/v1/visitors/"+id, map[string]any{"confirm": phone}), 404)
	})
	t.Run("ErrNotOwner", func(t *testing.T) {
		problemOf(t, staff.do(t, "DELETE", "/api/v1/visitors/"+id, map[string]any{"confirm": phone}), 403)
		problemOf(t, admin.do(t, "DELETE", "/api/v1/visitors/"+id, map[string]any{"confirm": phone}), 403)
	})
	t.Run("ErrConfirmMismatch", func(t *testing.T) {
		p := problemOf(t, f.Owner.do(t, "DELETE", "/api/v1/visitors/"+id, map[string]any{"confirm": "+14155550100"}), 422)
		if !strings.Contains(fmt.Sprint(p["errors"]), "confirm") {
			t.Errorf("problem %v", p)
		}
		problemOf(t, f.Owner.do(t, "DELETE", "/api/v1/visitors/"+id, map[string]any{}), 422)
		problemOf(t, f.Owner.do(t, "DELETE", "/api/v1/visitors/"+id, map[string]any{"confirm": phone, "extra": 1}), 400)
		if got := ownerScan(t, f.ID, phone); got["bookings"] != 2 {
			t.Fatalf("a refused erasure changed bookings: %v", got)
		}
	})

	t.Run("OKErase", func(t *testing.T) {
		ownerExec(t, "DELETE FROM box_bundle_changes WHERE tenant_id = $1", f.ID)
		r := f.Owner.expect(t, 200, "DELETE", "/api/v1/visitors/"+id, map[string]any{"confirm": strings.ToUpper(email)}).JSON(t)
		pseudonym, _ := r["pseudonym"].(string)
		if !strings.HasPrefix(pseudonym, "visitor-") || r["accesses_revoked"] != 1.0 || r["bookings"] != 2.0 || r["users"] != 1.0 || r["alias_codes_retired"] != 1.0 {
			t.Fatalf("erased %v", r)
		}
		for _, needle := range []string{phone, email, "Vera"} {
			if got := ownerScan(t, f.ID, needle); len(got) > 0 {
				t.Errorf("%q still found in %v", needle, got)
			}
		}
		if n := ownerQuery[int64](t, `SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND details->>'phone_last4' = $2`, f.ID, phone[len(phone)-4:]); n != 0 {
			t.Errorf("%d audit entries still hold the phone's last digits", n)
		}
		if n := ownerQuery[int64](t, `SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND details->>'visitor' = $2 AND action = 'pickup.challenged'`, f.ID, pseudonym); n != 1 {
			t.Errorf("%d pickup entries under the pseudonym, want 1", n)
		}
		if n := ownerQuery[int64](t, `SELECT count(*) FROM users WHERE tenant_id = $1 AND id = $2 AND pin_hash IS NULL AND disabled_at IS NOT NULL`, f.ID, vu["id"]); n != 1 {
			t.Error("the visitor user keeps its PIN or is not disabled")
		}
		if n := ownerQuery[int64](t, `SELECT count(DISTINCT box_id) FROM box_bundle_changes WHERE tenant_id = $1 AND box_id = $2`, f.ID, st.boxID); n != 1 {
			t.Error("the box's bundle was not marked for a rebuild")
		}
		b := f.Owner.expect(t, 200, "GET", "/api/v1/bookings/"+live, nil).JSON(t)
		if b["status"] != "revoked" || b["visitor"].(map[string]any)["phone"] != nil {
			t.Errorf("live booking after erasure: %v", b)
		}
		wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": liveCode}), exchange.Revoked)
		wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"phone": phone}), exchange.NoAccess)
		// The delivery records stay, without content or recipient.
		msgs := f.Owner.expect(t, 200, "GET", "/api/v1/messages?limit=200", nil).JSON(t)["items"].([]any)
		erased := 0
		for _, m := range msgs {
			if m.(map[string]any)["to"] == "erased" {
				erased++
			}
		}
		if erased < 3 {
			t.Errorf("%d erased messages listed, want at least 3", erased)
		}
		audit := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=visitor.erased", nil).JSON(t)["items"].([]any)
		if len(audit) != 1 || audit[0].(map[string]any)["target"] != "visitor:"+pseudonym {
			t.Errorf("visitor.erased entries %v", audit)
		}
		problemOf(t, f.Owner.do(t, "DELETE", "/api/v1/visitors/"+id, map[string]any{"confirm": phone}), 404)
		if items := staff.expect(t, 200, "GET", "/api/v1/visitors?q="+urlQuery(phone), nil).JSON(t)["items"].([]any); len(items) != 0 {
			t.Errorf("erased visitor still found: %v", items)
		}
	})
}

func urlQuery(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "+", "%2B"), "@", "%40")
}
