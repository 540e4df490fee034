// Package accounts is a tenant's people and how they get in: signup (a tenant
// and its owner), users and roles, password sessions, password reset and
// invitations, and API keys for integrations.
package accounts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/guard"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// Tenant is a business using keyrelay.
type Tenant struct {
	TenantID        uuid.UUID `gorm:"primaryKey"`
	Name            string
	DefaultLanguage string `gorm:"default:en"`
	OwnerPickups2FA bool   `gorm:"column:owner_pickups_2fa;default:true"`
	VisitorPickups  string `gorm:"default:sms"`
	CreatedAt       time.Time
}

// User is a staff member or visitor of a tenant.
type User struct {
	TenantID          uuid.UUID `gorm:"primaryKey"`
	ID                uuid.UUID `gorm:"primaryKey"`
	Name              string
	Email             string
	Phone             *string
	Role              tenants.Role
	PasswordHash      *string
	PasswordChangedAt *time.Time
	DisabledAt        *time.Time
	Language          *string
	Login2FA          bool `gorm:"column:login_2fa;default:true"`
	Force2FA          bool `gorm:"column:force_2fa"`
	TOTPSecret        []byte
	TOTPEnabledAt     *time.Time
	TOTPLastStep      *int64
	PINHash           []byte `gorm:"column:pin_hash"`
	PINFailures       int    `gorm:"column:pin_failures"`
	PINDisabledAt     *time.Time
	CreatedAt         time.Time
	UpdatedAt         time.Time
	// LocationIDs are the locations a staff user is limited to (none: all),
	// loaded by the calls that show users.
	LocationIDs []uuid.UUID `gorm:"-"`
}

// language is the one messages to u are written in; "" lets the outbox
// use the tenant's default.
func (u User) language() string {
	if u.Language != nil {
		return *u.Language
	}
	return ""
}

// Session is a signed-in browser or client.
type Session struct {
	TenantID   uuid.UUID `gorm:"primaryKey"`
	ID         uuid.UUID `gorm:"primaryKey"`
	UserID     uuid.UUID
	TokenHash  []byte
	CreatedAt  time.Time
	LastSeenAt time.Time
	ExpiresAt  time.Time
	EndedAt    *time.Time
	UserAgent  string
}

type passwordReset struct {
	TenantID  uuid.UUID `gorm:"primaryKey"`
	ID        uuid.UUID `gorm:"primaryKey"`
	UserID    uuid.UUID
	Purpose   string
	TokenHash []byte
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    *time.Time
}

func (passwordReset) TableName() string { return "password_resets" }

// Config holds the account rules that operators may tune.
type Config struct {
	BaseURL         string        // absolute links in emails are built from this only
	SessionTTL      time.Duration // absolute lifetime of a session
	SessionIdle     time.Duration // a session unused this long ends
	ResetTTL        time.Duration // lifetime of a password reset link
	InviteTTL       time.Duration // lifetime of an invitation link
	ForgotMinDelay  time.Duration // "forgot password" answers no sooner than this, found or not
	SMSDailyBudget  int64         // SMS codes a tenant may send a day
	SMSPerPhoneHour int64         // …and one phone may receive an hour
	SMSPerPhoneDay  int64
}

// DefaultConfig returns the limits the security issue asks for.
func DefaultConfig(baseURL string) Config {
	return Config{
		BaseURL:         strings.TrimRight(baseURL, "/"),
		SessionTTL:      12 * time.Hour,
		SessionIdle:     30 * time.Minute,
		ResetTTL:        30 * time.Minute,
		InviteTTL:       72 * time.Hour,
		ForgotMinDelay:  300 * time.Millisecond,
		SMSDailyBudget:  1000,
		SMSPerPhoneHour: 3,
		SMSPerPhoneDay:  10,
	}
}

// Messages is where account emails go (the outbox).
type Messages interface {
	Add(ctx context.Context, m outbox.Message) (uuid.UUID, error)
}

// Keys protects short secrets: sealing what must be read back (TOTP
// secrets) and keyed hashes of what is only compared (codes, PINs).
type Keys interface {
	Seal(plaintext, context []byte) ([]byte, error)
	Open(sealed, context []byte) ([]byte, error)
	Hash(parts ...[]byte) []byte
}

// Deps are what the account service is built on.
type Deps struct {
	Scope    *tenants.Scope
	DB       *gorm.DB // application role; only for login_candidates
	Hasher   *Hasher
	Keys     Keys
	Guard    *guard.Guard
	Messages Messages
	Log      *slog.Logger
}

// Service implements the account calls. Each public method runs in the
// tenant transaction of its context or opens one.
type Service struct {
	scope  *tenants.Scope
	db     *gorm.DB
	hasher *Hasher
	keys   Keys
	guard  *guard.Guard
	msgs   Messages
	log    *slog.Logger
	cfg    Config
	now    func() time.Time
	// dummyHash keeps an unknown email as slow as a wrong password.
	dummyHash string
}

// NewService wires the account service.
func NewService(d Deps, cfg Config) (*Service, error) {
	s := &Service{scope: d.Scope, db: d.DB, hasher: d.Hasher, keys: d.Keys, guard: d.Guard, msgs: d.Messages, log: d.Log, cfg: cfg, now: time.Now}
	h, err := d.Hasher.Hash(context.Background(), uuid.NewString())
	if err != nil {
		return nil, err
	}
	s.dummyHash = h
	return s, nil
}

var (
	phoneRE = regexp.MustCompile(`^\+[1-9][0-9]{6,14}$`)

	errBadCredentials = tenants.Errorf(tenants.EUnauthorized, "wrong email or password")
	errBadSession     = tenants.Errorf(tenants.EUnauthorized, "the session has ended or the credential is invalid; sign in again")
)

// NormalizeEmail returns the canonical form of an email address, or false.
func NormalizeEmail(s string) (string, bool) {
	s = strings.TrimSpace(s)
	if len(s) > 254 {
		return "", false
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || !strings.Contains(s, "@") {
		return "", false
	}
	return strings.ToLower(s), true
}

// ValidPhone reports whether s is an E.164 number.
func ValidPhone(s string) bool { return phoneRE.MatchString(s) }

func newID() uuid.UUID { return uuid.Must(uuid.NewV7()) }

// SignupInput is what a new business gives to open its account.
type SignupInput struct {
	Company  string `json:"company"`
	Name     string `json:"name"`
	Email    string `json:"email"`
	Phone    string `json:"phone"`
	Password string `json:"password"`
}

func (in *SignupInput) validate() error {
	var v tenants.Validator
	in.Company, in.Name = strings.TrimSpace(in.Company), strings.TrimSpace(in.Name)
	v.Check(in.Company != "" && len(in.Company) <= 200, "company", "is required (at most 200 characters)")
	v.Check(in.Name != "" && len(in.Name) <= 200, "name", "is required (at most 200 characters)")
	email, ok := NormalizeEmail(in.Email)
	v.Check(ok, "email", "must be a valid email address")
	in.Email = email
	v.Check(ValidPhone(in.Phone), "phone", "must be in E.164 form, e.g. +14155550100")
	if err := v.Err(); err != nil {
		return err
	}
	return CheckPassword("password", in.Password)
}

// Signup creates a tenant and its owner.
func (s *Service) Signup(ctx context.Context, in SignupInput) (Tenant, User, error) {
	if err := in.validate(); err != nil {
		return Tenant{}, User{}, err
	}
	hash, err := s.hasher.Hash(ctx, in.Password)
	if err != nil {
		return Tenant{}, User{}, err
	}
	now := s.now()
	t := Tenant{TenantID: newID(), Name: in.Company, CreatedAt: now}
	phone := in.Phone
	u := User{TenantID: t.TenantID, ID: newID(), Name: in.Name, Email: in.Email, Phone: &phone, Role: tenants.RoleOwner, PasswordHash: &hash, PasswordChangedAt: &now, CreatedAt: now, UpdatedAt: now}
	err = s.scope.Do(ctx, t.TenantID, func(ctx context.Context) error {
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return err
		}
		if err := tx.Create(&t).Error; err != nil {
			return fmt.Errorf("accounts: create tenant: %w", err)
		}
		if err := tx.Create(&u).Error; err != nil {
			return fmt.Errorf("accounts: create owner: %w", err)
		}
		return audit.Record(ctx, "user:"+u.ID.String(), "tenant.created", "tenant:"+t.TenantID.String(), map[string]string{"company": t.Name})
	})
	return t, u, err
}

type candidate struct {
	TenantID uuid.UUID
	UserID   uuid.UUID
}

// candidates asks the one cross-tenant function which tenants know email.
func (s *Service) candidates(ctx context.Context, email string) ([]candidate, error) {
	var cs []candidate
	if err := s.db.WithContext(ctx).Raw("SELECT tenant_id, user_id FROM login_candidates(?)", email).Scan(&cs).Error; err != nil {
		return nil, fmt.Errorf("accounts: login candidates: %w", err)
	}
	return cs, nil
}

// LoginInput is the password step of signing in. TenantID is needed only
// when the same email belongs to users of several tenants and their
// passwords are the same.
type LoginInput struct {
	Email     string    `json:"email"`
	Password  string    `json:"password"`
	TenantID  uuid.UUID `json:"tenant_id"`
	UserAgent string    `json:"-"`
}

// LoginResult is either a session (login 2FA off) or a challenge to answer
// with the second factor.
type LoginResult struct {
	Token       string
	Session     Session
	ChallengeID string
	Channel     string
}

// Login checks the password. With login 2FA on (the default), or after a
// password change, it answers with a challenge and sends the code;
// otherwise it opens a new session. A new token is minted on every login,
// so a token planted before login (session fixation) is worthless.
//
// Guessing is limited per account and per client address (tenants/guard);
// a refused attempt is not even checked.
func (s *Service) Login(ctx context.Context, in LoginInput) (LoginResult, error) {
	email, ok := NormalizeEmail(in.Email)
	if !ok || in.Password == "" || len(in.Password) > 4*MaxPasswordLen {
		return LoginResult{}, errBadCredentials
	}
	byAddress, err := s.guard.Begin(ctx, guard.LoginAddress, guard.ClientKey(tenants.ClientIP(ctx)))
	if err != nil {
		return LoginResult{}, err
	}
	cs, err := s.candidates(ctx, email)
	if err != nil {
		return LoginResult{}, err
	}
	tried := false
	for _, c := range cs {
		if in.TenantID != uuid.Nil && c.TenantID != in.TenantID {
			continue
		}
		var u User
		err := s.scope.Do(ctx, c.TenantID, func(ctx context.Context) error {
			tx, err := tenants.Tx(ctx)
			if err != nil {
				return err
			}
			return tx.Where("id = ?", c.UserID).Take(&u).Error
		})
		if err != nil || u.PasswordHash == nil || u.DisabledAt != nil {
			continue
		}
		tried = true
		byAccount, err := s.guard.Begin(ctx, guard.LoginAccount, c.TenantID.String()+":"+c.UserID.String())
		if err != nil {
			return LoginResult{}, err
		}
		// The hash is checked outside any transaction: a slow argon2 run
		// must not hold a pooled connection.
		match, err := s.hasher.Verify(ctx, *u.PasswordHash, in.Password)
		if err != nil {
			return LoginResult{}, err
		}
		if !match {
			if err := byAccount.Failed(ctx); err != nil {
				return LoginResult{}, err
			}
			s.auditAs(ctx, c.TenantID, "user:"+u.ID.String(), "login.failed", "user:"+u.ID.String(), map[string]string{"step": "password"})
			continue
		}
		if err := byAccount.Succeeded(ctx); err != nil {
			return LoginResult{}, err
		}
		if err := byAddress.Succeeded(ctx); err != nil {
			return LoginResult{}, err
		}
		var res LoginResult
		err = s.scope.Do(ctx, c.TenantID, func(ctx context.Context) error {
			if u.Login2FA || u.Force2FA {
				res.ChallengeID, res.Channel, err = s.startChallenge(ctx, u, in.UserAgent)
				if err != nil {
					return err
				}
				return audit.Record(ctx, "user:"+u.ID.String(), "login.challenged", "user:"+u.ID.String(), map[string]string{"channel": res.Channel})
			}
			if res.Token, res.Session, err = s.startSession(ctx, u, in.UserAgent); err != nil {
				return err
			}
			return audit.Record(ctx, "user:"+u.ID.String(), "login.succeeded", "session:"+res.Session.ID.String(), map[string]string{"second_factor": "none"})
		})
		return res, err
	}
	if !tried {
		if _, err := s.hasher.Verify(ctx, s.dummyHash, in.Password); err != nil {
			return LoginResult{}, err
		}
	}
	if err := byAddress.Failed(ctx); err != nil {
		return LoginResult{}, err
	}
	return LoginResult{}, errBadCredentials
}

func (s *Service) startSession(ctx context.Context, u User, userAgent string) (string, Session, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return "", Session{}, err
	}
	tok, hash, err := mintToken(kindSession, u.TenantID)
	if err != nil {
		return "", Session{}, err
	}
	if len(userAgent) > 300 {
		userAgent = userAgent[:300]
	}
	now := s.now()
	sess := Session{TenantID: u.TenantID, ID: newID(), UserID: u.ID, TokenHash: hash, CreatedAt: now, LastSeenAt: now, ExpiresAt: now.Add(s.cfg.SessionTTL), UserAgent: userAgent}
	if err := tx.Create(&sess).Error; err != nil {
		return "", Session{}, fmt.Errorf("accounts: create session: %w", err)
	}
	return tok, sess, nil
}

// Authenticate resolves a session token or API key to the caller. ctx must
// carry the transaction of the tenant the token claims (TenantOfToken).
func (s *Service) Authenticate(ctx context.Context, tok string) (tenants.Principal, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return tenants.Principal{}, err
	}
	tenantID, _ := tenants.TenantOf(ctx)
	now := s.now()
	if id, ok := parseToken(kindAPIKey, tok); ok && id == tenantID {
		var k APIKey
		if err := tx.Where("token_hash = ? AND revoked_at IS NULL", hashToken(tok)).Take(&k).Error; err != nil {
			return tenants.Principal{}, errBadSession
		}
		if k.LastUsedAt == nil || now.Sub(*k.LastUsedAt) > time.Minute {
			if err := tx.Model(&k).Update("last_used_at", now).Error; err != nil {
				return tenants.Principal{}, fmt.Errorf("accounts: touch api key: %w", err)
			}
		}
		return tenants.Principal{TenantID: tenantID, APIKeyID: k.ID, Role: k.Role}, nil
	}
	if id, ok := parseToken(kindSession, tok); !ok || id != tenantID {
		return tenants.Principal{}, errBadSession
	}
	var sess Session
	if err := tx.Where("token_hash = ? AND ended_at IS NULL", hashToken(tok)).Take(&sess).Error; err != nil {
		return tenants.Principal{}, errBadSession
	}
	if !now.Before(sess.ExpiresAt) || now.Sub(sess.LastSeenAt) >= s.cfg.SessionIdle {
		return tenants.Principal{}, errBadSession
	}
	var u User
	if err := tx.Where("id = ?", sess.UserID).Take(&u).Error; err != nil || u.DisabledAt != nil {
		return tenants.Principal{}, errBadSession
	}
	// Touch at most once a minute: a write per request would be wasteful,
	// and the idle timeout does not need finer resolution.
	if now.Sub(sess.LastSeenAt) > time.Minute {
		if err := tx.Model(&sess).Update("last_seen_at", now).Error; err != nil {
			return tenants.Principal{}, fmt.Errorf("accounts: touch session: %w", err)
		}
	}
	locs, err := locationsOf(ctx, u)
	if err != nil {
		return tenants.Principal{}, err
	}
	return tenants.Principal{TenantID: tenantID, UserID: u.ID, SessionID: sess.ID, Role: u.Role, Locations: locs}, nil
}

// Logout ends the caller's session. API keys are revoked, not logged out.
func (s *Service) Logout(ctx context.Context) error {
	p, err := tenants.PrincipalFrom(ctx)
	if err != nil {
		return err
	}
	if p.SessionID == uuid.Nil {
		return nil
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Model(&Session{}).Where("id = ? AND ended_at IS NULL", p.SessionID).Update("ended_at", s.now()).Error; err != nil {
		return fmt.Errorf("accounts: end session: %w", err)
	}
	return audit.Record(ctx, p.Actor(), "session.ended", "session:"+p.SessionID.String(), nil)
}

// Me returns the calling user.
func (s *Service) Me(ctx context.Context) (User, error) {
	p, err := tenants.PrincipalFrom(ctx)
	if err != nil {
		return User{}, err
	}
	if p.UserID == uuid.Nil {
		return User{}, tenants.Errorf(tenants.EForbidden, "an API key is not a user")
	}
	return s.user(ctx, p.UserID)
}

func (s *Service) user(ctx context.Context, id uuid.UUID) (User, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return User{}, err
	}
	var u User
	err = tx.Where("id = ?", id).Take(&u).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return User{}, tenants.NotFound("user")
	}
	if err != nil {
		return User{}, fmt.Errorf("accounts: load user: %w", err)
	}
	us := []User{u}
	if err := loadLocations(ctx, us); err != nil {
		return User{}, err
	}
	return us[0], nil
}

// endSessions ends every live session of a user but keep.
func (s *Service) endSessions(ctx context.Context, userID, keep uuid.UUID) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	q := tx.Model(&Session{}).Where("user_id = ? AND ended_at IS NULL", userID)
	if keep != uuid.Nil {
		q = q.Where("id <> ?", keep)
	}
	if err := q.Update("ended_at", s.now()).Error; err != nil {
		return fmt.Errorf("accounts: end sessions: %w", err)
	}
	return nil
}

// ChangePassword replaces the caller's password after checking the current
// one. The caller's other sessions end; the caller is told by email.
func (s *Service) ChangePassword(ctx context.Context, current, next string) error {
	u, err := s.reauthenticate(ctx, current)
	if err != nil {
		return err
	}
	if err := CheckPassword("new_password", next); err != nil {
		return err
	}
	p, _ := tenants.PrincipalFrom(ctx)
	if err := s.setPassword(ctx, u, next, p.SessionID); err != nil {
		return err
	}
	return audit.Record(ctx, p.Actor(), "user.password_changed", "user:"+u.ID.String(), nil)
}

func (s *Service) setPassword(ctx context.Context, u User, pw string, keepSession uuid.UUID) error {
	hash, err := s.hasher.Hash(ctx, pw)
	if err != nil {
		return err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	now := s.now()
	if err := tx.Model(&u).Updates(map[string]any{"password_hash": hash, "password_changed_at": now, "updated_at": now, "force_2fa": true}).Error; err != nil {
		return fmt.Errorf("accounts: set password: %w", err)
	}
	if err := s.endSessions(ctx, u.ID, keepSession); err != nil {
		return err
	}
	_, err = s.msgs.Add(ctx, outbox.Message{Kind: "password_changed", Channel: outbox.Email, Recipient: u.Email, Data: map[string]string{"name": u.Name}, Language: u.language()})
	return err
}

// ForgotPassword emails a single-use reset link to every account of email.
// It answers the same, and after about the same time, whether or not the
// address is known, so it cannot be used to find out who has an account.
func (s *Service) ForgotPassword(ctx context.Context, email string) error {
	deadline := s.now().Add(s.cfg.ForgotMinDelay)
	defer func() {
		if d := time.Until(deadline); d > 0 {
			time.Sleep(d)
		}
	}()
	email, ok := NormalizeEmail(email)
	if !ok {
		return tenants.Invalid(tenants.FieldError{Field: "email", Message: "must be a valid email address"})
	}
	cs, err := s.candidates(ctx, email)
	if err != nil {
		return err
	}
	for _, c := range cs {
		err := s.scope.Do(ctx, c.TenantID, func(ctx context.Context) error {
			u, err := s.user(ctx, c.UserID)
			if err != nil {
				return err
			}
			return s.sendResetLink(ctx, u, "reset", s.cfg.ResetTTL)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *Service) sendResetLink(ctx context.Context, u User, purpose string, ttl time.Duration) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	tok, hash, err := mintToken(kindReset, u.TenantID)
	if err != nil {
		return err
	}
	now := s.now()
	r := passwordReset{TenantID: u.TenantID, ID: newID(), UserID: u.ID, Purpose: purpose, TokenHash: hash, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := tx.Create(&r).Error; err != nil {
		return fmt.Errorf("accounts: create reset: %w", err)
	}
	// The link comes from the configured base URL, never from the request's
	// Host header, which an attacker controls.
	link := s.cfg.BaseURL + "/reset-password?token=" + tok
	kind := "password_reset"
	if purpose == "invite" {
		kind = "invitation"
	}
	_, err = s.msgs.Add(ctx, outbox.Message{Kind: kind, Channel: outbox.Email, Recipient: u.Email, Data: map[string]string{"name": u.Name, "link": link, "expires_at": r.ExpiresAt.UTC().Format(time.RFC3339)}})
	return err
}

var errBadResetToken = tenants.Invalid(tenants.FieldError{Field: "token", Message: "the link is invalid, already used or expired; ask for a new one"})

// ResetPassword sets a new password with a reset or invitation token. The
// token works once; every session of the user ends; nobody is signed in.
func (s *Service) ResetPassword(ctx context.Context, tok, next string) error {
	tenantID, ok := parseToken(kindReset, tok)
	if !ok {
		return errBadResetToken
	}
	if err := CheckPassword("new_password", next); err != nil {
		return err
	}
	return s.scope.Do(ctx, tenantID, func(ctx context.Context) error {
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return err
		}
		var r passwordReset
		// FOR UPDATE: two concurrent uses of one token must not both win.
		if err := tx.Clauses(clause.Locking{Strength: "UPDATE"}).Where("token_hash = ?", hashToken(tok)).Take(&r).Error; err != nil {
			return errBadResetToken
		}
		now := s.now()
		if r.UsedAt != nil || !now.Before(r.ExpiresAt) {
			return errBadResetToken
		}
		if err := tx.Model(&r).Update("used_at", now).Error; err != nil {
			return fmt.Errorf("accounts: use reset token: %w", err)
		}
		u, err := s.user(ctx, r.UserID)
		if err != nil {
			return err
		}
		if u.DisabledAt != nil {
			return errBadResetToken
		}
		if err := s.setPassword(ctx, u, next, uuid.Nil); err != nil {
			return err
		}
		// The reset flow is what ends a run of failed sign-ins.
		if err := s.guard.Reset(ctx, guard.LoginAccount, u.TenantID.String()+":"+u.ID.String()); err != nil {
			return err
		}
		return audit.Record(ctx, "user:"+u.ID.String(), "user.password_reset", "user:"+u.ID.String(), map[string]string{"purpose": r.Purpose})
	})
}

// EmailKnown reports whether any tenant has a user with email. Only for
// start-up tasks (the development demo tenant): answering it on a public
// route would reveal who has an account.
func (s *Service) EmailKnown(ctx context.Context, email string) (bool, error) {
	cs, err := s.candidates(ctx, strings.ToLower(email))
	return len(cs) > 0, err
}

func gormExpr(sql string) clause.Expr { return gorm.Expr(sql) }
