package accounts

import (
	"context"
	"crypto/hmac"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"gorm.io/gorm/clause"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/guard"
)

// MySecurity is the caller's own sign-in settings.
type MySecurity struct {
	Login2FA       bool    `json:"login_2fa"`
	Method         string  `json:"method"` // sms | email | totp
	Phone          *string `json:"phone"`
	Email          string  `json:"email"`
	PINSet         bool    `json:"pin_set"`
	PINDisabled    bool    `json:"pin_disabled"`
	Recommendation string  `json:"recommendation"`
	SMSNotice      string  `json:"sms_notice"`
}

func viewSecurity(u User) MySecurity {
	return MySecurity{Login2FA: u.Login2FA, Method: channelFor(u), Phone: u.Phone, Email: u.Email,
		PINSet: u.PINHash != nil, PINDisabled: u.PINDisabledAt != nil, Recommendation: recommendation2F, SMSNotice: smsNotice}
}

// MySecurityOf returns the caller's settings.
func (s *Service) MySecurityOf(ctx context.Context) (MySecurity, error) {
	u, err := s.Me(ctx)
	if err != nil {
		return MySecurity{}, err
	}
	return viewSecurity(u), nil
}

// SecurityInput changes the caller's sign-in settings; every change needs
// the current password.
type SecurityInput struct {
	CurrentPassword string  `json:"current_password"`
	Login2FA        *bool   `json:"login_2fa"`
	Phone           *string `json:"phone"`
	Email           *string `json:"email"`
}

// UpdateMySecurity applies in after checking the password, and tells the
// user by email (at the old address too when the email changes).
func (s *Service) UpdateMySecurity(ctx context.Context, in SecurityInput) (MySecurity, error) {
	var v tenants.Validator
	if in.Phone != nil {
		v.Check(ValidPhone(*in.Phone), "phone", "must be in E.164 form, e.g. +14155550100")
	}
	var email string
	if in.Email != nil {
		var ok bool
		email, ok = NormalizeEmail(*in.Email)
		v.Check(ok, "email", "must be a valid email address")
	}
	if err := v.Err(); err != nil {
		return MySecurity{}, err
	}
	u, err := s.reauthenticate(ctx, in.CurrentPassword)
	if err != nil {
		return MySecurity{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return MySecurity{}, err
	}
	changes := map[string]any{"updated_at": s.now()}
	var what []string
	if in.Login2FA != nil && *in.Login2FA != u.Login2FA {
		changes["login_2fa"] = *in.Login2FA
		what = append(what, map[bool]string{true: "login_2fa_on", false: "login_2fa_off"}[*in.Login2FA])
	}
	if in.Phone != nil && (u.Phone == nil || *u.Phone != *in.Phone) {
		changes["phone"] = *in.Phone
		what = append(what, "phone_changed")
	}
	oldEmail := u.Email
	if in.Email != nil && email != u.Email {
		var n int64
		if err := tx.Model(&User{}).Where("email = ? AND id <> ?", email, u.ID).Count(&n).Error; err != nil {
			return MySecurity{}, fmt.Errorf("accounts: check email: %w", err)
		}
		if n > 0 {
			return MySecurity{}, tenants.Errorf(tenants.EConflict, "another user of this tenant has that email")
		}
		changes["email"] = email
		what = append(what, "email_changed")
	}
	if len(what) == 0 {
		return viewSecurity(u), nil
	}
	if err := tx.Model(&u).Updates(changes).Error; err != nil {
		return MySecurity{}, fmt.Errorf("accounts: update security: %w", err)
	}
	u, err = s.user(ctx, u.ID)
	if err != nil {
		return MySecurity{}, err
	}
	change := strings.Join(what, ", ")
	if err := s.securityChanged(ctx, u, change); err != nil {
		return MySecurity{}, err
	}
	if oldEmail != u.Email {
		old := u
		old.Email = oldEmail
		if err := s.notifyOnly(ctx, old, change); err != nil {
			return MySecurity{}, err
		}
	}
	return viewSecurity(u), nil
}

// Policy is the tenant's key-exchange security policy.
type Policy struct {
	OwnerPickups2FA bool   `json:"owner_pickups_2fa"`
	VisitorPickups  string `json:"visitor_pickups"` // sms | email | pin
}

// PolicyView is the policy with the warning shown when 2FA is off.
type PolicyView struct {
	Policy
	Warnings []string `json:"warnings"`
}

const warnNo2FA = "Key-exchange two-factor authentication is off: anyone who knows the phone number can take the keys."

func policyView(p Policy) PolicyView {
	v := PolicyView{Policy: p, Warnings: []string{}}
	if !p.OwnerPickups2FA {
		v.Warnings = append(v.Warnings, warnNo2FA)
	}
	return v
}

// PolicyOf returns ctx's tenant's policy.
func (s *Service) PolicyOf(ctx context.Context) (Policy, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Policy{}, err
	}
	tenantID, _ := tenants.TenantOf(ctx)
	var t Tenant
	if err := tx.Where("tenant_id = ?", tenantID).Take(&t).Error; err != nil {
		return Policy{}, fmt.Errorf("accounts: load policy: %w", err)
	}
	return Policy{OwnerPickups2FA: t.OwnerPickups2FA, VisitorPickups: t.VisitorPickups}, nil
}

// GetPolicy is GET /security (owner and admin).
func (s *Service) GetPolicy(ctx context.Context) (PolicyView, error) {
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return PolicyView{}, err
	}
	p, err := s.PolicyOf(ctx)
	return policyView(p), err
}

// PolicyInput changes the policy; nil fields keep their value.
type PolicyInput struct {
	OwnerPickups2FA *bool   `json:"owner_pickups_2fa"`
	VisitorPickups  *string `json:"visitor_pickups"`
}

// SetPolicy changes the policy; it takes effect at once. Turning 2FA off is
// allowed, audited with who and when, and answered with a warning.
func (s *Service) SetPolicy(ctx context.Context, in PolicyInput) (PolicyView, error) {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return PolicyView{}, err
	}
	if in.VisitorPickups != nil {
		switch *in.VisitorPickups {
		case "sms", "email", "pin":
		default:
			return PolicyView{}, tenants.Invalid(tenants.FieldError{Field: "visitor_pickups", Message: "must be sms, email or pin"})
		}
	}
	cur, err := s.PolicyOf(ctx)
	if err != nil {
		return PolicyView{}, err
	}
	next := cur
	if in.OwnerPickups2FA != nil {
		next.OwnerPickups2FA = *in.OwnerPickups2FA
	}
	if in.VisitorPickups != nil {
		next.VisitorPickups = *in.VisitorPickups
	}
	if next == cur {
		return policyView(next), nil
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return PolicyView{}, err
	}
	if err := tx.Model(&Tenant{}).Where("tenant_id = ?", p.TenantID).Updates(map[string]any{"owner_pickups_2fa": next.OwnerPickups2FA, "visitor_pickups": next.VisitorPickups}).Error; err != nil {
		return PolicyView{}, fmt.Errorf("accounts: set policy: %w", err)
	}
	details := map[string]string{"owner_pickups_2fa": fmt.Sprint(next.OwnerPickups2FA), "visitor_pickups": next.VisitorPickups}
	action := "security.policy_changed"
	if cur.OwnerPickups2FA && !next.OwnerPickups2FA {
		action = "security.exchange_2fa_disabled"
	}
	if err := audit.Record(ctx, p.Actor(), action, "tenant:"+p.TenantID.String(), details); err != nil {
		return PolicyView{}, err
	}
	return policyView(next), nil
}

// SetPIN sets the caller's personal 4-digit PIN, used at a box after the
// phone number when the tenant's policy is "pin". It is never a way in on
// its own: nothing is ever looked up by PIN.
func (s *Service) SetPIN(ctx context.Context, pin string) error {
	u, err := s.Me(ctx)
	if err != nil {
		return err
	}
	pol, err := s.PolicyOf(ctx)
	if err != nil {
		return err
	}
	if pol.VisitorPickups != "pin" {
		return tenants.Errorf(tenants.EConflict, "this business does not use PINs for key pickups")
	}
	if err := CheckPIN(pin); err != nil {
		return err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Model(&u).Updates(map[string]any{"pin_hash": s.pinHash(u, pin), "pin_failures": 0, "pin_disabled_at": nil, "updated_at": s.now()}).Error; err != nil {
		return fmt.Errorf("accounts: set PIN: %w", err)
	}
	// A new PIN starts with no wrong tries and no pause (the box counts
	// them per PIN: guard.PIN).
	if err := s.guard.Reset(ctx, guard.PIN, guard.PINSubject(u.TenantID.String(), u.ID.String())); err != nil {
		return err
	}
	return audit.Record(ctx, "user:"+u.ID.String(), "user.pin_changed", "user:"+u.ID.String(), nil)
}

func (s *Service) pinHash(u User, pin string) []byte {
	return s.keys.Hash([]byte("pin"), u.TenantID[:], u.ID[:], []byte(pin))
}

// PINFailuresToDisable is how many wrong PINs in a row disable a PIN until
// its owner sets a new one.
const PINFailuresToDisable = 10

// notifyOnly emails a security notice without an audit entry (the entry
// exists already).
func (s *Service) notifyOnly(ctx context.Context, u User, change string) error {
	_, err := s.msgs.Add(ctx, outboxSecurityNotice(u, change))
	return err
}

// ErrPINDisabled means the PIN was disabled after too many wrong tries; its
// owner must set a new one after signing in.
var ErrPINDisabled = tenants.Errorf(tenants.EForbidden, "this PIN is disabled after too many wrong tries; set a new one after signing in")

// VerifyPIN checks a user's PIN as the second factor of a pickup (the box
// found the user by phone number first). Ten wrong PINs in a row disable
// it; a right one resets the count. ctx carries the tenant transaction,
// whose commit keeps the count even when the PIN was wrong: callers must
// commit on ErrWrongPIN.
func (s *Service) VerifyPIN(ctx context.Context, userID uuid.UUID, pin string) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	var u User
	if err := tx.Clauses(clause.Locking{Strength: "UPDATE"}).Where("id = ?", userID).Take(&u).Error; err != nil {
		return tenants.NotFound("user")
	}
	switch {
	case u.PINDisabledAt != nil:
		return ErrPINDisabled
	case u.PINHash == nil:
		return tenants.Errorf(tenants.EConflict, "no PIN is set")
	}
	if hmac.Equal(u.PINHash, s.pinHash(u, pin)) {
		return tx.Model(&u).Update("pin_failures", 0).Error
	}
	changes := map[string]any{"pin_failures": u.PINFailures + 1}
	if u.PINFailures+1 >= PINFailuresToDisable {
		changes["pin_disabled_at"] = s.now()
	}
	if err := tx.Model(&u).Updates(changes).Error; err != nil {
		return fmt.Errorf("accounts: count PIN failure: %w", err)
	}
	if u.PINFailures+1 >= PINFailuresToDisable {
		if err := audit.Record(ctx, "user:"+u.ID.String(), "user.pin_disabled", "user:"+u.ID.String(), nil); err != nil {
			return err
		}
	}
	return ErrWrongPIN
}

// ErrWrongPIN is a wrong PIN that was counted.
var ErrWrongPIN = tenants.Errorf(tenants.EUnauthorized, "wrong PIN")
