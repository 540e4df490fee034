package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/box"
	"github.com/keyrelay/keyrelay/firmware/offline"
	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
)

// cutProxy stands between a box and the server. Cut, it drops every
// connection, open or new, as a dead link does; restored, it forwards
// again. It notes the Range of each firmware download it forwards.
type cutProxy struct {
	srv    *httptest.Server
	down   atomic.Bool
	mu     sync.Mutex
	ranges []string
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	// A request dropped by a cut ends here; its box sees the cut.
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) { w.WriteHeader(http.StatusBadGateway) }
	p := &cutProxy{}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.down.Load() {
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		if strings.HasSuffix(r.URL.Path, "/artifact") {
			p.mu.Lock()
			p.ranges = append(p.ranges, r.Header.Get("Range"))
			p.mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *cutProxy) url() string { return p.srv.URL }

func (p *cutProxy) cut() {
	p.down.Store(true)
	p.srv.CloseClientConnections()
}

func (p *cutProxy) restore() { p.down.Store(false) }

func (p *cutProxy) artifactRanges() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.ranges)
}

// boxRun is `keyrelay box run` driven through its standard input and
// output, as a person at a terminal would.
type boxRun struct {
	in     *io.PipeWriter
	out    chan string
	logs   *syncBuffer
	stopMu sync.Once
	stop   func()
}

func startBoxRun(t *testing.T, args ...string) *boxRun {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	b := &boxRun{in: inW, out: make(chan string, 16), logs: &syncBuffer{}}
	done := make(chan error, 1)
	go func() {
		done <- runBoxWith(ctx, append([]string{"run"}, args...), inR, outW, b.logs)
		outW.Close()
	}()
	go func() {
		defer close(b.out)
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			b.out <- sc.Text()
		}
	}()
	b.stop = func() {
		b.stopMu.Do(func() {
			cancel()
			inW.Close()
			if err := <-done; err != nil {
				t.Errorf("box run: %v", err)
			}
		})
	}
	t.Cleanup(func() {
		b.stop()
		if t.Failed() {
			t.Logf("box run logs:\n%s", b.logs.String())
		}
	})
	return b
}

// do types one line and returns the box's JSON answer.
func (b *boxRun) do(t *testing.T, line string) map[string]any {
	t.Helper()
	if _, err := io.WriteString(b.in, line+"\n"); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	select {
	case out, ok := <-b.out:
		if !ok {
			t.Fatalf("%s: the box stopped\n%s", line, b.logs.String())
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("%s: the box printed %q", line, out)
		}
		if m["error"] != nil {
			t.Fatalf("%s: %v", line, m["error"])
		}
		return m
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no answer\n%s", line, b.logs.String())
	}
	return nil
}

func (b *boxRun) status(t *testing.T) map[string]any { t.Helper(); return b.do(t, "status") }

// newBareSite is newSite without the provisioning: the box under test
// provisions itself.
func (s *server) newBareSite(t *testing.T, f tenantFixture, model string, bins ...int) *site {
	t.Helper()
	b := f.Owner.expect(t, 201, "POST", "/api/v1/boxes", map[string]any{"name": "Kiosk " + uuid.NewString()[:6], "model": model, "timezone": "Europe/Paris", "bins": 12}).JSON(t)
	st := &site{s: s, f: f, boxID: b["id"].(string), keys: map[int]string{}, fobs: map[int]string{}}
	for _, n := range bins {
		fob := "FOB-" + uuid.NewString()[:8]
		k := f.Owner.expect(t, 201, "POST", "/api/v1/keys", map[string]any{"name": fmt.Sprintf("Car %d", n), "fob_serial": fob, "box_id": st.boxID, "bin": n}).JSON(t)
		st.keys[n], st.fobs[n] = k["id"].(string), fob
	}
	return st
}

func (st *site) boxStatus(t *testing.T) map[string]any {
	t.Helper()
	return st.f.Owner.expect(t, 200, "GET", "/api/v1/boxes/"+st.boxID, nil).JSON(t)["status"].(map[string]any)
}

func readJournal(t *testing.T, dir string) []boxsync.Entry {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "journal.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var out []boxsync.Entry
	for _, line := range bytes.Split(bytes.TrimSpace(raw), []byte("\n")) {
		var e boxsync.Entry
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

func bins(a map[string]any) []any {
	b, _ := a["bins"].([]any)
	return b
}

// One box, as `keyrelay box run`: it provisions itself, takes a firmware
// update through a rollout (its download cut and resumed), fetches its
// bundle, answers the keypad online, loses the server, opens with a
// booking code and a backup code and takes a key back offline —
// journaled on disk — and syncs when the server answers again; the
// server's keys, audit and backup counters then match what happened.
func TestBoxRunEndToEnd(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newBareSite(t, f, "MS5", 2, 3, 4)
	bookingID, code := st.book(t, 3, -time.Minute, 2*time.Hour)
	_, onlineCode := st.book(t, 4, -time.Minute, 2*time.Hour)
	proxy := newCutProxy(t, s.url)
	dir := filepath.Join(t.TempDir(), "box")

	// Provisioning, through the link the box will use.
	tok := f.Owner.expect(t, 201, "POST", "/api/v1/boxes/"+st.boxID+"/provisioning-token", nil).JSON(t)["token"].(string)
	var out, errOut bytes.Buffer
	if err := runBoxWith(context.Background(), []string{"provision", "-url", proxy.url(), "-token", tok, "-state", dir}, nil, &out, &errOut); err != nil {
		t.Fatalf("provision: %v %s", err, errOut.String())
	}
	sheet := st.sheetCSV(t, f.Owner) // the box's secret is the one it just received
	backup := sheet["2"][3]
	artifact := randomBytes(t, 300_000)
	version := fwVersion(7)
	relID := s.publishFirmware(t, "MS5", version, 2, artifact)

	hold := fmt.Sprintf("2=%s,3=%s,4=%s", st.fobs[2], st.fobs[3], st.fobs[4])
	b := startBoxRun(t, "-state", dir, "-heartbeat", "200ms", "-retry", "200ms", "-hold", hold, "-cut-firmware-after", "100000")
	waitFor(t, "the box online with its bundle", 20*time.Second, func() bool {
		return st.boxStatus(t)["online"] == true && b.status(t)["bundle_version"].(float64) > 0
	})
	if got := st.boxStatus(t); got["power_source"] != "mains" || got["firmware_version"] != "5.2.0" || got["sleeping"] != false {
		t.Fatalf("server's view of the box: %v", got)
	}

	t.Run("OKFirmwareThroughRollout", func(t *testing.T) {
		op := s.operatorClient()
		rid := op.expect(t, 201, "POST", "/api/v1/platform/rollouts", map[string]any{
			"tenant_id": f.ID, "release_id": relID, "waves": []int{100}, "failure_threshold": 0.5}).JSON(t)["id"].(string)
		waitFor(t, "the box to install the update", 30*time.Second, func() bool {
			d := rolloutBoxes(t, op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t))
			return d[st.boxID]["status"] == "installed"
		})
		// The box records the version it runs once the platform has the
		// report.
		waitFor(t, "the box to run "+version, 10*time.Second, func() bool { return b.status(t)["firmware_version"] == version })
		waitFor(t, "a heartbeat with the new version", 10*time.Second, func() bool { return st.boxStatus(t)["firmware_version"] == version })
		// The first download was cut at 100,000 bytes; the next resumed there.
		if r := proxy.artifactRanges(); len(r) < 2 || r[0] != "" || !slices.Contains(r, "bytes=100000-") {
			t.Errorf("artifact requests' Range: %q, want a whole request then bytes=100000-", r)
		}
		raw, err := os.ReadFile(filepath.Join(dir, "firmware", "firmware-installed.json"))
		if err != nil || !strings.Contains(string(raw), `"`+version+`"`) {
			t.Errorf("installed version on disk: %s %v", raw, err)
		}
	})

	t.Run("OKOnlineKeypad", func(t *testing.T) {
		a := b.do(t, "pickup "+onlineCode)
		if a["result"] != "open" || a["offline"] != false || !slices.Equal(bins(a), []any{float64(4)}) {
			t.Fatalf("online pickup: %v", a)
		}
		waitFor(t, "key 4 out", 10*time.Second, func() bool { return st.keyState(t, 4)["state"] == "out" })
		a = b.do(t, "dropoff "+st.fobs[4])
		if a["result"] != "open" || a["offline"] != false || !slices.Equal(bins(a), []any{float64(4)}) {
			t.Fatalf("online dropoff: %v", a)
		}
		waitFor(t, "key 4 back in bin 4", 10*time.Second, func() bool {
			w := st.keyState(t, 4)
			return w["state"] == "in_bin" && w["bin"] == float64(4)
		})
	})

	proxy.cut()
	t.Run("OKOfflineKeypadJournaled", func(t *testing.T) {
		a := b.do(t, "pickup "+code)
		if a["result"] != "open" || a["offline"] != true || !slices.Equal(bins(a), []any{float64(3)}) || a["access_id"] != bookingID {
			t.Fatalf("booking code offline: %v", a)
		}
		a = b.do(t, "pickup "+backup)
		if a["result"] != "open" || a["offline"] != true || !slices.Equal(bins(a), []any{float64(2)}) {
			t.Fatalf("backup code offline: %v", a)
		}
		if a := b.do(t, "pickup "+backup); a["result"] != "denied" || a["reason"] != offline.WrongCode {
			t.Fatalf("backup code twice: %v", a)
		}
		a = b.do(t, "dropoff "+st.fobs[2])
		if a["result"] != "open" || a["offline"] != true || !slices.Equal(bins(a), []any{float64(2)}) || a["journal_seq"] != float64(4) {
			t.Fatalf("dropoff offline (home bin 2): %v", a)
		}
		stat := b.status(t)
		if stat["online"] != false || stat["journal_seq"] != float64(4) || stat["journal_acked"] != float64(0) {
			t.Fatalf("status offline: %v", stat)
		}
		j := readJournal(t, dir)
		if len(j) != 4 ||
			j[0].Kind != boxsync.KindPickup || j[0].Method != boxsync.MethodVerifier || j[0].Bin != 3 || j[0].FobSerial != st.fobs[3] || j[0].AccessID != bookingID ||
			j[1].Kind != boxsync.KindBackupOpen || j[1].Bin != 2 || j[1].BackupCounter == nil || *j[1].BackupCounter != 0 ||
			j[2].Kind != boxsync.KindPickup || j[2].Method != boxsync.MethodBackup || j[2].FobSerial != st.fobs[2] ||
			j[3].Kind != boxsync.KindDropoff || j[3].Bin != 2 || j[3].FobSerial != st.fobs[2] {
			t.Fatalf("journal on disk: %+v", j)
		}
		// The server knows nothing of it yet.
		if w := st.keyState(t, 3); w["state"] != "in_bin" {
			t.Fatalf("key 3 on the server before the sync: %v", w)
		}
	})

	proxy.restore()
	t.Run("OKSyncedOnReconnect", func(t *testing.T) {
		waitFor(t, "the journal synced", 20*time.Second, func() bool { return b.status(t)["journal_acked"] == float64(4) })
		if stat := b.status(t); stat["online"] != true {
			t.Fatalf("status after the sync: %v", stat)
		}
		if w := st.keyState(t, 3); w["state"] != "out" || w["access_id"] != bookingID {
			t.Errorf("key 3: %v, want out with booking %s", w, bookingID)
		}
		if w := st.keyState(t, 2); w["state"] != "in_bin" || w["bin"] != float64(2) {
			t.Errorf("key 2: %v, want back in bin 2", w)
		}
		offlinePickups := map[string]bool{}
		for _, it := range f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=key.picked_up", nil).JSON(t)["items"].([]any) {
			d := it.(map[string]any)["details"].(map[string]any)
			if d["offline"] == "true" {
				offlinePickups[d["method"].(string)] = true
				if d["method"] == boxsync.MethodVerifier && d["booking"] != bookingID {
					t.Errorf("offline pickup audited as %v", d)
				}
			}
		}
		if !offlinePickups[boxsync.MethodVerifier] || !offlinePickups[boxsync.MethodBackup] || len(offlinePickups) != 2 {
			t.Errorf("offline pickups audited: %v, want verifier and backup", offlinePickups)
		}
		if n := len(f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=box.backup_code_used", nil).JSON(t)["items"].([]any)); n != 1 {
			t.Errorf("backup codes used, audited: %d, want 1", n)
		}
		if after := st.sheetCSV(t, f.Owner); after["2"][4] != "1" || after["2"][3] == backup {
			t.Errorf("backup sheet after the sync: bin 2 %v, want counter 1 and a new code", after["2"])
		}
	})

	t.Run("OKRestartRemembers", func(t *testing.T) {
		b.stop()
		again := startBoxRun(t, "-state", dir, "-heartbeat", "200ms", "-retry", "200ms")
		stat := again.status(t)
		held, _ := stat["bins"].(map[string]any)
		if stat["firmware_version"] != version || stat["journal_seq"] != float64(4) || stat["journal_acked"] != float64(4) ||
			held["2"] != st.fobs[2] || held["3"] != nil || held["4"] != st.fobs[4] {
			t.Fatalf("after a restart: %v", stat)
		}
	})
}

// An MS3 has no offline mode: it never fetches a bundle, and with the
// server unreachable its keypad refuses with a message instead of
// deciding alone; with the server back it opens again.
func TestBoxRunMS3NoOfflineMode(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newBareSite(t, f, "MS3", 2)
	_, code := st.book(t, 2, -time.Minute, 2*time.Hour)
	proxy := newCutProxy(t, s.url)
	tok := f.Owner.expect(t, 201, "POST", "/api/v1/boxes/"+st.boxID+"/provisioning-token", nil).JSON(t)["token"].(string)
	c, err := box.Provision(context.Background(), proxy.url(), tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dev, err := box.New(c, dir, box.Config{Hold: map[int]string{2: st.fobs[2]}, Tick: 50 * time.Millisecond, HeartbeatEvery: 200 * time.Millisecond}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dev.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; dev.Close() })
	waitFor(t, "the MS3 online", 10*time.Second, func() bool { return st.boxStatus(t)["online"] == true })

	proxy.cut()
	a, err := dev.Pickup(ctx, code)
	if err != nil || a.Result != "denied" || a.Reason != box.NoOfflineMode || !strings.Contains(a.Message, "no offline mode") || len(a.Bins) != 0 {
		t.Fatalf("MS3 pickup with the server unreachable: %+v %v", a, err)
	}
	if got := dev.Status(); got.Bins[2] != st.fobs[2] || got.OfflineMode || got.BundleVersion != 0 || got.JournalSeq != 0 {
		t.Fatalf("MS3 after the refusal: %+v", got)
	}
	for _, name := range []string{"bundle.bin", "bundle-state.json", "journal.jsonl"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			t.Errorf("the MS3 wrote %s", name)
		}
	}

	proxy.restore()
	waitFor(t, "the MS3 to see the server again", 10*time.Second, func() bool { return dev.Status().Online })
	a, err = dev.Pickup(ctx, code)
	if err != nil || a.Result != "open" || a.Offline || !slices.Equal(a.Bins, []int{2}) {
		t.Fatalf("MS3 pickup online: %+v %v", a, err)
	}
	waitFor(t, "key 2 out", 10*time.Second, func() bool { return st.keyState(t, 2)["state"] == "out" })
}
