package accounts

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"fmt"
	"image/png"
	"math/big"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
	"gorm.io/gorm/clause"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/guard"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// Login two-factor authentication (NIST SP 800-63B §5.1.3, §5.1.4):
// six-digit codes from a CSPRNG, kept as a keyed hash, bound to one login
// attempt, single use, valid 10 minutes, 5 tries per code (a re-sent code
// keeps the count), and at most 10 failures a day per phone across
// attempts. SMS is a restricted authenticator, so an authenticator app
// (TOTP, RFC 6238) with one-time recovery codes may replace it.
const (
	codeTTL          = 10 * time.Minute
	codeTries        = 5
	codeResends      = 3
	recoveryCodeN    = 10
	smsNotice        = "Codes by SMS can be intercepted (SIM swap, number porting). An authenticator app is safer; keep login 2FA on either way."
	recommendation2F = "We recommend keeping login two-factor authentication on."
)

type loginChallenge struct {
	TenantID  uuid.UUID `gorm:"primaryKey"`
	ID        uuid.UUID `gorm:"primaryKey"`
	UserID    uuid.UUID
	TokenHash []byte
	Channel   string
	CodeHash  []byte
	Attempts  int
	Sends     int
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    *time.Time
	UserAgent string
}

func (loginChallenge) TableName() string { return "login_challenges" }

type recoveryCode struct {
	TenantID  uuid.UUID `gorm:"primaryKey"`
	ID        uuid.UUID `gorm:"primaryKey"`
	UserID    uuid.UUID
	CodeHash  []byte
	CreatedAt time.Time
	UsedAt    *time.Time
}

func (recoveryCode) TableName() string { return "recovery_codes" }

// sixDigits returns a uniformly random six-digit code.
func sixDigits() (string, error) {
	n, err := rand.Int(rand.Reader, big.NewInt(1_000_000))
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%06d", n.Int64()), nil
}

func (s *Service) codeHash(challengeID uuid.UUID, code string) []byte {
	return s.keys.Hash([]byte("login-code"), challengeID[:], []byte(code))
}

func (s *Service) recoveryHash(userID uuid.UUID, code string) []byte {
	return s.keys.Hash([]byte("recovery-code"), userID[:], []byte(normalizeRecovery(code)))
}

func normalizeRecovery(code string) string {
	return strings.ToLower(strings.NewReplacer("-", "", " ", "").Replace(code))
}

// channelFor picks how u proves the second factor.
func channelFor(u User) string {
	switch {
	case u.TOTPEnabledAt != nil:
		return "totp"
	case u.Phone != nil:
		return "sms"
	default:
		return "email" // invited users without a phone still get a code
	}
}

// startChallenge records a login attempt that passed the password step and
// sends its code. ctx carries u's tenant transaction.
func (s *Service) startChallenge(ctx context.Context, u User, userAgent string) (string, string, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return "", "", err
	}
	tok, hash, err := mintToken(kindChallenge, u.TenantID)
	if err != nil {
		return "", "", err
	}
	now := s.now()
	ch := loginChallenge{TenantID: u.TenantID, ID: newID(), UserID: u.ID, TokenHash: hash, Channel: channelFor(u),
		CreatedAt: now, ExpiresAt: now.Add(codeTTL), UserAgent: truncate(userAgent, 300)}
	if err := tx.Create(&ch).Error; err != nil {
		return "", "", fmt.Errorf("accounts: create challenge: %w", err)
	}
	if ch.Channel != "totp" {
		if err := s.sendCode(ctx, u, &ch); err != nil {
			return "", "", err
		}
	}
	return tok, ch.Channel, nil
}

// sendCode draws a new code for ch and queues it, within the SMS budgets
// (sending costs money and is an abuse vector of its own).
func (s *Service) sendCode(ctx context.Context, u User, ch *loginChallenge) error {
	recipient := u.Email
	channel := outbox.Email
	if ch.Channel == "sms" {
		recipient, channel = *u.Phone, outbox.SMS
		// Per tenant and phone: a stranger who signs up a tenant with
		// someone's number must not spend that person's budget elsewhere.
		budgetKey := u.TenantID.String() + "/" + recipient
		if err := s.guard.Spend(ctx, "sms-phone-hour", s.cfg.SMSPerPhoneHour, time.Hour, budgetKey); err != nil {
			return err
		}
		if err := s.guard.Spend(ctx, "sms-phone-day", s.cfg.SMSPerPhoneDay, 24*time.Hour, budgetKey); err != nil {
			return err
		}
		if err := s.guard.Spend(ctx, "sms-tenant-day", s.cfg.SMSDailyBudget, 24*time.Hour, u.TenantID.String()); err != nil {
			return err
		}
	}
	code, err := sixDigits()
	if err != nil {
		return err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	ch.CodeHash = s.codeHash(ch.ID, code)
	ch.Sends++
	if err := tx.Model(ch).Updates(map[string]any{"code_hash": ch.CodeHash, "sends": ch.Sends}).Error; err != nil {
		return fmt.Errorf("accounts: store code: %w", err)
	}
	_, err = s.msgs.Add(ctx, outbox.Message{Kind: "login_code", Channel: channel, Recipient: recipient,
		Data: map[string]string{"code": code}, Language: u.language(), Priority: outbox.Critical})
	return err
}

var (
	errChallengeGone = tenants.Errorf(tenants.EUnauthorized, "this sign-in has expired or was already used; sign in again")
	errWrongCode     = tenants.Errorf(tenants.EUnauthorized, "wrong code")
)

// VerifyInput is the second step of signing in.
type VerifyInput struct {
	ChallengeID  string `json:"challenge_id"`
	Code         string `json:"code"`
	RecoveryCode string `json:"recovery_code"`
	UserAgent    string `json:"-"`
}

// VerifyLogin checks the second factor and opens the session.
func (s *Service) VerifyLogin(ctx context.Context, in VerifyInput) (string, Session, error) {
	tenantID, ok := parseToken(kindChallenge, in.ChallengeID)
	if !ok {
		return "", Session{}, errChallengeGone
	}
	if (in.Code == "") == (in.RecoveryCode == "") {
		return "", Session{}, tenants.Invalid(tenants.FieldError{Field: "code", Message: "give either code or recovery_code"})
	}
	// The phone's (or user's) own failure budget first: a refused guess
	// must not use up one of the challenge's tries.
	var u User
	err := s.scope.Do(ctx, tenantID, func(ctx context.Context) error {
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return err
		}
		var owner struct{ UserID uuid.UUID }
		if err := tx.Model(&loginChallenge{}).Select("user_id").Where("token_hash = ?", hashToken(in.ChallengeID)).Take(&owner).Error; err != nil {
			return err
		}
		u, err = s.user(ctx, owner.UserID)
		return err
	})
	if err != nil || u.DisabledAt != nil {
		return "", Session{}, errChallengeGone
	}
	subject := u.ID.String()
	if u.Phone != nil && u.TOTPEnabledAt == nil {
		subject = *u.Phone
	}
	attempt, err := s.guard.Begin(ctx, guard.CodePerPhone, u.TenantID.String()+"/"+subject)
	if err != nil {
		return "", Session{}, err
	}
	// Count the try before checking it, in its own transaction: parallel
	// guesses each take one of the 5 tries, and a failed check still counts.
	var ch loginChallenge
	err = s.scope.Do(ctx, tenantID, func(ctx context.Context) error {
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return err
		}
		res := tx.Model(&ch).Clauses(clause.Returning{}).
			Where("token_hash = ? AND used_at IS NULL AND expires_at > ?", hashToken(in.ChallengeID), s.now()).
			Update("attempts", gormExpr("attempts + 1"))
		if res.Error != nil {
			return fmt.Errorf("accounts: count try: %w", res.Error)
		}
		if res.RowsAffected == 0 {
			return errChallengeGone
		}
		return nil
	})
	if err != nil {
		attempt.Succeeded(ctx) // not a guess at a code: give the budget back
		return "", Session{}, err
	}
	if ch.Attempts > codeTries {
		attempt.Succeeded(ctx)
		return "", Session{}, tenants.RateLimited("too many wrong codes for this sign-in; sign in again", time.Until(ch.ExpiresAt))
	}

	var tok string
	var sess Session
	err = s.scope.Do(ctx, tenantID, func(ctx context.Context) error {
		ok, err := s.checkSecondFactor(ctx, u, ch, in)
		if err != nil || !ok {
			return err
		}
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return err
		}
		// Single use even against a parallel request with the right code.
		res := tx.Model(&loginChallenge{}).Where("id = ? AND used_at IS NULL", ch.ID).Update("used_at", s.now())
		if res.Error != nil {
			return fmt.Errorf("accounts: use challenge: %w", res.Error)
		}
		if res.RowsAffected == 0 {
			return errChallengeGone
		}
		if u.Force2FA {
			if err := tx.Model(&u).Update("force_2fa", false).Error; err != nil {
				return fmt.Errorf("accounts: clear forced 2FA: %w", err)
			}
		}
		if tok, sess, err = s.startSession(ctx, u, in.UserAgent); err != nil {
			return err
		}
		how := ch.Channel
		if in.RecoveryCode != "" {
			how = "recovery_code"
		}
		return audit.Record(ctx, "user:"+u.ID.String(), "login.succeeded", "session:"+sess.ID.String(), map[string]string{"second_factor": how})
	})
	if err == nil && tok == "" {
		err = errWrongCode
	}
	if err != nil {
		if tenants.ErrorCode(err) == tenants.EUnauthorized {
			if ferr := attempt.Failed(ctx); ferr != nil {
				return "", Session{}, ferr
			}
			s.auditAs(ctx, tenantID, "user:"+u.ID.String(), "login.failed", "user:"+u.ID.String(), map[string]string{"step": "second_factor"})
		}
		return "", Session{}, err
	}
	if err := attempt.Succeeded(ctx); err != nil {
		s.log.WarnContext(ctx, "accounts: reset code counter", "err", err)
	}
	return tok, sess, nil
}

func (s *Service) checkSecondFactor(ctx context.Context, u User, ch loginChallenge, in VerifyInput) (bool, error) {
	if in.RecoveryCode != "" {
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return false, err
		}
		res := tx.Model(&recoveryCode{}).Where("user_id = ? AND code_hash = ? AND used_at IS NULL", u.ID, s.recoveryHash(u.ID, in.RecoveryCode)).Update("used_at", s.now())
		if res.Error != nil {
			return false, fmt.Errorf("accounts: use recovery code: %w", res.Error)
		}
		return res.RowsAffected == 1, nil
	}
	if ch.Channel == "totp" {
		return s.useTOTP(ctx, u, in.Code)
	}
	return ch.CodeHash != nil && hmac.Equal(ch.CodeHash, s.codeHash(ch.ID, in.Code)), nil
}

// ResendCode sends a fresh code for a challenge; the count of tries is kept.
func (s *Service) ResendCode(ctx context.Context, challengeID string) error {
	tenantID, ok := parseToken(kindChallenge, challengeID)
	if !ok {
		return errChallengeGone
	}
	return s.scope.Do(ctx, tenantID, func(ctx context.Context) error {
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return err
		}
		var ch loginChallenge
		if err := tx.Clauses(clause.Locking{Strength: "UPDATE"}).Where("token_hash = ? AND used_at IS NULL AND expires_at > ?", hashToken(challengeID), s.now()).Take(&ch).Error; err != nil {
			return errChallengeGone
		}
		if ch.Channel == "totp" {
			return tenants.Errorf(tenants.EConflict, "this account uses an authenticator app; open it for the code")
		}
		if ch.Sends >= codeResends+1 {
			return tenants.RateLimited("no more codes for this sign-in; sign in again later", time.Until(ch.ExpiresAt))
		}
		u, err := s.user(ctx, ch.UserID)
		if err != nil {
			return err
		}
		return s.sendCode(ctx, u, &ch)
	})
}

var totpOpts = totp.ValidateOpts{Period: 30, Skew: 1, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

// useTOTP accepts a code of the current 30-second step or its neighbours,
// once: the step is remembered, and a code of that step or an earlier one is
// refused (RFC 6238 §5.2), so an observed code cannot be replayed.
func (s *Service) useTOTP(ctx context.Context, u User, code string) (bool, error) {
	secret, err := s.totpSecret(u)
	if err != nil {
		return false, err
	}
	now := s.now()
	for _, skew := range []int64{0, -1, 1} {
		at := now.Add(time.Duration(skew*30) * time.Second)
		want, err := totp.GenerateCodeCustom(secret, at, totpOpts)
		if err != nil || !hmac.Equal([]byte(want), []byte(code)) {
			continue
		}
		step := at.Unix() / 30
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return false, err
		}
		res := tx.Model(&User{}).Where("id = ? AND (totp_last_step IS NULL OR totp_last_step < ?)", u.ID, step).Update("totp_last_step", step)
		if res.Error != nil {
			return false, fmt.Errorf("accounts: remember TOTP step: %w", res.Error)
		}
		return res.RowsAffected == 1, nil
	}
	return false, nil
}

func (s *Service) totpSecret(u User) (string, error) {
	if u.TOTPSecret == nil {
		return "", fmt.Errorf("accounts: user %s has no TOTP secret", u.ID)
	}
	raw, err := s.keys.Open(u.TOTPSecret, []byte("totp:"+u.ID.String()))
	if err != nil {
		return "", fmt.Errorf("accounts: open TOTP secret: %w", err)
	}
	return string(raw), nil
}

// TOTPEnrolment is what an authenticator app needs to start.
type TOTPEnrolment struct {
	Secret      string `json:"secret"`
	OTPAuthURL  string `json:"otpauth_url"`
	QRPNGBase64 string `json:"qr_png_base64"`
}

// StartTOTP begins enrolling an authenticator app (RFC 6238: SHA-1, six
// digits, 30 s) after the password is given again. The secret is kept
// sealed; it takes effect once a first code confirms it.
func (s *Service) StartTOTP(ctx context.Context, currentPassword string) (TOTPEnrolment, error) {
	u, err := s.reauthenticate(ctx, currentPassword)
	if err != nil {
		return TOTPEnrolment{}, err
	}
	if u.TOTPEnabledAt != nil {
		return TOTPEnrolment{}, tenants.Errorf(tenants.EConflict, "an authenticator app is already set up; remove it first")
	}
	key, err := totp.Generate(totp.GenerateOpts{Issuer: "keyrelay", AccountName: u.Email, Period: 30, SecretSize: 20, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		return TOTPEnrolment{}, fmt.Errorf("accounts: generate TOTP: %w", err)
	}
	sealed, err := s.keys.Seal([]byte(key.Secret()), []byte("totp:"+u.ID.String()))
	if err != nil {
		return TOTPEnrolment{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return TOTPEnrolment{}, err
	}
	if err := tx.Model(&u).Updates(map[string]any{"totp_secret": sealed, "totp_enabled_at": nil}).Error; err != nil {
		return TOTPEnrolment{}, fmt.Errorf("accounts: store TOTP secret: %w", err)
	}
	img, err := key.Image(256, 256)
	if err != nil {
		return TOTPEnrolment{}, fmt.Errorf("accounts: QR code: %w", err)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return TOTPEnrolment{}, err
	}
	return TOTPEnrolment{Secret: key.Secret(), OTPAuthURL: key.URL(), QRPNGBase64: base64.StdEncoding.EncodeToString(buf.Bytes())}, nil
}

// ConfirmTOTP turns the app on with its first code and returns ten
// recovery codes, shown once.
func (s *Service) ConfirmTOTP(ctx context.Context, code string) ([]string, error) {
	u, err := s.Me(ctx)
	if err != nil {
		return nil, err
	}
	if u.TOTPSecret == nil || u.TOTPEnabledAt != nil {
		return nil, tenants.Errorf(tenants.EConflict, "no authenticator app enrolment is pending; start one first")
	}
	attempt, err := s.guard.Begin(ctx, guard.CodePerPhone, u.TenantID.String()+"/"+u.ID.String())
	if err != nil {
		return nil, err
	}
	ok, err := s.useTOTP(ctx, u, code)
	if err != nil {
		return nil, err
	}
	if !ok {
		if err := attempt.Failed(ctx); err != nil {
			return nil, err
		}
		return nil, tenants.Invalid(tenants.FieldError{Field: "code", Message: "is not the current code of the authenticator app"})
	}
	if err := attempt.Succeeded(ctx); err != nil {
		return nil, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	if err := tx.Model(&u).Update("totp_enabled_at", s.now()).Error; err != nil {
		return nil, fmt.Errorf("accounts: enable TOTP: %w", err)
	}
	codes, err := s.newRecoveryCodes(ctx, u)
	if err != nil {
		return nil, err
	}
	if err := s.securityChanged(ctx, u, "authenticator_app_enabled"); err != nil {
		return nil, err
	}
	return codes, nil
}

func (s *Service) newRecoveryCodes(ctx context.Context, u User) ([]string, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	if err := tx.Where("user_id = ?", u.ID).Delete(&recoveryCode{}).Error; err != nil {
		return nil, fmt.Errorf("accounts: clear recovery codes: %w", err)
	}
	codes := make([]string, recoveryCodeN)
	for i := range codes {
		b := make([]byte, 10) // 80 bits
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		c := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
		codes[i] = c[:4] + "-" + c[4:8] + "-" + c[8:12] + "-" + c[12:]
		rc := recoveryCode{TenantID: u.TenantID, ID: newID(), UserID: u.ID, CodeHash: s.recoveryHash(u.ID, codes[i]), CreatedAt: s.now()}
		if err := tx.Create(&rc).Error; err != nil {
			return nil, fmt.Errorf("accounts: store recovery code: %w", err)
		}
	}
	return codes, nil
}

// DisableTOTP goes back to codes by SMS.
func (s *Service) DisableTOTP(ctx context.Context, currentPassword string) error {
	u, err := s.reauthenticate(ctx, currentPassword)
	if err != nil {
		return err
	}
	if u.TOTPSecret == nil {
		return nil // nothing to remove, nothing to tell
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Model(&u).Updates(map[string]any{"totp_secret": nil, "totp_enabled_at": nil, "totp_last_step": nil}).Error; err != nil {
		return fmt.Errorf("accounts: disable TOTP: %w", err)
	}
	if err := tx.Where("user_id = ?", u.ID).Delete(&recoveryCode{}).Error; err != nil {
		return fmt.Errorf("accounts: clear recovery codes: %w", err)
	}
	return s.securityChanged(ctx, u, "authenticator_app_removed")
}

// reauthenticate returns the caller after checking the password again, as
// every sensitive change requires (ASVS V3.7.1).
func (s *Service) reauthenticate(ctx context.Context, password string) (User, error) {
	u, err := s.Me(ctx)
	if err != nil {
		return User{}, err
	}
	attempt, err := s.guard.Begin(ctx, guard.LoginAccount, u.TenantID.String()+":"+u.ID.String())
	if err != nil {
		return User{}, err
	}
	ok := false
	if u.PasswordHash != nil {
		if ok, err = s.hasher.Verify(ctx, *u.PasswordHash, password); err != nil {
			return User{}, err
		}
	}
	if !ok {
		if err := attempt.Failed(ctx); err != nil {
			return User{}, err
		}
		return User{}, tenants.Errorf(tenants.EForbidden, "the current password is wrong")
	}
	attempt.Succeeded(ctx)
	return u, nil
}

// securityChanged audits a change to how u signs in and tells u by email.
func (s *Service) securityChanged(ctx context.Context, u User, change string) error {
	p, _ := tenants.PrincipalFrom(ctx)
	actor := p.Actor()
	if p.UserID == uuid.Nil && p.APIKeyID == uuid.Nil {
		actor = "user:" + u.ID.String()
	}
	if err := audit.Record(ctx, actor, "user.security_changed", "user:"+u.ID.String(), map[string]string{"change": change}); err != nil {
		return err
	}
	_, err := s.msgs.Add(ctx, outboxSecurityNotice(u, change))
	return err
}

func outboxSecurityNotice(u User, change string) outbox.Message {
	return outbox.Message{Kind: "security_changed", Channel: outbox.Email, Recipient: u.Email,
		Data: map[string]string{"name": u.Name, "change": strings.ReplaceAll(change, "_", " ")}, Language: u.language()}
}

// auditAs records an entry in tenantID's log from outside a request
// transaction (a failed sign-in, which rolls its own work back).
func (s *Service) auditAs(ctx context.Context, tenantID uuid.UUID, actor, action, target string, details map[string]string) {
	err := s.scope.Do(ctx, tenantID, func(ctx context.Context) error {
		return audit.Record(ctx, actor, action, target, details)
	})
	if err != nil {
		s.log.WarnContext(ctx, "accounts: audit", "action", action, "err", err)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
