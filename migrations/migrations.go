// Package migrations holds keyrelay's versioned SQL (embedded) and applies it
// with goose as the database owner. It also creates the database and the
// roles the schema grants to:
//
//   - keyrelay_app: what the application connects as (or a group role that
//     the configured application user is made a member of). It owns no table,
//     is not superuser and has no BYPASSRLS, so row-level security binds it.
//   - keyrelay_lookup: NOLOGIN; owns the SECURITY DEFINER function
//     login_candidates, the single cross-tenant read of the request path
//     (email → tenant and user, for login and "forgot password").
//   - keyrelay_relay: NOLOGIN; owns outbox_pending, outbox_mark_relayed and
//     outbox_tenant, the outbox relay's view of every tenant's pending
//     message ids (00002), and outbox_reclaim, which hands back the
//     messages of a delivery worker whose claim expired (00009).
//   - keyrelay_janitor: NOLOGIN; owns janitor_sweep, which deletes expired
//     sessions and reset tokens in every tenant (00002).
//   - keyrelay_firmware: NOLOGIN; owns the firmware_release_* functions,
//     the only writes to the global release catalogue, and
//     firmware_rollouts_overview and firmware_rollout_tenant, the platform
//     operator's view of rollouts across tenants (ids and states, 00017).
//
// Cross-tenant work is only ever done through these narrowly granted paths:
// SECURITY DEFINER functions owned by a NOLOGIN role that has column-level
// grants and a policy of its own on exactly the tables it needs. The
// application role may execute them and gains nothing else.
package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"net/url"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var files embed.FS

// AppGroupRole is the role every grant of the schema names.
const AppGroupRole = "keyrelay_app"

// pathRoles own the cross-tenant functions, one role per path.
var pathRoles = []string{"keyrelay_lookup", "keyrelay_relay", "keyrelay_janitor", "keyrelay_firmware"}

// Up creates the owner's database if it is missing, makes sure the roles
// exist, and applies every pending migration. It is safe to run from several
// processes at once: goose holds a PostgreSQL advisory lock.
func Up(ctx context.Context, ownerURL, appURL string, log *slog.Logger) error {
	ownerCfg, err := pgx.ParseConfig(ownerURL)
	if err != nil {
		return fmt.Errorf("migrations: owner database URL: %w", err)
	}
	if err := createDatabase(ctx, ownerCfg); err != nil {
		return err
	}
	appUser, appPassword, err := userOf(appURL)
	if err != nil {
		return err
	}
	if appUser == ownerCfg.User {
		// The application must not own the tables (row-level security would
		// not bind it), and ensureRoles would strip the owner's rights.
		return fmt.Errorf("migrations: the application role must differ from the owner %q", appUser)
	}
	if err := ensureRoles(ctx, ownerCfg, appUser, appPassword); err != nil {
		return err
	}

	db := stdlib.OpenDB(*ownerCfg)
	defer db.Close()
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return fmt.Errorf("migrations: locker: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, files, goose.WithSessionLocker(locker))
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrations: up: %w", err)
	}
	for _, r := range results {
		log.Info("migration applied", "version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration)
	}
	return nil
}

// Version reports the newest migration applied to the database.
func Version(ctx context.Context, ownerURL string) (int64, error) {
	cfg, err := pgx.ParseConfig(ownerURL)
	if err != nil {
		return 0, fmt.Errorf("migrations: owner database URL: %w", err)
	}
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, files)
	if err != nil {
		return 0, fmt.Errorf("migrations: %w", err)
	}
	return p.GetDBVersion(ctx)
}

func userOf(rawURL string) (user, password string, err error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil || u.User.Username() == "" {
		return "", "", fmt.Errorf("migrations: the application database URL must name a user")
	}
	pw, _ := u.User.Password()
	return u.User.Username(), pw, nil
}

// maintenance connects to the server's postgres database, where CREATE
// DATABASE and role changes can run whatever database the owner URL names.
func maintenance(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	m := cfg.Copy()
	m.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("migrations: connect to %s:%d as %s: %w", cfg.Host, cfg.Port, cfg.User, err)
	}
	return conn, nil
}

func createDatabase(ctx context.Context, cfg *pgx.ConnConfig) error {
	conn, err := maintenance(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	// Replicas starting together all try to create it.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(7202)"); err != nil {
		return fmt.Errorf("migrations: database lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(7202)")
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", cfg.Database).Scan(&exists); err != nil {
		return fmt.Errorf("migrations: look for database %q: %w", cfg.Database, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{cfg.Database}.Sanitize())
	if err != nil && !isCode(err, "42P04") && !isCode(err, "23505") { // created meanwhile by a process not taking the lock
		return fmt.Errorf("migrations: create database %q: %w", cfg.Database, err)
	}
	return nil
}

func ensureRoles(ctx context.Context, cfg *pgx.ConnConfig, appUser, appPassword string) error {
	conn, err := maintenance(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	// Roles are cluster-wide and parallel test packages migrate at once.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(7201)"); err != nil {
		return fmt.Errorf("migrations: role lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(7201)")

	login := "NOLOGIN"
	if appUser == AppGroupRole {
		login = "LOGIN"
	}
	if err := ensureRole(ctx, conn, AppGroupRole, login); err != nil {
		return err
	}
	for _, r := range pathRoles {
		if err := ensureRole(ctx, conn, r, "NOLOGIN"); err != nil {
			return err
		}
	}
	if appUser != AppGroupRole {
		if err := ensureRole(ctx, conn, appUser, "LOGIN"); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, fmt.Sprintf("GRANT %s TO %s", pgx.Identifier{AppGroupRole}.Sanitize(), pgx.Identifier{appUser}.Sanitize())); err != nil {
			return fmt.Errorf("migrations: grant %s to %s: %w", AppGroupRole, appUser, err)
		}
	}
	if appPassword != "" {
		// ALTER ROLE … PASSWORD takes no bind parameters; quote it as a literal.
		lit := "'" + escapeLiteral(appPassword) + "'"
		if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD %s", pgx.Identifier{appUser}.Sanitize(), lit)); err != nil {
			return fmt.Errorf("migrations: set password of %s: %w", appUser, err)
		}
	}
	return nil
}

func ensureRole(ctx context.Context, conn *pgx.Conn, name, login string) error {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("migrations: look for role %s: %w", name, err)
	}
	if !exists {
		_, err := conn.Exec(ctx, fmt.Sprintf("CREATE ROLE %s %s", pgx.Identifier{name}.Sanitize(), login))
		if err != nil && !isCode(err, "42710") {
			return fmt.Errorf("migrations: create role %s: %w", name, err)
		}
	}
	// Whatever created it, the role must never escape row-level security.
	_, err := conn.Exec(ctx, fmt.Sprintf("ALTER ROLE %s %s NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE", pgx.Identifier{name}.Sanitize(), login))
	if err != nil {
		return fmt.Errorf("migrations: alter role %s: %w", name, err)
	}
	return nil
}

func escapeLiteral(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}
