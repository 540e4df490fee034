// Package outbox is how domain code asks for a message to be sent: it writes
// a row in the same transaction as the change the message reports, so the
// message exists exactly when the change committed. The relay in jobs/
// delivers the rows; nothing here talks to a provider.
package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
)

// Channel is how a message reaches its recipient.
type Channel string

const (
	SMS   Channel = "sms"
	Email Channel = "email"
)

// Message is what domain code asks to send: a kind that selects the template,
// and the template's data. Data may hold secrets (links, codes): it is sealed
// at rest.
type Message struct {
	Kind      string
	Channel   Channel
	Recipient string
	Data      map[string]string
}

// Row is a stored outbox entry with its data opened.
type Row struct {
	ID        uuid.UUID
	TenantID  uuid.UUID
	Kind      string
	Channel   Channel
	Recipient string
	Data      map[string]string
	CreatedAt time.Time
	RelayedAt *time.Time
}

// Sealer encrypts payloads bound to their row.
type Sealer interface {
	Seal(plaintext, context []byte) ([]byte, error)
	Open(sealed, context []byte) ([]byte, error)
}

// Outbox writes and reads outbox rows inside tenant-scoped transactions.
type Outbox struct {
	sealer Sealer
}

// New returns an outbox sealing payloads with s.
func New(s Sealer) *Outbox { return &Outbox{sealer: s} }

type record struct {
	TenantID  uuid.UUID `gorm:"primaryKey"`
	ID        uuid.UUID `gorm:"primaryKey"`
	Kind      string
	Channel   string
	Recipient string
	Payload   []byte
	CreatedAt time.Time
	RelayedAt *time.Time
}

func (record) TableName() string { return "outbox" }

func sealContext(tenantID, id uuid.UUID) []byte {
	return []byte("outbox:" + tenantID.String() + ":" + id.String())
}

// Add writes m in ctx's tenant transaction and returns its id, which later
// becomes the delivery task's id and the provider's idempotency key.
func (o *Outbox) Add(ctx context.Context, m Message) (uuid.UUID, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return uuid.Nil, err
	}
	tenantID, _ := tenants.TenantOf(ctx)
	if m.Channel != SMS && m.Channel != Email {
		return uuid.Nil, fmt.Errorf("outbox: unknown channel %q", m.Channel)
	}
	if m.Recipient == "" || m.Kind == "" {
		return uuid.Nil, fmt.Errorf("outbox: message needs a kind and a recipient")
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
	rec := record{TenantID: tenantID, ID: id, Kind: m.Kind, Channel: string(m.Channel), Recipient: m.Recipient, Payload: sealed, CreatedAt: time.Now()}
	if err := tx.Create(&rec).Error; err != nil {
		return uuid.Nil, fmt.Errorf("outbox: insert: %w", err)
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
	if err := tx.Order("created_at DESC, id DESC").Limit(limit).Find(&recs).Error; err != nil {
		return nil, fmt.Errorf("outbox: list: %w", err)
	}
	rows := make([]Row, 0, len(recs))
	for _, r := range recs {
		plain, err := o.sealer.Open(r.Payload, sealContext(r.TenantID, r.ID))
		if err != nil {
			return nil, fmt.Errorf("outbox: open %s: %w", r.ID, err)
		}
		var data map[string]string
		if err := json.Unmarshal(plain, &data); err != nil {
			return nil, fmt.Errorf("outbox: decode %s: %w", r.ID, err)
		}
		rows = append(rows, Row{ID: r.ID, TenantID: r.TenantID, Kind: r.Kind, Channel: Channel(r.Channel), Recipient: r.Recipient, Data: data, CreatedAt: r.CreatedAt, RelayedAt: r.RelayedAt})
	}
	return rows, nil
}
