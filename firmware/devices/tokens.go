package devices

import (
	"encoding/base64"
	"strings"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
)

// A provisioning token carries its tenant's id in clear next to 256 random
// bits, like the account tokens: the server scopes the lookup to that
// tenant without any cross-tenant query. It is typed into a box once, so
// only its SHA-256 is stored.
const tokenPrefix = "krp_"

func mintToken(tenantID uuid.UUID) (string, []byte, error) {
	return tenants.MintToken(tokenPrefix, tenantID, 32)
}

func parseToken(tok string) (uuid.UUID, bool) { return tenants.TokenTenant(tokenPrefix, tok, 32) }

func hashToken(tok string) []byte { return tenants.HashToken(tok) }

// A credential id names the tenant and the credential; it is not a secret
// (the signature is the proof), only the way to the right tenant's rows.
const credentialPrefix = "krb_"

// CredentialID encodes a credential's id with its tenant's.
func CredentialID(tenantID, credID uuid.UUID) string {
	buf := make([]byte, 32)
	copy(buf, tenantID[:])
	copy(buf[16:], credID[:])
	return credentialPrefix + base64.RawURLEncoding.EncodeToString(buf)
}

// ParseCredentialID splits a credential id; ok is false for anything else.
func ParseCredentialID(s string) (tenantID, credID uuid.UUID, ok bool) {
	rest, found := strings.CutPrefix(s, credentialPrefix)
	if !found {
		return uuid.Nil, uuid.Nil, false
	}
	buf, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(buf) != 32 {
		return uuid.Nil, uuid.Nil, false
	}
	tenantID, _ = uuid.FromBytes(buf[:16])
	credID, _ = uuid.FromBytes(buf[16:])
	return tenantID, credID, tenantID != uuid.Nil && credID != uuid.Nil
}
