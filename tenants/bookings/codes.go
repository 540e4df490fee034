package bookings

import (
	"context"
	"crypto/rand"
	"fmt"
	"math/big"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/guard"
)

// Alias codes chosen by a business are as long as drawn booking codes, or
// longer. At a box keypad a guess matches any live code of its length at
// that box; tenants/guard (package doc, "Guessing math") bounds the chance
// of a hit in a week under BoxCooldown at 13,440 × L / 10^d for L live codes
// of d digits, and finds d = guard.BookingCodeDigits (10) the shortest
// length that keeps it under 1 in 10,000 with 50 live codes at a box. A
// linked alias is one of those live codes, so a shorter alias would weaken
// every box it is used at: a single 6-digit alias alone would be guessed
// with 13,440 / 10⁶ ≈ 1.3 % a week. Hence at least BookingCodeDigits, and
// at most 12 digits (a keypad entry people still type without error).
//
// Chosen codes are not uniform: people pick patterns, and a guesser tries
// those first. The bound holds for drawn codes; the few patterns refused
// here (one digit repeated, a run up or down) only take away the obvious.
const (
	minAliasDigits = guard.BookingCodeDigits
	maxAliasDigits = 12
)

// drawAttempts bounds the draws of a random code: with 10^10 codes a
// collision is rare enough that several in a row mean something is wrong.
const drawAttempts = 8

// randomDigits returns n uniformly random decimal digits (crypto/rand).
func randomDigits(n int) (string, error) {
	max := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(n)), nil)
	v, err := rand.Int(rand.Reader, max)
	if err != nil {
		return "", fmt.Errorf("bookings: draw a code: %w", err)
	}
	return fmt.Sprintf("%0*s", n, v.String()), nil
}

// checkChosenCode says what is wrong with a code chosen by the business,
// or "".
func checkChosenCode(code string) string {
	if len(code) < minAliasDigits || len(code) > maxAliasDigits {
		return fmt.Sprintf("must be %d to %d digits", minAliasDigits, maxAliasDigits)
	}
	for _, c := range code {
		if c < '0' || c > '9' {
			return "must hold digits only"
		}
	}
	same, up, down := true, true, true
	for i := 1; i < len(code); i++ {
		d := (int(code[i]) - int(code[i-1]) + 10) % 10
		same = same && d == 0
		up = up && d == 1
		down = down && d == 9
	}
	if same || up || down {
		return "is too easy to guess (one digit repeated, or a run up or down); choose another or let one be drawn"
	}
	return ""
}

// CodeHash is the keyed lookup hash of a booking or alias code of tenantID.
// The box's pickup looks codes up by it (codes.code_hash).
func CodeHash(keys interface{ Hash(...[]byte) []byte }, tenantID uuid.UUID, code string) []byte {
	return keys.Hash([]byte("access-code"), tenantID[:], []byte(code))
}

func codeSealContext(tenantID, codeID uuid.UUID) []byte {
	return []byte("code:" + tenantID.String() + ":" + codeID.String())
}

// codeRow is a row of codes.
type codeRow struct {
	TenantID   uuid.UUID `gorm:"primaryKey"`
	ID         uuid.UUID `gorm:"primaryKey"`
	CodeHash   []byte
	CodeSealed []byte
	CreatedAt  time.Time
	FreedAt    *time.Time
}

func (codeRow) TableName() string { return "codes" }

// errCodeLive is a chosen code that is live already.
var errCodeLive = tenants.Errorf(tenants.EConflict, "this code is in use by a live booking or alias code; choose another")

// drawCode stores a new random code of guard.BookingCodeDigits digits,
// unique among the tenant's live codes.
func (s *Service) drawCode(ctx context.Context) (uuid.UUID, string, error) {
	for range drawAttempts {
		code, err := randomDigits(guard.BookingCodeDigits)
		if err != nil {
			return uuid.Nil, "", err
		}
		id, ok, err := s.storeCode(ctx, code)
		if err != nil {
			return uuid.Nil, "", err
		}
		if ok {
			return id, code, nil
		}
	}
	return uuid.Nil, "", fmt.Errorf("bookings: no free code after %d draws", drawAttempts)
}

// claimCode stores a code chosen by the business; errCodeLive when it is
// live already. A booking's own code whose booking has ended or was revoked
// is not live: it is freed and the code is taken.
func (s *Service) claimCode(ctx context.Context, code string) (uuid.UUID, error) {
	for range 2 {
		id, ok, err := s.storeCode(ctx, code)
		if err != nil || ok {
			return id, err
		}
		freed, err := s.freeIfDead(ctx, CodeHash(s.keys, mustTenant(ctx), code))
		if err != nil {
			return uuid.Nil, err
		}
		if !freed {
			return uuid.Nil, errCodeLive
		}
	}
	return uuid.Nil, errCodeLive
}

// storeCode inserts code unless a live row holds it already (ok false).
// The unique index on live hashes settles races: a concurrent insert of
// the same code waits for the first to commit, then finds it taken.
func (s *Service) storeCode(ctx context.Context, code string) (uuid.UUID, bool, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return uuid.Nil, false, err
	}
	tenantID := mustTenant(ctx)
	id := newID()
	sealed, err := s.keys.Seal([]byte(code), codeSealContext(tenantID, id))
	if err != nil {
		return uuid.Nil, false, wrap("seal code", err)
	}
	res := tx.Exec(`INSERT INTO codes (tenant_id, id, code_hash, code_sealed, created_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (tenant_id, code_hash) WHERE freed_at IS NULL DO NOTHING`,
		tenantID, id, CodeHash(s.keys, tenantID, code), sealed, s.now())
	if res.Error != nil {
		return uuid.Nil, false, wrap("store code", res.Error)
	}
	return id, res.RowsAffected == 1, nil
}

// freeIfDead frees the live code row of hash when what holds it can no
// longer open anything: a booking's own code whose booking ended or was
// revoked. An alias code holds its row until it is retired.
func (s *Service) freeIfDead(ctx context.Context, hash []byte) (bool, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return false, err
	}
	res := tx.Exec(`UPDATE codes c SET freed_at = @now
		WHERE c.code_hash = @hash AND c.freed_at IS NULL
		  AND NOT EXISTS (SELECT 1 FROM alias_codes a WHERE a.tenant_id = c.tenant_id AND a.code_id = c.id)
		  AND NOT EXISTS (SELECT 1 FROM bookings bk WHERE bk.tenant_id = c.tenant_id AND bk.code_id = c.id AND `+liveSQL+`)`,
		map[string]any{"now": s.now(), "hash": hash})
	if res.Error != nil {
		return false, wrap("free code", res.Error)
	}
	return res.RowsAffected > 0, nil
}

// openCode returns the digits of a stored code.
func (s *Service) openCode(ctx context.Context, codeID uuid.UUID) (string, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return "", err
	}
	var c codeRow
	if err := tx.Where("id = ?", codeID).Take(&c).Error; err != nil {
		return "", wrap("load code", err)
	}
	plain, err := s.keys.Open(c.CodeSealed, codeSealContext(c.TenantID, c.ID))
	if err != nil {
		return "", wrap("open code", err)
	}
	return string(plain), nil
}

// OpenSealedCode returns the digits of a codes row from its code_sealed,
// for the offline bundle's verifiers (firmware/bundles), which read many
// codes in one query.
func OpenSealedCode(keys interface {
	Open(sealed, context []byte) ([]byte, error)
}, tenantID, codeID uuid.UUID, sealed []byte) (string, error) {
	plain, err := keys.Open(sealed, codeSealContext(tenantID, codeID))
	if err != nil {
		return "", wrap("open code", err)
	}
	return string(plain), nil
}

// urlTokenLen is the random part of a booking URL token: 128 bits.
const urlTokenLen = 16

// newURLToken mints a booking URL token: the tenant's id in clear (the
// visitor page learns which tenant to scope its lookup to without any
// cross-tenant query, as with session tokens) followed by 128 random bits.
// Only its SHA-256 is looked up; the token is sealed for showing the URL.
func newURLToken(tenantID uuid.UUID) (string, []byte, error) {
	return tenants.MintToken("", tenantID, urlTokenLen)
}

// URLTokenHash is the stored hash of a booking URL token
// (bookings.url_token_hash).
func URLTokenHash(tok string) []byte { return tenants.HashToken(tok) }

// TenantOfURLToken returns the tenant a booking URL token claims, for the
// visitor page to open that tenant's transaction before looking the token
// up by URLTokenHash; ok is false for anything that is not such a token.
func TenantOfURLToken(tok string) (uuid.UUID, bool) { return tenants.TokenTenant("", tok, urlTokenLen) }

func urlSealContext(tenantID, bookingID uuid.UUID) []byte {
	return []byte("booking-url:" + tenantID.String() + ":" + bookingID.String())
}

// bookingURL opens b's URL token and builds its URL.
func (s *Service) bookingURL(b Booking) (string, error) {
	tok, err := s.keys.Open(b.URLTokenSealed, urlSealContext(b.TenantID, b.ID))
	if err != nil {
		return "", wrap("open URL token", err)
	}
	return s.cfg.BaseURL + "/b/" + string(tok), nil
}

// mustTenant is the tenant of ctx's transaction; callers have already
// fetched the transaction, so it is there.
func mustTenant(ctx context.Context) uuid.UUID {
	id, _ := tenants.TenantOf(ctx)
	return id
}
