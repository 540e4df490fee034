package box

// The box's firmware updates: poll for the one update assigned to it,
// download the artifact with HTTP Range (a cut download resumes where it
// stopped), verify the signed manifest against the pinned root
// (firmware/signing: signature, model, no rollback, not expired, then the
// artifact's size and SHA-256), "install" it — the simulator records the
// new version — and report each step.

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/devices"
	"github.com/keyrelay/keyrelay/firmware/releases"
	"github.com/keyrelay/keyrelay/firmware/signing"
)

// Updater is the box's firmware side.
type Updater struct {
	Client *Client
	// Dir keeps partial downloads and the persisted trust state.
	Dir string
	// Version and SecurityVersion are what the box runs.
	Version         string
	SecurityVersion int
	// Trust is the firmware verification state: the pinned root and the
	// newest manifest accepted. It is persisted before an install.
	Trust signing.State
	// MaxSize bounds an artifact the box accepts.
	MaxSize int64
	// CutAfter, when positive, drops the connection of the next download
	// request after that many bytes (tests: a cut that must resume).
	CutAfter int64
	// unreported is a release installed whose "installed" report has not
	// reached the platform yet: sent before the next check, since a check
	// with the new version would have the platform skip the assignment
	// rather than record it installed.
	unreported *uuid.UUID
}

// installed is what the box runs, persisted so a restart runs it too.
type installed struct {
	Version         string     `json:"version"`
	SecurityVersion int        `json:"security_version"`
	Unreported      *uuid.UUID `json:"unreported_release_id,omitempty"`
}

// NewUpdater returns the firmware side of a provisioned box running
// version (security version sv): the factory image, unless an update
// installed by an earlier run is recorded in dir.
func NewUpdater(c *Client, dir, version string, sv int) (*Updater, error) {
	if raw, err := os.ReadFile(filepath.Join(dir, installedFile)); err == nil {
		var in installed
		if err := json.Unmarshal(raw, &in); err != nil {
			return nil, fmt.Errorf("box: installed firmware: %w", err)
		}
		return newUpdater(c, dir, in.Version, in.SecurityVersion, in.Unreported)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("box: installed firmware: %w", err)
	}
	return newUpdater(c, dir, version, sv, nil)
}

func newUpdater(c *Client, dir, version string, sv int, unreported *uuid.UUID) (*Updater, error) {
	n, ok := releases.ParseVersion(version)
	if !ok {
		return nil, fmt.Errorf("box: firmware version %q is not MAJOR.MINOR.PATCH", version)
	}
	u := &Updater{Client: c, Dir: dir, Version: version, SecurityVersion: sv, MaxSize: 256 << 20, unreported: unreported,
		Trust: signing.State{Root: c.ID.RootPublicKey, Version: n, SecurityVersion: uint64(sv)}}
	if raw, err := os.ReadFile(u.statePath()); err == nil {
		if err := json.Unmarshal(raw, &u.Trust); err != nil {
			return nil, fmt.Errorf("box: firmware state: %w", err)
		}
	}
	return u, os.MkdirAll(dir, 0o700)
}

// installedFile records the firmware the box runs.
const installedFile = "firmware-installed.json"

func (u *Updater) statePath() string { return filepath.Join(u.Dir, "firmware-trust.json") }

func (u *Updater) saveInstalled() error {
	raw, err := json.Marshal(installed{Version: u.Version, SecurityVersion: u.SecurityVersion, Unreported: u.unreported})
	if err != nil {
		return err
	}
	return writeAtomic(u.Dir, installedFile, raw)
}

// ErrCut is a download the simulated network dropped.
var ErrCut = errors.New("box: download cut")

// Check asks for the box's update: nil when there is none (reason says why).
func (u *Updater) Check(ctx context.Context) (*releases.Update, string, error) {
	q := url.Values{"version": {u.Version}, "security_version": {strconv.Itoa(u.SecurityVersion)}}
	var out releases.Check
	if err := u.Client.Call(ctx, http.StatusOK, http.MethodGet, "/box/v1/firmware?"+q.Encode(), nil, &out); err != nil {
		return nil, "", err
	}
	return out.Update, out.Reason, nil
}

// Report tells the platform how the update goes.
func (u *Updater) Report(ctx context.Context, up *releases.Update, status, reason string) error {
	return u.Client.Call(ctx, http.StatusOK, http.MethodPost, "/box/v1/firmware/status",
		releases.Report{ReleaseID: up.ReleaseID, Status: status, Reason: reason}, nil)
}

func (u *Updater) partPath(up *releases.Update) string {
	return filepath.Join(u.Dir, up.ReleaseID.String()+".part")
}

// Download fetches the artifact into Dir, resuming a partial file with a
// Range request (If-Range on the artifact's digest, so a changed artifact
// starts over). It returns the file's path once it holds Size bytes.
func (u *Updater) Download(ctx context.Context, up *releases.Update) (string, error) {
	path := u.partPath(up)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", err
	}
	defer f.Close()
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return "", err
	}
	if have > up.Size {
		if err := f.Truncate(0); err != nil {
			return "", err
		}
		have, _ = f.Seek(0, io.SeekStart)
	}
	if have == up.Size {
		return path, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.Client.BaseURL+up.ArtifactPath, nil)
	if err != nil {
		return "", err
	}
	for k, v := range devices.Sign(u.Client.ID.PrivateKey, u.Client.ID.CredentialID, http.MethodGet, up.ArtifactPath, nil, u.Client.now()) {
		req.Header.Set(k, v)
	}
	if have > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
		req.Header.Set("If-Range", `"`+up.SHA256+`"`)
	}
	res, err := u.Client.HTTP.Do(req)
	if err != nil {
		return "", fmt.Errorf("box: download: %w", err)
	}
	defer res.Body.Close()
	switch res.StatusCode {
	case http.StatusPartialContent:
		if want := fmt.Sprintf("bytes %d-%d/%d", have, up.Size-1, up.Size); res.Header.Get("Content-Range") != want {
			return "", fmt.Errorf("box: download: Content-Range %q, want %q", res.Header.Get("Content-Range"), want)
		}
	case http.StatusOK:
		// The whole artifact: start the file over.
		if err := f.Truncate(0); err != nil {
			return "", err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return "", err
		}
		have = 0
	default:
		raw, _ := io.ReadAll(io.LimitReader(res.Body, 1<<16))
		return "", &StatusError{Status: res.StatusCode, Body: raw}
	}
	var body io.Reader = io.LimitReader(res.Body, up.Size-have)
	cut := u.CutAfter
	if cut > 0 {
		u.CutAfter = 0
		body = io.LimitReader(body, cut)
	}
	n, err := io.Copy(f, body)
	if err != nil {
		return "", fmt.Errorf("box: download: %w", err)
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if have+n < up.Size {
		if cut > 0 {
			return "", ErrCut
		}
		return "", fmt.Errorf("box: download: %w: %d of %d bytes", signing.ErrTruncated, have+n, up.Size)
	}
	return path, nil
}

// Verify checks the update's signed manifest and the downloaded file
// against it, and persists the new trust state before returning: once it
// has returned nil the box never accepts that version, or an older one,
// again.
func (u *Updater) Verify(up *releases.Update, path string, now time.Time) (signing.Manifest, error) {
	raw, err := base64.StdEncoding.DecodeString(up.Manifest)
	if err != nil {
		return signing.Manifest{}, fmt.Errorf("%w: %v", signing.ErrMalformed, err)
	}
	var env signing.Signed
	if err := json.Unmarshal(raw, &env); err != nil {
		return signing.Manifest{}, fmt.Errorf("%w: %v", signing.ErrMalformed, err)
	}
	m, next, err := signing.Verify(env, u.Trust, signing.Expect{Type: signing.TypeFirmware, Model: u.Client.ID.Model, MaxSize: u.MaxSize}, now)
	if err != nil {
		return m, err
	}
	f, err := os.Open(path)
	if err != nil {
		return m, err
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, io.LimitReader(f, u.MaxSize+1))
	if err != nil {
		return m, err
	}
	if err := m.CheckDigest(size, h.Sum(nil)); err != nil {
		return m, err
	}
	state, err := json.Marshal(next)
	if err != nil {
		return m, err
	}
	if err := os.WriteFile(u.statePath()+".tmp", state, 0o600); err != nil {
		return m, err
	}
	if err := os.Rename(u.statePath()+".tmp", u.statePath()); err != nil {
		return m, err
	}
	u.Trust = next
	return m, nil
}

// Apply runs one update cycle: check, download (resuming a partial one),
// verify, install, report. It returns the update it installed, or nil
// when there was none. A refused artifact is reported failed with the
// refusal as the reason; a cut download is reported nowhere and resumes
// at the next Apply.
//
// Installing does not wait for the platform: once the artifact is
// verified (and the trust state persisted, so it cannot be verified
// again) the box installs it and records the new version even when the
// "installing" report is lost; an "installed" report that does not get
// through is kept and sent at the next Apply, before the check.
func (u *Updater) Apply(ctx context.Context) (*releases.Update, error) {
	if u.unreported != nil {
		err := u.Client.Call(ctx, http.StatusOK, http.MethodPost, "/box/v1/firmware/status",
			releases.Report{ReleaseID: *u.unreported, Status: "installed"}, nil)
		// A refusal (the assignment ended otherwise meanwhile) is the
		// platform's last word: sending it again would change nothing.
		var se *StatusError
		if err != nil && !(errors.As(err, &se) && se.Status < 500) {
			return nil, fmt.Errorf("box: report the installed firmware: %w", err)
		}
		u.unreported = nil
		if err := u.saveInstalled(); err != nil {
			return nil, err
		}
	}
	up, _, err := u.Check(ctx)
	if err != nil || up == nil {
		return nil, err
	}
	if up.Status == "assigned" {
		if err := u.Report(ctx, up, "downloading", ""); err != nil {
			return nil, err
		}
	}
	path, err := u.Download(ctx, up)
	if err != nil {
		return nil, err
	}
	m, err := u.Verify(up, path, u.Client.now())
	if err != nil {
		os.Remove(path)
		if rerr := u.Report(ctx, up, "failed", err.Error()); rerr != nil {
			return nil, errors.Join(err, rerr)
		}
		return nil, err
	}
	// A lost "installing" report changes nothing: "installed" follows it.
	_ = u.Report(ctx, up, "installing", "")
	// The simulator's install: the new version is what the box runs now.
	id := up.ReleaseID
	u.Version, u.SecurityVersion, u.unreported = up.Version, int(m.SecurityVersion), &id
	if err := u.saveInstalled(); err != nil {
		return nil, err
	}
	os.Remove(path)
	if err := u.Report(ctx, up, "installed", ""); err != nil {
		return up, fmt.Errorf("box: installed %s, report pending: %w", up.Version, err)
	}
	u.unreported = nil
	return up, u.saveInstalled()
}
