package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/box"
	"github.com/keyrelay/keyrelay/firmware/devices"
)

// operatorClient calls /api/v1/platform with the operator token.
func (s *server) operatorClient() *client {
	c := s.client()
	c.token = s.app.cfg.OperatorToken
	return c
}

// publishFirmware declares, uploads (in two chunks) and publishes a
// release, and returns its id.
func (s *server) publishFirmware(t testing.TB, model, version string, sv int, artifact []byte) string {
	t.Helper()
	op := s.operatorClient()
	rel := op.expect(t, 201, "POST", "/api/v1/platform/firmware/releases", map[string]any{
		"model": model, "version": version, "security_version": sv, "notes": "test build", "size": len(artifact)}).JSON(t)
	id := rel["id"].(string)
	half := len(artifact) / 2
	for _, part := range [][2]int{{0, half}, {half, len(artifact)}} {
		op.expect(t, 200, "PUT", "/api/v1/platform/firmware/releases/"+id+"/artifact", string(artifact[part[0]:part[1]]),
			"Content-Type", "application/octet-stream", "Content-Range", fmt.Sprintf("bytes %d-%d/%d", part[0], part[1]-1, len(artifact)))
	}
	pub := op.expect(t, 200, "POST", "/api/v1/platform/firmware/releases/"+id+"/publish", nil).JSON(t)
	sum := sha256.Sum256(artifact)
	if pub["state"] != "published" || pub["sha256"] != hex.EncodeToString(sum[:]) {
		t.Fatalf("published release: %v", pub)
	}
	return id
}

// fwVersion makes a release version of major that no other test uses:
// releases are platform data, shared by every test of the package.
func fwVersion(major int) string {
	return fmt.Sprintf("%d.%d.%d", major, seq.Add(1)%60000, time.Now().UnixNano()%60000)
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// fleet provisions n boxes of model for f, each with its updater running
// version 1.0.0 (security version 1).
func (s *server) fleet(t testing.TB, f tenantFixture, model string, n int) map[string]*box.Updater {
	t.Helper()
	out := map[string]*box.Updater{}
	for range n {
		id := insertBox(t, f.ID, model)
		u, err := box.NewUpdater(s.provisionBox(t, f, id), t.TempDir(), "1.0.0", 1)
		if err != nil {
			t.Fatal(err)
		}
		out[id.String()] = u
	}
	return out
}

func rolloutBoxes(t testing.TB, d map[string]any) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, b := range d["boxes"].([]any) {
		m := b.(map[string]any)
		out[m["box_id"].(string)] = m
	}
	return out
}

// passObservation moves the rollout's installs back beyond the
// observation window, then runs one tick of the rollout loop.
func (s *server) passObservation(t testing.TB, rolloutID string) {
	t.Helper()
	ownerExec(t, `UPDATE firmware_assignments SET installed_at = installed_at - interval '2 hours' WHERE rollout_id = $1 AND installed_at IS NOT NULL`, rolloutID)
	if _, err := s.app.releases.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestFirmwareRolloutEndToEnd(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	ctx := context.Background()
	boxes := s.fleet(t, f, "MS5", 4)
	ms4 := s.fleet(t, f, "MS4", 1)
	artifact := randomBytes(t, 300_000)
	relID := s.publishFirmware(t, "MS5", fwVersion(2), 2, artifact)
	op := s.operatorClient()

	ro := op.expect(t, 201, "POST", "/api/v1/platform/rollouts", map[string]any{
		"tenant_id": f.ID, "release_id": relID, "waves": []int{25, 100}, "failure_threshold": 0.5, "observation_window": "30m"}).JSON(t)
	rid := ro["id"].(string)
	if ro["state"] != "active" || ro["current_wave"] != float64(1) {
		t.Fatalf("rollout: %v", ro)
	}
	d := op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t)
	wave1 := rolloutBoxes(t, d)
	if len(wave1) != 1 {
		t.Fatalf("wave 1 (25%% of 4) has %d boxes, want 1: %v", len(wave1), d["boxes"])
	}
	var first string
	for id := range wave1 {
		first = id
	}
	// The box in the wave was told; the others get nothing yet.
	if n := ownerExec(t, `UPDATE box_commands SET detail = detail WHERE box_id = $1 AND kind = 'firmware_available'`, first); n != 1 {
		t.Errorf("firmware_available commands for the wave-1 box: %d, want 1", n)
	}
	for id, u := range boxes {
		up, reason, err := u.Check(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if (id == first) != (up != nil) {
			t.Fatalf("box %s: update %v (reason %q); in wave 1: %v", id, up, reason, id == first)
		}
	}
	for _, u := range ms4 {
		if up, _, err := u.Check(ctx); err != nil || up != nil {
			t.Fatalf("the MS4 box was offered %v (%v)", up, err)
		}
	}

	t.Run("OKDownloadCutAndResumed", func(t *testing.T) {
		u := boxes[first]
		u.CutAfter = 100_000
		if _, err := u.Apply(ctx); !errors.Is(err, box.ErrCut) {
			t.Fatalf("first attempt: %v, want the cut", err)
		}
		d := rolloutBoxes(t, op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t))
		if st := d[first]["status"]; st != "downloading" {
			t.Fatalf("after the cut: %v, want downloading", st)
		}
		up, err := u.Apply(ctx)
		if err != nil || up == nil {
			t.Fatalf("resumed: %v %v", up, err)
		}
		if !strings.HasPrefix(u.Version, "2.") || u.SecurityVersion != 2 {
			t.Fatalf("the box runs %s (security %d) after installing", u.Version, u.SecurityVersion)
		}
		d = rolloutBoxes(t, op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t))
		b := d[first]
		if b["status"] != "installed" || b["installed_at"] == nil || b["downloading_at"] == nil || b["from_version"] != "" && b["from_version"] != "1.0.0" {
			t.Fatalf("progress: %v", b)
		}
		// Installed: nothing more to offer.
		if up, _, _ := u.Check(ctx); up != nil {
			t.Fatalf("offered again after installing: %v", up)
		}
	})

	t.Run("OKNextWaveAfterObservation", func(t *testing.T) {
		if _, err := s.app.releases.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		if d := op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t); d["current_wave"] != float64(1) {
			t.Fatalf("moved on before the observation window ended: wave %v", d["current_wave"])
		}
		s.passObservation(t, rid)
		d := op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t)
		if d["current_wave"] != float64(2) || len(rolloutBoxes(t, d)) != 4 {
			t.Fatalf("wave 2: %v", d)
		}
		for id, u := range boxes {
			if id == first {
				continue
			}
			if up, err := u.Apply(ctx); err != nil || up == nil {
				t.Fatalf("box %s: %v %v", id, up, err)
			}
		}
		s.passObservation(t, rid)
		d = op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t)
		if d["state"] != "completed" || d["counts"].(map[string]any)["installed"] != float64(4) {
			t.Fatalf("after every box installed: %v", d)
		}
	})

	t.Run("OKRecordExported", func(t *testing.T) {
		sum := sha256.Sum256(artifact)
		csv := f.Owner.expect(t, 200, "GET", "/api/v1/firmware/rollouts/"+rid+"/record?format=csv", nil)
		lines := strings.Split(strings.TrimSpace(string(csv.Body)), "\n")
		if len(lines) != 5 || !strings.HasPrefix(lines[0], "rollout_id,model,box_id") {
			t.Fatalf("CSV record: %s", csv.Body)
		}
		for _, l := range lines[1:] {
			if !strings.Contains(l, hex.EncodeToString(sum[:])) || !strings.Contains(l, ",installed,") {
				t.Errorf("record row without digest or outcome: %s", l)
			}
		}
		js := f.Owner.expect(t, 200, "GET", "/api/v1/firmware/rollouts/"+rid+"/record", nil).JSON(t)
		if len(js["boxes"].([]any)) != 4 {
			t.Errorf("JSON record: %v", js)
		}
		problemOf(t, f.Owner.do(t, "GET", "/api/v1/firmware/rollouts/"+rid+"/record?format=xml", nil), 422)
	})
}

func TestFirmwareRolloutPausesItself(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	ctx := context.Background()
	boxes := s.fleet(t, f, "MS5", 4)
	relID := s.publishFirmware(t, "MS5", fwVersion(1), 1, randomBytes(t, 4096))
	op := s.operatorClient()
	rid := op.expect(t, 201, "POST", "/api/v1/platform/rollouts", map[string]any{
		"tenant_id": f.ID, "release_id": relID, "waves": []int{50, 100}, "failure_threshold": 0.25}).JSON(t)["id"].(string)
	wave1 := rolloutBoxes(t, op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t))
	if len(wave1) != 2 {
		t.Fatalf("wave 1: %d boxes, want 2", len(wave1))
	}
	var ids []string
	for id := range wave1 {
		ids = append(ids, id)
	}
	slices.Sort(ids)

	t.Run("PausedByReportedFailure", func(t *testing.T) {
		u := boxes[ids[0]]
		up, _, err := u.Check(ctx)
		if err != nil || up == nil {
			t.Fatalf("check: %v %v", up, err)
		}
		if err := u.Report(ctx, up, "failed", "flash write error at block 17"); err != nil {
			t.Fatal(err)
		}
		d := op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t)
		if d["state"] != "paused" || !strings.Contains(d["state_reason"].(string), "1 of 2") || d["current_wave"] != float64(1) {
			t.Fatalf("after one failure in two: %v", d)
		}
		if b := rolloutBoxes(t, d)[ids[0]]; b["reason"] != "flash write error at block 17" || b["failed_at"] == nil {
			t.Errorf("failed box: %v", b)
		}
		// Paused: the other box of the wave is offered nothing.
		if up, _, _ := boxes[ids[1]].Check(ctx); up != nil {
			t.Fatalf("a paused rollout offered %v", up)
		}
		if _, err := s.app.releases.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		if d := op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t); d["state"] != "paused" {
			t.Fatalf("a tick moved a paused rollout: %v", d["state"])
		}
		// A failed report is final.
		problemOf(t, mustStatus(t, u, up.ReleaseID.String(), "installed"), 409)
	})

	t.Run("PausedByBoxSilentAfterInstall", func(t *testing.T) {
		r := op.expect(t, 200, "POST", "/api/v1/platform/rollouts/"+rid+"/resume", map[string]any{"reason": "bad flash on one unit"}).JSON(t)
		if r["state"] != "active" {
			t.Fatalf("resume: %v", r)
		}
		u := boxes[ids[1]]
		if up, err := u.Apply(ctx); err != nil || up == nil {
			t.Fatalf("install: %v %v", up, err)
		}
		if _, err := s.app.releases.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		if d := op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t); d["state"] != "active" {
			t.Fatalf("a healthy install paused the rollout: %v", d)
		}
		// The box stops sending heartbeats (the health sweeper marks it
		// offline) within the observation window.
		ownerExec(t, `INSERT INTO box_status (tenant_id, box_id, online, since, last_heartbeat_at) VALUES ($1, $2, false, now(), now() - interval '10 minutes')
			ON CONFLICT (tenant_id, box_id) DO UPDATE SET online = false, since = now()`, f.ID, ids[1])
		if _, err := s.app.releases.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		d := op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t)
		if d["state"] != "paused" || d["current_wave"] != float64(1) {
			t.Fatalf("after an installed box went silent: %v", d)
		}
		if b := rolloutBoxes(t, d)[ids[1]]; b["status"] != "failed" || !strings.Contains(b["reason"].(string), "heartbeats") {
			t.Errorf("silent box: %v", b)
		}
		audit := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=firmware.rollout_paused", nil).JSON(t)
		if n := len(audit["items"].([]any)); n != 2 {
			t.Errorf("audit has %d firmware.rollout_paused entries, want 2", n)
		}
	})

	t.Run("Abort", func(t *testing.T) {
		op.expect(t, 200, "POST", "/api/v1/platform/rollouts/"+rid+"/abort", nil)
		problemOf(t, op.do(t, "POST", "/api/v1/platform/rollouts/"+rid+"/resume", nil), 409)
		for _, u := range boxes {
			if up, _, _ := u.Check(ctx); up != nil {
				t.Fatalf("an aborted rollout offered %v", up)
			}
		}
	})
}

func mustStatus(t testing.TB, u *box.Updater, releaseID, status string) response {
	t.Helper()
	code, body, err := u.Client.Request(context.Background(), "POST", "/box/v1/firmware/status", map[string]any{"release_id": releaseID, "status": status})
	if err != nil {
		t.Fatal(err)
	}
	return response{Status: code, Body: body, Header: http.Header{"Content-Type": {"application/problem+json"}}}
}

// A box is never offered firmware for another model, a version at or
// below its own, or a security version below its own: the assignment is
// skipped, and the record says why.
func TestFirmwareNeverOffered(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	ctx := context.Background()
	boxes := s.fleet(t, f, "MS5", 3)
	relID := s.publishFirmware(t, "MS5", fwVersion(2), 2, randomBytes(t, 2048))
	op := s.operatorClient()
	rid := op.expect(t, 201, "POST", "/api/v1/platform/rollouts", map[string]any{"tenant_id": f.ID, "release_id": relID, "waves": []int{100}}).JSON(t)["id"].(string)
	var ids []string
	for id := range boxes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	// Box 0 runs something newer, box 1 a higher security version, box 2
	// turned out to be an MS4.
	boxes[ids[0]].Version = "3.0.0"
	boxes[ids[1]].SecurityVersion = 5
	ownerExec(t, `UPDATE boxes SET model = 'MS4' WHERE id = $1`, ids[2])
	for _, id := range ids {
		up, reason, err := boxes[id].Check(ctx)
		if err != nil || up != nil || reason != "none" {
			t.Fatalf("box %s: offered %v (%q, %v)", id, up, reason, err)
		}
	}
	d := rolloutBoxes(t, op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+rid, nil).JSON(t))
	for i, want := range []string{"newer", "security version 2 is below the box's 5", "firmware for MS5, the box is an MS4"} {
		b := d[ids[i]]
		if b["status"] != "skipped" || !strings.Contains(b["reason"].(string), want) {
			t.Errorf("box %d: %v, want skipped for %q", i, b, want)
		}
	}
	// Nor can it download the artifact.
	if code, _, _ := boxes[ids[0]].Client.Request(ctx, "GET", "/box/v1/firmware/"+relID+"/artifact", nil); code != 404 {
		t.Errorf("a skipped box downloaded the artifact: %d", code)
	}

	t.Run("ErrDowngradeNotTargeted", func(t *testing.T) {
		// A box that installed 2.0.0 is not part of a rollout of 1.5.0.
		g := s.signup(t)
		fl := s.fleet(t, g, "MS5", 1)
		r2 := op.expect(t, 201, "POST", "/api/v1/platform/rollouts", map[string]any{"tenant_id": g.ID, "release_id": relID, "waves": []int{100}}).JSON(t)["id"].(string)
		for _, u := range fl {
			if up, err := u.Apply(ctx); err != nil || up == nil {
				t.Fatalf("install 2.0.0: %v %v", up, err)
			}
		}
		s.passObservation(t, r2)
		older := s.publishFirmware(t, "MS5", fwVersion(1), 2, randomBytes(t, 1024))
		r3 := op.expect(t, 201, "POST", "/api/v1/platform/rollouts", map[string]any{"tenant_id": g.ID, "release_id": older, "waves": []int{100}}).JSON(t)
		if r3["state"] != "completed" || len(rolloutBoxes(t, op.expect(t, 200, "GET", "/api/v1/platform/rollouts/"+r3["id"].(string), nil).JSON(t))) != 0 {
			t.Fatalf("a downgrade rollout targeted boxes: %v", r3)
		}
		for _, u := range fl {
			if up, _, _ := u.Check(ctx); up != nil {
				t.Fatalf("offered a downgrade: %v", up)
			}
		}
	})
}

func TestFirmwareArtifactRange(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	ctx := context.Background()
	boxes := s.fleet(t, f, "MS5", 1)
	artifact := randomBytes(t, 1000)
	relID := s.publishFirmware(t, "MS5", fwVersion(1), 1, artifact)
	s.operatorClient().expect(t, 201, "POST", "/api/v1/platform/rollouts", map[string]any{"tenant_id": f.ID, "release_id": relID, "waves": []int{100}})
	var u *box.Updater
	for _, x := range boxes {
		u = x
	}
	sum := sha256.Sum256(artifact)
	etag := `"` + hex.EncodeToString(sum[:]) + `"`
	path := "/box/v1/firmware/" + relID + "/artifact"
	get := func(headers ...string) (*http.Response, []byte) {
		req, _ := http.NewRequestWithContext(ctx, "GET", s.url+path, nil)
		for k, v := range devices.Sign(u.Client.ID.PrivateKey, u.Client.ID.CredentialID, "GET", path, nil, time.Now()) {
			req.Header.Set(k, v)
		}
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var buf bytes.Buffer
		buf.ReadFrom(res.Body)
		return res, buf.Bytes()
	}
	for _, tc := range []struct {
		name, rng, ifRange string
		status             int
		contentRange       string
		body               []byte
	}{
		{"Whole", "", "", 200, "", artifact},
		{"First10", "bytes=0-9", "", 206, "bytes 0-9/1000", artifact[:10]},
		{"Middle", "bytes=500-599", "", 206, "bytes 500-599/1000", artifact[500:600]},
		{"OpenEnded", "bytes=990-", "", 206, "bytes 990-999/1000", artifact[990:]},
		{"Suffix", "bytes=-5", "", 206, "bytes 995-999/1000", artifact[995:]},
		{"SuffixLongerThanArtifact", "bytes=-5000", "", 206, "bytes 0-999/1000", artifact},
		{"LastClamped", "bytes=998-5000", "", 206, "bytes 998-999/1000", artifact[998:]},
		{"LastByte", "bytes=999-999", "", 206, "bytes 999-999/1000", artifact[999:]},
		{"ErrStartAtEnd", "bytes=1000-", "", 416, "bytes */1000", nil},
		{"ErrStartPastEnd", "bytes=5000-6000", "", 416, "bytes */1000", nil},
		{"ErrEmptySuffix", "bytes=-0", "", 416, "bytes */1000", nil},
		{"ReversedIgnored", "bytes=9-5", "", 200, "", artifact},
		{"GarbageIgnored", "items=0-5", "", 200, "", artifact},
		{"MultipleIgnored", "bytes=0-1,5-6", "", 200, "", artifact},
		{"IfRangeMatches", "bytes=10-19", etag, 206, "bytes 10-19/1000", artifact[10:20]},
		{"IfRangeStale", "bytes=10-19", `"stale"`, 200, "", artifact},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h []string
			if tc.rng != "" {
				h = append(h, "Range", tc.rng)
			}
			if tc.ifRange != "" {
				h = append(h, "If-Range", tc.ifRange)
			}
			res, body := get(h...)
			if res.StatusCode != tc.status || res.Header.Get("Content-Range") != tc.contentRange {
				t.Fatalf("status %d Content-Range %q, want %d %q", res.StatusCode, res.Header.Get("Content-Range"), tc.status, tc.contentRange)
			}
			if tc.body != nil && !bytes.Equal(body, tc.body) {
				t.Fatalf("body of %d bytes differs from the expected %d", len(body), len(tc.body))
			}
			if res.StatusCode != 416 && (res.Header.Get("Accept-Ranges") != "bytes" || res.Header.Get("ETag") != etag) {
				t.Errorf("headers: %v", res.Header)
			}
		})
	}
	t.Run("ErrOtherBox", func(t *testing.T) {
		other := s.fleet(t, f, "MS4", 1)
		for _, o := range other {
			if code, _, _ := o.Client.Request(ctx, "GET", path, nil); code != 404 {
				t.Fatalf("a box without the assignment got %d", code)
			}
		}
		if code := s.client().do(t, "GET", path, nil).Status; code != 401 {
			t.Fatalf("unsigned: %d", code)
		}
	})
}

func TestFirmwareUploadRules(t *testing.T) {
	s := startServer(t)
	op := s.operatorClient()
	artifact := randomBytes(t, 100)
	v101 := fwVersion(1)
	rel := op.expect(t, 201, "POST", "/api/v1/platform/firmware/releases", map[string]any{"model": "MS4", "version": v101, "security_version": 0, "size": 100}).JSON(t)
	id := rel["id"].(string)
	up := "/api/v1/platform/firmware/releases/" + id + "/artifact"
	problemOf(t, op.do(t, "POST", "/api/v1/platform/firmware/releases", map[string]any{"model": "MS4", "version": v101, "security_version": 0, "size": 100}), 409)
	problemOf(t, op.do(t, "POST", "/api/v1/platform/firmware/releases", map[string]any{"model": "MS9", "version": "1.0", "size": 0}), 422)
	problemOf(t, op.do(t, "POST", "/api/v1/platform/firmware/releases/"+id+"/publish", nil), 409)
	problemOf(t, op.do(t, "PUT", up, string(artifact[:10]), "Content-Type", "application/octet-stream", "Content-Range", "bytes 10-19/100"), 409)
	problemOf(t, op.do(t, "PUT", up, string(artifact[:10]), "Content-Type", "application/octet-stream", "Content-Range", "bytes 0-9/99"), 422)
	problemOf(t, op.do(t, "PUT", up, string(artifact[:10]), "Content-Type", "application/json"), 422)
	op.expect(t, 200, "PUT", up, string(artifact[:40]), "Content-Type", "application/octet-stream", "Content-Range", "bytes 0-39/100")
	// A repeated chunk (a lost answer) is refused with where to resume.
	p := problemOf(t, op.do(t, "PUT", up, string(artifact[:40]), "Content-Type", "application/octet-stream", "Content-Range", "bytes 0-39/100"), 409)
	if !strings.Contains(p["detail"].(string), "byte 40") {
		t.Errorf("conflict does not say where to resume: %v", p)
	}
	problemOf(t, op.do(t, "PUT", up, string(artifact[40:]), "Content-Type", "application/octet-stream", "Content-Range", "bytes 40-100/101"), 422)
	op.expect(t, 200, "PUT", up, string(artifact[40:]), "Content-Type", "application/octet-stream", "Content-Range", "bytes 40-99/100")
	pub := op.expect(t, 200, "POST", "/api/v1/platform/firmware/releases/"+id+"/publish", nil).JSON(t)
	sum := sha256.Sum256(artifact)
	if pub["sha256"] != hex.EncodeToString(sum[:]) || pub["key_id"] == "" {
		t.Fatalf("published: %v", pub)
	}
	problemOf(t, op.do(t, "PUT", up, string(artifact[:1]), "Content-Type", "application/octet-stream", "Content-Range", "bytes 0-0/100"), 409)
}

func TestFirmwareRolesAndIsolation(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	g := s.signup(t)
	ctx := context.Background()
	fb := s.fleet(t, f, "MS5", 1)
	s.fleet(t, g, "MS5", 1)
	relID := s.publishFirmware(t, "MS5", fwVersion(1), 1, randomBytes(t, 512))
	op := s.operatorClient()

	t.Run("ErrPlatformNeedsOperator", func(t *testing.T) {
		for _, c := range []*client{s.client(), f.Owner} {
			problemOf(t, c.do(t, "GET", "/api/v1/platform/rollouts", nil), 401)
			problemOf(t, c.do(t, "POST", "/api/v1/platform/firmware/releases", map[string]any{"model": "MS5", "version": "9.9.9", "security_version": 1, "size": 1}), 401)
			problemOf(t, c.do(t, "POST", "/api/v1/platform/rollouts", map[string]any{"tenant_id": f.ID, "release_id": relID}), 401)
		}
	})

	// f asks for its own approval first.
	staffEmail := "staff-" + uuid.NewString()[:8] + "@example.com"
	f.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Sam", "email": staffEmail, "role": "staff"})
	ownerExec(t, `UPDATE users SET password_hash = (SELECT password_hash FROM users WHERE id = $1) WHERE email = $2`, f.OwnerID, staffEmail)
	staff := s.login(t, staffEmail, f.Password)
	problemOf(t, staff.do(t, "PUT", "/api/v1/firmware/settings", map[string]any{"require_approval": true}), 403)
	problemOf(t, staff.do(t, "GET", "/api/v1/firmware/rollouts", nil), 403)
	f.Owner.expect(t, 200, "PUT", "/api/v1/firmware/settings", map[string]any{"require_approval": true})
	if st := f.Owner.expect(t, 200, "GET", "/api/v1/firmware/settings", nil).JSON(t); st["require_approval"] != true {
		t.Fatalf("settings: %v", st)
	}
	fr := op.expect(t, 201, "POST", "/api/v1/platform/rollouts", map[string]any{"tenant_id": f.ID, "release_id": relID}).JSON(t)
	gr := op.expect(t, 201, "POST", "/api/v1/platform/rollouts", map[string]any{"tenant_id": g.ID, "release_id": relID}).JSON(t)
	if fr["state"] != "awaiting_approval" || gr["state"] != "active" {
		t.Fatalf("states: f %v, g %v", fr["state"], gr["state"])
	}
	frID, grID := fr["id"].(string), gr["id"].(string)
	for _, u := range fb {
		if up, _, _ := u.Check(ctx); up != nil {
			t.Fatalf("offered before the tenant approved: %v", up)
		}
	}

	t.Run("ErrOtherTenant", func(t *testing.T) {
		for _, path := range []string{"/api/v1/firmware/rollouts/" + frID, "/api/v1/firmware/rollouts/" + frID + "/record"} {
			problemOf(t, g.Owner.do(t, "GET", path, nil), 404)
		}
		problemOf(t, g.Owner.do(t, "POST", "/api/v1/firmware/rollouts/"+frID+"/approve", nil), 404)
		list := g.Owner.expect(t, 200, "GET", "/api/v1/firmware/rollouts", nil).JSON(t)["items"].([]any)
		if len(list) != 1 || list[0].(map[string]any)["id"] != grID {
			t.Fatalf("g sees %v", list)
		}
		d := g.Owner.expect(t, 200, "GET", "/api/v1/firmware/rollouts/"+grID, nil).JSON(t)
		for _, b := range d["boxes"].([]any) {
			if _, ok := fb[b.(map[string]any)["box_id"].(string)]; ok {
				t.Fatalf("g's rollout lists f's box")
			}
		}
		// A tenant id the operator gets wrong finds nothing.
		problemOf(t, op.do(t, "POST", "/api/v1/platform/rollouts", map[string]any{"tenant_id": uuid.NewString(), "release_id": relID}), 404)
	})

	t.Run("OKApproval", func(t *testing.T) {
		problemOf(t, staff.do(t, "POST", "/api/v1/firmware/rollouts/"+frID+"/approve", nil), 403)
		r := f.Owner.expect(t, 200, "POST", "/api/v1/firmware/rollouts/"+frID+"/approve", nil).JSON(t)
		if r["state"] != "active" || r["approved_by"] != "user:"+f.OwnerID.String() || r["current_wave"] != float64(1) {
			t.Fatalf("approved: %v", r)
		}
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/firmware/rollouts/"+frID+"/approve", nil), 409)
		for _, u := range fb {
			if up, err := u.Apply(ctx); err != nil || up == nil {
				t.Fatalf("after approval: %v %v", up, err)
			}
		}
	})

	t.Run("OKOperatorSeesAcrossTenants", func(t *testing.T) {
		items := op.expect(t, 200, "GET", "/api/v1/platform/rollouts?state=active", nil).JSON(t)["items"].([]any)
		seen := map[string]bool{}
		for _, it := range items {
			seen[it.(map[string]any)["id"].(string)] = true
		}
		if !seen[frID] || !seen[grID] {
			t.Fatalf("operator overview misses a tenant's rollout: %v", items)
		}
		problemOf(t, op.do(t, "GET", "/api/v1/platform/rollouts?state=nope", nil), 422)
		problemOf(t, op.do(t, "GET", "/api/v1/platform/rollouts/"+uuid.NewString(), nil), 404)
	})
}

// TestFirmwareOpenAPI checks the firmware calls' requests and answers
// against the document.
func TestFirmwareOpenAPI(t *testing.T) {
	doc := loadOpenAPI(t, mergedOpenAPI(t))
	s := startServer(t)
	sc := &specCheck{t: t, srv: s, url: s.url, doc: doc, ops: documentedOps(doc)}
	f := s.signup(t)
	s.fleet(t, f, "MS3", 2)
	opc := caller{token: s.app.cfg.OperatorToken}
	owner := caller{token: f.Owner.token}
	var anon caller
	artifact := randomBytes(t, 64)
	v4 := fwVersion(4)

	rel := sc.call(opc, 201, true, "POST", "/api/v1/platform/firmware/releases", map[string]any{"model": "MS3", "version": v4, "security_version": 3, "notes": "spec", "size": 64}).JSON(t)
	id := rel["id"].(string)
	sc.call(opc, 409, true, "POST", "/api/v1/platform/firmware/releases", map[string]any{"model": "MS3", "version": v4, "security_version": 3, "size": 64})
	sc.call(opc, 422, true, "POST", "/api/v1/platform/firmware/releases", map[string]any{"model": "MS3", "version": "4", "security_version": 3, "size": 64})
	sc.call(opc, 400, false, "POST", "/api/v1/platform/firmware/releases", map[string]any{"model": "MS3", "colour": "red"})
	sc.call(anon, 401, true, "GET", "/api/v1/platform/firmware/releases", nil)
	sc.call(opc, 409, true, "POST", "/api/v1/platform/firmware/releases/"+id+"/publish", nil)
	sc.call(opc, 200, false, "PUT", "/api/v1/platform/firmware/releases/"+id+"/artifact", string(artifact), "Content-Type", "application/octet-stream")
	sc.call(opc, 409, false, "PUT", "/api/v1/platform/firmware/releases/"+id+"/artifact", string(artifact[:1]), "Content-Type", "application/octet-stream", "Content-Range", "bytes 0-0/64")
	sc.call(opc, 200, true, "POST", "/api/v1/platform/firmware/releases/"+id+"/publish", nil)
	sc.call(opc, 200, true, "GET", "/api/v1/platform/firmware/releases/"+id, nil)
	sc.call(opc, 404, true, "GET", "/api/v1/platform/firmware/releases/"+uuid.NewString(), nil)
	sc.call(opc, 200, true, "GET", "/api/v1/platform/firmware/releases?model=MS3&limit=5", nil)
	sc.call(opc, 422, false, "GET", "/api/v1/platform/firmware/releases?model=MS9", nil)

	sc.call(owner, 200, true, "GET", "/api/v1/firmware/settings", nil)
	sc.call(owner, 200, true, "PUT", "/api/v1/firmware/settings", map[string]any{"require_approval": true})
	sc.call(owner, 422, false, "PUT", "/api/v1/firmware/settings", map[string]any{})
	ro := sc.call(opc, 201, true, "POST", "/api/v1/platform/rollouts", map[string]any{"tenant_id": f.ID, "release_id": id, "waves": []int{50, 100},
		"failure_threshold": 0.2, "observation_window": "10m", "maintenance_window": map[string]any{"start": "22:00", "end": "04:00"}}).JSON(t)
	rid := ro["id"].(string)
	sc.call(opc, 409, true, "POST", "/api/v1/platform/rollouts", map[string]any{"tenant_id": f.ID, "release_id": id})
	sc.call(opc, 422, true, "POST", "/api/v1/platform/rollouts", map[string]any{"tenant_id": f.ID, "release_id": id, "waves": []int{50, 20}})
	sc.call(opc, 200, true, "GET", "/api/v1/platform/rollouts", nil)
	sc.call(opc, 200, true, "GET", "/api/v1/platform/rollouts/"+rid, nil)
	sc.call(opc, 200, true, "GET", "/api/v1/platform/rollouts/"+rid+"/record", nil)
	sc.call(opc, 409, true, "POST", "/api/v1/platform/rollouts/"+rid+"/pause", nil)
	sc.call(owner, 200, true, "GET", "/api/v1/firmware/rollouts", nil)
	sc.call(owner, 200, true, "GET", "/api/v1/firmware/rollouts/"+rid, nil)
	sc.call(owner, 200, true, "GET", "/api/v1/firmware/rollouts/"+rid+"/record?format=csv", nil)
	sc.call(owner, 404, true, "GET", "/api/v1/firmware/rollouts/"+uuid.NewString(), nil)
	sc.call(owner, 200, true, "POST", "/api/v1/firmware/rollouts/"+rid+"/approve", nil)
	sc.call(owner, 409, true, "POST", "/api/v1/firmware/rollouts/"+rid+"/approve", nil)
	sc.call(opc, 200, true, "POST", "/api/v1/platform/rollouts/"+rid+"/pause", map[string]any{"reason": "holiday freeze"})
	sc.call(opc, 200, true, "POST", "/api/v1/platform/rollouts/"+rid+"/resume", nil)
	sc.call(opc, 200, true, "POST", "/api/v1/platform/rollouts/"+rid+"/abort", nil)
	sc.call(opc, 409, true, "POST", "/api/v1/platform/rollouts/"+rid+"/abort", nil)
	sc.call(anon, 401, true, "GET", "/api/v1/firmware/rollouts", nil)
}
