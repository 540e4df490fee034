package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestConfigDefaults(t *testing.T) {
	dir := t.TempDir()
	cfg, err := LoadConfig(envOf(map[string]string{"KEYRELAY_STATE_DIR": dir}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DatabaseURL != defaultDatabaseURL || cfg.RedisURL != defaultRedisURL || cfg.Listen != defaultListen || cfg.BaseURL != defaultBaseURL {
		t.Fatalf("defaults: %+v", cfg)
	}
	if !strings.Contains(cfg.AppDatabaseURL, "keyrelay_app@127.0.0.1:5432/keyrelay") {
		t.Fatalf("app URL %q", cfg.AppDatabaseURL)
	}
	if len(cfg.SecretKey) != 32 || cfg.OperatorToken == "" {
		t.Fatal("development secrets not generated")
	}
	info, err := os.Stat(filepath.Join(dir, "secret-key"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v %v", info, err)
	}
	if len(cfg.RootPublicKey) != 32 || len(cfg.RootPrivateKey) != 64 {
		t.Fatal("development root key not generated")
	}
	again, _ := LoadConfig(envOf(map[string]string{"KEYRELAY_STATE_DIR": dir}))
	if !bytes.Equal(again.SecretKey, cfg.SecretKey) || again.OperatorToken != cfg.OperatorToken || !bytes.Equal(again.RootPublicKey, cfg.RootPublicKey) {
		t.Fatal("development secrets change between starts")
	}
}

func TestConfigProductionRefusesDevDefaults(t *testing.T) {
	_, err := LoadConfig(envOf(map[string]string{"KEYRELAY_ENV": "production", "KEYRELAY_STATE_DIR": t.TempDir()}))
	if err == nil {
		t.Fatal("production started with development defaults")
	}
	for _, name := range []string{"KEYRELAY_SECRET_KEY", "KEYRELAY_OPERATOR_TOKEN", "KEYRELAY_BASE_URL", "KEYRELAY_PLUGINS_DIR", "KEYRELAY_DEFAULT_PROVIDERS", "KEYRELAY_ROOT_PUBLIC_KEY"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
	t.Run("OK", func(t *testing.T) {
		_, err := LoadConfig(envOf(map[string]string{
			"KEYRELAY_ENV":               "production",
			"KEYRELAY_SECRET_KEY":        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
			"KEYRELAY_OPERATOR_TOKEN":    strings.Repeat("t", 40),
			"KEYRELAY_BASE_URL":          "https://keys.example.com",
			"KEYRELAY_PLUGINS_DIR":       "/opt/keyrelay/plugins",
			"KEYRELAY_DEFAULT_PROVIDERS": `{"sms":{"provider":"httpsms","settings":{}},"email":{"provider":"smtp","settings":{}}}`,
			"KEYRELAY_ROOT_PUBLIC_KEY":   "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
		}))
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ErrBadRootKey", func(t *testing.T) {
		_, err := LoadConfig(envOf(map[string]string{"KEYRELAY_ROOT_PUBLIC_KEY": "c2hvcnQ=", "KEYRELAY_STATE_DIR": t.TempDir()}))
		if err == nil || !strings.Contains(err.Error(), "KEYRELAY_ROOT_PUBLIC_KEY") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("ErrBadSecretKey", func(t *testing.T) {
		_, err := LoadConfig(envOf(map[string]string{"KEYRELAY_SECRET_KEY": "c2hvcnQ=", "KEYRELAY_STATE_DIR": t.TempDir()}))
		if err == nil || !strings.Contains(err.Error(), "32 bytes") {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestUnreachableDependenciesSayHowToStart checks the one-line message a
// newcomer sees when PostgreSQL or Redis is not running.
func TestUnreachableDependenciesSayHowToStart(t *testing.T) {
	t.Run("PostgreSQL", func(t *testing.T) {
		var out, errOut bytes.Buffer
		err := run(context.Background(), []string{"migrate"}, envOf(map[string]string{
			"KEYRELAY_DATABASE_URL": "postgres://postgres@127.0.0.1:1/keyrelay?sslmode=disable",
			"KEYRELAY_STATE_DIR":    t.TempDir(),
		}), &out, &errOut)
		if err == nil {
			t.Fatal("no error")
		}
		msg := err.Error()
		for _, want := range []string{"cannot reach PostgreSQL at 127.0.0.1:1", "pg_ctlcluster"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%q lacks %q", msg, want)
			}
		}
		if strings.Contains(msg, "\n") {
			t.Errorf("not one line: %q", msg)
		}
	})
	t.Run("Redis", func(t *testing.T) {
		var out, errOut bytes.Buffer
		err := run(context.Background(), []string{"serve"}, envOf(map[string]string{
			"KEYRELAY_DATABASE_URL":     testDB.OwnerURL,
			"KEYRELAY_APP_DATABASE_URL": testDB.AppURL,
			"KEYRELAY_REDIS_URL":        "redis://127.0.0.1:1/0",
			"KEYRELAY_STATE_DIR":        t.TempDir(),
		}), &out, &errOut)
		if err == nil {
			t.Fatal("no error")
		}
		msg := err.Error()
		for _, want := range []string{"cannot reach Redis at 127.0.0.1:1", "redis-server"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%q lacks %q", msg, want)
			}
		}
		if strings.Contains(msg, "\n") {
			t.Errorf("not one line: %q", msg)
		}
	})
}

func TestVersionCommand(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, envOf(nil), &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "keyrelay ") {
		t.Fatalf("version printed %q", out.String())
	}
	if err := run(context.Background(), []string{"frobnicate"}, envOf(map[string]string{"KEYRELAY_STATE_DIR": t.TempDir()}), &out, &out); err == nil {
		t.Fatal("unknown command accepted")
	}
}

// TestDemoTenant runs the development start-up twice: the demo tenant is
// made once, with a box, keys and a booking, and its printed credentials
// sign in; the printed provisioning token provisions the demo box.
func TestDemoTenant(t *testing.T) {
	s := startServer(t)
	var first string
	for i := 0; i < 2; i++ {
		var out bytes.Buffer
		if err := s.app.ensureDemo(context.Background(), &out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), demoEmail) || !strings.Contains(out.String(), demoPassword) {
			t.Fatalf("start-up text lacks the demo credentials: %s", out.String())
		}
		if i == 0 {
			first = out.String()
		}
	}
	_, rest, ok := strings.Cut(first, "-token ")
	if !ok {
		t.Fatalf("no provisioning token printed: %s", first)
	}
	token := strings.Fields(rest)[0]
	var boxOut bytes.Buffer
	if err := run(context.Background(), []string{"box", "provision", "-url", s.url, "-token", token, "-state", t.TempDir()}, os.Getenv, &boxOut, &boxOut); err != nil {
		t.Fatalf("the printed token does not provision the demo box: %v %s", err, boxOut.String())
	}
	if n := ownerExec(t, "SELECT 1 FROM users WHERE email = $1", demoEmail); n != 1 {
		t.Fatalf("%d demo users, want 1", n)
	}
	c := s.login(t, demoEmail, demoPassword)
	me := c.expect(t, 200, "GET", "/api/v1/me", nil).JSON(t)
	if me["role"] != "owner" {
		t.Fatalf("demo user = %v", me)
	}
	if keys := c.expect(t, 200, "GET", "/api/v1/keys", nil).JSON(t)["items"].([]any); len(keys) != 3 {
		t.Errorf("demo keys: %v", keys)
	}
	if bs := c.expect(t, 200, "GET", "/api/v1/bookings?status=active", nil).JSON(t)["items"].([]any); len(bs) != 1 {
		t.Errorf("demo bookings: %v", bs)
	}
}

// TestConfigDBPool reads the pool sizes and the replica settings, and
// refuses values that would leave a process without connections or with
// more than PostgreSQL could give.
func TestConfigDBPool(t *testing.T) {
	load := func(t *testing.T, env map[string]string) (Config, error) {
		t.Helper()
		env["KEYRELAY_STATE_DIR"] = t.TempDir()
		return LoadConfig(envOf(env))
	}
	t.Run("Defaults", func(t *testing.T) {
		cfg, err := load(t, map[string]string{})
		if err != nil {
			t.Fatal(err)
		}
		want := DBPool{MaxConns: 20, MaxIdleConns: 20, ConnMaxIdleTime: 5 * time.Minute, ConnMaxLifetime: 30 * time.Minute}
		if cfg.DB != want {
			t.Fatalf("pool %+v, want %+v", cfg.DB, want)
		}
		if cfg.DatabaseReplicaURL != "" || cfg.ReplicaMaxWait != 500*time.Millisecond {
			t.Fatalf("replica %q wait %v, want none and 500ms", cfg.DatabaseReplicaURL, cfg.ReplicaMaxWait)
		}
		// A Config made without LoadConfig gets the same pool.
		if (DBPool{}).orDefault() != want {
			t.Fatalf("zero pool: %+v", (DBPool{}).orDefault())
		}
	})
	t.Run("OK", func(t *testing.T) {
		cfg, err := load(t, map[string]string{
			"KEYRELAY_DB_MAX_CONNS":              "8",
			"KEYRELAY_DB_MAX_IDLE_CONNS":         "2",
			"KEYRELAY_DB_CONN_MAX_IDLE_TIME":     "90s",
			"KEYRELAY_DB_CONN_MAX_LIFETIME":      "0",
			"KEYRELAY_DATABASE_REPLICA_URL":      "postgres://keyrelay_app@replica.internal:5432/keyrelay?sslmode=require",
			"KEYRELAY_DATABASE_REPLICA_MAX_WAIT": "0",
		})
		if err != nil {
			t.Fatal(err)
		}
		want := DBPool{MaxConns: 8, MaxIdleConns: 2, ConnMaxIdleTime: 90 * time.Second, ConnMaxLifetime: 0}
		if cfg.DB != want || cfg.DB.orDefault() != want {
			t.Fatalf("pool %+v, want %+v", cfg.DB, want)
		}
		if cfg.DatabaseReplicaURL == "" || cfg.ReplicaMaxWait != 0 {
			t.Fatalf("replica %q wait %v", cfg.DatabaseReplicaURL, cfg.ReplicaMaxWait)
		}
	})
	t.Run("IdleFollowsMax", func(t *testing.T) {
		cfg, err := load(t, map[string]string{"KEYRELAY_DB_MAX_CONNS": "5"})
		if err != nil || cfg.DB.MaxConns != 5 || cfg.DB.MaxIdleConns != 5 {
			t.Fatalf("pool %+v, %v: want 5 open, 5 idle", cfg.DB, err)
		}
	})
	for _, tc := range []struct {
		name, key, value string
	}{
		{"ErrMaxConnsZero", "KEYRELAY_DB_MAX_CONNS", "0"},
		{"ErrMaxConnsNegative", "KEYRELAY_DB_MAX_CONNS", "-3"},
		{"ErrMaxConnsTooMany", "KEYRELAY_DB_MAX_CONNS", "20000"},
		{"ErrMaxConnsNotNumber", "KEYRELAY_DB_MAX_CONNS", "twenty"},
		{"ErrIdleAboveMax", "KEYRELAY_DB_MAX_IDLE_CONNS", "21"},
		{"ErrIdleNegative", "KEYRELAY_DB_MAX_IDLE_CONNS", "-1"},
		{"ErrIdleTime", "KEYRELAY_DB_CONN_MAX_IDLE_TIME", "5"},
		{"ErrIdleTimeTooShort", "KEYRELAY_DB_CONN_MAX_IDLE_TIME", "10ms"},
		{"ErrLifetime", "KEYRELAY_DB_CONN_MAX_LIFETIME", "-1m"},
		{"ErrReplicaURL", "KEYRELAY_DATABASE_REPLICA_URL", "postgres://replica:notaport/keyrelay"},
		{"ErrReplicaWait", "KEYRELAY_DATABASE_REPLICA_MAX_WAIT", "soon"},
		{"ErrReplicaWaitTooLong", "KEYRELAY_DATABASE_REPLICA_MAX_WAIT", "2m"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, map[string]string{tc.key: tc.value})
			if err == nil || !strings.Contains(err.Error(), tc.key+":") {
				t.Fatalf("%s=%s: err = %v, want one naming %s", tc.key, tc.value, err, tc.key)
			}
			if strings.Contains(err.Error(), "replica.internal") {
				t.Fatalf("the error repeats the URL: %v", err)
			}
		})
	}
}
