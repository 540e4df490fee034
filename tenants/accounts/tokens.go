package accounts

import (
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
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
	return tenants.MintToken(string(kind)+"_", tenantID, tokenSecretLen)
}

// parseToken returns the tenant a token claims; ok is false for anything
// that is not a well-formed token of kind.
func parseToken(kind tokenKind, tok string) (uuid.UUID, bool) {
	return tenants.TokenTenant(string(kind)+"_", tok, tokenSecretLen)
}

func hashToken(tok string) []byte { return tenants.HashToken(tok) }

// TenantOfToken returns the tenant a session token or API key claims, so the
// HTTP layer can open that tenant's transaction before authenticating.
func TenantOfToken(tok string) (uuid.UUID, bool) {
	if id, ok := parseToken(kindSession, tok); ok {
		return id, true
	}
	return parseToken(kindAPIKey, tok)
}
