package visitors

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// EraseInput confirms an erasure.
type EraseInput struct {
	// Confirm is one of the visitor's phone numbers or email addresses, as
	// the visitor gave it in their request. The owner is already signed in
	// (with a second factor by default), so a password would prove nothing
	// more; typing the contact proves the owner acts on this visitor's
	// request and not on an id copied from the wrong line, and it cannot
	// be replayed for anyone else.
	Confirm string `json:"confirm"`
}

// Erased is what an erasure did.
type Erased struct {
	Pseudonym         string `json:"pseudonym"`
	Bookings          int    `json:"bookings"`
	AccessesRevoked   int    `json:"accesses_revoked"`
	AliasCodes        int    `json:"alias_codes"`
	AliasCodesRetired int    `json:"alias_codes_retired"`
	Users             int    `json:"users"`
	PickupsByPhone    int    `json:"pickups_by_phone"`
	Messages          int    `json:"messages"`
	MessagesCanceled  int    `json:"messages_canceled"`
	AuditEntries      int    `json:"audit_entries"`
}

// Erase removes visitor id's contact details and PIN from every record
// that holds them, in one transaction:
//
//   - live accesses are revoked and live alias codes retired, through the
//     booking service (reminders cancelled, keys out marked due now,
//     digits freed, each audited);
//   - bookings and alias codes keep their key, window and history but name
//     AnonymisedName, with no phone or email; the bundle triggers
//     (migration 00015) mark the boxes of those keys dirty, so the boxes'
//     offline bundles are rebuilt without the phone's verifier;
//   - visitor accounts lose name, email, phone, password, authenticator
//     and PIN, are disabled, and their sessions and challenges deleted;
//   - pickups by phone at a box forget the number;
//   - messages to them lose their recipient and content (queued ones are
//     cancelled first), the delivery record stays;
//   - audit entries that name them are pseudonymised (audit_pseudonymise):
//     identifying values replaced by a random pseudonym, the rest kept;
//   - the erasure itself is audited as visitor.erased under the pseudonym.
//
// What it cannot reach: copies outside the database (a provider's own
// logs, the recipient's phone, backups until they age out; see
// deploy/README.md) and Redis counters keyed by the phone number, which
// expire within a day.
func (s *Service) Erase(ctx context.Context, id string, in EraseInput) (Erased, error) {
	p, err := tenants.Require(ctx, tenants.RoleOwner)
	if err != nil {
		return Erased{}, err
	}
	c, err := s.resolve(ctx, id)
	if err != nil {
		return Erased{}, err
	}
	who, err := personOf(ctx, c)
	if err != nil {
		return Erased{}, err
	}
	if conf, ok := parseContact(in.Confirm); !ok || !who.has(conf) {
		return Erased{}, tenants.Invalid(tenants.FieldError{Field: "confirm", Message: "must be one of the visitor's phone numbers or email addresses"})
	}
	r, err := load(ctx, who)
	if err != nil {
		return Erased{}, err
	}
	if r.staffUsers > 0 {
		return Erased{}, tenants.Errorf(tenants.EConflict, "a member of staff has one of these contacts: change or remove that user first")
	}
	out := Erased{Pseudonym: newPseudonym(), Bookings: len(r.bookings), AliasCodes: len(r.aliases), Users: len(r.users),
		PickupsByPhone: len(r.pickups), Messages: len(r.messages)}
	now := s.now()
	for _, b := range r.bookings {
		if b.RevokedAt == nil && (b.EndsAt == nil || b.EndsAt.After(now)) {
			if err := s.d.Revoke(ctx, b.ID); err != nil {
				return Erased{}, wrap("revoke booking", err)
			}
			out.AccessesRevoked++
		}
	}
	for _, a := range r.aliases {
		if a.RetiredAt == nil {
			if err := s.d.RetireAlias(ctx, a.ID); err != nil {
				return Erased{}, wrap("retire alias code", err)
			}
			out.AliasCodesRetired++
		}
	}
	if out.MessagesCanceled, err = clearContacts(ctx, who, r, now); err != nil {
		return Erased{}, err
	}
	// Read after the revocations, so that their entries are pseudonymised
	// too.
	evs, err := auditOf(ctx, who, r, 1<<30)
	if err != nil {
		return Erased{}, err
	}
	if len(evs) > 0 {
		ids := make([]string, len(evs))
		for i, e := range evs {
			ids[i] = e.ID.String()
		}
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return Erased{}, err
		}
		if err := tx.Raw("SELECT audit_pseudonymise(?::uuid[], ?)", textArray(ids), out.Pseudonym).Scan(&out.AuditEntries).Error; err != nil {
			return Erased{}, wrap("pseudonymise audit entries", err)
		}
	}
	return out, audit.Record(ctx, p.Actor(), "visitor.erased", "visitor:"+out.Pseudonym, map[string]string{
		"visitor": out.Pseudonym, "bookings": itoa(out.Bookings), "accesses_revoked": itoa(out.AccessesRevoked),
		"alias_codes": itoa(out.AliasCodes), "users": itoa(out.Users), "messages": itoa(out.Messages),
		"audit_entries": itoa(out.AuditEntries)})
}

// clearContacts overwrites the person's contact details everywhere they are
// stored and reports how many queued messages it cancelled.
func clearContacts(ctx context.Context, who person, r records, now time.Time) (int, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return 0, err
	}
	args := who.args()
	args["now"], args["name"], args["erased"] = now, AnonymisedName, ErasedRecipient
	users := []uuid.UUID{uuid.Nil}
	for _, u := range r.users {
		users = append(users, u.ID)
	}
	args["users"] = users
	canceled := tx.Exec(`UPDATE outbox SET status = 'canceled', reason = 'visitor erased', updated_at = @now
		WHERE recipient IN @contacts AND status = 'queued'`, args)
	if canceled.Error != nil {
		return 0, wrap("cancel messages", canceled.Error)
	}
	for _, st := range []struct{ what, sql string }{
		{"erase messages", `UPDATE outbox SET recipient = @erased, payload = '\x'::bytea, purged_at = @now, updated_at = @now
			WHERE recipient IN @contacts`},
		{"anonymise bookings", `UPDATE bookings SET visitor_name = @name, visitor_phone = NULL, visitor_email = NULL,
			visitor_anonymised_at = @now, updated_at = @now WHERE visitor_phone IN @phones OR visitor_email IN @emails`},
		{"anonymise alias codes", `UPDATE alias_codes SET visitor_name = @name, visitor_phone = NULL, visitor_email = NULL,
			visitor_anonymised_at = @now WHERE visitor_phone IN @phones OR visitor_email IN @emails`},
		{"forget pickups by phone", `UPDATE pickup_challenges SET phone = @erased WHERE phone IN @phones`},
		{"end sessions", `DELETE FROM sessions WHERE user_id IN @users`},
		{"delete login challenges", `DELETE FROM login_challenges WHERE user_id IN @users`},
		{"delete recovery codes", `DELETE FROM recovery_codes WHERE user_id IN @users`},
		{"delete reset tokens", `DELETE FROM password_resets WHERE user_id IN @users`},
		// The email stays unique per tenant and visibly fake (.invalid is
		// reserved, RFC 2606).
		{"erase visitor users", `UPDATE users SET name = @name, email = 'erased-' || id || '@erased.invalid', phone = NULL,
			password_hash = NULL, totp_secret = NULL, totp_enabled_at = NULL, totp_last_step = NULL, pin_hash = NULL,
			pin_failures = 0, pin_disabled_at = NULL, disabled_at = coalesce(disabled_at, @now), updated_at = @now
			WHERE role = 'visitor' AND id IN @users`},
	} {
		if err := tx.Exec(st.sql, args).Error; err != nil {
			return 0, wrap(st.what, err)
		}
	}
	return int(canceled.RowsAffected), nil
}

// textArray renders a PostgreSQL array literal of plain tokens (uuids).
func textArray(vs []string) string {
	out := "{"
	for i, v := range vs {
		if i > 0 {
			out += ","
		}
		out += v
	}
	return out + "}"
}
