// Package bookings is who may take which key when: one-time bookings (a
// window with a start and an end), ongoing access (a start and no end),
// held bookings (created ahead, released by an integration once payment and
// checks are done), and alias codes (a code sent before any booking exists,
// which a booking later takes as its own).
//
// Every access has a numeric code (guard.BookingCodeDigits random digits, or
// its alias's) and a booking URL. Codes are unique among the tenant's live
// codes, booking and alias codes alike, and are stored only as a keyed hash
// and sealed (see migrations/00006_bookings.sql). Access instructions, return
// reminders and reminders about held bookings go out through the outbox, in
// the transaction of the change they report.
//
// Who may do what: staff and up (users and API keys). A staff user limited
// to some locations sees and manages only the bookings of keys whose home
// box is in one of them; anything else is answered like an unknown id. The
// check runs on every call, next to the tenant's.
package bookings

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/accounts"
	"github.com/keyrelay/keyrelay/tenants/guard"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// Kind is the kind of access.
type Kind string

const (
	OneTime Kind = "one_time"
	Ongoing Kind = "ongoing"
)

// Status is where an access stands now; it is computed from the stored
// times, never stored.
type Status string

const (
	Upcoming Status = "upcoming" // starts later
	Active   Status = "active"   // within its window
	Ended    Status = "ended"    // past ends_at: no pickup, dropoff still accepted
	Revoked  Status = "revoked"  // no pickup from the revocation on
	Held     Status = "held"     // created with hold and not released: opens nothing
)

// Booking is a stored access (the table is bookings for both kinds).
type Booking struct {
	TenantID       uuid.UUID `gorm:"primaryKey"`
	ID             uuid.UUID `gorm:"primaryKey"`
	KeyID          uuid.UUID
	Kind           Kind
	VisitorName    string
	VisitorPhone   *string
	VisitorEmail   *string
	NotifyVia      outbox.Channel
	StartsAt       time.Time
	EndsAt         *time.Time
	LiveFrom       time.Time
	ReturnReminder bool
	CodeID         uuid.UUID
	AliasCodeID    *uuid.UUID
	URLTokenHash   []byte
	URLTokenSealed []byte
	Hold           bool
	ReleasedAt     *time.Time
	SentAt         *time.Time
	ResentAt       *time.Time
	RevokedAt      *time.Time
	CreatedBy      string
	CreatedAt      time.Time
	UpdatedAt      time.Time
}

// held reports whether b still waits for its release.
func (b Booking) held() bool { return b.Hold && b.ReleasedAt == nil }

// live reports whether b may still be used for a pickup at some time:
// neither revoked nor ended. A held booking is live (it will open once
// released).
func (b Booking) live(now time.Time) bool {
	return b.RevokedAt == nil && (b.EndsAt == nil || b.EndsAt.After(now))
}

// StatusAt is b's status at now.
func (b Booking) StatusAt(now time.Time) Status {
	switch {
	case b.RevokedAt != nil:
		return Revoked
	case b.EndsAt != nil && !b.EndsAt.After(now):
		return Ended
	case b.held():
		return Held
	case b.StartsAt.After(now):
		return Upcoming
	default:
		return Active
	}
}

// statusSQL is StatusAt as a condition on the alias bk, with now as its
// only parameter; the list filter and StatusAt must agree.
var statusSQL = map[Status]string{
	Revoked:  "bk.revoked_at IS NOT NULL",
	Ended:    "bk.revoked_at IS NULL AND bk.ends_at <= @now",
	Held:     "bk.revoked_at IS NULL AND (bk.ends_at IS NULL OR bk.ends_at > @now) AND bk.hold AND bk.released_at IS NULL",
	Upcoming: "bk.revoked_at IS NULL AND (bk.ends_at IS NULL OR bk.ends_at > @now) AND NOT (bk.hold AND bk.released_at IS NULL) AND bk.starts_at > @now",
	Active:   "bk.revoked_at IS NULL AND (bk.ends_at IS NULL OR bk.ends_at > @now) AND NOT (bk.hold AND bk.released_at IS NULL) AND bk.starts_at <= @now",
}

// liveSQL is Booking.live on the alias bk.
const liveSQL = "bk.revoked_at IS NULL AND (bk.ends_at IS NULL OR bk.ends_at > @now)"

// Messages is where access instructions and reminders go (the outbox).
type Messages interface {
	Add(ctx context.Context, m outbox.Message) (uuid.UUID, error)
	// Company is the tenant's name, as messages are signed.
	Company(ctx context.Context) (string, error)
	Reschedule(ctx context.Context, id uuid.UUID, notBefore, deadline time.Time) error
	Cancel(ctx context.Context, ids ...uuid.UUID) error
	Statuses(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]outbox.Status, error)
}

// Keys protects codes: a keyed hash for lookups, sealing for showing them.
type Keys interface {
	Seal(plaintext, context []byte) ([]byte, error)
	Open(sealed, context []byte) ([]byte, error)
	Hash(parts ...[]byte) []byte
}

// Config holds the booking rules operators may tune.
type Config struct {
	BaseURL string // booking URLs are built from this only
	// ResendAfter is how long after instructions went out they may be sent
	// again (creation, release or the last resend).
	ResendAfter time.Duration
	// ReminderClock is the local time of day, in the box's zone, at which
	// the return reminder goes out on the day access ends.
	ReminderClock time.Duration
	// HeldGrace delays the reminder about a held booking that is created
	// already past its start, so that an integration releasing it within
	// minutes causes no alert.
	HeldGrace time.Duration
}

// DefaultConfig returns the rules of issue 6.
func DefaultConfig(baseURL string) Config {
	return Config{BaseURL: strings.TrimRight(baseURL, "/"), ResendAfter: time.Hour, ReminderClock: 9 * time.Hour, HeldGrace: 15 * time.Minute}
}

// Deps are what the booking service is built on.
type Deps struct {
	Keys     Keys
	Messages Messages
	Locks    Locks
	Replica  Replica // may be nil: the list reads in the request's transaction
}

// Replica runs read-only work on a streaming replica of the database (the
// app's KEYRELAY_DATABASE_REPLICA_URL): fn gets a context whose tenant
// transaction is a read-only one on the replica, for the tenant of ctx,
// once the replica holds everything committed before the call; a replica
// that lags or fails is read around, on the primary in ctx. fn may run
// twice and must only read.
type Replica interface {
	Read(ctx context.Context, fn func(ctx context.Context) error) error
}

// Locks clears the failure counters of a booking that too many wrong
// codes or PINs locked (tenants/guard).
type Locks interface {
	Reset(ctx context.Context, r guard.Rule, key string) error
}

// Service implements the booking and alias-code calls. Every method runs in
// the tenant transaction of its context (the request's, or one opened with
// tenants.Scope.Do), so a change, its outbox rows and its audit entry commit
// together.
type Service struct {
	keys  Keys
	locks Locks
	msgs  Messages
	repl  Replica // nil: none
	cfg   Config
	now   func() time.Time
}

// NewService wires the booking service.
func NewService(d Deps, cfg Config) (*Service, error) {
	if d.Keys == nil || d.Messages == nil || d.Locks == nil {
		return nil, errors.New("bookings: Keys, Messages and Locks are required")
	}
	if cfg.ResendAfter <= 0 || cfg.ReminderClock < 0 || cfg.ReminderClock >= 24*time.Hour {
		return nil, errors.New("bookings: ResendAfter must be positive and ReminderClock a time of day")
	}
	return &Service{keys: d.Keys, msgs: d.Messages, locks: d.Locks, repl: d.Replica, cfg: cfg, now: time.Now}, nil
}

func newID() uuid.UUID { return uuid.Must(uuid.NewV7()) }

func wrap(what string, err error) error { return fmt.Errorf("bookings: %s: %w", what, err) }

// staff returns the caller when it may manage bookings.
func staff(ctx context.Context) (tenants.Principal, error) {
	return tenants.Require(ctx, tenants.RoleStaff)
}

// keyRef is what bookings need of a key: its name; the box where its code
// opens it (pickupBoxSQL) with that box's name, address and zone, which
// every text names and every window is shown in; and the location of its
// home box, which decides who sees the booking.
type keyRef struct {
	ID          uuid.UUID
	Name        string
	BoxID       uuid.UUID
	BoxName     string
	BoxAddress  string
	BoxTimezone string
	LocationID  *uuid.UUID
}

// The box a key k can be picked up at: the box whose bin holds it (a
// visitor may have dropped it off at another box, and a code opens only
// the box holding the key, tenants/exchange), else, while it is out or
// missing, its home box bx, where it is expected back; bx's location
// decides who sees the key. pickupBoxSQL joins the box holding it as cb
// (none while out) and pickupBoxColumns choose between the two. A join on
// an equality keeps the planner's row estimates, which a join on the CASE
// itself lost: the list with a status filter then sorted every live
// booking of the tenant instead of walking the newest (3 ms, not 1).
const (
	pickupBoxSQL     = "LEFT JOIN boxes cb ON cb.tenant_id = k.tenant_id AND cb.id = k.box_id AND k.state = 'in_bin'"
	pickupBoxColumns = `CASE WHEN cb.id IS NULL THEN bx.id ELSE cb.id END AS box_id, CASE WHEN cb.id IS NULL THEN bx.name ELSE cb.name END AS box_name,
		CASE WHEN cb.id IS NULL THEN bx.address ELSE cb.address END AS box_address, CASE WHEN cb.id IS NULL THEN bx.timezone ELSE cb.timezone END AS box_timezone`
)

// location is the box's time zone; a zone the server does not know (the
// inventory validates them) falls back to UTC rather than failing a booking.
func (k keyRef) location() *time.Location {
	if loc, err := time.LoadLocation(k.BoxTimezone); err == nil {
		return loc
	}
	return time.UTC
}

// liveKey returns a key that is not archived and that p sees. With share,
// it takes a share lock on the key row until the transaction ends: deleting
// a key (inventory, after LiveAccessCount) waits for a booking being
// created on it, and a booking waits for a deletion in progress, then finds
// no key.
func liveKey(ctx context.Context, p tenants.Principal, id uuid.UUID, share bool) (keyRef, bool, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return keyRef{}, false, err
	}
	q := `SELECT k.id, k.name, ` + pickupBoxColumns + `, bx.location_id
		FROM keys k JOIN boxes bx ON bx.tenant_id = k.tenant_id AND bx.id = k.home_box_id
		` + pickupBoxSQL + `
		WHERE k.id = ? AND k.deleted_at IS NULL`
	if share {
		q += " FOR SHARE OF k"
	}
	var rows []keyRef
	err = tx.Raw(q, id).Scan(&rows).Error
	if err != nil {
		return keyRef{}, false, wrap("load key", err)
	}
	if len(rows) == 0 || !p.Sees(rows[0].LocationID) {
		return keyRef{}, false, nil
	}
	return rows[0], true, nil
}

// Visitor is the person an access or alias code is for.
type Visitor struct {
	Name  string  `json:"name"`
	Phone *string `json:"phone"`
	Email *string `json:"email"`
}

// validate cleans v and checks that it can be reached on via; field names
// are prefixed with "visitor.".
func (v *Visitor) validate(val *tenants.Validator, via outbox.Channel) {
	name, ok := cleanName(v.Name)
	val.Check(ok, "visitor.name", "is required (at most 200 characters, no control characters)")
	v.Name = name
	if v.Phone != nil && *v.Phone == "" {
		v.Phone = nil
	}
	if v.Email != nil && *v.Email == "" {
		v.Email = nil
	}
	if v.Phone != nil {
		val.Check(accounts.ValidPhone(*v.Phone), "visitor.phone", "must be in E.164 form, e.g. +14155550100")
	}
	if v.Email != nil {
		email, ok := accounts.NormalizeEmail(*v.Email)
		val.Check(ok, "visitor.email", "must be a valid email address")
		v.Email = &email
	}
	switch via {
	case outbox.SMS:
		val.Check(v.Phone != nil, "visitor.phone", "is required to notify the visitor by SMS")
	case outbox.Email:
		val.Check(v.Email != nil, "visitor.email", "is required to notify the visitor by email")
	default:
		checkChannel(val, via)
	}
}

func checkChannel(val *tenants.Validator, via outbox.Channel) {
	val.Check(via == outbox.SMS || via == outbox.Email, "notify_via", "must be sms or email")
}

// recipient is the visitor's address on via.
func recipient(phone, email *string, via outbox.Channel) string {
	if via == outbox.SMS && phone != nil {
		return *phone
	}
	if email != nil {
		return *email
	}
	return ""
}

// cleanName trims s and reports whether it is a usable name: 1 to 200
// characters, no control characters (names end up in SMS texts).
func cleanName(s string) (string, bool) {
	s = strings.TrimSpace(s)
	n := utf8.RuneCountInString(s)
	return s, n >= 1 && n <= 200 && utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl)
}

// parseTime reads an RFC 3339 time given as field; "" when absent.
func parseTime(val *tenants.Validator, field string, s *string) *time.Time {
	if s == nil {
		return nil
	}
	t, err := time.Parse(time.RFC3339, *s)
	if err != nil {
		val.Add(field, "must be an RFC 3339 time, e.g. 2026-05-01T10:00:00Z")
		return nil
	}
	return &t
}

// violates reports whether err is PostgreSQL refusing a row under the named
// constraint (code 23P01 exclusion, 23505 unique).
func violates(err error, code, constraint string) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == code && pg.ConstraintName == constraint
}

func notFound(err error) bool { return errors.Is(err, gorm.ErrRecordNotFound) }
