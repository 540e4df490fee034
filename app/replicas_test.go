package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/keyrelay/keyrelay/firmware/box"
	"github.com/keyrelay/keyrelay/plugins/providers/devmailbox/devmailbox"
	"github.com/keyrelay/keyrelay/tenants/exchange"
)

// replicasRedisDB is this test's own Redis database: asynq's queue names
// are fixed, so the in-process servers of the other tests (testRedisDB)
// must not take the subprocesses' tasks, nor these theirs.
const replicasRedisDB = 12

// replica is one keyrelay subprocess.
type replica struct {
	name string
	cmd  *exec.Cmd
	url  string // serve replicas only
	log  string
	done chan struct{}
}

func (r *replica) pid() int { return r.cmd.Process.Pid }

func (r *replica) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// fleet is the subprocesses of one test and what they share.
type fleet struct {
	t        *testing.T
	bin      string
	dir      string
	mailDir  string
	env      []string
	replicas []*replica
}

// newFleet builds the keyrelay binary once and prepares the settings every
// replica shares: the database, a Redis database and limiter prefix of
// their own, one secret key, one development mailbox.
func newFleet(t *testing.T) *fleet {
	t.Helper()
	dir := t.TempDir()
	fl := &fleet{t: t, bin: filepath.Join(dir, "keyrelay"), dir: dir, mailDir: filepath.Join(dir, "mailbox")}
	if out, err := exec.Command("go", "build", "-o", fl.bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build keyrelay: %v\n%s", err, out)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	operator := make([]byte, 32)
	rand.Read(operator)
	providers, _ := json.Marshal(map[string]any{
		"sms":   map[string]any{"provider": devmailbox.Name, "settings": map[string]string{devmailbox.SettingDir: fl.mailDir}},
		"email": map[string]any{"provider": devmailbox.Name, "settings": map[string]string{devmailbox.SettingDir: fl.mailDir}},
	})
	// The caller's KEYRELAY_* settings would point the replicas elsewhere.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KEYRELAY_") {
			fl.env = append(fl.env, kv)
		}
	}
	fl.env = append(fl.env,
		"KEYRELAY_ENV=development",
		"KEYRELAY_DATABASE_URL="+testDB.OwnerURL,
		"KEYRELAY_APP_DATABASE_URL="+testDB.AppURL,
		fmt.Sprintf("KEYRELAY_REDIS_URL=redis://127.0.0.1:6379/%d", replicasRedisDB),
		"KEYRELAY_LIMIT_PREFIX=keyrelay:replicas:"+uuid.NewString(),
		"KEYRELAY_SECRET_KEY="+base64.StdEncoding.EncodeToString(secret),
		"KEYRELAY_OPERATOR_TOKEN="+base64.RawURLEncoding.EncodeToString(operator),
		// Only the development root key lives here: the state a fleet
		// mounts from one secret store, not per-replica state.
		"KEYRELAY_STATE_DIR="+filepath.Join(dir, "state"),
		"KEYRELAY_PLUGINS_DIR="+testPlugins,
		"KEYRELAY_DEFAULT_PROVIDERS="+string(providers),
		"KEYRELAY_AUTH_RATE_LIMIT=100000-M",
		"KEYRELAY_WORKERS=separate",
	)
	return fl
}

// start runs `keyrelay mode` in a process group of its own, so that the
// plugin processes it starts can be found, and killed, with it.
func (fl *fleet) start(name, mode string) *replica {
	t := fl.t
	t.Helper()
	r := &replica{name: name, log: filepath.Join(fl.dir, name+".log"), done: make(chan struct{})}
	env := append([]string(nil), fl.env...)
	if mode == "serve" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		r.url = "http://" + addr
		env = append(env, "KEYRELAY_LISTEN="+addr, "KEYRELAY_BASE_URL="+r.url)
	}
	logf, err := os.Create(r.log)
	if err != nil {
		t.Fatal(err)
	}
	r.cmd = exec.Command(fl.bin, mode)
	r.cmd.Env = env
	// stdout carries the development banner with the operator token: not
	// kept. The logs (stderr) never hold secrets.
	r.cmd.Stdout, r.cmd.Stderr = io.Discard, logf
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := r.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		r.cmd.Wait()
		logf.Close()
		close(r.done)
	}()
	fl.replicas = append(fl.replicas, r)
	return r
}

// waitReady waits for a serve replica's /readyz, or a worker's start.
func (fl *fleet) waitReady(r *replica) {
	t := fl.t
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if r.exited() {
			t.Fatalf("%s exited at start:\n%s", r.name, logTail(r.log))
		}
		if r.url != "" {
			if res, err := http.Get(r.url + "/readyz"); err == nil {
				res.Body.Close()
				if res.StatusCode == 200 {
					return
				}
			}
		} else if b, _ := os.ReadFile(r.log); bytes.Contains(b, []byte("workers running")) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not ready after 30s:\n%s", r.name, logTail(r.log))
}

// crash kills the replica's own process, not its group: its plugins must
// go by themselves, as they would after a real crash.
func (fl *fleet) crash(r *replica) {
	fl.t.Helper()
	if err := syscall.Kill(r.pid(), syscall.SIGKILL); err != nil {
		fl.t.Errorf("kill %s: %v", r.name, err)
		return
	}
	<-r.done
}

// stopAll ends every replica still running with SIGTERM (SIGKILL after
// 15 s), then reports any process left in their groups: the plugins must
// go with their host, whether it stopped or crashed.
func (fl *fleet) stopAll() {
	t := fl.t
	if t.Failed() {
		for _, r := range fl.replicas {
			t.Logf("%s log (end):\n%s", r.name, logTail(r.log))
		}
	}
	for _, r := range fl.replicas {
		if !r.exited() {
			syscall.Kill(r.pid(), syscall.SIGTERM)
		}
	}
	for _, r := range fl.replicas {
		select {
		case <-r.done:
		case <-time.After(15 * time.Second):
			t.Errorf("%s did not stop on SIGTERM within 15s", r.name)
			syscall.Kill(-r.pid(), syscall.SIGKILL)
			<-r.done
		}
	}
	if left := fl.waitNoOrphans(fl.replicas, 5*time.Second); len(left) > 0 {
		t.Errorf("processes outlived their replica:\n%s", strings.Join(left, "\n"))
	}
	for _, r := range fl.replicas {
		syscall.Kill(-r.pid(), syscall.SIGKILL) // whatever is left; ESRCH when nothing
	}
}

// waitNoOrphans waits until no live process is left in the groups of rs
// (whose leaders have exited) and returns those still there at the end.
func (fl *fleet) waitNoOrphans(rs []*replica, within time.Duration) []string {
	groups := map[int]string{}
	for _, r := range rs {
		groups[r.pid()] = r.name
	}
	var left []string
	for deadline := time.Now().Add(within); ; time.Sleep(100 * time.Millisecond) {
		out, err := exec.Command("ps", "-eo", "pid=,pgid=,stat=,args=").Output()
		if err != nil {
			fl.t.Errorf("ps: %v", err)
			return nil
		}
		left = left[:0]
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 4 {
				continue
			}
			pgid, _ := strconv.Atoi(f[1])
			// A zombie has exited; only its parent's reaping is missing.
			if name, ok := groups[pgid]; ok && !strings.HasPrefix(f[2], "Z") {
				left = append(left, name+": "+strings.Join(f[3:], " ")+" (pid "+f[0]+")")
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
	}
}

// logTail is the end of a log, for a failure message.
func logTail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// replicaCaller is an HTTP caller that, unlike client, reports transport errors: a
// replica may die under it.
type replicaCaller struct {
	http  *http.Client
	token string
}

func (c *replicaCaller) send(base, method, path string, body any, idemKey string) (int, []byte, http.Header, error) {
	var rdr io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return 0, nil, nil, err
		}
		rdr = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, base+path, rdr)
	if err != nil {
		return 0, nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if idemKey != "" {
		req.Header.Set(headerIdempotencyKey, idemKey)
	}
	res, err := c.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	return res.StatusCode, raw, res.Header, err
}

// must sends and fails the test unless the answer is want.
func (c *replicaCaller) must(t *testing.T, want int, base, method, path string, body any) map[string]any {
	t.Helper()
	status, raw, _, err := c.send(base, method, path, body, uuid.NewString())
	if err != nil || status != want {
		t.Fatalf("%s %s%s: %d %s %v, want %d", method, base, path, status, raw, err, want)
	}
	var m map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, raw)
		}
	}
	return m
}

var loginCode = regexp.MustCompile(`sign-in code is (\d{6})`)

// mailboxCode waits for the sign-in code the workers put in the mailbox
// (by SMS or email, as the tenant's policy says).
func (fl *fleet) mailboxCode(t *testing.T, tenantID string) string {
	t.Helper()
	mb := devmailbox.Open(fl.mailDir)
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		recs, err := mb.List(context.Background(), devmailbox.Query{TenantID: tenantID})
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range recs {
			if m := loginCode.FindStringSubmatch(rec.Text); m != nil {
				return m[1]
			}
		}
	}
	t.Fatalf("no sign-in code of tenant %s reached the mailbox", tenantID)
	return ""
}

// reminderZone is a zone where it is now between 10:00 and 21:00, so a
// return reminder of an access starting in seconds and ending within the
// hour is due at the start (returnReminderAt: 09:00 is past, and no local
// midnight falls inside the access).
func reminderZone(t *testing.T) string {
	t.Helper()
	for _, z := range []string{"Europe/Paris", "UTC", "America/New_York", "America/Los_Angeles", "Asia/Tokyo", "Asia/Kolkata", "Australia/Sydney", "Pacific/Honolulu"} {
		loc, err := time.LoadLocation(z)
		if err != nil {
			t.Fatal(err)
		}
		if h := time.Now().In(loc).Hour(); h >= 10 && h < 21 {
			return z
		}
	}
	t.Fatal("no zone in the list is between 10:00 and 21:00")
	return ""
}

// bookingTry is one booking the load asked for, and what became of it.
type bookingTry struct {
	keyID    string
	startsAt time.Time
	id       string // set when a replica answered 201
	replayed bool   // the 201 was the stored answer of an earlier try
	tries    int
	lastErr  string    // why it has no 201, when it has none
	at       time.Time // when the 201 came
	// straddled: a try was on its way while the replicas were being
	// killed, so it may have been cut off mid-request (reported: such a
	// booking must still end with one 201 and one row).
	straddled bool
}

// TestReplicasSurviveKill runs two serve and two worker processes on one
// database and Redis, drives bookings and pickups through both serve
// replicas, SIGKILLs one serve and one worker mid-load and checks that no
// acknowledged write is lost, every message is delivered once, reminders
// fire once and the brute-force budget is shared by the replicas.
func TestReplicasSurviveKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four keyrelay processes")
	}
	began := time.Now()
	fl := newFleet(t)
	t.Cleanup(fl.stopAll)

	// The first serve alone: in development it migrates and seeds the demo
	// tenant, which two replicas starting at once would race for.
	t.Logf("built in %v", time.Since(began).Round(time.Millisecond))
	serveA := fl.start("serve-a", "serve")
	fl.waitReady(serveA)
	t.Logf("serve-a ready after %v", time.Since(began).Round(time.Millisecond))
	serveB, workerA, workerB := fl.start("serve-b", "serve"), fl.start("worker-a", "worker"), fl.start("worker-b", "worker")
	for _, r := range []*replica{serveB, workerA, workerB} {
		fl.waitReady(r)
	}
	bases := []string{serveA.url, serveB.url}
	t.Logf("4 replicas up in %v (build included)", time.Since(began).Round(time.Millisecond))

	// A tenant signed up on one replica, signed in through the other.
	anon := &replicaCaller{http: &http.Client{Timeout: 10 * time.Second}}
	email := "owner-" + uuid.NewString()[:8] + "@example.com"
	const password = "correct-horse-42"
	su := anon.must(t, 201, serveA.url, "POST", "/api/v1/signup", map[string]any{"company": "Replicas", "name": "Olive Owner", "email": email, "phone": "+14155550100", "password": password})
	tenantID := su["tenant_id"].(string)
	ch := anon.must(t, 202, serveB.url, "POST", "/api/v1/auth/login", map[string]any{"email": email, "password": password})["challenge_id"].(string)
	tok := anon.must(t, 200, serveA.url, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": fl.mailboxCode(t, tenantID)})["token"].(string)
	owner := &replicaCaller{http: &http.Client{Timeout: 10 * time.Second}, token: tok}

	zone := reminderZone(t)
	boxID := owner.must(t, 201, serveA.url, "POST", "/api/v1/boxes", map[string]any{"name": "Load box", "model": "MS5", "timezone": zone, "bins": 12})["id"].(string)
	guardBoxID := owner.must(t, 201, serveB.url, "POST", "/api/v1/boxes", map[string]any{"name": "Guard box", "model": "MS5", "timezone": zone, "bins": 12})["id"].(string)
	keys := map[int]string{}
	for bin := 1; bin <= 12; bin++ {
		keys[bin] = owner.must(t, 201, bases[bin%2], "POST", "/api/v1/keys", map[string]any{"name": fmt.Sprintf("Car %d", bin), "fob_serial": "FOB-" + uuid.NewString()[:8], "box_id": boxID, "bin": bin})["id"].(string)
	}
	provision := func(boxID, tokenVia, provisionVia string) *box.Client {
		pt := owner.must(t, 201, tokenVia, "POST", "/api/v1/boxes/"+boxID+"/provisioning-token", nil)["token"].(string)
		b, err := box.Provision(context.Background(), provisionVia, pt, &http.Client{Timeout: 10 * time.Second})
		if err != nil {
			t.Fatalf("provision: %v", err)
		}
		return b
	}
	// The key of the bookings cut off by the kill (below), in a bin of the
	// guard box so that no pickup touches it.
	const victimBin = 13
	keys[victimBin] = owner.must(t, 201, serveB.url, "POST", "/api/v1/keys", map[string]any{"name": "Victim car", "fob_serial": "FOB-" + uuid.NewString()[:8], "box_id": guardBoxID, "bin": 1})["id"].(string)
	loadBox := provision(boxID, serveA.url, serveB.url)
	guardBox := provision(guardBoxID, serveB.url, serveA.url)

	now := time.Now().UTC()
	booking := func(bin int, start, end time.Time, reminder bool, phone int) map[string]any {
		return map[string]any{"key_id": keys[bin], "kind": "one_time",
			"visitor":   map[string]any{"name": "Vic Visitor", "phone": fmt.Sprintf("+1415555%04d", phone), "email": "vic@example.com"},
			"starts_at": start.Format(time.RFC3339), "ends_at": end.Format(time.RFC3339), "return_reminder": reminder, "notify_via": "sms"}
	}
	// Bins 1–4: live accesses whose codes the box keeps using.
	var codes []string
	for bin := 1; bin <= 4; bin++ {
		codes = append(codes, owner.must(t, 201, bases[bin%2], "POST", "/api/v1/bookings", booking(bin, now.Add(-time.Minute), now.Add(50*time.Minute), false, bin))["code"].(string))
	}
	// Bins 5–8: accesses starting in seconds with the return reminder on:
	// due at their start, which falls after the kill.
	reminderAt := now.Add(8 * time.Second).Truncate(time.Second)
	reminderBookings := map[string]bool{}
	for bin := 5; bin <= 8; bin++ {
		id := owner.must(t, 201, bases[bin%2], "POST", "/api/v1/bookings", booking(bin, reminderAt, reminderAt.Add(40*time.Minute), true, bin))["id"].(string)
		reminderBookings[id] = true
	}

	// The load: bookings on bins 9–12 in windows of their own (no two
	// overlap), each with an Idempotency-Key it keeps across retries, and
	// pickups, both alternating between the serve replicas. A call that
	// finds its replica dead goes to the other, as a load balancer would.
	const nBookings, creators, victims = 60, 3, 3
	tries := make([]*bookingTry, nBookings+victims)
	var created, afterKillOK atomic.Int64
	var killing, killed atomic.Bool
	// create makes booking i, its first try on replica first%2, retrying
	// with the same Idempotency-Key on the other replica and again, as a
	// client would: while an earlier try may still hold the key (409 "in
	// progress"; a try cut off by the kill holds it for the mark's lease)
	// and on 5xx or a dead replica.
	create := func(i, first int) {
		bin, slot := 9+i%4, i/4
		if i >= nBookings {
			bin, slot = victimBin, i-nBookings
		}
		start := now.Add(2*time.Hour + time.Duration(slot)*2*time.Hour).Truncate(time.Second)
		bt := &bookingTry{keyID: keys[bin], startsAt: start}
		tries[i] = bt
		body := booking(bin, start, start.Add(time.Hour), false, 100+i)
		key := uuid.NewString()
		// A client's patience: three leases of the mark a try cut off by
		// the kill leaves behind.
		giveUp := time.Now().Add(30 * time.Second)
		for ; time.Now().Before(giveUp) && bt.id == ""; bt.tries++ {
			before := !killed.Load()
			status, raw, h, err := owner.send(bases[(first+bt.tries)%2], "POST", "/api/v1/bookings", body, key)
			if before && killing.Load() {
				bt.straddled = true
			}
			switch {
			case err != nil:
				bt.lastErr = err.Error()
			case status == 201:
				var m map[string]any
				json.Unmarshal(raw, &m)
				bt.id, _ = m["id"].(string)
				bt.at = time.Now()
				bt.replayed = h.Get("Idempotent-Replayed") == "true"
			case status == 409 && bytes.Contains(raw, []byte(headerIdempotencyKey)) || status >= 500:
				bt.lastErr = fmt.Sprintf("%d %s", status, raw)
				time.Sleep(200 * time.Millisecond)
			default:
				// Any other answer is final (an overlap's 409, a 4xx).
				bt.lastErr = fmt.Sprintf("%d %s", status, raw)
				return
			}
		}
		if bt.id != "" {
			created.Add(1)
			if killed.Load() {
				afterKillOK.Add(1)
			}
		}
	}
	var wg sync.WaitGroup
	for g := range creators {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < nBookings; i += creators {
				create(i, i)
				time.Sleep(120 * time.Millisecond)
			}
		}()
	}
	var opens, pickupTries atomic.Int64
	var pickupErrs []string
	var perrMu sync.Mutex
	loadDone := make(chan struct{})
	var pwg sync.WaitGroup
	for g := range 2 {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for n := g; ; n += 2 {
				select {
				case <-loadDone:
					return
				default:
				}
				var res exchange.Result
				var got string
				for try := range 4 {
					b := *loadBox
					b.BaseURL = bases[(n+try)%2]
					pickupTries.Add(1)
					status, raw, err := b.Request(context.Background(), "POST", "/box/v1/pickups", map[string]any{"code": codes[n%len(codes)]})
					if err == nil && status == 200 && json.Unmarshal(raw, &res) == nil {
						got = ""
						break
					}
					got = fmt.Sprintf("%d %s %v", status, raw, err)
				}
				switch {
				case got != "":
					perrMu.Lock()
					pickupErrs = append(pickupErrs, got)
					perrMu.Unlock()
				case res.Result == "open":
					opens.Add(1)
				default:
					perrMu.Lock()
					pickupErrs = append(pickupErrs, fmt.Sprintf("pickup: %+v", res))
					perrMu.Unlock()
				}
				time.Sleep(60 * time.Millisecond)
			}
		}()
	}

	// The brute-force budget, while the load runs: wrong codes sent to
	// both replicas at once. Counted apart, each replica would allow 20.
	var denied, cooled [2]int
	var gwg sync.WaitGroup
	for i := range 2 {
		gwg.Add(1)
		go func() {
			defer gwg.Done()
			b := *guardBox
			b.BaseURL = bases[i]
			for n := 0; n < 40; n++ {
				status, raw, err := b.Request(context.Background(), "POST", "/box/v1/pickups", map[string]any{"code": fmt.Sprintf("%d%09d", i+1, n)})
				if err != nil {
					t.Errorf("guard box via %s: %v", b.BaseURL, err)
					return
				}
				var r exchange.Result
				switch {
				case status == 429:
					cooled[i]++
					return
				case status == 200 && json.Unmarshal(raw, &r) == nil && r.Result == "denied" && r.Reason == exchange.UnknownCode:
					denied[i]++
				default:
					t.Errorf("wrong code via replica %d: %d %s", i, status, raw)
					return
				}
			}
		}()
	}
	gwg.Wait()
	if denied[0]+denied[1] != 20 || cooled[0] != 1 || cooled[1] != 1 {
		t.Errorf("wrong codes: %v denied and %v cooled down per replica, want 20 denied in all, then 429 on both", denied, cooled)
	}

	// Kill one of each mid-load.
	for created.Load() < nBookings/3 {
		time.Sleep(10 * time.Millisecond)
	}
	// Bookings cut off on serve-a as it dies: held up on their key's row
	// until it is dead, so they have written nothing and their marks on
	// their Idempotency-Keys stay until the lease lapses. Their retries on
	// serve-b must then run, once.
	lock := ownerConn(t)
	defer lock.Close(context.Background())
	if _, err := lock.Exec(context.Background(), "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(context.Background(), "SELECT 1 FROM keys WHERE id = $1 FOR UPDATE", keys[victimBin]); err != nil {
		t.Fatal(err)
	}
	for v := range victims {
		wg.Add(1)
		go func() { defer wg.Done(); create(nBookings+v, 0) }()
	}
	for waiting, since := int64(0), time.Now(); waiting < victims; time.Sleep(20 * time.Millisecond) {
		waiting = ownerCount(t, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%FOR SHARE OF k%'`)
		if time.Since(since) > time.Minute {
			t.Fatalf("%d of %d victim bookings reached the key's lock", waiting, victims)
		}
	}
	killedAt := time.Now()
	killing.Store(true)
	var kw sync.WaitGroup
	for _, r := range []*replica{serveA, workerA} {
		kw.Add(1)
		go func() { defer kw.Done(); fl.crash(r) }()
	}
	kw.Wait()
	killed.Store(true)
	if _, err := lock.Exec(context.Background(), "COMMIT"); err != nil {
		t.Fatal(err)
	}
	stranded := ownerCount(t, `SELECT count(*) FROM outbox WHERE tenant_id = $1 AND claimed_by IS NOT NULL`, tenantID)
	t.Logf("SIGKILLed serve-a and worker-a after %d of %d bookings; %d message claims held at that moment", created.Load(), nBookings, stranded)
	wg.Wait()
	close(loadDone)
	pwg.Wait()

	// The crashed replicas' plugins went with them.
	if left := fl.waitNoOrphans([]*replica{serveA, workerA}, 5*time.Second); len(left) > 0 {
		t.Errorf("plugins outlived their crashed host:\n%s", strings.Join(left, "\n"))
	}
	if serveB.exited() || workerB.exited() {
		t.Fatalf("a surviving replica died:\n%s\n%s", logTail(serveB.log), logTail(workerB.log))
	}

	// Every 201 is in the database, once; a try that never got one is
	// either absent or there exactly once (never twice: the same window).
	var acked []string
	unanswered, replayed, straddled := 0, 0, 0
	for i, bt := range tries {
		if bt.straddled {
			straddled++
		}
		if i >= nBookings && bt.id != "" {
			t.Logf("booking %d, cut off by the kill, acknowledged %v after it on try %d", i, bt.at.Sub(killedAt).Round(time.Millisecond), bt.tries+1)
		}
		if bt.id != "" {
			acked = append(acked, bt.id)
			if bt.replayed {
				replayed++
			}
			continue
		}
		// Even a try cut off between its COMMIT and the answer's copy in
		// Redis leaves the answer in PostgreSQL (idempotency_answers), so
		// its retry replays the 201 instead of meeting its own booking as
		// an overlap: every booking ends with one.
		unanswered++
		n := ownerCount(t, `SELECT count(*) FROM bookings WHERE tenant_id = $1 AND key_id = $2 AND starts_at = $3`, tenantID, bt.keyID, bt.startsAt)
		t.Errorf("booking %d (in flight at the kill: %v) got no 201 after %d tries (last: %s); in the database: %d", i, bt.straddled, bt.tries, bt.lastErr, n)
	}
	t.Logf("%d bookings had a try on its way during the kill; %d 201s were replays", straddled, replayed)
	// Each booking once: the windows are distinct, so a booking there
	// twice would be one request run twice.
	for _, bt := range tries {
		if n := ownerCount(t, `SELECT count(*) FROM bookings WHERE tenant_id = $1 AND key_id = $2 AND starts_at = $3`, tenantID, bt.keyID, bt.startsAt); n != 1 {
			t.Errorf("booking of key %s at %s is in the database %d times", bt.keyID, bt.startsAt.Format(time.RFC3339), n)
		}
	}
	if got := ownerCount(t, `SELECT count(*) FROM bookings WHERE tenant_id = $1 AND id = ANY($2::uuid[])`, tenantID, acked); got != int64(len(acked)) {
		t.Errorf("%d of %d acknowledged bookings are in the database", got, len(acked))
	}
	if afterKillOK.Load() == 0 {
		t.Error("no booking was acknowledged after the kill: the survivors did not take the load")
	}
	perrMu.Lock()
	if len(pickupErrs) > 0 || opens.Load() == 0 {
		t.Errorf("%d pickups opened; failures: %v", opens.Load(), pickupErrs)
	}
	perrMu.Unlock()
	// An open the box was told of was recorded (more may be: a pickup
	// committed as its replica died, then retried).
	if n := ownerCount(t, `SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND action = 'pickup.opened'`, tenantID); n < opens.Load() || n > pickupTries.Load() {
		t.Errorf("%d pickup.opened audit entries for %d opens acknowledged in %d calls", n, opens.Load(), pickupTries.Load())
	}

	// Every message delivered, the crashed worker's included: a claim it
	// held is reclaimed when its lease ends, so this may wait that long.
	converged := waitDelivered(t, tenantID, reminderAt, 150*time.Second)
	t.Logf("every message delivered %v after the kill", converged.Sub(killedAt).Round(time.Millisecond))
	msgs := outboxRows(t, tenantID)
	byID := map[string]outboxRow{}
	kinds := map[string]int{}
	for _, m := range msgs {
		byID[m.ID] = m
		kinds[m.Kind]++
	}
	recs, err := devmailbox.Open(fl.mailDir).List(context.Background(), devmailbox.Query{TenantID: tenantID})
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]int{}
	byProviderID := map[string]int{}
	for _, rec := range recs {
		stored[rec.ID]++
		byProviderID[rec.ProviderMessageID]++
		m, ok := byID[rec.ID]
		switch {
		case !ok:
			t.Errorf("the mailbox holds message %s, which is not in the outbox", rec.ID)
		case m.ProviderMessageID == nil || *m.ProviderMessageID != rec.ProviderMessageID:
			t.Errorf("message %s: outbox has provider id %v, mailbox %s", rec.ID, m.ProviderMessageID, rec.ProviderMessageID)
		}
	}
	retried := 0
	for _, m := range msgs {
		if stored[m.ID] != 1 {
			t.Errorf("message %s (%s) is in the mailbox %d times", m.ID, m.Kind, stored[m.ID])
		}
		if m.ProviderMessageID != nil && byProviderID[*m.ProviderMessageID] != 1 {
			t.Errorf("provider message id %s stored %d times", *m.ProviderMessageID, byProviderID[*m.ProviderMessageID])
		}
		if m.Attempts > 1 {
			retried++
		}
	}
	bookingsInDB := ownerCount(t, `SELECT count(*) FROM bookings WHERE tenant_id = $1`, tenantID)
	if int64(kinds["access_instructions"]) != bookingsInDB {
		t.Errorf("%d access instructions for %d bookings", kinds["access_instructions"], bookingsInDB)
	}
	if kinds["box_cooldown"] != 1 {
		t.Errorf("%d box cool-down alerts, want 1 whichever replica saw the 20th failure", kinds["box_cooldown"])
	}

	// Each reminder went once, at or after its time.
	reminders := 0
	for _, m := range msgs {
		if m.Kind != "return_reminder" {
			continue
		}
		reminders++
		if !reminderBookings[ownerString(t, `SELECT booking_id::text FROM booking_reminders WHERE tenant_id = $1 AND outbox_id = $2`, tenantID, m.ID)] {
			t.Errorf("reminder %s is not one of the reminder bookings'", m.ID)
		}
		if m.SentAt == nil || m.SentAt.Before(reminderAt.Add(-time.Second)) {
			t.Errorf("reminder %s sent at %v, due %v", m.ID, m.SentAt, reminderAt)
		}
	}
	if reminders != len(reminderBookings) {
		t.Errorf("%d return reminders, want %d (one per booking)", reminders, len(reminderBookings))
	}
	t.Logf("%d bookings acknowledged (%d after the kill, %d replayed answers, %d unanswered), %d pickups opened in %d calls, %d messages delivered once (%d needed more than one attempt), %d reminders; %v in all",
		len(acked), afterKillOK.Load(), replayed, unanswered, opens.Load(), pickupTries.Load(), len(msgs), retried, reminders, time.Since(began).Round(time.Millisecond))
}

// outboxRow is what the test reads of a message.
type outboxRow struct {
	ID                string
	Kind              string
	Status            string
	ProviderMessageID *string
	Attempts          int
	SentAt            *time.Time
}

func outboxRows(t *testing.T, tenantID string) []outboxRow {
	t.Helper()
	conn := ownerConn(t)
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), `SELECT id::text, kind, status, provider_message_id, attempts, sent_at FROM outbox WHERE tenant_id = $1`, tenantID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var r outboxRow
		if err := rows.Scan(&r.ID, &r.Kind, &r.Status, &r.ProviderMessageID, &r.Attempts, &r.SentAt); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitDelivered waits until every message of the tenant is sent or
// delivered (not before the reminders' time) and returns when that was.
func waitDelivered(t *testing.T, tenantID string, notBefore time.Time, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var waiting []string
		for _, m := range outboxRows(t, tenantID) {
			switch m.Status {
			case "sent", "delivered":
			case "queued":
				waiting = append(waiting, m.Kind+" "+m.ID)
			default:
				t.Fatalf("message %s (%s) ended %s", m.ID, m.Kind, m.Status)
			}
		}
		if len(waiting) == 0 && time.Now().After(notBefore) {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, %d messages still queued: %v", within, len(waiting), waiting)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func ownerConn(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), testDB.OwnerURL)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func ownerCount(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	return ownerQuery[int64](t, sql, args...)
}

func ownerString(t *testing.T, sql string, args ...any) string {
	t.Helper()
	var s string
	conn := ownerConn(t)
	defer conn.Close(context.Background())
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&s); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}
