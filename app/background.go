package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/hibiken/asynq"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/keyrelay/keyrelay/firmware/bundles"
	"github.com/keyrelay/keyrelay/jobs"
	"github.com/keyrelay/keyrelay/jobs/delivery"
	"github.com/keyrelay/keyrelay/jobs/janitor"
	"github.com/keyrelay/keyrelay/jobs/relay"
	"github.com/keyrelay/keyrelay/jobs/retention"
	webhookjobs "github.com/keyrelay/keyrelay/jobs/webhooks"
	"github.com/keyrelay/keyrelay/plugins/host"
	"github.com/keyrelay/keyrelay/plugins/providers/devmailbox/devmailbox"
	"github.com/keyrelay/keyrelay/plugins/sdk"
	"github.com/keyrelay/keyrelay/tenants"
)

// startPlugins builds (in development, when no directory is configured) and
// starts the provider plugins.
func startPlugins(ctx context.Context, cfg Config, log *slog.Logger, onRestart func(provider string), tracer trace.Tracer) (*host.Host, error) {
	dir := cfg.PluginsDir
	var env []string
	if dir == "" {
		dir = filepath.Join(cfg.StateDir, "plugins")
		if err := buildBundledPlugins(ctx, dir, log); err != nil {
			return nil, err
		}
	}
	if !cfg.Production() {
		// Development providers talk to local servers (a local SMTP, a
		// tenant's webhook on localhost); production keeps them off private
		// networks.
		env = append(env, "KEYRELAY_PLUGIN_ALLOW_PRIVATE_NETWORKS=1")
	}
	return host.New(host.Config{Dir: dir, Logger: log, Env: env, OnRestart: onRestart, Tracer: tracer})
}

// pluginChecker adapts the host to what the provider settings need.
type pluginChecker struct {
	h          *host.Host
	production bool
}

func (p pluginChecker) Known(provider, channel string) bool {
	if p.production && provider == devmailbox.Name {
		// It delivers nothing, and its directory setting would let a tenant
		// write files on the server.
		return false
	}
	info, err := p.h.Provider(provider)
	if err != nil {
		return false
	}
	for _, c := range info.Channels {
		if string(c) == channel {
			return true
		}
	}
	return false
}

func (p pluginChecker) CheckConfig(ctx context.Context, provider string, settings map[string]string) error {
	err := p.h.CheckConfig(ctx, provider, settings)
	if err != nil && !errors.Is(err, sdk.ErrPermanent) {
		// Not the settings' fault: the plugin could not answer.
		return &tenants.Error{Code: tenants.EUnavailable, Message: "the provider plugin is unavailable; try again shortly", RetryAfter: 5 * time.Second, Err: err}
	}
	return err
}

// asynqLogger sends asynq's logs to slog.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...)) }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...)) }
func (a asynqLogger) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...)) }
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }
func (a asynqLogger) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...)) }

// runWorkers runs the background side until ctx ends: the outbox relay, the
// delivery workers and the janitor. Shutdown lets deliveries in flight
// finish (asynq puts unfinished ones back in the queue).
func (a *App) runWorkers(ctx context.Context) error {
	tpl, err := delivery.LoadTemplates()
	if err != nil {
		return err
	}
	relayCfg := relay.DefaultConfig()
	relayCfg.Tracer = a.tracer
	relayCfg.Redis, relayCfg.WakeChannel = a.redis, a.outboxWakeChannel()
	deliveryCfg := delivery.Config{MaxRetry: relayCfg.MaxRetry, Parallel: 16, TaskTimeout: relayCfg.TaskTimeout, Outcomes: a.metrics, Tracer: a.tracer}
	handler := delivery.NewHandler(delivery.NewStore(a.scope, a.outbox, a.providers), a.plugins, a.queue, tpl,
		func(err error) bool { return errors.Is(err, host.ErrUnavailable) }, deliveryCfg, a.log)
	mux := asynq.NewServeMux()
	mux.Handle(jobs.TypeDeliverBatch, handler)
	mux.Handle(jobs.TypeDeliver, handler)
	mux.Handle(bundles.TypeRebuild, bundles.NewHandler(a.bundles, a.scope, a.log.With("component", "bundles")))

	srv := asynq.NewServer(a.queueOpt, asynq.Config{
		Concurrency:    a.cfg.WorkerConcurrency,
		Queues:         jobs.Queues,
		RetryDelayFunc: delivery.RetryDelay,
		// A permanent provider failure is the message's fault, not the
		// system's: it should not count against the queue's error rate.
		IsFailure:         func(err error) bool { return !errors.Is(err, sdk.ErrPermanent) },
		TaskCheckInterval: 20 * time.Millisecond, // asynq's 1 s default would add up to a second to every login code
		// Scheduled messages (reminders) move to their queue within a second
		// of their time, not asynq's default five.
		DelayedTaskCheckInterval: time.Second,
		ShutdownTimeout:          20 * time.Second,
		Logger:                   asynqLogger{a.log.With("component", "asynq")},
		LogLevel:                 asynq.WarnLevel,
	})
	if err := srv.Start(mux); err != nil {
		return fmt.Errorf("workers: %w", err)
	}
	defer srv.Shutdown()

	g, gctx := errgroup.WithContext(ctx)
	rl := relay.New(a.db, a.queue, relayCfg, a.log.With("component", "relay"))
	g.Go(func() error { return rl.Run(gctx) })
	jn := janitor.New(a.db, a.cfg.SessionIdle, 10*time.Minute, a.log.With("component", "janitor"))
	g.Go(func() error { return jn.Run(gctx) })
	// Retention: message bodies, visitors of long-ended accesses, expired
	// pickup challenges.
	ret, err := retention.New(a.db, a.scope, a.retentionConfig(), a.log.With("component", "retention"))
	if err != nil {
		return err
	}
	g.Go(func() error { return ret.Run(gctx) })
	// Bundles: every committed change a box's bundle depends on schedules
	// its rebuild (debounced).
	g.Go(func() error {
		bundles.Watch(gctx, bundles.PendingBoxes{DB: a.db}, a.queue, a.bundles.Config().Debounce, time.Second, a.log.With("component", "bundles"))
		return nil
	})
	// Boxes whose heartbeats stopped: marked offline, reported once.
	g.Go(func() error { a.health.Run(gctx, 10*time.Second); return nil })
	// Firmware rollouts: failures after install, waves, completion.
	g.Go(func() error { a.releases.Run(gctx, a.cfg.RolloutTick); return nil })
	// Keys not back by the end of their access: one alert per incident.
	g.Go(func() error { a.overdue.Run(gctx, 30*time.Second); return nil })
	hooks := webhookjobs.New(a.db, a.scope, a.webhooks, a.webhookConfig(), a.log.With("component", "webhooks"))
	g.Go(func() error { return hooks.Run(gctx) })
	a.log.Info("workers running", "concurrency", a.cfg.WorkerConcurrency)
	return g.Wait()
}

// retentionConfig is the retention job's, with the configured periods.
func (a *App) retentionConfig() retention.Config {
	cfg := retention.DefaultConfig()
	cfg.MessageBodies, cfg.Visitors = a.cfg.RetainMessageBodies, a.cfg.RetainVisitors
	return cfg
}

// webhookConfig is the webhook dispatcher's: private addresses are
// reachable in development only, as for the bundled providers.
func (a *App) webhookConfig() webhookjobs.Config {
	cfg := webhookjobs.DefaultConfig()
	cfg.AllowPrivate = !a.cfg.Production()
	return cfg
}
