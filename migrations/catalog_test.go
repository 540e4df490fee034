package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyrelay/keyrelay/migrations"
	"github.com/keyrelay/keyrelay/migrations/dbtest"
)

// The package's tests share one database, migrated by dbtest exactly like
// production.
var testDB *dbtest.DB

func TestMain(m *testing.M) {
	var err error
	testDB, err = dbtest.Create("migrations")
	if err != nil {
		fmt.Fprintln(os.Stderr, "migrations tests:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := testDB.Drop(); err != nil {
		fmt.Fprintln(os.Stderr, "migrations tests: drop database:", err)
	}
	os.Exit(code)
}

// globalTables are the tables of schema public that belong to no tenant and so
// carry no row-level security. Adding a table here needs a reason: the
// application role must not be able to reach tenant data through it.
var globalTables = []string{
	"goose_db_version",
	// Platform data: the operator's firmware releases per model, the same
	// for every tenant; the application may only read them (00017).
	"firmware_releases",
}

// pathRoles are the NOLOGIN roles that own the narrowly granted
// cross-tenant paths (see the package doc), with the table-level privileges
// each may hold; anything else they read or change is granted by column.
var pathRoles = map[string][]string{
	"keyrelay_lookup":   nil,
	"keyrelay_relay":    nil,
	"keyrelay_janitor":  {"sessions:DELETE", "password_resets:DELETE", "login_challenges:DELETE", "pickup_challenges:DELETE", "idempotency_answers:DELETE"},
	"keyrelay_firmware": nil,
}

// secretColumns are never readable by a path role.
var secretColumns = [][2]string{
	{"users", "password_hash"}, {"users", "name"}, {"users", "phone"},
	{"sessions", "token_hash"}, {"password_resets", "token_hash"}, {"api_keys", "token_hash"},
	{"outbox", "payload"}, {"outbox", "recipient"},
	{"users", "totp_secret"}, {"users", "pin_hash"}, {"login_challenges", "code_hash"}, {"login_challenges", "token_hash"},
	{"recovery_codes", "code_hash"}, {"tenant_providers", "settings"},
	{"box_credentials", "secret_sealed"}, {"box_provisioning_tokens", "token_hash"},
	{"pickup_challenges", "code_hash"}, {"codes", "code_hash"}, {"codes", "code_sealed"},
	{"offline_derived_codes", "tag_hash"}, {"offline_derived_codes", "code_sealed"}, {"box_journal", "derived_tag_hash"},
	{"idempotency_answers", "sealed"}, {"idempotency_answers", "body_hash"},
	{"bookings", "url_token_hash"}, {"bookings", "url_token_sealed"}, {"bookings", "visitor_phone"}, {"bookings", "visitor_email"},
	{"webhook_endpoints", "secret_sealed"}, {"webhook_endpoints", "url"}, {"webhook_deliveries", "payload"},
	{"pickup_challenges", "phone"}, {"bookings", "visitor_name"}, {"alias_codes", "visitor_name"}, {"alias_codes", "visitor_phone"}, {"alias_codes", "visitor_email"},
}

// securityDefiners are the SECURITY DEFINER functions allowed in schema
// public, each with the path role that must own it.
var securityDefiners = map[string]string{
	"login_candidates(text)":             "keyrelay_lookup",
	"outbox_pending(integer)":            "keyrelay_relay",
	"outbox_lag()":                       "keyrelay_relay", // metrics (00021)
	"box_status_counts()":                "keyrelay_relay", // metrics (00021)
	"outbox_mark_relayed(uuid[],uuid[])": "keyrelay_relay",
	"outbox_tenant(uuid)":                "keyrelay_relay",
	"outbox_reclaim(integer)":            "keyrelay_relay",
	"bundle_changes_pending(integer)":    "keyrelay_relay",
	"janitor_sweep(interval)":            "keyrelay_janitor",
	// Retention and erasure (00022).
	"retention_purge_messages(interval,integer)":                                   "keyrelay_janitor",
	"retention_sweep_challenges()":                                                 "keyrelay_janitor",
	"retention_sweep_idempotency(integer)":                                         "keyrelay_janitor", // 00029
	"retention_visitor_tenants(timestamp with time zone)":                          "keyrelay_janitor",
	"audit_pseudonymise(uuid[],text)":                                              "keyrelay_janitor",
	"webhook_claim(integer,interval)":                                              "keyrelay_relay",
	"keys_overdue(integer)":                                                        "keyrelay_relay",
	"firmware_release_create(uuid,text,text,bigint,integer,text,bigint,text,text)": "keyrelay_firmware",
	"firmware_release_advance(uuid,bigint,bigint,bytea)":                           "keyrelay_firmware",
	"firmware_release_publish(uuid,bytea,bytea,text)":                              "keyrelay_firmware",
	"firmware_rollouts_overview(text[],integer)":                                   "keyrelay_firmware",
	"firmware_rollout_tenant(uuid)":                                                "keyrelay_firmware",
}

// roleScopedPolicies (table.policy) are the policies that do not compare
// tenant_id with app.tenant_id; each applies to one path role only, for one
// command.
var roleScopedPolicies = map[string]struct {
	cmd   string
	roles []string
}{
	"users.lookup_by_email":              {cmd: "SELECT", roles: []string{"keyrelay_lookup"}},
	"outbox.relay_read":                  {cmd: "SELECT", roles: []string{"keyrelay_relay"}},
	"outbox.relay_mark":                  {cmd: "UPDATE", roles: []string{"keyrelay_relay"}},
	"sessions.janitor_read":              {cmd: "SELECT", roles: []string{"keyrelay_janitor"}},
	"sessions.janitor_delete":            {cmd: "DELETE", roles: []string{"keyrelay_janitor"}},
	"password_resets.janitor_read":       {cmd: "SELECT", roles: []string{"keyrelay_janitor"}},
	"password_resets.janitor_delete":     {cmd: "DELETE", roles: []string{"keyrelay_janitor"}},
	"login_challenges.janitor_read":      {cmd: "SELECT", roles: []string{"keyrelay_janitor"}},
	"login_challenges.janitor_delete":    {cmd: "DELETE", roles: []string{"keyrelay_janitor"}},
	"webhook_deliveries.relay_read":      {cmd: "SELECT", roles: []string{"keyrelay_relay"}},
	"webhook_deliveries.relay_claim":     {cmd: "UPDATE", roles: []string{"keyrelay_relay"}},
	"keys.relay_read":                    {cmd: "SELECT", roles: []string{"keyrelay_relay"}},
	"box_status.relay_read":              {cmd: "SELECT", roles: []string{"keyrelay_relay"}}, // metrics (00021)
	"boxes.relay_read":                   {cmd: "SELECT", roles: []string{"keyrelay_relay"}}, // metrics (00021)
	"box_bundle_changes.relay_read":      {cmd: "SELECT", roles: []string{"keyrelay_relay"}}, // bundle workers (00024)
	"firmware_rollouts.firmware_read":    {cmd: "SELECT", roles: []string{"keyrelay_firmware"}},
	"outbox.janitor_read":                {cmd: "SELECT", roles: []string{"keyrelay_janitor"}},
	"outbox.janitor_purge":               {cmd: "UPDATE", roles: []string{"keyrelay_janitor"}},
	"pickup_challenges.janitor_read":     {cmd: "SELECT", roles: []string{"keyrelay_janitor"}},
	"pickup_challenges.janitor_delete":   {cmd: "DELETE", roles: []string{"keyrelay_janitor"}},
	"bookings.janitor_read":              {cmd: "SELECT", roles: []string{"keyrelay_janitor"}},
	"alias_codes.janitor_read":           {cmd: "SELECT", roles: []string{"keyrelay_janitor"}},
	"idempotency_answers.janitor_read":   {cmd: "SELECT", roles: []string{"keyrelay_janitor"}}, // 00029
	"idempotency_answers.janitor_delete": {cmd: "DELETE", roles: []string{"keyrelay_janitor"}},
}

func ownerConn(t *testing.T, rawURL string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, rawURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// strings1 runs a query returning one text column and collects it.
func strings1(t *testing.T, conn *pgx.Conn, sql string, args ...any) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// appRoles are the roles the application connects as: the group role and,
// when the configured user differs, that user.
func appRoles(t *testing.T) []string {
	t.Helper()
	u, err := url.Parse(testDB.AppURL)
	if err != nil {
		t.Fatal(err)
	}
	roles := []string{migrations.AppGroupRole}
	if n := u.User.Username(); n != migrations.AppGroupRole {
		roles = append(roles, n)
	}
	return roles
}

// canonicalPredicate returns how this server deparses the isolation
// predicate, so that pg_policies.qual can be compared exactly (a policy that
// merely mentions the setting, e.g. "… OR true", must not pass).
func canonicalPredicate(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for _, q := range []string{
		"CREATE TEMP TABLE rls_probe (tenant_id uuid)",
		"CREATE POLICY probe ON rls_probe USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)",
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var qual string
	if err := tx.QueryRow(ctx, "SELECT qual FROM pg_policies WHERE tablename = 'rls_probe' AND policyname = 'probe'").Scan(&qual); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(qual, "NULLIF(current_setting('app.tenant_id'") {
		t.Fatalf("unexpected deparse of the isolation predicate: %s", qual)
	}
	return qual
}

// tenantTables lists the tables of schema public that are not global.
func tenantTables(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	tables := strings1(t, conn, `
		SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relname = ANY($1)
		ORDER BY 1`, globalTables)
	// Guard against a vacuous pass (wrong schema, empty database).
	for _, want := range []string{"tenants", "users", "sessions", "audit_events"} {
		if !slices.Contains(tables, want) {
			t.Fatalf("tenant-owned table %s not found; tables: %v", want, tables)
		}
	}
	return tables
}

func TestCatalog(t *testing.T) {
	conn := ownerConn(t, testDB.OwnerURL)
	ctx := context.Background()
	tables := tenantTables(t, conn)

	t.Run("OKEveryTableHasForcedRLSAndPolicy", func(t *testing.T) {
		rows, err := conn.Query(ctx, `
			SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity,
			       EXISTS (SELECT 1 FROM pg_policies p WHERE p.schemaname = 'public' AND p.tablename = c.relname)
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relname = ANY($1)`, globalTables)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		var name string
		var rls, force, policy bool
		_, err = pgx.ForEachRow(rows, []any{&name, &rls, &force, &policy}, func() error {
			n++
			if !rls {
				t.Errorf("table %s: row level security is not enabled", name)
			}
			if !force {
				t.Errorf("table %s: row level security is not forced", name)
			}
			if !policy {
				t.Errorf("table %s: no policy", name)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n != len(tables) {
			t.Fatalf("checked %d tables, want %d", n, len(tables))
		}
	})

	t.Run("OKGlobalTablesExist", func(t *testing.T) {
		// An allow-list entry that no longer names a table is stale.
		for _, g := range globalTables {
			var ok bool
			if err := conn.QueryRow(ctx, "SELECT to_regclass('public.' || $1) IS NOT NULL", g).Scan(&ok); err != nil {
				t.Fatal(err)
			}
			if !ok {
				t.Errorf("global table %s does not exist: drop it from the allow-list", g)
			}
		}
	})

	t.Run("OKNoViewBypassesRLS", func(t *testing.T) {
		// A view runs with its owner's rights (the owner bypasses RLS as a
		// superuser), so one the application can read would leak every tenant.
		bad := strings1(t, conn, `
			SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm')
			  AND NOT (c.relkind = 'v' AND coalesce(c.reloptions, '{}') @> '{security_invoker=true}')`)
		if len(bad) > 0 {
			t.Errorf("views or materialized views without security_invoker: %v", bad)
		}
	})

	t.Run("OKTenantIDLeadsPrimaryKey", func(t *testing.T) {
		rows, err := conn.Query(ctx, `
			SELECT c.relname::text, coalesce(a.attname::text, '')
			FROM pg_class c
			JOIN pg_namespace n ON n.oid = c.relnamespace
			LEFT JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype = 'p'
			LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.conkey[1]
			WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relname = ANY($1)`, globalTables)
		if err != nil {
			t.Fatal(err)
		}
		var table, first string
		_, err = pgx.ForEachRow(rows, []any{&table, &first}, func() error {
			switch first {
			case "":
				t.Errorf("table %s has no primary key", table)
			case "tenant_id":
			default:
				t.Errorf("table %s: primary key starts with %s, want tenant_id", table, first)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("OKForeignKeysPairTenantID", func(t *testing.T) {
		// tenant_id must be in the key on both sides, at the same position,
		// so the referenced row belongs to the same tenant.
		rows, err := conn.Query(ctx, `
			SELECT k.conname::text, k.conrelid::regclass::text, k.confrelid::regclass::text,
			       coalesce(array_position(k.conkey, la.attnum), 0),
			       coalesce(array_position(k.confkey, ra.attnum), 0)
			FROM pg_constraint k
			JOIN pg_namespace n ON n.oid = k.connamespace
			LEFT JOIN pg_attribute la ON la.attrelid = k.conrelid AND la.attname = 'tenant_id'
			LEFT JOIN pg_attribute ra ON ra.attrelid = k.confrelid AND ra.attname = 'tenant_id'
			WHERE n.nspname = 'public' AND k.contype = 'f'`)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		var name, from, to string
		var lpos, rpos int
		_, err = pgx.ForEachRow(rows, []any{&name, &from, &to, &lpos, &rpos}, func() error {
			n++
			if lpos == 0 || rpos == 0 || lpos != rpos {
				t.Errorf("foreign key %s (%s → %s) does not match tenant_id with tenant_id (positions %d, %d)", name, from, to, lpos, rpos)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatal("no foreign key found: the query is wrong")
		}
	})

	t.Run("OKUniqueConstraintsIncludeTenantID", func(t *testing.T) {
		bad := strings1(t, conn, `
			SELECT k.conrelid::regclass::text || '.' || k.conname
			FROM pg_constraint k
			JOIN pg_namespace n ON n.oid = k.connamespace
			LEFT JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attname = 'tenant_id'
			WHERE n.nspname = 'public' AND k.contype IN ('u', 'p', 'x')
			  AND NOT k.conrelid::regclass::text = ANY($1)
			  AND (a.attnum IS NULL OR NOT a.attnum = ANY(k.conkey))`, globalTables)
		if len(bad) > 0 {
			t.Errorf("unique constraints without tenant_id: %v", bad)
		}
		// Unique indexes, including those that back no constraint
		// (CREATE UNIQUE INDEX, expression and partial indexes).
		bad = strings1(t, conn, `
			SELECT i.indexrelid::regclass::text
			FROM pg_index i
			JOIN pg_class c ON c.oid = i.indrelid
			JOIN pg_namespace n ON n.oid = c.relnamespace
			LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attname = 'tenant_id'
			WHERE n.nspname = 'public' AND i.indisunique
			  AND NOT c.relname = ANY($1)
			  AND (a.attnum IS NULL OR NOT a.attnum = ANY(i.indkey::int2[]))`, globalTables)
		if len(bad) > 0 {
			t.Errorf("unique indexes without tenant_id: %v", bad)
		}
		var n int
		if err := conn.QueryRow(ctx, `
			SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
			WHERE c.relnamespace = 'public'::regnamespace AND i.indisunique AND NOT i.indisprimary`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatal("no unique index besides primary keys found: the query is wrong")
		}
	})

	t.Run("OKPoliciesCompareTenantSetting", func(t *testing.T) {
		want := canonicalPredicate(t, conn)
		rows, err := conn.Query(ctx, `
			SELECT tablename::text, policyname::text, permissive, roles::text[], cmd, coalesce(qual, ''), coalesce(with_check, '')
			FROM pg_policies WHERE schemaname = 'public'`)
		if err != nil {
			t.Fatal(err)
		}
		isolated := map[string]bool{}
		seenScoped := map[string]bool{}
		var table, name, permissive, cmd, qual, check string
		var roles []string
		_, err = pgx.ForEachRow(rows, []any{&table, &name, &permissive, &roles, &cmd, &qual, &check}, func() error {
			where := table + "." + name
			if rs, ok := roleScopedPolicies[where]; ok {
				seenScoped[where] = true
				for _, r := range rs.roles {
					if _, ok := pathRoles[r]; !ok {
						t.Errorf("policy %s applies to %s, which is not a path role", where, r)
					}
				}
				if cmd != rs.cmd {
					t.Errorf("policy %s is FOR %s, want FOR %s", where, cmd, rs.cmd)
				}
				if !slices.Equal(roles, rs.roles) {
					t.Errorf("policy %s applies TO %v, want exactly %v", where, roles, rs.roles)
				}
				return nil
			}
			if cmd != "INSERT" && qual != want {
				t.Errorf("policy %s: USING is %q, want %q", where, qual, want)
			}
			if (cmd == "ALL" || cmd == "INSERT" || cmd == "UPDATE") && check != want {
				t.Errorf("policy %s: WITH CHECK is %q, want %q", where, check, want)
			}
			if !slices.Equal(roles, []string{"public"}) {
				t.Errorf("policy %s applies TO %v, want PUBLIC", where, roles)
			}
			if (cmd == "ALL" || cmd == "SELECT") && permissive == "PERMISSIVE" {
				isolated[table] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for name := range roleScopedPolicies {
			if !seenScoped[name] {
				t.Errorf("policy %s not found: drop it from the list", name)
			}
		}
		for _, table := range tables {
			if !isolated[table] {
				t.Errorf("table %s has no permissive tenant policy for SELECT", table)
			}
		}
	})

	t.Run("OKAppRoleIsBoundByRLS", func(t *testing.T) {
		for _, role := range appRoles(t) {
			var super, bypass bool
			if err := conn.QueryRow(ctx, "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", role).Scan(&super, &bypass); err != nil {
				t.Fatalf("role %s: %v", role, err)
			}
			if super || bypass {
				t.Errorf("role %s: superuser %v, bypassrls %v", role, super, bypass)
			}
			// pg_has_role(…, 'MEMBER') follows memberships transitively.
			if bad := strings1(t, conn, `
				SELECT r.rolname::text FROM pg_roles r
				WHERE pg_has_role($1, r.oid, 'MEMBER') AND r.rolname <> $1 AND (r.rolsuper OR r.rolbypassrls)`, role); len(bad) > 0 {
				t.Errorf("role %s is a member of superuser or BYPASSRLS roles %v", role, bad)
			}
			if owned := strings1(t, conn, `
				SELECT c.oid::regclass::text FROM pg_class c
				JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = $1`, role); len(owned) > 0 {
				t.Errorf("role %s owns %v (FORCE does not bind an owner that may ALTER TABLE)", role, owned)
			}
			if owned := strings1(t, conn, `
				SELECT p.oid::regprocedure::text FROM pg_proc p
				JOIN pg_roles r ON r.oid = p.proowner WHERE r.rolname = $1`, role); len(owned) > 0 {
				t.Errorf("role %s owns functions %v", role, owned)
			}
			// The path roles' policies and privileges must not reach the
			// application: it only executes their functions.
			for r := range pathRoles {
				var member bool
				if err := conn.QueryRow(ctx, "SELECT pg_has_role($1, $2, 'MEMBER')", role, r).Scan(&member); err != nil {
					t.Fatal(err)
				}
				if member {
					t.Errorf("role %s is a member of path role %s and so gets its policies", role, r)
				}
			}
			var create bool
			if err := conn.QueryRow(ctx, "SELECT has_schema_privilege($1, 'public', 'CREATE')", role).Scan(&create); err != nil {
				t.Fatal(err)
			}
			if create {
				t.Errorf("role %s may create objects in schema public (it would own them)", role)
			}
		}
	})

	t.Run("OKAppRoleHasNoRLSBypassingPrivileges", func(t *testing.T) {
		// TRUNCATE ignores row-level security; TRIGGER and REFERENCES are
		// never needed by the application.
		for _, role := range appRoles(t) {
			bad := strings1(t, conn, `
				SELECT c.relname || ':' || p.priv
				FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
				     unnest(ARRAY['TRUNCATE', 'TRIGGER', 'REFERENCES']) AS p(priv)
				WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
				  AND has_table_privilege($1, c.oid, p.priv)`, role)
			if len(bad) > 0 {
				t.Errorf("role %s holds %v", role, bad)
			}
			bad = strings1(t, conn, `
				SELECT c.relname || ':' || p.priv
				FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
				     unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) AS p(priv)
				WHERE n.nspname = 'public' AND c.relname = ANY($2)
				  AND has_table_privilege($1, c.oid, p.priv)`, role, globalTables)
			if len(bad) > 0 {
				t.Errorf("role %s may write global tables: %v", role, bad)
			}
		}
	})

	t.Run("OKAuditEventsAppendOnly", func(t *testing.T) {
		for _, role := range appRoles(t) {
			for priv, want := range map[string]bool{"SELECT": true, "INSERT": true, "UPDATE": false, "DELETE": false, "TRUNCATE": false} {
				var has bool
				if err := conn.QueryRow(ctx, "SELECT has_table_privilege($1, 'public.audit_events', $2)", role, priv).Scan(&has); err != nil {
					t.Fatal(err)
				}
				if has != want {
					t.Errorf("role %s: %s on audit_events = %v, want %v", role, priv, has, want)
				}
			}
		}
	})

	t.Run("ErrAppUpdatesAuditEvents", func(t *testing.T) {
		app := ownerConn(t, testDB.AppURL)
		for _, q := range []string{
			"UPDATE audit_events SET action = 'x'",
			"DELETE FROM audit_events",
		} {
			_, err := app.Exec(ctx, q)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
				t.Errorf("%s as the application: got %v, want insufficient_privilege (42501)", q, err)
			}
		}
	})

	t.Run("OKSecurityDefinersAllowListed", func(t *testing.T) {
		rows, err := conn.Query(ctx, `
			SELECT p.oid::regprocedure::text, pg_get_userbyid(p.proowner)::text,
			       EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
			               WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'),
			       coalesce(array_to_string(p.proconfig, ','), '')
			FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.prosecdef`)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		var fn, owner, config string
		var public bool
		_, err = pgx.ForEachRow(rows, []any{&fn, &owner, &public, &config}, func() error {
			seen[fn] = true
			want, ok := securityDefiners[fn]
			if !ok {
				t.Errorf("SECURITY DEFINER function %s is not allow-listed", fn)
				return nil
			}
			if owner != want {
				t.Errorf("%s is owned by %s, want %s", fn, owner, want)
			}
			if public {
				t.Errorf("%s is executable by PUBLIC", fn)
			}
			if !strings.Contains(config, "search_path=") {
				t.Errorf("%s does not pin search_path (config %q)", fn, config)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for fn := range securityDefiners {
			if !seen[fn] {
				t.Errorf("%s is not a SECURITY DEFINER function in public", fn)
			}
		}
		for fn := range securityDefiners {
			var exec bool
			if err := conn.QueryRow(ctx, "SELECT has_function_privilege($1, 'public.' || $2, 'EXECUTE')", migrations.AppGroupRole, fn).Scan(&exec); err != nil {
				t.Fatal(err)
			}
			if !exec {
				t.Errorf("%s cannot execute %s", migrations.AppGroupRole, fn)
			}
		}
	})

	t.Run("OKPathRolesAreNarrow", func(t *testing.T) {
		for role, allowed := range pathRoles {
			var super, bypass, login bool
			if err := conn.QueryRow(ctx, "SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = $1", role).Scan(&super, &bypass, &login); err != nil {
				t.Fatalf("role %s: %v", role, err)
			}
			if super || bypass || login {
				t.Errorf("%s: superuser %v, bypassrls %v, login %v", role, super, bypass, login)
			}
			held := strings1(t, conn, `
				SELECT c.relname || ':' || p.priv
				FROM pg_class c, unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(priv)
				WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
				  AND has_table_privilege($1, c.oid, p.priv)
				ORDER BY 1`, role)
			for _, h := range held {
				if !slices.Contains(allowed, h) {
					t.Errorf("%s holds table privilege %s (grant by column instead)", role, h)
				}
			}
			for _, tc := range secretColumns {
				var has bool
				if err := conn.QueryRow(ctx, "SELECT has_column_privilege($1, 'public.' || $2, $3, 'SELECT')", role, tc[0], tc[1]).Scan(&has); err != nil {
					t.Fatal(err)
				}
				if has {
					t.Errorf("%s can read %s.%s", role, tc[0], tc[1])
				}
			}
			if owned := strings1(t, conn, `
				SELECT c.oid::regclass::text FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = $1`, role); len(owned) > 0 {
				t.Errorf("%s owns %v", role, owned)
			}
		}
	})
}

// fingerprint describes everything a migration run could change: the schema
// (relations, RLS flags, owners, ACLs, columns and their defaults,
// constraints, indexes, triggers, policies, functions), goose's bookkeeping
// and the roles.
const fingerprint = `
SELECT concat_ws(E'\n',
  (SELECT string_agg(format('%s %s rls=%s force=%s owner=%s acl=%s', c.oid::regclass, c.relkind, c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner), c.relacl), E'\n' ORDER BY c.oid::regclass::text)
     FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace),
  (SELECT string_agg(format('%s.%s %s notnull=%s default=%s acl=%s', a.attrelid::regclass, a.attname, format_type(a.atttypid, a.atttypmod),
                            a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attacl), E'\n' ORDER BY a.attrelid::regclass::text, a.attnum)
     FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT string_agg(format('%s %s', g.tgrelid::regclass, pg_get_triggerdef(g.oid)), E'\n' ORDER BY g.tgrelid::regclass::text, g.tgname)
     FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
     WHERE c.relnamespace = 'public'::regnamespace AND NOT g.tgisinternal),
  (SELECT string_agg(format('%s %s %s', k.conrelid::regclass, k.conname, pg_get_constraintdef(k.oid)), E'\n' ORDER BY k.conrelid::regclass::text, k.conname)
     FROM pg_constraint k WHERE k.connamespace = 'public'::regnamespace),
  (SELECT string_agg(indexdef, E'\n' ORDER BY indexdef) FROM pg_indexes WHERE schemaname = 'public'),
  (SELECT string_agg(format('%s %s %s %s %s %s %s', tablename, policyname, permissive, roles, cmd, qual, with_check), E'\n' ORDER BY tablename, policyname)
     FROM pg_policies WHERE schemaname = 'public'),
  (SELECT string_agg(format('%s owner=%s secdef=%s acl=%s config=%s src=%s', p.oid::regprocedure, pg_get_userbyid(p.proowner), p.prosecdef, p.proacl, p.proconfig, md5(p.prosrc)), E'\n' ORDER BY p.oid::regprocedure::text)
     FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace),
  (SELECT string_agg(format('goose %s %s %s %s', id, version_id, is_applied, tstamp), E'\n' ORDER BY id) FROM goose_db_version),
  (SELECT string_agg(format('role %s super=%s bypass=%s login=%s createdb=%s createrole=%s', rolname, rolsuper, rolbypassrls, rolcanlogin, rolcreatedb, rolcreaterole), E'\n' ORDER BY rolname)
     FROM pg_roles WHERE rolname = ANY($1)),
  (SELECT string_agg(format('member %s of %s', pg_get_userbyid(m.member), pg_get_userbyid(m.roleid)), E'\n' ORDER BY m.member, m.roleid)
     FROM pg_auth_members m WHERE pg_get_userbyid(m.member) = ANY($1))
)`

func snapshot(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var s string
	roles := []string{migrations.AppGroupRole}
	for r := range pathRoles {
		roles = append(roles, r)
	}
	if err := conn.QueryRow(context.Background(), fingerprint, roles).Scan(&s); err != nil {
		t.Fatalf("fingerprint: %v", err)
	}
	return s
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("OKIdempotent", func(t *testing.T) {
		conn := ownerConn(t, testDB.OwnerURL)
		before := snapshot(t, conn)
		if !strings.Contains(before, "goose ") || !strings.Contains(before, "users") || !strings.Contains(before, "role keyrelay_janitor") {
			t.Fatalf("fingerprint misses the schema:\n%s", before)
		}
		v1, err := migrations.Version(ctx, testDB.OwnerURL)
		if err != nil {
			t.Fatal(err)
		}
		if err := migrations.Up(ctx, testDB.OwnerURL, testDB.AppURL, quietLog()); err != nil {
			t.Fatalf("second Up: %v", err)
		}
		if after := snapshot(t, conn); after != before {
			t.Errorf("second Up changed the database:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		v2, err := migrations.Version(ctx, testDB.OwnerURL)
		if err != nil {
			t.Fatal(err)
		}
		if v1 != v2 || v1 < 1 {
			t.Errorf("version %d before, %d after", v1, v2)
		}
	})

	t.Run("OKCreatesMissingDatabase", func(t *testing.T) {
		fresh := &dbtest.DB{Name: fmt.Sprintf("keyrelay_test_migrations_new_%d", time.Now().UnixNano())}
		owner, err := url.Parse(testDB.OwnerURL)
		if err != nil {
			t.Fatal(err)
		}
		owner.Path = "/" + fresh.Name
		app, err := url.Parse(testDB.AppURL)
		if err != nil {
			t.Fatal(err)
		}
		app.Path = "/" + fresh.Name
		fresh.OwnerURL, fresh.AppURL = owner.String(), app.String()
		t.Cleanup(func() {
			if err := fresh.Drop(); err != nil {
				t.Errorf("drop %s: %v", fresh.Name, err)
			}
		})

		server := ownerConn(t, testDB.OwnerURL)
		exists := func() bool {
			var ok bool
			if err := server.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", fresh.Name).Scan(&ok); err != nil {
				t.Fatal(err)
			}
			return ok
		}
		if exists() {
			t.Fatalf("database %s exists before Up", fresh.Name)
		}
		if err := migrations.Up(ctx, fresh.OwnerURL, fresh.AppURL, quietLog()); err != nil {
			t.Fatalf("Up: %v", err)
		}
		if !exists() {
			t.Fatalf("Up did not create %s", fresh.Name)
		}
		conn := ownerConn(t, fresh.OwnerURL)
		if got, want := tenantTables(t, conn), tenantTables(t, ownerConn(t, testDB.OwnerURL)); !slices.Equal(got, want) {
			t.Errorf("fresh database has tables %v, want %v", got, want)
		}
		v, err := migrations.Version(ctx, fresh.OwnerURL)
		if err != nil {
			t.Fatal(err)
		}
		want, err := migrations.Version(ctx, testDB.OwnerURL)
		if err != nil {
			t.Fatal(err)
		}
		if v != want {
			t.Errorf("fresh database at version %d, want %d", v, want)
		}
		// The application role can connect and is bound by RLS there too.
		appConn := ownerConn(t, fresh.AppURL)
		var n int
		if err := appConn.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("fresh database: %d users visible without a tenant", n)
		}
		// Close the connections before Cleanup drops the database.
		appConn.Close(ctx)
		conn.Close(ctx)
	})
}
