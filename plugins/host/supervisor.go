package host

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/keyrelay/keyrelay/plugins/sdk"
)

// slot is one plugin's place in the host: the running process, if any, and
// the supervision state that outlives each process.
type slot struct {
	h        *Host
	manifest Manifest
	binary   string
	sum      []byte
	log      *slog.Logger

	mu       sync.Mutex
	cur      *instance
	starting chan struct{} // closed when the start in progress ends
	failures int
	retryAt  time.Time
	lastErr  error
	caps     sdk.Capabilities
	timer    *time.Timer
	closed   bool
}

// instance is one plugin process and its client. go-plugin cannot restart a
// client, so each start makes a new instance.
type instance struct {
	client   *plugin.Client
	cmd      *exec.Cmd
	rpc      *sdk.GRPCClient
	pid      int
	version  int
	started  time.Time
	release  func()
	checking atomic.Bool // a wedge check is pending
	stopOnce sync.Once
}

func newSlot(h *Host, d discovered) *slot {
	return &slot{
		h:        h,
		manifest: d.manifest,
		binary:   d.binary,
		sum:      d.sum,
		log:      h.log.With("provider", d.manifest.Name),
	}
}

// errDead is the cause recorded when a plugin process is found gone.
var errDead = errors.New("plugin process exited")

// acquire returns the running instance, starting one if none runs. While a
// restart is pending it waits, if the restart is due before ctx's deadline
// and the plugin is not unhealthy; otherwise it fails fast with
// ErrUnavailable, which is temporary.
func (s *slot) acquire(ctx context.Context) (*instance, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, unavailable(s.manifest.Name, ErrClosed)
		}
		if inst := s.cur; inst != nil {
			if !inst.client.Exited() {
				s.mu.Unlock()
				return inst, nil
			}
			s.failLocked(inst, errDead)
		}
		ch := s.starting
		if ch == nil {
			wait := time.Until(s.retryAt)
			if wait <= 0 {
				ch = s.launchLocked()
			} else {
				unhealthy := s.failures >= s.h.cfg.UnhealthyAfter
				cause := s.lastErr
				if cause == nil {
					cause = errDead
				}
				s.mu.Unlock()
				if deadline, ok := ctx.Deadline(); unhealthy || (ok && time.Until(deadline) < wait) {
					return nil, unavailable(s.manifest.Name, fmt.Errorf("restarting in %v after: %w", wait.Round(time.Millisecond), cause))
				}
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return nil, unavailable(s.manifest.Name, fmt.Errorf("waiting for a restart: %w", ctx.Err()))
				}
				continue
			}
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, unavailable(s.manifest.Name, fmt.Errorf("waiting for the plugin to start: %w", ctx.Err()))
		}
		s.mu.Lock()
		if s.cur == nil && !s.closed {
			// The start failed; report why rather than looping into the backoff.
			err := s.lastErr
			s.mu.Unlock()
			return nil, unavailable(s.manifest.Name, err)
		}
		s.mu.Unlock()
	}
}

// launchLocked starts a new process in the background and returns a channel
// closed when the attempt is over. The start is not tied to any caller's
// context: a caller may give up, the next one still wants the plugin.
func (s *slot) launchLocked() chan struct{} {
	ch := make(chan struct{})
	s.starting = ch
	go func() {
		inst, err := s.start()
		s.mu.Lock()
		switch {
		case s.closed:
			s.mu.Unlock()
			if inst != nil {
				inst.stop(false)
			}
			s.mu.Lock()
		case err != nil:
			s.recordFailureLocked(err, 0)
		default:
			s.cur = inst
			s.log.Info("provider plugin started", "pid", inst.pid, "version", s.manifest.Version, "protocol", inst.version)
		}
		s.starting = nil
		close(ch)
		s.mu.Unlock()
	}()
	return ch
}

// start runs the binary and checks that it is the plugin its manifest says.
func (s *slot) start() (*instance, error) {
	cfg := s.h.cfg
	cmd := exec.Command(s.binary)
	cmd.Dir = filepath.Dir(s.binary)
	// A copy: go-plugin appends to it, and starts run concurrently.
	cmd.Env = slices.Clone(s.h.env)
	configureCmd(cmd, !cfg.noDeathSignal)
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: sdk.PluginSets(nil),
		Cmd:              cmd,
		// A new hash per start: SecureConfig writes the file into it.
		SecureConfig:     &plugin.SecureConfig{Checksum: s.sum, Hash: sha256.New()},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     cfg.StartTimeout,
		// Settings cross this connection: only this host may connect.
		AutoMTLS:    true,
		SkipHostEnv: true,
		Logger:      newHCLogger(s.log),
	})
	inst := &instance{client: client, cmd: cmd, started: time.Now()}
	release, err := runPinned(func() error {
		_, err := client.Start()
		return err
	})
	inst.release = release
	if err != nil {
		inst.stop(false)
		if errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
			return nil, fatalStart{fmt.Errorf("refusing %s: %w", s.manifest.Binary, err)}
		}
		return nil, fmt.Errorf("start %s: %w", s.manifest.Binary, err)
	}
	inst.pid = cmd.Process.Pid
	inst.version = client.NegotiatedVersion()
	fail := func(err error) (*instance, error) {
		inst.stop(false)
		return nil, err
	}
	if inst.version != sdk.ProtocolVersion {
		return fail(fatalStart{fmt.Errorf("plugin speaks protocol version %d, host speaks %d", inst.version, sdk.ProtocolVersion)})
	}
	conn, err := client.Client()
	if err != nil {
		return fail(fmt.Errorf("connect: %w", err))
	}
	raw, err := conn.Dispense(sdk.PluginName)
	if err != nil {
		return fail(fmt.Errorf("dispense: %w", err))
	}
	rpc, ok := raw.(*sdk.GRPCClient)
	if !ok {
		return fail(fatalStart{fmt.Errorf("dispensed %T, want *sdk.GRPCClient", raw)})
	}
	inst.rpc = rpc
	ctx, cancel := context.WithTimeout(context.Background(), cfg.StartTimeout)
	defer cancel()
	caps, err := rpc.Capabilities(ctx)
	if err != nil {
		return fail(fmt.Errorf("capabilities: %w", plain(err)))
	}
	if caps.Name != s.manifest.Name {
		return fail(fatalStart{fmt.Errorf("binary says it is %q, manifest says %q", caps.Name, s.manifest.Name)})
	}
	for _, ch := range s.manifest.Channels {
		if !slices.Contains(caps.Channels, ch) {
			return fail(fatalStart{fmt.Errorf("manifest lists channel %q, plugin does not support it", ch)})
		}
	}
	s.mu.Lock()
	s.caps = caps
	s.mu.Unlock()
	return inst, nil
}

// fatalStart marks start failures a retry cannot fix (a wrong checksum, a
// binary that is not the manifest's plugin): the plugin is marked unhealthy
// at once instead of after UnhealthyAfter attempts. Restarts continue at the
// slowest pace, in case the operator replaces the binary.
type fatalStart struct{ error }

func (f fatalStart) Unwrap() error { return f.error }

// fail retires inst if it is still the running instance.
func (s *slot) fail(inst *instance, cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failLocked(inst, cause)
}

func (s *slot) failLocked(inst *instance, cause error) {
	if s.cur != inst || s.closed {
		return
	}
	s.cur = nil
	// Tracked, so that Close does not return while a retired process lives.
	if !s.h.goTracked(func() { inst.stop(true) }) {
		inst.stop(true)
	}
	s.recordFailureLocked(cause, time.Since(inst.started))
}

// recordFailureLocked counts a failure and schedules the next start.
func (s *slot) recordFailureLocked(cause error, uptime time.Duration) {
	cfg := s.h.cfg
	if uptime >= cfg.StableAfter {
		s.failures = 0
	}
	s.failures++
	var fatal fatalStart
	if errors.As(cause, &fatal) && s.failures < cfg.UnhealthyAfter {
		s.failures = cfg.UnhealthyAfter
	}
	backoff := cfg.RestartBackoff
	for i := 1; i < s.failures && backoff < cfg.MaxRestartBackoff; i++ {
		backoff *= 2
	}
	if errors.As(cause, &fatal) || backoff > cfg.MaxRestartBackoff {
		backoff = cfg.MaxRestartBackoff
	}
	s.retryAt = time.Now().Add(backoff)
	s.lastErr = cause
	if s.failures >= cfg.UnhealthyAfter {
		s.log.Error("provider plugin unhealthy", "failures", s.failures, "next_start_in", backoff, "error", cause)
	} else {
		s.log.Warn("provider plugin failed; restarting", "failures", s.failures, "next_start_in", backoff, "error", cause)
	}
	if s.closed {
		return
	}
	if cfg.OnRestart != nil {
		cfg.OnRestart(s.manifest.Name)
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	s.timer = time.AfterFunc(backoff, s.restart)
}

// restart is the backoff timer's start: it does not wait for anyone's call,
// so a plugin is back, and its health known, before the next message.
func (s *slot) restart() {
	s.mu.Lock()
	if s.closed || s.cur != nil || s.starting != nil {
		s.mu.Unlock()
		return
	}
	s.launchLocked()
	s.mu.Unlock()
}

// succeeded records that inst served a call: the plugin works again.
func (s *slot) succeeded(inst *instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == inst && s.failures > 0 {
		if s.failures >= s.h.cfg.UnhealthyAfter {
			s.log.Info("provider plugin healthy again")
		}
		s.failures = 0
		s.lastErr = nil
	}
}

// call runs fn against the running instance and reads what its failure says
// about the plugin.
func (s *slot) call(ctx context.Context, fn func(context.Context, *sdk.GRPCClient) error) error {
	inst, err := s.acquire(ctx)
	if err != nil {
		return err
	}
	err = fn(ctx, inst.rpc)
	switch {
	case err == nil:
		s.succeeded(inst)
		return nil
	case !errors.Is(err, sdk.ErrTransport):
		// The plugin answered: the provider's verdict, or a reply that broke
		// the protocol. Either way the process is alive.
		if errors.Is(err, sdk.ErrProtocol) {
			s.log.Warn("provider plugin broke the protocol", "error", err)
		} else {
			s.succeeded(inst)
		}
		return err
	case errors.Is(err, context.DeadlineExceeded):
		// No answer before the deadline (gRPC's server side may call it a
		// moment before the caller's context does). A slow provider is not
		// a broken one; a provider still busy with the call well after its
		// deadline is wedged, and the check replaces it.
		s.checkWedgedLater(inst)
		return err
	case errors.Is(err, context.Canceled) || ctx.Err() != nil:
		return err
	default:
		// The connection broke mid-call: most likely the process died. Find
		// out now, so the caller's retry meets a fresh process.
		s.checkAlive(inst)
		return unavailable(s.manifest.Name, err)
	}
}

// checkAlive retires inst unless it still answers.
func (s *slot) checkAlive(inst *instance) {
	for i := 0; i < 10 && !inst.client.Exited(); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if inst.client.Exited() {
		s.fail(inst, errDead)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.h.cfg.HealthTimeout)
	defer cancel()
	if _, err := inst.rpc.Health(ctx); err != nil {
		s.fail(inst, fmt.Errorf("plugin stopped answering: %w", plain(err)))
	}
}

// checkWedgedLater looks at inst once WedgeGrace has passed.
func (s *slot) checkWedgedLater(inst *instance) {
	if !inst.checking.CompareAndSwap(false, true) {
		return
	}
	s.h.goTracked(func() {
		defer inst.checking.Store(false)
		t := time.NewTimer(s.h.cfg.WedgeGrace)
		defer t.Stop()
		select {
		case <-s.h.done:
			return
		case <-t.C:
		}
		s.checkInstance(inst)
	})
}

// checkHealth is the periodic check of the running instance.
func (s *slot) checkHealth() {
	s.mu.Lock()
	inst := s.cur
	s.mu.Unlock()
	if inst != nil {
		s.checkInstance(inst)
	}
}

// checkInstance retires inst if its process is gone, it does not answer a
// health check, or it still runs a call WedgeGrace past its deadline. Half
// the grace is allowed for the clock difference between host and plugin
// deadlines; a provider honouring its context is far below.
func (s *slot) checkInstance(inst *instance) {
	if inst.client.Exited() {
		s.fail(inst, errDead)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.h.cfg.HealthTimeout)
	defer cancel()
	h, err := inst.rpc.Health(ctx)
	switch {
	case err != nil:
		s.fail(inst, fmt.Errorf("health check failed: %w", plain(err)))
	case h.MaxOverdue >= s.h.cfg.WedgeGrace/2:
		s.fail(inst, fmt.Errorf("plugin wedged: a call is still running %v past its deadline", h.MaxOverdue.Round(time.Millisecond)))
	}
}

// close stops the slot for good.
func (s *slot) close() {
	s.mu.Lock()
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
	inst, starting := s.cur, s.starting
	s.cur = nil
	s.mu.Unlock()
	if starting != nil {
		// The launcher sees closed and stops what it started.
		<-starting
	}
	if inst != nil {
		inst.stop(false)
	}
}

func (s *slot) info() ProviderInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	info := ProviderInfo{
		Name:     s.manifest.Name,
		Version:  s.manifest.Version,
		Channels: slices.Clone(s.manifest.Channels),
		Receipts: s.caps.Receipts,
		Failures: s.failures,
	}
	if s.lastErr != nil {
		info.LastError = s.lastErr.Error()
	}
	if s.cur != nil {
		info.PID = s.cur.pid
		info.ProtocolVersion = s.cur.version
	} else if s.starting == nil && !s.closed {
		info.NextRestart = s.retryAt
	}
	switch {
	case s.closed:
		info.State = StateClosed
	case s.failures >= s.h.cfg.UnhealthyAfter:
		info.State = StateUnhealthy
	case s.cur != nil:
		info.State = StateRunning
	case s.starting != nil:
		info.State = StateStarting
	default:
		info.State = StateRestarting
	}
	info.Healthy = info.State == StateRunning
	return info
}

// killGrace bounds a graceful stop; then the process is killed.
const killGrace = 3 * time.Second

// stop ends the process and waits until it is gone. force skips the
// graceful shutdown, for a process that is dead or wedged anyway.
func (i *instance) stop(force bool) {
	i.stopOnce.Do(func() {
		defer i.release()
		if force && i.cmd.Process != nil {
			_ = i.cmd.Process.Kill()
		}
		done := make(chan struct{})
		go func() {
			// go-plugin asks the plugin to exit, and kills it after 2s; but
			// its request has no timeout of its own, and a stopped process
			// would never answer it.
			i.client.Kill()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(killGrace):
			if i.cmd.Process != nil {
				_ = i.cmd.Process.Kill()
			}
			<-done
		}
	})
}
