package exchange

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/accounts"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/bookings"
	"github.com/keyrelay/keyrelay/tenants/guard"
	"github.com/keyrelay/keyrelay/tenants/inventory"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// PickupInput is what a visitor typed at the box: a booking or alias code,
// or a phone number (an access code).
type PickupInput struct {
	Code  string `json:"code,omitempty"`
	Phone string `json:"phone,omitempty"`
	// BoxTime is the box's clock, recorded beside the server's time.
	BoxTime *time.Time `json:"box_time,omitempty"`
}

// Pickup starts or completes a pickup.
func (s *Service) Pickup(ctx context.Context, in PickupInput) (res Result, err error) {
	defer func() { s.observe(ctx, res, err) }()
	p, err := tenants.RequireBox(ctx)
	if err != nil {
		return Result{}, err
	}
	code, phone := strings.TrimSpace(in.Code), strings.TrimSpace(in.Phone)
	switch {
	case code != "" && phone == "":
		return s.pickupByCode(ctx, p, code, in.BoxTime)
	case phone != "" && code == "":
		if !accounts.ValidPhone(phone) {
			return Result{}, tenants.Invalid(tenants.FieldError{Field: "phone", Message: "must be in E.164 form, e.g. +14155550100"})
		}
		return s.pickupByPhone(ctx, p, phone, in.BoxTime)
	default:
		return Result{}, tenants.Invalid(tenants.FieldError{Field: "code", Message: "send either code or phone"})
	}
}

// grant is a booking found by its code, with its key.
type grant struct {
	BookingID uuid.UUID
	KeyID     uuid.UUID
	KeyName   string
	StartsAt  time.Time
	EndsAt    *time.Time
	RevokedAt *time.Time
	Held      bool
	KeyState  string
	KeyBoxID  *uuid.UUID
	KeyBin    *int
	Locked    bool
	// LastSeenAt is when the key's box last called (booking-URL pickups
	// only).
	LastSeenAt *time.Time
}

// grantByCode finds the booking a code opens: the live one when the code
// (an alias) served several bookings in turn, else the newest.
func grantByCode(ctx context.Context, hash []byte, now time.Time) (grant, bool, error) {
	var g grant
	err := tenants.QueryRow(ctx, `SELECT b.id, b.key_id, k.name, b.starts_at, b.ends_at, b.revoked_at,
			(b.hold AND b.released_at IS NULL), k.state, k.box_id, k.bin, b.locked_at IS NOT NULL
		FROM codes c
		JOIN bookings b ON b.tenant_id = c.tenant_id AND b.code_id = c.id
		JOIN keys k ON k.tenant_id = b.tenant_id AND k.id = b.key_id AND k.deleted_at IS NULL
		WHERE c.code_hash = $1 AND c.freed_at IS NULL
		ORDER BY (b.revoked_at IS NULL AND NOT (b.hold AND b.released_at IS NULL) AND b.starts_at <= $2 AND (b.ends_at IS NULL OR b.ends_at > $2)) DESC, b.id DESC
		LIMIT 1`, hash, now).
		Scan(&g.BookingID, &g.KeyID, &g.KeyName, &g.StartsAt, &g.EndsAt, &g.RevokedAt, &g.Held, &g.KeyState, &g.KeyBoxID, &g.KeyBin, &g.Locked)
	if errors.Is(err, sql.ErrNoRows) {
		return grant{}, false, nil
	}
	if err != nil {
		return grant{}, false, errf("find code: %w", err)
	}
	return g, true, nil
}

// refusal says why a grant does not open anything now, or "".
func (g grant) refusal(now time.Time) string {
	switch {
	case g.RevokedAt != nil:
		return Revoked
	case g.Held:
		return OnHold
	case now.Before(g.StartsAt):
		return NotStarted
	case g.EndsAt != nil && !now.Before(*g.EndsAt):
		return Ended
	}
	return ""
}

func (s *Service) pickupByCode(ctx context.Context, p tenants.Principal, code string, boxTime *time.Time) (Result, error) {
	now := s.now()
	var g grant
	found := false
	if digitsOnly(code) && len(code) >= 6 && len(code) <= 16 {
		var err error
		if g, found, err = grantByCode(ctx, bookings.CodeHash(s.keys, p.TenantID, code), now); err != nil {
			return Result{}, err
		}
	}
	// A right code at the wrong box counts like a wrong one: it tells the
	// caller that the code is live somewhere.
	wrongBox := found && g.KeyState == "in_bin" && g.KeyBoxID != nil && *g.KeyBoxID != p.BoxID
	// Every attempt at the box passes the box's limit before anything of
	// its outcome is answered, so a guesser's burst is cut at the limit
	// whatever the codes (guard.BoxCooldown); a box in its cool-down
	// refuses a right code too. The code was looked up first so that the
	// outcome is counted in one round trip (guard.Count).
	//
	// The route may read the box's credential with the lookup (devices,
	// CheckWithFirstStatement); a code that was not looked up has not had
	// it read yet, and a revoked box counts nothing.
	if err := tenants.Verify(ctx); err != nil {
		return Result{}, err
	}
	reached, err := s.guard.Count(ctx, guard.BoxCooldown, boxKey(p), !found || wrongBox)
	if err != nil {
		return Result{}, err
	}
	if !found || wrongBox {
		if err := s.cooledDown(ctx, p, reached); err != nil {
			return Result{}, err
		}
		reason, details := UnknownCode, map[string]string(nil)
		if found {
			reason, details = WrongBox, map[string]string{"booking": g.BookingID.String(), "key": g.KeyID.String()}
		}
		return denied(reason), s.record(ctx, p, "pickup.denied", "code", boxTime, mergeDetails(details, map[string]string{"reason": reason}))
	}
	details := map[string]string{"booking": g.BookingID.String(), "key": g.KeyID.String()}
	reason := g.refusal(now)
	if reason == "" && g.Locked {
		reason = Locked
	}
	if reason == "" && (g.KeyState != "in_bin" || g.KeyBin == nil) {
		reason = KeyNotHere
	}
	if reason != "" {
		return denied(reason), s.record(ctx, p, "pickup.denied", "code", boxTime, mergeDetails(details, map[string]string{"reason": reason}))
	}
	bin := *g.KeyBin
	details["bin"] = strconv.Itoa(bin)
	if err := s.record(ctx, p, "pickup.opened", "code", boxTime, details); err != nil {
		return Result{}, err
	}
	return Result{Result: "open", Bin: &bin, KeyID: &g.KeyID, AccessID: &g.BookingID}, nil
}

// failedAtBox counts a failure at the box and, when it is the one that puts
// the box into its cool-down, alerts the tenant's admins once.
func (s *Service) failedAtBox(ctx context.Context, p tenants.Principal, att *guard.Attempt) error {
	if err := att.Failed(ctx); err != nil {
		return err
	}
	return s.cooledDown(ctx, p, att.Reached())
}

// cooledDown alerts the tenant's admins and audits when reached: the
// failure just counted put the box into its cool-down.
func (s *Service) cooledDown(ctx context.Context, p tenants.Principal, reached bool) error {
	if !reached {
		return nil
	}
	n := guard.BoxCooldown.Hard
	if err := s.alertStaff(ctx, "box_cooldown", map[string]string{"box": inventory.BoxName(ctx, p.BoxID), "minutes": strconv.Itoa(int(guard.BoxCooldown.Window.Minutes())), "failures": strconv.Itoa(n)}); err != nil {
		return err
	}
	return audit.Record(ctx, p.Actor(), "box.cooldown_started", "box:"+p.BoxID.String(), map[string]string{"failures": strconv.Itoa(n)})
}

func digitsOnly(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

func mergeDetails(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// record writes the step to the tenant's audit trail: who (the box, and
// the access or user), which key, which bin, how verified, and the box's
// own clock beside the server's.
func (s *Service) record(ctx context.Context, p tenants.Principal, action, method string, boxTime *time.Time, details map[string]string) error {
	d := mergeDetails(details, map[string]string{"method": method})
	if boxTime != nil {
		d["box_time"] = boxTime.UTC().Format(time.RFC3339)
	}
	return audit.Record(ctx, p.Actor(), action, "box:"+p.BoxID.String(), d)
}

// challenge is a stored pickup by phone number.
type challenge struct {
	TenantID   uuid.UUID `gorm:"primaryKey"`
	ID         uuid.UUID `gorm:"primaryKey"`
	BoxID      uuid.UUID
	Phone      string
	UserID     *uuid.UUID
	Channel    string
	CodeHash   []byte
	Candidates json.RawMessage `gorm:"type:jsonb"`
	CreatedAt  time.Time
	ExpiresAt  time.Time
	UsedAt     *time.Time
}

func (challenge) TableName() string { return "pickup_challenges" }

// staffUser is a member of staff found by phone number.
type staffUser struct {
	ID   uuid.UUID
	Role tenants.Role
}

func (s *Service) pickupByPhone(ctx context.Context, p tenants.Principal, phone string, boxTime *time.Time) (Result, error) {
	// Before the box's attempt counter: see pickupByCode.
	if err := tenants.Verify(ctx); err != nil {
		return Result{}, err
	}
	att, err := s.guard.Begin(ctx, guard.BoxCooldown, boxKey(p))
	if err != nil {
		return Result{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Result{}, err
	}
	now := s.now()
	policy, err := s.accounts.PolicyOf(ctx)
	if err != nil {
		return Result{}, err
	}
	var choices []Choice
	var user *staffUser
	var su staffUser
	err = tx.Raw(`SELECT id, role FROM users WHERE phone = ? AND role IN ('owner', 'admin', 'staff') AND disabled_at IS NULL ORDER BY id LIMIT 1`, phone).Take(&su).Error
	switch {
	case err == nil:
		user = &su
		choices, err = s.staffChoices(ctx, p, su)
	case errors.Is(err, gorm.ErrRecordNotFound):
		choices, err = visitorChoices(ctx, p.BoxID, phone, now)
	}
	if err != nil {
		return Result{}, errf("find accesses: %w", err)
	}
	details := map[string]string{"phone_last4": last4(phone)}
	if len(choices) == 0 {
		if err := s.failedAtBox(ctx, p, att); err != nil {
			return Result{}, err
		}
		return denied(NoAccess), s.record(ctx, p, "pickup.denied", "phone", boxTime, mergeDetails(details, map[string]string{"reason": NoAccess}))
	}
	if err := att.Succeeded(ctx); err != nil {
		return Result{}, err
	}

	// The second factor the policy asks for.
	channel := policy.VisitorPickups
	if user != nil {
		details["user"] = user.ID.String()
		channel = "sms"
		// The policy exempts the owner's own number only: an admin's or a
		// staff member's number is no secret either, and would otherwise
		// open every key in the box to whoever typed it.
		if !policy.OwnerPickups2FA && user.Role == tenants.RoleOwner {
			channel = "none"
		}
	}
	var pinUser *uuid.UUID
	if channel == "pin" {
		var u struct{ ID uuid.UUID }
		err := tx.Raw(`SELECT id FROM users WHERE phone = ? AND pin_hash IS NOT NULL AND disabled_at IS NULL ORDER BY id LIMIT 1`, phone).Scan(&u).Error
		if err != nil {
			return Result{}, errf("find PIN: %w", err)
		}
		id := u.ID
		if id == uuid.Nil {
			return denied(NoPIN), s.record(ctx, p, "pickup.denied", "phone", boxTime, mergeDetails(details, map[string]string{"reason": NoPIN}))
		}
		pinUser = &id
	}
	recipient := phone
	if channel == "email" {
		recipient = visitorEmail(ctx, choices)
		if recipient == "" {
			channel, recipient = "sms", phone // no address on file: the phone still proves possession
		}
	}
	raw, _ := json.Marshal(choices)
	c := challenge{TenantID: p.TenantID, ID: uuid.Must(uuid.NewV7()), BoxID: p.BoxID, Phone: phone, Channel: channel,
		Candidates: raw, CreatedAt: now, ExpiresAt: now.Add(s.cfg.ChallengeTTL)}
	if user != nil {
		c.UserID = &user.ID
	}
	if pinUser != nil {
		c.UserID = pinUser
	}
	var code string
	if channel == "sms" || channel == "email" {
		if channel == "sms" {
			if err := s.spendSMS(ctx, p.TenantID, phone, choices); err != nil {
				return Result{}, err
			}
		}
		if code, err = sixDigits(); err != nil {
			return Result{}, err
		}
		c.CodeHash = s.codeHash(c.ID, code)
	}
	if err := tx.Create(&c).Error; err != nil {
		return Result{}, errf("store challenge: %w", err)
	}
	if code != "" {
		ch := outbox.SMS
		if channel == "email" {
			ch = outbox.Email
		}
		if _, err := s.messages.Add(ctx, outbox.Message{Kind: "exchange_code", Channel: ch, Recipient: recipient, Priority: outbox.Critical,
			Data: map[string]string{"code": code, "key": keyNames(choices), "box": inventory.BoxName(ctx, p.BoxID)}}); err != nil {
			return Result{}, err
		}
	}
	details["challenge"] = c.ID.String()
	details["channel"] = channel
	if err := s.record(ctx, p, "pickup.challenged", "phone", boxTime, details); err != nil {
		return Result{}, err
	}
	res := Result{ChallengeID: &c.ID}
	if len(choices) > 1 || channel == "none" {
		res.Accesses = choices
	}
	switch channel {
	case "pin":
		res.Result = "pin_required"
	case "none":
		if len(choices) == 1 {
			// Nothing to ask: open at once (the tenant turned 2FA off).
			return s.open(ctx, p, c, choices[0], "phone", boxTime)
		}
		res.Result = "choose"
	default:
		res.Result, res.Channel = "challenge", channel
	}
	return res, nil
}

// visitorChoices are the keys in this box that the phone number's live
// accesses allow, one per key.
func visitorChoices(ctx context.Context, boxID uuid.UUID, phone string, now time.Time) ([]Choice, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var rows []struct {
		KeyID    uuid.UUID
		KeyName  string
		Bin      int
		AccessID uuid.UUID
	}
	err = tx.Raw(`SELECT DISTINCT ON (k.id) k.id AS key_id, k.name AS key_name, k.bin, b.id AS access_id
		FROM bookings b JOIN keys k ON k.tenant_id = b.tenant_id AND k.id = b.key_id
		WHERE b.visitor_phone = ? AND b.revoked_at IS NULL AND NOT (b.hold AND b.released_at IS NULL)
		  AND b.starts_at <= ? AND (b.ends_at IS NULL OR b.ends_at > ?)
		  AND k.deleted_at IS NULL AND k.state = 'in_bin' AND k.box_id = ?
		ORDER BY k.id, b.id DESC`, phone, now, now, boxID).Scan(&rows).Error
	if err != nil {
		return nil, err
	}
	out := make([]Choice, len(rows))
	for i, r := range rows {
		out[i] = Choice{KeyID: r.KeyID, KeyName: r.KeyName, Bin: r.Bin, AccessID: &r.AccessID}
	}
	return out, nil
}

// staffChoices are the keys in this box a member of staff may take: all of
// them, within the locations the user is limited to.
func (s *Service) staffChoices(ctx context.Context, p tenants.Principal, u staffUser) ([]Choice, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var rows []Choice
	err = tx.Raw(`SELECT k.id AS key_id, k.name AS key_name, k.bin
		FROM keys k JOIN boxes bx ON bx.tenant_id = k.tenant_id AND bx.id = k.box_id
		WHERE k.box_id = ? AND k.state = 'in_bin' AND k.deleted_at IS NULL
		  AND (? IN ('owner', 'admin')
		       OR NOT EXISTS (SELECT 1 FROM user_locations ul WHERE ul.user_id = ?)
		       OR bx.location_id IN (SELECT location_id FROM user_locations ul WHERE ul.user_id = ?))
		ORDER BY k.bin`, p.BoxID, string(u.Role), u.ID, u.ID).Scan(&rows).Error
	return rows, err
}

func visitorEmail(ctx context.Context, choices []Choice) string {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return ""
	}
	for _, c := range choices {
		if c.AccessID == nil {
			continue
		}
		var email *string
		if tx.Raw(`SELECT visitor_email FROM bookings WHERE id = ?`, *c.AccessID).Scan(&email).Error == nil && email != nil && *email != "" {
			return *email
		}
	}
	return ""
}

// spendSMS applies the SMS budgets: per phone and booking an hour (so one
// visitor's budget is per access), per phone a day, per tenant a day.
func (s *Service) spendSMS(ctx context.Context, tenantID uuid.UUID, phone string, choices []Choice) error {
	booking := "staff"
	if len(choices) > 0 && choices[0].AccessID != nil {
		booking = choices[0].AccessID.String()
	}
	base := tenantID.String() + "/" + phone
	if err := s.guard.Spend(ctx, "pickup-sms-booking-hour", s.cfg.SMSPerPhoneHour, time.Hour, base+"/"+booking); err != nil {
		return err
	}
	if err := s.guard.Spend(ctx, "pickup-sms-phone-day", s.cfg.SMSPerPhoneDay, 24*time.Hour, base); err != nil {
		return err
	}
	return s.guard.Spend(ctx, "sms-tenant-day", s.cfg.SMSDailyBudget, 24*time.Hour, tenantID.String())
}

func keyNames(cs []Choice) string {
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = c.KeyName
	}
	return strings.Join(names, ", ")
}

func last4(phone string) string {
	if len(phone) <= 4 {
		return phone
	}
	return phone[len(phone)-4:]
}

func (s *Service) codeHash(challengeID uuid.UUID, code string) []byte {
	return s.keys.Hash([]byte("pickup-code"), challengeID[:], []byte(code))
}

func sixDigits() (string, error) {
	n, err := rand.Int(rand.Reader, big.NewInt(1_000_000))
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%06d", n.Int64()), nil
}

// VerifyInput completes a pickup by phone number.
type VerifyInput struct {
	ChallengeID uuid.UUID  `json:"challenge_id"`
	Code        string     `json:"code,omitempty"`
	PIN         string     `json:"pin,omitempty"`
	KeyID       *uuid.UUID `json:"key_id,omitempty"`
	BoxTime     *time.Time `json:"box_time,omitempty"`
}

// Verify checks the second factor of a pickup by phone and opens the bin
// of the chosen key.
func (s *Service) Verify(ctx context.Context, in VerifyInput) (res Result, err error) {
	defer func() { s.observe(ctx, res, err) }()
	p, err := tenants.RequireBox(ctx)
	if err != nil {
		return Result{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Result{}, err
	}
	var c challenge
	err = tx.Set("gorm:query_option", "FOR UPDATE").Where("id = ? AND box_id = ?", in.ChallengeID, p.BoxID).Take(&c).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return Result{}, tenants.NotFound("challenge")
	}
	if err != nil {
		return Result{}, errf("load challenge: %w", err)
	}
	details := map[string]string{"challenge": c.ID.String(), "phone_last4": last4(c.Phone)}
	if c.UsedAt != nil || !s.now().Before(c.ExpiresAt) {
		return denied(Expired), s.record(ctx, p, "pickup.denied", c.Channel, in.BoxTime, mergeDetails(details, map[string]string{"reason": Expired}))
	}
	var choices []Choice
	if err := json.Unmarshal(c.Candidates, &choices); err != nil {
		return Result{}, errf("candidates: %w", err)
	}
	choice, ok := pick(choices, in.KeyID)
	if !ok {
		return Result{}, tenants.Invalid(tenants.FieldError{Field: "key_id", Message: "choose one of the challenge's keys"})
	}
	if reason, err := s.stillAllowed(ctx, c, choice); err != nil {
		return Result{}, err
	} else if reason != "" {
		return denied(reason), s.record(ctx, p, "pickup.denied", c.Channel, in.BoxTime, mergeDetails(details, map[string]string{"reason": reason}))
	}
	switch c.Channel {
	case "sms", "email":
		if !digitsOnly(in.Code) || len(in.Code) != 6 {
			return Result{}, tenants.Invalid(tenants.FieldError{Field: "code", Message: "must be the 6-digit code that was sent"})
		}
		// Per code (its tries) and per phone number (its daily budget of
		// failures), counted before the check.
		perCode, err := s.guard.Begin(ctx, guard.CodeTries, p.TenantID.String()+"/pickup/"+c.ID.String())
		if err != nil {
			return Result{}, err
		}
		perPhone, err := s.guard.Begin(ctx, guard.CodePerPhone, p.TenantID.String()+"/"+c.Phone)
		if err != nil {
			return Result{}, errors.Join(err, perCode.Failed(ctx))
		}
		if !hmac.Equal(c.CodeHash, s.codeHash(c.ID, in.Code)) {
			if err := errors.Join(perCode.Failed(ctx), perPhone.Failed(ctx)); err != nil {
				return Result{}, err
			}
			if err := s.bookingFailure(ctx, p, choices); err != nil {
				return Result{}, err
			}
			return denied(WrongCode), s.record(ctx, p, "pickup.denied", c.Channel, in.BoxTime, mergeDetails(details, map[string]string{"reason": WrongCode}))
		}
		if err := errors.Join(perCode.Succeeded(ctx), perPhone.Succeeded(ctx)); err != nil {
			return Result{}, err
		}
	case "pin":
		// Format only: a common PIN typed here is a guess to count, not a
		// PIN to refuse setting (accounts.CheckPIN).
		if !digitsOnly(in.PIN) || len(in.PIN) != 4 {
			return Result{}, tenants.Invalid(tenants.FieldError{Field: "pin", Message: "must be 4 digits"})
		}
		att, err := s.guard.Begin(ctx, guard.BoxCooldown, boxKey(p))
		if err != nil {
			return Result{}, err
		}
		// Per PIN, whichever box it is tried at: a growing pause after
		// each wrong one past the third in a row, so its ten tries before
		// it is disabled take hours, not seconds.
		perPIN, err := s.guard.Begin(ctx, guard.PIN, guard.PINSubject(p.TenantID.String(), c.UserID.String()))
		if errors.Is(err, guard.ErrHardLimit) {
			att.Succeeded(ctx)
			return denied(PINDisabled), s.record(ctx, p, "pickup.denied", "pin", in.BoxTime, mergeDetails(details, map[string]string{"reason": PINDisabled}))
		}
		if err != nil {
			return Result{}, errors.Join(err, att.Succeeded(ctx))
		}
		err = s.accounts.VerifyPIN(ctx, *c.UserID, in.PIN)
		switch {
		case errors.Is(err, accounts.ErrWrongPIN):
			if err := errors.Join(perPIN.Failed(ctx), s.failedAtBox(ctx, p, att)); err != nil {
				return Result{}, err
			}
			if err := s.bookingFailure(ctx, p, choices); err != nil {
				return Result{}, err
			}
			return denied(WrongPIN), s.record(ctx, p, "pickup.denied", "pin", in.BoxTime, mergeDetails(details, map[string]string{"reason": WrongPIN}))
		case errors.Is(err, accounts.ErrPINDisabled):
			if err := errors.Join(perPIN.Failed(ctx), att.Succeeded(ctx)); err != nil {
				return Result{}, err
			}
			return denied(PINDisabled), s.record(ctx, p, "pickup.denied", "pin", in.BoxTime, mergeDetails(details, map[string]string{"reason": PINDisabled}))
		case err != nil:
			return Result{}, err
		}
		if err := errors.Join(perPIN.Succeeded(ctx), att.Succeeded(ctx)); err != nil {
			return Result{}, err
		}
	case "none":
	}
	return s.open(ctx, p, c, choice, c.Channel, in.BoxTime)
}

// stillAllowed says why the access a challenge was made for no longer
// opens anything (or ""): up to ten minutes pass between the two steps, in
// which staff may revoke, hold or shorten the booking, or disable the
// member of staff whose number it was. The booking is read FOR SHARE, so
// a revoke either is seen here or waits for this pickup to be recorded.
func (s *Service) stillAllowed(ctx context.Context, c challenge, choice Choice) (string, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return "", err
	}
	if choice.AccessID == nil {
		var n int64
		if err := tx.Raw(`SELECT count(*) FROM users WHERE id = ? AND role IN ('owner', 'admin', 'staff') AND disabled_at IS NULL`, c.UserID).Scan(&n).Error; err != nil {
			return "", errf("check user: %w", err)
		}
		if n == 0 {
			return NoAccess, nil
		}
		return "", nil
	}
	var g grant
	err = tx.Raw(`SELECT starts_at, ends_at, revoked_at, (hold AND released_at IS NULL) AS held, locked_at IS NOT NULL AS locked
		FROM bookings WHERE id = ? FOR SHARE`, *choice.AccessID).Take(&g).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return NoAccess, nil
	}
	if err != nil {
		return "", errf("check booking: %w", err)
	}
	if reason := g.refusal(s.now()); reason != "" {
		return reason, nil
	}
	if g.Locked {
		return Locked, nil
	}
	return "", nil
}

func pick(choices []Choice, keyID *uuid.UUID) (Choice, bool) {
	if keyID == nil {
		if len(choices) == 1 {
			return choices[0], true
		}
		return Choice{}, false
	}
	for _, c := range choices {
		if c.KeyID == *keyID {
			return c, true
		}
	}
	return Choice{}, false
}

// open completes a pickup by phone: the challenge is used up, and the key
// must still be in this box (it may have left since the challenge).
func (s *Service) open(ctx context.Context, p tenants.Principal, c challenge, choice Choice, method string, boxTime *time.Time) (Result, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Result{}, err
	}
	if err := tx.Model(&challenge{}).Where("id = ?", c.ID).Update("used_at", s.now()).Error; err != nil {
		return Result{}, errf("use challenge: %w", err)
	}
	var bin *int
	if err := tx.Raw(`SELECT bin FROM keys WHERE id = ? AND box_id = ? AND state = 'in_bin' AND deleted_at IS NULL`, choice.KeyID, p.BoxID).Scan(&bin).Error; err != nil {
		return Result{}, errf("find key: %w", err)
	}
	details := map[string]string{"challenge": c.ID.String(), "key": choice.KeyID.String(), "phone_last4": last4(c.Phone)}
	if choice.AccessID != nil {
		details["booking"] = choice.AccessID.String()
	}
	if c.UserID != nil {
		details["user"] = c.UserID.String()
	}
	if bin == nil {
		return denied(KeyNotHere), s.record(ctx, p, "pickup.denied", method, boxTime, mergeDetails(details, map[string]string{"reason": KeyNotHere}))
	}
	details["bin"] = strconv.Itoa(*bin)
	if err := s.record(ctx, p, "pickup.opened", method, boxTime, details); err != nil {
		return Result{}, err
	}
	return Result{Result: "open", Bin: bin, KeyID: &choice.KeyID, AccessID: choice.AccessID}, nil
}

// bookingFailure counts a wrong second factor against each booking the
// challenge was for (guard.BookingCode): after ten, the booking locks and
// the tenant's admins are told once.
func (s *Service) bookingFailure(ctx context.Context, p tenants.Principal, choices []Choice) error {
	for _, c := range choices {
		if c.AccessID == nil {
			continue
		}
		key := guard.BookingSubject(p.TenantID.String(), c.AccessID.String())
		att, err := s.guard.Begin(ctx, guard.BookingCode, key)
		if err != nil {
			continue // already locked: the refusal above is what counts
		}
		if err := att.Failed(ctx); err != nil {
			return err
		}
		if n := guard.BookingCode.Hard; att.Reached() {
			if err := bookings.Lock(ctx, *c.AccessID, s.now()); err != nil {
				return err
			}
			if err := s.alertStaff(ctx, "booking_locked", map[string]string{"key": c.KeyName, "booking": c.AccessID.String(), "failures": strconv.Itoa(n)}); err != nil {
				return err
			}
			if err := audit.Record(ctx, p.Actor(), "booking.locked", "booking:"+c.AccessID.String(), map[string]string{"failures": strconv.Itoa(n)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// alertStaff tells the tenant's owners and admins.
func (s *Service) alertStaff(ctx context.Context, kind string, data map[string]string) error {
	return s.accounts.AlertAdmins(ctx, kind, data)
}
