package bundles

import (
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"hash"
	"time"

	"github.com/google/uuid"
)

// Format is the payload's format version (codec.go); a box refuses one it
// does not know.
const Format = 2

// VerifierSize is the length of a verifier: the first 16 bytes of the
// HMAC-SHA256 (OFFLINE.md).
const VerifierSize = 16

// Payload is what a bundle carries: the signed bytes are its binary
// encoding (codec.go); the JSON tags serve logs, tests and the first
// format. The server builds it (Service.Build), the box reads it after
// signing.Accept; firmware/offline adds RevokedTags.
type Payload struct {
	Format   int       `json:"format"`
	TenantID uuid.UUID `json:"tenant_id"`
	BoxID    uuid.UUID `json:"box_id"`
	Version  uint64    `json:"version"`
	// BuiltAt is the server's time when the bundle was built: a time the
	// box has seen, below which its clock may never go (R8).
	BuiltAt time.Time `json:"built_at"`
	// ValidUntil is the horizon: accesses starting later are not in this
	// bundle, and the bundle expires then.
	ValidUntil time.Time `json:"valid_until"`
	Timezone   string    `json:"timezone"`
	Policy     Policy    `json:"policy"`
	Keys       []Key     `json:"keys"`
	Accesses   []Access  `json:"accesses"`
	// Revoked lists the accesses of the box's keys revoked within the
	// horizon, so a box holding an older bundle in memory, or a journal
	// entry naming one, knows it explicitly (R7).
	Revoked []Revocation `json:"revoked"`
	// RevokedTags are the tags of derived codes (firmware/offline) that no
	// longer open anything.
	RevokedTags []string `json:"revoked_derived_tags"`
}

// Policy is the tenant's key-exchange policy as a box applies it offline.
type Policy struct {
	// VisitorPickups and OwnerPickups2FA are the online rules
	// (PUT /api/v1/security), for the box's messages.
	VisitorPickups  string `json:"visitor_pickups"`
	OwnerPickups2FA bool   `json:"owner_pickups_2fa"`
	// PhonePickups is the offline rule for pickups by phone number:
	// always "deny" (package doc, "Offline second factor").
	PhonePickups string `json:"phone_pickups"`
}

// Key is one key the box may hold: in one of its bins now (Bin), or at
// home in one of its bins (HomeBin), or both.
type Key struct {
	ID        uuid.UUID `json:"id"`
	FobSerial string    `json:"fob_serial"`
	Bin       int       `json:"bin,omitempty"`      // 0: not in this box now
	HomeBin   int       `json:"home_bin,omitempty"` // 0: lives elsewhere
}

// Access is a live or upcoming access on one of the box's keys. Code and
// Phone are verifiers (HMAC under the box's K_ver), never the values.
type Access struct {
	ID       uuid.UUID  `json:"id"`
	KeyID    uuid.UUID  `json:"key_id"`
	StartsAt time.Time  `json:"starts_at"`
	EndsAt   *time.Time `json:"ends_at,omitempty"` // nil: ongoing
	Code     []byte     `json:"code"`
	Phone    []byte     `json:"phone,omitempty"`
	// Changed is when the window was last set: an edited window is
	// explicit, not only different.
	Changed time.Time `json:"changed"`
}

// Revocation is an access revoked within the horizon.
type Revocation struct {
	ID        uuid.UUID `json:"id"`
	KeyID     uuid.UUID `json:"key_id"`
	Code      []byte    `json:"code"`
	RevokedAt time.Time `json:"revoked_at"`
}

// Verifiers computes verifiers under K_ver (boxkeys.Derive(K,
// boxkeys.Verifier)). It reuses one HMAC state: building a bundle of
// 10,000 accesses computes 20,000 of them.
type Verifiers struct {
	m hash.Hash
}

// NewVerifiers returns a verifier computer for kver.
func NewVerifiers(kver []byte) *Verifiers {
	return &Verifiers{m: hmac.New(sha256.New, kver)}
}

func (v *Verifiers) sum(prefix, value string) []byte {
	v.m.Reset()
	v.m.Write([]byte(prefix))
	v.m.Write([]byte(value))
	return v.m.Sum(nil)[:VerifierSize]
}

// Code is HMAC-SHA256(K_ver, "code:" ‖ code)[:16], for booking and alias
// codes.
func (v *Verifiers) Code(code string) []byte { return v.sum("code:", code) }

// Phone is HMAC-SHA256(K_ver, "phone:" ‖ e164)[:16].
func (v *Verifiers) Phone(e164 string) []byte { return v.sum("phone:", e164) }

// Denial reasons of an offline decision; the first ones are those of the
// online pickups (tenants/exchange), so a box shows the same messages.
const (
	UnknownCode  = "unknown_code"
	NotStarted   = "not_started"
	Ended        = "ended"
	Revoked      = "revoked"
	KeyNotHere   = "key_not_here"
	NoAccess     = "no_access"
	OfflineSMS   = "offline_phone_needs_sms"
	BundleStale  = "bundle_expired"
	ClockBehind  = "clock_behind"
	Unrecognised = "unrecognised"
)

// Decision is the box's answer to an offline pickup.
type Decision struct {
	Open     bool      `json:"open"`
	Bin      int       `json:"bin,omitempty"`
	KeyID    uuid.UUID `json:"key_id,omitzero"`
	AccessID uuid.UUID `json:"access_id,omitzero"`
	Reason   string    `json:"reason,omitempty"`
	// Verifier is the hex of the verifier that matched, what the journal
	// records instead of the code or phone number.
	Verifier string `json:"verifier,omitempty"`
}

// Index is a payload ready for lookups at the keypad.
type Index struct {
	p       *Payload
	byCode  map[string][]int // verifier → accesses
	byPhone map[string][]int
	revoked map[string]bool // code verifiers of revoked accesses
	keys    map[uuid.UUID]Key
}

// NewIndex indexes p.
func NewIndex(p *Payload) *Index {
	ix := &Index{p: p, byCode: make(map[string][]int, len(p.Accesses)), byPhone: map[string][]int{},
		revoked: make(map[string]bool, len(p.Revoked)), keys: make(map[uuid.UUID]Key, len(p.Keys))}
	for i, a := range p.Accesses {
		ix.byCode[string(a.Code)] = append(ix.byCode[string(a.Code)], i)
		if len(a.Phone) > 0 {
			ix.byPhone[string(a.Phone)] = append(ix.byPhone[string(a.Phone)], i)
		}
	}
	for _, r := range p.Revoked {
		ix.revoked[string(r.Code)] = true
	}
	for _, k := range p.Keys {
		ix.keys[k.ID] = k
	}
	return ix
}

// Payload returns the indexed payload.
func (ix *Index) Payload() *Payload { return ix.p }

// common refuses everything when the bundle no longer vouches for now:
// expired, or a clock earlier than a server time the box has seen (R8).
func (ix *Index) common(now, latestServer time.Time) string {
	switch {
	case now.Before(latestServer) || now.Before(ix.p.BuiltAt):
		return ClockBehind
	case !now.Before(ix.p.ValidUntil):
		return BundleStale
	}
	return ""
}

// ByCode decides a pickup with a booking or alias code. Among the
// accesses the code's verifier matches, one live now whose key is in a
// bin of this box opens; otherwise the most telling refusal.
func (ix *Index) ByCode(v *Verifiers, code string, now, latestServer time.Time) Decision {
	if r := ix.common(now, latestServer); r != "" {
		return Decision{Reason: r}
	}
	ver := v.Code(code)
	d := ix.pick(ix.byCode[string(ver)], now)
	if d.Reason == NoAccess {
		d.Reason = UnknownCode
		if ix.revoked[string(ver)] {
			d.Reason = Revoked
		}
	}
	if d.Open {
		d.Verifier = fmt.Sprintf("%x", ver)
	}
	return d
}

// ByPhone decides a pickup with a phone number. Offline no SMS or email
// code can be sent, so a phone number never opens a bin alone: the box
// recognises the visitor and says to use the booking code instead.
func (ix *Index) ByPhone(v *Verifiers, e164 string, now, latestServer time.Time) Decision {
	if r := ix.common(now, latestServer); r != "" {
		return Decision{Reason: r}
	}
	if d := ix.pick(ix.byPhone[string(v.Phone(e164))], now); d.Open {
		return Decision{Reason: OfflineSMS}
	}
	return Decision{Reason: NoAccess}
}

// pick chooses among candidate accesses.
func (ix *Index) pick(cands []int, now time.Time) Decision {
	best := Decision{Reason: NoAccess}
	rank := map[string]int{NoAccess: 0, Ended: 1, NotStarted: 2, KeyNotHere: 3}
	for _, i := range cands {
		a := ix.p.Accesses[i]
		var reason string
		k, known := ix.keys[a.KeyID]
		switch {
		case now.Before(a.StartsAt):
			reason = NotStarted
		case a.EndsAt != nil && !now.Before(*a.EndsAt):
			reason = Ended
		case !known || k.Bin == 0:
			reason = KeyNotHere
		default:
			return Decision{Open: true, Bin: k.Bin, KeyID: a.KeyID, AccessID: a.ID}
		}
		if rank[reason] > rank[best.Reason] {
			best = Decision{Reason: reason, KeyID: a.KeyID, AccessID: a.ID}
		}
	}
	return best
}
