package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/keyrelay/keyrelay/firmware/box"
)

// dropInstalled loses the answer to the box's "installed" reports while
// armed: the report reaches nobody, as on a link that fails just then.
type dropInstalled struct {
	base  http.RoundTripper
	armed atomic.Bool
}

func (d *dropInstalled) RoundTrip(r *http.Request) (*http.Response, error) {
	if d.armed.Load() && r.URL.Path == "/box/v1/firmware/status" && r.Body != nil {
		raw, _ := io.ReadAll(r.Body)
		if bytes.Contains(raw, []byte(`"installed"`)) {
			return nil, errors.New("link lost")
		}
		r.Body = io.NopCloser(bytes.NewReader(raw))
	}
	return d.base.RoundTrip(r)
}

// A box that installed an update but could not say so keeps the version
// across a restart and reports it installed before its next check: the
// rollout records it installed, not skipped (which a check with the new
// version alone would cause).
func TestBoxFirmwareInstalledReportLost(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	ctx := context.Background()
	id := insertBox(t, f.ID, "MS5")
	c := s.provisionBox(t, f, id)
	drop := &dropInstalled{base: http.DefaultTransport}
	c.HTTP = &http.Client{Transport: drop}
	dir := t.TempDir()
	u, err := box.NewUpdater(c, dir, "1.0.0", 1)
	if err != nil {
		t.Fatal(err)
	}
	version := fwVersion(3)
	relID := s.publishFirmware(t, "MS5", version, 1, randomBytes(t, 50_000))
	op := s.operatorClient()
	rid := op.expect(t, 201, "POST", "/api/v1/platform/rollouts", map[string]any{
		"tenant_id": f.ID, "release_id": relID, "waves": []int{100}, "failure_threshold": 0.5}).JSON(t)["id"].(string)
	progress := func() any {
		return rolloutBoxes(t, op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t))[id.String()]["status"]
	}

	drop.armed.Store(true)
	up, err := u.Apply(ctx)
	if up == nil || err == nil || u.Version != version {
		t.Fatalf("apply with the report lost: %v %v, runs %s", up, err, u.Version)
	}
	if st := progress(); st != "installing" {
		t.Fatalf("rollout says %v, want installing", st)
	}

	// A restart: the box runs what it installed, and owes the report.
	again, err := box.NewUpdater(c, dir, "1.0.0", 1)
	if err != nil || again.Version != version {
		t.Fatalf("after a restart the box runs %s (%v), want %s", again.Version, err, version)
	}
	drop.armed.Store(false)
	if up, err := again.Apply(ctx); err != nil || up != nil {
		t.Fatalf("next apply: %v %v, want nothing to install", up, err)
	}
	if st := progress(); st != "installed" {
		t.Fatalf("rollout says %v after the late report, want installed", st)
	}
}
