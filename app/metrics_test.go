package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/trace/noop"
	"go.yaml.in/yaml/v4"

	"github.com/keyrelay/keyrelay/firmware/health"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

type families map[string]*dto.MetricFamily

func parseMetrics(t testing.TB, body []byte) families {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("metrics are not in the Prometheus text format: %v", err)
	}
	return fams
}

// scrape reads /metrics with the operator credential.
func (s *server) scrape(t testing.TB) (families, string) {
	t.Helper()
	r := s.client().expect(t, 200, "GET", "/metrics", nil, "Authorization", "Bearer "+s.app.cfg.OperatorToken)
	return parseMetrics(t, r.Body), string(r.Body)
}

// value sums the series of name whose labels include want (a counter's or
// gauge's value, a histogram's count).
func (f families) value(name string, want map[string]string) float64 {
	fam, ok := f[name]
	if !ok {
		return 0
	}
	total := 0.0
next:
	for _, m := range fam.GetMetric() {
		for k, v := range want {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			total += m.GetCounter().GetValue()
		case m.Gauge != nil:
			total += m.GetGauge().GetValue()
		case m.Histogram != nil:
			total += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return total
}

// names are the series names a PromQL expression may use: histograms'
// and summaries' _bucket, _sum and _count included.
func (f families) names() map[string]bool {
	out := map[string]bool{}
	for name, fam := range f {
		out[name] = true
		if fam.GetType() == dto.MetricType_HISTOGRAM || fam.GetType() == dto.MetricType_SUMMARY {
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		}
	}
	return out
}

// TestMetricsScrape scrapes /metrics before and after a request, an outbox
// message held up and then delivered, a booking's pickup and a wrong code,
// and a box's heartbeat, and checks each family exists and moved.
func TestMetricsScrape(t *testing.T) {
	s := startServer(t) // workers are started below, once the lag is seen
	f := s.signup(t)

	t.Run("ErrUnauthorized", func(t *testing.T) {
		for _, h := range [][]string{nil, {"Authorization", "Bearer not-the-operator-token-0123456789"}, {"Authorization", "Bearer " + f.Owner.token}} {
			r := s.client().do(t, "GET", "/metrics", nil, h...)
			problemOf(t, r, 401)
			if strings.Contains(string(r.Body), "keyrelay_") {
				t.Fatalf("metrics leaked without the operator credential: %s", r.Body)
			}
		}
	})

	before, _ := s.scrape(t)
	for _, name := range []string{
		"go_goroutines", "go_memstats_heap_alloc_bytes", "process_cpu_seconds_total", "process_resident_memory_bytes",
		"keyrelay_http_requests_total", "keyrelay_http_request_duration_seconds",
		"keyrelay_outbox_lag_seconds", "keyrelay_boxes", "keyrelay_queue_tasks", "keyrelay_queue_latency_seconds",
		"keyrelay_queue_processed_total", "keyrelay_queue_failed_total", "keyrelay_metrics_source_up",
		"keyrelay_plugin_restarts_total", "keyrelay_bundle_rebuilds_total",
	} {
		if before[name] == nil {
			t.Errorf("family %s missing from the scrape", name)
		}
	}
	for _, src := range []string{"postgres", "redis"} {
		if v := before.value("keyrelay_metrics_source_up", map[string]string{"source": src}); v != 1 {
			t.Errorf("keyrelay_metrics_source_up{source=%q} = %v, want 1", src, v)
		}
	}
	for _, q := range []string{"critical", "default", "low"} {
		if _, ok := before["keyrelay_queue_tasks"]; ok && !hasSeries(before["keyrelay_queue_tasks"], map[string]string{"queue": q, "state": "pending"}) {
			t.Errorf("no keyrelay_queue_tasks series for queue %s", q)
		}
	}
	if before.value("keyrelay_plugin_restarts_total", map[string]string{"provider": "devmailbox"}) != 0 || !hasSeries(before["keyrelay_plugin_restarts_total"], map[string]string{"provider": "devmailbox"}) {
		t.Errorf("plugin restarts of devmailbox should start at 0")
	}

	t.Run("HTTPByRoutePattern", func(t *testing.T) {
		me := map[string]string{"method": "GET", "route": "/api/v1/me", "status": "200"}
		before, _ := s.scrape(t)
		f.Owner.expect(t, 200, "GET", "/api/v1/me", nil)
		stray := "/no-such-page-" + uuid.NewString()
		s.client().expect(t, 404, "GET", stray, nil)
		missing := uuid.NewString()
		f.Owner.expect(t, 404, "GET", "/api/v1/keys/"+missing, nil)
		after, body := s.scrape(t)
		if d := after.value("keyrelay_http_requests_total", me) - before.value("keyrelay_http_requests_total", me); d != 1 {
			t.Errorf("GET /api/v1/me 200 moved by %v, want 1", d)
		}
		if d := after.value("keyrelay_http_request_duration_seconds", map[string]string{"method": "GET", "route": "/api/v1/me"}) -
			before.value("keyrelay_http_request_duration_seconds", map[string]string{"method": "GET", "route": "/api/v1/me"}); d != 1 {
			t.Errorf("latency histogram of GET /api/v1/me moved by %v, want 1", d)
		}
		unmatched := map[string]string{"route": "unmatched", "status": "404"}
		if after.value("keyrelay_http_requests_total", unmatched) <= before.value("keyrelay_http_requests_total", unmatched) {
			t.Errorf("a request no route matched is not counted as route=unmatched")
		}
		byPattern := map[string]string{"route": "/api/v1/keys/:id", "status": "404"}
		if after.value("keyrelay_http_requests_total", byPattern)-before.value("keyrelay_http_requests_total", byPattern) != 1 {
			t.Errorf("GET /api/v1/keys/:id 404 not counted by its pattern")
		}
		for _, raw := range []string{stray, missing} {
			if strings.Contains(body, raw) {
				t.Errorf("a raw path (%s) is a label value", raw)
			}
		}
	})

	// A message held up: no relay runs yet, and its row is ten minutes old.
	msgID := s.queueMessage(t, f.ID, to("lag-"+uuid.NewString()[:8]+"@example.com"))
	ownerExec(t, "UPDATE outbox SET created_at = now() - interval '10 minutes' WHERE id = $1", msgID)
	lagged, _ := s.scrape(t)
	if lag := lagged.value("keyrelay_outbox_lag_seconds", nil); lag < 600 {
		t.Fatalf("outbox lag %v s with a 10-minute-old unrelayed row, want ≥ 600", lag)
	}

	// A box calls in: counted online.
	st := s.newSite(t, f, 2)
	if err := st.box.Call(context.Background(), 200, "POST", "/box/v1/heartbeat", health.Heartbeat{FirmwareVersion: "1.0.0", PowerSource: "mains"}, nil); err != nil {
		t.Fatal(err)
	}
	// Pickups: one open, one wrong code.
	_, code := st.book(t, 2, -time.Minute, time.Hour)
	wantOpen(t, st.call(t, "/box/v1/pickups", map[string]any{"code": code}), 2)
	wrong := strings.Repeat("9", len(code))
	if wrong == code {
		wrong = strings.Repeat("8", len(code))
	}
	wantDenied(t, st.call(t, "/box/v1/pickups", map[string]any{"code": wrong}), "unknown_code")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.app.runWorkers(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	s.waitStatus(t, f.ID, msgID, outbox.Delivered)

	var after families
	waitFor(t, "the outbox lag to fall and the deliveries to be counted", 20*time.Second, func() bool {
		after, _ = s.scrape(t)
		return after.value("keyrelay_outbox_lag_seconds", nil) < 600 &&
			after.value("keyrelay_messages_total", map[string]string{"channel": "email", "provider": "devmailbox", "status": "delivered"}) >= 1
	})
	if after.value("keyrelay_boxes", map[string]string{"state": "online"}) < 1 {
		t.Errorf("no box counted online after a heartbeat")
	}
	if d := after.value("keyrelay_pickups_total", map[string]string{"result": "open", "reason": ""}) - before.value("keyrelay_pickups_total", map[string]string{"result": "open", "reason": ""}); d != 1 {
		t.Errorf("open pickups moved by %v, want 1", d)
	}
	if d := after.value("keyrelay_pickups_total", map[string]string{"result": "denied", "reason": "unknown_code"}) - before.value("keyrelay_pickups_total", map[string]string{"result": "denied", "reason": "unknown_code"}); d != 1 {
		t.Errorf("unknown_code denials moved by %v, want 1", d)
	}
	if after.value("keyrelay_queue_processed_total", nil) <= before.value("keyrelay_queue_processed_total", nil) {
		t.Errorf("queue processed total did not move after a delivery")
	}

	t.Run("AlertRulesUseExposedMetrics", func(t *testing.T) {
		checkRuleMetrics(t, after.names())
	})
	t.Run("DashboardUsesExposedMetrics", func(t *testing.T) {
		// Counters no test event moved yet (sync) have no series; their
		// names come from the registry's descriptions.
		exposed := after.names()
		for name := range describedNames(s.app.metrics) {
			exposed[name] = true
		}
		checkDashboardMetrics(t, exposed)
	})
}

func hasSeries(fam *dto.MetricFamily, want map[string]string) bool {
	if fam == nil {
		return false
	}
	for _, m := range fam.GetMetric() {
		n := 0
		for _, l := range m.GetLabel() {
			if want[l.GetName()] == l.GetValue() {
				n++
			}
		}
		if n == len(want) {
			return true
		}
	}
	return false
}

// serveMetricsAddr serves s's metrics address (KEYRELAY_METRICS_LISTEN)
// for the test and returns it.
func serveMetricsAddr(t *testing.T, s *server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.app.serveMetricsOn(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return ln.Addr().String()
}

// TestMetricsListener: KEYRELAY_METRICS_LISTEN serves the same metrics
// without credentials (a private network's address), and only /metrics.
func TestMetricsListener(t *testing.T) {
	s := startServer(t)
	addr := serveMetricsAddr(t, s)
	get := func(path string) (int, []byte) {
		res, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, b
	}
	status, body := get("/metrics")
	if status != 200 {
		t.Fatalf("GET /metrics on the metrics address: %d", status)
	}
	fams := parseMetrics(t, body)
	for _, name := range []string{"keyrelay_outbox_lag_seconds", "keyrelay_queue_tasks", "go_goroutines"} {
		if fams[name] == nil {
			t.Errorf("family %s missing", name)
		}
	}
	if status, _ := get("/api/v1/me"); status != 404 {
		t.Errorf("the metrics address serves /api/v1/me: %d", status)
	}
	if status, _ := get("/debug/pprof/"); status != 404 {
		t.Errorf("the profiler is served without KEYRELAY_METRICS_PPROF: %d", status)
	}
}

// TestMetricsPprof: KEYRELAY_METRICS_PPROF=true adds the profiler to the
// metrics address, and only there.
func TestMetricsPprof(t *testing.T) {
	s := startServer(t, func(c *Config) { c.MetricsPprof = true })
	res, err := http.Get("http://" + serveMetricsAddr(t, s) + "/debug/pprof/profile?seconds=1")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	// A CPU profile is gzipped protobuf.
	if res.StatusCode != 200 || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Fatalf("GET /debug/pprof/profile: %d, %d bytes", res.StatusCode, len(b))
	}
	if code := s.client().do(t, "GET", "/debug/pprof/", nil).Status; code != 404 {
		t.Errorf("the main address serves the profiler: %d", code)
	}
}

// describedNames are the metric names the app's own collectors describe,
// series or not.
func describedNames(m *Metrics) map[string]bool {
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		for _, c := range []prometheus.Collector{m.httpRequests, m.httpDuration, m.pickups, m.messages, m.pluginRestarts, m.bundleRebuilds, m.syncEvents} {
			c.Describe(ch)
		}
		close(ch)
	}()
	re := regexp.MustCompile(`fqName: "([^"]+)"`)
	out := map[string]bool{}
	for d := range ch {
		if mm := re.FindStringSubmatch(d.String()); mm != nil {
			out[mm[1]] = true
			out[mm[1]+"_bucket"], out[mm[1]+"_sum"], out[mm[1]+"_count"] = true, true, true
		}
	}
	return out
}

var (
	promStrings   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promMatchers  = regexp.MustCompile(`\{[^}]*\}`)
	promRanges    = regexp.MustCompile(`\[[^\]]*\]`)
	promGroupings = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promKeywords  = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true, "without": true,
		"on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true, "Inf": true, "NaN": true}
)

// metricNames are the metric names a PromQL expression selects: its
// identifiers once strings, label matchers, ranges and grouping clauses are
// gone, less functions, aggregations (followed by "("), keywords and the
// unit letters of numbers and durations.
func metricNames(expr string) []string {
	expr = promStrings.ReplaceAllString(expr, `""`)
	expr = promMatchers.ReplaceAllString(expr, " ")
	expr = promRanges.ReplaceAllString(expr, " ")
	expr = promGroupings.ReplaceAllString(expr, " ")
	var out []string
	for _, loc := range promIdent.FindAllStringIndex(expr, -1) {
		name := expr[loc[0]:loc[1]]
		if loc[0] > 0 && isWordByte(expr[loc[0]-1]) || promKeywords[name] {
			continue
		}
		if rest := strings.TrimLeft(expr[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") {
			continue
		}
		out = append(out, name)
	}
	return out
}

func isWordByte(b byte) bool {
	return b == '_' || b == '.' || b >= '0' && b <= '9' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z'
}

func TestMetricNamesOfPromQL(t *testing.T) {
	for expr, want := range map[string][]string{
		`max(keyrelay_outbox_lag_seconds) > 120`: {"keyrelay_outbox_lag_seconds"},
		`sum by (route) (rate(keyrelay_http_requests_total{status=~"5..", route!="/x y"}[5m])) / sum(rate(keyrelay_http_requests_total[5m])) > 0.02`: {"keyrelay_http_requests_total", "keyrelay_http_requests_total"},
		`histogram_quantile(0.95, sum by (le) (rate(a_bucket[$__rate_interval]))) and on(x) b offset 10m > 1e3`:                                      {"a_bucket", "b"},
	} {
		if got := metricNames(expr); !slices.Equal(got, want) {
			t.Errorf("metricNames(%q) = %v, want %v", expr, got, want)
		}
	}
}

// checkRuleMetrics loads the alert rules and checks that each expression
// selects metrics, all of them exposed, and that the alerts the operations
// issue asks for are there.
func checkRuleMetrics(t *testing.T, exposed map[string]bool) {
	raw, err := os.ReadFile("../deploy/prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	var alerts []string
	used := map[string]bool{}
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %q: alert, expr, severity and summary are required", r.Alert)
			}
			if _, err := model.ParseDuration(r.For); r.For != "" && err != nil {
				t.Errorf("rule %s: for %q: %v", r.Alert, r.For, err)
			}
			names := metricNames(r.Expr)
			if len(names) == 0 {
				t.Errorf("rule %s selects no metric: %s", r.Alert, r.Expr)
			}
			for _, n := range names {
				used[n] = true
				if !exposed[n] {
					t.Errorf("rule %s uses %s, which the app does not expose", r.Alert, n)
				}
			}
		}
	}
	for _, want := range []string{"KeyrelayOutboxLagging", "KeyrelayDeliveryFailureRate", "KeyrelayHTTP5xxRate", "KeyrelayPickupDenialSpike", "KeyrelayBoxesOffline"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("alert %s missing; have %v", want, alerts)
		}
	}
	names := make([]string, 0, len(used))
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("alert rules use %v", names)
}

// checkDashboardMetrics checks every panel query of the Grafana dashboard.
func checkDashboardMetrics(t *testing.T, exposed map[string]bool) {
	raw, err := os.ReadFile("../deploy/grafana/keyrelay-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	if dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard without uid or panels")
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			names := metricNames(q.Expr)
			if len(names) == 0 {
				t.Errorf("panel %q: query selects no metric: %s", p.Title, q.Expr)
			}
			for _, n := range names {
				if !exposed[n] {
					t.Errorf("panel %q uses %s, which the app does not expose", p.Title, n)
				}
			}
		}
	}
}

// BenchmarkScrape: one /metrics scrape with the operator token, its
// database and Redis reads included.
func BenchmarkScrape(b *testing.B) {
	s := startServer(b)
	c := s.client()
	b.ResetTimer()
	for b.Loop() {
		c.expect(b, 200, "GET", "/metrics", nil, "Authorization", "Bearer "+s.app.cfg.OperatorToken)
	}
}

// BenchmarkObserve is the cost the observe middleware adds to a request,
// tracing off (compare the two sub-benchmarks).
func BenchmarkObserve(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "Without"
		if on {
			name = "With"
		}
		b.Run(name, func(b *testing.B) {
			a := &App{metrics: NewMetrics(), tracer: noop.NewTracerProvider().Tracer(""), log: discardLogger()}
			app := fiber.New(fiber.Config{ErrorHandler: a.errorHandler})
			if on {
				app.Use(a.observe)
			}
			app.Get("/api/v1/keys/:id", func(c *fiber.Ctx) error { return c.SendString("ok") })
			h := app.Handler()
			var rc fasthttp.RequestCtx
			rc.Request.Header.SetMethod("GET")
			rc.Request.SetRequestURI("/api/v1/keys/0b5a3c1e-6f4d-4c1a-9a8e-2f3b4c5d6e7f")
			b.ReportAllocs()
			for b.Loop() {
				rc.Response.Reset()
				h(&rc)
			}
		})
	}
}

// TestMetricsQueueNotCreatedYet: a queue nothing was put in yet (a fresh
// Redis) reads as empty, and Redis as readable.
func TestMetricsQueueNotCreatedYet(t *testing.T) {
	s := startServer(t)
	c := newStateCollector(s.app.db, s.app.inspector, discardLogger())
	c.queues = []string{"never-used-" + uuid.NewString()[:8]}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	got, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	fams := families{}
	for _, f := range got {
		fams[f.GetName()] = f
	}
	if v := fams.value("keyrelay_metrics_source_up", map[string]string{"source": "redis"}); v != 1 {
		t.Errorf("redis up = %v with a queue not created yet, want 1", v)
	}
	if !hasSeries(fams["keyrelay_queue_tasks"], map[string]string{"queue": c.queues[0], "state": "pending"}) {
		t.Errorf("no series for the empty queue")
	}
}
