// Package delivery handles the queue's message:deliver tasks: it renders an
// outbox message, sends it through the tenant's provider plugin (falling
// back to a second provider once), and records what happened.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"

	"github.com/keyrelay/keyrelay/jobs"
	"github.com/keyrelay/keyrelay/plugins/sdk"
	"github.com/keyrelay/keyrelay/tenants/outbox"
	"github.com/keyrelay/keyrelay/tenants/providers"
)

// Sender reaches provider plugins (the plugin host).
type Sender interface {
	Send(ctx context.Context, provider string, msg sdk.Message) (sdk.Receipt, error)
}

// Routes says which provider serves each channel for ctx's tenant.
type Routes interface {
	Routes(ctx context.Context) (map[string]providers.Route, error)
}

// Messages is the outbox as delivery sees it.
type Messages interface {
	GetMany(ctx context.Context, ids []uuid.UUID) ([]outbox.Row, error)
	RecordMany(ctx context.Context, outs map[uuid.UUID]outbox.Outcome) error
}

// Unavailable tells a provider that is down (plugin crashed, unhealthy)
// from one that answered with an error; the fallback serves both.
type Unavailable func(error) bool

// Handler delivers messages.
type Handler struct {
	store       *Store
	send        Sender
	tpl         *Templates
	unavailable Unavailable
	log         *slog.Logger
}

// NewHandler wires a delivery handler.
func NewHandler(store *Store, send Sender, tpl *Templates, unavailable Unavailable, log *slog.Logger) *Handler {
	return &Handler{store: store, send: send, tpl: tpl, unavailable: unavailable, log: log}
}

// ProcessTask implements asynq.Handler.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	d, err := jobs.DecodeDeliver(t.Payload())
	if err != nil {
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	row, found, routes, err := h.store.Load(ctx, d.TenantID, d.MessageID)
	if err != nil {
		return fmt.Errorf("delivery: load %s: %w", d.MessageID, err)
	}
	if !found {
		return fmt.Errorf("delivery: message %s is gone: %w", d.MessageID, asynq.SkipRetry)
	}
	if row.Status != outbox.Queued || row.ScheduleRev != d.Rev {
		// Already sent, failed for good or cancelled, or moved to another
		// time (a newer task carries it): a duplicate must not send twice.
		return nil
	}
	route, ok := routes[string(row.Channel)]
	if !ok {
		return h.finish(ctx, d, outbox.Outcome{Status: outbox.Failed, Reason: "no provider for channel " + string(row.Channel)}, asynq.SkipRetry)
	}

	render := h.tpl.Render
	if row.Channel == outbox.SMS {
		render = h.tpl.RenderText
	}
	rendered, err := render(row.Kind, row.Language, row.Data)
	if err != nil {
		return h.finish(ctx, d, outbox.Outcome{Status: outbox.Failed, Reason: err.Error()}, asynq.SkipRetry)
	}
	msg := sdk.Message{
		MessageID: row.ID.String(), TenantID: row.TenantID.String(), Channel: sdk.Channel(row.Channel),
		To: row.Recipient, Subject: rendered.Subject, Text: rendered.Text, HTML: rendered.HTML,
	}
	provider, receipt, sendErr := h.sendRouted(ctx, route, msg)
	if sendErr == nil {
		status := outbox.Sent
		if receipt.Status == sdk.StatusDelivered {
			status = outbox.Delivered // the provider knows at once (a mailbox, a webhook)
		}
		return h.finish(ctx, d, outbox.Outcome{Status: status, Provider: provider, ProviderMessageID: receipt.ProviderMessageID}, nil)
	}
	reason := sendErr.Error()
	if errors.Is(sendErr, sdk.ErrPermanent) {
		return h.finish(ctx, d, outbox.Outcome{Status: outbox.Failed, Provider: provider, Reason: reason}, fmt.Errorf("%w: %w", sendErr, asynq.SkipRetry))
	}
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, _ := asynq.GetMaxRetry(ctx)
	if retried >= maxRetry {
		reason = fmt.Sprintf("gave up after %d attempts: %s", retried+1, reason)
		return h.finish(ctx, d, outbox.Outcome{Status: outbox.Failed, Provider: provider, Reason: reason}, sendErr)
	}
	return h.finish(ctx, d, outbox.Outcome{Status: outbox.Queued, Provider: provider, Reason: reason}, sendErr)
}

// sendRouted sends through the route's provider, and through its fallback
// once when the first fails for good or is unavailable.
func (h *Handler) sendRouted(ctx context.Context, route providers.Route, msg sdk.Message) (string, sdk.Receipt, error) {
	msg.Settings = route.Primary.Settings
	receipt, err := h.send.Send(ctx, route.Primary.Provider, msg)
	if err == nil || route.Fallback == nil {
		return route.Primary.Provider, receipt, err
	}
	if !errors.Is(err, sdk.ErrPermanent) && !h.unavailable(err) {
		return route.Primary.Provider, receipt, err
	}
	h.log.Warn("delivery: falling back", "message_id", msg.MessageID, "provider", route.Primary.Provider, "fallback", route.Fallback.Provider, "err", err)
	msg.Settings = route.Fallback.Settings
	receipt, ferr := h.send.Send(ctx, route.Fallback.Provider, msg)
	if ferr != nil {
		return route.Fallback.Provider, receipt, fmt.Errorf("%s: %v; fallback %s: %w", route.Primary.Provider, err, route.Fallback.Provider, ferr)
	}
	return route.Fallback.Provider, receipt, nil
}

// finish records out and returns result to the queue. The record is kept
// even when the task's own context is ending, so a status is never lost to
// a shutdown.
func (h *Handler) finish(ctx context.Context, d jobs.Deliver, out outbox.Outcome, result error) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := h.store.Record(rctx, d.TenantID, d.MessageID, out); err != nil {
		// The provider may have sent it: retry; its message id lets it
		// drop the duplicate.
		return fmt.Errorf("delivery: record status of %s: %w", d.MessageID, err)
	}
	return result
}

// RetryDelay is asynq's RetryDelayFunc: the provider's Retry-After when it
// gave one, otherwise exponential backoff with full jitter (1 s doubling,
// at most 10 minutes).
func RetryDelay(n int, err error, _ *asynq.Task) time.Duration {
	var se *sdk.Error
	if errors.As(err, &se) && se.Class == sdk.ClassRateLimited && se.RetryAfter > 0 {
		return se.RetryAfter
	}
	ceiling := time.Second << min(n, 10)
	ceiling = min(ceiling, 10*time.Minute)
	return time.Duration(rand.Int64N(int64(ceiling))) + 100*time.Millisecond
}
