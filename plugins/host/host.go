// Package host runs keyrelay's provider plugins and is the only way the rest
// of keyrelay reaches them.
//
// New finds the plugins in a directory (one folder per plugin, holding a
// Manifest and the binary), refuses any binary whose SHA-256 differs from its
// manifest (go-plugin's SecureConfig, checked at every start), starts each
// plugin once and reuses the process for every call.
//
// go-plugin never restarts a plugin, and a client it has killed cannot be
// started again, so the host supervises: a plugin whose process exits, stops
// answering its health check, or keeps a call running past its deadline
// (wedged) is killed and replaced by a new client after an exponential
// backoff. One that fails again and again is marked unhealthy: calls fail
// fast until a later restart succeeds and serves a call. Calls in flight on
// a plugin that dies fail with a temporary error, so the caller retries them.
//
// Errors returned by Send are classified for the caller:
//
//	errors.Is(err, sdk.ErrPermanent)   do not retry (bad number, bad settings…)
//	errors.Is(err, sdk.ErrTemporary)   retry with backoff; includes the two below
//	errors.Is(err, sdk.ErrRateLimited) retry after the *sdk.Error's RetryAfter
//	errors.Is(err, ErrUnavailable)     the plugin itself is down or restarting
//	errors.Is(err, context.DeadlineExceeded)  no answer in time (temporary)
//
// Plugins do not inherit the host's environment, which holds the database
// URL and the secret key; Config.Env lists what they get. On Linux the kernel
// kills every plugin if the host dies, even by SIGKILL, and the SDK makes
// plugins exit when their parent is gone on any system, so no plugin outlives
// the host.
package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/keyrelay/keyrelay/plugins/sdk"
)

// Errors of the host itself. They come wrapped in a classified *sdk.Error.
var (
	// ErrUnavailable: the provider's plugin is not running (crashed,
	// restarting, unhealthy, failed to start, refused by its checksum) or its
	// connection broke during the call. Temporary.
	ErrUnavailable = errors.New("provider plugin unavailable")
	// ErrUnknownProvider: no plugin has this name. Permanent.
	ErrUnknownProvider = errors.New("unknown provider")
	// ErrClosed: the host was closed. Temporary, with ErrUnavailable: the
	// message goes out from the next process.
	ErrClosed = errors.New("plugin host closed")
)

// Config configures a Host. Zero durations take the defaults in brackets.
type Config struct {
	// Dir holds one folder per plugin (KEYRELAY_PLUGINS_DIR).
	Dir    string
	Logger *slog.Logger
	// Env is the whole environment of plugin processes, as KEY=VALUE, added
	// to a few harmless variables of the host's (PATH, TMPDIR, TZ, LANG,
	// SSL_CERT_FILE, SSL_CERT_DIR). For example
	// "KEYRELAY_PLUGIN_ALLOW_PRIVATE_NETWORKS=1" in development.
	Env []string

	// CallTimeout bounds every call whose context has no earlier deadline [30s].
	CallTimeout time.Duration
	// StartTimeout bounds starting a plugin and its handshake [10s].
	StartTimeout time.Duration
	// HealthInterval is the period of health checks [15s].
	HealthInterval time.Duration
	// HealthTimeout bounds one health check [2s].
	HealthTimeout time.Duration
	// WedgeGrace is how long a call may outlive its deadline in the plugin
	// before the plugin counts as wedged and is replaced [2s]. Providers that
	// honour their context return within milliseconds.
	WedgeGrace time.Duration
	// RestartBackoff is the wait before the first restart after a failure;
	// it doubles with each consecutive failure up to MaxRestartBackoff
	// [250ms, 30s].
	RestartBackoff    time.Duration
	MaxRestartBackoff time.Duration
	// UnhealthyAfter consecutive failures mark a plugin unhealthy [3].
	UnhealthyAfter int
	// StableAfter: a plugin that ran this long before failing starts its
	// failure count afresh [1m].
	StableAfter time.Duration

	// OnRestart, when set, is told each time a plugin failed and its
	// restart is scheduled (the platform's restart counter). It runs under
	// the plugin's lock: it must not block.
	OnRestart func(provider string)
	// Tracer, when set, records a span per Send.
	Tracer trace.Tracer

	// noDeathSignal turns off the Linux parent-death signal, so tests can
	// show the SDK's own parent watch stops orphans.
	noDeathSignal bool
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.CallTimeout, 30*time.Second)
	def(&c.StartTimeout, 10*time.Second)
	def(&c.HealthInterval, 15*time.Second)
	def(&c.HealthTimeout, 2*time.Second)
	def(&c.WedgeGrace, 2*time.Second)
	def(&c.RestartBackoff, 250*time.Millisecond)
	def(&c.MaxRestartBackoff, 30*time.Second)
	def(&c.StableAfter, time.Minute)
	if c.MaxRestartBackoff < c.RestartBackoff {
		c.MaxRestartBackoff = c.RestartBackoff
	}
	if c.UnhealthyAfter <= 0 {
		c.UnhealthyAfter = 3
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Tracer == nil {
		c.Tracer = tracenoop.NewTracerProvider().Tracer("")
	}
}

// passedEnv are the host variables plugins may see.
var passedEnv = []string{"PATH", "TMPDIR", "TZ", "LANG", "LC_ALL", "SSL_CERT_FILE", "SSL_CERT_DIR"}

// Host runs the plugins. Its methods are safe for concurrent use.
type Host struct {
	cfg   Config
	log   *slog.Logger
	env   []string
	slots map[string]*slot
	names []string

	done      chan struct{} // closed by Close
	closeOnce sync.Once

	// Background work (health loop, wedge checks) is tracked so Close can
	// wait for it; closing stops new work from being added while it waits.
	mu      sync.Mutex
	closing bool
	wg      sync.WaitGroup
}

// goTracked runs f in the background, unless the host is closing; it
// reports whether f was started.
func (h *Host) goTracked(f func()) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		f()
	}()
	return true
}

// New discovers the plugins in cfg.Dir and starts them. A plugin that fails
// to start (a checksum mismatch, a crash at start-up) does not fail New: it
// is reported by Providers, logged, and retried with backoff. New fails for
// what an operator must fix first: a missing directory, an invalid or
// duplicate manifest, a missing binary.
func New(cfg Config) (*Host, error) {
	cfg.setDefaults()
	if cfg.Dir == "" {
		return nil, errors.New("plugin host: no plugins directory configured")
	}
	found, err := discover(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("plugin host: %w", err)
	}
	h := &Host{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "plugins"),
		slots: make(map[string]*slot, len(found)),
		done:  make(chan struct{}),
	}
	for _, k := range passedEnv {
		if v, ok := os.LookupEnv(k); ok {
			h.env = append(h.env, k+"="+v)
		}
	}
	h.env = append(h.env, cfg.Env...)
	for _, d := range found {
		h.slots[d.manifest.Name] = newSlot(h, d)
		h.names = append(h.names, d.manifest.Name)
	}
	sort.Strings(h.names)
	if len(found) == 0 {
		h.log.Warn("no provider plugins found", "dir", cfg.Dir)
	}

	// Start them all at once; each start is bounded by StartTimeout.
	var starts []chan struct{}
	for _, name := range h.names {
		s := h.slots[name]
		s.mu.Lock()
		starts = append(starts, s.launchLocked())
		s.mu.Unlock()
	}
	for _, ch := range starts {
		<-ch
	}
	h.goTracked(h.healthLoop)
	return h, nil
}

// ProviderInfo describes a plugin and how it is doing.
type ProviderInfo struct {
	Name     string
	Version  string
	Channels []sdk.Channel
	// Receipts: the provider verifies delivery receipts. Known once the
	// plugin has started.
	Receipts bool
	State    State
	// Healthy is State == StateRunning.
	Healthy bool
	// PID of the running process, 0 when none.
	PID int
	// ProtocolVersion negotiated with the running process.
	ProtocolVersion int
	// Failures in a row (crashes, failed starts, wedges, failed health checks).
	Failures int
	// NextRestart is when the next start is due, while one is pending.
	NextRestart time.Time
	LastError   string
}

// State is where a plugin stands.
type State string

const (
	StateRunning    State = "running"
	StateStarting   State = "starting"
	StateRestarting State = "restarting" // waiting out the backoff
	StateUnhealthy  State = "unhealthy"  // failed UnhealthyAfter times in a row
	StateClosed     State = "closed"
)

// Providers describes every plugin, sorted by name.
func (h *Host) Providers() []ProviderInfo {
	out := make([]ProviderInfo, 0, len(h.names))
	for _, name := range h.names {
		out = append(out, h.slots[name].info())
	}
	return out
}

// Provider describes one plugin.
func (h *Host) Provider(name string) (ProviderInfo, error) {
	s, err := h.slot(name)
	if err != nil {
		return ProviderInfo{}, err
	}
	return s.info(), nil
}

func (h *Host) slot(name string) (*slot, error) {
	s, ok := h.slots[name]
	if !ok {
		return nil, sdk.Permanent(fmt.Errorf("%w %q", ErrUnknownProvider, name))
	}
	return s, nil
}

// callContext gives every call a deadline, CallTimeout at the latest.
func (h *Host) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= h.cfg.CallTimeout {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, h.cfg.CallTimeout)
}

// Send delivers msg through the named provider, with msg.Settings.
func (h *Host) Send(ctx context.Context, provider string, msg sdk.Message) (_ sdk.Receipt, err error) {
	ctx, span := h.cfg.Tracer.Start(ctx, "plugin send", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("provider", provider), attribute.String("channel", string(msg.Channel))))
	defer func() {
		if err != nil {
			span.SetStatus(codes.Error, "send failed")
		}
		span.End()
	}()
	s, err := h.slot(provider)
	if err != nil {
		return sdk.Receipt{}, err
	}
	if !slices.Contains(s.manifest.Channels, msg.Channel) {
		return sdk.Receipt{}, sdk.Permanent(fmt.Errorf("%w: %s does not send %q", sdk.ErrUnsupportedChannel, provider, msg.Channel))
	}
	ctx, cancel := h.callContext(ctx)
	defer cancel()
	var rcpt sdk.Receipt
	err = s.call(ctx, func(ctx context.Context, c *sdk.GRPCClient) (err error) {
		rcpt, err = c.Send(ctx, msg)
		return err
	})
	return rcpt, err
}

// CheckConfig asks the named provider to validate a tenant's settings.
func (h *Host) CheckConfig(ctx context.Context, provider string, settings map[string]string) error {
	s, err := h.slot(provider)
	if err != nil {
		return err
	}
	ctx, cancel := h.callContext(ctx)
	defer cancel()
	return s.call(ctx, func(ctx context.Context, c *sdk.GRPCClient) error {
		return c.CheckConfig(ctx, settings)
	})
}

// VerifyReceipt hands an inbound delivery callback to the named provider,
// which checks its signature with the tenant's settings and parses it. A
// permanent error means the callback is forged or malformed (answer 4xx); a
// temporary one that it could not be checked now (answer 5xx so the service
// calls again).
func (h *Host) VerifyReceipt(ctx context.Context, provider string, settings map[string]string, req sdk.InboundRequest) (sdk.ReceiptUpdate, error) {
	s, err := h.slot(provider)
	if err != nil {
		return sdk.ReceiptUpdate{}, err
	}
	ctx, cancel := h.callContext(ctx)
	defer cancel()
	var upd sdk.ReceiptUpdate
	err = s.call(ctx, func(ctx context.Context, c *sdk.GRPCClient) (err error) {
		upd, err = c.VerifyReceipt(ctx, settings, req)
		return err
	})
	return upd, err
}

// Close stops every plugin process and waits until they are gone. Calls
// still running fail with ErrUnavailable; later calls fail with ErrClosed.
func (h *Host) Close() error {
	h.closeOnce.Do(func() {
		h.mu.Lock()
		h.closing = true
		h.mu.Unlock()
		close(h.done)
		var wg sync.WaitGroup
		for _, s := range h.slots {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.close()
			}()
		}
		wg.Wait()
		h.wg.Wait()
		h.log.Info("provider plugins stopped")
	})
	return nil
}

// healthLoop checks every running plugin each HealthInterval.
func (h *Host) healthLoop() {
	t := time.NewTicker(h.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-h.done:
			return
		case <-t.C:
		}
		var wg sync.WaitGroup
		for _, s := range h.slots {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.checkHealth()
			}()
		}
		wg.Wait()
	}
}

// unavailable wraps cause as a temporary ErrUnavailable.
func unavailable(provider string, cause error) error {
	return &sdk.Error{Class: sdk.ClassTemporary, Err: fmt.Errorf("%w: %s: %w", ErrUnavailable, provider, plain(cause))}
}

// plain drops the class from a classified error, keeping its text and
// cause, so that an error wrapping it matches exactly one class.
func plain(err error) error {
	if e, ok := err.(*sdk.Error); ok && e.Err != nil {
		return declassified{e}
	}
	return err
}

type declassified struct{ e *sdk.Error }

func (d declassified) Error() string { return d.e.Err.Error() }
func (d declassified) Unwrap() error { return d.e.Err }
