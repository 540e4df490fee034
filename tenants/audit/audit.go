// Package audit is the tenant's append-only log of who did what. Entries are
// written in the transaction of the change they record; the application role
// may insert and read them but never change or delete one.
package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
)

// Event is one audit entry. Details must never hold secrets.
type Event struct {
	TenantID  uuid.UUID       `gorm:"primaryKey" json:"-"`
	ID        uuid.UUID       `gorm:"primaryKey" json:"id"`
	Actor     string          `json:"actor"`
	Action    string          `json:"action"`
	Target    string          `json:"target"`
	Details   json.RawMessage `gorm:"type:jsonb" json:"details"`
	ClientIP  string          `json:"client_ip"`
	CreatedAt time.Time       `json:"created_at"`
}

func (Event) TableName() string { return "audit_events" }

// Record appends an entry in ctx's tenant transaction.
func Record(ctx context.Context, actor, action, target string, details map[string]string) error {
	tenantID, _ := tenants.TenantOf(ctx)
	id, err := uuid.NewV7()
	if err != nil {
		return err
	}
	if details == nil {
		details = map[string]string{}
	}
	raw, err := json.Marshal(details)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	// Nothing in a request reads its own audit entry back, so the insert
	// waits for the transaction's next statement or its COMMIT and goes in
	// the same round trip; a failure still fails the transaction.
	if err := tenants.ExecLater(ctx, `INSERT INTO audit_events (tenant_id, id, actor, action, target, details, client_ip, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		tenantID, id, actor, action, target, raw, tenants.ClientIP(ctx), time.Now()); err != nil {
		return fmt.Errorf("audit: record %s: %w", action, err)
	}
	return nil
}

// Filter selects audit entries.
type Filter struct {
	Actor  string
	Action string
	Since  time.Time
	After  uuid.UUID
	Limit  int
}

// List returns ctx's tenant's entries, newest first.
func List(ctx context.Context, f Filter) ([]Event, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	q := tx.Order("id DESC").Limit(f.Limit)
	if f.Actor != "" {
		q = q.Where("actor = ?", f.Actor)
	}
	if f.Action != "" {
		q = q.Where("action = ?", f.Action)
	}
	if !f.Since.IsZero() {
		q = q.Where("created_at >= ?", f.Since)
	}
	if f.After != uuid.Nil {
		q = q.Where("id < ?", f.After)
	}
	var evs []Event
	if err := q.Find(&evs).Error; err != nil {
		return nil, fmt.Errorf("audit: list: %w", err)
	}
	for i := range evs {
		evs[i].CreatedAt = evs[i].CreatedAt.UTC()
	}
	return evs, nil
}
