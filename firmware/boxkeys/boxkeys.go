// Package boxkeys derives a box's working keys from its secret K, one per
// purpose (OFFLINE.md, "Box secrets"), and computes the rotating screen
// code. The server and the reference box both use it, so they agree by
// construction.
package boxkeys

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Purposes of the derived keys.
const (
	Verifier = "verifier" // bundle verifiers of codes, phone numbers, PINs
	Derived  = "derived"  // offline-derived booking codes
	Backup   = "backup"   // offline backup codes
	Screen   = "screen"   // the rotating code on the box's screen
)

// Derive returns K's key for purpose: HKDF-SHA256(K, info "keyrelay
// <purpose> v1"). A key of one purpose says nothing about another.
func Derive(k []byte, purpose string) ([]byte, error) {
	if len(k) != 32 {
		return nil, fmt.Errorf("boxkeys: the box secret must be 32 bytes, got %d", len(k))
	}
	return hkdf.Key(sha256.New, k, nil, "keyrelay "+purpose+" v1", 32)
}

// ScreenStep is how long a screen code is shown.
const ScreenStep = 30 * time.Second

// ScreenDigits is the screen code's length.
const ScreenDigits = 6

// ScreenCode is the code the box shows at time at: like TOTP (RFC 6238)
// with HMAC-SHA-256 over the box id and the 30-second step, so the server
// checks it from the box's secret and the time, without the box sending it.
// It proves the visitor stands at the box: a forwarded booking link alone
// cannot open a bin.
func ScreenCode(k []byte, boxID uuid.UUID, at time.Time) (string, error) {
	key, err := Derive(k, Screen)
	if err != nil {
		return "", err
	}
	return screenCodeAt(key, boxID, at.Unix()/int64(ScreenStep.Seconds())), nil
}

func screenCodeAt(key []byte, boxID uuid.UUID, step int64) string {
	m := hmac.New(sha256.New, key)
	m.Write(boxID[:])
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(step))
	m.Write(b[:])
	sum := m.Sum(nil)
	// RFC 4226 dynamic truncation.
	off := sum[len(sum)-1] & 0x0f
	v := binary.BigEndian.Uint32(sum[off:off+4]) & 0x7fffffff
	return fmt.Sprintf("%06d", v%1_000_000)
}

// CheckScreenCode accepts the code of the current step and of the one
// before it (a visitor types what the screen showed up to 30 s earlier),
// and of the next one: a box keeps to the server's time (the reference
// box learns it from every answer's Date header, to the second), and a box
// a little ahead shows the next step's code a little early. Three codes in
// a million, under the per-booking and per-box limits.
func CheckScreenCode(k []byte, boxID uuid.UUID, code string, now time.Time) (bool, error) {
	key, err := Derive(k, Screen)
	if err != nil {
		return false, err
	}
	step := now.Unix() / int64(ScreenStep.Seconds())
	ok := false
	for _, s := range []int64{step, step - 1, step + 1} {
		if subtle.ConstantTimeCompare([]byte(screenCodeAt(key, boxID, s)), []byte(code)) == 1 {
			ok = true
		}
	}
	return ok, nil
}
