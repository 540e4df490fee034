// Package exchange is key exchange at the box: pickups with a booking or
// alias code, with a phone number and a second factor (a code sent by SMS
// or email, or a 4-digit PIN, as the tenant's policy says), dropoffs, and
// the box's reports of what its bins hold.
//
// Every call comes from a box (firmware/devices authenticated it; the
// principal carries its id) inside its tenant's transaction, so a box only
// ever sees its own tenant's rows (RLS), and every lookup below is further
// narrowed to keys in that box. The server decides times; the times a box
// reports are recorded next to them, never trusted.
//
// Answers are 200 with a result (open, challenge, pin_required, choose,
// denied and a reason) rather than 4xx: a denial is a normal outcome the
// box shows on its screen, and its transaction must commit (the audit
// entry, the attempt counters) like a success.
package exchange

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/accounts"
	"github.com/keyrelay/keyrelay/tenants/guard"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// Accounts is what exchange needs of tenants/accounts.
type Accounts interface {
	PolicyOf(ctx context.Context) (accounts.Policy, error)
	VerifyPIN(ctx context.Context, userID uuid.UUID, pin string) error
	AlertAdmins(ctx context.Context, kind string, data map[string]string) error
}

// Messages queues notifications in the caller's transaction.
type Messages interface {
	Add(ctx context.Context, m outbox.Message) (uuid.UUID, error)
}

// Hasher is the keyed hash codes are looked up by.
type Hasher interface {
	Hash(parts ...[]byte) []byte
}

// Config holds the SMS budgets of pickup codes and how long a dropoff
// keeps its bin.
type Config struct {
	SMSPerPhoneHour int64 // codes one phone may receive an hour, per booking
	SMSPerPhoneDay  int64
	SMSDailyBudget  int64 // the tenant's SMS a day
	ChallengeTTL    time.Duration
	// DropoffHold is how long the bin a dropoff was given stays reserved
	// for that key: long enough for a visitor to put the key in and shut
	// the door, short enough that an abandoned dropoff does not keep a bin.
	DropoffHold time.Duration
}

// DefaultConfig returns the numbers.
func DefaultConfig() Config {
	return Config{SMSPerPhoneHour: guard.SMSPerPhoneHour, SMSPerPhoneDay: guard.SMSPerPhoneDay, SMSDailyBudget: 1000, ChallengeTTL: 10 * time.Minute,
		DropoffHold: 10 * time.Minute}
}

// Commands reaches a box from afar (a booking-URL pickup).
type Commands interface {
	OpenBin(ctx context.Context, boxID uuid.UUID, bin int, accessID uuid.UUID) error
}

// Secrets gives the box secret K, for the screen code.
type Secrets interface {
	Secret(ctx context.Context, boxID uuid.UUID) ([]byte, error)
}

// Reminders follows an access's key out and back in for its return
// reminder (tenants/bookings): called off when the key comes back, queued
// again when the access takes it again; and keys that are now picked up
// at another box, which waiting reminders name.
type Reminders interface {
	KeysTaken(ctx context.Context, bookingIDs []uuid.UUID) error
	KeysReturned(ctx context.Context, bookingIDs []uuid.UUID) error
	KeysMoved(ctx context.Context, keyIDs []uuid.UUID) error
}

// Observer counts pickup outcomes (the platform's metrics). Only what the
// box was told is passed: a result and a denial reason, never a code.
type Observer interface {
	PickupOutcome(result, reason string)
}

// Deps are the service's collaborators. Observer may be nil.
type Deps struct {
	Accounts  Accounts
	Messages  Messages
	Keys      Hasher
	Guard     *guard.Guard
	Commands  Commands
	Secrets   Secrets
	Reminders Reminders
	Observer  Observer
}

// Service runs pickups, dropoffs and bin reports.
type Service struct {
	accounts  Accounts
	messages  Messages
	keys      Hasher
	guard     *guard.Guard
	commands  Commands
	secrets   Secrets
	reminders Reminders
	observer  Observer
	cfg       Config
	now       func() time.Time
}

// New returns the service.
func New(d Deps, cfg Config) *Service {
	if cfg.DropoffHold <= 0 {
		cfg.DropoffHold = DefaultConfig().DropoffHold
	}
	return &Service{accounts: d.Accounts, messages: d.Messages, keys: d.Keys, guard: d.Guard, commands: d.Commands, secrets: d.Secrets,
		reminders: d.Reminders, observer: d.Observer, cfg: cfg, now: time.Now}
}

// observe counts a pickup step's outcome once its transaction has committed:
// a step rolled back told the box nothing that stands.
func (s *Service) observe(ctx context.Context, res Result, err error) {
	if s.observer == nil || err != nil || res.Result == "" {
		return
	}
	tenants.AfterCommit(ctx, func() { s.observer.PickupOutcome(res.Result, res.Reason) })
}

// Result is what the box shows. Fields are set by result:
//   - open: Bin, KeyID, and AccessID when a booking allowed it
//   - challenge: ChallengeID, Channel (sms or email), Accesses when several
//   - pin_required: ChallengeID, Accesses when several
//   - choose: ChallengeID, Accesses (no second factor needed, which key?)
//   - denied: Reason, Message
type Result struct {
	Result      string     `json:"result"`
	Bin         *int       `json:"bin,omitempty"`
	KeyID       *uuid.UUID `json:"key_id,omitempty"`
	AccessID    *uuid.UUID `json:"access_id,omitempty"`
	ChallengeID *uuid.UUID `json:"challenge_id,omitempty"`
	Channel     string     `json:"channel,omitempty"`
	Accesses    []Choice   `json:"accesses,omitempty"`
	Reason      string     `json:"reason,omitempty"`
	Message     string     `json:"message,omitempty"`
}

// Choice is one key the caller may take at this box.
type Choice struct {
	KeyID    uuid.UUID  `json:"key_id"`
	KeyName  string     `json:"key_name"`
	Bin      int        `json:"bin"`
	AccessID *uuid.UUID `json:"access_id,omitempty"`
}

// Denial reasons.
const (
	UnknownCode = "unknown_code"
	NotStarted  = "not_started"
	Ended       = "ended"
	Revoked     = "revoked"
	WrongBox    = "wrong_box"
	OnHold      = "on_hold"
	KeyNotHere  = "key_not_here"
	NoAccess    = "no_access"
	WrongCode   = "wrong_code"
	WrongPIN    = "wrong_pin"
	NoPIN       = "pin_not_set"
	PINDisabled = "pin_disabled"
	Expired     = "challenge_expired"
	NotOut      = "key_not_out"
	NoFreeBin   = "no_free_bin"
	Locked      = "locked"
	UnknownKey  = "unknown_key"
	WrongScreen = "wrong_screen_code"
	BoxOffline  = "box_offline"
)

var messages = map[string]string{
	UnknownCode: "This code is not valid. Check it and try again.",
	NotStarted:  "Your access has not started yet.",
	Ended:       "Your access has ended. You can still drop the key off.",
	Revoked:     "This access was cancelled. Please contact the business.",
	WrongBox:    "This key is in another box.",
	OnHold:      "This booking is not ready yet. Please contact the business.",
	KeyNotHere:  "The key is not in this box right now. Please contact the business.",
	NoAccess:    "No key is waiting for this phone number here.",
	WrongCode:   "The code is not right. Try again.",
	WrongPIN:    "The PIN is not right. Try again.",
	NoPIN:       "No PIN is set for this phone number. Please contact the business.",
	PINDisabled: "This PIN is disabled after too many wrong tries. Please contact the business.",
	Expired:     "This request has expired. Start again.",
	NotOut:      "This key is not out: nothing to drop off.",
	NoFreeBin:   "No bin is free in this box. Please use another box.",
	Locked:      "This booking is locked after too many wrong tries. Please contact the business.",
	UnknownKey:  "This key is not known here. Please contact the business.",
	WrongScreen: "This is not the code on the box's screen now. Type the code the screen shows.",
	BoxOffline:  "The box is not connected right now. Enter your booking code on the box's keypad instead.",
}

func denied(reason string) Result {
	return Result{Result: "denied", Reason: reason, Message: messages[reason]}
}

func boxKey(p tenants.Principal) string { return p.TenantID.String() + "/" + p.BoxID.String() }

func errf(format string, args ...any) error { return fmt.Errorf("exchange: "+format, args...) }
