package main

import (
	"context"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/firmware/health"
)

func (s *server) alertsOf(t *testing.T, st *site, kind string) int {
	t.Helper()
	n := 0
	for _, m := range s.outboxOf(t, st.f.ID) {
		if m.Kind == kind {
			n++
		}
	}
	return n
}

func TestBoxHealth(t *testing.T) {
	s := startServer(t, func(c *Config) { c.BoxOfflineAfter, c.BoxOfflineAlertAfter = time.Second, time.Second })
	f := s.signup(t)
	st := s.newSite(t, f, 1)
	ctx := context.Background()
	beat := func(hb health.Heartbeat) {
		t.Helper()
		if err := st.box.Call(ctx, 200, "POST", "/box/v1/heartbeat", hb, nil); err != nil {
			t.Fatal(err)
		}
	}
	status := func() map[string]any {
		t.Helper()
		return f.Owner.expect(t, 200, "GET", "/api/v1/boxes/"+st.boxID, nil).JSON(t)["status"].(map[string]any)
	}
	if got := status(); got["provisioned"] != true || got["online"] != false || got["last_heartbeat_at"] != nil {
		t.Fatalf("before any heartbeat: %v", got)
	}
	lvl := func(n int) *int { return &n }
	beat(health.Heartbeat{FirmwareVersion: "5.2.0", PowerSource: "mains", BatteryLevel: lvl(95)})
	if got := status(); got["online"] != true || got["firmware_version"] != "5.2.0" || got["battery_level"] != float64(95) {
		t.Fatalf("after a heartbeat: %v", got)
	}

	// Power lost: one alert for the incident, however many heartbeats.
	beat(health.Heartbeat{FirmwareVersion: "5.2.0", PowerSource: "battery", BatteryLevel: lvl(80)})
	beat(health.Heartbeat{FirmwareVersion: "5.2.0", PowerSource: "battery", BatteryLevel: lvl(70)})
	if n := s.alertsOf(t, st, "box_power_lost"); n != 1 {
		t.Errorf("%d power alerts, want 1", n)
	}
	beat(health.Heartbeat{FirmwareVersion: "5.2.0", PowerSource: "battery", BatteryLevel: lvl(15)})
	beat(health.Heartbeat{FirmwareVersion: "5.2.0", PowerSource: "battery", BatteryLevel: lvl(12)})
	if n := s.alertsOf(t, st, "box_battery_low"); n != 1 {
		t.Errorf("%d low-battery alerts, want 1", n)
	}
	// Mains back, then lost again: a new incident, a new alert.
	beat(health.Heartbeat{FirmwareVersion: "5.2.0", PowerSource: "mains", BatteryLevel: lvl(40)})
	beat(health.Heartbeat{FirmwareVersion: "5.2.0", PowerSource: "battery", BatteryLevel: lvl(39)})
	if n := s.alertsOf(t, st, "box_power_lost"); n != 2 {
		t.Errorf("%d power alerts after a second incident, want 2", n)
	}

	// Heartbeats stop: offline, then one alert.
	time.Sleep(2100 * time.Millisecond)
	if _, err := s.app.health.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if got := status(); got["online"] != false {
		t.Fatalf("after heartbeats stopped: %v", got)
	}
	if n := s.alertsOf(t, st, "box_offline"); n != 1 {
		t.Errorf("%d offline alerts, want 1", n)
	}
	if _, err := s.app.health.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if n := s.alertsOf(t, st, "box_offline"); n != 1 {
		t.Errorf("%d offline alerts after a second sweep, want 1", n)
	}
	beat(health.Heartbeat{FirmwareVersion: "5.2.1", PowerSource: "mains"})
	if got := status(); got["online"] != true || got["firmware_version"] != "5.2.1" {
		t.Fatalf("back online: %v", got)
	}

	t.Run("ErrBadHeartbeat", func(t *testing.T) {
		for _, hb := range []health.Heartbeat{{PowerSource: "solar"}, {PowerSource: "mains", BatteryLevel: lvl(101)}} {
			if err := st.box.Call(ctx, 422, "POST", "/box/v1/heartbeat", hb, nil); err != nil {
				t.Error(err)
			}
		}
	})
}
