package main

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/jobs"
)

// Metrics are the Prometheus metrics of one process, in a registry of its
// own (never the client's global one). Counters move where things happen
// (requests, pickups, deliveries, plugin restarts, bundles, sync); the
// state shared by every replica (queue depth, outbox lag, boxes online) is
// read from PostgreSQL and Redis when scraped, so every replica reports the
// same numbers: aggregate those with max(), not sum().
//
// Labels carry route patterns, results, reasons, provider and channel
// names: never a path, a tenant, a recipient or a code.
type Metrics struct {
	Registry *prometheus.Registry

	httpRequests   *prometheus.CounterVec
	httpDuration   *prometheus.HistogramVec
	pickups        *prometheus.CounterVec
	messages       *prometheus.CounterVec
	pluginRestarts *prometheus.CounterVec
	bundleRebuilds *prometheus.CounterVec
	syncEvents     *prometheus.CounterVec
}

// NewMetrics registers the process's metrics, with the Go runtime and
// process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyrelay_http_requests_total", Help: "HTTP requests answered, by method, route pattern and status code.",
		}, []string{"method", "route", "status"}),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keyrelay_http_request_duration_seconds", Help: "Time to answer HTTP requests, by method and route pattern.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"method", "route"}),
		pickups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyrelay_pickups_total", Help: "Pickup steps at boxes and booking pages, by result (open, challenge, pin_required, choose, denied) and denial reason.",
		}, []string{"result", "reason"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyrelay_messages_total", Help: "Message delivery outcomes recorded, by provider, channel and status (sent, delivered, failed, retry).",
		}, []string{"provider", "channel", "status"}),
		pluginRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyrelay_plugin_restarts_total", Help: "Provider plugin failures after which the host restarts the plugin, by provider.",
		}, []string{"provider"}),
		bundleRebuilds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyrelay_bundle_rebuilds_total", Help: "Offline bundle rebuilds, by result (ok, error).",
		}, []string{"result"}),
		syncEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyrelay_sync_events_total", Help: "Offline transactions ingested from boxes' journals, by kind.",
		}, []string{"kind"}),
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.httpRequests, m.httpDuration, m.pickups, m.messages, m.pluginRestarts, m.bundleRebuilds, m.syncEvents,
	)
	for _, r := range []string{"ok", "error"} {
		m.bundleRebuilds.WithLabelValues(r)
	}
	return m
}

// PickupOutcome implements exchange.Observer.
func (m *Metrics) PickupOutcome(result, reason string) {
	m.pickups.WithLabelValues(result, reason).Inc()
}

// MessageOutcome implements delivery.Outcomes.
func (m *Metrics) MessageOutcome(provider, channel, status string) {
	m.messages.WithLabelValues(provider, channel, status).Inc()
}

// PluginRestarted is the plugin host's OnRestart.
func (m *Metrics) PluginRestarted(provider string) {
	m.pluginRestarts.WithLabelValues(provider).Inc()
}

// BundleRebuilt counts one offline bundle rebuild; result is "ok" or
// "error". For firmware/bundles (its consumer-side interface).
func (m *Metrics) BundleRebuilt(result string) {
	m.bundleRebuilds.WithLabelValues(result).Inc()
}

// SyncEventsIngested counts n journal entries of kind ingested from a box.
// For firmware/sync (its consumer-side interface).
func (m *Metrics) SyncEventsIngested(kind string, n int) {
	if n > 0 {
		m.syncEvents.WithLabelValues(kind).Add(float64(n))
	}
}

// stateCollector reads, when scraped, what no single process counts: the
// queue (asynq's inspector), the outbox's lag and boxes online, across
// tenants through the SECURITY DEFINER functions of migration 00021.
type stateCollector struct {
	db        *gorm.DB
	inspector *asynq.Inspector
	queues    []string
	log       *slog.Logger
	timeout   time.Duration

	up, lag, boxes, tasks, latency, processed, failed *prometheus.Desc
}

func newStateCollector(db *gorm.DB, inspector *asynq.Inspector, log *slog.Logger) *stateCollector {
	return &stateCollector{
		db: db, inspector: inspector, queues: slices.Sorted(maps.Keys(jobs.Queues)), log: log, timeout: 5 * time.Second,
		up: prometheus.NewDesc("keyrelay_metrics_source_up",
			"Whether the last scrape could read the source (postgres, redis).", []string{"source"}, nil),
		lag: prometheus.NewDesc("keyrelay_outbox_lag_seconds",
			"Age of the oldest outbox row not yet handed to the queue (0 when none).", nil, nil),
		boxes: prometheus.NewDesc("keyrelay_boxes",
			"Boxes by connection state (online, offline), over all tenants; boxes that never called are not counted.", []string{"state"}, nil),
		tasks: prometheus.NewDesc("keyrelay_queue_tasks",
			"Tasks in the queue, by queue and state (pending, active, scheduled, retry, archived).", []string{"queue", "state"}, nil),
		latency: prometheus.NewDesc("keyrelay_queue_latency_seconds",
			"Age of the oldest pending task, by queue.", []string{"queue"}, nil),
		processed: prometheus.NewDesc("keyrelay_queue_processed_total",
			"Tasks processed since the queue was created, by queue (all workers).", []string{"queue"}, nil),
		failed: prometheus.NewDesc("keyrelay_queue_failed_total",
			"Task attempts that failed (each retry counts), by queue (all workers).", []string{"queue"}, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.lag, c.boxes, c.tasks, c.latency, c.processed, c.failed} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	pgUp := 1.0
	if err := c.collectDB(ctx, ch); err != nil {
		pgUp = 0
		c.log.Warn("metrics: cannot read the outbox lag and box counts", "err", err)
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, pgUp, "postgres")
	redisUp := 1.0
	if err := c.collectQueues(ch); err != nil {
		redisUp = 0
		c.log.Warn("metrics: cannot read the queues", "err", err)
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, redisUp, "redis")
}

func (c *stateCollector) collectDB(ctx context.Context, ch chan<- prometheus.Metric) error {
	var lag float64
	if err := c.db.WithContext(ctx).Raw("SELECT outbox_lag()").Scan(&lag).Error; err != nil {
		return fmt.Errorf("outbox lag: %w", err)
	}
	var counts struct{ Online, Offline int64 }
	if err := c.db.WithContext(ctx).Raw("SELECT online, offline FROM box_status_counts()").Scan(&counts).Error; err != nil {
		return fmt.Errorf("box counts: %w", err)
	}
	ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, lag)
	ch <- prometheus.MustNewConstMetric(c.boxes, prometheus.GaugeValue, float64(counts.Online), "online")
	ch <- prometheus.MustNewConstMetric(c.boxes, prometheus.GaugeValue, float64(counts.Offline), "offline")
	return nil
}

func (c *stateCollector) collectQueues(ch chan<- prometheus.Metric) error {
	known, err := c.inspector.Queues()
	if err != nil {
		return fmt.Errorf("queues: %w", err)
	}
	for _, q := range c.queues {
		// A queue nothing was ever put in does not exist in Redis yet: it
		// is empty, not an error.
		info := &asynq.QueueInfo{Queue: q}
		if slices.Contains(known, q) {
			if info, err = c.inspector.GetQueueInfo(q); err != nil {
				return fmt.Errorf("queue %s: %w", q, err)
			}
		}
		for state, n := range map[string]int{"pending": info.Pending, "active": info.Active, "scheduled": info.Scheduled, "retry": info.Retry, "archived": info.Archived} {
			ch <- prometheus.MustNewConstMetric(c.tasks, prometheus.GaugeValue, float64(n), q, state)
		}
		ch <- prometheus.MustNewConstMetric(c.latency, prometheus.GaugeValue, info.Latency.Seconds(), q)
		ch <- prometheus.MustNewConstMetric(c.processed, prometheus.CounterValue, float64(info.ProcessedTotal), q)
		ch <- prometheus.MustNewConstMetric(c.failed, prometheus.CounterValue, float64(info.FailedTotal), q)
	}
	return nil
}

// metricsHandler serves the registry in the Prometheus text format. A
// source that cannot be read shows as keyrelay_metrics_source_up 0 rather
// than failing the whole scrape.
func (a *App) metricsHandler() http.Handler {
	return promhttp.HandlerFor(a.metrics.Registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, Registry: a.metrics.Registry})
}

// metricsEndpoint is GET /metrics on the main address (behind the operator
// credential in the route table).
func (a *App) metricsEndpoint() fiber.Handler { return adaptor.HTTPHandler(a.metricsHandler()) }

// ServeMetrics serves /metrics without credentials on KEYRELAY_METRICS_LISTEN
// until ctx ends; it returns at once when that is not set. A worker process
// has no other HTTP listener, so this is how its delivery counters are
// scraped.
func (a *App) ServeMetrics(ctx context.Context) error {
	if a.cfg.MetricsListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", a.cfg.MetricsListen, err)
	}
	return a.serveMetricsOn(ctx, ln)
}

func (a *App) serveMetricsOn(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.metricsHandler())
	if a.cfg.MetricsPprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	a.log.Info("metrics listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// observe is the outermost middleware: the request's server span (which
// continues a caller's trace context) and its metrics, labelled with the
// route pattern the request matched, never its path.
func (a *App) observe(c *fiber.Ctx) error {
	start := time.Now()
	ctx := traceContext.Extract(c.UserContext(), propagation.HeaderCarrier(requestHeaders(c)))
	ctx, span := a.tracer.Start(ctx, "HTTP "+c.Method(), trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	c.SetUserContext(ctx)
	if err := c.Next(); err != nil {
		// The error handler writes the answer now, so the status recorded
		// is the one the client gets.
		if herr := a.errorHandler(c, err); herr != nil {
			return herr
		}
	}
	status := c.Response().StatusCode()
	route := routePattern(c, status)
	span.SetName(c.Method() + " " + route)
	span.SetAttributes(attribute.String("http.request.method", c.Method()), attribute.String("http.route", route),
		attribute.Int("http.response.status_code", status))
	if status >= 500 {
		span.SetStatus(codes.Error, strconv.Itoa(status))
	}
	a.metrics.httpRequests.WithLabelValues(c.Method(), route, strconv.Itoa(status)).Inc()
	a.metrics.httpDuration.WithLabelValues(c.Method(), route).Observe(time.Since(start).Seconds())
	return nil
}

// routePattern is the matched route's pattern. A request no route matched
// ends in the catch-all, whose pattern is "/": it is "unmatched", so that
// scanners' random paths make one series, not one each.
func routePattern(c *fiber.Ctx, status int) string {
	r := c.Route()
	if r == nil || (r.Path == "/" && c.Path() != "/") {
		return "unmatched"
	}
	return r.Path
}

// requestHeaders gives the trace propagator the request's traceparent and
// tracestate headers.
func requestHeaders(c *fiber.Ctx) http.Header {
	h := http.Header{}
	for _, k := range []string{"Traceparent", "Tracestate"} {
		if v := c.Get(k); v != "" {
			h.Set(k, v)
		}
	}
	return h
}
