package main

import (
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyrelay/keyrelay/migrations/dbtest"
)

// pgTool finds a PostgreSQL client program: on PATH, or where Debian
// installs it with the server.
func pgTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name); len(m) > 0 {
		return m[len(m)-1]
	}
	t.Fatalf("%s not found on PATH or under /usr/lib/postgresql/*/bin (install postgresql-client)", name)
	return ""
}

// withDBName returns rawURL naming database name.
func withDBName(t *testing.T, rawURL, name string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// TestRestoreFromDump is the restore drill of deploy/README.md: a tenant's
// data is dumped with pg_dump, restored with pg_restore into a new
// database, and a fresh App started on it serves the tenant: the owner
// signs in (the code goes through the restored outbox, sealed under the
// same KEYRELAY_SECRET_KEY) and reads a booking.
func TestRestoreFromDump(t *testing.T) {
	s := startServer(t)
	w := bkSetup(t, s, "UTC")
	key := w.key(t, "Restored car")
	phone := bkPhone()
	start := time.Now().Add(time.Hour)
	booking := w.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(key, phone, start, start.Add(time.Hour))).JSON(t)["id"].(string)

	ctx := context.Background()
	dump := filepath.Join(t.TempDir(), "keyrelay.dump")
	began := time.Now()
	if out, err := exec.CommandContext(ctx, pgTool(t, "pg_dump"), "--format=custom", "--file="+dump, "--dbname="+testDB.OwnerURL).CombinedOutput(); err != nil {
		t.Fatalf("pg_dump: %v: %s", err, out)
	}
	dumped := time.Since(began)

	restored := &dbtest.DB{Name: fmt.Sprintf("keyrelay_test_restore_%d", time.Now().UnixNano())}
	restored.OwnerURL = withDBName(t, testDB.OwnerURL, restored.Name)
	restored.AppURL = withDBName(t, testDB.AppURL, restored.Name)
	conn, err := pgx.Connect(ctx, testDB.OwnerURL)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{restored.Name}.Sanitize())
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the second server, so it runs after that server
	// has closed its connections.
	t.Cleanup(func() {
		if err := restored.Drop(); err != nil {
			t.Errorf("drop %s: %v", restored.Name, err)
		}
	})
	began = time.Now()
	if out, err := exec.CommandContext(ctx, pgTool(t, "pg_restore"), "--exit-on-error", "--dbname="+restored.OwnerURL, dump).CombinedOutput(); err != nil {
		t.Fatalf("pg_restore: %v: %s", err, out)
	}
	t.Logf("pg_dump %v, pg_restore %v", dumped.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))

	// What an operator runs next: migrate (a no-op on a dump of the same
	// version; it also makes sure the roles exist on a new server).
	cfg := testConfig(t)
	cfg.DatabaseURL, cfg.AppDatabaseURL = restored.OwnerURL, restored.AppURL
	if err := Migrate(ctx, cfg, discardLogger()); err != nil {
		t.Fatalf("migrate the restored database: %v", err)
	}
	fresh := startServer(t, func(c *Config) {
		c.DatabaseURL, c.AppDatabaseURL = restored.OwnerURL, restored.AppURL
		c.SecretKey = s.app.cfg.SecretKey // the backup is useless without it
	})
	// The original keeps running: the new App must not be reading it.
	ownerExec(t, "UPDATE bookings SET visitor_name = 'Changed after the dump' WHERE tenant_id = $1 AND id = $2", w.ID, booking)

	owner := fresh.login(t, w.Email, w.Password)
	b := owner.expect(t, 200, "GET", "/api/v1/bookings/"+booking, nil).JSON(t)
	if v := b["visitor"].(map[string]any); v["phone"] != phone || v["name"] != "Val Visitor" || b["key_id"] != key.String() || b["code"] == "" {
		t.Fatalf("restored booking %v", b)
	}
	fresh.client().expect(t, 200, "GET", "/readyz", nil)
}
