package box

import (
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/firmware/health"
)

// fakeClock is a clock a test moves.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 6, 1, 9, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func near(got, want float64) bool { return math.Abs(got-want) < 1e-6 }

func TestPowerModel(t *testing.T) {
	cfg := DefaultPowerConfig()
	if cfg.SleepAfter != 2*time.Minute {
		t.Fatalf("an MS5 sleeps after %s on battery, want 2m", cfg.SleepAfter)
	}
	level := func(p *Power) float64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.advance(p.clock())
		return p.level
	}

	t.Run("OKMainsNeverSleepsAndCharges", func(t *testing.T) {
		clk := newFakeClock()
		p := NewPower(cfg, 50, clk.Now)
		clk.Advance(time.Hour)
		st := p.State()
		if st.Source != Mains || st.Sleeping || st.Level != 75 {
			t.Fatalf("after an hour on mains: %+v, want mains, awake, 75%%", st)
		}
		clk.Advance(10 * time.Hour)
		if st := p.State(); st.Level != 100 || st.Sleeping {
			t.Fatalf("after 11 hours on mains: %+v", st)
		}
	})

	t.Run("OKBatteryAfterMainsLoss", func(t *testing.T) {
		clk := newFakeClock()
		p := NewPower(cfg, 80, clk.Now)
		st, changed := p.SetMains(false)
		if !changed || st.Source != Battery || st.Level != 80 || st.Sleeping {
			t.Fatalf("mains lost: %+v changed %v", st, changed)
		}
		if _, changed := p.SetMains(false); changed {
			t.Error("mains lost twice reported as a change")
		}
		clk.Advance(2*time.Minute - time.Second)
		if st := p.State(); st.Sleeping {
			t.Fatalf("asleep before two minutes: %+v", st)
		}
		if got, want := level(p), 80-cfg.DrainAwake*(2*time.Minute-time.Second).Hours(); !near(got, want) {
			t.Errorf("level %.6f, want %.6f (awake drain)", got, want)
		}
		clk.Advance(time.Second)
		if st := p.State(); !st.Sleeping || st.Source != Battery {
			t.Fatalf("two minutes idle on battery: %+v, want asleep", st)
		}
	})

	t.Run("OKDrainSplitWhereSleepBegan", func(t *testing.T) {
		clk := newFakeClock()
		p := NewPower(cfg, 80, clk.Now)
		p.SetMains(false)
		clk.Advance(10 * time.Hour) // read once, long after the sleep began
		want := 80 - cfg.DrainAwake*cfg.SleepAfter.Hours() - cfg.DrainAsleep*(10*time.Hour-cfg.SleepAfter).Hours()
		if got := level(p); !near(got, want) {
			t.Fatalf("level %.6f after 10h on battery, want %.6f", got, want)
		}
		if st := p.State(); st.Level != int(math.Round(want)) || !st.Sleeping {
			t.Fatalf("reported %+v, want %d%% asleep", st, int(math.Round(want)))
		}
	})

	t.Run("OKButtonWakes", func(t *testing.T) {
		clk := newFakeClock()
		p := NewPower(cfg, 90, clk.Now)
		p.SetMains(false)
		if woke, err := p.Activity(); err != nil || woke {
			t.Fatalf("activity while awake: woke %v %v", woke, err)
		}
		clk.Advance(3 * time.Minute)
		if !p.State().Sleeping {
			t.Fatal("not asleep after 3 idle minutes")
		}
		woke, err := p.Activity()
		if err != nil || !woke || p.State().Sleeping {
			t.Fatalf("button: woke %v %v, state %+v", woke, err, p.State())
		}
		// The count starts again from the press.
		clk.Advance(time.Minute)
		if p.State().Sleeping {
			t.Fatal("asleep one minute after the press")
		}
		clk.Advance(time.Minute)
		if !p.State().Sleeping {
			t.Fatal("awake two idle minutes after the press")
		}
		// Awake again, it drains at the awake rate.
		before := level(p)
		p.Activity()
		clk.Advance(time.Minute)
		if got, want := before-level(p), cfg.DrainAwake/60; !near(got, want) {
			t.Errorf("drained %.6f in an awake minute, want %.6f", got, want)
		}
	})

	t.Run("OKMainsBackStopsSleep", func(t *testing.T) {
		clk := newFakeClock()
		p := NewPower(cfg, 90, clk.Now)
		p.SetMains(false)
		clk.Advance(time.Hour)
		st, changed := p.SetMains(true)
		if !changed || st.Source != Mains || st.Sleeping {
			t.Fatalf("mains back: %+v", st)
		}
	})

	t.Run("ErrFlatBattery", func(t *testing.T) {
		clk := newFakeClock()
		p := NewPower(cfg, 2, clk.Now)
		p.SetMains(false)
		clk.Advance(5 * time.Hour)
		st := p.State()
		if !st.Off || st.Level != 0 || st.Sleeping {
			t.Fatalf("battery run flat: %+v, want off at 0%%", st)
		}
		if _, err := p.Activity(); !errors.Is(err, ErrNoPower) {
			t.Fatalf("key press on a flat box: %v, want ErrNoPower", err)
		}
		st, _ = p.SetMains(true)
		if st.Off || st.Source != Mains {
			t.Fatalf("mains back on a flat box: %+v", st)
		}
		clk.Advance(time.Hour)
		if st := p.State(); st.Level != int(cfg.Charge) {
			t.Errorf("an hour of charge from flat: %d%%, want %d%%", st.Level, int(cfg.Charge))
		}
	})

	t.Run("OKClockSetBackChangesNothing", func(t *testing.T) {
		clk := newFakeClock()
		p := NewPower(cfg, 60, clk.Now)
		p.SetMains(false)
		clk.Advance(time.Hour)
		before := level(p)
		clk.Advance(-30 * time.Minute)
		if got := level(p); got != before {
			t.Fatalf("level %.4f after the clock went back, was %.4f", got, before)
		}
	})
}

// A sleeping box must keep calling often enough that the platform does
// not take it for offline, and an awake one a fortiori.
func TestHeartbeatIntervalsBelowOfflineThreshold(t *testing.T) {
	cfg, offlineAfter := DefaultConfig(), health.DefaultConfig().OfflineAfter
	if cfg.SleepHeartbeatEvery >= offlineAfter || cfg.HeartbeatEvery >= offlineAfter {
		t.Fatalf("heartbeats every %s (asleep) and %s (awake); the platform marks a box offline after %s",
			cfg.SleepHeartbeatEvery, cfg.HeartbeatEvery, offlineAfter)
	}
	if cfg.SleepHeartbeatEvery <= cfg.HeartbeatEvery {
		t.Errorf("asleep the box calls every %s, awake every %s: sleeping saves nothing", cfg.SleepHeartbeatEvery, cfg.HeartbeatEvery)
	}
}
