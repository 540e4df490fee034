package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/migrations/dbtest"
	"github.com/keyrelay/keyrelay/plugins/host"
	"github.com/keyrelay/keyrelay/plugins/sdk"
	"github.com/keyrelay/keyrelay/tenants/accounts"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// The package's tests share one migrated database; every test makes its own
// tenants, so they never see each other's rows.
var testDB *dbtest.DB

// testPlugins holds the bundled provider plugins, built once.
var testPlugins string

// testRedisDB is this package's own Redis database: asynq's queues have
// fixed names, and another package's workers must not take our tasks.
// KEYRELAY_TEST_REDIS_DB moves it, for running the package from two
// checkouts at once.
var testRedisDB = func() int {
	if n, err := strconv.Atoi(os.Getenv("KEYRELAY_TEST_REDIS_DB")); err == nil {
		return n
	}
	return 5
}()

func TestMain(m *testing.M) {
	var err error
	testDB, err = dbtest.Create("app")
	if err != nil {
		fmt.Fprintln(os.Stderr, "app tests:", err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "keyrelay-app-plugins-")
	if err == nil {
		testPlugins = dir
		err = buildBundledPlugins(context.Background(), dir, discardLogger())
	}
	if err == nil {
		err = buildTestPlugin(dir, "crashonce")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "app tests: plugins:", err)
		testDB.Drop()
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(testPlugins)
	if err := testDB.Drop(); err != nil {
		fmt.Fprintln(os.Stderr, "app tests: drop database:", err)
	}
	os.Exit(code)
}

func testConfig(t testing.TB) Config {
	t.Helper()
	env := map[string]string{
		"KEYRELAY_DATABASE_URL":     testDB.OwnerURL,
		"KEYRELAY_APP_DATABASE_URL": testDB.AppURL,
		"KEYRELAY_STATE_DIR":        t.TempDir(),
		"KEYRELAY_AUTH_RATE_LIMIT":  "100000-M",
		"KEYRELAY_PLUGINS_DIR":      testPlugins,
		"KEYRELAY_REDIS_URL":        fmt.Sprintf("redis://127.0.0.1:6379/%d", testRedisDB),
		"KEYRELAY_WORKERS":          "separate", // tests that need them say so
	}
	cfg, err := LoadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	// Each server counts guesses apart, so one test's failures cannot lock
	// another's accounts; the SMS budgets would stop a test that signs in
	// often, and have tests of their own.
	cfg.LimitPrefix = "keyrelay:test:" + uuid.NewString()
	cfg.SMSPerPhoneHour, cfg.SMSPerPhoneDay = 1000, 1000
	return cfg
}

// server is a real keyrelay HTTP server on a loopback port.
type server struct {
	t   testing.TB
	app *App
	url string
}

// startServer runs the app on 127.0.0.1 until the test ends. mutate may
// adjust the configuration first.
func startServer(t testing.TB, mutate ...func(*Config)) *server {
	t.Helper()
	var logTo io.Writer = io.Discard
	if testing.Verbose() {
		logTo = os.Stderr
	}
	return startServerLogging(t, logTo, mutate...)
}

// startServerLogging is startServer with the logs written to logTo.
func startServerLogging(t testing.TB, logTo io.Writer, mutate ...func(*Config)) *server {
	t.Helper()
	cfg := testConfig(t)
	for _, m := range mutate {
		m(&cfg)
	}
	log := slog.New(slog.NewJSONHandler(logTo, nil))
	a, err := NewApp(context.Background(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- a.serveOn(ctx, ln) }()
	running := 1
	if cfg.Workers {
		running++
		go func() { done <- a.runWorkers(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for i := 0; i < running; i++ {
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		}
		a.Close()
	})
	return &server{t: t, app: a, url: "http://" + ln.Addr().String()}
}

// client is one caller: it keeps its bearer token and cookies.
type client struct {
	s     *server
	http  *http.Client
	token string
}

func (s *server) client() *client {
	jar, _ := cookiejar.New(nil)
	return &client{s: s, http: &http.Client{Jar: jar, Timeout: 20 * time.Second}}
}

type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("response is not a JSON object: %v: %s", err, r.Body)
	}
	return m
}

// do sends body (marshalled unless it is a string) and returns the answer.
func (c *client) do(t testing.TB, method, path string, body any, headers ...string) response {
	t.Helper()
	var rdr io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rdr = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rdr = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, c.s.url+path, rdr)
	if err != nil {
		t.Fatal(err)
	}
	if rdr != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := c.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	return response{Status: res.StatusCode, Header: res.Header, Body: raw}
}

// expect fails the test unless the answer has status want.
func (c *client) expect(t testing.TB, want int, method, path string, body any, headers ...string) response {
	t.Helper()
	r := c.do(t, method, path, body, headers...)
	if r.Status != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.Status, want, r.Body)
	}
	return r
}

var seq atomic.Int64

// tenantFixture is a signed-up tenant with its owner signed in.
type tenantFixture struct {
	ID       uuid.UUID
	OwnerID  uuid.UUID
	Email    string
	Password string
	Owner    *client
}

func (s *server) signup(t testing.TB) tenantFixture {
	t.Helper()
	n := seq.Add(1)
	f := tenantFixture{Email: fmt.Sprintf("owner%d-%s@example.com", n, uuid.NewString()[:8]), Password: "correct-horse-42"}
	c := s.client()
	r := c.expect(t, 201, "POST", "/api/v1/signup", map[string]any{"company": fmt.Sprintf("Rentals %d", n), "name": "Olive Owner", "email": f.Email, "phone": "+14155550100", "password": f.Password})
	m := r.JSON(t)
	f.ID = uuid.MustParse(m["tenant_id"].(string))
	f.OwnerID = uuid.MustParse(m["user_id"].(string))
	f.Owner = s.login(t, f.Email, f.Password)
	return f
}

// login signs in through both steps, reading the code from the outbox as
// the relay would hand it to the provider.
func (s *server) login(t testing.TB, email, password string) *client {
	t.Helper()
	c := s.client()
	r := s.signIn(t, c, email, password)
	c.token = r.JSON(t)["token"].(string)
	return c
}

// signIn runs both steps for c and returns the answer that carries the
// session (token and cookie).
func (s *server) signIn(t testing.TB, c *client, email, password string) response {
	t.Helper()
	r := c.do(t, "POST", "/api/v1/auth/login", map[string]any{"email": email, "password": password})
	switch r.Status {
	case 200:
	case 202:
		challenge := r.JSON(t)["challenge_id"].(string)
		r = c.expect(t, 200, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": challenge, "code": s.lastCode(t, challenge)})
	default:
		t.Fatalf("login: %d %s", r.Status, r.Body)
	}
	return r
}

// tenantOfChallenge reads the tenant id a challenge token carries.
func tenantOfChallenge(t testing.TB, challenge string) uuid.UUID {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(challenge, "krc_"))
	if err != nil || len(raw) < 16 {
		t.Fatalf("challenge %q: %v", challenge, err)
	}
	id, _ := uuid.FromBytes(raw[:16])
	return id
}

// lastCode returns the newest login code sent in the challenge's tenant.
func (s *server) lastCode(t testing.TB, challenge string) string {
	t.Helper()
	for _, row := range s.outboxOf(t, tenantOfChallenge(t, challenge)) {
		if row.Kind == "login_code" {
			return row.Data["code"]
		}
	}
	t.Fatal("no login code in the outbox")
	return ""
}

// outboxOf returns the tenant's outbox rows, newest first, read through the
// application role inside the tenant's scope, the way the relay will.
func (s *server) outboxOf(t testing.TB, tenantID uuid.UUID) []outbox.Row {
	t.Helper()
	var rows []outbox.Row
	err := s.app.scope.Do(context.Background(), tenantID, func(ctx context.Context) error {
		var err error
		rows, err = s.app.outbox.List(ctx, 100)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// ownerExec runs SQL as the database owner, bypassing row-level security:
// for fixtures that the API cannot make, such as a session gone idle.
func ownerExec(t testing.TB, sql string, args ...any) int64 {
	t.Helper()
	return testDB.Exec(t, sql, args...)
}

// problemOf checks that r is a problem+json document of status and returns it.
func problemOf(t testing.TB, r response, status int) map[string]any {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %s", r.Status, status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/problem+json") {
		t.Fatalf("Content-Type %q, want application/problem+json", ct)
	}
	p := r.JSON(t)
	if p["type"] == nil || p["title"] == nil || p["status"] != float64(status) {
		t.Fatalf("incomplete problem: %s", r.Body)
	}
	return p
}

// resetLink returns the token of the newest reset or invitation email to to.
func (s *server) resetToken(t testing.TB, tenantID uuid.UUID, to string) string {
	t.Helper()
	for _, row := range s.outboxOf(t, tenantID) {
		if row.Recipient == to && (row.Kind == "password_reset" || row.Kind == "invitation") {
			link := row.Data["link"]
			_, tok, ok := strings.Cut(link, "token=")
			if !ok {
				t.Fatalf("link without token: %q", link)
			}
			return tok
		}
	}
	t.Fatalf("no reset email to %s in the outbox", to)
	return ""
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func listenLoopback(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// TenantOfTokenForTest names the tenant a session token belongs to.
func TenantOfTokenForTest(tok string) (string, bool) {
	id, ok := accounts.TenantOfToken(tok)
	return id.String(), ok
}

// buildTestPlugin builds app/testdata/<name> into dir with its manifest.
func buildTestPlugin(dir, name string) error {
	out := filepath.Join(dir, name)
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	bin := filepath.Join(out, name)
	if msg, err := exec.Command("go", "build", "-o", bin, "./testdata/"+name).CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %w: %s", name, err, msg)
	}
	m, err := host.NewManifest(bin, name, "test", sdk.ChannelSMS, sdk.ChannelEmail)
	if err != nil {
		return err
	}
	return m.WriteFile(out)
}
