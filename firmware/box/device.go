package box

// The device: one box, as it behaves in the field. It keeps itself known
// to the platform (heartbeats with its firmware, power and signal), holds
// a long poll for commands and carries them out, keeps its firmware and
// offline bundle current, answers its keypad through the server and —
// MS4 and MS5 — alone from its bundle, derived and backup codes when the
// server cannot be reached, journaling what it did and uploading the
// journal once the server answers again. MS3 boxes have no offline mode.
//
// Clocks: the power model and the schedules (heartbeats, firmware and
// bundle checks, retries) run on Config.Clock; requests are signed, and
// offline decisions timed, with the client's clock. In the field both are
// the box's one clock; a test moves Config.Clock alone, so hours of
// battery drain take no time and signatures stay within the server's
// allowed skew.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/commands"
	"github.com/keyrelay/keyrelay/firmware/devices"
	"github.com/keyrelay/keyrelay/firmware/health"
	"github.com/keyrelay/keyrelay/firmware/offline"
	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
	"github.com/keyrelay/keyrelay/tenants/exchange"
)

// Config is the simulated hardware and its timings. Zero fields take the
// defaults of DefaultConfig.
type Config struct {
	// Bins is how many bins the box has.
	Bins int
	// Hold, when set, is what the bins' readers see at start (bin → fob
	// serial); it replaces what the state directory remembers.
	Hold map[int]string
	// FirmwareVersion and SecurityVersion are the factory image, run until
	// an update is installed.
	FirmwareVersion string
	SecurityVersion int
	// BatteryLevel is the battery at start, in percent (0: full).
	BatteryLevel int
	// SignalDBM is the modem's signal strength reported in heartbeats.
	SignalDBM int

	// HeartbeatEvery is the heartbeat interval while awake.
	HeartbeatEvery time.Duration
	// SleepHeartbeatEvery is the interval while asleep on battery. A
	// sleeping box switches its screen off and drops its long poll — a
	// held poll keeps the modem connected, the largest drain after the
	// screen — but it wakes its modem for a moment at this interval to
	// send a heartbeat (battery level, sleeping) and collect pending
	// commands. Going silent instead would let the platform mark the box
	// offline after health's 5 minutes and alert the tenant about a box
	// that still opens for anyone who presses a key; so the interval
	// stays below that threshold.
	SleepHeartbeatEvery time.Duration
	// FirmwareEvery and BundleEvery are how often the box checks for an
	// update and revalidates its bundle without being told to.
	FirmwareEvery time.Duration
	BundleEvery   time.Duration
	// RetryEvery is the wait after a failed firmware update, sync or
	// command poll.
	RetryEvery time.Duration
	// PollWait is how long a command poll may wait on the server.
	PollWait time.Duration
	// ServerTimeout bounds a keypad request to the server: past it, the
	// visitor is answered offline rather than kept waiting.
	ServerTimeout time.Duration
	// Tick is how often (real time) the device looks at its clock.
	Tick time.Duration

	Power  PowerConfig
	Limits offline.Limits
	// Clock drives the power model and the schedules; nil: the client's.
	Clock func() time.Time

	// FirmwareCutAfter, when positive, drops the first firmware download
	// after that many bytes (a demo or test of the resume with Range).
	FirmwareCutAfter int64
	// Opened receives each bin the device opens, for tests and demos.
	Opened chan<- int
}

// DefaultConfig is an MS5 with 12 bins, factory firmware 5.2.0.
func DefaultConfig() Config {
	return Config{Bins: 12, FirmwareVersion: "5.2.0", SecurityVersion: 1, BatteryLevel: 100, SignalDBM: -71,
		HeartbeatEvery: time.Minute, SleepHeartbeatEvery: 4 * time.Minute, FirmwareEvery: time.Hour, BundleEvery: 15 * time.Minute,
		RetryEvery: 10 * time.Second, PollWait: commands.MaxWait, ServerTimeout: 5 * time.Second, Tick: time.Second,
		Power: DefaultPowerConfig(), Limits: offline.DefaultLimits()}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	set := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	if c.Bins <= 0 {
		c.Bins = d.Bins
	}
	if c.FirmwareVersion == "" {
		c.FirmwareVersion, c.SecurityVersion = d.FirmwareVersion, d.SecurityVersion
	}
	if c.BatteryLevel <= 0 {
		c.BatteryLevel = d.BatteryLevel
	}
	if c.SignalDBM == 0 {
		c.SignalDBM = d.SignalDBM
	}
	set(&c.HeartbeatEvery, d.HeartbeatEvery)
	set(&c.SleepHeartbeatEvery, d.SleepHeartbeatEvery)
	set(&c.FirmwareEvery, d.FirmwareEvery)
	set(&c.BundleEvery, d.BundleEvery)
	set(&c.RetryEvery, d.RetryEvery)
	set(&c.PollWait, d.PollWait)
	set(&c.ServerTimeout, d.ServerTimeout)
	set(&c.Tick, d.Tick)
	if c.Power == (PowerConfig{}) {
		c.Power = d.Power
	}
	if c.Limits == (offline.Limits{}) {
		c.Limits = d.Limits
	}
	return c
}

// HasOfflineMode says whether a model decides alone when offline.
func HasOfflineMode(model string) bool { return model != "MS3" }

// Device is one box. Its methods are safe for concurrent use: the keypad
// (Pickup, Dropoff…), the supply (SetMains, Button) and Run's loops.
type Device struct {
	c     *Client
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	power *Power
	fw    *Updater
	// bundles and offline are nil on an MS3.
	bundles *Bundles
	offline *Offline

	kick    chan struct{} // the main loop: something changed
	wake    chan struct{} // the poller: the box woke
	fwKick  chan struct{} // the firmware loop: check now
	pollMu  sync.Mutex    // one command poll at a time: a command is carried out once
	flushMu sync.Mutex    // one events sender at a time

	mu           sync.Mutex
	bins         map[int]string // MS3: what the bins hold (MS4/MS5 keep it in offline)
	version      string
	online       bool
	everOnline   bool
	beatSoon     bool
	events       []exchange.Event // reported once the server takes them
	unacked      map[uuid.UUID]commands.AckInput
	pollCancel   context.CancelFunc
	nextFirmware time.Time
	nextBundle   time.Time
	nextSync     time.Time
	fwDeferred   bool
	lastSync     *boxsync.Result
}

// New builds the device of a provisioned box whose state lives in dir.
// It takes over c: its HTTP client is wrapped to watch the link.
func New(c *Client, dir string, cfg Config, log *slog.Logger) (*Device, error) {
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Device{c: c, cfg: cfg, log: log, now: cfg.Clock, kick: make(chan struct{}, 1), wake: make(chan struct{}, 1),
		fwKick: make(chan struct{}, 1), bins: map[int]string{}, unacked: map[uuid.UUID]commands.AckInput{}}
	if d.now == nil {
		d.now = c.now
	}
	d.power = NewPower(cfg.Power, cfg.BatteryLevel, d.now)
	var err error
	if d.fw, err = NewUpdater(c, filepath.Join(dir, "firmware"), cfg.FirmwareVersion, cfg.SecurityVersion); err != nil {
		return nil, err
	}
	d.fw.CutAfter = cfg.FirmwareCutAfter
	d.version = d.fw.Version
	if HasOfflineMode(c.ID.Model) {
		if d.bundles, err = OpenBundles(c, dir); err != nil {
			return nil, err
		}
		if d.offline, err = NewOffline(dir, c.ID, cfg.Bins, cfg.Limits, c.now); err != nil {
			return nil, err
		}
		if cfg.Hold != nil {
			if err := d.offline.SetBins(cfg.Hold); err != nil {
				d.offline.J.Close()
				return nil, err
			}
		}
	} else {
		for bin, fob := range cfg.Hold {
			d.bins[bin] = fob
		}
	}
	httpc := http.Client{Timeout: 40 * time.Second}
	if c.HTTP != nil {
		httpc = *c.HTTP
	}
	base := httpc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	httpc.Transport = &linkWatch{base: base, seen: d.setLink}
	c.HTTP = &httpc
	return d, nil
}

// Close releases the journal.
func (d *Device) Close() error {
	if d.offline != nil {
		return d.offline.J.Close()
	}
	return nil
}

// linkWatch notes, from every request the box makes, whether the server
// answers: the keypad, the sync and the status all go by it.
type linkWatch struct {
	base http.RoundTripper
	seen func(up bool)
}

func (l *linkWatch) RoundTrip(r *http.Request) (*http.Response, error) {
	res, err := l.base.RoundTrip(r)
	switch {
	case err == nil:
		l.seen(res.StatusCode < 500)
	case !errors.Is(r.Context().Err(), context.Canceled):
		// Our own cancellation (a poll dropped to sleep) says nothing
		// about the link; a refused connection or a timeout does.
		l.seen(false)
	}
	return res, err
}

func (d *Device) setLink(up bool) {
	d.mu.Lock()
	was, ever := d.online, d.everOnline
	d.online = up
	if up {
		d.everOnline = true
	}
	d.mu.Unlock()
	switch {
	case up && !was:
		if ever {
			d.log.Info("box: server reachable again")
		}
		d.poke(d.kick)
	case !up && was:
		d.log.Warn("box: server unreachable; the keypad answers offline")
	}
}

func (d *Device) poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (d *Device) reachable() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.online
}

// Run keeps the box going until ctx ends.
func (d *Device) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); d.pollLoop(ctx) }()
	go func() { defer wg.Done(); d.firmwareLoop(ctx) }()
	d.mainLoop(ctx)
	wg.Wait()
	return nil
}

// mainLoop sends heartbeats, and with the radio up flushes events,
// syncs the journal, revalidates the bundle and schedules firmware checks.
func (d *Device) mainLoop(ctx context.Context) {
	tick := time.NewTicker(d.cfg.Tick)
	defer tick.Stop()
	d.hello(ctx)
	var last PowerState
	var nextBeat time.Time
	first := true
	for {
		now := d.now()
		st := d.power.State()
		changed := first || st.Source != last.Source || st.Sleeping != last.Sleeping || st.Off != last.Off
		if changed && !first {
			d.log.Info("box: power", "source", st.Source, "battery", st.Level, "sleeping", st.Sleeping, "off", st.Off)
		}
		if st.Sleeping || st.Off {
			d.stopPoll()
		} else if last.Sleeping || last.Off {
			d.poke(d.wake)
		}
		if !st.Off {
			d.mu.Lock()
			soon := d.beatSoon
			d.beatSoon = false
			d.mu.Unlock()
			due := !now.Before(nextBeat)
			if changed || due || soon {
				d.beat(ctx, st)
				every := d.cfg.HeartbeatEvery
				if st.Sleeping {
					every = d.cfg.SleepHeartbeatEvery
				}
				nextBeat = now.Add(every)
				if st.Sleeping && due && !changed {
					// The sleeping box's short wake-up: collect what
					// waits, then the modem goes idle again.
					d.pollNow(ctx)
				}
			}
			// Asleep, the radio is up only for the wake-up above.
			if !st.Sleeping || due {
				d.housekeeping(ctx, st, now)
			}
		}
		last, first = st, false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-d.kick:
		}
	}
}

// hello checks the credential and learns the server's time.
func (d *Device) hello(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ServerTimeout)
	defer cancel()
	var me devices.Me
	if err := d.c.Call(ctx, http.StatusOK, http.MethodGet, "/box/v1/me", nil, &me); err != nil {
		d.log.Warn("box: cannot reach the server at start; working offline", "err", err)
		return
	}
	d.sawServerTime(me.ServerTime)
}

func (d *Device) sawServerTime(t time.Time) {
	if t.IsZero() || d.offline == nil {
		return
	}
	if err := d.bundles.SawServerTime(t); err != nil {
		d.log.Warn("box: record server time", "err", err)
	}
	if err := d.offline.SawServerTime(t); err != nil {
		d.log.Warn("box: record server time", "err", err)
	}
}

// Heartbeat is what the box would report now.
func (d *Device) Heartbeat() health.Heartbeat {
	st := d.power.State()
	d.mu.Lock()
	version := d.version
	d.mu.Unlock()
	lvl := st.Level
	at := d.c.now()
	signal := d.cfg.SignalDBM
	return health.Heartbeat{FirmwareVersion: version, PowerSource: st.Source, BatteryLevel: &lvl, Sleeping: st.Sleeping, SignalDBM: &signal, At: &at}
}

func (d *Device) beat(ctx context.Context, st PowerState) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ServerTimeout)
	defer cancel()
	if err := d.c.Call(ctx, http.StatusOK, http.MethodPost, "/box/v1/heartbeat", d.Heartbeat(), nil); err != nil && ctx.Err() == nil {
		d.log.Debug("box: heartbeat failed", "err", err)
	}
}

func (d *Device) housekeeping(ctx context.Context, st PowerState, now time.Time) {
	d.mu.Lock()
	fwDue := !now.Before(d.nextFirmware) || d.fwDeferred && st.Source == Mains
	if fwDue {
		d.nextFirmware = now.Add(d.cfg.FirmwareEvery)
	}
	bundleDue := !now.Before(d.nextBundle)
	syncDue := !now.Before(d.nextSync)
	d.mu.Unlock()
	if fwDue {
		d.poke(d.fwKick)
	}
	if !d.reachable() {
		return
	}
	d.flushEvents(ctx)
	if d.offline == nil {
		return
	}
	if syncDue && d.offline.J.Seq() > d.offline.J.Acked() {
		res, err := d.offline.Sync(ctx, d.c)
		d.mu.Lock()
		if err != nil {
			d.nextSync = now.Add(d.cfg.RetryEvery)
		} else {
			d.lastSync = &res
		}
		d.mu.Unlock()
		if err != nil {
			d.log.Warn("box: journal sync failed; retrying", "err", err)
		} else {
			d.log.Info("box: journal synced", "high_seq", res.HighSeq, "stored", res.Stored, "conflicts", len(res.Conflicts))
		}
	}
	if bundleDue {
		next := now.Add(d.cfg.BundleEvery)
		if err := d.fetchBundle(ctx); err != nil {
			next = now.Add(d.cfg.RetryEvery)
		}
		d.mu.Lock()
		d.nextBundle = next
		d.mu.Unlock()
	}
}

// fetchBundle takes a new bundle if there is one, and hands its derived
// code revocations to the keypad.
func (d *Device) fetchBundle(ctx context.Context) error {
	taken, err := d.bundles.Fetch(ctx)
	if err != nil {
		d.log.Warn("box: bundle fetch failed", "err", err)
		return err
	}
	if !taken {
		return nil
	}
	p := d.bundles.Payload()
	if p == nil {
		return nil
	}
	if err := d.offline.SetRevokedTags(p.RevokedTags); err != nil {
		return err
	}
	d.sawServerTime(p.BuiltAt)
	d.log.Info("box: new offline bundle", "version", p.Version, "accesses", len(p.Accesses))
	return nil
}

// pollLoop holds the long poll while the box is awake.
func (d *Device) pollLoop(ctx context.Context) {
	for ctx.Err() == nil {
		st := d.power.State()
		if st.Off || st.Sleeping {
			select {
			case <-ctx.Done():
			case <-d.wake:
			case <-time.After(d.cfg.Tick):
			}
			continue
		}
		pctx, cancel := context.WithCancel(ctx)
		d.mu.Lock()
		d.pollCancel = cancel
		d.mu.Unlock()
		// Fell asleep between the look above and now: do not hold a poll.
		if st := d.power.State(); st.Off || st.Sleeping {
			cancel()
		}
		d.pollMu.Lock()
		err := d.pollOnce(ctx, pctx, d.cfg.PollWait)
		d.pollMu.Unlock()
		d.mu.Lock()
		d.pollCancel = nil
		d.mu.Unlock()
		failed := err != nil && pctx.Err() == nil
		cancel()
		if failed {
			select {
			case <-ctx.Done():
			case <-d.wake:
			case <-time.After(d.cfg.RetryEvery):
			}
		}
	}
}

func (d *Device) stopPoll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pollCancel != nil {
		d.pollCancel()
	}
}

// pollNow collects pending commands without waiting, unless the poller
// holds a poll already.
func (d *Device) pollNow(ctx context.Context) {
	if !d.pollMu.TryLock() {
		return
	}
	defer d.pollMu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, d.cfg.ServerTimeout)
	defer cancel()
	if err := d.pollOnce(ctx, pctx, 0); err != nil && pctx.Err() == nil {
		d.log.Debug("box: command poll failed", "err", err)
	}
}

// pollOnce waits up to wait for commands (on pctx) and carries them out
// (on ctx: a command taken is finished even if the poll is dropped).
func (d *Device) pollOnce(ctx, pctx context.Context, wait time.Duration) error {
	var l commands.List
	if err := d.c.Call(pctx, http.StatusOK, http.MethodGet, fmt.Sprintf("/box/v1/commands?wait=%d", int(wait.Seconds())), nil, &l); err != nil {
		return err
	}
	d.sawServerTime(l.ServerTime)
	for _, c := range l.Commands {
		// Delivery is at least once: a command whose ack was lost comes
		// again, and is acknowledged again without being carried out twice
		// (a bin opened twice).
		d.mu.Lock()
		ack, seen := d.unacked[c.ID]
		d.mu.Unlock()
		if !seen {
			ack.Result, ack.Detail = d.carryOut(ctx, c)
			d.mu.Lock()
			d.unacked[c.ID] = ack
			d.mu.Unlock()
		}
		if err := d.c.Call(ctx, http.StatusNoContent, http.MethodPost, "/box/v1/commands/"+c.ID.String()+"/ack", ack, nil); err != nil {
			return err
		}
		d.mu.Lock()
		delete(d.unacked, c.ID)
		d.mu.Unlock()
	}
	return nil
}

func (d *Device) carryOut(ctx context.Context, c commands.Command) (commands.Result, string) {
	switch c.Kind {
	case commands.OpenBin:
		var p commands.OpenBinPayload
		if err := json.Unmarshal(c.Payload, &p); err != nil || p.Bin < 1 || p.Bin > d.cfg.Bins {
			return commands.Failed, "bad payload"
		}
		// Someone is at the box to take what the bin holds.
		if woke, err := d.power.Activity(); err != nil {
			return commands.Failed, err.Error()
		} else if woke {
			d.poke(d.kick)
		}
		d.openBin(ctx, p.Bin, p.AccessID)
		return commands.Done, ""
	case commands.BundleReady:
		if d.bundles == nil {
			return commands.Done, "no offline mode"
		}
		if err := d.fetchBundle(ctx); err != nil {
			return commands.Failed, err.Error()
		}
		return commands.Done, ""
	case commands.FirmwareAvailable:
		d.poke(d.fwKick)
		return commands.Done, "update check scheduled"
	}
	return commands.Failed, "unknown command"
}

// firmwareLoop checks for, downloads and installs updates when told to.
// It installs on mains only: a flash write interrupted by a battery
// running flat bricks a box, and a download keeps the modem up for long.
func (d *Device) firmwareLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.fwKick:
		}
		if st := d.power.State(); st.Source != Mains {
			d.mu.Lock()
			d.fwDeferred = true
			d.mu.Unlock()
			continue
		}
		d.mu.Lock()
		d.fwDeferred = false
		d.mu.Unlock()
		up, err := d.fw.Apply(ctx)
		if up != nil {
			d.mu.Lock()
			d.version, d.beatSoon = d.fw.Version, true
			d.mu.Unlock()
			d.log.Info("box: firmware installed", "version", up.Version)
			d.poke(d.kick)
		}
		if err != nil && ctx.Err() == nil {
			d.log.Warn("box: firmware update failed; retrying", "err", err)
			d.mu.Lock()
			d.nextFirmware = d.now().Add(d.cfg.RetryEvery)
			d.mu.Unlock()
		}
	}
}

// Bins returns what each bin holds (bin → fob serial), empty bins left out.
func (d *Device) Bins() map[int]string {
	if d.offline != nil {
		return d.offline.Bins()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[int]string{}
	for bin, fob := range d.bins {
		if fob != "" {
			out[bin] = fob
		}
	}
	return out
}

func (d *Device) bin(n int) string {
	if d.offline != nil {
		return d.offline.Bin(n)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bins[n]
}

func (d *Device) setBin(n int, fob string) {
	if d.offline != nil {
		if err := d.offline.SetBin(n, fob); err != nil {
			d.log.Warn("box: record bin", "bin", n, "err", err)
		}
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.bins[n] = fob
}

func (d *Device) opened(bin int) {
	if d.cfg.Opened != nil {
		select {
		case d.cfg.Opened <- bin:
		default:
		}
	}
}

// openBin opens a bin for someone who takes the key it holds, and reports
// it as an MS5 does: opened, key taken, what the closed bin holds.
func (d *Device) openBin(ctx context.Context, bin int, accessID *uuid.UUID) {
	d.opened(bin)
	now := d.c.now()
	evs := []exchange.Event{{Type: "bin_opened", Bin: bin, At: &now}}
	if d.bin(bin) != "" {
		evs = append(evs, exchange.Event{Type: "key_taken", Bin: bin, AccessID: accessID, At: &now})
		d.setBin(bin, "")
	}
	evs = append(evs, exchange.Event{Type: "bin_closed", Bin: bin, At: &now})
	d.report(ctx, evs)
}

// putKey opens a bin for a key coming back and reports the closed bin.
func (d *Device) putKey(ctx context.Context, bin int, fob string) {
	d.opened(bin)
	d.setBin(bin, fob)
	now := d.c.now()
	d.report(ctx, []exchange.Event{{Type: "bin_opened", Bin: bin, At: &now}, {Type: "bin_closed", Bin: bin, FobSerial: &fob, At: &now}})
}

// report queues events and sends what is queued. Events of a bin opened
// on the server's word are not journaled (the server decided); they wait
// in memory for the server to come back.
func (d *Device) report(ctx context.Context, evs []exchange.Event) {
	d.mu.Lock()
	d.events = append(d.events, evs...)
	d.mu.Unlock()
	d.flushEvents(ctx)
}

func (d *Device) flushEvents(ctx context.Context) {
	// One sender at a time, or two would send the same batch.
	d.flushMu.Lock()
	defer d.flushMu.Unlock()
	for {
		d.mu.Lock()
		n := min(len(d.events), exchange.MaxEvents)
		batch := append([]exchange.Event(nil), d.events[:n]...)
		d.mu.Unlock()
		if n == 0 {
			return
		}
		cctx, cancel := context.WithTimeout(ctx, d.cfg.ServerTimeout)
		err := d.c.Call(cctx, http.StatusOK, http.MethodPost, "/box/v1/events", exchange.EventsInput{Events: batch}, nil)
		cancel()
		if err != nil && unreachable(err) {
			return
		}
		if err != nil {
			// Refused as it is: sending it again would be refused again.
			d.log.Warn("box: events refused", "err", err)
		}
		d.mu.Lock()
		d.events = d.events[n:]
		d.mu.Unlock()
	}
}

// unreachable says whether err means the server could not answer: no
// connection, a timeout, a 5xx. A 4xx is the server's answer.
func unreachable(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status >= 500
	}
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	return !errors.As(err, &syn) && !errors.As(err, &typ)
}

// Answer is what the keypad's screen says and what the box did.
type Answer struct {
	// Result is open, denied, challenge or pin_required (exchange.Result).
	Result string `json:"result"`
	// Offline says the box decided alone.
	Offline     bool              `json:"offline"`
	Bins        []int             `json:"bins,omitempty"`
	AccessID    *uuid.UUID        `json:"access_id,omitempty"`
	ChallengeID *uuid.UUID        `json:"challenge_id,omitempty"`
	Channel     string            `json:"channel,omitempty"`
	Accesses    []exchange.Choice `json:"accesses,omitempty"`
	Reason      string            `json:"reason,omitempty"`
	Message     string            `json:"message,omitempty"`
	// JournalSeq is the last journal entry an offline decision wrote.
	JournalSeq uint64 `json:"journal_seq,omitempty"`
}

func denied(reason string) Answer {
	return Answer{Result: "denied", Offline: true, Reason: reason, Message: Screen(reason)}
}

// input is a key press: it wakes a sleeping box, and a flat one does
// nothing.
func (d *Device) input() error {
	woke, err := d.power.Activity()
	if err != nil {
		return err
	}
	if woke {
		d.poke(d.kick)
		d.poke(d.wake)
	}
	return nil
}

// ask sends a keypad request. It reports true when the server answered
// (out holds the answer); otherwise a non-nil Answer is final — the
// server's refusal (4xx), or, when the server cannot be reached, a box
// without an offline mode saying so — and nil means: answer offline.
func (d *Device) ask(ctx context.Context, path string, body any, out *exchange.Result) (bool, *Answer, error) {
	cctx, cancel := context.WithTimeout(ctx, d.cfg.ServerTimeout)
	defer cancel()
	err := d.c.Call(cctx, http.StatusOK, http.MethodPost, path, body, out)
	switch {
	case err == nil:
		return true, nil, nil
	case ctx.Err() != nil:
		return false, nil, ctx.Err()
	case unreachable(err) && d.offline == nil:
		a := denied(NoOfflineMode)
		return false, &a, nil
	case unreachable(err):
		return false, nil, nil
	}
	var se *StatusError
	if errors.As(err, &se) {
		var p struct {
			Type   string `json:"type"`
			Title  string `json:"title"`
			Detail string `json:"detail"`
		}
		_ = json.Unmarshal(se.Body, &p)
		msg := p.Detail
		if msg == "" {
			msg = p.Title
		}
		return true, &Answer{Result: "denied", Reason: fmt.Sprintf("refused_%d", se.Status), Message: msg}, nil
	}
	return false, nil, err
}

// fromServer turns the server's answer into the screen's, opening the bin
// when the answer is open: the visitor takes the key.
func (d *Device) fromServer(ctx context.Context, r exchange.Result) Answer {
	a := Answer{Result: r.Result, AccessID: r.AccessID, ChallengeID: r.ChallengeID, Channel: r.Channel, Accesses: r.Accesses,
		Reason: r.Reason, Message: r.Message}
	if r.Result == "open" && r.Bin != nil {
		a.Bins = []int{*r.Bin}
		d.openBin(ctx, *r.Bin, r.AccessID)
	}
	return a
}

// Pickup is a code typed at the keypad: a booking or alias code (the
// server decides), or, when the server cannot be reached, any code the
// box knows offline.
func (d *Device) Pickup(ctx context.Context, code string) (Answer, error) {
	if err := d.input(); err != nil {
		return Answer{}, err
	}
	code = strings.TrimSpace(code)
	now := d.c.now()
	var r exchange.Result
	answered, final, err := d.ask(ctx, "/box/v1/pickups", exchange.PickupInput{Code: code, BoxTime: &now}, &r)
	switch {
	case err != nil:
		return Answer{}, err
	case final != nil:
		return *final, nil
	case answered:
		return d.fromServer(ctx, r), nil
	}
	dec, err := d.offline.Keypad(code, d.bundles)
	if err != nil {
		return Answer{}, err
	}
	if !dec.Open {
		return denied(dec.Reason), nil
	}
	a := Answer{Result: "open", Offline: true, Bins: dec.Bins, JournalSeq: dec.Entry.Seq}
	if dec.Entry.AccessID != "" {
		if id, err := uuid.Parse(dec.Entry.AccessID); err == nil {
			a.AccessID = &id
		}
	}
	for _, b := range dec.Bins {
		d.opened(b)
	}
	// A backup code opened one bin: the person takes its key, and that is
	// journaled as well. After the open-all code the simulator cannot
	// tell what was taken; the bins' readers report it at the next
	// dropoff or sync.
	if dec.Entry.Kind == boxsync.KindBackupOpen && len(dec.Bins) == 1 && d.offline.Bin(dec.Bins[0]) != "" {
		e, err := d.offline.TakeKey(dec.Bins[0], boxsync.MethodBackup, "", "")
		if err != nil {
			return a, err
		}
		a.JournalSeq = e.Seq
	}
	a.Message = fmt.Sprintf("Bin %s is open.", joinBins(a.Bins))
	return a, nil
}

func joinBins(bins []int) string {
	s := make([]string, len(bins))
	for i, b := range bins {
		s[i] = fmt.Sprint(b)
	}
	return strings.Join(s, ", ")
}

// PickupPhone is a phone number typed at the keypad. Offline, a phone
// number never opens a bin (no second factor can be sent): the box says
// to use the booking code.
func (d *Device) PickupPhone(ctx context.Context, phone string) (Answer, error) {
	if err := d.input(); err != nil {
		return Answer{}, err
	}
	phone = strings.TrimSpace(phone)
	now := d.c.now()
	var r exchange.Result
	answered, final, err := d.ask(ctx, "/box/v1/pickups", exchange.PickupInput{Phone: phone, BoxTime: &now}, &r)
	switch {
	case err != nil:
		return Answer{}, err
	case final != nil:
		return *final, nil
	case answered:
		return d.fromServer(ctx, r), nil
	}
	dec, err := d.bundles.OfflinePickup("", phone)
	if errors.Is(err, ErrNoBundle) {
		return denied(NoBundle), nil
	}
	if err != nil {
		return Answer{}, err
	}
	return denied(dec.Reason), nil
}

// Verify is the second factor of a phone pickup: the code sent by SMS or
// email, or the visitor's PIN. It needs the server.
func (d *Device) Verify(ctx context.Context, in exchange.VerifyInput) (Answer, error) {
	if err := d.input(); err != nil {
		return Answer{}, err
	}
	now := d.c.now()
	in.BoxTime = &now
	var r exchange.Result
	answered, final, err := d.ask(ctx, "/box/v1/pickups/verify", in, &r)
	switch {
	case err != nil:
		return Answer{}, err
	case final != nil:
		return *final, nil
	case answered:
		return d.fromServer(ctx, r), nil
	}
	return denied(OfflineSecondFactor), nil
}

// Dropoff is a key coming back: the reader sees fob; the visitor may
// have typed the booking code (code) or just held the fob to the reader.
// Offline the box picks the bin itself — the key's home bin when free —
// and journals the dropoff: a key must always be able to come back.
func (d *Device) Dropoff(ctx context.Context, fob, code string) (Answer, error) {
	if err := d.input(); err != nil {
		return Answer{}, err
	}
	fob, code = strings.TrimSpace(fob), strings.TrimSpace(code)
	if fob == "" {
		return Answer{}, errors.New("box: dropoff: the reader must see a fob")
	}
	now := d.c.now()
	in := exchange.DropoffInput{BoxTime: &now}
	if code != "" {
		in.Code = code
	} else {
		in.FobSerial = fob
	}
	var r exchange.Result
	answered, final, err := d.ask(ctx, "/box/v1/dropoffs", in, &r)
	switch {
	case err != nil:
		return Answer{}, err
	case final != nil:
		return *final, nil
	case answered:
		a := Answer{Result: r.Result, AccessID: r.AccessID, Reason: r.Reason, Message: r.Message}
		if r.Result == "open" && r.Bin != nil {
			a.Bins = []int{*r.Bin}
			d.putKey(ctx, *r.Bin, fob)
		}
		return a, nil
	}
	bin := d.freeBinFor(fob)
	if bin == 0 {
		return denied(BoxFull), nil
	}
	e, err := d.offline.Dropoff(bin, fob)
	if err != nil {
		return Answer{}, err
	}
	d.opened(bin)
	return Answer{Result: "open", Offline: true, Bins: []int{bin}, JournalSeq: e.Seq, Message: fmt.Sprintf("Bin %d is open: put the key in and close it.", bin)}, nil
}

// freeBinFor chooses a bin for a key coming back offline: its home bin
// (from the bundle) when free, else a free bin that is no key's home,
// else any free bin; 0 when the box is full.
func (d *Device) freeBinFor(fob string) int {
	held := d.offline.Bins()
	homes := map[int]bool{}
	home := 0
	if p := d.bundles.Payload(); p != nil {
		for _, k := range p.Keys {
			if k.HomeBin == 0 {
				continue
			}
			homes[k.HomeBin] = true
			if k.FobSerial == fob {
				home = k.HomeBin
			}
		}
	}
	if home != 0 && home <= d.cfg.Bins && held[home] == "" {
		return home
	}
	anyFree := 0
	for b := 1; b <= d.cfg.Bins; b++ {
		if held[b] != "" {
			continue
		}
		if !homes[b] {
			return b
		}
		if anyFree == 0 {
			anyFree = b
		}
	}
	return anyFree
}

// Button is a key press with nothing typed: it wakes a sleeping box.
func (d *Device) Button() (PowerState, error) {
	if err := d.input(); err != nil {
		return d.power.State(), err
	}
	return d.power.State(), nil
}

// SetMains cuts or restores mains power. The box reports the change at
// once.
func (d *Device) SetMains(on bool) PowerState {
	st, changed := d.power.SetMains(on)
	if changed {
		d.poke(d.kick)
		d.poke(d.wake)
	}
	return st
}

// Status is what the box knows of itself.
type Status struct {
	BoxID           string          `json:"box_id"`
	Model           string          `json:"model"`
	OfflineMode     bool            `json:"offline_mode"`
	Online          bool            `json:"online"`
	FirmwareVersion string          `json:"firmware_version"`
	Power           PowerState      `json:"power"`
	Bins            map[int]string  `json:"bins"`
	BundleVersion   uint64          `json:"bundle_version"`
	JournalSeq      uint64          `json:"journal_seq"`
	JournalAcked    uint64          `json:"journal_acked"`
	PendingEvents   int             `json:"pending_events"`
	LastSync        *boxsync.Result `json:"last_sync,omitempty"`
}

// Status returns the box's state now.
func (d *Device) Status() Status {
	st := Status{BoxID: d.c.ID.BoxID, Model: d.c.ID.Model, OfflineMode: d.offline != nil, Power: d.power.State(), Bins: d.Bins()}
	if d.offline != nil {
		st.BundleVersion = d.bundles.State().Signing.Version
		st.JournalSeq, st.JournalAcked = d.offline.J.Seq(), d.offline.J.Acked()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st.Online, st.FirmwareVersion, st.PendingEvents, st.LastSync = d.online, d.version, len(d.events), d.lastSync
	return st
}
