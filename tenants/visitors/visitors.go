// Package visitors treats a tenant's visitors as data subjects: finding
// one, exporting everything held about them (an access request), erasing
// them on request, and anonymising the visitors of accesses that ended
// long ago (the retention job calls AnonymiseEnded).
//
// # Who a visitor is
//
// There is no visitor table: a visitor is a phone number or an email
// address as it appears on bookings, alias codes, visitor users (role
// visitor, with their PIN), pickups by phone at a box and messages. Two
// contacts recorded together on one booking, alias code or visitor user
// are the same person, so a visitor is the set of contacts linked that way
// to the one searched for (at most maxContacts).
//
// A visitor's id is a keyed hash (HMAC under the server secret) of the
// tenant and the normalised contact: stable, so a link to it keeps
// working, and revealing nothing without the key. It is resolved by
// hashing the tenant's distinct contacts of that kind (phones or emails)
// until one matches: a linear scan, acceptable for a call made a few
// times a year per tenant; an index table of hashes would be the next
// step for tenants with millions of contacts.
//
// # Who may do what
//
// Staff and up search (GET /visitors?q=, an exact phone or email); a staff
// user limited to locations finds only visitors with a booking there.
// Admins and up export (the export includes messages and audit entries,
// which are admin reads). Only an owner erases, confirming with one of the
// visitor's contacts (see Erase).
package visitors

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/accounts"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// AnonymisedName replaces a visitor's name on every record that no longer
// names them (erased on request or anonymised by retention).
const AnonymisedName = "Anonymised visitor"

// ErasedRecipient replaces the recipient of an erased visitor's messages.
const ErasedRecipient = "erased"

// maxContacts bounds the linked contacts of one visitor: more means
// records shared between people (a front desk's number typed for every
// guest), and erasing them all at once would erase others too.
const maxContacts = 20

// Hasher is the keyed hash behind visitor ids (tenants/secretbox).
type Hasher interface {
	Hash(parts ...[]byte) []byte
}

// Messages reads a message's body while it is held (tenants/outbox).
type Messages interface {
	Get(ctx context.Context, id uuid.UUID) (outbox.Row, error)
}

// Deps are what the service is built on. Revoke and RetireAlias are the
// booking service's own calls, so that erasing a visitor ends their
// accesses exactly as staff would: reminders cancelled, the key's
// out_until set, the alias code's digits freed, each audited.
type Deps struct {
	Hasher      Hasher
	Messages    Messages
	Revoke      func(ctx context.Context, bookingID uuid.UUID) error
	RetireAlias func(ctx context.Context, aliasID uuid.UUID) error
}

// Service implements the visitor calls, each in ctx's tenant transaction.
type Service struct {
	d   Deps
	now func() time.Time
}

// New returns the service.
func New(d Deps) (*Service, error) {
	if d.Hasher == nil || d.Messages == nil || d.Revoke == nil || d.RetireAlias == nil {
		return nil, errors.New("visitors: Hasher, Messages, Revoke and RetireAlias are required")
	}
	return &Service{d: d, now: time.Now}, nil
}

func wrap(what string, err error) error { return fmt.Errorf("visitors: %s: %w", what, err) }

// kind is what a contact is.
type kind byte

const (
	phone kind = 'p'
	email kind = 'e'
)

// contact is a normalised phone number (E.164) or email address.
type contact struct {
	kind  kind
	value string
}

// parseContact normalises s, or says what is wrong with it.
func parseContact(s string) (contact, bool) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "+") {
		return contact{phone, s}, accounts.ValidPhone(s)
	}
	e, ok := accounts.NormalizeEmail(s)
	return contact{email, e}, ok
}

// idOf is the visitor id of c in tenant: "v" + kind + 32 hex digits.
func (s *Service) idOf(tenantID uuid.UUID, c contact) string {
	h := s.d.Hasher.Hash([]byte("keyrelay visitor id v1"), tenantID[:], []byte{byte(c.kind)}, []byte(c.value))
	return "v" + string(c.kind) + hex.EncodeToString(h[:16])
}

// resolve finds the contact behind id among the tenant's contacts of its
// kind. An id that matches none is not found, like any unknown id.
func (s *Service) resolve(ctx context.Context, id string) (contact, error) {
	tenantID, _ := tenants.TenantOf(ctx)
	if len(id) != 34 || id[0] != 'v' || (id[1] != byte(phone) && id[1] != byte(email)) {
		return contact{}, tenants.NotFound("visitor")
	}
	if _, err := hex.DecodeString(id[2:]); err != nil {
		return contact{}, tenants.NotFound("visitor")
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return contact{}, err
	}
	var q string
	if kind(id[1]) == phone {
		q = `SELECT visitor_phone FROM bookings WHERE visitor_phone IS NOT NULL
			UNION SELECT visitor_phone FROM alias_codes WHERE visitor_phone IS NOT NULL
			UNION SELECT phone FROM users WHERE role = 'visitor' AND phone IS NOT NULL
			UNION SELECT phone FROM pickup_challenges
			UNION SELECT recipient FROM outbox WHERE channel = 'sms' AND purged_at IS NULL`
	} else {
		q = `SELECT visitor_email FROM bookings WHERE visitor_email IS NOT NULL
			UNION SELECT visitor_email FROM alias_codes WHERE visitor_email IS NOT NULL
			UNION SELECT email FROM users WHERE role = 'visitor'
			UNION SELECT recipient FROM outbox WHERE channel = 'email' AND purged_at IS NULL`
	}
	rows, err := tx.Raw(q).Rows()
	if err != nil {
		return contact{}, wrap("resolve visitor", err)
	}
	defer rows.Close()
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return contact{}, wrap("resolve visitor", err)
		}
		if c := (contact{kind(id[1]), v}); s.idOf(tenantID, c) == id {
			return c, nil
		}
	}
	if err := rows.Err(); err != nil {
		return contact{}, wrap("resolve visitor", err)
	}
	return contact{}, tenants.NotFound("visitor")
}

// person is a visitor's linked contacts.
type person struct {
	phones, emails []string
}

func (p person) has(c contact) bool {
	if c.kind == phone {
		return slices.Contains(p.phones, c.value)
	}
	return slices.Contains(p.emails, c.value)
}

func (p *person) add(c contact) bool {
	if c.value == "" || p.has(c) {
		return false
	}
	if c.kind == phone {
		p.phones = append(p.phones, c.value)
	} else {
		p.emails = append(p.emails, c.value)
	}
	return true
}

func (p person) contacts() []string { return append(slices.Clone(p.phones), p.emails...) }

// args are the named parameters of the queries over a person's records.
// An empty list is given as one impossible value: IN () is not SQL.
func (p person) args() map[string]any {
	orNone := func(vs []string) []string {
		if len(vs) == 0 {
			return []string{"-"}
		}
		return vs
	}
	return map[string]any{"phones": orNone(p.phones), "emails": orNone(p.emails), "contacts": orNone(p.contacts())}
}

// personOf follows the links from c: every booking, alias code and visitor
// user with one of the person's contacts adds its other contact.
func personOf(ctx context.Context, c contact) (person, error) {
	var p person
	p.add(c)
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return p, err
	}
	for {
		var links []struct{ Phone, Email *string }
		err := tx.Raw(`SELECT visitor_phone AS phone, visitor_email AS email FROM bookings WHERE visitor_phone IN @phones OR visitor_email IN @emails
			UNION SELECT visitor_phone, visitor_email FROM alias_codes WHERE visitor_phone IN @phones OR visitor_email IN @emails
			UNION SELECT phone, email FROM users WHERE role = 'visitor' AND (phone IN @phones OR email IN @emails)`, p.args()).Scan(&links).Error
		if err != nil {
			return p, wrap("link contacts", err)
		}
		grew := false
		for _, l := range links {
			if l.Phone != nil && p.add(contact{phone, *l.Phone}) {
				grew = true
			}
			if l.Email != nil && p.add(contact{email, *l.Email}) {
				grew = true
			}
		}
		if len(p.phones)+len(p.emails) > maxContacts {
			return p, tenants.Errorf(tenants.EConflict, "this contact is linked to more than %d others through shared bookings; it is not one person's", maxContacts)
		}
		if !grew {
			return p, nil
		}
	}
}

// Summary is a visitor as the search shows it.
type Summary struct {
	ID         string   `json:"id"`
	Phones     []string `json:"phones"`
	Emails     []string `json:"emails"`
	Bookings   int      `json:"bookings"`
	AliasCodes int      `json:"alias_codes"`
	// VisitorUser: the visitor has a visitor account (and maybe a PIN).
	VisitorUser bool `json:"visitor_user"`
	// StaffAccount: a member of staff has one of these contacts; such a
	// visitor cannot be erased here (remove or change the staff user).
	StaffAccount bool `json:"staff_account"`
}

// Search finds the visitor with exactly the phone number or email q.
func (s *Service) Search(ctx context.Context, q string) ([]Summary, error) {
	p, err := tenants.Require(ctx, tenants.RoleStaff)
	if err != nil {
		return nil, err
	}
	c, ok := parseContact(q)
	if !ok {
		return nil, tenants.Invalid(tenants.FieldError{Field: "q", Message: "must be a phone number in E.164 form (+14155550100) or an email address"})
	}
	who, err := personOf(ctx, c)
	if err != nil {
		return nil, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	args := who.args()
	var n struct{ Bookings, Aliases, Visitors, Staff, Seen int }
	args["limited"], args["locations"] = p.Limited(), append([]uuid.UUID{uuid.Nil}, p.Locations...)
	err = tx.Raw(`SELECT
		(SELECT count(*) FROM bookings bk JOIN keys k ON k.tenant_id = bk.tenant_id AND k.id = bk.key_id
		   JOIN boxes bx ON bx.tenant_id = k.tenant_id AND bx.id = k.home_box_id
		 WHERE (bk.visitor_phone IN @phones OR bk.visitor_email IN @emails) AND (NOT @limited OR bx.location_id IN @locations)) AS bookings,
		(SELECT count(*) FROM alias_codes WHERE visitor_phone IN @phones OR visitor_email IN @emails) AS aliases,
		(SELECT count(*) FROM users WHERE role = 'visitor' AND (phone IN @phones OR email IN @emails)) AS visitors,
		(SELECT count(*) FROM users WHERE role <> 'visitor' AND (phone IN @phones OR email IN @emails)) AS staff,
		(SELECT count(*) FROM outbox WHERE recipient IN @contacts) + (SELECT count(*) FROM pickup_challenges WHERE phone IN @phones) AS seen`, args).Scan(&n).Error
	if err != nil {
		return nil, wrap("search", err)
	}
	if n.Bookings+n.Aliases+n.Visitors+n.Seen == 0 || (p.Limited() && n.Bookings == 0) {
		return []Summary{}, nil
	}
	return []Summary{{ID: s.idOf(p.TenantID, c), Phones: nonNil(who.phones), Emails: nonNil(who.emails), Bookings: n.Bookings,
		AliasCodes: n.Aliases, VisitorUser: n.Visitors > 0, StaffAccount: n.Staff > 0}}, nil
}

func nonNil(vs []string) []string {
	if vs == nil {
		return []string{}
	}
	return vs
}

// newPseudonym names an erased visitor in the audit log from now on: random,
// so nothing, not even the server's key, links it back to the contacts.
func newPseudonym() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return "visitor-" + hex.EncodeToString(b[:])
}
