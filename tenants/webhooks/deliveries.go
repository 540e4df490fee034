package webhooks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/keyrelay/keyrelay/tenants"
)

var lockUpdate = clause.Locking{Strength: "UPDATE"}

// Status is where a delivery is.
type Status string

const (
	Pending   Status = "pending"   // not yet delivered; tried again at next_attempt_at
	Delivered Status = "delivered" // the endpoint answered 2xx
	Failed    Status = "failed"    // given up: a permanent refusal, too many attempts, or the endpoint disabled
)

// Outcome is what one attempt led to.
type Outcome string

const (
	OutcomeDelivered Outcome = "delivered"
	OutcomeRetry     Outcome = "retry"
	OutcomeFailed    Outcome = "failed"
)

type delivery struct {
	TenantID      uuid.UUID `gorm:"primaryKey"`
	ID            uuid.UUID `gorm:"primaryKey"`
	EndpointID    uuid.UUID
	EventID       uuid.UUID
	Event         string
	Payload       []byte
	Status        Status
	Attempts      int
	NextAttemptAt time.Time
	Claim         *uuid.UUID
	LastStatus    *int
	LastError     *string
	CreatedAt     time.Time
	DeliveredAt   *time.Time
	UpdatedAt     time.Time
}

func (delivery) TableName() string { return "webhook_deliveries" }

type attempt struct {
	TenantID   uuid.UUID `gorm:"primaryKey"`
	DeliveryID uuid.UUID `gorm:"primaryKey"`
	N          int       `gorm:"primaryKey;column:n"`
	At         time.Time
	DurationMS int `gorm:"column:duration_ms"`
	StatusCode *int
	Error      *string
	Outcome    Outcome
}

func (attempt) TableName() string { return "webhook_attempts" }

// Outgoing is a claimed delivery, ready to sign and send.
type Outgoing struct {
	ID       uuid.UUID
	EventID  uuid.UUID
	Event    string
	URL      string
	Secret   []byte
	Payload  []byte
	Attempts int // made before this one
	Disabled bool
}

// Claimed returns the delivery id under claim with its endpoint's URL and
// opened secret; ok is false when the claim is no longer this caller's (the
// lease ran out and another dispatcher took it) or the delivery is over.
func (s *Service) Claimed(ctx context.Context, id, claim uuid.UUID) (Outgoing, bool, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Outgoing{}, false, err
	}
	var d delivery
	err = tx.Where("id = ? AND claim = ? AND status = ?", id, claim, Pending).Take(&d).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return Outgoing{}, false, nil
	}
	if err != nil {
		return Outgoing{}, false, fmt.Errorf("webhooks: load delivery: %w", err)
	}
	e, err := loadEndpoint(ctx, d.EndpointID, false)
	if err != nil {
		return Outgoing{}, false, err
	}
	out := Outgoing{ID: d.ID, EventID: d.EventID, Event: d.Event, URL: e.URL, Payload: d.Payload, Attempts: d.Attempts, Disabled: e.DisabledAt != nil}
	if out.Secret, err = s.sealer.Open(e.SecretSealed, sealContext(e.TenantID, e.ID)); err != nil {
		return Outgoing{}, false, fmt.Errorf("webhooks: open secret of %s: %w", e.ID, err)
	}
	return out, true, nil
}

// Attempt is the result of one try.
type Attempt struct {
	At         time.Time
	Duration   time.Duration
	StatusCode int    // 0: no answer
	Error      string // caller-safe: no URL, no response body
	Outcome    Outcome
	// NextAt is when to try again (OutcomeRetry).
	NextAt time.Time
}

// RecordAttempt stores an attempt made under claim and moves the delivery
// on: delivered, failed, or pending until a.NextAt with the claim dropped.
// An attempt whose claim was lost meanwhile is not recorded: the holder of
// the new claim records its own.
func (s *Service) RecordAttempt(ctx context.Context, id, claim uuid.UUID, a Attempt) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	status, next := Pending, (*time.Time)(nil)
	var deliveredAt *time.Time
	switch a.Outcome {
	case OutcomeDelivered:
		status, deliveredAt = Delivered, &a.At
	case OutcomeFailed:
		status = Failed
	case OutcomeRetry:
		next = &a.NextAt
	default:
		return fmt.Errorf("webhooks: outcome %q", a.Outcome)
	}
	errText := truncate(a.Error, 500)
	var n []int
	err = tx.Raw(`UPDATE webhook_deliveries SET attempts = attempts + 1, claim = NULL, status = ?, last_status = ?, last_error = ?,
			delivered_at = ?, next_attempt_at = COALESCE(?, next_attempt_at), updated_at = ?
		WHERE id = ? AND claim = ? AND status = 'pending' RETURNING attempts`,
		status, nullInt(a.StatusCode), nullStr(errText), deliveredAt, next, a.At, id, claim).Scan(&n).Error
	if err != nil {
		return fmt.Errorf("webhooks: record attempt: %w", err)
	}
	if len(n) == 0 {
		return nil
	}
	tenantID, _ := tenants.TenantOf(ctx)
	at := attempt{TenantID: tenantID, DeliveryID: id, N: n[0], At: a.At, DurationMS: int(a.Duration.Milliseconds()),
		StatusCode: nullInt(a.StatusCode), Error: nullStr(errText), Outcome: a.Outcome}
	if err := tx.Create(&at).Error; err != nil {
		return fmt.Errorf("webhooks: store attempt: %w", err)
	}
	return nil
}

func nullInt(n int) *int {
	if n == 0 {
		return nil
	}
	return &n
}

func nullStr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary.
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

// AttemptView is one try as the tenant sees it.
type AttemptView struct {
	N          int       `json:"n"`
	At         time.Time `json:"at"`
	DurationMS int       `json:"duration_ms"`
	StatusCode *int      `json:"status_code"`
	Error      string    `json:"error,omitempty"`
	Outcome    Outcome   `json:"outcome"`
}

// DeliveryView is a delivery as the tenant sees it: the event, where it
// is, and each attempt. Not the payload, which the receiver has.
type DeliveryView struct {
	ID              uuid.UUID     `json:"id"`
	EventID         uuid.UUID     `json:"event_id"`
	Event           string        `json:"event"`
	Status          Status        `json:"status"`
	Attempts        int           `json:"attempts"`
	NextAttemptAt   *time.Time    `json:"next_attempt_at"`
	LastStatusCode  *int          `json:"last_status_code"`
	LastError       string        `json:"last_error,omitempty"`
	CreatedAt       time.Time     `json:"created_at"`
	DeliveredAt     *time.Time    `json:"delivered_at"`
	AttemptsHistory []AttemptView `json:"attempt_log"`
}

// DeliveryFilter selects an endpoint's deliveries.
type DeliveryFilter struct {
	Status Status
	After  uuid.UUID
	Limit  int
}

// Deliveries lists an endpoint's deliveries, newest first, with their
// attempts.
func (s *Service) Deliveries(ctx context.Context, endpointID uuid.UUID, f DeliveryFilter) ([]DeliveryView, error) {
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return nil, err
	}
	if _, err := loadEndpoint(ctx, endpointID, false); err != nil {
		return nil, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	q := tx.Omit("payload").Where("endpoint_id = ?", endpointID).Order("id DESC").Limit(f.Limit)
	if f.Status != "" {
		q = q.Where("status = ?", f.Status)
	}
	if f.After != uuid.Nil {
		q = q.Where("id < ?", f.After)
	}
	var ds []delivery
	if err := q.Find(&ds).Error; err != nil {
		return nil, fmt.Errorf("webhooks: list deliveries: %w", err)
	}
	out := make([]DeliveryView, len(ds))
	ids := make([]uuid.UUID, len(ds))
	byID := map[uuid.UUID]int{}
	for i, d := range ds {
		v := DeliveryView{ID: d.ID, EventID: d.EventID, Event: d.Event, Status: d.Status, Attempts: d.Attempts, LastStatusCode: d.LastStatus,
			CreatedAt: d.CreatedAt.UTC(), DeliveredAt: utc(d.DeliveredAt), AttemptsHistory: []AttemptView{}}
		if d.LastError != nil {
			v.LastError = *d.LastError
		}
		if d.Status == Pending {
			v.NextAttemptAt = utc(&d.NextAttemptAt)
		}
		out[i], ids[i], byID[d.ID] = v, d.ID, i
	}
	if len(ids) == 0 {
		return out, nil
	}
	var as []attempt
	if err := tx.Where("delivery_id IN ?", ids).Order("delivery_id, n").Find(&as).Error; err != nil {
		return nil, fmt.Errorf("webhooks: list attempts: %w", err)
	}
	for _, a := range as {
		v := AttemptView{N: a.N, At: a.At.UTC(), DurationMS: a.DurationMS, StatusCode: a.StatusCode, Outcome: a.Outcome}
		if a.Error != nil {
			v.Error = *a.Error
		}
		i := byID[a.DeliveryID]
		out[i].AttemptsHistory = append(out[i].AttemptsHistory, v)
	}
	return out, nil
}
