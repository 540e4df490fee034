package box

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/boxkeys"
	"github.com/keyrelay/keyrelay/firmware/bundles"
	"github.com/keyrelay/keyrelay/firmware/devices"
	"github.com/keyrelay/keyrelay/firmware/signing"
)

// Files of the bundle in the box's state directory.
const (
	bundleStateFile = "bundle-state.json" // what was accepted: persisted before use
	bundleFile      = "bundle.bin"        // the last accepted bundle, as downloaded
)

// BundleMaxSize is the most payload bytes the box accepts.
const BundleMaxSize = 32 << 20

// BundleState is what the box persists about bundles.
type BundleState struct {
	Signing signing.State `json:"signing"`
	ETag    string        `json:"etag"`
	// LatestServerTime is the newest server time the box has seen (R8):
	// it refuses time-bounded codes while its clock reads earlier.
	LatestServerTime time.Time `json:"latest_server_time"`
}

// Bundles keeps the box's offline bundle: fetches, verifies, persists and
// answers offline pickups from it. It is safe for concurrent use.
type Bundles struct {
	Client *Client
	Dir    string // the box's state directory

	mu    sync.Mutex
	state BundleState
	index *bundles.Index
	ver   *bundles.Verifiers
}

// OpenBundles loads what an earlier run accepted. A box with no bundle yet
// starts from the root it pinned at provisioning.
func OpenBundles(c *Client, dir string) (*Bundles, error) {
	b := &Bundles{Client: c, Dir: dir}
	b.state.Signing.Root = c.ID.RootPublicKey
	kver, err := boxkeys.Derive(c.ID.Secret, boxkeys.Verifier)
	if err != nil {
		return nil, err
	}
	b.ver = bundles.NewVerifiers(kver)
	raw, err := os.ReadFile(filepath.Join(dir, bundleStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return nil, fmt.Errorf("box: bundle state: %w", err)
	}
	if err := json.Unmarshal(raw, &b.state); err != nil {
		return nil, fmt.Errorf("box: bundle state: %w", err)
	}
	// The stored bundle was verified when it arrived; its payload is read
	// again without the version check (its version is the one persisted).
	packed, err := os.ReadFile(filepath.Join(dir, bundleFile))
	if err == nil {
		if s, payload, err := signing.Unpack(packed, BundleMaxSize); err == nil {
			var m signing.Manifest
			if json.Unmarshal(s.Manifest, &m) == nil && m.Version == b.state.Signing.Version && m.CheckPayload(payload) == nil {
				if p, err := bundles.Decode(payload, b.boxID()); err == nil {
					b.index = bundles.NewIndex(p)
				}
			}
		}
	}
	return b, nil
}

func (b *Bundles) boxID() uuid.UUID {
	id, _ := uuid.Parse(b.Client.ID.BoxID)
	return id
}

// State returns what the box has persisted.
func (b *Bundles) State() BundleState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

// Payload returns the bundle in use, or nil.
func (b *Bundles) Payload() *bundles.Payload {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.index == nil {
		return nil
	}
	return b.index.Payload()
}

// Fetch asks for the current bundle (If-None-Match the one in use) and,
// when a new one comes, verifies it completely, persists the new state and
// the bundle, and only then uses it. It reports whether a new bundle was
// taken.
func (b *Bundles) Fetch(ctx context.Context) (bool, error) {
	b.mu.Lock()
	etag := b.state.ETag
	b.mu.Unlock()
	status, raw, err := b.get(ctx, "/box/v1/bundle", etag)
	if err != nil {
		return false, err
	}
	switch status {
	case http.StatusNotModified:
		return false, nil
	case http.StatusOK:
	default:
		return false, &StatusError{Status: status, Body: raw.bytes}
	}
	return b.Accept(raw.bytes, raw.etag)
}

// Accept verifies a downloaded bundle and takes it: the checks of
// signing.Accept, then the payload's own (format, box), with the state
// written to disk before the bundle is used.
func (b *Bundles) Accept(packed []byte, etag string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.Client.now()
	want := signing.Expect{Type: signing.TypeBundle, BoxID: b.boxID(), MaxSize: BundleMaxSize}
	var next BundleState
	_, payload, err := signing.Accept(packed, b.state.Signing, want, now, func(st signing.State) error {
		next = b.state
		next.Signing, next.ETag = st, etag
		return writeAtomic(b.Dir, bundleStateFile, mustJSON(next))
	})
	if err != nil {
		return false, err
	}
	// From here the version is spent: an error below leaves the box on
	// its older bundle, and the next fetch brings a newer one.
	p, err := bundles.Decode(payload, b.boxID())
	if err != nil {
		b.state = next
		return false, err
	}
	if p.BuiltAt.After(next.LatestServerTime) {
		next.LatestServerTime = p.BuiltAt
		if err := writeAtomic(b.Dir, bundleStateFile, mustJSON(next)); err != nil {
			b.state = next
			return false, err
		}
	}
	if err := writeAtomic(b.Dir, bundleFile, packed); err != nil {
		return false, err
	}
	b.state, b.index = next, bundles.NewIndex(p)
	return true, nil
}

// SawServerTime moves the latest server time forward (a command poll, a
// heartbeat answer); it never moves back.
func (b *Bundles) SawServerTime(t time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !t.After(b.state.LatestServerTime) {
		return nil
	}
	next := b.state
	next.LatestServerTime = t
	if err := writeAtomic(b.Dir, bundleStateFile, mustJSON(next)); err != nil {
		return err
	}
	b.state = next
	return nil
}

// ErrNoBundle means the box has never accepted a bundle: offline it can
// open nothing but backup codes.
var ErrNoBundle = errors.New("box: no offline bundle")

// OfflinePickup decides a pickup by code or phone number from the bundle
// alone, as the box does while it cannot reach the server. The offline
// sync work extends it with the journal entry and the attempt limits.
func (b *Bundles) OfflinePickup(code, phone string) (bundles.Decision, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.index == nil {
		return bundles.Decision{Reason: bundles.Unrecognised}, ErrNoBundle
	}
	now := b.Client.now()
	switch {
	case code != "" && phone == "":
		return b.index.ByCode(b.ver, code, now, b.state.LatestServerTime), nil
	case phone != "" && code == "":
		return b.index.ByPhone(b.ver, phone, now, b.state.LatestServerTime), nil
	}
	return bundles.Decision{Reason: bundles.Unrecognised}, nil
}

type download struct {
	bytes []byte
	etag  string
}

// get is a signed GET with If-None-Match, reading at most what a bundle
// may be (one byte more, so an oversized one is refused as such).
func (b *Bundles) get(ctx context.Context, path, etag string) (int, download, error) {
	c := b.Client
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+path, nil)
	if err != nil {
		return 0, download{}, err
	}
	for k, v := range devices.Sign(c.ID.PrivateKey, c.ID.CredentialID, http.MethodGet, path, nil, c.now()) {
		req.Header.Set(k, v)
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	res, err := c.HTTP.Do(req)
	if err != nil {
		return 0, download{}, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, signing.MaxDownload(BundleMaxSize)+1))
	if err != nil {
		// A cut connection: what arrived is refused as truncated by Accept
		// if it is handed on; here it is just an error.
		return 0, download{}, fmt.Errorf("box: bundle download: %w", err)
	}
	return res.StatusCode, download{bytes: raw, etag: res.Header.Get("ETag")}, nil
}

func mustJSON(v any) []byte {
	raw, err := json.Marshal(v)
	if err != nil {
		panic(err) // plain structs: cannot fail
	}
	return raw
}

// writeAtomic replaces dir/name with data, synced, so a power cut leaves
// the old or the new file, never half of one.
func writeAtomic(dir, name string, data []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("box: state dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, name+".*")
	if err != nil {
		return fmt.Errorf("box: write %s: %w", name, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("box: write %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("box: write %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("box: write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("box: write %s: %w", name, err)
	}
	return nil
}
