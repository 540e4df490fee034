package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/keyrelay/keyrelay/firmware/bundles"
	"github.com/keyrelay/keyrelay/firmware/commands"
	"github.com/keyrelay/keyrelay/firmware/devices"
	"github.com/keyrelay/keyrelay/firmware/health"
	"github.com/keyrelay/keyrelay/firmware/offline"
	"github.com/keyrelay/keyrelay/firmware/releases"
	"github.com/keyrelay/keyrelay/firmware/signing"
	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
	"github.com/keyrelay/keyrelay/jobs/overdue"
	"github.com/keyrelay/keyrelay/jobs/relay"
	"github.com/keyrelay/keyrelay/migrations"
	"github.com/keyrelay/keyrelay/plugins/host"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/accounts"
	"github.com/keyrelay/keyrelay/tenants/bookings"
	"github.com/keyrelay/keyrelay/tenants/exchange"
	"github.com/keyrelay/keyrelay/tenants/guard"
	"github.com/keyrelay/keyrelay/tenants/inventory"
	"github.com/keyrelay/keyrelay/tenants/outbox"
	"github.com/keyrelay/keyrelay/tenants/providers"
	"github.com/keyrelay/keyrelay/tenants/secretbox"
	"github.com/keyrelay/keyrelay/tenants/visitors"
	"github.com/keyrelay/keyrelay/tenants/webhooks"
)

// App is the composition root: it owns the connections and the services
// built on them, and runs the HTTP server.
type App struct {
	cfg   Config
	log   *slog.Logger
	db    *gorm.DB              // application role
	redis redis.UniversalClient // one node, Sentinel or Cluster: see redis.go
	http  *fiber.App
	// replica reads the booking list and the bundles' data on a streaming
	// replica (KEYRELAY_DATABASE_REPLICA_URL); nil without one.
	replica *replicaReader

	scope     *tenants.Scope
	box       *secretbox.Box
	outbox    *outbox.Outbox
	accounts  *accounts.Service
	bookings  *bookings.Service
	providers *providers.Store
	inventory *inventory.Service
	defaults  map[string]providers.Choice // the platform's provider per channel
	guard     *guard.Guard
	plugins   *host.Host
	devices   *devices.Service
	hub       *commands.Hub
	exchange  *exchange.Service
	health    *health.Service
	commands  *commands.Service
	offline   *offline.Service
	sync      *boxsync.Service
	webhooks  *webhooks.Service
	overdue   *overdue.Sweeper
	releases  *releases.Service
	bundles   *bundles.Service
	visitors  *visitors.Service

	queueOpt asynq.RedisConnOpt
	queue    *asynq.Client

	metrics       *Metrics
	inspector     *asynq.Inspector // the queue's depth, read when metrics are scraped
	tracer        trace.Tracer
	traceShutdown func(context.Context) error // flushes spans not yet exported
}

// unreachable is a dependency that did not answer: main prints it as one
// line that says which, where and how to start it.
type unreachable struct {
	what, where, hint string
	err               error
}

func (u *unreachable) Error() string {
	return fmt.Sprintf("cannot reach %s at %s (%s); %s", u.what, u.where, rootCause(u.err), u.hint)
}

func (u *unreachable) Unwrap() error { return u.err }

// rootCause keeps the last, most specific part of a driver's error chain.
func rootCause(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

func pgWhere(rawURL string) string {
	if cfg, err := pgx.ParseConfig(rawURL); err == nil {
		return fmt.Sprintf("%s:%d", cfg.Host, cfg.Port)
	}
	return "the configured URL"
}

func pgUnreachable(rawURL string, err error) error {
	return &unreachable{what: "PostgreSQL", where: pgWhere(rawURL), err: err,
		hint: "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start (or set KEYRELAY_DATABASE_URL)"}
}

func redisUnreachable(where string, err error) error {
	return &unreachable{what: "Redis", where: where, err: err,
		hint: `start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no (or set KEYRELAY_REDIS_URL)`}
}

// isConnError tells a dependency that is down from one that answered with an
// error of its own (a wrong password, a missing role).
func isConnError(err error) bool {
	var op *net.OpError
	var dns *net.DNSError
	return errors.As(err, &op) || errors.As(err, &dns) || errors.Is(err, context.DeadlineExceeded)
}

// Migrate applies migrations as the owner.
func Migrate(ctx context.Context, cfg Config, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := migrations.Up(ctx, cfg.DatabaseURL, cfg.AppDatabaseURL, log); err != nil {
		if isConnError(err) {
			return pgUnreachable(cfg.DatabaseURL, err)
		}
		return err
	}
	return nil
}

// NewApp connects to PostgreSQL (as the application role) and Redis and
// builds every service. It does not migrate.
func NewApp(ctx context.Context, cfg Config, log *slog.Logger) (*App, error) {
	log = slog.New(withTraceIDs(log.Handler()))
	a := &App{cfg: cfg, log: log, metrics: NewMetrics()}
	tp, shutdown, err := newTracerProvider(ctx, cfg)
	if err != nil {
		return nil, err
	}
	a.tracer, a.traceShutdown = tp.Tracer("github.com/keyrelay/keyrelay"), shutdown
	if a.db, err = openPool(ctx, cfg.AppDatabaseURL, cfg.DB); err != nil {
		return nil, err
	}
	sqlDB, err := a.db.DB()
	if err != nil {
		return nil, err
	}
	if cfg.tracing() {
		if err := traceDB(a.db, a.tracer); err != nil {
			sqlDB.Close()
			return nil, err
		}
	}
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()

	rt, err := parseRedisURL(cfg.RedisURL)
	if err != nil {
		sqlDB.Close()
		return nil, fmt.Errorf("KEYRELAY_REDIS_URL: %w", err)
	}
	a.redis = rt.client()
	if err := a.redis.Ping(pingCtx).Err(); err != nil {
		a.Close()
		return nil, redisUnreachable(rt.where(), err)
	}

	// The read replica is optional and never stops a start: a replica down
	// now is read around (replica.go) until it answers.
	if cfg.DatabaseReplicaURL != "" {
		if a.replica, err = newReplicaReader(ctx, cfg, a.tracer, log.With("component", "replica"), a.metrics); err != nil {
			a.Close()
			return nil, err
		}
	}
	a.scope = tenants.NewScope(a.db)
	if a.box, err = secretbox.New(cfg.SecretKey); err != nil {
		a.Close()
		return nil, err
	}
	outboxOpts := []outbox.Option{outbox.WithWaker(relay.Waker{Redis: a.redis, Channel: a.outboxWakeChannel(), Log: log})}
	if cfg.tracing() {
		outboxOpts = append(outboxOpts, outbox.WithWriteTracer(outboxWriteTracer(a.tracer)))
	}
	a.outbox = outbox.New(a.box, outboxOpts...)
	acfg := accounts.DefaultConfig(cfg.BaseURL)
	acfg.SessionTTL, acfg.SessionIdle = cfg.SessionTTL, cfg.SessionIdle
	acfg.SMSPerPhoneHour, acfg.SMSPerPhoneDay = cfg.SMSPerPhoneHour, cfg.SMSPerPhoneDay
	if a.guard, err = guard.New(a.redis, cfg.LimitPrefix); err != nil {
		a.Close()
		return nil, err
	}
	hasher := accounts.NewHasher(cfg.HashConcurrency, 5*time.Second)
	a.accounts, err = accounts.NewService(accounts.Deps{Scope: a.scope, DB: a.db, Hasher: hasher, Keys: a.box, Guard: a.guard, Messages: a.outbox, Log: log}, acfg)
	if err != nil {
		a.Close()
		return nil, err
	}
	if a.bookings, err = bookings.NewService(bookings.Deps{Keys: a.box, Messages: a.outbox, Locks: a.guard, Replica: a.replica.orNil()}, bookings.DefaultConfig(cfg.BaseURL)); err != nil {
		a.Close()
		return nil, err
	}
	a.queueOpt = rt.queueOpt()
	a.queue = rt.queueClient(a.redis)
	a.inspector = asynq.NewInspector(a.queueOpt)
	a.metrics.Registry.MustRegister(newStateCollector(a.db, a.inspector, log.With("component", "metrics")))
	if a.plugins, err = startPlugins(ctx, cfg, log, a.metrics.PluginRestarted, a.tracer); err != nil {
		a.Close()
		return nil, fmt.Errorf("provider plugins: %w", err)
	}
	// Known series start at zero, so a first restart shows in rate().
	for _, p := range a.plugins.Providers() {
		a.metrics.pluginRestarts.WithLabelValues(p.Name)
	}
	if a.defaults, err = cfg.defaultProviders(); err != nil {
		a.Close()
		return nil, err
	}
	a.devices = devices.New(a.scope, a.box, a.redis, cfg.LimitPrefix+":", cfg.RootPublicKey)
	a.hub = commands.NewHub(a.redis, cfg.LimitPrefix+":", log)
	a.commands = commands.New(a.hub)
	ecfg := exchange.DefaultConfig()
	ecfg.SMSPerPhoneHour, ecfg.SMSPerPhoneDay = cfg.SMSPerPhoneHour, cfg.SMSPerPhoneDay
	hcfg := health.DefaultConfig()
	hcfg.OfflineAfter, hcfg.AlertAfter = cfg.BoxOfflineAfter, cfg.BoxOfflineAlertAfter
	a.health = health.New(a.scope, a.redis, cfg.LimitPrefix+":", a.accounts, hcfg, log)
	a.offline = offline.New(a.devices, a.box)
	a.sync = boxsync.New(boxsync.Deps{Scope: a.scope, Offline: a.offline, Alerts: a.accounts, Reminders: a.bookings, Emit: webhooks.EmitAll, Log: log.With("component", "sync"), Observer: a.metrics})
	a.exchange = exchange.New(exchange.Deps{Accounts: a.accounts, Messages: a.outbox, Keys: a.box, Guard: a.guard, Commands: a.commands, Secrets: a.devices,
		Reminders: a.bookings, Observer: a.metrics}, ecfg)
	// Webhook URLs: https to public hosts in production; development and
	// tests may use a local receiver.
	a.webhooks = webhooks.New(a.box, webhooks.Config{AllowPrivate: !cfg.Production()})
	a.overdue = overdue.New(a.db, a.scope, a.accounts, log.With("component", "overdue"))
	if a.releases, err = newReleases(a, cfg, log); err != nil {
		a.Close()
		return nil, err
	}
	if a.bundles, err = newBundles(a, cfg); err != nil {
		a.Close()
		return nil, err
	}
	// Visitors as data subjects: erasure ends their accesses through the
	// booking service, as staff would.
	a.visitors, err = visitors.New(visitors.Deps{Hasher: a.box, Messages: a.outbox, RetireAlias: a.bookings.RetireAlias,
		Revoke: func(ctx context.Context, id uuid.UUID) error { _, err := a.bookings.Revoke(ctx, id); return err }})
	if err != nil {
		a.Close()
		return nil, err
	}
	a.providers = providers.NewStore(a.box, pluginChecker{h: a.plugins, production: cfg.Production()}, a.defaults)
	// Inventory: bookings counts a key's live accesses, which stop its
	// deletion, and says when an access holding a key ends.
	if a.inventory, err = inventory.NewService(keyAccesses{a.bookings}); err != nil {
		a.Close()
		return nil, err
	}
	if a.http, err = a.newHTTP(); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// Serve listens until ctx ends, then drains requests in flight.
func (a *App) Serve(ctx context.Context) error {
	ln, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", a.cfg.Listen, err)
	}
	return a.serveOn(ctx, ln)
}

func (a *App) serveOn(ctx context.Context, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- a.http.Listener(ln) }()
	// The hub stops with ctx, before the drain below, so that boxes'
	// long polls answer instead of holding the shutdown up.
	go a.hub.Run(ctx)
	a.log.Info("listening", "addr", ln.Addr().String(), "base_url", a.cfg.BaseURL)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	a.log.Info("shutting down: draining requests in flight")
	if err := a.http.ShutdownWithTimeout(a.cfg.ShutdownTimeout); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	// A shutdown that comes before fasthttp has taken the listener (a
	// server stopped as soon as it started) finds no listener to close,
	// and Serve would then accept forever: close it here too.
	ln.Close()
	if err := <-errc; err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// outboxWakeChannel is where committed outbox rows are announced to the
// relays (under the configured prefix, so that deployments sharing a
// Redis do not wake each other).
func (a *App) outboxWakeChannel() string { return a.cfg.LimitPrefix + ":" + relay.DefaultWakeChannel }

// Close stops the plugins and releases connections.
func (a *App) Close() {
	if a.plugins != nil {
		a.plugins.Close()
	}
	if a.queue != nil {
		a.queue.Close()
	}
	if a.inspector != nil {
		a.inspector.Close()
	}
	if a.traceShutdown != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		a.traceShutdown(ctx)
		cancel()
	}
	if a.redis != nil {
		a.redis.Close()
	}
	if a.db != nil {
		if sqlDB, err := a.db.DB(); err == nil {
			sqlDB.Close()
		}
	}
	a.replica.close()
}

// openPool opens a pool as the application role on rawURL, sized by pool,
// and checks that it answers.
func openPool(ctx context.Context, rawURL string, pool DBPool) (*gorm.DB, error) {
	db, err := gorm.Open(postgres.Open(rawURL), &gorm.Config{
		Logger:                 logger.Discard,
		SkipDefaultTransaction: true, // every write already runs in the request's transaction
		PrepareStmt:            false,
	})
	if err != nil {
		return nil, pgUnreachable(rawURL, err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, err
	}
	pool = pool.orDefault()
	sqlDB.SetMaxOpenConns(pool.MaxConns)
	sqlDB.SetMaxIdleConns(pool.MaxIdleConns)
	sqlDB.SetConnMaxIdleTime(pool.ConnMaxIdleTime)
	sqlDB.SetConnMaxLifetime(pool.ConnMaxLifetime)
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := sqlDB.PingContext(pingCtx); err != nil {
		sqlDB.Close()
		if isConnError(err) {
			return nil, pgUnreachable(rawURL, err)
		}
		return nil, fmt.Errorf("PostgreSQL refused the application role: %w (run `go run ./app migrate` to create it)", err)
	}
	return db, nil
}

// newReleases builds firmware releases and rollouts: artifacts in the
// firmware directory, manifests signed by the keyring's firmware key
// (created on first use in development, where the root is at hand).
func newReleases(a *App, cfg Config, log *slog.Logger) (*releases.Service, error) {
	store, err := releases.NewDir(cfg.FirmwareDir)
	if err != nil {
		return nil, err
	}
	kr := signing.NewKeyring(cfg.keysDir(), a.box)
	if cfg.RootPrivateKey != nil {
		if err := kr.Ensure(signing.PurposeFirmware, cfg.RootPrivateKey, 180*24*time.Hour); err != nil {
			return nil, fmt.Errorf("firmware signing key: %w", err)
		}
	}
	rcfg := releases.DefaultConfig()
	rcfg.MaxArtifactSize = cfg.FirmwareMaxSize
	return releases.New(releases.Deps{DB: a.db, Scope: a.scope, Store: store, Signer: kr, Commands: a.commands,
		Log: log.With("component", "firmware")}, rcfg)
}

// newBundles builds the offline bundles, signed by the keyring's bundle key
// (created on first use in development, where the root is at hand).
func newBundles(a *App, cfg Config) (*bundles.Service, error) {
	kr := signing.NewKeyring(cfg.keysDir(), a.box)
	if cfg.RootPrivateKey != nil {
		if err := kr.Ensure(signing.PurposeBundles, cfg.RootPrivateKey, 90*24*time.Hour); err != nil {
			return nil, fmt.Errorf("bundle signing key: %w", err)
		}
	}
	bcfg := bundles.DefaultConfig()
	bcfg.Horizon = cfg.BundleHorizon
	return bundles.New(bundles.Deps{Secrets: a.devices, Signer: kr, Codes: a.box, Policies: a.accounts, Commands: a.commands, Tags: a.offline, Observer: a.metrics, Replica: a.replica.orNil()}, bcfg)
}
