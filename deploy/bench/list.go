package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/keyrelay/keyrelay/tenants/bookings"
)

// measuredTenants are signed up through the API and called with their API
// keys; the others only fill the database.
const measuredTenants = 4

// keysPerTenant carry the bookings of a tenant, perTenant/keysPerTenant
// each; the last two keys hold ongoing access, the others one-time
// bookings every other day from 50 days ago on.
const keysPerTenant = 20

// benchList is issue 6's list target: GET /api/v1/bookings?limit=50 p99
// < 10 ms with 1,000,000 bookings across 1,000 tenants in the database.
func benchList(ctx context.Context, e *env) (section, error) {
	sec := section{title: fmt.Sprintf("List 50 bookings (GET /api/v1/bookings) among %d bookings of %d tenants", e.o.tenants*e.o.perTenant, e.o.tenants)}
	step("list: sign up %d tenants through the API", measuredTenants)
	var measured []tenant
	var all []seedTenant
	for i := range measuredTenants {
		t, err := e.signup(ctx, 100+i)
		if err != nil {
			return sec, err
		}
		s, err := e.newSite(ctx, t, "List desk", keysPerTenant)
		if err != nil {
			return sec, err
		}
		measured = append(measured, t)
		all = append(all, seedTenant{id: t.ID, keys: s.keys})
	}
	step("list: %d more tenants with a box and %d keys each (COPY)", e.o.tenants-measuredTenants, keysPerTenant)
	more, err := e.copyTenants(ctx, e.o.tenants-measuredTenants)
	if err != nil {
		return sec, err
	}
	all = append(all, more...)
	step("list: %d bookings with their codes (COPY, hashed and sealed as the API does)", len(all)*e.o.perTenant)
	start := time.Now()
	if err := e.copyBookings(ctx, all); err != nil {
		return sec, err
	}
	if _, err := e.owner.Exec(ctx, "ANALYZE"); err != nil {
		return sec, err
	}
	sec.add("Seeded %d bookings in %s.\n", len(all)*e.o.perTenant, time.Since(start).Round(time.Second))

	queries := []string{"", "&status=active", "&status=upcoming"}
	var runs []httpRun
	for _, q := range queries {
		var n atomic.Int64
		tr := func(tg *vegeta.Target) error {
			t := measured[int(n.Add(1))%len(measured)]
			tg.Method, tg.URL = "GET", e.baseURL+"/api/v1/bookings?limit=50"+q
			tg.Header = http.Header{"Authorization": {"Bearer " + t.apiKey}}
			return nil
		}
		full := func(r *vegeta.Result) bool { return r.Code == 200 && strings.Count(string(r.Body), `"id"`) >= 50 }
		if q == "&status=active" {
			full = func(r *vegeta.Result) bool { return r.Code == 200 && strings.Contains(string(r.Body), `"items"`) }
		}
		attack("warm-up", tr, 100, 4, 2*time.Second, full)
		for i := range e.o.runs {
			step("list%s: %d/s run %d", q, e.o.listRate, i+1)
			runs = append(runs, attack(fmt.Sprintf("limit=50%s %d", q, i+1), tr, e.o.listRate, 16, e.o.duration, full))
		}
	}
	sec.add("HTTP (vegeta at %d/s over %d tenants' API keys):\n\n%s", e.o.listRate, measuredTenants, httpHeader)
	for _, r := range runs {
		sec.add("%s", r.line())
	}
	p99 := worstP99(runs)
	sec.judge(fmt.Sprintf("list p99 at %d/s", e.o.listRate), ms(p99)+allGood(runs), "< 10 ms", p99 < 10*time.Millisecond && allGood(runs) == "")

	plans, err := e.explainList(ctx, measured[0].ID)
	if err != nil {
		return sec, err
	}
	sec.add("\nEXPLAIN (ANALYZE, BUFFERS) as keyrelay_app in the tenant's transaction:\n\n```\n%s```", plans)
	return sec, nil
}

// seedTenant is a tenant and the keys its bookings go to.
type seedTenant struct {
	id   uuid.UUID
	keys []uuid.UUID
}

// copyTenants writes n tenants with one box and keysPerTenant keys each,
// as the owner (no user: nobody signs in to them).
func (e *env) copyTenants(ctx context.Context, n int) ([]seedTenant, error) {
	var ts, bxs, ks [][]any
	var out []seedTenant
	now := time.Now()
	for i := range n {
		t := seedTenant{id: uuid.Must(uuid.NewV7())}
		box := uuid.Must(uuid.NewV7())
		ts = append(ts, []any{t.id, fmt.Sprintf("Filler Rentals %d", i), now})
		bxs = append(bxs, []any{t.id, box, "Front desk", "MS5", "Europe/Paris", keysPerTenant})
		for k := range keysPerTenant {
			id := uuid.Must(uuid.NewV7())
			ks = append(ks, []any{t.id, id, fmt.Sprintf("Car %d", k+1), fmt.Sprintf("FOB-%d-%d", i, k), box, k + 1, "in_bin", box, k + 1})
			t.keys = append(t.keys, id)
		}
		out = append(out, t)
	}
	for _, c := range []struct {
		table string
		cols  []string
		rows  [][]any
	}{
		{"tenants", []string{"tenant_id", "name", "created_at"}, ts},
		{"boxes", []string{"tenant_id", "id", "name", "model", "timezone", "bins"}, bxs},
		{"keys", []string{"tenant_id", "id", "name", "fob_serial", "home_box_id", "home_bin", "state", "box_id", "bin"}, ks},
	} {
		if _, err := e.owner.CopyFrom(ctx, pgx.Identifier{c.table}, c.cols, pgx.CopyFromRows(c.rows)); err != nil {
			return nil, fmt.Errorf("copy %s: %w", c.table, err)
		}
	}
	return out, nil
}

var codeCols = []string{"tenant_id", "id", "code_hash", "code_sealed", "created_at"}
var bookingCols = []string{"tenant_id", "id", "key_id", "kind", "visitor_name", "visitor_phone", "visitor_email", "notify_via",
	"starts_at", "ends_at", "live_from", "return_reminder", "code_id", "url_token_hash", "url_token_sealed", "hold", "sent_at",
	"revoked_at", "created_by", "created_at", "updated_at"}

// copyBookings writes perTenant bookings for each tenant, with the rows
// the API writes: a codes row per booking (10 random digits, unique in
// the tenant, keyed hash and sealed copy bound to the row), the URL
// token's SHA-256 and sealed token, tenant_id leading every key. The
// windows of one key never overlap, so the exclusion constraint holds.
// Audit entries and outbox rows of these bookings are not written: the
// list does not read them.
func (e *env) copyBookings(ctx context.Context, ts []seedTenant) error {
	now := time.Now().UTC().Truncate(time.Second)
	base := now.Add(-50 * 24 * time.Hour)
	const batch = 50 // tenants per COPY
	for lo := 0; lo < len(ts); lo += batch {
		var codes, bks [][]any
		for _, t := range ts[lo:min(lo+batch, len(ts))] {
			seen := map[string]bool{}
			made := 0
			for j := 0; made < e.o.perTenant; j++ {
				k := t.keys[made%len(t.keys)]
				slot := made / len(t.keys)
				ongoing := made%len(t.keys) >= len(t.keys)-2
				made++
				code, err := digits(10)
				if err != nil {
					return err
				}
				if seen[code] {
					made--
					continue
				}
				seen[code] = true
				codeID, id := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
				sealed, err := e.box.Seal([]byte(code), []byte("code:"+t.id.String()+":"+codeID.String()))
				if err != nil {
					return err
				}
				codes = append(codes, []any{t.id, codeID, bookings.CodeHash(e.box, t.id, code), sealed, base})
				buf := make([]byte, 32)
				copy(buf, t.id[:])
				rand.Read(buf[16:])
				tok := base64.RawURLEncoding.EncodeToString(buf)
				tokSealed, err := e.box.Seal([]byte(tok), []byte("booking-url:"+t.id.String()+":"+id.String()))
				if err != nil {
					return err
				}
				hash := sha256.Sum256([]byte(tok))
				start := base.Add(time.Duration(slot*48) * time.Hour)
				var end any
				kind, reminder := "ongoing", false
				if !ongoing {
					end, kind, reminder = start.Add(24*time.Hour), "one_time", true
				}
				created := start.Add(-24 * time.Hour)
				hold := slot%10 == 7 && start.After(now)
				var sent, revoked any = created, nil
				if hold {
					sent = nil
				}
				if slot%10 == 3 {
					revoked = created.Add(time.Hour)
				}
				bks = append(bks, []any{t.id, id, k, kind, fmt.Sprintf("Visitor %d", made), "+14155550199", fmt.Sprintf("visitor%d@example.com", made), "sms",
					start, end, start, reminder, codeID, hash[:], tokSealed, hold, sent, revoked, "bench:seed", created, created})
			}
		}
		if _, err := e.owner.CopyFrom(ctx, pgx.Identifier{"codes"}, codeCols, pgx.CopyFromRows(codes)); err != nil {
			return fmt.Errorf("copy codes: %w", err)
		}
		if _, err := e.owner.CopyFrom(ctx, pgx.Identifier{"bookings"}, bookingCols, pgx.CopyFromRows(bks)); err != nil {
			return fmt.Errorf("copy bookings: %w", err)
		}
	}
	return nil
}

func digits(n int) (string, error) {
	v, err := rand.Int(rand.Reader, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(n)), nil))
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%0*s", n, v.String()), nil
}

// listSQL is the query tenants/bookings.List sends for limit=50 without a
// filter and with status=active (keep in step with manage.go).
var listSQL = []struct{ name, sql string }{
	{"limit=50", `SELECT bk.*, k.name AS key_name, CASE WHEN cb.id IS NULL THEN bx.id ELSE cb.id END AS box_id, CASE WHEN cb.id IS NULL THEN bx.name ELSE cb.name END AS box_name,
		CASE WHEN cb.id IS NULL THEN bx.address ELSE cb.address END AS box_address, CASE WHEN cb.id IS NULL THEN bx.timezone ELSE cb.timezone END AS box_timezone, bx.location_id
	FROM bookings bk
	JOIN keys k ON k.tenant_id = bk.tenant_id AND k.id = bk.key_id
	JOIN boxes bx ON bx.tenant_id = k.tenant_id AND bx.id = k.home_box_id
	LEFT JOIN boxes cb ON cb.tenant_id = k.tenant_id AND cb.id = k.box_id AND k.state = 'in_bin' WHERE true ORDER BY bk.id DESC LIMIT 50`},
	{"limit=50&status=active", `SELECT bk.*, k.name AS key_name, CASE WHEN cb.id IS NULL THEN bx.id ELSE cb.id END AS box_id, CASE WHEN cb.id IS NULL THEN bx.name ELSE cb.name END AS box_name,
		CASE WHEN cb.id IS NULL THEN bx.address ELSE cb.address END AS box_address, CASE WHEN cb.id IS NULL THEN bx.timezone ELSE cb.timezone END AS box_timezone, bx.location_id
	FROM bookings bk
	JOIN keys k ON k.tenant_id = bk.tenant_id AND k.id = bk.key_id
	JOIN boxes bx ON bx.tenant_id = k.tenant_id AND bx.id = k.home_box_id
	LEFT JOIN boxes cb ON cb.tenant_id = k.tenant_id AND cb.id = k.box_id AND k.state = 'in_bin' WHERE true AND bk.revoked_at IS NULL AND (bk.ends_at IS NULL OR bk.ends_at > now()) AND NOT (bk.hold AND bk.released_at IS NULL) AND bk.starts_at <= now() ORDER BY bk.id DESC LIMIT 50`},
}

// explainList runs the list queries under EXPLAIN ANALYZE as the
// application role, in a transaction scoped to tenantID as the server's.
func (e *env) explainList(ctx context.Context, tenantID uuid.UUID) (string, error) {
	conn, err := pgx.Connect(ctx, e.appURL)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var out strings.Builder
	for _, q := range listSQL {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return "", err
		}
		if _, err := tx.Exec(ctx, "SELECT set_config('app.tenant_id', $1, true)", tenantID.String()); err != nil {
			tx.Rollback(ctx)
			return "", err
		}
		rows, err := tx.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS) "+q.sql)
		if err != nil {
			tx.Rollback(ctx)
			return "", err
		}
		fmt.Fprintf(&out, "-- %s\n", q.name)
		for rows.Next() {
			var line string
			rows.Scan(&line)
			out.WriteString(line + "\n")
		}
		rows.Close()
		tx.Rollback(ctx)
		out.WriteString("\n")
	}
	return out.String(), nil
}
