package signing

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// The box's refusals, one per check (see the package doc for the order).
var (
	ErrTooLarge     = errors.New("signing: download larger than the size limit")
	ErrTruncated    = errors.New("signing: download truncated")
	ErrMalformed    = errors.New("signing: not a signed artifact")
	ErrRootRotation = errors.New("signing: root rotation not signed by both the pinned root and its successor")
	ErrUncertified  = errors.New("signing: signing key not certified by the pinned root")
	ErrCertExpired  = errors.New("signing: signing key certificate expired")
	ErrWrongPurpose = errors.New("signing: signing key certified for another purpose")
	ErrBadSignature = errors.New("signing: signature does not verify")
	ErrWrongBox     = errors.New("signing: artifact for another box")
	ErrWrongModel   = errors.New("signing: firmware for another model")
	ErrRollback     = errors.New("signing: version not newer than the last accepted")
	ErrExpired      = errors.New("signing: artifact expired")
	ErrPayloadHash  = errors.New("signing: payload does not match the manifest's size and sha256")
)

// State is what a box persists per artifact type: the root it trusts and
// the newest version it accepted. A freshly provisioned box has only Root
// (RootVersion 0 means "the version of Root, to be found").
type State struct {
	Root            ed25519.PublicKey `json:"root"`
	RootVersion     int               `json:"root_version"`
	Version         uint64            `json:"version"`
	SecurityVersion uint64            `json:"security_version"`
}

// Expect is what the box requires of an artifact.
type Expect struct {
	Type    Type
	BoxID   uuid.UUID // bundles
	Model   string    // firmware
	MaxSize int64     // payload bytes
}

// Verify runs checks 1 to 5 on an envelope (step 6 is the payload's:
// Manifest.CheckPayload or CheckDigest) and returns the manifest with the
// State the box must persist before it uses the artifact.
func Verify(s Signed, st State, want Expect, now time.Time) (Manifest, State, error) {
	// 1. Size: the manifest may not promise more than the limit.
	// (Accept checks the download's own length before parsing anything.)
	var m Manifest
	// 2. Signature by a key the pinned root certifies.
	st, err := advanceRoot(st, s.Rotations)
	if err != nil {
		return m, st, err
	}
	var cb CertBody
	if err := json.Unmarshal(s.Certificate.Body, &cb); err != nil {
		return m, st, fmt.Errorf("%w: certificate: %v", ErrMalformed, err)
	}
	if cb.RootVersion != st.RootVersion || !ed25519.Verify(st.Root, signed(domainCert, s.Certificate.Body), s.Certificate.Signature) {
		return m, st, ErrUncertified
	}
	if !now.Before(cb.ExpiresAt) {
		return m, st, ErrCertExpired
	}
	if p, ok := PurposeOf(want.Type); !ok || cb.Purpose != p {
		return m, st, ErrWrongPurpose
	}
	if len(cb.PublicKey) != ed25519.PublicKeySize || !ed25519.Verify(cb.PublicKey, signed(domainManifest, s.Manifest), s.Signature) {
		return m, st, ErrBadSignature
	}
	// Only now are the manifest's bytes worth parsing.
	if err := json.Unmarshal(s.Manifest, &m); err != nil {
		return m, st, fmt.Errorf("%w: manifest: %v", ErrMalformed, err)
	}
	if m.KeyID != cb.KeyID || m.Type != want.Type {
		return m, st, ErrWrongPurpose
	}
	if want.MaxSize > 0 && m.Size > want.MaxSize {
		return m, st, ErrTooLarge
	}
	// 3. Scope.
	switch want.Type {
	case TypeBundle:
		if m.BoxID != want.BoxID {
			return m, st, ErrWrongBox
		}
	case TypeFirmware:
		if m.Model != want.Model {
			return m, st, ErrWrongModel
		}
	}
	// 4. Newer than anything accepted before.
	if m.Version <= st.Version || m.SecurityVersion < st.SecurityVersion {
		return m, st, fmt.Errorf("%w: version %d (security %d), last accepted %d (security %d)", ErrRollback, m.Version, m.SecurityVersion, st.Version, st.SecurityVersion)
	}
	// 5. Not expired.
	if !now.Before(m.ExpiresAt) {
		return m, st, ErrExpired
	}
	st.Version, st.SecurityVersion = m.Version, m.SecurityVersion
	return m, st, nil
}

// advanceRoot walks the rotations from the pinned root, one version at a
// time; each must be signed by the root before it and by itself.
func advanceRoot(st State, rots []Rotation) (State, error) {
	if len(st.Root) != ed25519.PublicKeySize {
		return st, ErrUncertified
	}
	bodies := make([]RotationBody, len(rots))
	for i, r := range rots {
		if err := json.Unmarshal(r.Body, &bodies[i]); err != nil {
			return st, fmt.Errorf("%w: %v", ErrRootRotation, err)
		}
	}
	if st.RootVersion == 0 {
		// A box pinned at provisioning knows the key, not its number: the
		// newest rotation that introduced it says, else it is the first.
		st.RootVersion = 1
		for _, b := range bodies {
			if bytes.Equal(b.PublicKey, st.Root) && b.Version > st.RootVersion {
				st.RootVersion = b.Version
			}
		}
	}
	for {
		next := -1
		for i, b := range bodies {
			if b.Version == st.RootVersion+1 {
				next = i
			}
		}
		if next < 0 {
			return st, nil
		}
		b, r := bodies[next], rots[next]
		msg := signed(domainRotation, r.Body)
		if !bytes.Equal(b.Previous, st.Root) || len(b.PublicKey) != ed25519.PublicKeySize ||
			!ed25519.Verify(st.Root, msg, r.OldSignature) || !ed25519.Verify(b.PublicKey, msg, r.NewSignature) {
			return st, ErrRootRotation
		}
		st.Root, st.RootVersion = append(ed25519.PublicKey(nil), b.PublicKey...), b.Version
	}
}

// packMagic starts a packed download.
var packMagic = []byte("KRSIG1\n")

// maxEnvelope bounds the envelope part of a packed download (manifest,
// certificate, rotations: a few KiB).
const maxEnvelope = 64 << 10

// Pack joins an envelope and its payload into one download:
// magic, the envelope's JSON length (4 bytes, big-endian), the JSON, the
// payload.
func Pack(s Signed, payload []byte) ([]byte, error) {
	env, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	if len(env) > maxEnvelope {
		return nil, errors.New("signing: envelope too large")
	}
	out := make([]byte, 0, len(packMagic)+4+len(env)+len(payload))
	out = append(out, packMagic...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(env)))
	out = append(out, env...)
	return append(out, payload...), nil
}

// MaxDownload is the most bytes a box should read for a packed artifact of
// at most maxPayload payload bytes: read one more, and Accept says
// ErrTooLarge.
func MaxDownload(maxPayload int64) int64 {
	return maxPayload + int64(len(packMagic)) + 4 + maxEnvelope
}

// Unpack splits a packed download (step 1: size and framing).
func Unpack(raw []byte, maxPayload int64) (Signed, []byte, error) {
	var s Signed
	if int64(len(raw)) > MaxDownload(maxPayload) {
		return s, nil, ErrTooLarge
	}
	if len(raw) < len(packMagic)+4 {
		if bytes.HasPrefix(packMagic, raw) {
			return s, nil, ErrTruncated
		}
		return s, nil, ErrMalformed
	}
	if !bytes.Equal(raw[:len(packMagic)], packMagic) {
		return s, nil, ErrMalformed
	}
	n := int(binary.BigEndian.Uint32(raw[len(packMagic):]))
	rest := raw[len(packMagic)+4:]
	if n > maxEnvelope {
		return s, nil, ErrMalformed
	}
	if len(rest) < n {
		return s, nil, ErrTruncated
	}
	if err := json.Unmarshal(rest[:n], &s); err != nil {
		return s, nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	payload := rest[n:]
	if int64(len(payload)) > maxPayload {
		return s, nil, ErrTooLarge
	}
	return s, payload, nil
}

// Accept verifies a packed download completely (steps 1 to 6), then calls
// save with the State to persist; only when save succeeds does it return
// the manifest and the payload for use.
func Accept(raw []byte, st State, want Expect, now time.Time, save func(State) error) (Manifest, []byte, error) {
	s, payload, err := Unpack(raw, want.MaxSize)
	if err != nil {
		return Manifest{}, nil, err
	}
	m, next, err := Verify(s, st, want, now)
	if err != nil {
		return m, nil, err
	}
	if err := m.CheckPayload(payload); err != nil {
		return m, nil, err
	}
	if err := save(next); err != nil {
		return m, nil, fmt.Errorf("signing: persist state before use: %w", err)
	}
	return m, payload, nil
}
