// Command keyrelay is the whole service in one binary:
//
//	keyrelay [serve]   run the HTTP API (and, in development, migrate first)
//	keyrelay migrate   create the database and roles, apply migrations
//	keyrelay worker    run background workers alone
//	keyrelay box       the reference box (an MS5 simulator) on the command line
//	keyrelay keys      create and rotate the signing keys (keys without arguments says how)
//	keyrelay version   print the version
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	// Box time zones are checked with time.LoadLocation; embed the zone
	// database so that also works on a machine without one.
	_ "time/tzdata"

	"golang.org/x/sync/errgroup"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "keyrelay:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 {
		cmd = args[0]
	}
	if cmd == "version" {
		fmt.Fprintln(stdout, "keyrelay", buildVersion())
		return nil
	}
	if cmd == "box" {
		return runBox(ctx, args[1:], stdout, stderr)
	}
	cfg, err := LoadConfig(getenv)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	switch cmd {
	case "serve":
		return serve(ctx, cfg, log, stdout)
	case "migrate":
		return Migrate(ctx, cfg, log)
	case "worker":
		return worker(ctx, cfg, log)
	case "keys":
		return keysCommand(cfg, args[1:], stdout)
	default:
		return fmt.Errorf("unknown command %q (want serve, migrate, worker, keys or version)", cmd)
	}
}

func serve(ctx context.Context, cfg Config, log *slog.Logger, stdout io.Writer) error {
	if !cfg.Production() {
		if err := Migrate(ctx, cfg, log); err != nil {
			return err
		}
	}
	a, err := NewApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	if !cfg.Production() {
		if err := a.ensureDemo(ctx, stdout); err != nil {
			return fmt.Errorf("demo tenant: %w", err)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.Serve(gctx) })
	g.Go(func() error { return a.ServeMetrics(gctx) })
	if cfg.Workers {
		g.Go(func() error { return a.runWorkers(gctx) })
	}
	return g.Wait()
}

// worker runs the background side alone, for deployments that scale it
// apart from the HTTP replicas (KEYRELAY_WORKERS=separate on those).
func worker(ctx context.Context, cfg Config, log *slog.Logger) error {
	a, err := NewApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.runWorkers(gctx) })
	g.Go(func() error { return a.ServeMetrics(gctx) })
	return g.Wait()
}

// newLogger writes JSON in production, text otherwise; a line written with
// a traced context carries trace_id and span_id.
func newLogger(cfg Config, w io.Writer) *slog.Logger {
	if cfg.Production() {
		return slog.New(withTraceIDs(slog.NewJSONHandler(w, nil)))
	}
	return slog.New(withTraceIDs(slog.NewTextHandler(w, nil)))
}

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return "dev-" + s.Value
			}
		}
	}
	return version
}
