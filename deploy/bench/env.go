package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/keyrelay/keyrelay/migrations"
	"github.com/keyrelay/keyrelay/migrations/dbtest"
	"github.com/keyrelay/keyrelay/tenants/secretbox"
)

// env is one bench run's world: its database, the server under test and
// the secrets they share.
type env struct {
	o         options
	dbName    string
	ownerURL  string
	appURL    string
	owner     *pgxpool.Pool // the tables' owner: seeding and EXPLAIN set-up only
	rdb       *redis.Client
	secret    []byte         // KEYRELAY_SECRET_KEY of the server
	box       *secretbox.Box // the same key: codes are hashed and sealed as the server does
	dir       string         // binaries, logs, pgbench scripts
	baseURL   string
	server    *exec.Cmd
	pprofAddr string    // -profile: the server's metrics address, with the profiler
	worker    *exec.Cmd // -workers between-runs: running only while draining
	bin, root string
	serverEnv []string
	bare      *exec.Cmd
	exited    map[*exec.Cmd]chan struct{}
	serverLog *os.File
}

func setUp(ctx context.Context, o options) (*env, error) {
	var b [4]byte
	rand.Read(b[:])
	e := &env{o: o, dbName: "keyrelay_bench_" + hex.EncodeToString(b[:])}
	var err error
	if e.dir, err = os.MkdirTemp("", "keyrelay-bench-"); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			e.tearDown()
		}
	}()
	if e.ownerURL, err = withDB(dbtest.Server(), e.dbName, ""); err != nil {
		return nil, err
	}
	if e.appURL, err = withDB(dbtest.Server(), e.dbName, migrations.AppGroupRole); err != nil {
		return nil, err
	}
	step("database %s: create and migrate", e.dbName)
	if err := migrations.Up(ctx, e.ownerURL, e.appURL, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		return nil, err
	}
	if e.owner, err = pgxpool.New(ctx, e.ownerURL); err != nil {
		return nil, err
	}
	e.secret = make([]byte, secretbox.KeySize)
	rand.Read(e.secret)
	if e.box, err = secretbox.New(e.secret); err != nil {
		return nil, err
	}
	e.rdb = redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", DB: o.redisDB})
	// The bench's own Redis database: last run's queued deliveries and
	// counters would otherwise be this run's background load.
	if err := e.rdb.FlushDB(ctx).Err(); err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	if o.trace {
		// Every statement the application role runs in this database goes
		// to PostgreSQL's log; the role's sessions pick it up at connect.
		if _, err := e.owner.Exec(ctx, fmt.Sprintf("ALTER ROLE %s IN DATABASE %s SET log_statement = 'all'",
			migrations.AppGroupRole, pgx.Identifier{e.dbName}.Sanitize())); err != nil {
			return nil, err
		}
	}
	if err := e.startServer(ctx); err != nil {
		return nil, err
	}
	ok = true
	return e, nil
}

// startServer builds ./app and runs it against the bench database, with
// the workers in-process as `go run ./app` runs them.
func (e *env) startServer(ctx context.Context) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	bin := filepath.Join(e.dir, "keyrelay")
	e.bin, e.root = bin, root
	step("build ./app")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./app")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build ./app: %w", err)
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	e.baseURL = "http://" + addr
	e.server = exec.Command(bin, "serve")
	// From the source tree, as `go run ./app`: the server builds the
	// bundled provider plugins from it.
	e.server.Dir = root
	e.server.Env = append(os.Environ(),
		"KEYRELAY_ENV=development",
		"KEYRELAY_DATABASE_URL="+e.ownerURL,
		"KEYRELAY_APP_DATABASE_URL="+e.appURL,
		fmt.Sprintf("KEYRELAY_REDIS_URL=redis://127.0.0.1:6379/%d", e.o.redisDB),
		"KEYRELAY_LISTEN="+addr,
		"KEYRELAY_BASE_URL="+e.baseURL,
		"KEYRELAY_SECRET_KEY="+base64.StdEncoding.EncodeToString(e.secret),
		"KEYRELAY_STATE_DIR="+filepath.Join(e.dir, "state"),
		"KEYRELAY_LIMIT_PREFIX=keyrelay:bench:"+e.dbName,
		// Seeding signs in a few owners and provisions boxes from one
		// address; the sign-in limit is not what is measured.
		"KEYRELAY_AUTH_RATE_LIMIT=100000-M",
		"KEYRELAY_WORKERS="+map[string]string{"inprocess": "inprocess", "between-runs": "separate"}[e.o.workers],
	)
	e.server.Env = append(e.server.Env, e.o.serverEnv...)
	if e.o.profile != "" {
		if e.pprofAddr, err = freeAddr(); err != nil {
			return err
		}
		e.server.Env = append(e.server.Env, "KEYRELAY_METRICS_LISTEN="+e.pprofAddr, "KEYRELAY_METRICS_PPROF=true")
	}
	e.serverEnv = e.server.Env
	if e.o.verbose {
		e.server.Stdout, e.server.Stderr = os.Stderr, os.Stderr
	} else {
		if e.serverLog, err = os.Create(filepath.Join(e.dir, "server.log")); err != nil {
			return err
		}
		e.server.Stdout, e.server.Stderr = e.serverLog, e.serverLog
	}
	step("start the server on %s (log: %s)", addr, filepath.Join(e.dir, "server.log"))
	if err := e.server.Start(); err != nil {
		return fmt.Errorf("start server: %w", err)
	}
	return waitReady(ctx, e.baseURL+"/readyz", e.watch(e.server))
}

// watch waits for cmd in the background; the channel closes when it exits.
func (e *env) watch(cmd *exec.Cmd) chan struct{} {
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	if e.exited == nil {
		e.exited = map[*exec.Cmd]chan struct{}{}
	}
	e.exited[cmd] = done
	return done
}

func waitReady(ctx context.Context, url string, exited chan struct{}) error {
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("the server exited at start (rerun with -v to see why)")
		default:
		}
		res, err := http.Get(url)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after 90s", url)
}

func (e *env) tearDown() error {
	e.stopProcess(e.bare)
	e.stopProcess(e.worker)
	e.stopProcess(e.server)
	if e.serverLog != nil {
		e.serverLog.Close()
	}
	if e.owner != nil {
		e.owner.Close()
	}
	if e.rdb != nil {
		e.rdb.Close()
	}
	var err error
	if e.ownerURL != "" {
		if e.o.keep {
			fmt.Printf("\nkept database %s: %s\n", e.dbName, e.ownerURL)
		} else {
			err = dropDB(e.dbName)
		}
	}
	if e.dir != "" && !e.o.keep {
		os.RemoveAll(e.dir)
	}
	return err
}

// stopProcess ends a process this bench started: SIGTERM, then SIGKILL
// after ten seconds.
func (e *env) stopProcess(cmd *exec.Cmd) {
	done, ok := e.exited[cmd]
	if cmd == nil || !ok {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func dropDB(name string) error {
	cfg, err := pgx.ParseConfig(dbtest.Server())
	if err != nil {
		return err
	}
	cfg.Database = "postgres"
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// The role setting of -trace lives with the database and goes with it.
	_, err = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

func withDB(server, name, user string) (string, error) {
	u, err := url.Parse(server)
	if err != nil {
		return "", fmt.Errorf("database URL: %w", err)
	}
	u.Path = "/" + name
	if user != "" {
		u.User = url.User(user)
	}
	q := u.Query()
	if q.Get("sslmode") == "" {
		q.Set("sslmode", "disable")
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// pgbenchArgs are the connection flags for pgbench as the application role.
func (e *env) pgbenchConn() []string {
	u, _ := url.Parse(e.appURL)
	var args []string
	// A socket directory travels as ?host=/dir (libpq's and pgx's form),
	// and then the URL has no host:port part.
	if dir := u.Query().Get("host"); dir != "" {
		args = append(args, "-h", dir)
	} else if host, port, err := net.SplitHostPort(u.Host); err == nil {
		args = append(args, "-h", host, "-p", port)
	} else if u.Host != "" {
		args = append(args, "-h", u.Host)
	}
	return append(args, "-U", u.User.Username(), strings.TrimPrefix(u.Path, "/"))
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run the bench from inside the keyrelay module")
	}
	return filepath.Dir(mod), nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func step(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
