package deploy_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/keyrelay/keyrelay/migrations/dbtest"
	"github.com/keyrelay/keyrelay/tenants"
)

// startPgBouncer runs PgBouncer in transaction mode in front of the test
// database and returns its address. Two pools: the database itself with
// two server connections (far fewer than the clients, so they must share),
// and "leakcheck", the same database with one, for the control below.
func startPgBouncer(t *testing.T, db *dbtest.DB) string {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("pgbouncer is not installed; .ci/run installs it (apt-get install pgbouncer)")
		}
		t.Skip("pgbouncer is not installed (apt-get install pgbouncer); CI runs this test")
	}
	// Not t.TempDir(): its parent is private to root, and PgBouncer runs
	// as postgres when the tests run as root.
	dir, err := os.MkdirTemp("", "keyrelay-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	conf := fmt.Sprintf(`[databases]
%[1]s = host=127.0.0.1 port=5432 dbname=%[1]s pool_size=2
leakcheck = host=127.0.0.1 port=5432 dbname=%[1]s pool_size=1

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %[2]d
unix_socket_dir =
auth_type = trust
auth_file = %[3]s/users.txt
pool_mode = transaction
max_client_conn = 200
server_reset_query =
logfile = %[3]s/pgbouncer.log
`, db.Name, port, dir)
	if err := os.WriteFile(filepath.Join(dir, "pgbouncer.ini"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "users.txt"), []byte(`"keyrelay_app" ""`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{filepath.Join(dir, "pgbouncer.ini")}
	if os.Geteuid() == 0 {
		// PgBouncer refuses to run as root (CI is root).
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root and no postgres user to run pgbouncer as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, p := range []string{dir, filepath.Join(dir, "pgbouncer.ini"), filepath.Join(dir, "users.txt")} {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		args = append([]string{"-u", "postgres"}, args...)
	}
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pgbouncer: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr
		}
		if i == 100 {
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			t.Fatalf("pgbouncer did not listen on %s:\n%s\n%s", addr, log, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPgBouncerTransactionMode runs tenant-scoped transactions of two
// tenants concurrently through PgBouncer in transaction mode, with the
// application's own pool settings (gorm over pgx, 20 connections) against
// two server connections: every transaction sees its own tenant and
// nothing else, and no setting survives into the next client's
// transaction. tenants.Scope sets app.tenant_id with set_config(…, true),
// which PostgreSQL drops at COMMIT or ROLLBACK, before PgBouncer hands the
// server connection to someone else.
func TestPgBouncerTransactionMode(t *testing.T) {
	db, err := dbtest.Create("deploy_pgbouncer")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Drop() })
	addr := startPgBouncer(t, db)

	owner, err := sql.Open("pgx", db.OwnerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	tenantIDs := []uuid.UUID{uuid.New(), uuid.New()}
	const usersEach = 3
	for i, id := range tenantIDs {
		if _, err := owner.Exec("INSERT INTO tenants (tenant_id, name) VALUES ($1, $2)", id, fmt.Sprintf("pgbouncer %d", i)); err != nil {
			t.Fatal(err)
		}
		for j := range usersEach {
			if _, err := owner.Exec("INSERT INTO users (tenant_id, id, name, email, role) VALUES ($1, $2, $3, $4, 'staff')",
				id, uuid.New(), fmt.Sprintf("u%d", j), fmt.Sprintf("u%d-%s@example.com", j, id.String()[:8])); err != nil {
				t.Fatal(err)
			}
		}
	}

	// The URL an operator writes: through PgBouncer, and exec mode, since
	// pgx's default caches named prepared statements per connection, which
	// PgBouncer before 1.21 cannot follow across server connections.
	url := fmt.Sprintf("postgres://keyrelay_app@%s/%s?sslmode=disable&default_query_exec_mode=exec", addr, db.Name)
	gdb, err := gorm.Open(postgres.Open(url), &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, _ := gdb.DB()
	defer sqlDB.Close()
	sqlDB.SetMaxOpenConns(20) // as app.NewApp
	sqlDB.SetMaxIdleConns(20)
	scope := tenants.NewScope(gdb)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var (
		mu       sync.Mutex
		pids     = map[int]map[uuid.UUID]bool{} // server backend → tenants it served
		failures []string
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	const workers, rounds = 16, 40
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				want := tenantIDs[(w+r)%2]
				err := scope.Do(ctx, want, func(ctx context.Context) error {
					tx, err := tenants.Tx(ctx)
					if err != nil {
						return err
					}
					var row struct {
						Setting string
						PID     int
					}
					if err := tx.Raw("SELECT current_setting('app.tenant_id', true) AS setting, pg_backend_pid() AS pid").Scan(&row).Error; err != nil {
						return err
					}
					if row.Setting != want.String() {
						fail("transaction for %s saw app.tenant_id %q", want, row.Setting)
					}
					// Hold the server connection a little so others queue
					// behind it and transactions interleave.
					if err := tx.Exec("SELECT pg_sleep(0.002)").Error; err != nil {
						return err
					}
					var seen []uuid.UUID
					if err := tx.Raw("SELECT DISTINCT tenant_id FROM users").Scan(&seen).Error; err != nil {
						return err
					}
					if len(seen) != 1 || seen[0] != want {
						fail("transaction for %s saw users of tenants %v", want, seen)
					}
					mu.Lock()
					if pids[row.PID] == nil {
						pids[row.PID] = map[uuid.UUID]bool{}
					}
					pids[row.PID][want] = true
					mu.Unlock()
					return nil
				})
				if err != nil {
					fail("scope.Do: %v", err)
					return
				}
				// Outside any tenant transaction, on whichever server
				// connection PgBouncer picks: nothing is left behind.
				var leftover sql.NullString
				var visible int
				if err := sqlDB.QueryRowContext(ctx, "SELECT current_setting('app.tenant_id', true), (SELECT count(*) FROM users)").Scan(&leftover, &visible); err != nil {
					fail("bare query: %v", err)
					return
				}
				if leftover.String != "" || visible != 0 {
					fail("after commit a new transaction saw app.tenant_id %q and %d users", leftover.String, visible)
				}
			}
		}()
	}
	wg.Wait()
	for i, f := range failures {
		if i == 10 {
			t.Errorf("… and %d more", len(failures)-10)
			break
		}
		t.Error(f)
	}
	// The proof is only worth something if connections were shared.
	shared := 0
	for _, ts := range pids {
		if len(ts) == 2 {
			shared++
		}
	}
	if len(pids) > 2 || shared == 0 {
		t.Fatalf("server connections %d (want at most PgBouncer's pool of 2), serving both tenants: %d; PgBouncer did not multiplex", len(pids), shared)
	}
	t.Logf("%d transactions from 20 client connections over %d server connections, %d of them serving both tenants", workers*rounds, len(pids), shared)

	// The control: a session-level setting (set_config(…, false), what
	// tenants.Scope must never use) does leak to another client through the
	// one-connection pool, so the checks above would have seen a leak.
	leakURL := fmt.Sprintf("postgres://keyrelay_app@%s/leakcheck?sslmode=disable&default_query_exec_mode=exec", addr)
	leak, err := sql.Open("pgx", leakURL)
	if err != nil {
		t.Fatal(err)
	}
	defer leak.Close()
	a, err := leak.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := leak.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := a.ExecContext(ctx, "SELECT set_config('app.tenant_id', $1, false)", tenantIDs[0].String()); err != nil {
		t.Fatal(err)
	}
	var got sql.NullString
	if err := b.QueryRowContext(ctx, "SELECT current_setting('app.tenant_id', true)").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got.String != tenantIDs[0].String() {
		t.Fatalf("control: a session-level setting did not reach the other client (%q); the pool is not in transaction mode and the test proves nothing", got.String)
	}
	if _, err := a.ExecContext(ctx, "RESET app.tenant_id"); err != nil {
		t.Fatal(err)
	}
}
