package outbox

import (
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/web"
)

// MessageView is a message as the owner sees it: to whom, what kind, how it
// went. Never its content, which holds codes and links.
type MessageView struct {
	ID                uuid.UUID  `json:"id"`
	Kind              string     `json:"kind"`
	Channel           Channel    `json:"channel"`
	To                string     `json:"to"`
	Status            Status     `json:"status"`
	Reason            string     `json:"reason,omitempty"`
	Provider          string     `json:"provider,omitempty"`
	ProviderMessageID string     `json:"provider_message_id,omitempty"`
	Attempts          int        `json:"attempts"`
	CreatedAt         time.Time  `json:"created_at"`
	SentAt            *time.Time `json:"sent_at"`
	DeliveredAt       *time.Time `json:"delivered_at"`
	NotBefore         *time.Time `json:"not_before"` // a scheduled message waits until then
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// ListHandler handles GET /messages?status=&channel=&cursor=&limit=.
func (o *Outbox) ListHandler(c *fiber.Ctx) error {
	if _, err := tenants.Require(c.UserContext(), tenants.RoleAdmin); err != nil {
		return err
	}
	page, err := web.PageOf(c)
	if err != nil {
		return err
	}
	f := Filter{Status: Status(c.Query("status")), Channel: Channel(c.Query("channel")), After: page.After, Limit: page.Limit}
	var v tenants.Validator
	switch f.Status {
	case "", Queued, Sent, Delivered, Failed, Canceled:
	default:
		v.Add("status", "must be queued, sent, delivered, failed or canceled")
	}
	v.Check(f.Channel == "" || f.Channel == SMS || f.Channel == Email, "channel", "must be sms or email")
	if err := v.Err(); err != nil {
		return err
	}
	rows, err := o.Messages(c.UserContext(), f)
	if err != nil {
		return err
	}
	views := make([]MessageView, len(rows))
	for i, r := range rows {
		views[i] = MessageView{ID: r.ID, Kind: r.Kind, Channel: r.Channel, To: r.Recipient, Status: r.Status, Reason: r.Reason,
			Provider: r.Provider, ProviderMessageID: r.ProviderMessageID, Attempts: r.Attempts, CreatedAt: r.CreatedAt.UTC(),
			SentAt: utc(r.SentAt), DeliveredAt: utc(r.DeliveredAt), NotBefore: utc(r.NotBefore)}
	}
	return c.JSON(web.NewList(views, page.Limit, func(m MessageView) uuid.UUID { return m.ID }))
}

// GetSettings handles GET /notification-settings.
func (o *Outbox) GetSettings(c *fiber.Ctx) error {
	if _, err := tenants.Require(c.UserContext(), tenants.RoleAdmin); err != nil {
		return err
	}
	s, err := o.SettingsOf(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(s)
}

// PutSettings handles PUT /notification-settings.
func (o *Outbox) PutSettings(c *fiber.Ctx) error {
	var in Settings
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	s, err := o.SetSettings(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.JSON(s)
}
