package visitors

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// Export is everything held about a visitor, as GET /visitors/{id}/export
// returns it.
type Export struct {
	ID          string          `json:"id"`
	ExportedAt  time.Time       `json:"exported_at"`
	Phones      []string        `json:"phones"`
	Emails      []string        `json:"emails"`
	Bookings    []BookingRecord `json:"bookings"`
	AliasCodes  []AliasRecord   `json:"alias_codes"`
	Users       []UserRecord    `json:"users"`
	Pickups     []PickupRecord  `json:"pickups_by_phone"`
	Messages    []MessageRecord `json:"messages"`
	Audit       []audit.Event   `json:"audit"`
	AuditCapped bool            `json:"audit_capped"`
	Notes       []string        `json:"notes"`
}

// BookingRecord is one access of the visitor, with its key and window.
type BookingRecord struct {
	ID           uuid.UUID  `json:"id"`
	Kind         string     `json:"kind"`
	Status       string     `json:"status"`
	KeyID        uuid.UUID  `json:"key_id"`
	KeyName      string     `json:"key_name"`
	BoxID        uuid.UUID  `json:"box_id"`
	BoxName      string     `json:"box_name"`
	VisitorName  string     `json:"visitor_name"`
	VisitorPhone *string    `json:"visitor_phone"`
	VisitorEmail *string    `json:"visitor_email"`
	NotifyVia    string     `json:"notify_via"`
	StartsAt     time.Time  `json:"starts_at"`
	EndsAt       *time.Time `json:"ends_at"`
	Hold         bool       `json:"hold"`
	ReleasedAt   *time.Time `json:"released_at"`
	RevokedAt    *time.Time `json:"revoked_at"`
	CreatedAt    time.Time  `json:"created_at"`
	LocationID   *uuid.UUID `json:"-"`
}

// AliasRecord is an alias code sent to the visitor (without its digits:
// an export travels, and the digits are a credential).
type AliasRecord struct {
	ID           uuid.UUID  `json:"id"`
	VisitorName  string     `json:"visitor_name"`
	VisitorPhone *string    `json:"visitor_phone"`
	VisitorEmail *string    `json:"visitor_email"`
	NotifyVia    string     `json:"notify_via"`
	BookingID    *uuid.UUID `json:"booking_id"`
	CreatedAt    time.Time  `json:"created_at"`
	SentAt       *time.Time `json:"sent_at"`
	RetiredAt    *time.Time `json:"retired_at"`
}

// UserRecord is a visitor account.
type UserRecord struct {
	ID         uuid.UUID  `json:"id"`
	Name       string     `json:"name"`
	Email      string     `json:"email"`
	Phone      *string    `json:"phone"`
	PINSet     bool       `json:"pin_set"`
	CreatedAt  time.Time  `json:"created_at"`
	DisabledAt *time.Time `json:"disabled_at"`
}

// PickupRecord is a pickup by phone number typed at a box.
type PickupRecord struct {
	ID        uuid.UUID  `json:"id"`
	BoxID     uuid.UUID  `json:"box_id"`
	Phone     string     `json:"phone"`
	Channel   string     `json:"channel"`
	CreatedAt time.Time  `json:"created_at"`
	UsedAt    *time.Time `json:"used_at"`
}

// MessageRecord is a message sent to the visitor: its delivery record, and
// its content while it is held (see KEYRELAY_RETAIN_MESSAGE_BODIES).
type MessageRecord struct {
	ID          uuid.UUID         `json:"id"`
	Kind        string            `json:"kind"`
	Channel     string            `json:"channel"`
	To          string            `json:"to"`
	Status      string            `json:"status"`
	Reason      *string           `json:"reason,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	SentAt      *time.Time        `json:"sent_at"`
	DeliveredAt *time.Time        `json:"delivered_at"`
	PurgedAt    *time.Time        `json:"purged_at"`
	Content     map[string]string `json:"content" gorm:"-"`
}

// credentialFields are message data that open a bin or a booking page:
// withheld from exports, which are documents that travel.
var credentialFields = []string{"code", "url", "link", "token", "pin"}

// auditCap bounds the audit entries of one export.
const auditCap = 5000

// records are a person's rows, read in ctx's tenant transaction.
type records struct {
	bookings   []BookingRecord
	aliases    []AliasRecord
	users      []UserRecord
	pickups    []PickupRecord
	messages   []MessageRecord
	staffUsers int
}

func (r records) targets() []string {
	var t []string
	for _, b := range r.bookings {
		t = append(t, "booking:"+b.ID.String())
	}
	for _, a := range r.aliases {
		t = append(t, "alias_code:"+a.ID.String())
	}
	for _, u := range r.users {
		t = append(t, "user:"+u.ID.String())
	}
	return t
}

// ids lists the plain ids that audit details name (booking, user,
// challenge); empty lists hold one impossible value, as in person.args.
func (r records) ids() []string {
	out := []string{"-"}
	for _, b := range r.bookings {
		out = append(out, b.ID.String())
	}
	for _, u := range r.users {
		out = append(out, u.ID.String())
	}
	for _, p := range r.pickups {
		out = append(out, p.ID.String())
	}
	return out
}

func load(ctx context.Context, who person) (records, error) {
	var r records
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return r, err
	}
	args := who.args()
	err = tx.Raw(`SELECT bk.id, bk.kind, bk.key_id, k.name AS key_name, bx.id AS box_id, bx.name AS box_name, bx.location_id,
			bk.visitor_name, bk.visitor_phone, bk.visitor_email, bk.notify_via, bk.starts_at, bk.ends_at, bk.hold,
			bk.released_at, bk.revoked_at, bk.created_at
		FROM bookings bk JOIN keys k ON k.tenant_id = bk.tenant_id AND k.id = bk.key_id
		JOIN boxes bx ON bx.tenant_id = k.tenant_id AND bx.id = k.home_box_id
		WHERE bk.visitor_phone IN @phones OR bk.visitor_email IN @emails ORDER BY bk.id`, args).Scan(&r.bookings).Error
	if err != nil {
		return r, wrap("load bookings", err)
	}
	err = tx.Raw(`SELECT id, visitor_name, visitor_phone, visitor_email, notify_via, booking_id, created_at, sent_at, retired_at
		FROM alias_codes WHERE visitor_phone IN @phones OR visitor_email IN @emails ORDER BY id`, args).Scan(&r.aliases).Error
	if err != nil {
		return r, wrap("load alias codes", err)
	}
	err = tx.Raw(`SELECT id, name, email, phone, pin_hash IS NOT NULL AS pin_set, created_at, disabled_at
		FROM users WHERE role = 'visitor' AND (phone IN @phones OR email IN @emails) ORDER BY id`, args).Scan(&r.users).Error
	if err != nil {
		return r, wrap("load visitor users", err)
	}
	var staff int64
	if err := tx.Raw(`SELECT count(*) FROM users WHERE role <> 'visitor' AND (phone IN @phones OR email IN @emails)`, args).Scan(&staff).Error; err != nil {
		return r, wrap("load staff users", err)
	}
	r.staffUsers = int(staff)
	err = tx.Raw(`SELECT id, box_id, phone, channel, created_at, used_at FROM pickup_challenges WHERE phone IN @phones ORDER BY id`, args).Scan(&r.pickups).Error
	if err != nil {
		return r, wrap("load pickups", err)
	}
	err = tx.Raw(`SELECT id, kind, channel, recipient AS "to", status, reason, created_at, sent_at, delivered_at, purged_at
		FROM outbox WHERE recipient IN @contacts ORDER BY id`, args).Scan(&r.messages).Error
	if err != nil {
		return r, wrap("load messages", err)
	}
	now := time.Now()
	for i, b := range r.bookings {
		r.bookings[i].Status = statusOf(b, now)
	}
	return r, nil
}

// statusOf is the booking's status as the bookings API names it.
func statusOf(b BookingRecord, now time.Time) string {
	switch {
	case b.RevokedAt != nil:
		return "revoked"
	case b.EndsAt != nil && !b.EndsAt.After(now):
		return "ended"
	case b.Hold && b.ReleasedAt == nil:
		return "held"
	case b.StartsAt.After(now):
		return "upcoming"
	default:
		return "active"
	}
}

// auditOf returns the ids of the audit entries that name the person: by
// target (their bookings, alias codes, accounts), as actor (their
// accounts), in details (a booking, user or pickup challenge of theirs),
// and pickups by phone that were refused before any challenge existed,
// which name only the last four digits.
func auditOf(ctx context.Context, who person, r records, limit int) ([]audit.Event, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	last4 := []string{"-"}
	for _, p := range who.phones {
		if len(p) > 4 {
			last4 = append(last4, p[len(p)-4:])
		}
	}
	targets := append([]string{"-"}, r.targets()...)
	var evs []audit.Event
	err = tx.Raw(`SELECT * FROM audit_events e
		WHERE e.target IN @targets OR e.actor IN @targets
		   OR e.details->>'booking' IN @ids OR e.details->>'user' IN @ids OR e.details->>'challenge' IN @ids
		   OR (e.action LIKE 'pickup.%' AND e.details->>'challenge' IS NULL AND e.details->>'phone_last4' IN @last4)
		ORDER BY e.id LIMIT @limit`,
		map[string]any{"targets": targets, "ids": r.ids(), "last4": last4, "limit": limit}).Scan(&evs).Error
	if err != nil {
		return nil, wrap("load audit entries", err)
	}
	for i := range evs {
		evs[i].CreatedAt = evs[i].CreatedAt.UTC()
	}
	return evs, nil
}

// Export returns everything held about visitor id, and audits the access
// request.
func (s *Service) Export(ctx context.Context, id string) (Export, error) {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return Export{}, err
	}
	c, err := s.resolve(ctx, id)
	if err != nil {
		return Export{}, err
	}
	who, err := personOf(ctx, c)
	if err != nil {
		return Export{}, err
	}
	r, err := load(ctx, who)
	if err != nil {
		return Export{}, err
	}
	evs, err := auditOf(ctx, who, r, auditCap+1)
	if err != nil {
		return Export{}, err
	}
	out := Export{ID: id, ExportedAt: s.now().UTC(), Phones: nonNil(who.phones), Emails: nonNil(who.emails),
		Bookings: r.bookings, AliasCodes: r.aliases, Users: r.users, Pickups: r.pickups, Messages: r.messages,
		Audit: evs, Notes: []string{
			"Message content is held for a limited time (purged_at says when it went); codes and links in it are withheld.",
			"Alias and booking code digits are withheld: they are credentials, not personal data.",
		}}
	if len(out.Audit) > auditCap {
		out.Audit, out.AuditCapped = out.Audit[:auditCap], true
	}
	for i, m := range out.Messages {
		if m.PurgedAt != nil {
			continue
		}
		row, err := s.d.Messages.Get(ctx, m.ID)
		if err != nil {
			return Export{}, wrap("open message", err)
		}
		content := map[string]string{}
		for k, v := range row.Data {
			if isCredential(k) {
				v = "[withheld]"
			}
			content[k] = v
		}
		out.Messages[i].Content = content
	}
	fillEmpty(&out)
	return out, audit.Record(ctx, p.Actor(), "visitor.exported", "visitor:"+id, map[string]string{
		"bookings": itoa(len(out.Bookings)), "messages": itoa(len(out.Messages)), "audit_entries": itoa(len(out.Audit))})
}

func isCredential(field string) bool {
	f := strings.ToLower(field)
	for _, c := range credentialFields {
		if f == c || strings.HasSuffix(f, "_"+c) {
			return true
		}
	}
	return false
}

func fillEmpty(e *Export) {
	if e.Bookings == nil {
		e.Bookings = []BookingRecord{}
	}
	if e.AliasCodes == nil {
		e.AliasCodes = []AliasRecord{}
	}
	if e.Users == nil {
		e.Users = []UserRecord{}
	}
	if e.Pickups == nil {
		e.Pickups = []PickupRecord{}
	}
	if e.Messages == nil {
		e.Messages = []MessageRecord{}
	}
	if e.Audit == nil {
		e.Audit = []audit.Event{}
	}
	for i := range e.Audit {
		if len(e.Audit[i].Details) == 0 {
			e.Audit[i].Details = json.RawMessage("{}")
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
