package bookings

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/keyrelay/keyrelay/migrations/dbtest"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/guard"
	"github.com/keyrelay/keyrelay/tenants/outbox"
	"github.com/keyrelay/keyrelay/tenants/secretbox"
)

var testDB *dbtest.DB

func TestMain(m *testing.M) { dbtest.Main(m, "bookings", &testDB) }

func mustLoad(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// TestReturnReminderAt: the reminder falls on the day access ends in the
// box's zone, whatever day that is in UTC.
func TestReturnReminderAt(t *testing.T) {
	paris, tonga, honolulu := mustLoad(t, "Europe/Paris"), mustLoad(t, "Pacific/Tongatapu"), mustLoad(t, "Pacific/Honolulu")
	at := func(loc *time.Location, y int, m time.Month, d, h, min int) time.Time {
		return time.Date(y, m, d, h, min, 0, 0, loc)
	}
	for _, tc := range []struct {
		name       string
		start, end time.Time
		loc        *time.Location
		want       time.Time
	}{
		{"OKNineOnTheLocalDay", at(paris, 2026, 5, 1, 10, 0), at(paris, 2026, 5, 3, 18, 0), paris, at(paris, 2026, 5, 3, 9, 0)},
		// 00:30 in Paris on 3 May is 22:30 UTC on 2 May: the reminder must
		// be on 3 May in Paris (its first minutes), not on 2 May.
		{"OKEndsAfterMidnightLocal", at(paris, 2026, 5, 1, 10, 0), at(paris, 2026, 5, 3, 0, 30), paris, at(paris, 2026, 5, 3, 0, 0)},
		{"OKEndsEarlyMorningLocal", at(paris, 2026, 5, 1, 10, 0), at(paris, 2026, 5, 3, 7, 0), paris, at(paris, 2026, 5, 3, 6, 0)},
		// UTC+13: 08:00 on 3 May in Tonga is 19:00 UTC on 2 May.
		{"OKUTCPlus13", at(tonga, 2026, 5, 1, 10, 0), at(tonga, 2026, 5, 3, 8, 0), tonga, at(tonga, 2026, 5, 3, 7, 0)},
		{"OKUTCPlus13Afternoon", at(tonga, 2026, 5, 1, 10, 0), at(tonga, 2026, 5, 3, 15, 0), tonga, at(tonga, 2026, 5, 3, 9, 0)},
		// UTC-10: 20:00 on 3 May in Honolulu is 06:00 UTC on 4 May.
		{"OKUTCMinus10", at(honolulu, 2026, 5, 1, 10, 0), at(honolulu, 2026, 5, 3, 20, 0), honolulu, at(honolulu, 2026, 5, 3, 9, 0)},
		{"OKNotBeforeTheStart", at(paris, 2026, 5, 3, 11, 0), at(paris, 2026, 5, 3, 18, 0), paris, at(paris, 2026, 5, 3, 11, 0)},
		// The day DST starts in Paris has 23 hours; 09:00 is still 09:00.
		{"OKDSTDay", at(paris, 2026, 3, 27, 10, 0), at(paris, 2026, 3, 29, 18, 0), paris, at(paris, 2026, 3, 29, 9, 0)},
		// An end at 00:00 on 3 May closes 2 May: the reminder is that day,
		// not at the end itself.
		{"OKEndsAtMidnightLocal", at(paris, 2026, 5, 1, 10, 0), at(paris, 2026, 5, 3, 0, 0), paris, at(paris, 2026, 5, 2, 9, 0)},
		{"OKEndsAtMidnightStartedThatEvening", at(paris, 2026, 5, 2, 20, 0), at(paris, 2026, 5, 3, 0, 0), paris, at(paris, 2026, 5, 2, 20, 0)},
		// Midnight in Tonga is 11:00 UTC the day before.
		{"OKEndsAtMidnightUTCPlus13", at(tonga, 2026, 5, 1, 10, 0), at(tonga, 2026, 5, 3, 0, 0), tonga, at(tonga, 2026, 5, 2, 9, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := returnReminderAt(tc.start, tc.end, tc.loc, 9*time.Hour)
			if !got.Equal(tc.want) {
				t.Fatalf("reminder at %v, want %v", got.In(tc.loc), tc.want)
			}
			// The last day of access: the local day of its last moment.
			last := tc.end.Add(-time.Minute).In(tc.loc)
			if gy, gm, gd := got.In(tc.loc).Date(); gy != last.Year() || gm != last.Month() || gd != last.Day() {
				t.Fatalf("reminder on %v, not on the local day access ends (%v)", got.In(tc.loc), tc.end.In(tc.loc))
			}
			if !got.Before(tc.end) {
				t.Fatalf("reminder at %v, not before the end %v", got, tc.end)
			}
		})
	}
}

func TestCheckChosenCode(t *testing.T) {
	for code, ok := range map[string]bool{
		"7305184926":    true,
		"730518492611":  true,
		"0048291301":    true,
		"482913":        false, // the example: too short for the box bound
		"730518492":     false,
		"7305184926113": false,
		"73051849a6":    false,
		"7777777777":    false,
		"0123456789":    false,
		"8901234567":    false, // a run up, wrapping
		"9876543210":    false,
		" 7305184926":   false,
	} {
		if got := checkChosenCode(code) == ""; got != ok {
			t.Errorf("checkChosenCode(%q) accepted %v, want %v", code, got, ok)
		}
	}
}

func TestRandomDigits(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		c, err := randomDigits(guard.BookingCodeDigits)
		if err != nil {
			t.Fatal(err)
		}
		if len(c) != guard.BookingCodeDigits || strings.Trim(c, "0123456789") != "" {
			t.Fatalf("code %q", c)
		}
		seen[c] = true
	}
	if len(seen) < 199 {
		t.Fatalf("%d distinct codes in 200 draws", len(seen))
	}
}

func TestURLToken(t *testing.T) {
	tenant := uuid.New()
	tok, hash, err := newURLToken(tenant)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := TenantOfURLToken(tok); !ok || got != tenant {
		t.Fatalf("TenantOfURLToken = %v %v", got, ok)
	}
	if !bytes.Equal(hash, URLTokenHash(tok)) {
		t.Fatal("hash differs")
	}
	other, _, _ := newURLToken(tenant)
	if other == tok {
		t.Fatal("two tokens alike")
	}
	for _, bad := range []string{"", "nope", tok[:len(tok)-2]} {
		if _, ok := TenantOfURLToken(bad); ok {
			t.Errorf("TenantOfURLToken(%q) accepted", bad)
		}
	}
}

// env is a service on the test database, as the application role.
type env struct {
	svc   *Service
	scope *tenants.Scope
	box   *secretbox.Box
}

func newEnv(t *testing.T) *env {
	t.Helper()
	db, err := gorm.Open(postgres.Open(testDB.AppURL), &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if sqlDB, err := db.DB(); err == nil {
			sqlDB.Close()
		}
	})
	key := make([]byte, secretbox.KeySize)
	rand.Read(key)
	box, err := secretbox.New(key)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", DB: 5})
	t.Cleanup(func() { rdb.Close() })
	locks, err := guard.New(rdb, "keyrelay-test:bookings:"+uuid.NewString())
	if err != nil {
		t.Fatal(err)
	}
	svc, err := NewService(Deps{Keys: box, Messages: outbox.New(box), Locks: locks}, DefaultConfig("https://keys.example.com"))
	if err != nil {
		t.Fatal(err)
	}
	return &env{svc: svc, scope: tenants.NewScope(db), box: box}
}

// tenantFixture is a tenant with an owner, a location, a box in it and a key.
type tenantFixture struct {
	tenant, location, box, key uuid.UUID
}

func newTenant(t *testing.T, tz string) tenantFixture {
	t.Helper()
	f := tenantFixture{tenant: uuid.New(), location: uuid.New(), box: uuid.New(), key: uuid.New()}
	testDB.Exec(t, "INSERT INTO tenants (tenant_id, name) VALUES ($1, 'Rentals')", f.tenant)
	testDB.Exec(t, "INSERT INTO users (tenant_id, id, name, email, role) VALUES ($1, $2, 'Olive', $3, 'owner')", f.tenant, uuid.New(), "olive-"+uuid.NewString()[:8]+"@example.com")
	testDB.Exec(t, "INSERT INTO locations (tenant_id, id, name) VALUES ($1, $2, 'Airport')", f.tenant, f.location)
	testDB.Exec(t, "INSERT INTO boxes (tenant_id, id, location_id, name, model, timezone, bins) VALUES ($1, $2, $3, 'Main St', 'MS5', $4, 12)", f.tenant, f.box, f.location, tz)
	f.key = addKey(t, f, "Golf 12")
	return f
}

var bins sync.Map

func addKey(t *testing.T, f tenantFixture, name string) uuid.UUID {
	t.Helper()
	id := uuid.New()
	n, _ := bins.LoadOrStore(f.box, new(int))
	bin := n.(*int)
	*bin++
	testDB.Exec(t, "INSERT INTO keys (tenant_id, id, name, fob_serial, home_box_id, home_bin, box_id, bin) VALUES ($1, $2, $3, $4, $5, $6, $5, $6)",
		f.tenant, id, name, "FOB-"+id.String()[:8], f.box, *bin)
	return id
}

// as runs fn in a transaction of f's tenant for a caller of role limited to
// locations, committing when fn returns nil.
func (e *env) as(t *testing.T, f tenantFixture, role tenants.Role, fn func(ctx context.Context) error, locations ...uuid.UUID) error {
	t.Helper()
	ctx := tenants.WithPrincipal(context.Background(), tenants.Principal{TenantID: f.tenant, UserID: uuid.New(), Role: role, Locations: locations})
	return e.scope.Do(ctx, f.tenant, fn)
}

func oneTime(key uuid.UUID, start, end time.Time) NewBookingInput {
	s, e := start.Format(time.RFC3339), end.Format(time.RFC3339)
	phone := "+14155550123"
	return NewBookingInput{KeyID: key.String(), Kind: OneTime, Visitor: &Visitor{Name: "Val", Phone: &phone}, StartsAt: &s, EndsAt: &e, NotifyVia: outbox.SMS}
}

func (e *env) create(t *testing.T, f tenantFixture, in NewBookingInput) (View, error) {
	t.Helper()
	var v View
	err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
		var err error
		v, err = e.svc.Create(ctx, in)
		return err
	})
	return v, err
}

// TestConcurrentOverlappingCreates: of many creates racing for one window,
// exactly one succeeds; each other one is refused naming the winner.
func TestConcurrentOverlappingCreates(t *testing.T) {
	e := newEnv(t)
	f := newTenant(t, "Europe/Paris")
	start := time.Now().Add(24 * time.Hour).Truncate(time.Second)
	const n = 8
	var wg sync.WaitGroup
	views := make([]View, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each window overlaps every other one.
			views[i], errs[i] = e.create(t, f, oneTime(f.key, start.Add(time.Duration(i)*time.Minute), start.Add(2*time.Hour)))
		}()
	}
	wg.Wait()
	var winner uuid.UUID
	for i, err := range errs {
		if err == nil {
			if winner != uuid.Nil {
				t.Fatalf("two overlapping bookings were created: %s and %s", winner, views[i].ID)
			}
			winner = views[i].ID
		}
	}
	if winner == uuid.Nil {
		t.Fatalf("no create succeeded: %v", errs)
	}
	for _, err := range errs {
		if err == nil {
			continue
		}
		var oe *overlapError
		if !errors.As(err, &oe) || tenants.ErrorCode(err) != tenants.EConflict || oe.ConflictingBookingID() != winner {
			t.Errorf("a losing create got %v, want a conflict naming %s", err, winner)
		}
	}
	if n := testDB.Exec(t, "SELECT 1 FROM bookings WHERE tenant_id = $1", f.tenant); n != 1 {
		t.Fatalf("%d bookings stored, want 1", n)
	}
}

// TestOverlapRaceNamesTheWinner: a create that passed the overlap query
// while another, overlapping one was not yet committed is stopped by the
// exclusion constraint, and still names the booking in the way.
func TestOverlapRaceNamesTheWinner(t *testing.T) {
	e := newEnv(t)
	f := newTenant(t, "UTC")
	start := time.Now().Add(time.Hour).Truncate(time.Second)
	created, release := make(chan View, 1), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
			v, err := e.svc.Create(ctx, oneTime(f.key, start, start.Add(time.Hour)))
			if err != nil {
				return err
			}
			created <- v
			<-release // hold the transaction open
			return nil
		})
	}()
	var winner View
	select {
	case winner = <-created:
	case err := <-first:
		t.Fatal(err)
	}
	second := make(chan error, 1)
	go func() {
		_, err := e.create(t, f, oneTime(f.key, start.Add(30*time.Minute), start.Add(2*time.Hour)))
		second <- err
	}()
	// The second insert waits on the first's row: the query before it saw
	// nothing uncommitted.
	waitFor(t, func() bool {
		return testDB.Exec(t, "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'") > 0
	})
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	err := <-second
	var oe *overlapError
	if !errors.As(err, &oe) || oe.ConflictingBookingID() != winner.ID {
		t.Fatalf("the losing create got %v, want a conflict naming %s", err, winner.ID)
	}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatal("timed out")
}

// TestOverlapRules: only live one-time bookings block, and only from now on.
func TestOverlapRules(t *testing.T) {
	e := newEnv(t)
	f := newTenant(t, "UTC")
	now := time.Now().Truncate(time.Second)
	t.Run("OKEndedBookingDoesNotBlock", func(t *testing.T) {
		key := addKey(t, f, "Past")
		// Booked until an hour ago (written as the owner: the API refuses a
		// window that has ended).
		codeID := uuid.New()
		testDB.Exec(t, "INSERT INTO codes (tenant_id, id, code_hash, code_sealed) VALUES ($1, $2, $3, 'x')", f.tenant, codeID, bytes.Repeat([]byte{7}, 32))
		testDB.Exec(t, `INSERT INTO bookings (tenant_id, id, key_id, kind, visitor_name, visitor_phone, notify_via, starts_at, ends_at, live_from, return_reminder, code_id, url_token_hash, url_token_sealed, created_by)
			VALUES ($1, $2, $3, 'one_time', 'Old', '+14155550100', 'sms', $4, $5, $4, false, $6, $7, 'x', 'test')`,
			f.tenant, uuid.New(), key, now.Add(-5*time.Hour), now.Add(-time.Hour), codeID, bytes.Repeat([]byte{8}, 32))
		if _, err := e.create(t, f, oneTime(key, now.Add(-3*time.Hour), now.Add(time.Hour))); err != nil {
			t.Fatalf("a window overlapping only an ended booking was refused: %v", err)
		}
	})
	t.Run("OKRevokedBookingDoesNotBlock", func(t *testing.T) {
		key := addKey(t, f, "Revoked")
		v, err := e.create(t, f, oneTime(key, now.Add(time.Hour), now.Add(3*time.Hour)))
		if err != nil {
			t.Fatal(err)
		}
		if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error { _, err := e.svc.Revoke(ctx, v.ID); return err }); err != nil {
			t.Fatal(err)
		}
		if _, err := e.create(t, f, oneTime(key, now.Add(time.Hour), now.Add(3*time.Hour))); err != nil {
			t.Fatalf("a window overlapping a revoked booking was refused: %v", err)
		}
	})
	t.Run("OKAdjacentWindows", func(t *testing.T) {
		key := addKey(t, f, "Adjacent")
		if _, err := e.create(t, f, oneTime(key, now.Add(time.Hour), now.Add(2*time.Hour))); err != nil {
			t.Fatal(err)
		}
		if _, err := e.create(t, f, oneTime(key, now.Add(2*time.Hour), now.Add(3*time.Hour))); err != nil {
			t.Fatalf("a window starting when the other ends was refused: %v", err)
		}
	})
	t.Run("ErrPatchIntoAnother", func(t *testing.T) {
		key := addKey(t, f, "Patch")
		a, err := e.create(t, f, oneTime(key, now.Add(time.Hour), now.Add(2*time.Hour)))
		if err != nil {
			t.Fatal(err)
		}
		b, err := e.create(t, f, oneTime(key, now.Add(3*time.Hour), now.Add(4*time.Hour)))
		if err != nil {
			t.Fatal(err)
		}
		end := now.Add(3*time.Hour + 30*time.Minute).Format(time.RFC3339)
		err = e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
			_, err := e.svc.Update(ctx, a.ID, BookingPatch{EndsAt: &end})
			return err
		})
		var oe *overlapError
		if !errors.As(err, &oe) || oe.ConflictingBookingID() != b.ID {
			t.Fatalf("moving into another booking: %v, want a conflict naming %s", err, b.ID)
		}
	})
}

// TestOverlapCheckIsOneIndexStep: the overlap check reads one booking of
// the key, not all of them, in the generic plan PostgreSQL uses for a
// prepared statement after its fifth run (the driver prepares every
// statement). Under row-level security a comparison that is not
// leakproof cannot be an index condition, and in a generic plan nothing
// built from parameters is folded first.
func TestOverlapCheckIsOneIndexStep(t *testing.T) {
	e := newEnv(t)
	f := newTenant(t, "UTC")
	key := addKey(t, f, "Busy")
	now := time.Now().Truncate(time.Second)
	const past = 400
	testDB.Exec(t, `WITH c AS (
			INSERT INTO codes (tenant_id, id, code_hash, code_sealed)
			SELECT $1, gen_random_uuid(), sha256(('overlap-' || i)::bytea), 'x' FROM generate_series(1, $4::int) i
			RETURNING id)
		INSERT INTO bookings (tenant_id, id, key_id, kind, visitor_name, visitor_phone, notify_via, starts_at, ends_at, live_from, return_reminder, code_id, url_token_hash, url_token_sealed, created_by)
		SELECT $1, gen_random_uuid(), $2, 'one_time', 'Old', '+14155550100', 'sms', s, s + interval '1 hour', s, false, c.id, sha256(c.id::text::bytea), 'x', 'test'
		FROM (SELECT id, $3::timestamptz - row_number() OVER () * interval '3 hours' AS s FROM c) c`,
		f.tenant, key, now, past)
	testDB.Exec(t, "ANALYZE bookings")

	from, to := now.Add(time.Hour), now.Add(2*time.Hour)
	var plan string
	err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return err
		}
		if err := tx.Exec("SET LOCAL plan_cache_mode = force_generic_plan").Error; err != nil {
			return err
		}
		if err := tx.Exec("PREPARE overlap_generic AS " + overlapSQL).Error; err != nil {
			return err
		}
		defer tx.Exec("DEALLOCATE overlap_generic")
		return tenants.QueryRow(ctx, fmt.Sprintf("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE overlap_generic('%s', '%s', '%s', '%s')",
			key, uuid.New(), to.Format(time.RFC3339), from.Format(time.RFC3339))).Scan(&plan)
	})
	if err != nil {
		t.Fatal(err)
	}
	var nodes []map[string]any
	var walk func(n map[string]any)
	walk = func(n map[string]any) {
		nodes = append(nodes, n)
		for _, c := range asSlice(n["Plans"]) {
			walk(c.(map[string]any))
		}
	}
	var top []map[string]any
	if err := json.Unmarshal([]byte(plan), &top); err != nil || len(top) != 1 {
		t.Fatalf("plan %q: %v", plan, err)
	}
	walk(top[0]["Plan"].(map[string]any))
	bounded := false
	for _, n := range nodes {
		if cond, _ := n["Index Cond"].(string); strings.Contains(cond, "live_from <") {
			bounded = true
		}
		if removed, _ := n["Rows Removed by Filter"].(float64); removed > 1 {
			t.Errorf("%s filtered %v rows", n["Node Type"], removed)
		}
	}
	if !bounded {
		t.Errorf("the window's end is no index condition: %s", plan)
	}

	// And it still answers: a window over the latest past booking names it.
	err = e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
		var latest uuid.UUID
		if err := tenants.QueryRow(ctx, "SELECT id FROM bookings WHERE key_id = $1 ORDER BY live_from DESC LIMIT 1", key).Scan(&latest); err != nil {
			return err
		}
		for range 8 { // past the fifth run: the generic plan, if PostgreSQL takes it
			end := now.Add(-2 * time.Hour)
			id, err := e.svc.overlapping(ctx, Booking{ID: uuid.New(), Kind: OneTime, KeyID: key, LiveFrom: now.Add(-4 * time.Hour), EndsAt: &end})
			if err != nil {
				return err
			}
			if id != latest {
				t.Fatalf("overlapping = %s, want %s", id, latest)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func asSlice(v any) []any { s, _ := v.([]any); return s }

// TestCodesAtRest: a dump of the tables holds no code and no URL token;
// what is stored opens to what the API showed.
func TestCodesAtRest(t *testing.T) {
	e := newEnv(t)
	f := newTenant(t, "UTC")
	now := time.Now()
	v, err := e.create(t, f, oneTime(f.key, now.Add(time.Hour), now.Add(2*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Code) != guard.BookingCodeDigits {
		t.Fatalf("code %q", v.Code)
	}
	token := v.URL[strings.LastIndex(v.URL, "/")+1:]
	for _, table := range []string{"codes", "bookings", "outbox", "audit_events"} {
		// As the owner, past row-level security: what a dump holds. Bytea
		// columns print as hex, so the hex of the code is looked for too.
		dump := ownerDump(t, table)
		if dump == "" {
			t.Fatalf("%s: nothing stored", table)
		}
		for _, secret := range []string{v.Code, hex.EncodeToString([]byte(v.Code)), token, hex.EncodeToString([]byte(token))} {
			if strings.Contains(dump, secret) {
				t.Fatalf("%s holds the code or the URL token in clear", table)
			}
		}
	}
	err = e.scope.Do(context.Background(), f.tenant, func(ctx context.Context) error {
		tx, _ := tenants.Tx(ctx)
		var hashes [][]byte
		if err := tx.Raw("SELECT code_hash FROM codes WHERE freed_at IS NULL").Scan(&hashes).Error; err != nil {
			return err
		}
		if len(hashes) != 1 || !bytes.Equal(hashes[0], CodeHash(e.box, f.tenant, v.Code)) {
			return fmt.Errorf("stored hash does not match the code")
		}
		var n int64
		if err := tx.Raw("SELECT count(*) FROM bookings WHERE url_token_hash = ?", URLTokenHash(token)).Scan(&n).Error; err != nil {
			return err
		}
		if n != 1 {
			return fmt.Errorf("the URL token's hash finds %d bookings", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestAliasCodes: a chosen code is unique among live codes; an ended
// booking's code is not live; one live booking per alias.
func TestAliasCodes(t *testing.T) {
	e := newEnv(t)
	f := newTenant(t, "UTC")
	now := time.Now()
	email := "val@example.com"
	alias := func(code string) (AliasView, error) {
		var v AliasView
		err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
			var err error
			v, err = e.svc.CreateAlias(ctx, NewAliasInput{Code: &code, Visitor: &Visitor{Name: "Val", Email: &email}, NotifyVia: outbox.Email})
			return err
		})
		return v, err
	}
	a, err := alias("7305184926")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("ErrAliasLive", func(t *testing.T) {
		if _, err := alias("7305184926"); tenants.ErrorCode(err) != tenants.EConflict {
			t.Fatalf("a live alias code again: %v, want a conflict", err)
		}
	})
	t.Run("ErrBookingCodeLive", func(t *testing.T) {
		v, err := e.create(t, f, oneTime(addKey(t, f, "Live"), now.Add(time.Hour), now.Add(2*time.Hour)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alias(v.Code); tenants.ErrorCode(err) != tenants.EConflict {
			t.Fatalf("a live booking's code as an alias: %v, want a conflict", err)
		}
	})
	t.Run("OKRevokedBookingCodeFreed", func(t *testing.T) {
		v, err := e.create(t, f, oneTime(addKey(t, f, "Revoked"), now.Add(time.Hour), now.Add(2*time.Hour)))
		if err != nil {
			t.Fatal(err)
		}
		if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error { _, err := e.svc.Revoke(ctx, v.ID); return err }); err != nil {
			t.Fatal(err)
		}
		if _, err := alias(v.Code); err != nil {
			t.Fatalf("the code of a revoked booking is not live, yet: %v", err)
		}
	})
	t.Run("LinkOnce", func(t *testing.T) {
		in := oneTime(addKey(t, f, "Room 1"), now.Add(time.Hour), now.Add(2*time.Hour))
		id := a.ID.String()
		in.AliasCodeID = &id
		b, err := e.create(t, f, in)
		if err != nil {
			t.Fatal(err)
		}
		if b.Code != a.Code || b.AliasCodeID == nil || *b.AliasCodeID != a.ID {
			t.Fatalf("booking code %q alias %v, want the alias's %q", b.Code, b.AliasCodeID, a.Code)
		}
		in2 := oneTime(addKey(t, f, "Room 2"), now.Add(time.Hour), now.Add(2*time.Hour))
		in2.AliasCodeID = &id
		if _, err := e.create(t, f, in2); tenants.ErrorCode(err) != tenants.EConflict {
			t.Fatalf("linking the alias twice: %v, want a conflict", err)
		}
		err = e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error { return e.svc.RetireAlias(ctx, a.ID) })
		if tenants.ErrorCode(err) != tenants.EConflict {
			t.Fatalf("retiring a linked alias: %v, want a conflict", err)
		}
		if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error { _, err := e.svc.Revoke(ctx, b.ID); return err }); err != nil {
			t.Fatal(err)
		}
		if _, err := e.create(t, f, in2); err != nil {
			t.Fatalf("the alias is free once its booking is revoked, yet: %v", err)
		}
	})
}

// TestAliasLinkRace: a create waiting for another create that is linking
// the same alias finds the alias taken once the first commits.
func TestAliasLinkRace(t *testing.T) {
	e := newEnv(t)
	f := newTenant(t, "UTC")
	start := time.Now().Add(time.Hour)
	var alias AliasView
	if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
		var err error
		alias, err = e.svc.CreateAlias(ctx, NewAliasInput{Visitor: &Visitor{Name: "Hana", Email: ptr("hana@example.com")}, NotifyVia: outbox.Email})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	withAlias := func(key uuid.UUID) NewBookingInput {
		in := oneTime(key, start, start.Add(time.Hour))
		in.AliasCodeID = ptr(alias.ID.String())
		return in
	}
	linked, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
			if _, err := e.svc.Create(ctx, withAlias(addKey(t, f, "Room 1"))); err != nil {
				return err
			}
			close(linked)
			<-release
			return nil
		})
	}()
	select {
	case <-linked:
	case err := <-first:
		t.Fatal(err)
	}
	second := make(chan error, 1)
	room2 := addKey(t, f, "Room 2")
	go func() {
		_, err := e.create(t, f, withAlias(room2))
		second <- err
	}()
	waitFor(t, func() bool {
		return testDB.Exec(t, "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'") > 0
	})
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; tenants.ErrorCode(err) != tenants.EConflict {
		t.Fatalf("the second link got %v, want a conflict", err)
	}
	if n := testDB.Exec(t, "SELECT 1 FROM bookings WHERE tenant_id = $1 AND alias_code_id = $2", f.tenant, alias.ID); n != 1 {
		t.Fatalf("%d bookings took the alias, want 1", n)
	}
}

// TestLiveAccessCount counts what would stop a key's deletion.
func TestLiveAccessCount(t *testing.T) {
	e := newEnv(t)
	f := newTenant(t, "UTC")
	now := time.Now()
	count := func() int {
		var n int
		if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
			var err error
			n, err = e.svc.LiveAccessCount(ctx, f.key)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 0 {
		t.Fatalf("%d live accesses on a new key", n)
	}
	v, err := e.create(t, f, oneTime(f.key, now.Add(time.Hour), now.Add(2*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	start := now.Format(time.RFC3339)
	ongoing := NewBookingInput{KeyID: f.key.String(), Kind: Ongoing, Visitor: &Visitor{Name: "Ona", Email: ptr("ona@example.com")}, StartsAt: &start, NotifyVia: outbox.Email}
	if _, err := e.create(t, f, ongoing); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Fatalf("%d live accesses, want 2", n)
	}
	if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error { _, err := e.svc.Revoke(ctx, v.ID); return err }); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("%d live accesses after a revocation, want 1", n)
	}
}

func ptr[T any](v T) *T { return &v }

// ownerDump prints every row of table, as the owner sees them.
func ownerDump(t *testing.T, table string) string {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), testDB.OwnerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var out string
	if err := conn.QueryRow(context.Background(), "SELECT coalesce(string_agg(t::text, '|'), '') FROM "+pgx.Identifier{table}.Sanitize()+" t").Scan(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// reminder is a return reminder of a booking as stored.
type reminder struct {
	ID        uuid.UUID
	Status    string
	NotBefore *time.Time
	Data      map[string]string
}

// returnReminders lists booking id's return reminders, oldest first.
func (e *env) returnReminders(t *testing.T, f tenantFixture, id uuid.UUID) []reminder {
	t.Helper()
	var out []reminder
	err := e.scope.Do(context.Background(), f.tenant, func(ctx context.Context) error {
		ids, err := remindersOf(ctx, kindReturn, id)
		if err != nil {
			return err
		}
		for _, mid := range ids {
			row, err := outbox.New(e.box).Get(ctx, mid)
			if err != nil {
				return err
			}
			out = append(out, reminder{ID: row.ID, Status: string(row.Status), NotBefore: row.NotBefore, Data: row.Data})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waiting is the one queued return reminder of booking id.
func (e *env) waiting(t *testing.T, f tenantFixture, id uuid.UUID) reminder {
	t.Helper()
	var q []reminder
	for _, r := range e.returnReminders(t, f, id) {
		if r.Status == string(outbox.Queued) {
			q = append(q, r)
		}
	}
	if len(q) != 1 || q[0].NotBefore == nil {
		t.Fatalf("queued return reminders %+v, want one, scheduled", q)
	}
	return q[0]
}

// TestReturnReminderBeforeEnd: quiet hours (22:00–08:00) never hold the
// return reminder until the access has ended, on creation or when the end
// moves; they still hold it when it can wait and arrive before the end.
func TestReturnReminderBeforeEnd(t *testing.T) {
	e := newEnv(t)
	f := newTenant(t, "Europe/Paris")
	testDB.Exec(t, "UPDATE tenants SET quiet_hours_start = '22:00', quiet_hours_end = '08:00' WHERE tenant_id = $1", f.tenant)
	paris := mustLoad(t, "Europe/Paris")
	in3 := time.Now().In(paris).AddDate(0, 0, 3)
	day := func(d, h, min int) time.Time {
		return time.Date(in3.Year(), in3.Month(), in3.Day()+d, h, min, 0, 0, paris)
	}
	start := time.Now().Add(time.Hour).Truncate(time.Second)
	for _, tc := range []struct {
		name     string
		end      time.Time
		want     time.Time
		endsText string
	}{
		// 06:00 would wait until 08:00, after the end: it goes at 06:00.
		{"EndInQuietHours", day(0, 7, 0), day(0, 6, 0), "07:00 (Europe/Paris)"},
		// 07:30 waits until 08:00, still before the end.
		{"OKQuietHoursEndBeforeTheEnd", day(0, 8, 30), day(0, 8, 0), "08:30 (Europe/Paris)"},
		// An end at 00:00 closes the day before: 09:00 on that day, outside
		// quiet hours, not at midnight.
		{"OKEndAtMidnight", day(1, 0, 0), day(0, 9, 0), "24:00 (Europe/Paris)"},
		{"OKDaytime", day(0, 18, 0), day(0, 9, 0), "18:00 (Europe/Paris)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := addKey(t, f, tc.name)
			v, err := e.create(t, f, oneTime(key, start, tc.end))
			if err != nil {
				t.Fatal(err)
			}
			r := e.waiting(t, f, v.ID)
			if !r.NotBefore.Equal(tc.want) || !r.NotBefore.Before(tc.end) {
				t.Fatalf("reminder at %v, want %v, before the end %v", r.NotBefore.In(paris), tc.want, tc.end)
			}
			if r.Data["ends_at"] != tc.endsText {
				t.Errorf("the reminder says access ends at %q, want %q", r.Data["ends_at"], tc.endsText)
			}
			// Moved a day later by PATCH: the same rule, one day on.
			newEnd := tc.end.AddDate(0, 0, 1)
			end := newEnd.Format(time.RFC3339)
			if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
				_, err := e.svc.Update(ctx, v.ID, BookingPatch{EndsAt: &end})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			moved := e.waiting(t, f, v.ID)
			if want := tc.want.AddDate(0, 0, 1); moved.ID != r.ID || !moved.NotBefore.Equal(want) || !moved.NotBefore.Before(newEnd) {
				t.Fatalf("after the end moved to %v the reminder is %v at %v, want %v at %v", newEnd, moved.ID, moved.NotBefore.In(paris), r.ID, want)
			}
		})
	}
}

// TestBookingNamesTheBoxHoldingTheKey: a key dropped off at another box is
// picked up there (its code opens only the box holding it), so the
// instructions, the booking, "Copy details", the visitor's page and the
// reminder name that box and show the window in its zone; while the key is
// out they name its home box. Who sees the booking still follows the home
// box's location.
func TestBookingNamesTheBoxHoldingTheKey(t *testing.T) {
	e := newEnv(t)
	f := newTenant(t, "Europe/Paris")
	otherLocation, other := uuid.New(), uuid.New()
	testDB.Exec(t, "INSERT INTO locations (tenant_id, id, name) VALUES ($1, $2, 'Harbour')", f.tenant, otherLocation)
	testDB.Exec(t, "INSERT INTO boxes (tenant_id, id, location_id, name, address, model, timezone, bins) VALUES ($1, $2, $3, 'Harbour kiosk', 'Pier 4', 'MS5', 'America/New_York', 12)",
		f.tenant, other, otherLocation)
	key := addKey(t, f, "Roaming")
	testDB.Exec(t, "UPDATE keys SET box_id = $2, bin = 7 WHERE id = $1", key, other)
	ny, paris := mustLoad(t, "America/New_York"), mustLoad(t, "Europe/Paris")
	in2 := time.Now().In(ny).AddDate(0, 0, 2)
	start := time.Date(in2.Year(), in2.Month(), in2.Day(), 10, 0, 0, 0, ny)
	end := time.Date(in2.Year(), in2.Month(), in2.Day()+1, 18, 0, 0, 0, ny)

	v, err := e.create(t, f, oneTime(key, start, end))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("OKView", func(t *testing.T) {
		if v.Box.ID != other || v.Box.Name != "Harbour kiosk" || v.Box.Address != "Pier 4" || v.Box.Timezone != "America/New_York" {
			t.Fatalf("the booking names box %+v, want the harbour kiosk holding the key", v.Box)
		}
	})
	var details string
	var byURL View
	var instructions map[string]string
	err = e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
		var err error
		if details, err = e.svc.Details(ctx, v.ID); err != nil {
			return err
		}
		rows, err := outbox.New(e.box).List(ctx, 10)
		if err != nil {
			return err
		}
		for _, r := range rows {
			if r.Kind == kindInstructions {
				instructions = r.Data
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tok := v.URL[strings.LastIndex(v.URL, "/")+1:]
	if err := e.scope.Do(context.Background(), f.tenant, func(ctx context.Context) error {
		var err error
		byURL, err = e.svc.ByURLToken(ctx, tok)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Run("OKInstructions", func(t *testing.T) {
		if instructions["box"] != "Harbour kiosk" || instructions["address"] != "Pier 4" || instructions["starts_at"] != localTime(start, ny) {
			t.Fatalf("instructions %v, want the harbour kiosk and the start in New York time (%s)", instructions, localTime(start, ny))
		}
	})
	t.Run("OKDetails", func(t *testing.T) {
		want := "Box: Harbour kiosk, Pier 4\nAccess: " + start.Format("Mon 2 Jan 2006 15:04") + " to " + end.Format("Mon 2 Jan 2006 15:04") + " (America/New_York)"
		if !strings.Contains(details, want) {
			t.Fatalf("details:\n%s\nwant them to hold:\n%s", details, want)
		}
	})
	t.Run("OKVisitorPage", func(t *testing.T) {
		if byURL.Box.ID != other || byURL.Box.Timezone != "America/New_York" {
			t.Fatalf("the visitor's page names box %+v", byURL.Box)
		}
	})
	t.Run("OKReminderInTheBoxZone", func(t *testing.T) {
		r := e.waiting(t, f, v.ID)
		if want := time.Date(in2.Year(), in2.Month(), in2.Day()+1, 9, 0, 0, 0, ny); !r.NotBefore.Equal(want) || r.Data["box"] != "Harbour kiosk" || r.Data["ends_at"] != "18:00 (America/New_York)" {
			t.Fatalf("reminder at %v naming %q, ends at %q; want %v naming the harbour kiosk", r.NotBefore.In(ny), r.Data["box"], r.Data["ends_at"], want)
		}
	})
	t.Run("OKHomeLocationDecidesWhoSees", func(t *testing.T) {
		err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error { _, err := e.svc.Get(ctx, v.ID); return err }, f.location)
		if err != nil {
			t.Fatalf("staff of the key's home location: %v", err)
		}
		err = e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error { _, err := e.svc.Get(ctx, v.ID); return err }, otherLocation)
		if tenants.ErrorCode(err) != tenants.ENotFound {
			t.Fatalf("staff of the other box's location only: %v, want not found", err)
		}
	})
	t.Run("OKOutNamesTheHomeBox", func(t *testing.T) {
		testDB.Exec(t, "UPDATE keys SET state = 'out', box_id = NULL, bin = NULL, out_access_id = $2, out_since = now() WHERE id = $1", key, v.ID)
		var got View
		if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
			var err error
			got, err = e.svc.Get(ctx, v.ID)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if got.Box.ID != f.box || got.Box.Timezone != paris.String() {
			t.Fatalf("with the key out the booking names %+v, want its home box", got.Box)
		}
	})
}

// TestReturnReminderFollowsTheKey: a return calls the waiting reminder
// off; taking the key again under the same access queues a new one; a
// reminder that went out stays the only one; a booking that wants no
// reminder gets none back.
func TestReturnReminderFollowsTheKey(t *testing.T) {
	e := newEnv(t)
	f := newTenant(t, "Europe/Paris")
	now := time.Now().Truncate(time.Second)
	returned := func(id uuid.UUID) {
		t.Helper()
		if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error { return e.svc.KeysReturned(ctx, []uuid.UUID{id}) }); err != nil {
			t.Fatal(err)
		}
	}
	taken := func(id uuid.UUID) {
		t.Helper()
		if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error { return e.svc.KeysTaken(ctx, []uuid.UUID{id}) }); err != nil {
			t.Fatal(err)
		}
	}
	statuses := func(id uuid.UUID) string {
		t.Helper()
		var out []string
		for _, r := range e.returnReminders(t, f, id) {
			out = append(out, r.Status)
		}
		return strings.Join(out, ",")
	}
	book := func(name string) View {
		t.Helper()
		v, err := e.create(t, f, oneTime(addKey(t, f, name), now.Add(-time.Hour), now.Add(48*time.Hour)))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	t.Run("OKReturnCancelsTakeAgainQueues", func(t *testing.T) {
		v := book("Twice")
		first := e.waiting(t, f, v.ID)
		taken(v.ID) // the first pickup: the reminder stays as it is
		if got := statuses(v.ID); got != "queued" {
			t.Fatalf("after the first pickup: %s, want queued", got)
		}
		returned(v.ID)
		if got := statuses(v.ID); got != "canceled" {
			t.Fatalf("after the return: %s, want canceled", got)
		}
		taken(v.ID)
		again := e.waiting(t, f, v.ID)
		if got := statuses(v.ID); got != "canceled,queued" || !again.NotBefore.Equal(*first.NotBefore) {
			t.Fatalf("after taking the key again: %s at %v, want canceled,queued at %v", got, again.NotBefore, first.NotBefore)
		}
		taken(v.ID) // a repeated report adds nothing
		if got := statuses(v.ID); got != "canceled,queued" {
			t.Fatalf("after a repeated pickup report: %s", got)
		}
	})
	t.Run("OKSentStaysTheOnlyOne", func(t *testing.T) {
		v := book("Sent")
		testDB.Exec(t, "UPDATE outbox SET status = 'sent', sent_at = now() WHERE id = $1", e.waiting(t, f, v.ID).ID)
		returned(v.ID)
		taken(v.ID)
		if got := statuses(v.ID); got != "sent" {
			t.Fatalf("a reminder that went out, then a return and a pickup: %s, want sent", got)
		}
	})
	t.Run("OKRevokedGetsNoneBack", func(t *testing.T) {
		v := book("Revoked")
		returned(v.ID)
		if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error { _, err := e.svc.Revoke(ctx, v.ID); return err }); err != nil {
			t.Fatal(err)
		}
		taken(v.ID)
		if got := statuses(v.ID); got != "canceled" {
			t.Fatalf("revoked: %s, want canceled", got)
		}
	})
	t.Run("OKReminderOffGetsNoneBack", func(t *testing.T) {
		v := book("Off")
		off := false
		if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
			_, err := e.svc.Update(ctx, v.ID, BookingPatch{ReturnReminder: &off})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		returned(v.ID)
		taken(v.ID)
		if got := statuses(v.ID); got != "canceled" {
			t.Fatalf("reminder off: %s, want canceled", got)
		}
	})
}

// at sets the service's clock to now.
func (e *env) at(now time.Time) { e.svc.now = func() time.Time { return now } }

// TestListStatusFilters: each status filter returns exactly the bookings
// whose StatusAt is that status, boundaries included (a window starting or
// ending at now), so the SQL and the Go rule agree.
func TestListStatusFilters(t *testing.T) {
	e := newEnv(t)
	f := newTenant(t, "UTC")
	now := time.Now().Truncate(time.Second)
	h := time.Hour
	type booking struct {
		name       string
		createdAt  time.Time // the service's clock when created (and revoked)
		start, end time.Duration
		ongoing    bool
		hold       bool
		revoke     bool
		want       Status
	}
	cases := []booking{
		{name: "Upcoming", createdAt: now, start: h, end: 2 * h, want: Upcoming},
		{name: "Active", createdAt: now, start: -h, end: h, want: Active},
		{name: "StartsNow", createdAt: now, start: 0, end: h, want: Active},
		{name: "Ended", createdAt: now.Add(-3 * h), start: -2 * h, end: -h, want: Ended},
		{name: "EndsNow", createdAt: now.Add(-3 * h), start: -2 * h, end: 0, want: Ended},
		{name: "Revoked", createdAt: now, start: h, end: 2 * h, revoke: true, want: Revoked},
		{name: "RevokedAndEnded", createdAt: now.Add(-3 * h), start: -2 * h, end: -h, revoke: true, want: Revoked},
		{name: "Held", createdAt: now, start: h, end: 2 * h, hold: true, want: Held},
		{name: "HeldStarted", createdAt: now, start: -h, end: h, hold: true, want: Held},
		{name: "HeldEnded", createdAt: now.Add(-3 * h), start: -2 * h, end: -h, hold: true, want: Ended},
		{name: "OngoingActive", createdAt: now, start: -h, ongoing: true, want: Active},
		{name: "OngoingUpcoming", createdAt: now, start: h, ongoing: true, want: Upcoming},
		{name: "OngoingRevoked", createdAt: now, start: -h, ongoing: true, revoke: true, want: Revoked},
	}
	want := map[uuid.UUID]booking{}
	for _, c := range cases {
		e.at(c.createdAt)
		in := oneTime(addKey(t, f, c.name), now.Add(c.start), now.Add(c.end))
		if c.ongoing {
			in.Kind, in.EndsAt = Ongoing, nil
		}
		in.Hold = &c.hold
		v, err := e.create(t, f, in)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if c.revoke {
			if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error { _, err := e.svc.Revoke(ctx, v.ID); return err }); err != nil {
				t.Fatal(err)
			}
		}
		want[v.ID] = c
	}
	e.at(now)
	for _, st := range []Status{Upcoming, Active, Ended, Revoked, Held} {
		t.Run(string(st), func(t *testing.T) {
			var got []View
			if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
				var err error
				got, err = e.svc.List(ctx, Filter{Status: st, Limit: 100})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			seen := map[uuid.UUID]bool{}
			for _, v := range got {
				seen[v.ID] = true
				if v.Status != st {
					t.Errorf("%s is listed under %s but its status is %s", want[v.ID].name, st, v.Status)
				}
			}
			for id, c := range want {
				if (c.want == st) != seen[id] {
					t.Errorf("%s (status %s): listed under %s = %v", c.name, c.want, st, seen[id])
				}
			}
		})
	}
	t.Run("ErrUnknownStatus", func(t *testing.T) {
		err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
			_, err := e.svc.List(ctx, Filter{Status: "lost", Limit: 10})
			return err
		})
		if tenants.ErrorCode(err) != tenants.EInvalid {
			t.Fatalf("status=lost: %v, want invalid", err)
		}
	})
}

// TestAliasFreedWhenItsBookingEnds: an alias linked to a booking can link
// a new booking once that one has ended, with no revocation; not before.
func TestAliasFreedWhenItsBookingEnds(t *testing.T) {
	e := newEnv(t)
	f := newTenant(t, "UTC")
	now := time.Now().Truncate(time.Second)
	e.at(now)
	var alias AliasView
	if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
		var err error
		alias, err = e.svc.CreateAlias(ctx, NewAliasInput{Visitor: &Visitor{Name: "Hana", Email: ptr("hana@example.com")}, NotifyVia: outbox.Email})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	withAlias := func(key uuid.UUID, start, end time.Time) NewBookingInput {
		in := oneTime(key, start, end)
		in.AliasCodeID = ptr(alias.ID.String())
		return in
	}
	first, err := e.create(t, f, withAlias(addKey(t, f, "Room 1"), now.Add(time.Hour), now.Add(2*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	later := withAlias(addKey(t, f, "Room 2"), now.Add(3*time.Hour), now.Add(4*time.Hour))
	t.Run("ErrWhileLive", func(t *testing.T) {
		e.at(now.Add(2*time.Hour - time.Second))
		if _, err := e.create(t, f, later); tenants.ErrorCode(err) != tenants.EConflict {
			t.Fatalf("linking the alias of a live booking: %v, want a conflict", err)
		}
	})
	t.Run("OKOnceEnded", func(t *testing.T) {
		e.at(now.Add(2 * time.Hour)) // the first booking's end
		var a AliasView
		if err := e.as(t, f, tenants.RoleStaff, func(ctx context.Context) error {
			var err error
			a, err = e.svc.GetAlias(ctx, alias.ID)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if a.Status != AliasFree || a.BookingID != nil {
			t.Fatalf("the alias after its booking ended: %s linked to %v, want free", a.Status, a.BookingID)
		}
		second, err := e.create(t, f, later)
		if err != nil {
			t.Fatalf("linking the alias after booking %s ended: %v", first.ID, err)
		}
		if second.Code != alias.Code || second.AliasCodeID == nil || *second.AliasCodeID != alias.ID {
			t.Fatalf("the new booking's code %q alias %v, want the alias's %q", second.Code, second.AliasCodeID, alias.Code)
		}
		if first.RevokedAt != nil {
			t.Fatal("the first booking was revoked")
		}
	})
}
