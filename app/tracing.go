package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// Tracing (OpenTelemetry) is off unless KEYRELAY_OTLP_ENDPOINT is set. When
// on, one trace follows a change from the request to the provider:
//
//	HTTP request ─ tenant transaction ─ outbox write
//	  └ (outbox.trace_parent) ─ outbox relay ─ (task headers) ─ delivery job
//	      ├ tenant transaction (claim, record)
//	      └ plugin send
//
// The outbox row carries the trace across processes: the outbox writes
// the write span's context into the row's trace_parent column
// (outbox.WithWriteTracer; migration 00021); the relay continues it and
// puts its own span's context in the asynq task's headers, where the
// delivery job picks it up. Spans carry no path (booking page tokens
// travel in paths), no recipient and no code.

// traceContext is the W3C propagation used at every hop.
var traceContext = propagation.TraceContext{}

// newTracerProvider returns the provider of the app's spans and how to flush
// it: a no-op one while tracing is off.
func newTracerProvider(ctx context.Context, cfg Config) (trace.TracerProvider, func(context.Context) error, error) {
	if cfg.OTLPEndpoint == "" && cfg.traceExporter == nil {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		attribute.String("service.name", "keyrelay"), attribute.String("service.version", buildVersion())))
	if err != nil {
		return nil, nil, fmt.Errorf("tracing: %w", err)
	}
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.TraceSampleRatio))),
	}
	if cfg.traceExporter != nil {
		// Exported as each span ends, so a test sees it at once.
		opts = append(opts, sdktrace.WithSyncer(cfg.traceExporter))
	} else {
		exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(tracesURL(cfg.OTLPEndpoint)))
		if err != nil {
			return nil, nil, fmt.Errorf("KEYRELAY_OTLP_ENDPOINT: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	return tp, tp.Shutdown, nil
}

// tracesURL is where spans are posted: the collector's base URL (as the
// OTEL_EXPORTER_OTLP_ENDPOINT convention has it) gets /v1/traces; a URL with
// a path of its own is taken as it is.
func tracesURL(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil || strings.Trim(u.Path, "/") != "" {
		return endpoint
	}
	u.Path = "/v1/traces"
	return u.String()
}

// traceDB makes the application pool's transactions spans and the outbox
// writes spans that hand their context to the row. It is installed only
// while tracing is on, so the default path stays the plain pool.
func traceDB(db *gorm.DB, tracer trace.Tracer) error {
	sqlDB, err := db.DB()
	if err != nil {
		return err
	}
	pool := &tracedPool{DB: sqlDB, tracer: tracer}
	db.ConnPool, db.Statement.ConnPool = pool, pool
	return nil
}

// tracedPool is the *sql.DB under GORM: each transaction begun in a traced
// context becomes a span, ended by its commit or rollback. Transactions
// begun outside any trace (the relay's passes, sweepers) make none, so
// background loops don't fill the tracer with traces of their own.
type tracedPool struct {
	*sql.DB
	tracer trace.Tracer
}

// BeginTx implements gorm.ConnPoolBeginner.
func (p *tracedPool) BeginTx(ctx context.Context, opts *sql.TxOptions) (gorm.ConnPool, error) {
	if !trace.SpanContextFromContext(ctx).IsSampled() {
		return p.DB.BeginTx(ctx, opts)
	}
	sctx, span := p.tracer.Start(ctx, "tenant transaction", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("db.system", "postgresql")))
	tx, err := p.DB.BeginTx(ctx, opts)
	if err != nil {
		span.SetStatus(codes.Error, "begin failed")
		span.End()
		return nil, err
	}
	return &tracedTx{TxPool: tx, ctx: sctx, span: span}, nil
}

// GetDBConn lets gorm.DB.DB() find the pool.
func (p *tracedPool) GetDBConn() (*sql.DB, error) { return p.DB, nil }

// WrapTx implements tenants.TxWrapper: a tenant transaction begun in a
// traced context becomes a span, as BeginTx makes one of the others.
func (p *tracedPool) WrapTx(ctx context.Context, tx tenants.TxPool) tenants.TxPool {
	if !trace.SpanContextFromContext(ctx).IsSampled() {
		return tx
	}
	sctx, span := p.tracer.Start(ctx, "tenant transaction", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("db.system", "postgresql")))
	return &tracedTx{TxPool: tx, ctx: sctx, span: span}
}

// tracedTx is a transaction and its span.
type tracedTx struct {
	tenants.TxPool
	ctx  context.Context // the span's: statements in the transaction are its children
	span trace.Span
}

// Unwrap lets tenants.QueryRow and ExecLater reach the transaction's
// connection.
func (t *tracedTx) Unwrap() tenants.TxPool { return t.TxPool }

func (t *tracedTx) Commit() error {
	err := t.TxPool.Commit()
	if err != nil {
		t.span.SetStatus(codes.Error, "commit failed")
	}
	t.span.End()
	return err
}

func (t *tracedTx) Rollback() error {
	err := t.TxPool.Rollback()
	if !errors.Is(err, sql.ErrTxDone) && !errors.Is(err, sql.ErrConnDone) {
		t.span.SetAttributes(attribute.Bool("db.rolled_back", true))
	}
	t.span.End()
	return err
}

// outboxWriteTracer makes each outbox write a span, a child of the tenant
// transaction's, whose context the row keeps (trace_parent) for the relay
// and the delivery job to continue.
func outboxWriteTracer(tracer trace.Tracer) outbox.WriteTracer {
	return func(ctx context.Context) (string, func(error)) {
		parent := ctx
		if tx, err := tenants.Tx(ctx); err == nil {
			if t, ok := tx.Statement.ConnPool.(*tracedTx); ok {
				parent = t.ctx
			}
		}
		if !trace.SpanContextFromContext(parent).IsSampled() {
			return "", func(error) {}
		}
		sctx, span := tracer.Start(parent, "outbox write")
		carrier := propagation.MapCarrier{}
		traceContext.Inject(sctx, carrier)
		return carrier["traceparent"], func(err error) {
			if err != nil {
				span.SetStatus(codes.Error, "insert failed")
			}
			span.End()
		}
	}
}

// traceLogHandler adds trace_id and span_id to every log line written with
// a context that holds a span, so a log line leads to its trace.
type traceLogHandler struct{ slog.Handler }

// withTraceIDs wraps h, once.
func withTraceIDs(h slog.Handler) slog.Handler {
	if _, ok := h.(traceLogHandler); ok {
		return h
	}
	return traceLogHandler{h}
}

func (h traceLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceLogHandler{h.Handler.WithAttrs(attrs)}
}

func (h traceLogHandler) WithGroup(name string) slog.Handler {
	return traceLogHandler{h.Handler.WithGroup(name)}
}
