// Package signing is the one scheme for everything the platform ships to
// boxes: offline bundles and firmware manifests.
//
// # The chain of trust
//
//	root key (offline, version N) ──certifies──► signing key per purpose
//	                                             (bundles; firmware), own expiry
//	signing key ──signs──► manifest (exact bytes) ──sha256──► payload
//
// A box pins the root public key at provisioning (firmware/devices returns
// it). The online signing keys live in the server's keyring (Keyring); each
// carries a certificate from the root that names its purpose and expiry, and
// every signed artifact ships with that certificate, so a new signing key
// (keyrelay keys rotate) needs nothing from the boxes. The root itself
// rotates too: root N+1 is announced by a Rotation signed by both root N and
// root N+1, with version exactly N+1; every artifact carries the rotations,
// and a box on an older root walks them one version at a time and pins the
// new root (persisted with the rest of its State). No box is reprovisioned.
//
// # Canonical bytes
//
// What is signed is the exact byte string shipped: Signed.Manifest is the
// manifest's JSON as the signer produced it, carried base64 in the envelope,
// and the box parses it only after the signature checked. Nothing is ever
// re-serialised before verifying, so two JSON encoders that disagree on
// spacing or field order cannot make a valid signature invalid, or the
// reverse. Each signature is over a domain prefix and those bytes, so a
// manifest signature can never pass for a certificate or a rotation.
//
// # Server side (signing)
//
//	kr := signing.NewKeyring(dir, sealer)
//	m := signing.Manifest{Type: signing.TypeFirmware, Model: "MS5", Version: 7,
//		SecurityVersion: 3, ExpiresAt: time.Now().Add(30 * 24 * time.Hour)}
//	m.Describe(artifact)                 // or set Size and SHA256 from a stream
//	s, err := kr.Sign(m)                  // fills KeyID and IssuedAt
//
// For a payload shipped in the same download (bundles), Pack joins the
// envelope and the payload in one byte string and Accept takes it apart.
//
// # Box side (verifying)
//
// Verify runs the checks in this order, each with an error of its own:
//
//  1. size limit                      ErrTooLarge, ErrTruncated, ErrMalformed
//  2. signature by a key the pinned   ErrRootRotation, ErrUncertified,
//     root certifies (certificate     ErrCertExpired, ErrWrongPurpose,
//     unexpired, purpose right)       ErrBadSignature
//  3. box id (bundles) or model       ErrWrongBox, ErrWrongModel
//  4. version greater than the last   ErrRollback
//     seen, security version not
//     below the last seen
//  5. not expired                     ErrExpired
//  6. payload size and sha256         ErrTruncated, ErrPayloadHash
//
// Accept does all six on a packed download and then calls the caller's save
// with the new State (last version, root) before it returns the payload: a
// box that cannot persist the version it is about to use does not use it, so
// a restart can never make it accept an older artifact again.
package signing

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Type is what a manifest describes.
type Type string

const (
	TypeBundle   Type = "bundle"
	TypeFirmware Type = "firmware"
)

// Purpose is what a signing key may sign; a root certificate names one.
type Purpose string

const (
	PurposeBundles  Purpose = "bundles"
	PurposeFirmware Purpose = "firmware"
)

// Purposes lists every purpose, for the keys command.
var Purposes = []Purpose{PurposeBundles, PurposeFirmware}

// PurposeOf is the purpose a key needs to sign a manifest of type t.
func PurposeOf(t Type) (Purpose, bool) {
	switch t {
	case TypeBundle:
		return PurposeBundles, true
	case TypeFirmware:
		return PurposeFirmware, true
	}
	return "", false
}

// Manifest describes one signed artifact. Box id is set for bundles, model
// for firmware.
type Manifest struct {
	Type            Type      `json:"type"`
	TenantID        uuid.UUID `json:"tenant_id,omitzero"`
	BoxID           uuid.UUID `json:"box_id,omitzero"`
	Model           string    `json:"model,omitempty"`
	Version         uint64    `json:"version"`
	SecurityVersion uint64    `json:"security_version"`
	IssuedAt        time.Time `json:"issued_at"`
	ExpiresAt       time.Time `json:"expires_at"`
	Size            int64     `json:"size"`
	SHA256          string    `json:"sha256"` // hex
	KeyID           string    `json:"key_id"`
}

// Describe sets the manifest's size and digest from the payload.
func (m *Manifest) Describe(payload []byte) {
	sum := sha256.Sum256(payload)
	m.Size, m.SHA256 = int64(len(payload)), hex.EncodeToString(sum[:])
}

// CheckPayload is step 6 for a payload held in memory.
func (m Manifest) CheckPayload(payload []byte) error {
	sum := sha256.Sum256(payload)
	return m.CheckDigest(int64(len(payload)), sum[:])
}

// CheckDigest is step 6 for a payload hashed while it streamed (a firmware
// artifact downloaded with Range): its length and its SHA-256.
func (m Manifest) CheckDigest(size int64, sum []byte) error {
	if size < m.Size {
		return fmt.Errorf("%w: %d of %d bytes", ErrTruncated, size, m.Size)
	}
	if size != m.Size || hex.EncodeToString(sum) != m.SHA256 {
		return ErrPayloadHash
	}
	return nil
}

// Certificate is the root's statement that a public key may sign for one
// purpose until it expires. Body is the exact JSON of a CertBody.
type Certificate struct {
	Body      []byte `json:"body"`
	Signature []byte `json:"signature"` // by the root of Body.RootVersion
}

// CertBody is what a certificate says.
type CertBody struct {
	Purpose     Purpose   `json:"purpose"`
	KeyID       string    `json:"key_id"`
	PublicKey   []byte    `json:"public_key"`
	RootVersion int       `json:"root_version"`
	IssuedAt    time.Time `json:"issued_at"`
	ExpiresAt   time.Time `json:"expires_at"`
}

// Rotation announces root Version (N+1), signed by root N and by itself.
type Rotation struct {
	Body         []byte `json:"body"` // exact JSON of a RotationBody
	OldSignature []byte `json:"old_signature"`
	NewSignature []byte `json:"new_signature"`
}

// RotationBody is what a rotation says.
type RotationBody struct {
	Version   int       `json:"version"`
	PublicKey []byte    `json:"public_key"`
	Previous  []byte    `json:"previous"` // root N's public key
	IssuedAt  time.Time `json:"issued_at"`
}

// Signed is a manifest with its signature and the chain that makes it
// verifiable from a pinned root.
type Signed struct {
	Manifest    []byte      `json:"manifest"` // exact bytes signed
	Signature   []byte      `json:"signature"`
	Certificate Certificate `json:"certificate"`
	Rotations   []Rotation  `json:"rotations,omitempty"`
}

// Domain prefixes: one signature can never stand for another kind.
const (
	domainManifest = "keyrelay-manifest-v1\n"
	domainCert     = "keyrelay-cert-v1\n"
	domainRotation = "keyrelay-root-rotation-v1\n"
)

func signed(domain string, body []byte) []byte {
	return append([]byte(domain), body...)
}

// KeyID names a public key: its purpose and the first 8 bytes of its
// SHA-256.
func KeyID(p Purpose, pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return string(p) + "-" + hex.EncodeToString(sum[:8])
}

// Certify makes the root's certificate for a signing key.
func Certify(root ed25519.PrivateKey, rootVersion int, p Purpose, pub ed25519.PublicKey, issued, expires time.Time) (Certificate, error) {
	if rootVersion < 1 {
		return Certificate{}, errors.New("signing: root versions start at 1")
	}
	body, err := json.Marshal(CertBody{Purpose: p, KeyID: KeyID(p, pub), PublicKey: pub, RootVersion: rootVersion,
		IssuedAt: issued.UTC().Truncate(time.Second), ExpiresAt: expires.UTC().Truncate(time.Second)})
	if err != nil {
		return Certificate{}, err
	}
	return Certificate{Body: body, Signature: ed25519.Sign(root, signed(domainCert, body))}, nil
}

// Rotate makes the rotation from root old (version newVersion-1) to root
// next (newVersion).
func Rotate(old, next ed25519.PrivateKey, newVersion int, at time.Time) (Rotation, error) {
	if newVersion < 2 {
		return Rotation{}, errors.New("signing: the first rotation makes root version 2")
	}
	body, err := json.Marshal(RotationBody{Version: newVersion, PublicKey: next.Public().(ed25519.PublicKey),
		Previous: old.Public().(ed25519.PublicKey), IssuedAt: at.UTC().Truncate(time.Second)})
	if err != nil {
		return Rotation{}, err
	}
	msg := signed(domainRotation, body)
	return Rotation{Body: body, OldSignature: ed25519.Sign(old, msg), NewSignature: ed25519.Sign(next, msg)}, nil
}

// SignWith signs m with key under cert; Keyring.Sign is the usual way in.
// m must carry its Size and SHA256 already.
func SignWith(key ed25519.PrivateKey, cert Certificate, rotations []Rotation, m Manifest, now time.Time) (Signed, error) {
	var cb CertBody
	if err := json.Unmarshal(cert.Body, &cb); err != nil {
		return Signed{}, fmt.Errorf("signing: certificate: %w", err)
	}
	if want, ok := PurposeOf(m.Type); !ok || want != cb.Purpose {
		return Signed{}, fmt.Errorf("signing: a %s key cannot sign a %q manifest", cb.Purpose, m.Type)
	}
	if len(m.SHA256) != 64 || m.Size < 0 {
		return Signed{}, errors.New("signing: the manifest has no payload digest (call Describe)")
	}
	if m.IssuedAt.IsZero() {
		m.IssuedAt = now
	}
	m.IssuedAt, m.ExpiresAt = m.IssuedAt.UTC().Truncate(time.Millisecond), m.ExpiresAt.UTC().Truncate(time.Millisecond)
	if !m.ExpiresAt.After(m.IssuedAt) {
		return Signed{}, errors.New("signing: the manifest expires before it is issued")
	}
	m.KeyID = cb.KeyID
	body, err := json.Marshal(m)
	if err != nil {
		return Signed{}, err
	}
	return Signed{Manifest: body, Signature: ed25519.Sign(key, signed(domainManifest, body)), Certificate: cert, Rotations: rotations}, nil
}
