// Package dbtest gives each test package a database of its own on the local
// PostgreSQL server, migrated like production, so packages can run in
// parallel without seeing each other's rows; and a TCP proxy that takes a
// shared service (PostgreSQL, Redis) down for one test only.
package dbtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/keyrelay/keyrelay/migrations"
)

// Server is the PostgreSQL server tests use; KEYRELAY_TEST_DATABASE_URL
// overrides it (its database part is ignored).
func Server() string {
	if u := os.Getenv("KEYRELAY_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// DB names a fresh, migrated database.
type DB struct {
	Name     string
	OwnerURL string // the owner (migrations, test fixtures that bypass RLS)
	AppURL   string // the application role, bound by row-level security
}

// Create makes and migrates a database named after prefix. Call Drop when
// the package's tests are done (usually from TestMain).
func Create(prefix string) (*DB, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	name := "keyrelay_test_" + strings.ToLower(prefix) + "_" + hex.EncodeToString(b[:])
	owner, err := withDatabase(Server(), name, "")
	if err != nil {
		return nil, err
	}
	app, err := withDatabase(Server(), name, migrations.AppGroupRole)
	if err != nil {
		return nil, err
	}
	db := &DB{Name: name, OwnerURL: owner, AppURL: app}
	if err := migrations.Up(context.Background(), owner, app, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		db.Drop()
		return nil, fmt.Errorf("dbtest: %w", err)
	}
	return db, nil
}

// Drop removes the database, ending any connection still open to it.
func (d *DB) Drop() error {
	cfg, err := pgx.ParseConfig(Server())
	if err != nil {
		return err
	}
	cfg.Database = "postgres"
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{d.Name}.Sanitize()+" WITH (FORCE)")
	return err
}

func withDatabase(server, name, user string) (string, error) {
	cfg, err := pgx.ParseConfig(server)
	if err != nil {
		return "", err
	}
	if user == "" {
		user = cfg.User
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", user, cfg.Host, cfg.Port, name), nil
}

// Exec runs SQL as the owner, bypassing row-level security: for fixtures
// the API cannot make (an aged session, another tenant's row) and for
// checks of what was really stored. It returns the rows affected.
func (d *DB) Exec(t testing.TB, sql string, args ...any) int64 {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), d.OwnerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tag, err := conn.Exec(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return tag.RowsAffected()
}

// Main runs a test package against a database of its own: it creates
// *db before the tests and drops it after.
func Main(m *testing.M, prefix string, db **DB) {
	var err error
	if *db, err = Create(prefix); err != nil {
		fmt.Fprintln(os.Stderr, prefix+" tests:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := (*db).Drop(); err != nil {
		fmt.Fprintln(os.Stderr, prefix+" tests: drop database:", err)
	}
	os.Exit(code)
}
