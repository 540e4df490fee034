package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/keyrelay/keyrelay/firmware/box"
	"github.com/keyrelay/keyrelay/firmware/bundles"
	"github.com/keyrelay/keyrelay/firmware/commands"
	"github.com/keyrelay/keyrelay/firmware/signing"
	"github.com/keyrelay/keyrelay/tenants/bookings"
)

// waitBundleReady polls b's commands until a bundle_ready arrives or the
// deadline passes.
func waitBundleReady(t *testing.T, b *box.Client, deadline time.Time) bool {
	t.Helper()
	for time.Now().Before(deadline) {
		l := <-poll(b, 5)
		for _, c := range l.Commands {
			if c.Kind == commands.BundleReady {
				b.Call(context.Background(), 204, "POST", "/box/v1/commands/"+c.ID.String()+"/ack", commands.AckInput{Result: commands.Done}, nil)
				return true
			}
			b.Call(context.Background(), 204, "POST", "/box/v1/commands/"+c.ID.String()+"/ack", commands.AckInput{Result: commands.Done}, nil)
		}
	}
	return false
}

func TestBundles(t *testing.T) {
	s := startServer(t, func(c *Config) { c.Workers = true })
	f := s.signup(t)
	st := s.newSite(t, f, 1, 2)
	ctx := context.Background()
	bookingID, code := st.book(t, 1, -time.Minute, 2*time.Hour)
	_, later := st.book(t, 2, 3*time.Hour, 5*time.Hour)
	dir := t.TempDir()
	bs, err := box.OpenBundles(st.box, dir)
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := bs.Fetch(ctx); err != nil || !changed {
		t.Fatalf("first fetch: %v %v", changed, err)
	}
	first, err := os.ReadFile(filepath.Join(dir, "bundle.bin"))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("OKOfflinePickupByCode", func(t *testing.T) {
		d, err := bs.OfflinePickup(code, "")
		if err != nil || !d.Open || d.Bin != 1 || d.AccessID.String() != bookingID {
			t.Fatalf("decision %+v %v", d, err)
		}
		if d, _ := bs.OfflinePickup(later, ""); d.Open || d.Reason != bundles.NotStarted {
			t.Fatalf("upcoming access: %+v", d)
		}
		if d, _ := bs.OfflinePickup("0000000001", ""); d.Open || d.Reason != bundles.UnknownCode {
			t.Fatalf("unknown code: %+v", d)
		}
	})
	t.Run("ErrOfflinePhoneNeedsCode", func(t *testing.T) {
		d, _ := bs.OfflinePickup("", "+14155550199")
		if d.Open || d.Reason != bundles.OfflineSMS {
			t.Fatalf("phone: %+v", d)
		}
		if d, _ := bs.OfflinePickup("", "+14155550100"); d.Open || d.Reason != bundles.NoAccess {
			t.Fatalf("stranger's phone: %+v", d)
		}
	})
	t.Run("OKBundleRevealsNoCodeOrPhone", func(t *testing.T) {
		for _, secret := range []string{code, later, "+14155550199", "14155550199", "4155550199"} {
			if bytes.Contains(first, []byte(secret)) {
				t.Errorf("the bundle contains %q", secret)
			}
		}
		// Nor does what the server stores.
		var stored []byte
		conn, err := pgx.Connect(ctx, testDB.OwnerURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if err := conn.QueryRow(ctx, `SELECT bundle FROM box_bundles WHERE box_id = $1`, st.boxID).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(stored, []byte(code)) || bytes.Contains(stored, []byte("4155550199")) {
			t.Error("box_bundles holds a code or phone number")
		}
	})
	t.Run("OKNotModified", func(t *testing.T) {
		if changed, err := bs.Fetch(ctx); err != nil || changed {
			t.Fatalf("second fetch: %v %v", changed, err)
		}
	})
	t.Run("OKFreshnessRevocation", func(t *testing.T) {
		// Drain the commands of the first build, then change something.
		waitBundleReady(t, st.box, time.Now().Add(3*time.Second))
		v0 := bs.State().Signing.Version
		ok := map[string]string{"result": "ok"}
		fams, _ := s.scrape(t)
		rebuilt := fams.value("keyrelay_bundle_rebuilds_total", ok)
		start := time.Now()
		f.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+bookingID+"/revoke", nil)
		if !waitBundleReady(t, st.box, start.Add(60*time.Second)) {
			t.Fatal("no bundle_ready within 60 s of the revocation")
		}
		if changed, err := bs.Fetch(ctx); err != nil || !changed {
			t.Fatalf("fetch after change: %v %v", changed, err)
		}
		// Reported, not asserted: the machine is shared (the 60 s goal is a
		// measurement for the issue note).
		t.Logf("revocation reached the box's bundle in %v (goal 60 s)", time.Since(start))
		if fams, _ := s.scrape(t); fams.value("keyrelay_bundle_rebuilds_total", ok) <= rebuilt {
			t.Errorf("keyrelay_bundle_rebuilds_total{result=ok} stayed at %v through a rebuild", rebuilt)
		}
		if v := bs.State().Signing.Version; v <= v0 {
			t.Fatalf("version %d after %d", v, v0)
		}
		p := bs.Payload()
		if len(p.Revoked) != 1 || p.Revoked[0].ID.String() != bookingID {
			t.Fatalf("revocations %+v", p.Revoked)
		}
		if d, _ := bs.OfflinePickup(code, ""); d.Open || d.Reason != bundles.Revoked {
			t.Fatalf("revoked code: %+v", d)
		}
	})
	t.Run("ErrOlderBundleReplayed", func(t *testing.T) {
		if _, err := bs.Accept(first, ""); !errors.Is(err, signing.ErrRollback) {
			t.Fatalf("got %v", err)
		}
		// The state on disk survives a restart.
		again, err := box.OpenBundles(st.box, dir)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := again.Accept(first, ""); !errors.Is(err, signing.ErrRollback) {
			t.Fatalf("after restart: %v", err)
		}
		if again.Payload() == nil {
			t.Fatal("the accepted bundle was not reloaded")
		}
	})
	t.Run("ErrAnotherBoxsBundle", func(t *testing.T) {
		other := s.newSite(t, f, 3)
		ob, err := box.OpenBundles(other.box, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		status, raw, err := other.box.Request(ctx, "GET", "/box/v1/bundle", nil)
		if err != nil || status != 200 {
			t.Fatalf("other box: %d %v", status, err)
		}
		if _, err := bs.Accept(raw, ""); !errors.Is(err, signing.ErrWrongBox) {
			t.Fatalf("got %v", err)
		}
		if _, err := ob.Accept(raw, ""); err != nil {
			t.Fatalf("its own box refused it: %v", err)
		}
	})
	t.Run("ErrMS3HasNoOfflineMode", func(t *testing.T) {
		ms3 := insertBox(t, f.ID, "MS3")
		b := s.provisionBox(t, f, ms3)
		status, raw, err := b.Request(ctx, "GET", "/box/v1/bundle", nil)
		if err != nil || status != 404 || !strings.Contains(string(raw), "MS3") {
			t.Fatalf("MS3: %d %s %v", status, raw, err)
		}
		problemOf(t, f.Owner.do(t, "GET", "/api/v1/boxes/"+ms3.String()+"/bundle", nil), 404)
	})
	t.Run("OKStatus", func(t *testing.T) {
		m := f.Owner.expect(t, 200, "GET", "/api/v1/boxes/"+st.boxID+"/bundle", nil).JSON(t)
		if m["version"].(float64) < 2 || m["built_at"] == nil {
			t.Fatalf("status %v", m)
		}
	})
	t.Run("ErrOtherTenant", func(t *testing.T) {
		g := s.signup(t)
		problemOf(t, g.Owner.do(t, "GET", "/api/v1/boxes/"+st.boxID+"/bundle", nil), 404)
	})
	t.Run("ErrUnsignedCaller", func(t *testing.T) {
		problemOf(t, s.client().do(t, "GET", "/box/v1/bundle", nil), 401)
	})
}

// newSiteTB is newSite for benchmarks.
func (s *server) newSiteTB(tb testing.TB, f tenantFixture, bins ...int) *site {
	tb.Helper()
	b := f.Owner.expect(tb, 201, "POST", "/api/v1/boxes", map[string]any{"name": "Bench " + uuid.NewString()[:6], "model": "MS5", "timezone": "Europe/Paris", "bins": 12}).JSON(tb)
	st := &site{s: s, f: f, boxID: b["id"].(string), keys: map[int]string{}, fobs: map[int]string{}}
	for _, n := range bins {
		fob := "FOB-" + uuid.NewString()[:8]
		k := f.Owner.expect(tb, 201, "POST", "/api/v1/keys", map[string]any{"name": fmt.Sprintf("Car %d", n), "fob_serial": fob, "box_id": st.boxID, "bin": n}).JSON(tb)
		st.keys[n], st.fobs[n] = k["id"].(string), fob
	}
	st.box = s.provisionBox(tb, f, uuid.MustParse(st.boxID))
	return st
}

// seedAccesses gives the key in bin 1 of st n ongoing accesses, each with
// its own code, straight in the database (the API would take minutes).
func seedAccesses(tb testing.TB, s *server, tenantID uuid.UUID, keyID string, n int) {
	tb.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testDB.OwnerURL)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(ctx)
	now := time.Now().Add(-time.Hour)
	var codeRows, bookingRows [][]any
	for i := range n {
		codeID, bookingID := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
		code := fmt.Sprintf("9%09d", i)
		sealed, err := s.app.box.Seal([]byte(code), []byte("code:"+tenantID.String()+":"+codeID.String()))
		if err != nil {
			tb.Fatal(err)
		}
		tok := make([]byte, 32)
		rand.Read(tok)
		codeRows = append(codeRows, []any{tenantID, codeID, bookings.CodeHash(s.app.box, tenantID, code), sealed})
		bookingRows = append(bookingRows, []any{tenantID, bookingID, uuid.MustParse(keyID), "ongoing", "Visitor", fmt.Sprintf("+1415%07d", i), "sms",
			now, now, false, codeID, tok, tok, "seed"})
	}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"codes"}, []string{"tenant_id", "id", "code_hash", "code_sealed"}, pgx.CopyFromRows(codeRows)); err != nil {
		tb.Fatal(err)
	}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"bookings"}, []string{"tenant_id", "id", "key_id", "kind", "visitor_name", "visitor_phone", "notify_via",
		"starts_at", "live_from", "return_reminder", "code_id", "url_token_hash", "url_token_sealed", "created_by"}, pgx.CopyFromRows(bookingRows)); err != nil {
		tb.Fatal(err)
	}
	// The statistics autovacuum keeps in service: without them the planner
	// takes 10,000 freshly copied rows for one and joins them row by row.
	if _, err := conn.Exec(ctx, `ANALYZE codes, bookings`); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkBundle10k: build and sign (database included) and verify on the
// box, for a box whose keys have 10,000 live accesses.
//
//	go test -run '^$' -bench BenchmarkBundle10k -benchtime 20x ./app/
func BenchmarkBundle10k(b *testing.B) {
	s := startServer(b)
	f := s.signup(b)
	st := s.newSiteTB(b, f, 1)
	seedAccesses(b, s, f.ID, st.keys[1], 10_000)
	boxID := uuid.MustParse(st.boxID)
	ctx := context.Background()
	build := func() {
		if err := s.app.scope.Do(ctx, f.ID, func(ctx context.Context) error {
			out, err := s.app.bundles.Build(ctx, boxID)
			if err == nil && out.Accesses != 10_000 {
				err = fmt.Errorf("%d accesses", out.Accesses)
			}
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("BuildAndSign", func(b *testing.B) {
		for b.Loop() {
			build()
		}
	})
	_, raw, err := st.box.Request(ctx, "GET", "/box/v1/bundle", nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("bundle of 10,000 accesses: %d bytes", len(raw))
	want := signing.Expect{Type: signing.TypeBundle, BoxID: boxID, MaxSize: box.BundleMaxSize}
	state := signing.State{Root: st.box.ID.RootPublicKey}
	b.Run("Verify", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := signing.Accept(raw, state, want, time.Now(), func(signing.State) error { return nil }); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("VerifyAndIndex", func(b *testing.B) {
		for b.Loop() {
			_, payload, err := signing.Accept(raw, state, want, time.Now(), func(signing.State) error { return nil })
			if err != nil {
				b.Fatal(err)
			}
			p, err := bundles.Decode(payload, boxID)
			if err != nil {
				b.Fatal(err)
			}
			bundles.NewIndex(p)
		}
	})
}
