package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/plugins/providers/devmailbox/devmailbox"
	"github.com/keyrelay/keyrelay/plugins/sdk"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/outbox"
	"github.com/keyrelay/keyrelay/tenants/providers"
)

// providerReceipt handles POST /hooks/providers/{name}: a provider tells us
// later whether a message arrived. The plugin verifies the request (its
// signature, with the platform's settings for that provider) and parses it;
// we only trust what it returns. The message id is ours, given to the
// provider with the message, so it also tells which tenant it belongs to.
func (a *App) providerReceipt(c *fiber.Ctx) error {
	name := c.Params("name")
	info, err := a.plugins.Provider(name)
	if err != nil {
		return tenants.NotFound("provider")
	}
	if !info.Receipts && info.Healthy {
		return tenants.NotFound("provider receipts")
	}
	settings := map[string]string{}
	for _, ch := range providers.Channels { // in a fixed order, so one channel's settings win
		if d := a.defaults[ch]; d.Provider == name {
			settings = d.Settings
			break
		}
	}
	hdr := map[string][]string{}
	for k, v := range c.GetReqHeaders() {
		hdr[k] = v
	}
	upd, err := a.plugins.VerifyReceipt(c.UserContext(), name, settings, sdk.InboundRequest{
		Method: c.Method(), URL: a.cfg.BaseURL + c.OriginalURL(), Header: hdr, Body: c.Body(),
	})
	switch {
	case errors.Is(err, sdk.ErrTemporary):
		// The plugin is down, restarting or slow: the provider should send
		// the receipt again, which it does on a 5xx.
		return &tenants.Error{Code: tenants.EUnavailable, Message: "provider plugin unavailable; send again later", Err: err}
	case err != nil:
		// A bad signature or a request the plugin cannot read.
		return tenants.Errorf(tenants.EUnauthorized, "receipt refused by the provider plugin")
	}
	id, err := uuid.Parse(upd.MessageID)
	if err != nil {
		return tenants.NotFound("message")
	}
	var owner struct{ TenantID *string }
	if err := a.db.WithContext(c.UserContext()).Raw("SELECT outbox_tenant(?) AS tenant_id", id).Scan(&owner).Error; err != nil {
		return fmt.Errorf("receipt: find tenant: %w", err)
	}
	if owner.TenantID == nil {
		return tenants.NotFound("message")
	}
	tenantID, err := uuid.Parse(*owner.TenantID)
	if err != nil {
		return fmt.Errorf("receipt: tenant id: %w", err)
	}
	status := outbox.Delivered
	if upd.Status == sdk.StatusFailed {
		status = outbox.Failed
	} else if upd.Status != sdk.StatusDelivered {
		return c.SendStatus(fiber.StatusNoContent) // "sent" again: nothing new
	}
	err = a.scope.Do(c.UserContext(), tenantID, func(ctx context.Context) error {
		return a.outbox.Receipt(ctx, id, status, upd.Reason)
	})
	if err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// devMailboxEntry is one message of GET /dev/mailbox, as API.md lists it.
type devMailboxEntry struct {
	ID        string `json:"id"`
	TenantID  string `json:"tenant_id"`
	Channel   string `json:"channel"`
	To        string `json:"to"`
	Subject   string `json:"subject"`
	Body      string `json:"body"`
	CreatedAt string `json:"created_at"`
}

// devMailbox handles GET /dev/mailbox (development only): what the
// development mailbox provider received, newest first, across tenants.
func (a *App) devMailbox(c *fiber.Ctx) error {
	if a.cfg.Production() {
		return tenants.NotFound("page")
	}
	q := devmailbox.Query{To: c.Query("to"), TenantID: c.Query("tenant_id"), Limit: 200}
	recs, err := devmailbox.Open(a.cfg.mailboxDir()).List(c.UserContext(), q)
	if err != nil {
		return err
	}
	out := make([]devMailboxEntry, len(recs))
	for i, r := range recs {
		out[i] = devMailboxEntry{ID: r.ID, TenantID: r.TenantID, Channel: string(r.Channel), To: r.To, Subject: r.Subject, Body: r.Text, CreatedAt: r.CreatedAt.UTC().Format("2006-01-02T15:04:05Z07:00")}
	}
	if c.Accepts(fiber.MIMEApplicationJSON, fiber.MIMETextHTML) == fiber.MIMETextHTML {
		return c.Type("html").SendString(renderMailbox(out))
	}
	return c.JSON(out)
}
