package offline

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/google/uuid"
)

// BackupDigits is the length of a backup code.
const BackupDigits = 10

// AllBins is the bin number of the "open all bins" backup code.
const AllBins = 0

// BackupCode is code number counter of a bin (AllBins: the open-all code):
// Trunc10(HMAC(K_bak, box_id ‖ bin ‖ counter)), like HOTP with a counter
// per bin. kbak is boxkeys.Derive(K, boxkeys.Backup).
func BackupCode(kbak []byte, boxID uuid.UUID, bin int, counter uint64) string {
	var msg [16 + 2 + 8]byte
	copy(msg[:16], boxID[:])
	binary.BigEndian.PutUint16(msg[16:18], uint16(bin))
	binary.BigEndian.PutUint64(msg[18:], counter)
	return uniformDigits(kbak, BackupDigits, msg[:])
}

// uniformDigits reduces HMAC(key, msg) to n decimal digits without modulo
// bias: each 64-bit word of the MAC is used only when it falls below the
// largest multiple of 10^n (rejection sampling), so every n-digit string
// is equally likely. A rejection happens about once in 10^11 words for
// n = 10; when all four words of a MAC are rejected, the MAC is extended
// with a block counter.
func uniformDigits(key []byte, n int, msg []byte) string {
	bound := uint64(math.Pow10(n))
	limit := (math.MaxUint64 / bound) * bound
	for block := uint32(0); ; block++ {
		m := hmac.New(sha256.New, key)
		m.Write(msg)
		if block > 0 {
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], block)
			m.Write(b[:])
		}
		sum := m.Sum(nil)
		for i := 0; i+8 <= len(sum); i += 8 {
			if v := binary.BigEndian.Uint64(sum[i:]); v < limit {
				return fmt.Sprintf("%0*d", n, v%bound)
			}
		}
	}
}

// Derived codes (OFFLINE.md, "Derived codes"): 15 digits, a 7-digit
// payload and an 8-digit tag.
const (
	DerivedDigits = 15
	PayloadDigits = 7
	TagDigits     = 8
	// HourModulus is the range of the start-hour field (3 digits).
	HourModulus = 1000
	// Horizon is how far ahead of now a derived code's window may start.
	// The box resolves the start hour to the candidate nearest its clock
	// (±500 hours), so a start within 20 days (480 h) ahead, used before
	// its window ends (at most MaxWindow after the start), is always
	// resolved to the right one.
	Horizon = 20 * 24 * time.Hour
	// MaxWindow is the longest window a derived code grants. OFFLINE.md
	// suggests classes up to months; a 3-digit hour field cannot carry
	// them: a code used more than 500 hours after its start would resolve
	// to the next candidate, 1,000 hours later, and be refused. Longer
	// accesses use their booking code from the bundle.
	MaxWindow = 20 * 24 * time.Hour
	// MaxDerivedBin is the highest bin a 2-digit field names.
	MaxDerivedBin = 99
)

// Grant is what a derived code carries: one bin during one window.
type Grant struct {
	Start time.Time // on the hour, UTC
	Class int       // duration class, see ClassDuration
	Bin   int
}

// End is when the grant's window ends.
func (g Grant) End() time.Time { return g.Start.Add(ClassDuration(g.Class)) }

// ClassDuration is the window of a duration class: 1–24 are that many
// hours, 25–43 are 2 to 20 days. Any other class is invalid (0).
func ClassDuration(c int) time.Duration {
	switch {
	case c >= 1 && c <= 24:
		return time.Duration(c) * time.Hour
	case c >= 25 && c <= 43:
		return time.Duration(c-23) * 24 * time.Hour
	}
	return 0
}

// ClassFor returns the smallest class whose window from start covers
// until, and false when none does (longer than MaxWindow). A code's window
// therefore ends at or after the booking's end, never before it: the
// visitor is not cut short; the code says when it really ends.
func ClassFor(d time.Duration) (int, bool) {
	for c := 1; c <= 43; c++ {
		if ClassDuration(c) >= d {
			return c, true
		}
	}
	return 0, false
}

// Payload is the 7 digits of a grant: start hour mod 1,000, class, bin.
func (g Grant) Payload() string {
	h := g.Start.Unix() / 3600
	return fmt.Sprintf("%03d%02d%02d", ((h%HourModulus)+HourModulus)%HourModulus, g.Class, g.Bin)
}

// Tag is the 8-digit tag of a payload: HMAC(K_der, box_id ‖ payload ‖ fob
// serial of the key in that bin), reduced without modulo bias. kder is
// boxkeys.Derive(K, boxkeys.Derived).
func Tag(kder []byte, boxID uuid.UUID, payload, fobSerial string) string {
	msg := make([]byte, 0, 16+len(payload)+len(fobSerial))
	msg = append(msg, boxID[:]...)
	msg = append(msg, payload...)
	msg = append(msg, fobSerial...)
	return uniformDigits(kder, TagDigits, msg)
}

// DerivedCode is the code of a grant for the key with fobSerial.
func DerivedCode(kder []byte, boxID uuid.UUID, g Grant, fobSerial string) string {
	p := g.Payload()
	return p + Tag(kder, boxID, p, fobSerial)
}

// Refusal reasons of offline codes, as the box shows them.
const (
	Malformed   = "malformed"
	WrongCode   = "wrong_code"
	NotStarted  = "not_started"
	Ended       = "ended"
	ClockBehind = "clock_behind" // R8
	Revoked     = "revoked"
	KeyNotHere  = "key_not_here"
	Locked      = "locked"
	UsedCode    = "used_code"
)

// ParseDerived reads a derived code's payload, resolving its start hour to
// the candidate nearest now (the box's clock). It checks the format only.
func ParseDerived(code string, now time.Time) (g Grant, tag string, ok bool) {
	if len(code) != DerivedDigits || !allDigits(code) {
		return Grant{}, "", false
	}
	hmod, _ := strconv.Atoi(code[0:3])
	class, _ := strconv.Atoi(code[3:5])
	bin, _ := strconv.Atoi(code[5:7])
	if ClassDuration(class) == 0 || bin < 1 {
		return Grant{}, "", false
	}
	nowH := now.Unix() / 3600
	// The latest hour ≤ now with this residue, or the one after it when
	// that is nearer.
	h := nowH - (((nowH-int64(hmod))%HourModulus)+HourModulus)%HourModulus
	if nowH-h > HourModulus/2 {
		h += HourModulus
	}
	return Grant{Start: time.Unix(h*3600, 0).UTC(), Class: class, Bin: bin}, code[PayloadDigits:], true
}

// CheckDerived is the box's check of a derived code typed at its keypad,
// in this order: format; R8 (the box's clock must not read earlier than
// the latest server time it has seen, or it cannot trust the window);
// the tag against the fob serial the box reads in that bin (fobIn returns
// "" for an empty bin); the window. It returns the grant and its tag when
// the code opens, or a refusal reason. Revocation (a tag listed in the
// last bundle) is the caller's check: it holds the list.
func CheckDerived(kder []byte, boxID uuid.UUID, code string, fobIn func(bin int) string, now, latestServer time.Time) (Grant, string, string) {
	g, tag, ok := ParseDerived(code, now)
	if !ok {
		return Grant{}, "", Malformed
	}
	if now.Before(latestServer) {
		return Grant{}, "", ClockBehind
	}
	fob := fobIn(g.Bin)
	if fob == "" {
		return Grant{}, "", KeyNotHere
	}
	want := Tag(kder, boxID, code[:PayloadDigits], fob)
	if subtle.ConstantTimeCompare([]byte(want), []byte(tag)) != 1 {
		return Grant{}, "", WrongCode
	}
	if now.Before(g.Start) {
		return g, tag, NotStarted
	}
	if !now.Before(g.End()) {
		return g, tag, Ended
	}
	return g, tag, ""
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
