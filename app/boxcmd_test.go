package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/firmware/box"
)

// The reference box's command line drives a whole exchange: provision,
// pickup with a code, dropoff by fob.
func TestBoxCommandLine(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 3) // its own box is provisioned by newSite; the CLI provisions a second credential below
	_, code := st.book(t, 3, -time.Minute, time.Hour)
	dir := filepath.Join(t.TempDir(), "box")
	boxCmd := func(args ...string) map[string]any {
		t.Helper()
		var out, errOut bytes.Buffer
		if err := run(context.Background(), append([]string{"box"}, append(args, "-state", dir)...), os.Getenv, &out, &errOut); err != nil {
			t.Fatalf("box %v: %v\n%s", args, err, errOut.String())
		}
		var m map[string]any
		if err := json.Unmarshal(out.Bytes(), &m); err != nil {
			t.Fatalf("box %v printed %q", args, out.String())
		}
		return m
	}
	tok := f.Owner.expect(t, 201, "POST", "/api/v1/boxes/"+st.boxID+"/provisioning-token", nil).JSON(t)["token"].(string)
	if p := boxCmd("provision", "-url", s.url, "-token", tok); p["box_id"] != st.boxID {
		t.Fatalf("provision: %v", p)
	}
	if info, err := os.Stat(filepath.Join(dir, "identity.json")); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("identity file: %v %v", info, err)
	}
	if me := boxCmd("me"); me["box_id"] != st.boxID {
		t.Fatalf("me: %v", me)
	}
	if r := boxCmd("pickup", "-code", code); r["result"] != "open" || r["bin"] != float64(3) {
		t.Fatalf("pickup: %v", r)
	}
	if w := st.keyState(t, 3); w["state"] != "out" {
		t.Fatalf("after the CLI pickup: %v", w)
	}
	if r := boxCmd("dropoff", "-fob", st.fobs[3]); r["result"] != "open" {
		t.Fatalf("dropoff: %v", r)
	}
	if w := st.keyState(t, 3); w["state"] != "in_bin" || w["bin"] != float64(3) {
		t.Fatalf("after the CLI dropoff: %v", w)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"box", "pickup", "-state", t.TempDir()}, os.Getenv, &out, &out); err == nil {
		t.Error("a box without an identity ran a pickup")
	}
}

// The reference device stays online: heartbeats make it online, and a
// remote release reaches it through its long poll and is acknowledged.
func TestReferenceDeviceOnline(t *testing.T) {
	s := startServer(t, withWorkers)
	f := s.signup(t)
	st := s.newSite(t, f, 2)
	opened := make(chan int, 1)
	dev, err := box.New(st.box, t.TempDir(), box.Config{Hold: map[int]string{2: st.fobs[2]}, Opened: opened, BatteryLevel: 90, Tick: 50 * time.Millisecond}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dev.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; dev.Close() })
	waitFor(t, "the box to be online", 10*time.Second, func() bool {
		return f.Owner.expect(t, 200, "GET", "/api/v1/boxes/"+st.boxID, nil).JSON(t)["status"].(map[string]any)["online"] == true
	})
	f.Owner.expect(t, 202, "POST", "/api/v1/boxes/"+st.boxID+"/bins/2/release", map[string]any{"reason": "demo"})
	select {
	case bin := <-opened:
		if bin != 2 {
			t.Fatalf("opened bin %d, want 2", bin)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the remote release never reached the device")
	}
	waitFor(t, "the ack", 10*time.Second, func() bool {
		return len(f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=box.command_done", nil).JSON(t)["items"].([]any)) >= 1
	})
	// A new booking changes what the box must know offline: the platform
	// rebuilds its bundle and says so, and the device fetches it.
	waitFor(t, "the first bundle", 10*time.Second, func() bool { return dev.Status().BundleVersion > 0 })
	before := dev.Status().BundleVersion
	st.book(t, 2, time.Hour, 2*time.Hour)
	waitFor(t, "the device to take the new bundle", 30*time.Second, func() bool { return dev.Status().BundleVersion > before })
}
