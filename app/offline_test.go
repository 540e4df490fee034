package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/csv"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/box"
	"github.com/keyrelay/keyrelay/firmware/offline"
	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
	"github.com/keyrelay/keyrelay/tenants"
)

// offlineBox is the site's box gone offline: its keypad, journal and bins
// as the reference box keeps them.
func (st *site) offlineBox(t *testing.T) *box.Offline {
	t.Helper()
	o, err := box.NewOffline(t.TempDir(), st.box.ID, 12, offline.DefaultLimits(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.J.Close() })
	for bin, fob := range st.fobs {
		o.SetBin(bin, fob)
	}
	o.SawServerTime(time.Now().Add(-time.Minute))
	return o
}

// sheetCSV downloads the box's backup-code sheet as CSV rows by bin label.
func (st *site) sheetCSV(t *testing.T, c *client) map[string][]string {
	t.Helper()
	r := c.expect(t, 200, "GET", "/api/v1/boxes/"+st.boxID+"/offline-codes?format=csv", nil)
	rows, err := csv.NewReader(bytes.NewReader(r.Body)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, row := range rows[1:] {
		out[row[2]] = row
	}
	return out
}

func TestOfflineCodesEndToEnd(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 2, 3, 4)
	ctx := context.Background()

	// The admin prints the sheet before the outage.
	sheet := st.sheetCSV(t, f.Owner)
	if len(sheet) != 13 || sheet["2"][5] != "Car 2" || sheet["2"][6] != st.fobs[2] || sheet["all"][3] == "" || len(sheet["2"][3]) != 10 {
		t.Fatalf("sheet %v", sheet)
	}
	page := f.Owner.expect(t, 200, "GET", "/api/v1/boxes/"+st.boxID+"/offline-codes", nil)
	if !strings.HasPrefix(page.Header.Get("Content-Type"), "text/html") || !bytes.Contains(page.Body, []byte(sheet["3"][3])) || page.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("page: %v %s", page.Header, page.Body)
	}
	if n := len(f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=box.offline_codes_downloaded", nil).JSON(t)["items"].([]any)); n != 2 {
		t.Errorf("downloads audited: %d, want 2", n)
	}

	// A booking made while the box is offline gets a derived code; another
	// booking's derived code is revoked after it was given out.
	bookingID, _ := st.book(t, 3, -time.Minute, 2*time.Hour)
	d := f.Owner.expect(t, 201, "POST", "/api/v1/bookings/"+bookingID+"/offline-code", nil).JSON(t)
	code := d["code"].(string)
	if len(code) != 15 || d["bin"] != float64(3) {
		t.Fatalf("derived %v", d)
	}
	if again := f.Owner.expect(t, 201, "POST", "/api/v1/bookings/"+bookingID+"/offline-code", nil).JSON(t); again["code"] != code {
		t.Errorf("derived twice: %v then %v", code, again["code"])
	}
	revokedID, _ := st.book(t, 4, -time.Minute, time.Hour)
	revokedCode := f.Owner.expect(t, 201, "POST", "/api/v1/bookings/"+revokedID+"/offline-code", nil).JSON(t)["code"].(string)
	f.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+revokedID+"/revoke", nil)
	var revoked []string
	if err := s.app.scope.Do(ctx, f.ID, func(ctx context.Context) error {
		var err error
		revoked, err = s.app.offline.RevokedTags(ctx, uuid.MustParse(st.boxID))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(revoked) != 1 || revoked[0] != revokedCode[7:] {
		t.Errorf("revoked tags %v, want the revoked booking's %s", revoked, revokedCode[7:])
	}

	// Offline: the box has no bundle with the revocation yet (R7).
	o := st.offlineBox(t)
	if dec, err := o.EnterCode(code); err != nil || !dec.Open || dec.Bins[0] != 3 {
		t.Fatalf("derived code at the box: %+v %v", dec, err)
	}
	if dec, _ := o.EnterCode(revokedCode); !dec.Open {
		t.Fatalf("the revoked booking's code before the bundle: %+v", dec)
	}
	if dec, _ := o.EnterCode(sheet["2"][3]); !dec.Open || dec.Bins[0] != 2 {
		t.Fatalf("backup code: %+v", dec)
	}
	if _, err := o.TakeKey(2, boxsync.MethodBackup, "", ""); err != nil {
		t.Fatal(err)
	}
	if dec, _ := o.EnterCode(sheet["2"][3]); dec.Open {
		t.Fatal("a backup code opened twice")
	}
	if _, err := o.Dropoff(5, st.fobs[2]); err != nil {
		t.Fatal(err)
	}

	// Back online: sync.
	res, err := o.Sync(ctx, st.box)
	if err != nil {
		t.Fatal(err)
	}
	if res.HighSeq != 5 || res.Stored != 5 || len(res.Conflicts) != 1 || res.Conflicts[0].Kind != "revoked_access" || res.Conflicts[0].Seq != 2 {
		t.Fatalf("sync: %+v", res)
	}
	if fams, _ := s.scrape(t); fams.value("keyrelay_sync_events_total", nil) != 5 {
		t.Errorf("keyrelay_sync_events_total = %v after 5 entries stored", fams.value("keyrelay_sync_events_total", nil))
	}
	if w := st.keyState(t, 3); w["state"] != "out" || w["access_id"] != bookingID {
		t.Errorf("key 3: %v, want out with %s", w, bookingID)
	}
	if w := st.keyState(t, 4); w["state"] != "out" {
		t.Errorf("key 4: %v, want out (taken on revoked access, as it happened)", w)
	}
	if w := st.keyState(t, 2); w["state"] != "in_bin" || w["bin"] != float64(5) {
		t.Errorf("key 2: %v, want in bin 5", w)
	}
	alerts := 0
	for _, m := range s.outboxOf(t, f.ID) {
		if m.Kind == "sync_conflict" {
			alerts++
			if m.Data["kind"] != "revoked_access" || m.Data["seq"] != "2" {
				t.Errorf("alert %v", m.Data)
			}
		}
	}
	if alerts != 1 {
		t.Errorf("sync_conflict alerts: %d, want 1 (one admin, one conflict)", alerts)
	}
	picked := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=key.picked_up", nil).JSON(t)["items"].([]any)
	if len(picked) != 3 {
		t.Errorf("key.picked_up entries: %d, want 3", len(picked))
	}
	det := picked[len(picked)-1].(map[string]any)["details"].(map[string]any)
	if det["offline"] != "true" || det["method"] != "derived" || det["booking"] != bookingID || det["box_time"] == nil {
		t.Errorf("first offline pickup audited as %v", det)
	}
	// The used backup code is spent on the server too: the sheet moves on.
	after := st.sheetCSV(t, f.Owner)
	if after["2"][4] != "1" || after["2"][3] == sheet["2"][3] || after["3"][3] != sheet["3"][3] {
		t.Errorf("sheet after sync: bin 2 %v (was %v), bin 3 %v", after["2"], sheet["2"], after["3"])
	}
	// Nothing more to send; a second sync is a no-op.
	if res, err := o.Sync(ctx, st.box); err != nil || res.Stored != 0 {
		t.Errorf("second sync: %+v %v", res, err)
	}
}

func TestOfflineCodeRules(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 2, 3)

	t.Run("ErrRoles", func(t *testing.T) {
		staff := s.invMember(t, f, "staff")
		problemOf(t, staff.do(t, "GET", "/api/v1/boxes/"+st.boxID+"/offline-codes", nil), 403)
		id, _ := st.book(t, 2, time.Hour, 2*time.Hour)
		if r := staff.expect(t, 201, "POST", "/api/v1/bookings/"+id+"/offline-code", nil).JSON(t); len(r["code"].(string)) != 15 {
			t.Errorf("staff derive: %v", r)
		}
	})
	t.Run("ErrOtherTenant", func(t *testing.T) {
		g := s.signup(t)
		problemOf(t, g.Owner.do(t, "GET", "/api/v1/boxes/"+st.boxID+"/offline-codes", nil), 404)
		id, _ := st.book(t, 3, 3*time.Hour, 4*time.Hour)
		problemOf(t, g.Owner.do(t, "POST", "/api/v1/bookings/"+id+"/offline-code", nil), 404)
	})
	t.Run("ErrLimitedStaff", func(t *testing.T) {
		loc := invID(t, f.Owner, "/api/v1/locations", map[string]any{"name": "Elsewhere " + uuid.NewString()[:6]})
		limited := s.invMember(t, f, "staff", loc)
		id, _ := st.book(t, 2, 6*time.Hour, 7*time.Hour)
		problemOf(t, limited.do(t, "POST", "/api/v1/bookings/"+id+"/offline-code", nil), 404)
	})
	t.Run("ErrBadInput", func(t *testing.T) {
		problemOf(t, f.Owner.do(t, "GET", "/api/v1/boxes/"+st.boxID+"/offline-codes?format=pdf", nil), 422)
		long, _ := st.book(t, 2, 8*time.Hour, 30*24*time.Hour)
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/bookings/"+long+"/offline-code", nil), 422)
		far, _ := st.book(t, 3, 25*24*time.Hour, 26*24*time.Hour)
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/bookings/"+far+"/offline-code", nil), 422)
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/bookings/"+uuid.NewString()+"/offline-code", nil), 404)
	})
	t.Run("ErrMS3", func(t *testing.T) {
		ms3 := insertBox(t, f.ID, "MS3")
		problemOf(t, f.Owner.do(t, "GET", "/api/v1/boxes/"+ms3.String()+"/offline-codes", nil), 409)
	})
}

// journalOf builds n dropoff entries in a fresh journal of the box.
func journalOf(t *testing.T, st *site, n int) []json.RawMessage {
	t.Helper()
	j, err := box.OpenJournal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	for i := 0; i < n; i++ {
		if _, err := j.Append(boxsync.Entry{BoxTime: time.Now().UTC(), Kind: boxsync.KindDropoff, Bin: 2, FobSerial: st.fobs[2]}); err != nil {
			t.Fatal(err)
		}
	}
	return j.Pending(0, n)
}

func (st *site) sync(t *testing.T, b boxsync.Batch) response {
	t.Helper()
	status, raw, err := st.box.Request(context.Background(), "POST", "/box/v1/sync", b)
	if err != nil {
		t.Fatal(err)
	}
	return response{Status: status, Body: raw, Header: map[string][]string{"Content-Type": {"application/problem+json"}}}
}

func TestSyncRefusals(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 2)
	evs := journalOf(t, st, 6)
	sign := func(evs []json.RawMessage) boxsync.Batch {
		return boxsync.SignBatch(st.box.ID.PrivateKey, st.box.ID.BoxID, evs)
	}
	first := sign(evs[:3])
	var res boxsync.Result
	if err := st.box.Call(context.Background(), 200, "POST", "/box/v1/sync", first, &res); err != nil || res.HighSeq != 3 {
		t.Fatalf("first batch: %+v %v", res, err)
	}
	incidents := func(kind string) int {
		n := 0
		for _, m := range s.outboxOf(t, f.ID) {
			if m.Kind == "sync_conflict" && m.Data["kind"] == kind {
				n++
			}
		}
		return n
	}

	t.Run("ErrReplayed", func(t *testing.T) {
		problemOf(t, st.sync(t, first), 409)
		var state boxsync.State
		if err := st.box.Call(context.Background(), 200, "GET", "/box/v1/sync", nil, &state); err != nil || state.HighSeq != 3 {
			t.Fatalf("state %+v %v", state, err)
		}
	})
	t.Run("ErrReordered", func(t *testing.T) {
		p := problemOf(t, st.sync(t, sign([]json.RawMessage{evs[4], evs[3]})), 422)
		if !strings.Contains(p["detail"].(string), "seq") {
			t.Errorf("detail %v", p["detail"])
		}
	})
	t.Run("ErrForged", func(t *testing.T) {
		_, other, _ := ed25519.GenerateKey(rand.Reader)
		problemOf(t, st.sync(t, boxsync.SignBatch(other, st.box.ID.BoxID, evs[3:])), 422)
		// A flipped byte in an entry, signature kept.
		b := sign(append([]json.RawMessage(nil), evs[3:]...))
		b.Events[0] = json.RawMessage(strings.Replace(string(b.Events[0]), `"bin":2`, `"bin":3`, 1))
		problemOf(t, st.sync(t, b), 422)
		if n := incidents("forged"); n != 1 {
			t.Errorf("forged alerts: %d, want 1 (one per seq)", n)
		}
	})
	t.Run("ErrGap", func(t *testing.T) {
		problemOf(t, st.sync(t, sign(evs[4:])), 409)
		if n := incidents("gap"); n != 1 {
			t.Errorf("gap alerts: %d", n)
		}
	})
	t.Run("ErrFork", func(t *testing.T) {
		// Another journal under the same key: seq 4 does not link to the
		// stored seq 3.
		other := journalOf(t, st, 4)
		problemOf(t, st.sync(t, sign(other[3:])), 409)
		// Same seqs as stored, other content.
		problemOf(t, st.sync(t, sign(other[:4])), 409)
		if n := incidents("fork"); n < 1 {
			t.Errorf("fork alerts: %d", n)
		}
	})
	t.Run("OverlapStoredOnce", func(t *testing.T) {
		if err := st.box.Call(context.Background(), 200, "POST", "/box/v1/sync", sign(evs[1:]), &res); err != nil || res.HighSeq != 6 || res.Stored != 3 || res.Duplicates != 2 {
			t.Fatalf("overlap: %+v %v", res, err)
		}
		if n := testDB.Exec(t, `UPDATE box_journal SET kind = kind WHERE box_id = $1`, st.boxID); n != 6 {
			t.Errorf("journal rows: %d, want 6", n)
		}
	})
	t.Run("ErrBadEntries", func(t *testing.T) {
		problemOf(t, st.sync(t, boxsync.Batch{Events: nil, Signature: first.Signature}), 422)
		bad := []json.RawMessage{json.RawMessage(`{"seq":7,"kind":"teleport","bin":2,"box_time":"2025-01-01T00:00:00Z","prev":""}`)}
		problemOf(t, st.sync(t, sign(bad)), 422)
		problemOf(t, st.sync(t, sign([]json.RawMessage{json.RawMessage(`{"seq":7,"extra":1}`)})), 422)
	})
}

// BenchmarkSyncIngest measures sync ingest into PostgreSQL through the
// service (signature, chain, key state, audit, unnest insert), in batches
// of boxsync.MaxEvents, against a plain multi-row INSERT of the same rows.
func BenchmarkSyncIngest(b *testing.B) {
	s := startServer(b)
	f := s.signup(b)
	boxID := insertBox(b, f.ID, "MS5")
	cl := s.provisionBox(b, f, boxID)
	fob := "FOB-" + uuid.NewString()[:8]
	f.Owner.expect(b, 201, "POST", "/api/v1/keys", map[string]any{"name": "Bench", "fob_serial": fob, "box_id": boxID.String(), "bin": 1})
	j, err := box.OpenJournal(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	const batch = boxsync.MaxEvents
	total := b.N * batch
	for i := 0; i < total; i++ {
		kind := boxsync.KindPickup
		if i%2 == 1 {
			kind = boxsync.KindDropoff
		}
		e := boxsync.Entry{BoxTime: time.Now().UTC(), Kind: kind, Bin: 1, FobSerial: fob}
		if kind == boxsync.KindPickup {
			e.Method = boxsync.MethodBackup
		}
		if _, err := j.Append(e); err != nil {
			b.Fatal(err)
		}
	}
	batches := make([]boxsync.Batch, b.N)
	for i := range batches {
		batches[i] = boxsync.SignBatch(cl.ID.PrivateKey, cl.ID.BoxID, j.Pending(uint64(i*batch), batch))
	}
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for i := range batches {
		if status, raw, err := cl.Request(ctx, "POST", "/box/v1/sync", batches[i]); err != nil || status != 200 {
			b.Fatalf("batch %d: %d %s %v", i, status, raw, err)
		}
	}
	b.ReportMetric(float64(total)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkJournalInsertPlain stores the same journal rows as sync does,
// with a plain multi-row INSERT … VALUES per batch (the baseline the unnest
// statement is measured against).
func BenchmarkJournalInsertPlain(b *testing.B) {
	s := startServer(b)
	f := s.signup(b)
	boxID := insertBox(b, f.ID, "MS5")
	const batch = boxsync.MaxEvents
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		err := s.app.scope.Do(ctx, f.ID, func(ctx context.Context) error {
			var sql strings.Builder
			args := make([]any, 0, batch*6)
			sql.WriteString(`INSERT INTO box_journal (tenant_id, box_id, seq, hash, kind, bin, fob_serial, method, box_time, received_at) VALUES `)
			now := time.Now()
			for k := 0; k < batch; k++ {
				if k > 0 {
					sql.WriteString(",")
				}
				sql.WriteString("(?, ?, ?, ?, 'dropoff', 1, ?, '', ?, now())")
				h := make([]byte, 32)
				rand.Read(h)
				args = append(args, f.ID, boxID, i*batch+k+1, h, "FOB-1", now)
			}
			sql.WriteString(" ON CONFLICT DO NOTHING")
			tx, err := tenants.Tx(ctx)
			if err != nil {
				return err
			}
			return tx.Exec(sql.String(), args...).Error
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/time.Since(start).Seconds(), "events/s")
}
