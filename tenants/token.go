package tenants

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/google/uuid"
)

// Bearer secrets (session tokens, API keys, reset and challenge tokens,
// provisioning tokens, booking URLs) carry their tenant's id in clear next
// to random bits: the server learns which tenant to scope the lookup to
// without any cross-tenant query, then finds the token by its SHA-256
// under that tenant's row-level security. A forged tenant id only moves
// the lookup to a tenant where the hash does not exist. Only the hash is
// stored; the token itself is shown once (or sealed, for a booking URL).

// MintToken returns prefix + base64url(tenant id ‖ n random bytes) and its
// hash.
func MintToken(prefix string, tenantID uuid.UUID, n int) (string, []byte, error) {
	buf := make([]byte, 16+n)
	copy(buf, tenantID[:])
	if _, err := rand.Read(buf[16:]); err != nil {
		return "", nil, fmt.Errorf("tenants: draw a token: %w", err)
	}
	tok := prefix + base64.RawURLEncoding.EncodeToString(buf)
	return tok, HashToken(tok), nil
}

// TokenTenant returns the tenant a token of MintToken(prefix, _, n)
// claims; ok is false for anything else.
func TokenTenant(prefix, tok string, n int) (tenantID uuid.UUID, ok bool) {
	rest, found := strings.CutPrefix(tok, prefix)
	if !found {
		return uuid.Nil, false
	}
	buf, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(buf) != 16+n {
		return uuid.Nil, false
	}
	copy(tenantID[:], buf[:16])
	return tenantID, tenantID != uuid.Nil
}

// HashToken is the stored, looked-up form of a token.
func HashToken(tok string) []byte {
	h := sha256.Sum256([]byte(tok))
	return h[:]
}
