package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	webhookjobs "github.com/keyrelay/keyrelay/jobs/webhooks"
	"github.com/keyrelay/keyrelay/tenants/exchange"
)

// receiver is a tenant's webhook endpoint: it keeps what it was sent and
// answers with reply (200 when nil).
type receiver struct {
	srv   *httptest.Server
	mu    sync.Mutex
	got   []received
	reply func(n int) int // n: 1-based index of the request
	delay time.Duration
}

type received struct {
	Header http.Header
	Body   []byte
	Event  struct {
		ID        string         `json:"id"`
		Type      string         `json:"type"`
		CreatedAt time.Time      `json:"created_at"`
		TenantID  string         `json:"tenant_id"`
		Data      map[string]any `json:"data"`
	}
}

func newReceiver(t *testing.T, reply func(n int) int) *receiver {
	t.Helper()
	r := &receiver{reply: reply}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var got received
		got.Header, got.Body = req.Header.Clone(), body
		if err := json.Unmarshal(body, &got.Event); err != nil {
			t.Errorf("receiver: body is not an event: %v: %s", err, body)
		}
		r.mu.Lock()
		r.got = append(r.got, got)
		n := len(r.got)
		r.mu.Unlock()
		time.Sleep(r.delay)
		status := 200
		if r.reply != nil {
			status = r.reply(n)
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) requests() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

// ofType returns the requests carrying events of typ.
func (r *receiver) ofType(typ string) []received {
	var out []received
	for _, g := range r.requests() {
		if g.Event.Type == typ {
			out = append(out, g)
		}
	}
	return out
}

// verify checks a request as a receiver should: the HMAC-SHA256 of
// "timestamp.body" under the secret, a timestamp close to now, and the
// event id in the headers matching the body's.
func verify(t *testing.T, secret string, g received) {
	t.Helper()
	ts := g.Header.Get("X-Keyrelay-Timestamp")
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || time.Since(time.Unix(secs, 0)).Abs() > 5*time.Minute {
		t.Fatalf("timestamp %q is not a recent unix time", ts)
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "." + string(g.Body)))
	want := "v1=" + hex.EncodeToString(mac.Sum(nil))
	if sig := g.Header.Get("X-Keyrelay-Signature"); !hmac.Equal([]byte(sig), []byte(want)) {
		t.Fatalf("signature %q, want %q", sig, want)
	}
	if id := g.Header.Get("X-Keyrelay-Event-Id"); id == "" || id != g.Event.ID || g.Header.Get("Idempotency-Key") != id {
		t.Fatalf("event id header %q, idempotency key %q, body id %q", id, g.Header.Get("Idempotency-Key"), g.Event.ID)
	}
	if g.Header.Get("X-Keyrelay-Event") != g.Event.Type {
		t.Fatalf("event header %q, body type %q", g.Header.Get("X-Keyrelay-Event"), g.Event.Type)
	}
}

// endpoint registers url for events and returns its id and secret.
func endpoint(t *testing.T, c *client, url string, events ...string) (string, string) {
	t.Helper()
	body := map[string]any{"url": url, "description": "rental system"}
	if len(events) > 0 {
		body["events"] = events
	}
	m := c.expect(t, 201, "POST", "/api/v1/webhooks", body).JSON(t)
	return m["id"].(string), m["secret"].(string)
}

func deliveriesOf(t *testing.T, c *client, endpointID string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, it := range c.expect(t, 200, "GET", "/api/v1/webhooks/"+endpointID+"/deliveries", nil).JSON(t)["items"].([]any) {
		out = append(out, it.(map[string]any))
	}
	return out
}

// dispatcher is the workers' dispatcher with retries in milliseconds, for
// tests that step it with Pass.
func (s *server) dispatcher(t *testing.T, mutate ...func(*webhookjobs.Config)) *webhookjobs.Dispatcher {
	t.Helper()
	cfg := s.app.webhookConfig()
	cfg.BaseDelay, cfg.MaxDelay, cfg.Timeout = 20*time.Millisecond, 40*time.Millisecond, 2*time.Second
	for _, m := range mutate {
		m(&cfg)
	}
	return webhookjobs.New(s.app.db, s.app.scope, s.app.webhooks, cfg, discardLogger())
}

// pump runs passes until cond holds or the deadline passes.
func pump(t *testing.T, d *webhookjobs.Dispatcher, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met before the deadline")
		}
		if _, err := d.Pass(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestWebhookEndpoints(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	id, secret := endpoint(t, f.Owner, "http://127.0.0.1:9/hook", "booking.created", "key.overdue")
	if !strings.HasPrefix(secret, "whsec_") || len(secret) < 40 {
		t.Fatalf("secret %q", secret)
	}

	t.Run("OKListWithoutSecret", func(t *testing.T) {
		r := f.Owner.expect(t, 200, "GET", "/api/v1/webhooks", nil)
		if strings.Contains(string(r.Body), secret) || strings.Contains(string(r.Body), "secret") {
			t.Fatalf("the list shows the secret: %s", r.Body)
		}
		items := r.JSON(t)["items"].([]any)
		if len(items) != 1 || items[0].(map[string]any)["id"] != id {
			t.Fatalf("items %v", items)
		}
		got := f.Owner.expect(t, 200, "GET", "/api/v1/webhooks/"+id, nil).JSON(t)
		if ev := got["events"].([]any); len(ev) != 2 || ev[0] != "booking.created" || got["disabled_at"] != nil || got["secret"] != nil {
			t.Fatalf("endpoint %v", got)
		}
	})
	t.Run("OKAllEventsByDefault", func(t *testing.T) {
		all, _ := endpoint(t, f.Owner, "https://hooks.example.com/all")
		got := f.Owner.expect(t, 200, "GET", "/api/v1/webhooks/"+all, nil).JSON(t)
		if ev := got["events"].([]any); len(ev) < 10 {
			t.Fatalf("events %v, want all", ev)
		}
	})
	t.Run("ErrBadInput", func(t *testing.T) {
		for _, body := range []map[string]any{
			{"url": ""},
			{"url": "not a url"},
			{"url": "ftp://hooks.example.com/x"},
			{"url": "https://user:pw@hooks.example.com/x"},
			{"url": "https://hooks.example.com/x", "events": []string{"key.stolen"}},
			{"url": "https://hooks.example.com/x", "description": strings.Repeat("d", 201)},
		} {
			problemOf(t, f.Owner.do(t, "POST", "/api/v1/webhooks", body), 422)
		}
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/webhooks", map[string]any{"url": "https://hooks.example.com/x", "secret": "mine"}), 400)
		if n := len(f.Owner.expect(t, 200, "GET", "/api/v1/webhooks", nil).JSON(t)["items"].([]any)); n != 2 {
			t.Errorf("%d endpoints after refused creations, want 2", n)
		}
	})
	t.Run("ErrForbiddenRoles", func(t *testing.T) {
		key := f.Owner.expect(t, 201, "POST", "/api/v1/api-keys", map[string]any{"name": "desk", "role": "staff"}).JSON(t)["key"].(string)
		staff := &client{s: s, http: http.DefaultClient, token: key}
		problemOf(t, staff.do(t, "GET", "/api/v1/webhooks", nil), 403)
		problemOf(t, staff.do(t, "POST", "/api/v1/webhooks", map[string]any{"url": "https://hooks.example.com/x"}), 403)
		problemOf(t, staff.do(t, "DELETE", "/api/v1/webhooks/"+id, nil), 403)
		problemOf(t, staff.do(t, "GET", "/api/v1/webhooks/"+id+"/deliveries", nil), 403)
		problemOf(t, s.client().do(t, "GET", "/api/v1/webhooks", nil), 401)
	})
	t.Run("ErrOtherTenant", func(t *testing.T) {
		g := s.signup(t)
		problemOf(t, g.Owner.do(t, "GET", "/api/v1/webhooks/"+id, nil), 404)
		problemOf(t, g.Owner.do(t, "DELETE", "/api/v1/webhooks/"+id, nil), 404)
		problemOf(t, g.Owner.do(t, "GET", "/api/v1/webhooks/"+id+"/deliveries", nil), 404)
		if n := len(g.Owner.expect(t, 200, "GET", "/api/v1/webhooks", nil).JSON(t)["items"].([]any)); n != 0 {
			t.Errorf("another tenant lists %d endpoints", n)
		}
		f.Owner.expect(t, 200, "GET", "/api/v1/webhooks/"+id, nil)
	})
	t.Run("OKDeleteDisables", func(t *testing.T) {
		f.Owner.expect(t, 204, "DELETE", "/api/v1/webhooks/"+id, nil)
		f.Owner.expect(t, 204, "DELETE", "/api/v1/webhooks/"+id, nil)
		got := f.Owner.expect(t, 200, "GET", "/api/v1/webhooks/"+id, nil).JSON(t)
		if got["disabled_at"] == nil {
			t.Fatalf("after delete: %v", got)
		}
		problemOf(t, f.Owner.do(t, "DELETE", "/api/v1/webhooks/"+uuid.NewString(), nil), 404)
	})
}

// TestWebhookDelivered runs the workers as deployed: a booking created
// reaches the tenant's receiver, signed.
func TestWebhookDelivered(t *testing.T) {
	s := startServer(t, func(c *Config) { c.Workers = true })
	f := s.signup(t)
	rcv := newReceiver(t, nil)
	id, secret := endpoint(t, f.Owner, rcv.srv.URL+"/keyrelay?token=abc", "booking.created")
	st := s.newSite(t, f, 1)
	bookingID, code := st.book(t, 1, time.Hour, 2*time.Hour)

	deadline := time.Now().Add(10 * time.Second)
	for len(rcv.requests()) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	got := rcv.ofType("booking.created")
	if len(got) != 1 {
		t.Fatalf("receiver got %d booking.created events (all: %d)", len(got), len(rcv.requests()))
	}
	verify(t, secret, got[0])
	ev := got[0].Event
	if ev.TenantID != f.ID.String() || ev.Data["booking_id"] != bookingID || ev.Data["key_id"] != st.keys[1] || ev.Data["status"] != "upcoming" {
		t.Errorf("event %+v", ev)
	}
	if strings.Contains(string(got[0].Body), code) || strings.Contains(string(got[0].Body), "+1415") || strings.Contains(string(got[0].Body), "vic@") {
		t.Errorf("the event carries the code or the visitor's contact: %s", got[0].Body)
	}
	deadline = time.Now().Add(5 * time.Second)
	var ds []map[string]any
	for time.Now().Before(deadline) {
		if ds = deliveriesOf(t, f.Owner, id); len(ds) == 1 && ds[0]["status"] == "delivered" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(ds) != 1 || ds[0]["status"] != "delivered" || ds[0]["event_id"] != ev.ID || ds[0]["attempts"] != float64(1) {
		t.Fatalf("deliveries %v", ds)
	}
	if log := ds[0]["attempt_log"].([]any); len(log) != 1 || log[0].(map[string]any)["status_code"] != float64(200) {
		t.Errorf("attempt log %v", log)
	}
	// Not subscribed: a revoke makes no delivery.
	f.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+bookingID+"/revoke", nil)
	if ds := deliveriesOf(t, f.Owner, id); len(ds) != 1 {
		t.Errorf("%d deliveries after an event the endpoint does not want", len(ds))
	}
}

func TestWebhookRetries(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	flaky := newReceiver(t, func(n int) int {
		if n == 1 {
			return 500
		}
		return 200
	})
	refusing := newReceiver(t, func(int) int { return 400 })
	throttling := newReceiver(t, func(n int) int {
		if n == 1 {
			return 429
		}
		return 204
	})
	flakyID, secret := endpoint(t, f.Owner, flaky.srv.URL, "booking.created")
	refusingID, _ := endpoint(t, f.Owner, refusing.srv.URL, "booking.created")
	throttlingID, _ := endpoint(t, f.Owner, throttling.srv.URL, "booking.created")
	st := s.newSite(t, f, 1)
	st.book(t, 1, time.Hour, 2*time.Hour)
	d := s.dispatcher(t)

	pump(t, d, func() bool { return len(flaky.requests()) >= 2 && len(throttling.requests()) >= 2 })
	// A few more passes: nothing is sent again.
	for range 5 {
		if _, err := d.Pass(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	got := flaky.requests()
	if len(got) != 2 {
		t.Fatalf("flaky endpoint got %d requests, want 2 (a 500, then the 200)", len(got))
	}
	verify(t, secret, got[1])
	if got[0].Event.ID != got[1].Event.ID || string(got[0].Body) != string(got[1].Body) {
		t.Errorf("the retry is not the same event: %s / %s", got[0].Body, got[1].Body)
	}
	ds := deliveriesOf(t, f.Owner, flakyID)
	if len(ds) != 1 || ds[0]["status"] != "delivered" || ds[0]["attempts"] != float64(2) {
		t.Fatalf("flaky deliveries %v", ds)
	}
	log := ds[0]["attempt_log"].([]any)
	if len(log) != 2 || log[0].(map[string]any)["status_code"] != float64(500) || log[0].(map[string]any)["outcome"] != "retry" ||
		log[1].(map[string]any)["status_code"] != float64(200) || log[1].(map[string]any)["outcome"] != "delivered" {
		t.Errorf("attempt log %v", log)
	}

	if n := len(refusing.requests()); n != 1 {
		t.Errorf("a 400 was tried %d times, want once", n)
	}
	ds = deliveriesOf(t, f.Owner, refusingID)
	if len(ds) != 1 || ds[0]["status"] != "failed" || ds[0]["last_status_code"] != float64(400) || ds[0]["next_attempt_at"] != nil {
		t.Errorf("refused deliveries %v", ds)
	}
	if ds := deliveriesOf(t, f.Owner, throttlingID); len(ds) != 1 || ds[0]["status"] != "delivered" || ds[0]["attempts"] != float64(2) {
		t.Errorf("a 429 is retried: %v", ds)
	}
	if ds := f.Owner.expect(t, 200, "GET", "/api/v1/webhooks/"+flakyID+"/deliveries?status=failed", nil).JSON(t)["items"].([]any); len(ds) != 0 {
		t.Errorf("status filter: %v", ds)
	}

	t.Run("ErrTimeoutRetried", func(t *testing.T) {
		slow := newReceiver(t, nil)
		slow.delay = 500 * time.Millisecond
		slowID, _ := endpoint(t, f.Owner, slow.srv.URL, "booking.updated")
		bookingID, _ := st.book(t, 1, 3*time.Hour, 4*time.Hour)
		f.Owner.expect(t, 200, "PATCH", "/api/v1/bookings/"+bookingID, map[string]any{"return_reminder": false})
		quick := s.dispatcher(t, func(c *webhookjobs.Config) { c.Timeout, c.MaxAttempts = 100*time.Millisecond, 2 })
		pump(t, quick, func() bool {
			ds := deliveriesOf(t, f.Owner, slowID)
			return len(ds) == 1 && ds[0]["status"] == "failed"
		})
		ds := deliveriesOf(t, f.Owner, slowID)
		log := ds[0]["attempt_log"].([]any)
		if len(log) != 2 || log[0].(map[string]any)["outcome"] != "retry" || log[0].(map[string]any)["status_code"] != nil ||
			!strings.Contains(ds[0]["last_error"].(string), "gave up after 2 attempts") {
			t.Errorf("timeouts: %v", ds)
		}
		if strings.Contains(ds[0]["last_error"].(string), "/") && strings.Contains(ds[0]["last_error"].(string), slow.srv.URL+"/") {
			t.Errorf("the error shows the URL's path: %v", ds[0]["last_error"])
		}
	})
	t.Run("ErrPrivateAddressInProduction", func(t *testing.T) {
		inside := newReceiver(t, nil)
		insideID, _ := endpoint(t, f.Owner, inside.srv.URL, "booking.created")
		st.book(t, 1, 5*time.Hour, 6*time.Hour)
		strict := s.dispatcher(t, func(c *webhookjobs.Config) { c.AllowPrivate = false })
		pump(t, strict, func() bool {
			ds := deliveriesOf(t, f.Owner, insideID)
			return len(ds) == 1 && ds[0]["status"] == "failed"
		})
		if n := len(inside.requests()); n != 0 {
			t.Errorf("a loopback receiver got %d requests from a production dispatcher", n)
		}
		if ds := deliveriesOf(t, f.Owner, insideID); !strings.Contains(ds[0]["last_error"].(string), "not a public address") {
			t.Errorf("error %v", ds[0]["last_error"])
		}
	})
}

func TestWebhookKeyEvents(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	rcv := newReceiver(t, nil)
	_, secret := endpoint(t, f.Owner, rcv.srv.URL, "key.picked_up", "key.returned")
	st := s.newSite(t, f, 2)
	bookingID, code := st.book(t, 2, -time.Minute, time.Hour)
	r := st.call(t, "/box/v1/pickups", map[string]any{"code": code})
	wantOpen(t, r, 2)
	st.events(t, exchange.Event{Type: "bin_opened", Bin: 2}, exchange.Event{Type: "key_taken", Bin: 2, AccessID: r.AccessID}, exchange.Event{Type: "bin_closed", Bin: 2})
	st.call(t, "/box/v1/dropoffs", map[string]any{"code": code})
	st.events(t, exchange.Event{Type: "bin_closed", Bin: 2, FobSerial: fob(st.fobs[2])})

	d := s.dispatcher(t)
	pump(t, d, func() bool { return len(rcv.requests()) >= 2 })
	up, back := rcv.ofType("key.picked_up"), rcv.ofType("key.returned")
	if len(up) != 1 || len(back) != 1 || len(rcv.requests()) != 2 {
		t.Fatalf("picked up %d, returned %d, all %d; want one each", len(up), len(back), len(rcv.requests()))
	}
	for _, g := range append(up, back...) {
		verify(t, secret, g)
		if g.Event.Data["key_id"] != st.keys[2] || g.Event.Data["booking_id"] != bookingID || g.Event.Data["box_id"] != st.boxID || g.Event.Data["bin"] != float64(2) {
			t.Errorf("%s data %v", g.Event.Type, g.Event.Data)
		}
	}
	if up[0].Event.ID == back[0].Event.ID {
		t.Error("two events share an id")
	}
}

func TestKeyOverdue(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	rcv := newReceiver(t, nil)
	hookID, secret := endpoint(t, f.Owner, rcv.srv.URL, "key.overdue")
	st := s.newSite(t, f, 3)
	ctx := context.Background()
	pickUp := func(start, end time.Duration) string {
		t.Helper()
		id, code := st.book(t, 3, start, end)
		r := st.call(t, "/box/v1/pickups", map[string]any{"code": code})
		wantOpen(t, r, 3)
		st.events(t, exchange.Event{Type: "key_taken", Bin: 3, AccessID: r.AccessID}, exchange.Event{Type: "bin_closed", Bin: 3})
		return id
	}
	// The access ended a moment ago (after the pickup) and the key is
	// still out.
	endNow := func(bookingID string) {
		t.Helper()
		time.Sleep(20 * time.Millisecond)
		ownerExec(t, `UPDATE bookings SET ends_at = now() - interval '10 milliseconds' WHERE id = $1`, bookingID)
		ownerExec(t, `UPDATE keys SET out_until = now() - interval '10 milliseconds' WHERE id = $1`, st.keys[3])
	}
	sweep := func() {
		t.Helper()
		if _, err := s.app.overdue.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
	}
	overdueEvents := func() int {
		n := 0
		for _, d := range deliveriesOf(t, f.Owner, hookID) {
			if d["event"] == "key.overdue" {
				n++
			}
		}
		return n
	}

	first := pickUp(-time.Minute, time.Hour)
	sweep()
	if n := s.alertsOf(t, st, "key_overdue"); n != 0 {
		t.Fatalf("%d overdue alerts before the end", n)
	}
	endNow(first)
	sweep()
	sweep()
	if n := s.alertsOf(t, st, "key_overdue"); n != 1 {
		t.Fatalf("%d overdue alerts after two sweeps, want 1", n)
	}
	for _, m := range s.outboxOf(t, f.ID) {
		if m.Kind == "key_overdue" && (m.Recipient != f.Email || m.Data["key"] != "Car 3" || m.Data["visitor"] != "Vic Visitor") {
			t.Errorf("alert %+v %v", m, m.Data)
		}
	}
	if n := overdueEvents(); n != 1 {
		t.Fatalf("%d key.overdue deliveries, want 1", n)
	}
	if w := st.keyState(t, 3); w["state"] != "overdue" {
		t.Fatalf("whereabouts %v", w)
	}
	d := s.dispatcher(t)
	pump(t, d, func() bool { return len(rcv.requests()) >= 1 })
	g := rcv.ofType("key.overdue")
	if len(g) != 1 {
		t.Fatalf("receiver got %d key.overdue events", len(g))
	}
	verify(t, secret, g[0])
	if g[0].Event.Data["key_id"] != st.keys[3] || g[0].Event.Data["booking_id"] != first {
		t.Errorf("data %v", g[0].Event.Data)
	}

	// Returned, then out again with a new booking that runs late: a new
	// incident, a new alert.
	st.events(t, exchange.Event{Type: "bin_closed", Bin: 3, FobSerial: fob(st.fobs[3])})
	sweep()
	second := pickUp(-time.Second, time.Hour)
	sweep()
	if n := s.alertsOf(t, st, "key_overdue"); n != 1 {
		t.Fatalf("%d overdue alerts while the second access runs, want 1", n)
	}
	endNow(second)
	sweep()
	sweep()
	if n := s.alertsOf(t, st, "key_overdue"); n != 2 {
		t.Fatalf("%d overdue alerts after a second late return, want 2", n)
	}
	if n := overdueEvents(); n != 2 {
		t.Fatalf("%d key.overdue deliveries, want 2", n)
	}
}

// TestOpenAPIWebhooks drives the webhook operations through the real
// server, checking requests and answers against the document.
func TestOpenAPIWebhooks(t *testing.T) {
	doc := loadOpenAPI(t, mergedOpenAPI(t))
	s := startServer(t, func(c *Config) { c.BodyLimit = 16 << 10 })
	sc := &specCheck{t: t, srv: s, url: s.url, doc: doc, ops: documentedOps(doc)}
	f := s.signup(t)
	owner := caller{token: f.Owner.token}
	staff := caller{token: f.Owner.expect(t, 201, "POST", "/api/v1/api-keys", map[string]any{"name": "desk", "role": "staff"}).JSON(t)["key"].(string)}
	var anon caller

	rcv := newReceiver(t, nil)
	created := sc.call(owner, 201, true, "POST", "/api/v1/webhooks", map[string]any{"url": rcv.srv.URL, "events": []string{"booking.created"}, "description": "rentals"},
		"Idempotency-Key", uuid.NewString()).JSON(t)
	id := created["id"].(string)
	sc.call(owner, 201, true, "POST", "/api/v1/webhooks", map[string]any{"url": "https://hooks.example.com/all"})
	sc.call(owner, 422, true, "POST", "/api/v1/webhooks", map[string]any{"url": "gopher://x"})
	sc.call(owner, 422, false, "POST", "/api/v1/webhooks", map[string]any{"url": "https://hooks.example.com/x", "events": []string{"nope"}})
	sc.call(owner, 400, false, "POST", "/api/v1/webhooks", map[string]any{"url": "https://hooks.example.com/x", "extra": 1})
	sc.call(owner, 413, false, "POST", "/api/v1/webhooks", `{"url":"`+strings.Repeat("x", 20<<10)+`"}`)
	sc.call(staff, 403, true, "POST", "/api/v1/webhooks", map[string]any{"url": "https://hooks.example.com/x"})
	sc.call(anon, 401, true, "POST", "/api/v1/webhooks", map[string]any{"url": "https://hooks.example.com/x"})
	sc.call(owner, 200, true, "GET", "/api/v1/webhooks", nil)
	sc.call(owner, 200, true, "GET", "/api/v1/webhooks?limit=1", nil)
	sc.call(owner, 422, false, "GET", "/api/v1/webhooks?limit=0", nil)
	sc.call(staff, 403, true, "GET", "/api/v1/webhooks", nil)
	sc.call(owner, 200, true, "GET", "/api/v1/webhooks/"+id, nil)
	sc.call(owner, 404, true, "GET", "/api/v1/webhooks/"+uuid.NewString(), nil)

	st := s.newSite(t, f, 1)
	st.book(t, 1, time.Hour, 2*time.Hour)
	sc.call(owner, 200, true, "GET", "/api/v1/webhooks/"+id+"/deliveries", nil)
	pump(t, s.dispatcher(t), func() bool { return len(rcv.requests()) == 1 })
	sc.call(owner, 200, true, "GET", "/api/v1/webhooks/"+id+"/deliveries?status=delivered", nil)
	sc.call(owner, 422, false, "GET", "/api/v1/webhooks/"+id+"/deliveries?status=lost", nil)
	sc.call(staff, 403, true, "GET", "/api/v1/webhooks/"+id+"/deliveries", nil)
	sc.call(owner, 404, true, "GET", "/api/v1/webhooks/"+uuid.NewString()+"/deliveries", nil)

	sc.call(staff, 403, true, "DELETE", "/api/v1/webhooks/"+id, nil)
	sc.call(owner, 204, true, "DELETE", "/api/v1/webhooks/"+id, nil, "Idempotency-Key", uuid.NewString())
	sc.call(owner, 404, true, "DELETE", "/api/v1/webhooks/"+uuid.NewString(), nil)
}

// TestWebhookBookingRevoked: an endpoint subscribed to booking.revoked
// receives the revocation, signed, with the booking's ids and its new
// status, and nothing it did not subscribe to.
func TestWebhookBookingRevoked(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	rcv := newReceiver(t, nil)
	id, secret := endpoint(t, f.Owner, rcv.srv.URL, "booking.revoked")
	st := s.newSite(t, f, 1)
	bookingID, _ := st.book(t, 1, time.Hour, 2*time.Hour)
	f.Owner.expect(t, 200, "POST", "/api/v1/bookings/"+bookingID+"/revoke", nil)

	pump(t, s.dispatcher(t), func() bool { return len(rcv.requests()) >= 1 })
	got := rcv.ofType("booking.revoked")
	if len(got) != 1 || len(rcv.requests()) != 1 {
		t.Fatalf("receiver got %d booking.revoked events, %d in all; want just the one", len(got), len(rcv.requests()))
	}
	verify(t, secret, got[0])
	ev := got[0].Event
	if ev.TenantID != f.ID.String() || ev.Data["booking_id"] != bookingID || ev.Data["key_id"] != st.keys[1] || ev.Data["status"] != "revoked" || ev.Data["kind"] != "one_time" {
		t.Errorf("event %+v", ev)
	}
	ds := deliveriesOf(t, f.Owner, id)
	if len(ds) != 1 || ds[0]["status"] != "delivered" || ds[0]["event_id"] != ev.ID || ds[0]["event"] != "booking.revoked" {
		t.Fatalf("deliveries %v", ds)
	}
}
