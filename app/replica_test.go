package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	dto "github.com/prometheus/client_model/go"

	"github.com/keyrelay/keyrelay/firmware/bundles"
	"github.com/keyrelay/keyrelay/migrations"
	"github.com/keyrelay/keyrelay/tenants"
)

// pgBinDir finds the PostgreSQL server binaries (initdb, pg_ctl,
// pg_basebackup): Debian keeps them under /usr/lib/postgresql/<version>/bin,
// off the PATH. It skips the test when they are missing, except in CI,
// where .ci/run has PostgreSQL installed and that is a failure.
func pgBinDir(t *testing.T) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersionOf(dirs[i]) > pgVersionOf(dirs[j]) })
	if p, err := exec.LookPath("initdb"); err == nil {
		dirs = append(dirs, filepath.Dir(p))
	}
	for _, d := range dirs {
		if missing := missingIn(d, "initdb", "pg_ctl", "pg_basebackup", "postgres"); missing == "" {
			return d
		}
	}
	msg := "the PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) are not installed: apt-get install postgresql to run this test"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func pgVersionOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func missingIn(dir string, names ...string) string {
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			return n
		}
	}
	return ""
}

// pgCluster is a PostgreSQL server this test runs from a data directory of
// its own, on a loopback port.
type pgCluster struct {
	bin, dir, sockets, log string
	port                   int
}

// pgAs runs a PostgreSQL program as the postgres user when the test runs
// as root (the server refuses to run as root), as the caller otherwise.
func pgAs(bin, name string, args ...string) *exec.Cmd {
	path := filepath.Join(bin, name)
	if os.Geteuid() == 0 {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	}
	return exec.Command(path, args...)
}

func pgRun(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
}

// pgWorkDir is a directory the server's user may use, removed when the
// test ends (after the servers in it stop: register it first).
func pgWorkDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "keyrelay-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs the postgres user to run PostgreSQL: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// start runs the server until the test ends; extra are its -c settings.
func (c *pgCluster) start(t *testing.T, extra ...string) {
	t.Helper()
	opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s", c.port, c.sockets)
	for _, e := range extra {
		opts += " -c " + e
	}
	pgRun(t, pgAs(c.bin, "pg_ctl", "-D", c.dir, "-l", c.log, "-w", "-t", "60", "-o", opts, "start"))
	t.Cleanup(func() { c.stop() })
}

// stop ends the server at once; safe to call twice.
func (c *pgCluster) stop() {
	_ = pgAs(c.bin, "pg_ctl", "-D", c.dir, "-m", "immediate", "-w", "stop").Run()
}

func (c *pgCluster) url(user, db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", user, c.port, db)
}

func (c *pgCluster) logText(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(c.log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// startPrimaryAndStandby makes a new primary (initdb, replication allowed
// from loopback: initdb's own pg_hba.conf) and a streaming standby of it
// (pg_basebackup -R), both logging every statement, and waits until the
// standby streams.
func startPrimaryAndStandby(t *testing.T) (primary, standby *pgCluster) {
	t.Helper()
	bin := pgBinDir(t)
	work := pgWorkDir(t)
	primary = &pgCluster{bin: bin, dir: filepath.Join(work, "primary"), sockets: work, log: filepath.Join(work, "primary.log"), port: freePort(t)}
	standby = &pgCluster{bin: bin, dir: filepath.Join(work, "standby"), sockets: work, log: filepath.Join(work, "standby.log"), port: freePort(t)}
	pgRun(t, pgAs(bin, "initdb", "-D", primary.dir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"))
	// wal_level replica and wal senders are initdb's defaults; said anyway.
	primary.start(t, "wal_level=replica", "max_wal_senders=4", "fsync=off", "log_statement=all")
	pgRun(t, pgAs(bin, "pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(primary.port), "-U", "postgres",
		"-D", standby.dir, "-R", "-X", "stream", "-c", "fast", "--no-sync"))
	standby.start(t, "hot_standby=on", "fsync=off", "log_statement=all")
	conn := pgConnect(t, primary.url("postgres", "postgres"))
	waitFor(t, "the standby to stream", 30*time.Second, func() bool {
		var n int
		return conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'`).Scan(&n) == nil && n == 1
	})
	return primary, standby
}

func pgConnect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func pgExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestReadReplica runs keyrelay on a real primary and a real streaming
// replica of it, with KEYRELAY_DATABASE_REPLICA_URL set: the booking list
// and the bundle build read on the replica (its statement log has their
// queries, the primary's has not), bound to the tenant as on the primary
// and read-only; writes go to the primary; a write is in the next list
// at once (the read waits for the replica to replay it), and a replica
// that lags past KEYRELAY_DATABASE_REPLICA_MAX_WAIT or is down is read
// around, on the primary.
func TestReadReplica(t *testing.T) {
	primary, standby := startPrimaryAndStandby(t)
	ctx := context.Background()
	ownerURL, appURL := primary.url("postgres", "keyrelay"), primary.url(migrations.AppGroupRole, "keyrelay")
	if err := migrations.Up(ctx, ownerURL, appURL, discardLogger()); err != nil {
		t.Fatal(err)
	}
	const maxWait = 300 * time.Millisecond
	s := startServer(t, func(c *Config) {
		c.DatabaseURL, c.AppDatabaseURL = ownerURL, appURL
		c.DatabaseReplicaURL = standby.url(migrations.AppGroupRole, "keyrelay")
		c.ReplicaMaxWait = maxWait
		c.DB = DBPool{MaxConns: 4, MaxIdleConns: 2, ConnMaxIdleTime: time.Minute, ConnMaxLifetime: time.Hour}
	})
	if s.app.replica == nil {
		t.Fatal("KEYRELAY_DATABASE_REPLICA_URL is set but the app has no replica reader")
	}
	if st, _ := s.app.db.DB(); st.Stats().MaxOpenConnections != 4 {
		t.Fatalf("the primary's pool allows %d connections, want KEYRELAY_DB_MAX_CONNS=4", st.Stats().MaxOpenConnections)
	}
	if st, _ := s.app.replica.db.DB(); st.Stats().MaxOpenConnections != 4 {
		t.Fatalf("the replica's pool allows %d connections, want 4", st.Stats().MaxOpenConnections)
	}
	owner := pgConnect(t, ownerURL)                                              // the primary, past row-level security
	standbyOwner := pgConnect(t, standby.url("postgres", "keyrelay"))            // the replica, past row-level security
	standbyApp := pgConnect(t, standby.url(migrations.AppGroupRole, "keyrelay")) // the replica as the app
	reads := func() map[string]float64 {
		m := map[string]float64{}
		for _, r := range []string{readReplica, readPrimaryLagging, readPrimaryUnavailable} {
			var d dto.Metric
			if err := s.app.replica.reads.WithLabelValues(r).Write(&d); err != nil {
				t.Fatal(err)
			}
			m[r] = d.GetCounter().GetValue()
		}
		return m
	}
	expectReads := func(t *testing.T, before map[string]float64, result string, n float64) {
		t.Helper()
		after := reads()
		for r, v := range after {
			want := before[r]
			if r == result {
				want += n
			}
			if v != want {
				t.Fatalf("replica reads went %v → %v; want %v more %s only", before, after, n, result)
			}
		}
	}

	f := s.signup(t)
	location, boxID, keyID := uuid.New(), insertBoxOn(t, owner, f.ID, "MS5"), uuid.New()
	pgExec(t, owner, "INSERT INTO locations (tenant_id, id, name) VALUES ($1, $2, 'Replica lot')", f.ID, location)
	pgExec(t, owner, "UPDATE boxes SET location_id = $2 WHERE tenant_id = $1 AND id = $3", f.ID, location, boxID)
	pgExec(t, owner, "INSERT INTO keys (tenant_id, id, name, fob_serial, home_box_id, home_bin, box_id, bin) VALUES ($1, $2, 'Van 7', $3, $4, 1, $4, 1)",
		f.ID, keyID, "FOB-"+keyID.String()[:8], boxID)
	start := time.Now().Add(time.Hour).Truncate(time.Second)
	book := func(t *testing.T) string { // one key: each booking in a window of its own
		t.Helper()
		start = start.Add(3 * time.Hour)
		return f.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(keyID, bkPhone(), start, start.Add(2*time.Hour))).JSON(t)["id"].(string)
	}
	listIDs := func(t *testing.T, c *client) []string {
		t.Helper()
		var ids []string
		for _, it := range c.expect(t, 200, "GET", "/api/v1/bookings?limit=100", nil).JSON(t)["items"].([]any) {
			ids = append(ids, it.(map[string]any)["id"].(string))
		}
		return ids
	}
	onStandby := func(t *testing.T, id string) bool {
		t.Helper()
		var n int
		if err := standbyOwner.QueryRow(ctx, "SELECT count(*) FROM bookings WHERE id = $1", id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	var first string

	t.Run("WritesGoToThePrimary", func(t *testing.T) {
		first = book(t)
		var n int
		if err := owner.QueryRow(ctx, "SELECT count(*) FROM bookings WHERE id = $1", first).Scan(&n); err != nil || n != 1 {
			t.Fatalf("booking %s on the primary: %d rows, %v", first, n, err)
		}
	})

	t.Run("ListReadsTheReplica", func(t *testing.T) {
		before := reads()
		// Created a moment ago, listed at once: the read waited for the
		// replica to replay it.
		second := book(t)
		if ids := listIDs(t, f.Owner); !slices.Contains(ids, first) || !slices.Contains(ids, second) {
			t.Fatalf("the list %v lacks %s or %s", ids, first, second)
		}
		expectReads(t, before, readReplica, 1)
		const listQuery = "ORDER BY bk.id DESC LIMIT"
		waitFor(t, "the list query in the replica's statement log", 5*time.Second, func() bool {
			return strings.Contains(standby.logText(t), listQuery)
		})
		if strings.Contains(primary.logText(t), listQuery) {
			t.Fatal("the primary ran the list query too")
		}
		// And under the tenant: set_config on the replica, as on the primary.
		if !strings.Contains(standby.logText(t), "set_config('app.tenant_id'") {
			t.Fatal("the replica's log has no set_config of the tenant")
		}
	})

	t.Run("ReplicaIsBoundToTheTenant", func(t *testing.T) {
		other := s.signup(t)
		before := reads()
		if ids := listIDs(t, other.Owner); len(ids) != 0 {
			t.Fatalf("another tenant lists %v", ids)
		}
		expectReads(t, before, readReplica, 1)
		// With no tenant set, the app's role sees nothing on the replica.
		var n int
		if err := standbyApp.QueryRow(ctx, "SELECT count(*) FROM bookings").Scan(&n); err != nil || n != 0 {
			t.Fatalf("the app role sees %d bookings on the replica without a tenant (%v)", n, err)
		}
	})

	t.Run("ReplicaIsReadOnly", func(t *testing.T) {
		var pgErr *pgconn.PgError
		_, err := standbyApp.Exec(ctx, "INSERT INTO locations (tenant_id, id, name) VALUES ($1, $2, 'nope')", f.ID, uuid.New())
		if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
			t.Fatalf("a write on the replica: %v, want read_only_sql_transaction (25006)", err)
		}
		// The reader's transaction is read-only too, and a write in it is
		// an error, not a cue to write on the primary.
		before := reads()
		err = s.app.scope.Do(ctx, f.ID, func(ctx context.Context) error {
			return s.app.replica.Read(ctx, func(ctx context.Context) error {
				tx, err := tenants.Tx(ctx)
				if err != nil {
					return err
				}
				return tx.Exec("UPDATE bookings SET visitor_name = 'changed' WHERE id = ?", first).Error
			})
		})
		if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
			t.Fatalf("a write in a replica read: %v, want 25006", err)
		}
		expectReads(t, before, readReplica, 0)
		var name string
		if err := owner.QueryRow(ctx, "SELECT visitor_name FROM bookings WHERE id = $1", first).Scan(&name); err != nil || name == "changed" {
			t.Fatalf("visitor name %q (%v)", name, err)
		}
	})

	s.provisionBox(t, f, boxID)
	build := func(t *testing.T) bundles.Built {
		t.Helper()
		var out bundles.Built
		err := s.app.scope.Do(ctx, f.ID, func(ctx context.Context) (err error) {
			out, err = s.app.bundles.Rebuild(ctx, boxID)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	t.Run("BundleBuildReadsTheReplica", func(t *testing.T) {
		live := pgCount(t, owner, "SELECT count(*) FROM bookings WHERE key_id = $1 AND revoked_at IS NULL", keyID)
		before := reads()
		out := build(t)
		if out.Accesses != live {
			t.Fatalf("the bundle holds %d accesses, want %d", out.Accesses, live)
		}
		expectReads(t, before, readReplica, 1)
		const bundleQuery = "uuid_send(b.id)"
		waitFor(t, "the bundle query in the replica's statement log", 5*time.Second, func() bool {
			return strings.Contains(standby.logText(t), bundleQuery)
		})
		if strings.Contains(primary.logText(t), bundleQuery) {
			t.Fatal("the primary ran the bundle query too")
		}
	})

	t.Run("LaggingReplicaIsReadAround", func(t *testing.T) {
		pgExec(t, standbyOwner, "SELECT pg_wal_replay_pause()")
		waitFor(t, "replay to pause", 10*time.Second, func() bool {
			var st string
			return standbyOwner.QueryRow(ctx, "SELECT pg_get_wal_replay_pause_state()").Scan(&st) == nil && st == "paused"
		})
		resumed := false
		resume := func() {
			if !resumed {
				resumed = true
				pgExec(t, standbyOwner, "SELECT pg_wal_replay_resume()")
			}
		}
		defer resume()
		late := book(t)
		if onStandby(t, late) {
			t.Fatal("the paused replica has the new booking")
		}
		before := reads()
		began := time.Now()
		if ids := listIDs(t, f.Owner); !slices.Contains(ids, late) {
			t.Fatalf("the list %v lacks %s, written before it: a stale read", ids, late)
		}
		if d := time.Since(began); d < maxWait {
			t.Fatalf("the list answered in %v, before the replica's %v of grace", d, maxWait)
		}
		expectReads(t, before, readPrimaryLagging, 1)

		live := pgCount(t, owner, "SELECT count(*) FROM bookings WHERE key_id = $1 AND revoked_at IS NULL", keyID)
		before = reads()
		if out := build(t); out.Accesses != live {
			t.Fatalf("the bundle built while the replica lags holds %d accesses, want %d", out.Accesses, live)
		}
		expectReads(t, before, readPrimaryLagging, 1)

		resume()
		waitFor(t, "the replica to replay the booking", 10*time.Second, func() bool { return onStandby(t, late) })
		before = reads()
		if ids := listIDs(t, f.Owner); !slices.Contains(ids, late) {
			t.Fatalf("the list %v lacks %s", ids, late)
		}
		expectReads(t, before, readReplica, 1)
	})

	t.Run("ReplicaDownIsReadAround", func(t *testing.T) {
		standby.stop()
		before := reads()
		ids := listIDs(t, f.Owner)
		if n := pgCount(t, owner, "SELECT count(*) FROM bookings WHERE tenant_id = $1", f.ID); len(ids) != n {
			t.Fatalf("the list has %d bookings, the primary %d", len(ids), n)
		}
		expectReads(t, before, readPrimaryUnavailable, 1)
		live := pgCount(t, owner, "SELECT count(*) FROM bookings WHERE key_id = $1 AND revoked_at IS NULL", keyID)
		if out := build(t); out.Accesses != live {
			t.Fatalf("the bundle holds %d accesses, want %d", out.Accesses, live)
		}
		expectReads(t, before, readPrimaryUnavailable, 2)
	})
}

func insertBoxOn(t *testing.T, conn *pgx.Conn, tenantID uuid.UUID, model string) uuid.UUID {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	pgExec(t, conn, `INSERT INTO boxes (tenant_id, id, name, model, timezone, bins) VALUES ($1, $2, $3, $4, 'Europe/Paris', 12)`, tenantID, id, "Box "+id.String()[:8], model)
	return id
}

func pgCount(t *testing.T, conn *pgx.Conn, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}
