// Package secretbox protects secrets at rest with the configured key
// (KEYRELAY_SECRET_KEY): AES-256-GCM for what must be read back (outbox
// payloads, provider settings, codes shown to the owner) and HMAC-SHA-256 for
// what is only ever compared (short codes looked up by a keyed hash, so a
// database dump alone reveals none of them).
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// KeySize is the length of the configured key.
const KeySize = 32

// Box seals and opens with keys derived from one master key, one per purpose,
// so that a lookup hash can never be confused with a ciphertext key.
type Box struct {
	aead   cipher.AEAD
	macKey []byte
}

// New derives the box's keys from master.
func New(master []byte) (*Box, error) {
	if len(master) != KeySize {
		return nil, fmt.Errorf("secretbox: key must be %d bytes, got %d", KeySize, len(master))
	}
	encKey, err := hkdf.Key(sha256.New, master, nil, "keyrelay secretbox aes-gcm v1", 32)
	if err != nil {
		return nil, err
	}
	macKey, err := hkdf.Key(sha256.New, master, nil, "keyrelay secretbox hmac v1", 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(encKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Box{aead: aead, macKey: macKey}, nil
}

// Seal encrypts plaintext; context binds the ciphertext to where it is stored
// (a table and row id, say) so it cannot be moved to another row.
func (b *Box) Seal(plaintext, context []byte) ([]byte, error) {
	nonce := make([]byte, b.aead.NonceSize(), b.aead.NonceSize()+len(plaintext)+b.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("secretbox: nonce: %w", err)
	}
	return b.aead.Seal(nonce, nonce, plaintext, context), nil
}

// ErrOpen means the ciphertext was altered, moved, or sealed with another key.
var ErrOpen = errors.New("secretbox: cannot open sealed value")

// Open reverses Seal.
func (b *Box) Open(sealed, context []byte) ([]byte, error) {
	n := b.aead.NonceSize()
	if len(sealed) < n+b.aead.Overhead() {
		return nil, ErrOpen
	}
	out, err := b.aead.Open(nil, sealed[:n], sealed[n:], context)
	if err != nil {
		return nil, ErrOpen
	}
	return out, nil
}

// Hash is the keyed lookup hash of a short secret.
func (b *Box) Hash(parts ...[]byte) []byte {
	m := hmac.New(sha256.New, b.macKey)
	for _, p := range parts {
		// Length-prefix each part so ("ab","c") and ("a","bc") differ.
		m.Write([]byte{byte(len(p) >> 8), byte(len(p))})
		m.Write(p)
	}
	return m.Sum(nil)
}
