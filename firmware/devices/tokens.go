package devices

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strings"

	"github.com/google/uuid"
)

// A provisioning token carries its tenant's id in clear next to 256 random
// bits, like the account tokens: the server scopes the lookup to that
// tenant without any cross-tenant query. It is typed into a box once, so
// only its SHA-256 is stored.
const tokenPrefix = "krp_"

func mintToken(tenantID uuid.UUID) (string, []byte, error) {
	buf := make([]byte, 16+32)
	copy(buf, tenantID[:])
	if _, err := rand.Read(buf[16:]); err != nil {
		return "", nil, err
	}
	tok := tokenPrefix + base64.RawURLEncoding.EncodeToString(buf)
	return tok, hashToken(tok), nil
}

func parseToken(tok string) (uuid.UUID, bool) {
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	if !ok {
		return uuid.Nil, false
	}
	buf, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(buf) != 48 {
		return uuid.Nil, false
	}
	id, _ := uuid.FromBytes(buf[:16])
	return id, id != uuid.Nil
}

func hashToken(tok string) []byte {
	h := sha256.Sum256([]byte(tok))
	return h[:]
}

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
