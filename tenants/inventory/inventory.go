// Package inventory is what a tenant keeps in its boxes: locations that
// group boxes, boxes with numbered bins, and keys (on anonymous fobs) with a
// home bin and a whereabouts. It also writes the key data sheet, the CSV a
// business prints to find its keys during an outage.
//
// Who may do what: every staff user reads; staff create, edit and delete
// keys (front-desk work); admins and owners manage boxes and locations (they
// are installations). A staff user limited to some locations sees and
// manages only the boxes of those locations and the keys whose home is one
// of those boxes; anything else is answered like an unknown id. The check
// runs on every call, next to the tenant's.
package inventory

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

	"github.com/keyrelay/keyrelay/tenants"
)

// AccessChecker is what inventory asks of, and tells, a key's accesses
// (bookings and ongoing access, tenants/bookings): LiveAccessCount counts
// those that have not ended and were not revoked (a key with any is not
// deleted); AccessEnd says when an access on the key ends (nil: ongoing
// access), so that a key staff record as handed to a visitor becomes
// overdue like one taken at the box, and answers not found when accessID
// is not an access on keyID that the caller sees. KeysReturned and
// KeysTaken let an access's return reminder follow a key that staff
// record as back or handed over, as it follows the box's reports.
type AccessChecker interface {
	LiveAccessCount(ctx context.Context, keyID uuid.UUID) (int, error)
	AccessEnd(ctx context.Context, keyID, accessID uuid.UUID) (*time.Time, error)
	KeysReturned(ctx context.Context, accessIDs []uuid.UUID) error
	KeysTaken(ctx context.Context, accessIDs []uuid.UUID) error
	// KeysMoved: the box these keys are picked up at, or its name,
	// address or time zone, changed; waiting reminders name it and were
	// timed in its zone.
	KeysMoved(ctx context.Context, keyIDs []uuid.UUID) error
}

// Service implements the inventory calls. Every method runs in the tenant
// transaction of its context.
type Service struct {
	access AccessChecker
	now    func() time.Time
}

// NewService builds the service. access is required: without it a key with
// live bookings could be deleted from under them.
func NewService(access AccessChecker) (*Service, error) {
	if access == nil {
		return nil, errors.New("inventory: an AccessChecker is required")
	}
	return &Service{access: access, now: time.Now}, nil
}

func newID() uuid.UUID { return uuid.Must(uuid.NewV7()) }

// Limits of the text fields, as the schema checks them.
const (
	maxName    = 200
	maxAddress = 500
	maxBins    = 500
)

// cleanName trims s and reports whether it is a usable name: 1 to 200
// characters, none of them control characters (names end up in CSV cells,
// SMS texts and printed sheets).
func cleanName(s string) (string, bool) {
	s = strings.TrimSpace(s)
	n := utf8.RuneCountInString(s)
	return s, n >= 1 && n <= maxName && utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl)
}

// cleanAddress trims s and reports whether it is a usable address: at most
// 500 characters; line breaks are allowed, other control characters not.
func cleanAddress(s string) (string, bool) {
	s = strings.TrimSpace(s)
	ok := utf8.RuneCountInString(s) <= maxAddress && utf8.ValidString(s) &&
		!strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) && r != '\n' && r != '\r' })
	return s, ok
}

// parseRef reads an id given in a request body; "" when absent.
func parseRef(s string) (uuid.UUID, bool) {
	id, err := uuid.Parse(s)
	return id, err == nil && id != uuid.Nil
}

// uniqueViolation reports whether err is PostgreSQL refusing a duplicate in
// the named unique index: the explicit checks before a write name the
// conflicting row, this catches the race between two writers.
func uniqueViolation(err error, index string) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == "23505" && pg.ConstraintName == index
}

// staff returns the caller when it may read the inventory or manage keys.
func staff(ctx context.Context) (tenants.Principal, error) {
	return tenants.Require(ctx, tenants.RoleStaff)
}

// admin returns the caller when it may manage boxes and locations.
func admin(ctx context.Context) (tenants.Principal, error) {
	return tenants.Require(ctx, tenants.RoleAdmin)
}

func wrap(what string, err error) error { return fmt.Errorf("inventory: %s: %w", what, err) }
