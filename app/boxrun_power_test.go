package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/firmware/box"
)

// testClock is a clock the test moves: the box's power model and
// schedules run on it, so two minutes of idling or a day of battery take
// no time.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// The MS5 power model against the real platform: mains lost → the box
// reports battery and the tenant is alerted once; two idle minutes → it
// sleeps, drops its long poll (a remote release waits) and says so; a key
// press wakes it and the release comes through; a day asleep drains the
// battery below the low mark → one low-battery alert; mains back → the
// incident closes.
func TestBoxRunPowerModel(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 2)
	clk := &testClock{now: time.Now()}
	opened := make(chan int, 4)
	cfg := box.Config{Hold: map[int]string{2: st.fobs[2]}, BatteryLevel: 30, Clock: clk.Now, Tick: 20 * time.Millisecond, Opened: opened}
	dev, err := box.New(st.box, t.TempDir(), cfg, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dev.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; dev.Close() })
	status := func() map[string]any { return st.boxStatus(t) }
	waitFor(t, "the box online on mains", 10*time.Second, func() bool {
		s := status()
		return s["online"] == true && s["power_source"] == "mains" && s["battery_level"] == float64(30) && s["sleeping"] == false
	})

	dev.SetMains(false)
	waitFor(t, "the box on battery", 10*time.Second, func() bool { return status()["power_source"] == "battery" })
	if n := s.alertsOf(t, st, "box_power_lost"); n != 1 {
		t.Fatalf("power-lost alerts: %d, want 1", n)
	}

	clk.Advance(2*time.Minute - time.Second)
	time.Sleep(200 * time.Millisecond) // ten looks at the clock
	if got := status(); got["sleeping"] != false || dev.Status().Power.Sleeping {
		t.Fatalf("asleep before two idle minutes: %v", got)
	}
	clk.Advance(2 * time.Second)
	waitFor(t, "the box to report sleeping", 10*time.Second, func() bool { return status()["sleeping"] == true })

	// Asleep the box holds no poll: a remote release waits for it.
	f.Owner.expect(t, 202, "POST", "/api/v1/boxes/"+st.boxID+"/bins/2/release", map[string]any{"reason": "visitor at the desk"})
	select {
	case bin := <-opened:
		t.Fatalf("a sleeping box opened bin %d", bin)
	case <-time.After(1500 * time.Millisecond):
	}
	if _, err := dev.Button(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the box to report awake", 10*time.Second, func() bool { return status()["sleeping"] == false })
	select {
	case bin := <-opened:
		if bin != 2 {
			t.Fatalf("opened bin %d, want 2", bin)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the release never reached the woken box")
	}

	// A day on battery, asleep after two minutes: the sleeping box's
	// heartbeat carries the drained level.
	before := dev.Status().Power.Level
	clk.Advance(24 * time.Hour)
	after := dev.Status().Power
	if !after.Sleeping || after.Level >= 20 || after.Level >= before {
		t.Fatalf("after a day on battery: %+v (was %d%%)", after, before)
	}
	waitFor(t, "the drained level reported", 10*time.Second, func() bool {
		s := status()
		return s["battery_level"] == float64(after.Level) && s["sleeping"] == true && s["online"] == true
	})
	if n := s.alertsOf(t, st, "box_battery_low"); n != 1 {
		t.Fatalf("low-battery alerts: %d, want 1", n)
	}

	dev.SetMains(true)
	waitFor(t, "mains reported back", 10*time.Second, func() bool {
		s := status()
		return s["power_source"] == "mains" && s["sleeping"] == false
	})
	if n := len(f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=box.power_restored", nil).JSON(t)["items"].([]any)); n != 1 {
		t.Errorf("power_restored audited %d times, want 1", n)
	}
	if n := s.alertsOf(t, st, "box_power_lost"); n != 1 {
		t.Errorf("power-lost alerts at the end: %d, want 1 (one incident)", n)
	}
}
