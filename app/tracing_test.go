package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// lockedBuffer is a log destination the server's goroutines share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestTraceFromBookingToDelivery: creating a booking makes one trace that
// runs from the HTTP request through its transaction and outbox write, the
// relay, and the delivery job to the plugin call; the request's log line
// carries the trace id.
func TestTraceFromBookingToDelivery(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	logs := &lockedBuffer{}
	s := startServerLogging(t, logs, func(c *Config) { c.Workers, c.traceExporter = true, exp })
	w := bkSetup(t, s, "Europe/Paris")
	key := w.key(t, "Car")
	// Earlier messages (the sign-up's) are relayed first, so the booking's
	// message does not share a batch with a message of another trace.
	waitFor(t, "earlier messages relayed", 20*time.Second, func() bool {
		return ownerQuery[int64](t, "SELECT count(*) FROM outbox WHERE tenant_id = $1 AND relayed_at IS NULL", w.ID) == 0
	})

	start := time.Now().Add(time.Hour)
	w.Owner.expect(t, 201, "POST", "/api/v1/bookings", bkBody(key, bkPhone(), start, start.Add(time.Hour)))

	var req tracetest.SpanStub
	byID := map[trace.SpanID]tracetest.SpanStub{}
	find := func(name string, parent trace.SpanID) (tracetest.SpanStub, bool) {
		for _, sp := range byID {
			if sp.Name == name && sp.Parent.SpanID() == parent {
				return sp, true
			}
		}
		return tracetest.SpanStub{}, false
	}
	var chain []tracetest.SpanStub
	waitFor(t, "the booking's trace to reach the plugin", 20*time.Second, func() bool {
		spans := exp.GetSpans()
		for _, sp := range spans {
			if sp.Name == "POST /api/v1/bookings" {
				req = sp
			}
		}
		if !req.SpanContext.IsValid() {
			return false
		}
		clear(byID)
		for _, sp := range spans {
			if sp.SpanContext.TraceID() == req.SpanContext.TraceID() {
				byID[sp.SpanContext.SpanID()] = sp
			}
		}
		// HTTP → tenant transaction → outbox write → outbox relay →
		// delivery job → plugin send, each the parent of the next.
		chain = []tracetest.SpanStub{req}
		for _, name := range []string{"tenant transaction", "outbox write", "outbox relay", "delivery job", "plugin send"} {
			next, ok := find(name, chain[len(chain)-1].SpanContext.SpanID())
			if !ok {
				return false
			}
			chain = append(chain, next)
		}
		return true
	})
	if req.Parent.IsValid() {
		t.Errorf("the request span has a parent %v; it should start the trace", req.Parent)
	}
	if req.SpanKind != trace.SpanKindServer {
		t.Errorf("request span kind %v", req.SpanKind)
	}
	for _, sp := range chain {
		t.Logf("%s %s ← %s", sp.Name, sp.SpanContext.SpanID(), sp.Parent.SpanID())
		for _, a := range sp.Attributes {
			if v := a.Value.Emit(); strings.Contains(v, "+1415") || strings.Contains(v, "@") {
				t.Errorf("span %s carries personal data: %s=%s", sp.Name, a.Key, v)
			}
		}
	}
	// The delivery's own transactions (claim, record) belong to the job.
	job := chain[4]
	if _, ok := find("tenant transaction", job.SpanContext.SpanID()); !ok {
		t.Errorf("the delivery job's transactions are not its children")
	}

	// The access log line of the request names the trace.
	traceID := req.SpanContext.TraceID().String()
	found := false
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			continue
		}
		if line["msg"] == "request" && line["route"] == "/api/v1/bookings" && line["method"] == "POST" {
			found = true
			if line["trace_id"] != traceID || line["span_id"] == nil {
				t.Errorf("request log line %v: trace_id want %s", line, traceID)
			}
		}
	}
	if !found {
		t.Errorf("no access log line for POST /api/v1/bookings")
	}
}

// TestTracingOffByDefault: without KEYRELAY_OTLP_ENDPOINT nothing is
// recorded, the pool is the plain one, and log lines have no trace ids.
func TestTracingOffByDefault(t *testing.T) {
	logs := &lockedBuffer{}
	s := startServerLogging(t, logs)
	if s.app.cfg.tracing() {
		t.Fatal("tracing on without an endpoint")
	}
	if _, traced := s.app.db.ConnPool.(*tracedPool); traced {
		t.Fatal("the database pool is wrapped while tracing is off")
	}
	if trace.SpanContextFromContext(t.Context()).IsValid() {
		t.Fatal("unexpected span")
	}
	s.client().expect(t, 200, "GET", "/healthz", nil)
	if strings.Contains(logs.String(), "trace_id") {
		t.Errorf("trace ids logged while tracing is off: %s", logs.String())
	}
}

// TestTraceparentContinued: a caller's W3C traceparent is continued, not
// replaced.
func TestTraceparentContinued(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	s := startServer(t, func(c *Config) { c.traceExporter = exp })
	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	s.client().expect(t, 200, "GET", "/healthz", nil, "traceparent", parent)
	for _, sp := range exp.GetSpans() {
		if sp.Name == "GET /healthz" {
			if sp.SpanContext.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || sp.Parent.SpanID().String() != "00f067aa0ba902b7" {
				t.Fatalf("span %s in trace %s under %s, want the caller's", sp.Name, sp.SpanContext.TraceID(), sp.Parent.SpanID())
			}
			return
		}
	}
	t.Fatalf("no span for GET /healthz: %v", exp.GetSpans())
}

func TestTracesURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:4318":                "http://127.0.0.1:4318/v1/traces",
		"https://otel.example.com/":            "https://otel.example.com/v1/traces",
		"https://otel.example.com/custom/v1/t": "https://otel.example.com/custom/v1/t",
	} {
		if got := tracesURL(in); got != want {
			t.Errorf("tracesURL(%q) = %q, want %q", in, got, want)
		}
	}
}
