package accounts

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// NewUserInput is what an admin gives to add a staff member or visitor. The
// new user sets a password through the emailed invitation link.
type NewUserInput struct {
	Name  string       `json:"name"`
	Email string       `json:"email"`
	Phone *string      `json:"phone"`
	Role  tenants.Role `json:"role"`
	// LocationIDs limits a staff user to these locations (none: all).
	LocationIDs []uuid.UUID `json:"location_ids"`
}

// canManage says whether actor may give or take role from a user.
func canManage(actor, role tenants.Role) bool {
	if !actor.AtLeast(tenants.RoleAdmin) {
		return false
	}
	// Only an owner makes or changes owners.
	return role != tenants.RoleOwner || actor == tenants.RoleOwner
}

// CreateUser adds a user and emails an invitation link.
func (s *Service) CreateUser(ctx context.Context, in NewUserInput) (User, error) {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return User{}, err
	}
	var v tenants.Validator
	in.Name = strings.TrimSpace(in.Name)
	v.Check(in.Name != "" && len(in.Name) <= 200, "name", "is required (at most 200 characters)")
	email, ok := NormalizeEmail(in.Email)
	v.Check(ok, "email", "must be a valid email address")
	if in.Phone != nil {
		v.Check(ValidPhone(*in.Phone), "phone", "must be in E.164 form, e.g. +14155550100")
	}
	v.Check(in.Role.Valid(), "role", "must be owner, admin, staff or visitor")
	if err := v.Err(); err != nil {
		return User{}, err
	}
	if !canManage(p.Role, in.Role) {
		return User{}, tenants.Errorf(tenants.EForbidden, "only an owner can add an owner")
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return User{}, err
	}
	var n int64
	if err := tx.Model(&User{}).Where("email = ?", email).Count(&n).Error; err != nil {
		return User{}, fmt.Errorf("accounts: check email: %w", err)
	}
	if n > 0 {
		return User{}, tenants.Errorf(tenants.EConflict, "a user with this email already exists")
	}
	now := s.now()
	u := User{TenantID: p.TenantID, ID: newID(), Name: in.Name, Email: email, Phone: in.Phone, Role: in.Role, CreatedAt: now, UpdatedAt: now}
	if err := tx.Create(&u).Error; err != nil {
		return User{}, fmt.Errorf("accounts: create user: %w", err)
	}
	if err := setLocations(ctx, u, in.LocationIDs, &v); err != nil {
		return User{}, err
	}
	if err := v.Err(); err != nil {
		return User{}, err
	}
	u.LocationIDs = in.LocationIDs
	if u.LocationIDs == nil {
		u.LocationIDs = []uuid.UUID{}
	}
	if err := s.sendResetLink(ctx, u, "invite", s.cfg.InviteTTL); err != nil {
		return User{}, err
	}
	return u, audit.Record(ctx, p.Actor(), "user.created", "user:"+u.ID.String(), map[string]string{"role": string(u.Role)})
}

// GetUser returns one user; staff may read only themselves.
func (s *Service) GetUser(ctx context.Context, id uuid.UUID) (User, error) {
	p, err := tenants.PrincipalFrom(ctx)
	if err != nil {
		return User{}, err
	}
	if p.UserID != id && !p.Role.AtLeast(tenants.RoleAdmin) {
		return User{}, tenants.Errorf(tenants.EForbidden, "this action needs the admin role or higher")
	}
	return s.user(ctx, id)
}

// ListUsers returns a page of users, newest first, after cursor.
func (s *Service) ListUsers(ctx context.Context, after uuid.UUID, limit int) ([]User, error) {
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return nil, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	q := tx.Order("id DESC").Limit(limit)
	if after != uuid.Nil {
		q = q.Where("id < ?", after)
	}
	var us []User
	if err := q.Find(&us).Error; err != nil {
		return nil, fmt.Errorf("accounts: list users: %w", err)
	}
	return us, loadLocations(ctx, us)
}

// UserPatch lists what an admin may change on a user; nil means unchanged.
type UserPatch struct {
	Name     *string       `json:"name"`
	Phone    *string       `json:"phone"`
	Role     *tenants.Role `json:"role"`
	Disabled *bool         `json:"disabled"`
	// LocationIDs replaces the locations a staff user is limited to; an
	// empty list lifts the limit.
	LocationIDs *[]uuid.UUID `json:"location_ids"`
}

// UpdateUser changes a user. Nobody changes their own role or disables
// themselves, only owners touch owners, and a tenant always keeps an owner.
func (s *Service) UpdateUser(ctx context.Context, id uuid.UUID, in UserPatch) (User, error) {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return User{}, err
	}
	u, err := s.user(ctx, id)
	if err != nil {
		return User{}, err
	}
	var v tenants.Validator
	if in.Name != nil {
		*in.Name = strings.TrimSpace(*in.Name)
		v.Check(*in.Name != "" && len(*in.Name) <= 200, "name", "must not be empty (at most 200 characters)")
	}
	if in.Phone != nil {
		v.Check(ValidPhone(*in.Phone), "phone", "must be in E.164 form, e.g. +14155550100")
	}
	if in.Role != nil {
		v.Check(in.Role.Valid(), "role", "must be owner, admin, staff or visitor")
	}
	if err := v.Err(); err != nil {
		return User{}, err
	}
	if !canManage(p.Role, u.Role) || (in.Role != nil && !canManage(p.Role, *in.Role)) {
		return User{}, tenants.Errorf(tenants.EForbidden, "only an owner can change an owner")
	}
	if u.ID == p.UserID && (in.Role != nil && *in.Role != u.Role || in.Disabled != nil && *in.Disabled) {
		return User{}, tenants.Errorf(tenants.EForbidden, "you cannot change your own role or disable yourself")
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return User{}, err
	}
	losesOwner := u.Role == tenants.RoleOwner && (in.Role != nil && *in.Role != tenants.RoleOwner || in.Disabled != nil && *in.Disabled)
	if losesOwner {
		var owners int64
		if err := tx.Model(&User{}).Where("role = 'owner' AND disabled_at IS NULL AND id <> ?", u.ID).Count(&owners).Error; err != nil {
			return User{}, fmt.Errorf("accounts: count owners: %w", err)
		}
		if owners == 0 {
			return User{}, tenants.Errorf(tenants.EConflict, "the tenant must keep at least one active owner")
		}
	}
	now := s.now()
	changes := map[string]any{"updated_at": now}
	if in.Name != nil {
		changes["name"] = *in.Name
	}
	if in.Phone != nil {
		changes["phone"] = *in.Phone
	}
	if in.Role != nil {
		changes["role"] = string(*in.Role)
	}
	if in.Disabled != nil {
		if *in.Disabled {
			changes["disabled_at"] = now
		} else {
			changes["disabled_at"] = nil
		}
	}
	if err := tx.Model(&u).Updates(changes).Error; err != nil {
		return User{}, fmt.Errorf("accounts: update user: %w", err)
	}
	if in.LocationIDs != nil || in.Role != nil {
		ids := u.LocationIDs
		if in.LocationIDs != nil {
			ids = *in.LocationIDs
		}
		if in.Role != nil {
			u.Role = *in.Role
		}
		if !limitedRole(u.Role) && in.LocationIDs == nil {
			ids = nil // promoted to admin: the limit no longer applies
		}
		if err := setLocations(ctx, u, ids, &v); err != nil {
			return User{}, err
		}
		if err := v.Err(); err != nil {
			return User{}, err
		}
	}
	if in.Disabled != nil && *in.Disabled {
		if err := s.endSessions(ctx, u.ID, uuid.Nil); err != nil {
			return User{}, err
		}
	}
	if err := audit.Record(ctx, p.Actor(), "user.updated", "user:"+u.ID.String(), patchSummary(in)); err != nil {
		return User{}, err
	}
	return s.user(ctx, id)
}

func patchSummary(in UserPatch) map[string]string {
	d := map[string]string{}
	if in.Name != nil {
		d["name"] = "changed"
	}
	if in.Phone != nil {
		d["phone"] = "changed"
	}
	if in.Role != nil {
		d["role"] = string(*in.Role)
	}
	if in.Disabled != nil {
		d["disabled"] = fmt.Sprint(*in.Disabled)
	}
	return d
}
