package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/recover"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/migrations/dbtest"
)

func TestIdempotencyKey(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	body := map[string]any{"name": "Ida", "email": "ida-" + uuid.NewString()[:8] + "@example.com", "role": "staff"}
	key := uuid.NewString()
	first := f.Owner.expect(t, 201, "POST", "/api/v1/users", body, "Idempotency-Key", key)
	t.Run("OKReplay", func(t *testing.T) {
		again := f.Owner.expect(t, 201, "POST", "/api/v1/users", body, "Idempotency-Key", key)
		if !bytes.Equal(first.Body, again.Body) {
			t.Fatalf("replay differs:\n%s\n%s", first.Body, again.Body)
		}
		if again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatal("replay not marked")
		}
		if n := ownerExec(t, "SELECT 1 FROM users WHERE email = $1", body["email"]); n != 1 {
			t.Fatalf("%d users created, want 1", n)
		}
	})
	t.Run("ErrOtherBody", func(t *testing.T) {
		other := map[string]any{"name": "Ida", "email": "other-" + uuid.NewString()[:8] + "@example.com", "role": "staff"}
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/users", other, "Idempotency-Key", key), 422)
	})
	t.Run("ScopedToCaller", func(t *testing.T) {
		// Another session using the same key runs its own request.
		c := s.login(t, f.Email, f.Password)
		problemOf(t, c.do(t, "POST", "/api/v1/users", body, "Idempotency-Key", key), 409) // the email exists now
	})
	t.Run("OKConcurrentRunsOnce", func(t *testing.T) {
		b := map[string]any{"name": "Con", "email": "con-" + uuid.NewString()[:8] + "@example.com", "role": "staff"}
		k := uuid.NewString()
		var wg sync.WaitGroup
		statuses := make(chan int, 8)
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				statuses <- f.Owner.do(t, "POST", "/api/v1/users", b, "Idempotency-Key", k).Status
			}()
		}
		wg.Wait()
		close(statuses)
		for st := range statuses {
			if st != 201 && st != 409 {
				t.Errorf("status %d, want 201 or 409 (in progress)", st)
			}
		}
		if n := ownerExec(t, "SELECT 1 FROM users WHERE email = $1", b["email"]); n != 1 {
			t.Fatalf("%d users created, want 1", n)
		}
	})
	t.Run("FailureNotKept", func(t *testing.T) {
		k := uuid.NewString()
		bad := map[string]any{"name": "", "email": "x", "role": "staff"}
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/users", bad, "Idempotency-Key", k), 422)
		r := f.Owner.do(t, "POST", "/api/v1/users", bad, "Idempotency-Key", k)
		if r.Header.Get("Idempotent-Replayed") != "true" || r.Status != 422 {
			t.Fatalf("a 4xx answer is replayed too (status %d)", r.Status)
		}
	})
}

func TestHTTPConventions(t *testing.T) {
	s := startServer(t)
	c := s.client()
	t.Run("RequestID", func(t *testing.T) {
		r := c.do(t, "GET", "/healthz", nil)
		if len(r.Header.Get("X-Request-Id")) < 16 {
			t.Fatalf("no request id: %v", r.Header)
		}
		r = c.do(t, "GET", "/healthz", nil, "X-Request-Id", "trace-123")
		if r.Header.Get("X-Request-Id") != "trace-123" {
			t.Fatal("caller's request id not kept")
		}
		r = c.do(t, "GET", "/healthz", nil, "X-Request-Id", "bad id with spaces")
		if strings.Contains(r.Header.Get("X-Request-Id"), " ") {
			t.Fatal("unsafe request id echoed")
		}
	})
	t.Run("ProblemForUnknownRoute", func(t *testing.T) {
		p := problemOf(t, c.do(t, "GET", "/api/v1/nope", nil), 404)
		if p["request_id"] == "" {
			t.Fatal("problem without request id")
		}
	})
	t.Run("Health", func(t *testing.T) {
		c.expect(t, 200, "GET", "/healthz", nil)
		m := c.expect(t, 200, "GET", "/readyz", nil).JSON(t)
		if m["ready"] != true {
			t.Fatalf("readyz = %v", m)
		}
	})
}

func TestReadyzReportsRedisDown(t *testing.T) {
	p := dbtest.NewProxy(t, "127.0.0.1:6379")
	s := startServer(t, func(c *Config) { c.RedisURL = "redis://" + p.Addr() + "/0" })
	c := s.client()
	c.expect(t, 200, "GET", "/readyz", nil)
	p.SetDown(true)
	m := c.do(t, "GET", "/readyz", nil)
	if m.Status != 503 || !strings.Contains(string(m.Body), `"redis":"unreachable"`) || !strings.Contains(string(m.Body), `"postgres":"ok"`) {
		t.Fatalf("readyz with Redis down: %d %s", m.Status, m.Body)
	}
	c.expect(t, 200, "GET", "/healthz", nil) // alive all the same
}

func TestLogsHoldNoSecrets(t *testing.T) {
	var buf syncBuffer
	s := startServerLogging(t, &buf)
	f := s.signup(t)
	c := s.client()
	c.expect(t, 202, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": f.Email})
	resetTok := s.resetToken(t, f.ID, f.Email)
	c.expect(t, 204, "POST", "/api/v1/auth/password/reset", map[string]any{"token": resetTok, "new_password": "fresh-secret-77"})
	key := s.login(t, f.Email, "fresh-secret-77").expect(t, 201, "POST", "/api/v1/api-keys", map[string]any{"name": "k", "role": "staff"}).JSON(t)["key"].(string)
	c.do(t, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": "wrong-secret-55"})
	logs := buf.String()
	if !strings.Contains(logs, `"route":"/api/v1/auth/login"`) {
		t.Fatalf("requests were not logged: %s", logs)
	}
	for _, secret := range []string{f.Password, "fresh-secret-77", "wrong-secret-55", resetTok, f.Owner.token, key, key[4:20]} {
		if strings.Contains(logs, secret) {
			t.Errorf("a secret appears in the logs: %.12s…", secret)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestGracefulShutdown stops the server while a request is in flight: the
// request still gets its answer.
func TestGracefulShutdown(t *testing.T) {
	cfg := testConfig(t)
	a, err := NewApp(context.Background(), cfg, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ln := listenLoopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.serveOn(ctx, ln) }()
	s := &server{t: t, app: a, url: "http://" + ln.Addr().String()}

	answer := make(chan int, 1)
	go func() {
		// "forgot password" takes at least 300 ms by design.
		answer <- s.client().do(t, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": "slow@example.com"}).Status
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	if st := <-answer; st != 202 {
		t.Fatalf("in-flight request got %d during shutdown", st)
	}
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
}

// TestIdempotencyEndsWithTheSession: a stored answer (here an API key's
// secret, shown once) is not replayed to a credential that has ended.
func TestIdempotencyEndsWithTheSession(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	c := s.login(t, f.Email, f.Password)
	body := map[string]any{"name": "ci", "role": "staff"}
	k := uuid.NewString()
	c.expect(t, 201, "POST", "/api/v1/api-keys", body, "Idempotency-Key", k)
	c.expect(t, 204, "POST", "/api/v1/auth/logout", nil)
	r := c.do(t, "POST", "/api/v1/api-keys", body, "Idempotency-Key", k)
	if r.Status != 401 || strings.Contains(string(r.Body), "kra_") {
		t.Fatalf("ended session got %d %s", r.Status, r.Body)
	}
}

// TestIdempotencyLease: a request slower than the lease keeps its key
// (its replica renews the mark), and a retry meanwhile is told it is in
// progress, then gets the stored answer. The mark of a request whose
// replica died lapses after one lease: TestReplicasSurviveKill.
func TestIdempotencyLease(t *testing.T) {
	const lease = 300 * time.Millisecond
	s := startServer(t, func(c *Config) { c.IdempotencyLease = lease })
	f := s.signup(t)
	body := map[string]any{"name": "Slow", "email": "slow-" + uuid.NewString()[:8] + "@example.com", "role": "staff"}
	key := uuid.NewString()

	// Hold the insert up for several leases.
	conn := ownerConn(t)
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "BEGIN; LOCK TABLE users IN SHARE MODE"); err != nil {
		t.Fatal(err)
	}
	first := make(chan response, 1)
	go func() { first <- f.Owner.do(t, "POST", "/api/v1/users", body, "Idempotency-Key", key) }()
	time.Sleep(4 * lease)
	retry := f.Owner.do(t, "POST", "/api/v1/users", body, "Idempotency-Key", key)
	if retry.Status != 409 || !strings.Contains(string(retry.Body), "still in progress") {
		t.Fatalf("retry while the first request runs past its lease: %d %s, want 409 in progress", retry.Status, retry.Body)
	}
	if _, err := conn.Exec(context.Background(), "COMMIT"); err != nil {
		t.Fatal(err)
	}
	r := <-first
	if r.Status != 201 {
		t.Fatalf("first request: %d %s", r.Status, r.Body)
	}
	again := f.Owner.expect(t, 201, "POST", "/api/v1/users", body, "Idempotency-Key", key)
	if again.Header.Get("Idempotent-Replayed") != "true" || !bytes.Equal(again.Body, r.Body) {
		t.Fatalf("the retry after the answer was not its replay: %s", again.Body)
	}
	if n := ownerExec(t, "SELECT 1 FROM users WHERE email = $1", body["email"]); n != 1 {
		t.Fatalf("%d users created, want 1", n)
	}
}

// TestIdempotencyPanicDropsMark: a handler that panics answers 500, and its
// mark goes with it (no renewal keeps it alive): the retry runs.
func TestIdempotencyPanicDropsMark(t *testing.T) {
	const lease = 300 * time.Millisecond
	s := startServer(t, func(c *Config) { c.IdempotencyLease = lease })
	calls := 0
	h := fiber.New()
	h.Use(recover.New())
	h.Post("/flaky", s.app.idempotent, func(c *fiber.Ctx) error {
		calls++
		if calls == 1 {
			panic("first try fails")
		}
		return c.Status(201).SendString("made")
	})
	key := uuid.NewString()
	send := func() *http.Response {
		req := httptest.NewRequest("POST", "/flaky", strings.NewReader("{}"))
		req.Header.Set(headerIdempotencyKey, key)
		res, err := h.Test(req, -1)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := send(); res.StatusCode != 500 {
		t.Fatalf("panicking try: %d, want 500", res.StatusCode)
	}
	time.Sleep(2 * lease) // a renewal would have kept the mark by now
	if res := send(); res.StatusCode != 201 || res.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("retry after the panic: %d (replayed %q), want a fresh 201", res.StatusCode, res.Header.Get("Idempotent-Replayed"))
	}
	if res := send(); res.StatusCode != 201 || res.Header.Get("Idempotent-Replayed") != "true" || calls != 2 {
		t.Fatalf("third try: %d (replayed %q) after %d calls, want the replay of the second", res.StatusCode, res.Header.Get("Idempotent-Replayed"), calls)
	}
}

// TestIdempotencyDurable: a replica that dies after COMMIT, before Redis
// has the answer, leaves it in PostgreSQL; the retry replays it instead of
// creating a second box. Even with Redis's records lost altogether, the
// retry cannot commit a second box.
func TestIdempotencyDurable(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	ctx := context.Background()
	name := "Durable " + uuid.NewString()[:8]
	body := map[string]any{"name": name, "model": "MS5", "timezone": "Europe/Paris", "bins": 4}
	raw, _ := json.Marshal(body)
	bodyHash := sha256.Sum256(raw)
	key := uuid.NewString()
	first := f.Owner.expect(t, 201, "POST", "/api/v1/boxes", body, "Idempotency-Key", key)

	// The request's Redis records: its answer and the note that it ran.
	var answerKey, ranKey string
	keys, err := s.app.redis.Keys(ctx, "keyrelay:idem:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		v, err := s.app.redis.Get(ctx, k).Bytes()
		var rec idemRecord
		if err == nil && json.Unmarshal(v, &rec) == nil && rec.BodyHash == hex.EncodeToString(bodyHash[:]) {
			answerKey = k
		}
	}
	if answerKey == "" {
		t.Fatal("no Redis record of the answer")
	}
	ranKey = "{" + answerKey + "}:ran"
	if n, err := s.app.redis.Exists(ctx, ranKey).Result(); err != nil || n != 1 {
		t.Fatalf("no note that the key ran: %v %v", n, err)
	}
	boxes := func() int64 {
		return ownerQuery[int64](t, `SELECT count(*) FROM boxes WHERE tenant_id = $1 AND name = $2`, f.ID, name)
	}

	t.Run("OKReplayedFromPostgreSQL", func(t *testing.T) {
		// As if the replica died between COMMIT and storing the answer,
		// and its mark lapsed.
		s.app.redis.Del(ctx, answerKey)
		again := f.Owner.expect(t, 201, "POST", "/api/v1/boxes", body, "Idempotency-Key", key)
		if again.Header.Get("Idempotent-Replayed") != "true" || !bytes.Equal(again.Body, first.Body) {
			t.Fatalf("retry: replayed %q, body %s, want the first answer %s", again.Header.Get("Idempotent-Replayed"), again.Body, first.Body)
		}
		if n := boxes(); n != 1 {
			t.Fatalf("%d boxes, want 1", n)
		}
		// Redis has it again.
		third := f.Owner.expect(t, 201, "POST", "/api/v1/boxes", body, "Idempotency-Key", key)
		if third.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatal("third try not replayed")
		}
	})
	t.Run("ErrOtherBody", func(t *testing.T) {
		s.app.redis.Del(ctx, answerKey)
		other := map[string]any{"name": name + " other", "model": "MS5", "timezone": "Europe/Paris", "bins": 4}
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/boxes", other, "Idempotency-Key", key), 422)
	})
	t.Run("OKRedisLost", func(t *testing.T) {
		// Both records gone (a Redis failover that lost them): the retry
		// runs, and its commit meets the first answer's row.
		s.app.redis.Del(ctx, answerKey, ranKey)
		r := f.Owner.do(t, "POST", "/api/v1/boxes", body, "Idempotency-Key", key)
		if r.Status != 409 {
			t.Fatalf("retry with Redis's records lost: %d %s, want 409 (answered meanwhile)", r.Status, r.Body)
		}
		t.Logf("retry with Redis's records lost: %d %s", r.Status, r.Body)
		if n := boxes(); n != 1 {
			t.Fatalf("%d boxes, want 1", n)
		}
		again := f.Owner.expect(t, 201, "POST", "/api/v1/boxes", body, "Idempotency-Key", key)
		if again.Header.Get("Idempotent-Replayed") != "true" || !bytes.Equal(again.Body, first.Body) {
			t.Fatalf("the next retry: replayed %q, body %s", again.Header.Get("Idempotent-Replayed"), again.Body)
		}
	})
}
