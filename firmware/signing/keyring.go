package signing

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Sealer keeps the online private keys encrypted at rest
// (tenants/secretbox under KEYRELAY_SECRET_KEY).
type Sealer interface {
	Seal(plaintext, context []byte) ([]byte, error)
	Open(sealed, context []byte) ([]byte, error)
}

// Keyring is the server's directory of online signing keys.
//
// Why files and not the database: the keys belong to the platform, not to
// a tenant, and the application's database role reaches tenant data only
// through row-level security; a global table of keys, even sealed, would be
// one more thing a SQL injection or a database backup could carry away.
// Each private key is sealed under KEYRELAY_SECRET_KEY, bound to its key id,
// so a copy of the directory alone (a backup, a leaked volume) signs
// nothing. Certificates and root rotations are public and stored in clear.
// A fleet mounts the same directory (a Kubernetes secret) on every replica
// and worker; the keyring reads it on each use, so a rotation is live
// without a restart.
//
// Layout:
//
//	<key id>.key                       sealed ed25519 seed, base64
//	<key id>.root<N>.cert.json         the certificate by root N
//	root-<N>.rotation.json             the rotation to root N (N ≥ 2)
type Keyring struct {
	dir  string
	seal Sealer
	now  func() time.Time
}

// NewKeyring returns the keyring kept in dir.
func NewKeyring(dir string, seal Sealer) *Keyring {
	return &Keyring{dir: dir, seal: seal, now: time.Now}
}

// Dir is where the keyring lives.
func (k *Keyring) Dir() string { return k.dir }

// ErrNoKey means the keyring has no live key for a purpose.
var ErrNoKey = errors.New("signing: no live signing key")

// KeyInfo describes one key of the keyring.
type KeyInfo struct {
	KeyID       string
	Purpose     Purpose
	RootVersion int
	IssuedAt    time.Time
	ExpiresAt   time.Time
	Current     bool // the one Sign uses for its purpose
}

func sealContext(keyID string) []byte { return []byte("keyrelay signing key:" + keyID) }

// rotations returns the root rotations and the newest root's version (1
// with none).
func (k *Keyring) rotations() ([]Rotation, int, error) {
	paths, err := filepath.Glob(filepath.Join(k.dir, "root-*.rotation.json"))
	if err != nil {
		return nil, 0, err
	}
	var rots []Rotation
	version := 1
	for _, p := range paths {
		var r Rotation
		var b RotationBody
		if err := readJSON(p, &r); err != nil {
			return nil, 0, err
		}
		if err := json.Unmarshal(r.Body, &b); err != nil {
			return nil, 0, fmt.Errorf("signing: %s: %w", p, err)
		}
		rots = append(rots, r)
		version = max(version, b.Version)
	}
	return rots, version, nil
}

// RootVersion is the version of the platform's current root.
func (k *Keyring) RootVersion() (int, error) {
	_, v, err := k.rotations()
	return v, err
}

type entry struct {
	cert Certificate
	body CertBody
}

// certs returns every certificate, newest root first, then newest issued.
func (k *Keyring) certs() ([]entry, error) {
	paths, err := filepath.Glob(filepath.Join(k.dir, "*.cert.json"))
	if err != nil {
		return nil, err
	}
	var out []entry
	for _, p := range paths {
		var e entry
		if err := readJSON(p, &e.cert); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(e.cert.Body, &e.body); err != nil {
			return nil, fmt.Errorf("signing: %s: %w", p, err)
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].body.RootVersion != out[j].body.RootVersion {
			return out[i].body.RootVersion > out[j].body.RootVersion
		}
		return out[i].body.IssuedAt.After(out[j].body.IssuedAt)
	})
	return out, nil
}

// current picks the key Sign uses: certified by the current root, unexpired,
// the most recently issued, and with its private half present.
func (k *Keyring) current(p Purpose) (entry, error) {
	_, rootV, err := k.rotations()
	if err != nil {
		return entry{}, err
	}
	es, err := k.certs()
	if err != nil {
		return entry{}, err
	}
	now := k.now()
	for _, e := range es {
		if e.body.Purpose != p || e.body.RootVersion != rootV || !now.Before(e.body.ExpiresAt) {
			continue
		}
		if _, err := os.Stat(filepath.Join(k.dir, e.body.KeyID+".key")); err == nil {
			return e, nil
		}
	}
	return entry{}, fmt.Errorf("%w for %s under root %d in %s (run: keyrelay keys create %s)", ErrNoKey, p, rootV, k.dir, p)
}

func (k *Keyring) private(keyID string) (ed25519.PrivateKey, error) {
	raw, err := os.ReadFile(filepath.Join(k.dir, keyID+".key"))
	if err != nil {
		return nil, fmt.Errorf("signing: read key %s: %w", keyID, err)
	}
	sealed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("signing: key %s: %w", keyID, err)
	}
	seed, err := k.seal.Open(sealed, sealContext(keyID))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("signing: key %s cannot be opened with KEYRELAY_SECRET_KEY", keyID)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// Sign signs m with the current key for its type. m must carry its Size
// and SHA256 (Describe); Sign sets KeyID and, when zero, IssuedAt.
func (k *Keyring) Sign(m Manifest) (Signed, error) {
	p, ok := PurposeOf(m.Type)
	if !ok {
		return Signed{}, fmt.Errorf("signing: unknown manifest type %q", m.Type)
	}
	e, err := k.current(p)
	if err != nil {
		return Signed{}, err
	}
	key, err := k.private(e.body.KeyID)
	if err != nil {
		return Signed{}, err
	}
	rots, _, err := k.rotations()
	if err != nil {
		return Signed{}, err
	}
	return SignWith(key, e.cert, rots, m, k.now())
}

// Create makes a new signing key for p, certified by root (version
// rootVersion, which must be the keyring's current root) until expires. It
// becomes the key Sign uses; older keys of p are retired (their private
// halves deleted: artifacts they signed stay valid, since each carries its
// certificate).
func (k *Keyring) Create(p Purpose, root ed25519.PrivateKey, expires time.Time) (KeyInfo, error) {
	if _, ok := map[Purpose]bool{PurposeBundles: true, PurposeFirmware: true}[p]; !ok {
		return KeyInfo{}, fmt.Errorf("signing: unknown purpose %q (want bundles or firmware)", p)
	}
	rootV, err := k.checkRoot(root)
	if err != nil {
		return KeyInfo{}, err
	}
	now := k.now()
	if !expires.After(now) {
		return KeyInfo{}, errors.New("signing: the key would be expired already")
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return KeyInfo{}, err
	}
	cert, err := Certify(root, rootV, p, pub, now, expires)
	if err != nil {
		return KeyInfo{}, err
	}
	id := KeyID(p, pub)
	if err := os.MkdirAll(k.dir, 0o700); err != nil {
		return KeyInfo{}, err
	}
	sealed, err := k.seal.Seal(priv.Seed(), sealContext(id))
	if err != nil {
		return KeyInfo{}, err
	}
	if err := writeFile(filepath.Join(k.dir, id+".key"), []byte(base64.StdEncoding.EncodeToString(sealed)+"\n"), 0o600); err != nil {
		return KeyInfo{}, err
	}
	if err := writeJSON(filepath.Join(k.dir, fmt.Sprintf("%s.root%d.cert.json", id, rootV)), cert); err != nil {
		return KeyInfo{}, err
	}
	infos, err := k.List()
	if err != nil {
		return KeyInfo{}, err
	}
	for _, in := range infos {
		if in.Purpose == p && in.KeyID != id {
			if err := os.Remove(filepath.Join(k.dir, in.KeyID+".key")); err != nil && !errors.Is(err, os.ErrNotExist) {
				return KeyInfo{}, err
			}
		}
	}
	var cb CertBody
	_ = json.Unmarshal(cert.Body, &cb)
	return KeyInfo{KeyID: id, Purpose: p, RootVersion: rootV, IssuedAt: cb.IssuedAt, ExpiresAt: cb.ExpiresAt, Current: true}, nil
}

// checkRoot returns the version of root in this keyring, which must be the
// current one: a key certified by a root the boxes are leaving would stop
// working as they move on.
func (k *Keyring) checkRoot(root ed25519.PrivateKey) (int, error) {
	if len(root) != ed25519.PrivateKeySize {
		return 0, errors.New("signing: no root private key")
	}
	rots, v, err := k.rotations()
	if err != nil {
		return 0, err
	}
	pub := root.Public().(ed25519.PublicKey)
	if v == 1 {
		// The first root: the certificates it made must verify with it.
		es, err := k.certs()
		if err != nil {
			return 0, err
		}
		for _, e := range es {
			if e.body.RootVersion == 1 && !ed25519.Verify(pub, signed(domainCert, e.cert.Body), e.cert.Signature) {
				return 0, errors.New("signing: the root key given did not certify this keyring's keys")
			}
		}
		return 1, nil
	}
	for _, r := range rots {
		var b RotationBody
		if json.Unmarshal(r.Body, &b) == nil && b.Version == v {
			if !pub.Equal(ed25519.PublicKey(b.PublicKey)) {
				return 0, fmt.Errorf("signing: the root key given is not the current root (version %d)", v)
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("signing: rotation to root %d missing", v)
}

// RotateRoot moves the platform to root next (version N+1): it writes the
// rotation signed by both roots and certifies every live signing key again
// under next, so boxes on root N and boxes on root N+1 both verify what the
// keyring signs from now on. It returns the new version.
func (k *Keyring) RotateRoot(old, next ed25519.PrivateKey) (int, error) {
	v, err := k.checkRoot(old)
	if err != nil {
		return 0, err
	}
	if old.Public().(ed25519.PublicKey).Equal(next.Public()) {
		return 0, errors.New("signing: the new root is the old one")
	}
	now := k.now()
	rot, err := Rotate(old, next, v+1, now)
	if err != nil {
		return 0, err
	}
	es, err := k.certs()
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(k.dir, 0o700); err != nil {
		return 0, err
	}
	var certs []struct {
		path string
		c    Certificate
	}
	for _, e := range es {
		if e.body.RootVersion != v || !now.Before(e.body.ExpiresAt) {
			continue
		}
		if _, err := os.Stat(filepath.Join(k.dir, e.body.KeyID+".key")); err != nil {
			continue
		}
		c, err := Certify(next, v+1, e.body.Purpose, e.body.PublicKey, now, e.body.ExpiresAt)
		if err != nil {
			return 0, err
		}
		certs = append(certs, struct {
			path string
			c    Certificate
		}{filepath.Join(k.dir, fmt.Sprintf("%s.root%d.cert.json", e.body.KeyID, v+1)), c})
	}
	// Certificates first: the rotation file is what makes root N+1 current,
	// and a keyring whose current root certifies nothing signs nothing.
	for _, c := range certs {
		if err := writeJSON(c.path, c.c); err != nil {
			return 0, err
		}
	}
	if err := writeJSON(filepath.Join(k.dir, fmt.Sprintf("root-%d.rotation.json", v+1)), rot); err != nil {
		return 0, err
	}
	return v + 1, nil
}

// List describes every certified key, current ones marked.
func (k *Keyring) List() ([]KeyInfo, error) {
	es, err := k.certs()
	if err != nil {
		return nil, err
	}
	cur := map[string]bool{}
	for _, p := range Purposes {
		if e, err := k.current(p); err == nil {
			cur[e.body.KeyID+fmt.Sprint(e.body.RootVersion)] = true
		}
	}
	var out []KeyInfo
	for _, e := range es {
		out = append(out, KeyInfo{KeyID: e.body.KeyID, Purpose: e.body.Purpose, RootVersion: e.body.RootVersion,
			IssuedAt: e.body.IssuedAt, ExpiresAt: e.body.ExpiresAt, Current: cur[e.body.KeyID+fmt.Sprint(e.body.RootVersion)]})
	}
	return out, nil
}

// Ensure creates a key for p when the keyring has no live one: development
// and tests, where the root's private half is at hand.
func (k *Keyring) Ensure(p Purpose, root ed25519.PrivateKey, validity time.Duration) error {
	if _, err := k.current(p); err == nil {
		return nil
	} else if !errors.Is(err, ErrNoKey) {
		return err
	}
	_, err := k.Create(p, root, k.now().Add(validity))
	return err
}

func readJSON(path string, v any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("signing: %w", err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("signing: %s: %w", path, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(path, append(raw, '\n'), 0o644)
}

// writeFile writes through a temporary file and a rename, so a replica
// reading the keyring never sees half a file.
func writeFile(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("signing: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("signing: %w", err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("signing: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("signing: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("signing: %w", err)
	}
	return nil
}
