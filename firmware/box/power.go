package box

// The MS5's power supply: mains, and a battery that takes over when mains
// fails. On battery the box sleeps after two minutes with no one at its
// keypad, wakes on a key press, and reports where its power comes from and
// how full the battery is, so the platform can warn the tenant
// (firmware/health: box_power_lost, box_battery_low) before the box dies.

import (
	"errors"
	"math"
	"sync"
	"time"
)

// PowerConfig is how the simulated supply behaves. The rates are a model,
// not measurements: awake (screen lit, modem connected, long poll held) an
// MS5 lasts about 8 hours on its pack; asleep (screen off, modem idle
// between short wake-ups) about 4 days; a flat pack recharges in about 4
// hours on mains.
type PowerConfig struct {
	// SleepAfter is how long a box on battery stays awake with no one at
	// its keypad.
	SleepAfter time.Duration
	// DrainAwake and DrainAsleep are the battery's drain on battery, and
	// Charge its charge on mains, in percent per hour.
	DrainAwake  float64
	DrainAsleep float64
	Charge      float64
}

// DefaultPowerConfig is the MS5's.
func DefaultPowerConfig() PowerConfig {
	return PowerConfig{SleepAfter: 2 * time.Minute, DrainAwake: 12.5, DrainAsleep: 1, Charge: 25}
}

// Power sources as heartbeats report them.
const (
	Mains   = "mains"
	Battery = "battery"
)

// PowerState is the supply as the box reports it.
type PowerState struct {
	Source   string `json:"power_source"`
	Level    int    `json:"battery_level"`
	Sleeping bool   `json:"sleeping"`
	// Off is a battery run flat with mains still out: the box does
	// nothing, keypad included, until mains returns.
	Off bool `json:"off"`
}

// ErrNoPower is an input to a box whose battery is flat.
var ErrNoPower = errors.New("box: no power (battery empty, mains off)")

// Power is the supply. The battery level is not ticked down by a timer:
// it is worked out from the clock whenever it is read, so a test that
// moves its clock by hours sees hours of drain at once, split between
// awake and asleep where the sleep began.
type Power struct {
	mu     sync.Mutex
	cfg    PowerConfig
	clock  func() time.Time
	mains  bool
	level  float64   // percent, as of at
	at     time.Time // when level was last brought up to date
	active time.Time // the last time someone was at the box (or mains changed)
	off    bool
}

// NewPower returns a supply on mains with its battery at level percent.
func NewPower(cfg PowerConfig, level int, clock func() time.Time) *Power {
	now := clock()
	return &Power{cfg: cfg, clock: clock, mains: true, level: float64(max(0, min(100, level))), at: now, active: now}
}

// advance brings the level up to now. A clock that went back changes
// nothing: the battery cannot gain charge from it.
func (p *Power) advance(now time.Time) {
	if !now.After(p.at) {
		return
	}
	hours := func(from, to time.Time) float64 { return max(0, to.Sub(from).Hours()) }
	switch {
	case p.mains:
		p.level = min(100, p.level+p.cfg.Charge*hours(p.at, now))
	case !p.off:
		sleepAt := p.active.Add(p.cfg.SleepAfter)
		awakeUntil := now
		if sleepAt.Before(now) {
			awakeUntil = sleepAt
		}
		if awakeUntil.Before(p.at) {
			awakeUntil = p.at
		}
		p.level -= p.cfg.DrainAwake*hours(p.at, awakeUntil) + p.cfg.DrainAsleep*hours(awakeUntil, now)
		if p.level <= 0 {
			p.level, p.off = 0, true
		}
	}
	p.at = now
}

func (p *Power) state(now time.Time) PowerState {
	st := PowerState{Source: Mains, Level: int(math.Round(p.level)), Off: p.off}
	if !p.mains {
		st.Source = Battery
		st.Sleeping = !p.off && !now.Before(p.active.Add(p.cfg.SleepAfter))
	}
	return st
}

// State is the supply now.
func (p *Power) State() PowerState {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock()
	p.advance(now)
	return p.state(now)
}

// SetMains cuts or restores mains and reports whether that changed
// anything. Either way the box is woken: the supply's interrupt wakes it
// to report the change, and the two-minute count starts then.
func (p *Power) SetMains(on bool) (PowerState, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock()
	p.advance(now)
	changed := p.mains != on
	p.mains, p.active = on, now
	if on {
		p.off = false
	}
	return p.state(now), changed
}

// Activity is someone at the box (a key press, a bin opened): it restarts
// the count to sleep and reports whether it woke the box.
func (p *Power) Activity() (woke bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock()
	p.advance(now)
	if p.off {
		return false, ErrNoPower
	}
	woke = p.state(now).Sleeping
	p.active = now
	return woke, nil
}
