package accounts

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// APIKey lets an integration call /api/v1 with a role of its own. Prefix is
// a hint to recognise a key in a list (its last characters), never enough
// to use it.
type APIKey struct {
	TenantID   uuid.UUID    `gorm:"primaryKey" json:"-"`
	ID         uuid.UUID    `gorm:"primaryKey" json:"id"`
	Name       string       `json:"name"`
	Role       tenants.Role `json:"role"`
	TokenHash  []byte       `json:"-"`
	Prefix     string       `json:"prefix"`
	CreatedBy  uuid.UUID    `json:"created_by"`
	CreatedAt  time.Time    `json:"created_at"`
	LastUsedAt *time.Time   `json:"last_used_at"`
	RevokedAt  *time.Time   `json:"revoked_at"`
}

// NewAPIKeyInput names a key and its role.
type NewAPIKeyInput struct {
	Name string       `json:"name"`
	Role tenants.Role `json:"role"`
}

// CreateAPIKey mints a key; the returned secret is shown once and only its
// hash is kept. Only users (not other keys) create keys, with at most their
// own role.
func (s *Service) CreateAPIKey(ctx context.Context, in NewAPIKeyInput) (APIKey, string, error) {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return APIKey{}, "", err
	}
	if p.UserID == uuid.Nil {
		return APIKey{}, "", tenants.Errorf(tenants.EForbidden, "API keys are created by users, not by other API keys")
	}
	var v tenants.Validator
	in.Name = strings.TrimSpace(in.Name)
	v.Check(in.Name != "" && len(in.Name) <= 100, "name", "is required (at most 100 characters)")
	v.Check(in.Role == tenants.RoleAdmin || in.Role == tenants.RoleStaff, "role", "must be admin or staff")
	if err := v.Err(); err != nil {
		return APIKey{}, "", err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return APIKey{}, "", err
	}
	tok, hash, err := mintToken(kindAPIKey, p.TenantID)
	if err != nil {
		return APIKey{}, "", err
	}
	k := APIKey{TenantID: p.TenantID, ID: newID(), Name: in.Name, Role: in.Role, TokenHash: hash, Prefix: "kra_…" + tok[len(tok)-6:], CreatedBy: p.UserID, CreatedAt: s.now()}
	if err := tx.Create(&k).Error; err != nil {
		return APIKey{}, "", fmt.Errorf("accounts: create api key: %w", err)
	}
	return k, tok, audit.Record(ctx, p.Actor(), "api_key.created", "api_key:"+k.ID.String(), map[string]string{"role": string(k.Role), "name": k.Name})
}

// ListAPIKeys returns the tenant's keys, newest first, without secrets.
func (s *Service) ListAPIKeys(ctx context.Context) ([]APIKey, error) {
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return nil, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var ks []APIKey
	if err := tx.Order("id DESC").Find(&ks).Error; err != nil {
		return nil, fmt.Errorf("accounts: list api keys: %w", err)
	}
	return ks, nil
}

// RevokeAPIKey stops a key from working; revoking twice is harmless.
func (s *Service) RevokeAPIKey(ctx context.Context, id uuid.UUID) error {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	var k APIKey
	if err := tx.Where("id = ?", id).Take(&k).Error; err != nil {
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return tenants.NotFound("API key")
		}
		return fmt.Errorf("accounts: load api key: %w", err)
	}
	if k.RevokedAt != nil {
		return nil
	}
	if err := tx.Model(&k).Update("revoked_at", s.now()).Error; err != nil {
		return fmt.Errorf("accounts: revoke api key: %w", err)
	}
	return audit.Record(ctx, p.Actor(), "api_key.revoked", "api_key:"+k.ID.String(), nil)
}
