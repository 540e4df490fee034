// Package outbox is how domain code asks for a message to be sent: it writes
// a row in the same transaction as the change the message reports, so the
// message exists exactly when the change committed. The relay in jobs/
// delivers the rows; nothing here talks to a provider.
package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/tenants"
)

// Channel is how a message reaches its recipient.
type Channel string

const (
	SMS   Channel = "sms"
	Email Channel = "email"
)

// Priority orders delivery: security codes never wait behind reminders.
type Priority string

const (
	Critical Priority = "critical" // login and key-exchange codes
	Normal   Priority = "default"
	Low      Priority = "low" // reminders
)

// Message is what domain code asks to send: a kind that selects the template,
// and the template's data. Data may hold secrets (links, codes): it is sealed
// at rest.
type Message struct {
	Kind      string
	Channel   Channel
	Recipient string
	Data      map[string]string
	Language  string   // "en" or "fr"; empty means the tenant's default
	Priority  Priority // empty means Normal
	// NotBefore holds the message until then (reminders); zero sends now.
	NotBefore time.Time
	// Deadline, when set, is when the message stops being of use (a
	// return reminder once the access has ended): quiet hours never hold
	// it until then. Zero: no deadline.
	Deadline time.Time
	// TimeZone is the recipient's (the box's) IANA zone, for quiet hours.
	TimeZone string
}

// Status is where a message is on its way.
type Status string

const (
	Queued    Status = "queued"
	Sent      Status = "sent"
	Delivered Status = "delivered"
	Failed    Status = "failed"
)

// Row is a stored outbox entry with its data opened.
type Row struct {
	ID                uuid.UUID
	TenantID          uuid.UUID
	Kind              string
	Channel           Channel
	Recipient         string
	Data              map[string]string
	Language          string
	Priority          Priority
	Status            Status
	Provider          string
	ProviderMessageID string
	Attempts          int
	Reason            string
	CreatedAt         time.Time
	RelayedAt         *time.Time
	SentAt            *time.Time
	DeliveredAt       *time.Time
	NotBefore         *time.Time
	ScheduleRev       int
}

// Sealer encrypts payloads bound to their row.
type Sealer interface {
	Seal(plaintext, context []byte) ([]byte, error)
	Open(sealed, context []byte) ([]byte, error)
}

// Outbox writes and reads outbox rows inside tenant-scoped transactions.
type Outbox struct {
	sealer Sealer
	waker  Waker
	trace  WriteTracer
}

// WriteTracer opens the span of one message's write in ctx's transaction
// and returns its W3C traceparent ("" when ctx is not traced), which the
// row keeps so the relay and the delivery continue the trace, and the
// function that ends the span.
type WriteTracer func(ctx context.Context) (traceparent string, end func(err error))

// Waker tells the relay that messages are waiting. The outbox calls it
// after the transaction that wrote them has committed, so the relay never
// looks before the rows are there. (A PostgreSQL NOTIFY from a trigger did
// this before, but every transaction that notifies takes one global lock
// at commit: bookings and pickups were serialised behind it.)
type Waker interface {
	Wake(ctx context.Context)
}

// wakeKey makes the wake-up one per transaction, however many rows it wrote.
type wakeKey struct{}

// Option configures an Outbox.
type Option func(*Outbox)

// WithWaker wakes the relay on commit; without one the relay finds new
// rows at its next poll.
func WithWaker(w Waker) Option { return func(o *Outbox) { o.waker = w } }

// WithWriteTracer makes each write a span (tracing on).
func WithWriteTracer(t WriteTracer) Option { return func(o *Outbox) { o.trace = t } }

// New returns an outbox sealing payloads with s.
func New(s Sealer, opts ...Option) *Outbox {
	o := &Outbox{sealer: s}
	for _, opt := range opts {
		opt(o)
	}
	return o
}

type record struct {
	TenantID          uuid.UUID `gorm:"primaryKey"`
	ID                uuid.UUID `gorm:"primaryKey"`
	Kind              string
	Channel           string
	Recipient         string
	Payload           []byte
	Language          string
	Priority          string
	Status            string
	Provider          *string
	ProviderMessageID *string
	Attempts          int
	Reason            *string
	CreatedAt         time.Time
	RelayedAt         *time.Time
	SentAt            *time.Time
	DeliveredAt       *time.Time
	UpdatedAt         time.Time
	NotBefore         *time.Time
	TimeZone          *string
	ScheduleRev       int
	ClaimedBy         *string
	ClaimExpiresAt    *time.Time
}

func (record) TableName() string { return "outbox" }

func sealContext(tenantID, id uuid.UUID) []byte {
	return []byte("outbox:" + tenantID.String() + ":" + id.String())
}

// Add writes m in ctx's tenant transaction and returns its id, which later
// becomes the delivery task's id and the provider's idempotency key.
func (o *Outbox) Add(ctx context.Context, m Message) (_ uuid.UUID, err error) {
	tenantID, ok := tenants.TenantOf(ctx)
	if !ok {
		return uuid.Nil, errors.New("outbox: no tenant transaction in context")
	}
	if m.Channel != SMS && m.Channel != Email {
		return uuid.Nil, fmt.Errorf("outbox: unknown channel %q", m.Channel)
	}
	if m.Recipient == "" || m.Kind == "" {
		return uuid.Nil, fmt.Errorf("outbox: message needs a kind and a recipient")
	}
	if m.TimeZone != "" {
		if _, err := time.LoadLocation(m.TimeZone); err != nil {
			return uuid.Nil, fmt.Errorf("outbox: time zone %q: %w", m.TimeZone, err)
		}
	}
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.Nil, err
	}
	plain, err := json.Marshal(m.Data)
	if err != nil {
		return uuid.Nil, fmt.Errorf("outbox: encode data: %w", err)
	}
	sealed, err := o.sealer.Seal(plain, sealContext(tenantID, id))
	if err != nil {
		return uuid.Nil, fmt.Errorf("outbox: seal: %w", err)
	}
	if m.Priority == "" {
		m.Priority = Normal
	}
	now := time.Now()
	var notBefore *time.Time
	// The tenant's settings matter only for a message without a language
	// or one that may have to wait out quiet hours; codes skip the query.
	if m.Language == "" || m.Priority == Low {
		s, err := o.SettingsOf(ctx)
		if err != nil {
			return uuid.Nil, err
		}
		if m.Language == "" {
			m.Language = s.DefaultLanguage
		}
		if notBefore, err = schedule(m, s, now); err != nil {
			return uuid.Nil, err
		}
	} else if m.NotBefore.After(now) {
		notBefore = &m.NotBefore
	}
	if m.Language != "fr" {
		m.Language = "en"
	}
	var tz *string
	if m.TimeZone != "" {
		tz = &m.TimeZone
	}
	// The row goes with the transaction's next statement or its COMMIT, in
	// the same round trip (tenants.ExecLater): a booking writes two or
	// three messages and reads none of them back. A failure still fails
	// the transaction.
	var traceParent *string
	if o.trace != nil {
		tp, end := o.trace(ctx)
		defer func() { end(err) }()
		if tp != "" {
			traceParent = &tp
		}
	}
	if err := tenants.ExecLater(ctx, `INSERT INTO outbox (tenant_id, id, kind, channel, recipient, payload, language, priority, status, created_at, updated_at, not_before, time_zone, trace_parent)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`,
		tenantID, id, m.Kind, string(m.Channel), m.Recipient, sealed, m.Language, string(m.Priority), string(Queued), now, now, notBefore, tz, traceParent); err != nil {
		return uuid.Nil, fmt.Errorf("outbox: insert: %w", err)
	}
	if o.waker != nil {
		tenants.AfterCommitOnce(ctx, wakeKey{}, func() { o.waker.Wake(context.WithoutCancel(ctx)) })
	}
	return id, nil
}

// List returns ctx's tenant's rows, newest first, with their data opened.
func (o *Outbox) List(ctx context.Context, limit int) ([]Row, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var recs []record
	if err := tx.Order("id DESC").Limit(limit).Find(&recs).Error; err != nil {
		return nil, fmt.Errorf("outbox: list: %w", err)
	}
	return o.openAll(recs)
}

func (o *Outbox) openAll(recs []record) ([]Row, error) {
	rows := make([]Row, 0, len(recs))
	for _, r := range recs {
		row, err := o.open(r)
		if err != nil {
			return nil, err
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// Get returns one row of ctx's tenant with its data opened.
func (o *Outbox) Get(ctx context.Context, id uuid.UUID) (Row, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Row{}, err
	}
	var r record
	if err := tx.Where("id = ?", id).Take(&r).Error; err != nil {
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return Row{}, tenants.NotFound("message")
		}
		return Row{}, fmt.Errorf("outbox: get: %w", err)
	}
	return o.open(r)
}

func (o *Outbox) open(r record) (Row, error) {
	if len(r.Payload) == 0 {
		// Purged by the retention job or a visitor's erasure: the delivery
		// record stays, its content is gone.
		return viewOf(r), nil
	}
	plain, err := o.sealer.Open(r.Payload, sealContext(r.TenantID, r.ID))
	if err != nil {
		return Row{}, fmt.Errorf("outbox: open %s: %w", r.ID, err)
	}
	var data map[string]string
	if err := json.Unmarshal(plain, &data); err != nil {
		return Row{}, fmt.Errorf("outbox: decode %s: %w", r.ID, err)
	}
	row := viewOf(r)
	row.Data = data
	return row, nil
}

func viewOf(r record) Row {
	return Row{ID: r.ID, TenantID: r.TenantID, Kind: r.Kind, Channel: Channel(r.Channel), Recipient: r.Recipient,
		Language: r.Language, Priority: Priority(r.Priority), Status: Status(r.Status), Provider: deref(r.Provider),
		ProviderMessageID: deref(r.ProviderMessageID), Attempts: r.Attempts, Reason: deref(r.Reason),
		CreatedAt: r.CreatedAt, RelayedAt: r.RelayedAt, SentAt: r.SentAt, DeliveredAt: r.DeliveredAt,
		NotBefore: r.NotBefore, ScheduleRev: r.ScheduleRev}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// Filter selects messages for the owner's list.
type Filter struct {
	Status  Status
	Channel Channel
	After   uuid.UUID
	Limit   int
}

// Messages lists ctx's tenant's messages, newest first, without their data:
// the list is for seeing what was sent, and data holds codes and links.
func (o *Outbox) Messages(ctx context.Context, f Filter) ([]Row, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	q := tx.Omit("payload").Order("id DESC").Limit(f.Limit)
	if f.Status != "" {
		q = q.Where("status = ?", string(f.Status))
	}
	if f.Channel != "" {
		q = q.Where("channel = ?", string(f.Channel))
	}
	if f.After != uuid.Nil {
		q = q.Where("id < ?", f.After)
	}
	var recs []record
	if err := q.Find(&recs).Error; err != nil {
		return nil, fmt.Errorf("outbox: messages: %w", err)
	}
	rows := make([]Row, len(recs))
	for i, r := range recs {
		rows[i] = viewOf(r)
	}
	return rows, nil
}

// GetMany returns the rows of ctx's tenant among ids, with data opened;
// ids that do not exist are simply absent.
func (o *Outbox) GetMany(ctx context.Context, ids []uuid.UUID) ([]Row, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var recs []record
	if err := tx.Where("id IN ?", ids).Find(&recs).Error; err != nil {
		return nil, fmt.Errorf("outbox: get many: %w", err)
	}
	return o.openAll(recs)
}

// Ref names one revision of a message, as a delivery task carries it.
type Ref struct {
	ID  uuid.UUID
	Rev int
}

// Claim takes the messages among refs that a delivery may send now: still
// queued, at the revision the task knows (a moved message has a newer task),
// and held by no live claim. They are marked as claimed by token until the
// lease ends and returned with their data opened; the others are left
// alone. The caller records their outcomes with RecordClaimed.
//
// Two tasks may carry the same message (the relay grouped it twice): the
// claim is one statement, so exactly one of them gets it. A claimer that
// dies keeps its messages until the lease ends; the relay's sweep then
// hands them out again (outbox_reclaim), so the lease must outlast the
// longest send.
func (o *Outbox) Claim(ctx context.Context, token string, lease time.Duration, refs []Ref) ([]Row, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	if token == "" || lease <= 0 {
		return nil, fmt.Errorf("outbox: claim needs a token and a lease")
	}
	ids, revs := make([]string, len(refs)), make([]string, len(refs))
	for i, r := range refs {
		ids[i], revs[i] = r.ID.String(), strconv.Itoa(r.Rev)
	}
	var recs []record
	idArray := textArray(ids)
	// Rows are locked in id order, so two claimers of overlapping sets
	// wait for each other instead of deadlocking. The id = ANY condition
	// repeats the join for the planner: without it, on a table that grew
	// faster than its statistics, it joined every row of the tenant.
	err = tx.Raw(`WITH k AS (
			SELECT o.tenant_id, o.id FROM outbox o
			JOIN unnest(?::uuid[], ?::integer[]) AS k(id, rev) ON o.id = k.id AND o.schedule_rev = k.rev
			WHERE o.id = ANY(?::uuid[]) AND o.status = 'queued' AND (o.claimed_by IS NULL OR o.claim_expires_at < now())
			ORDER BY o.id
			FOR UPDATE OF o
		)
		UPDATE outbox o SET claimed_by = ?, claim_expires_at = now() + make_interval(secs => ?)
		FROM k WHERE o.tenant_id = k.tenant_id AND o.id = k.id AND o.id = ANY(?::uuid[])
		RETURNING o.*`, idArray, textArray(revs), idArray, token, lease.Seconds(), idArray).Scan(&recs).Error
	if err != nil {
		return nil, fmt.Errorf("outbox: claim: %w", err)
	}
	return o.openAll(recs)
}

// RecordMany stores the outcomes of several attempts in one statement, with
// the same rules as Record.
func (o *Outbox) RecordMany(ctx context.Context, outs map[uuid.UUID]Outcome) error {
	return o.RecordClaimed(ctx, "", outs)
}

// RecordClaimed stores the outcomes of attempts made under the claim token
// and drops that claim; a claim someone else took since (after this one's
// lease ended) is theirs to drop. A message already sent, delivered,
// failed or cancelled keeps its status.
func (o *Outbox) RecordClaimed(ctx context.Context, token string, outs map[uuid.UUID]Outcome) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	n := len(outs)
	// ids appears twice, as in Claim and for the same reason.
	ids, statuses, provs, pmids, reasons := make([]string, 0, n), make([]string, 0, n), make([]string, 0, n), make([]string, 0, n), make([]string, 0, n)
	for id, out := range outs {
		ids = append(ids, id.String())
		statuses = append(statuses, string(out.Status))
		provs = append(provs, out.Provider)
		pmids = append(pmids, out.ProviderMessageID)
		reasons = append(reasons, out.Reason)
	}
	err = tx.Exec(`UPDATE outbox o SET
			status = v.status,
			attempts = o.attempts + 1,
			provider = COALESCE(NULLIF(v.provider, ''), o.provider),
			provider_message_id = COALESCE(NULLIF(v.pmid, ''), o.provider_message_id),
			reason = CASE WHEN v.status IN ('sent', 'delivered') THEN NULLIF(v.reason, '') ELSE COALESCE(NULLIF(v.reason, ''), o.reason) END,
			sent_at = CASE WHEN v.status IN ('sent', 'delivered') THEN now() ELSE o.sent_at END,
			delivered_at = CASE WHEN v.status = 'delivered' THEN now() ELSE o.delivered_at END,
			claimed_by = CASE WHEN o.claimed_by = ? THEN NULL ELSE o.claimed_by END,
			claim_expires_at = CASE WHEN o.claimed_by = ? THEN NULL ELSE o.claim_expires_at END,
			updated_at = now()
		FROM unnest(?::uuid[], ?::text[], ?::text[], ?::text[], ?::text[]) AS v(id, status, provider, pmid, reason)
		WHERE o.id = v.id AND o.id = ANY(?::uuid[]) AND o.status = 'queued'`,
		token, token, textArray(ids), textArray(statuses), textArray(provs), textArray(pmids), textArray(reasons), textArray(ids)).Error
	if err != nil {
		return fmt.Errorf("outbox: record outcomes: %w", err)
	}
	return nil
}

// textArray renders a PostgreSQL array literal for one bound parameter.
func textArray(vs []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, v := range vs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for _, r := range v {
			if r == '"' || r == '\\' {
				b.WriteByte('\\')
			}
			b.WriteRune(r)
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// Outcome is the result of one delivery attempt.
type Outcome struct {
	Status            Status // Queued (will retry), Sent, Delivered or Failed
	Provider          string
	ProviderMessageID string
	Reason            string
}

// Record stores an attempt's outcome. A message already sent, delivered or
// failed is never moved back to an earlier status.
func (o *Outbox) Record(ctx context.Context, id uuid.UUID, out Outcome) error {
	return o.RecordMany(ctx, map[uuid.UUID]Outcome{id: out})
}

// Receipt applies a provider's later word on a message: delivered, or
// failed with a reason. It moves only forward: queued or sent → delivered
// or failed.
func (o *Outbox) Receipt(ctx context.Context, id uuid.UUID, status Status, reason string) error {
	if status != Delivered && status != Failed {
		return fmt.Errorf("outbox: receipt status %q", status)
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	changes := map[string]any{"status": string(status), "updated_at": now, "reason": nullIfEmpty(reason)}
	if status == Delivered {
		changes["delivered_at"] = now
	}
	res := tx.Model(&record{}).Where("id = ? AND status IN ('queued', 'sent')", id).Updates(changes)
	if res.Error != nil {
		return fmt.Errorf("outbox: receipt: %w", res.Error)
	}
	if res.RowsAffected == 0 {
		if _, err := o.Get(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}
