// Command bench measures keyrelay's hot paths against their ceilings on the
// machine it runs on (issues 6 and 7), so that anyone can rerun the numbers:
//
//	go run ./deploy/bench [flags] create|pickup|list|all
//
// Each run makes a database of its own (keyrelay_bench_*), migrates it,
// starts the real server as a subprocess (workers on) against it, seeds
// through the API (and, for the million bookings of the list case, with
// COPY rows built exactly as the API builds them), then drives the same
// work two ways in the same run: pgbench running the endpoint's SQL
// transaction as the application role (RLS applies), and HTTP load from
// vegeta used as a library, so that box requests are signed one by one.
// The database is dropped at the end unless -keep.
//
// README.md beside this file explains the method and keeps the numbers.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// options are the flags; the defaults are the issues' numbers.
type options struct {
	profile     string
	pipelined   bool
	keep        bool
	duration    time.Duration // each timed run, pgbench and HTTP alike
	runs        int           // each side runs this many times (2 shared cores are noisy)
	clients     int           // pgbench -c, and the HTTP max-rate workers
	createRate  int
	createBoxes int
	pickupRate  int
	listRate    int
	tenants     int // list: tenants in the database
	perTenant   int // list: bookings per tenant
	redisDB     int
	trace       bool
	verbose     bool
	workers     string   // inprocess | between-runs
	serverEnv   []string // NAME=value added to the server's environment
}

func main() {
	var o options
	flag.BoolVar(&o.keep, "keep", false, "keep the bench database (and print its URL) instead of dropping it")
	flag.DurationVar(&o.duration, "duration", 15*time.Second, "length of each timed run")
	flag.IntVar(&o.runs, "runs", 2, "runs of each side (pgbench, HTTP max rate, HTTP fixed rate)")
	flag.IntVar(&o.clients, "clients", 8, "pgbench clients, and HTTP workers for the max-rate runs")
	flag.IntVar(&o.createRate, "create-rate", 500, "fixed rate of the create-booking p99 run (requests/s)")
	flag.IntVar(&o.createBoxes, "create-boxes", 8, "create: boxes the 32 booked keys are spread over (1, 2, 4, 8, 16 or 32)")
	flag.IntVar(&o.pickupRate, "pickup-rate", 1000, "fixed rate of the pickup p99 run (requests/s)")
	flag.IntVar(&o.listRate, "list-rate", 200, "fixed rate of the list p99 runs (requests/s)")
	flag.IntVar(&o.tenants, "tenants", 1000, "list: tenants in the database")
	flag.IntVar(&o.perTenant, "per-tenant", 1000, "list: bookings per tenant")
	flag.IntVar(&o.redisDB, "redis-db", 11, "Redis database of the bench server (asynq queues have fixed names)")
	flag.BoolVar(&o.trace, "trace", false, "log every SQL statement of the bench database (PostgreSQL's log), send one create and one pickup, and stop: to check the pgbench scripts")
	flag.BoolVar(&o.verbose, "v", false, "show the server's log")
	flag.BoolVar(&o.pipelined, "pipelined", false, "pickup: also run pgbench sending the transaction in the server's two round trips (\\startpipeline), and report keyrelay against that ceiling too")
	flag.StringVar(&o.profile, "profile", "", "write a CPU profile of the server during each scenario's first HTTP max-rate run to `prefix`-<scenario>.pprof (go tool pprof -top <file>)")
	flag.StringVar(&o.workers, "workers", "between-runs", "where the background workers run: between-runs (a separate `worker` process that drains the queues between timed runs and is stopped during them, as pgbench's side delivers nothing either; the fleet layout) or inprocess (inside the server under test, during the runs too)")
	flag.Func("server-env", "`NAME=value` added to the environment of the server under test (and its worker), e.g. GOGC=200; repeatable", func(v string) error {
		if name, _, ok := strings.Cut(v, "="); !ok || name == "" {
			return fmt.Errorf("want NAME=value, not %q", v)
		}
		o.serverEnv = append(o.serverEnv, v)
		return nil
	})
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run ./deploy/bench [flags] create|pickup|list|all\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 2 && flag.Arg(0) == "bare-server" {
		// The re-executed bench binary serving the bare Fiber handler.
		if err := serveBare(flag.Arg(1)); err != nil {
			fmt.Fprintln(os.Stderr, "bench: bare server:", err)
			os.Exit(1)
		}
		return
	}
	if o.workers != "inprocess" && o.workers != "between-runs" {
		fmt.Fprintf(os.Stderr, "bench: -workers %q: want inprocess or between-runs\n", o.workers)
		os.Exit(2)
	}
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	scenarios := map[string][]string{"create": {"create"}, "pickup": {"pickup"}, "list": {"list"}, "all": {"create", "pickup", "list"}}
	which, ok := scenarios[flag.Arg(0)]
	if !ok {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, o, which)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, which []string) (err error) {
	env, err := setUp(ctx, o)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := env.tearDown(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if o.trace {
		return traceOnce(ctx, env)
	}
	var report []section
	for _, s := range which {
		var sec section
		switch s {
		case "create":
			sec, err = benchCreate(ctx, env)
		case "pickup":
			sec, err = benchPickup(ctx, env)
		case "list":
			sec, err = benchList(ctx, env)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		report = append(report, sec)
		sec.print(os.Stdout)
	}
	fmt.Println("\n## Summary")
	for _, sec := range report {
		sec.printVerdicts(os.Stdout)
	}
	return nil
}
