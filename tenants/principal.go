package tenants

import (
	"context"

	"github.com/google/uuid"
)

// Role is what a user or API key may do within its tenant. The order matters:
// a higher role may do everything a lower one may.
type Role string

const (
	RoleVisitor Role = "visitor"
	RoleStaff   Role = "staff"
	RoleAdmin   Role = "admin"
	RoleOwner   Role = "owner"
)

var roleRank = map[Role]int{RoleVisitor: 1, RoleStaff: 2, RoleAdmin: 3, RoleOwner: 4}

// Valid reports whether r is one of the four roles.
func (r Role) Valid() bool { return roleRank[r] > 0 }

// AtLeast reports whether r grants at least min.
func (r Role) AtLeast(min Role) bool { return roleRank[r] >= roleRank[min] && roleRank[r] > 0 }

// Principal is the authenticated caller of a request.
type Principal struct {
	TenantID  uuid.UUID
	UserID    uuid.UUID // zero for API keys
	APIKeyID  uuid.UUID // zero for sessions
	SessionID uuid.UUID // zero for API keys
	// BoxID is set when the caller is a box (signed device request); a box
	// has no role, so every Require refuses it.
	BoxID uuid.UUID
	Role  Role
	// Locations limits a staff user to the boxes of these locations, and to
	// the keys and bookings of those boxes. Empty: no limit.
	Locations []uuid.UUID
}

// Limited reports whether the caller sees only some locations.
func (p Principal) Limited() bool { return len(p.Locations) > 0 }

// Sees reports whether the caller may see a box in location (nil: a box in
// no location, which only unlimited callers see).
func (p Principal) Sees(location *uuid.UUID) bool {
	if !p.Limited() {
		return true
	}
	if location == nil {
		return false
	}
	for _, l := range p.Locations {
		if l == *location {
			return true
		}
	}
	return false
}

// Actor names the principal in audit entries without revealing secrets.
func (p Principal) Actor() string {
	if p.APIKeyID != uuid.Nil {
		return "api_key:" + p.APIKeyID.String()
	}
	if p.BoxID != uuid.Nil {
		return "box:" + p.BoxID.String()
	}
	return "user:" + p.UserID.String()
}

type principalKey struct{}

// WithPrincipal returns a context carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the caller, or an unauthorized error when the request
// is anonymous.
func PrincipalFrom(ctx context.Context) (Principal, error) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	if !ok {
		return Principal{}, Errorf(EUnauthorized, "authentication required")
	}
	return p, nil
}

// RequireBox returns the caller when it is a box (a signed device request):
// the /box/v1 calls act for that box only.
func RequireBox(ctx context.Context) (Principal, error) {
	p, err := PrincipalFrom(ctx)
	if err != nil {
		return p, err
	}
	if p.BoxID == uuid.Nil {
		return p, Errorf(EForbidden, "only a box can do this")
	}
	return p, nil
}

// Require returns the caller when its role is at least min.
func Require(ctx context.Context, min Role) (Principal, error) {
	p, err := PrincipalFrom(ctx)
	if err != nil {
		return p, err
	}
	if !p.Role.AtLeast(min) {
		return p, Errorf(EForbidden, "this action needs the %s role or higher", min)
	}
	return p, nil
}

type clientIPKey struct{}

// WithClientIP records the caller's address (as the HTTP layer resolved it)
// for audit entries and per-address limits.
func WithClientIP(ctx context.Context, ip string) context.Context {
	return context.WithValue(ctx, clientIPKey{}, ip)
}

// ClientIP returns the caller's address, or "".
func ClientIP(ctx context.Context) string {
	ip, _ := ctx.Value(clientIPKey{}).(string)
	return ip
}
