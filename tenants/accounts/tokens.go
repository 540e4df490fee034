package accounts

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strings"

	"github.com/google/uuid"
)

// Bearer secrets (session tokens, API keys, reset tokens) carry their
// tenant's id in clear next to 256 random bits: the server learns which
// tenant to scope the lookup to without any cross-tenant query, then finds
// the token by its SHA-256 under that tenant's row-level security. A forged
// tenant id only moves the lookup to a tenant where the hash does not exist.
//
// Only the hash is stored; the token itself is shown once.
type tokenKind string

const (
	kindSession tokenKind = "krs"
	kindAPIKey  tokenKind = "kra"
	kindReset   tokenKind = "krr"
	// kindChallenge names a login attempt waiting for its second factor.
	kindChallenge tokenKind = "krc"
)

const tokenSecretLen = 32

func mintToken(kind tokenKind, tenantID uuid.UUID) (string, []byte, error) {
	buf := make([]byte, 16+tokenSecretLen)
	copy(buf, tenantID[:])
	if _, err := rand.Read(buf[16:]); err != nil {
		return "", nil, err
	}
	tok := string(kind) + "_" + base64.RawURLEncoding.EncodeToString(buf)
	return tok, hashToken(tok), nil
}

// parseToken returns the tenant a token claims; ok is false for anything
// that is not a well-formed token of kind.
func parseToken(kind tokenKind, tok string) (tenantID uuid.UUID, ok bool) {
	rest, found := strings.CutPrefix(tok, string(kind)+"_")
	if !found {
		return uuid.Nil, false
	}
	buf, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(buf) != 16+tokenSecretLen {
		return uuid.Nil, false
	}
	copy(tenantID[:], buf[:16])
	return tenantID, tenantID != uuid.Nil
}

func hashToken(tok string) []byte {
	h := sha256.Sum256([]byte(tok))
	return h[:]
}

// TenantOfToken returns the tenant a session token or API key claims, so the
// HTTP layer can open that tenant's transaction before authenticating.
func TenantOfToken(tok string) (uuid.UUID, bool) {
	if id, ok := parseToken(kindSession, tok); ok {
		return id, true
	}
	return parseToken(kindAPIKey, tok)
}
