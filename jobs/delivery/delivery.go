// Package delivery handles the queue's delivery tasks: it claims outbox
// messages, renders them, sends them through the tenant's provider plugin
// (falling back to a second provider once), and records what happened.
//
// Most messages arrive in batch tasks (jobs.TypeDeliverBatch): one tenant,
// one priority, up to jobs.MaxBatch messages, claimed in one statement,
// sent concurrently and recorded in one statement. A message that fails
// temporarily leaves its batch: it goes back to the queue as a task of its
// own (jobs.TypeDeliver), which asynq retries with backoff and archives
// when it gives up. Scheduled messages come as such tasks from the start.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/keyrelay/keyrelay/jobs"
	"github.com/keyrelay/keyrelay/plugins/sdk"
	"github.com/keyrelay/keyrelay/tenants/outbox"
	"github.com/keyrelay/keyrelay/tenants/providers"
)

// Sender reaches provider plugins (the plugin host).
type Sender interface {
	Send(ctx context.Context, provider string, msg sdk.Message) (sdk.Receipt, error)
}

// Enqueuer is the part of asynq.Client that puts a failed message back.
type Enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// Unavailable tells a provider that is down (plugin crashed, unhealthy)
// from one that answered with an error; the fallback serves both.
type Unavailable func(error) bool

// Config tunes delivery.
type Config struct {
	// MaxRetry is how many times a message is tried again after its first
	// attempt before it fails for good.
	MaxRetry int
	// Parallel is how many messages of one task are with providers at once.
	Parallel int
	// TaskTimeout bounds a retry task, as the relay's bounds the others.
	TaskTimeout time.Duration
	// Outcomes, when set, counts each recorded outcome.
	Outcomes Outcomes
	// Tracer, when set, records a span per task, continuing the trace the
	// task's headers carry (the relay's, from the request that wrote the
	// message).
	Tracer trace.Tracer
}

// Outcomes counts what became of messages (the platform's metrics): the
// provider, the channel and the status recorded, "retry" for a temporary
// failure that will be tried again. No recipient, no content.
type Outcomes interface {
	MessageOutcome(provider, channel, status string)
}

// DefaultConfig matches relay.DefaultConfig.
func DefaultConfig() Config {
	return Config{MaxRetry: 12, Parallel: 16, TaskTimeout: time.Minute}
}

// recordTimeout bounds the transaction that records outcomes. It runs even
// when the task's context has ended, so a status is never lost to a
// shutdown or a timeout.
const recordTimeout = 10 * time.Second

// Handler delivers messages.
type Handler struct {
	store       *Store
	send        Sender
	queue       Enqueuer
	tpl         *Templates
	unavailable Unavailable
	cfg         Config
	log         *slog.Logger
}

// NewHandler wires a delivery handler; queue takes the retries of messages
// that failed in a batch.
func NewHandler(store *Store, send Sender, queue Enqueuer, tpl *Templates, unavailable Unavailable, cfg Config, log *slog.Logger) *Handler {
	cfg.Parallel = max(cfg.Parallel, 1)
	if cfg.TaskTimeout <= 0 {
		cfg.TaskTimeout = DefaultConfig().TaskTimeout
	}
	if cfg.Tracer == nil {
		cfg.Tracer = noop.NewTracerProvider().Tracer("")
	}
	return &Handler{store: store, send: send, queue: queue, tpl: tpl, unavailable: unavailable, cfg: cfg, log: log}
}

// ProcessTask implements asynq.Handler.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) (err error) {
	ctx = traceContext.Extract(ctx, propagation.MapCarrier(t.Headers()))
	ctx, span := h.cfg.Tracer.Start(ctx, "delivery job", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("task.type", t.Type())))
	defer func() {
		if err != nil {
			span.SetStatus(codes.Error, "delivery task failed")
		}
		span.End()
	}()
	if t.Type() == jobs.TypeDeliverBatch {
		b, err := jobs.DecodeDeliverBatch(t.Payload())
		if err != nil {
			return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
		}
		return h.deliverBatch(ctx, b)
	}
	d, err := jobs.DecodeDeliver(t.Payload())
	if err != nil {
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	return h.deliverOne(ctx, d)
}

// result is what became of one claimed message.
type result struct {
	row outbox.Row
	out outbox.Outcome
	err error // why it was not sent; nil when it was
	// retry: a temporary failure with attempts left.
	retry bool
}

// deliverOne sends a single message and leaves its retries to asynq.
func (h *Handler) deliverOne(ctx context.Context, d jobs.Deliver) error {
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, hasMax := asynq.GetMaxRetry(ctx)
	// asynq archives the task once its own retries run out, whatever the
	// message's attempts say: give up then too, so the status says so.
	last := hasMax && retried >= maxRetry
	results, err := h.attempt(ctx, d.TenantID, []outbox.Ref{{ID: d.MessageID, Rev: d.Rev}}, last)
	if err != nil {
		return err
	}
	if len(results) == 0 {
		// Already sent, failed for good or cancelled, moved to another time
		// (a newer task carries it), or being sent by another task.
		return nil
	}
	r := results[0]
	switch {
	case r.err == nil:
		return nil
	case r.retry:
		return r.err
	default:
		// Archived at once, where operators see it.
		return fmt.Errorf("%w: %w", r.err, asynq.SkipRetry)
	}
}

// deliverBatch sends a batch; a message that failed temporarily goes back
// to the queue alone, so that the batch's other messages are not sent again.
func (h *Handler) deliverBatch(ctx context.Context, b jobs.DeliverBatch) error {
	refs := make([]outbox.Ref, len(b.Messages))
	for i, m := range b.Messages {
		refs[i] = outbox.Ref{ID: m.ID, Rev: m.Rev}
	}
	results, err := h.attempt(ctx, b.TenantID, refs, false)
	if err != nil {
		return err
	}
	var failed error
	for _, r := range results {
		if !r.retry {
			continue
		}
		if err := h.retryLater(ctx, b.TenantID, r); err != nil {
			// The message is queued and unclaimed: when asynq runs this
			// batch again, it claims and sends just that one.
			failed = errors.Join(failed, err)
		}
	}
	return failed
}

// retryLater enqueues the task that tries r's message again.
func (h *Handler) retryLater(ctx context.Context, tenantID uuid.UUID, r result) error {
	attempts := r.row.Attempts + 1
	d := jobs.Deliver{TenantID: tenantID, MessageID: r.row.ID, Rev: r.row.ScheduleRev, Attempts: attempts}
	// The retry continues this task's trace.
	headers := propagation.MapCarrier{}
	traceContext.Inject(ctx, headers)
	task := asynq.NewTaskWithHeaders(jobs.TypeDeliver, d.Encode(), headers)
	_, err := h.queue.EnqueueContext(context.WithoutCancel(ctx), task,
		asynq.TaskID(d.TaskID()), asynq.Queue(queueOf(r.row.Priority)),
		asynq.MaxRetry(max(h.cfg.MaxRetry-attempts, 0)), asynq.Timeout(h.cfg.TaskTimeout),
		asynq.ProcessIn(RetryDelay(attempts-1, r.err, nil)))
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return fmt.Errorf("delivery: requeue %s: %w", r.row.ID, err)
	}
	return nil
}

// traceContext is the W3C propagation the relay and delivery agree on.
var traceContext = propagation.TraceContext{}

func queueOf(p outbox.Priority) string {
	if _, ok := jobs.Queues[string(p)]; ok {
		return string(p)
	}
	return "default"
}

// lease is how long this attempt's claims last: past the task's deadline
// (when asynq cancels the sends) and the recording after it, so that no
// other worker takes a message this one may still send.
func lease(ctx context.Context) time.Duration {
	const margin = 30 * time.Second
	if deadline, ok := ctx.Deadline(); ok {
		return max(time.Until(deadline), 0) + recordTimeout + margin
	}
	return 2 * time.Minute
}

// attempt claims the messages of refs, sends them, and records every
// outcome in one transaction. last says this is the message's last try.
func (h *Handler) attempt(ctx context.Context, tenantID uuid.UUID, refs []outbox.Ref, last bool) ([]result, error) {
	token := uuid.NewString()
	rows, routes, err := h.store.Claim(ctx, tenantID, token, lease(ctx), refs)
	if err != nil {
		return nil, fmt.Errorf("delivery: claim: %w", err)
	}
	if len(rows) == 0 {
		return nil, nil
	}
	results := make([]result, len(rows))
	if len(rows) == 1 {
		results[0] = h.deliver(ctx, rows[0], routes, last)
	} else {
		sem := make(chan struct{}, h.cfg.Parallel)
		var wg sync.WaitGroup
		for i, row := range rows {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				results[i] = h.deliver(ctx, row, routes, last)
			}()
		}
		wg.Wait()
	}
	outs := make(map[uuid.UUID]outbox.Outcome, len(results))
	for _, r := range results {
		outs[r.row.ID] = r.out
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	if err := h.store.Record(rctx, tenantID, token, outs); err != nil {
		// The providers may have sent them: the claims stand until their
		// lease ends, then the messages go out again and their ids let the
		// providers drop the duplicates.
		return nil, fmt.Errorf("delivery: record %d outcomes: %w", len(outs), err)
	}
	if h.cfg.Outcomes != nil {
		for _, r := range results {
			status, provider := string(r.out.Status), r.out.Provider
			if r.retry {
				status = "retry"
			}
			if provider == "" {
				provider = "none"
			}
			h.cfg.Outcomes.MessageOutcome(provider, string(r.row.Channel), status)
		}
	}
	return results, nil
}

// deliver renders and sends one claimed message and says what became of it.
func (h *Handler) deliver(ctx context.Context, row outbox.Row, routes map[string]providers.Route, last bool) result {
	fail := func(provider string, err error) result {
		return result{row: row, out: outbox.Outcome{Status: outbox.Failed, Provider: provider, Reason: err.Error()}, err: err}
	}
	route, ok := routes[string(row.Channel)]
	if !ok {
		return fail("", fmt.Errorf("no provider for channel %s", row.Channel))
	}
	render := h.tpl.Render
	if row.Channel == outbox.SMS {
		render = h.tpl.RenderText
	}
	rendered, err := render(row.Kind, row.Language, row.Data)
	if err != nil {
		return fail("", err)
	}
	msg := sdk.Message{
		MessageID: row.ID.String(), TenantID: row.TenantID.String(), Channel: sdk.Channel(row.Channel),
		To: row.Recipient, Subject: rendered.Subject, Text: rendered.Text, HTML: rendered.HTML,
	}
	provider, receipt, sendErr := h.sendRouted(ctx, route, msg)
	switch {
	case sendErr == nil:
		status := outbox.Sent
		if receipt.Status == sdk.StatusDelivered {
			status = outbox.Delivered // the provider knows at once (a mailbox, a webhook)
		}
		return result{row: row, out: outbox.Outcome{Status: status, Provider: provider, ProviderMessageID: receipt.ProviderMessageID}}
	case errors.Is(sendErr, sdk.ErrPermanent):
		return fail(provider, sendErr)
	case last || row.Attempts >= h.cfg.MaxRetry:
		return fail(provider, fmt.Errorf("gave up after %d attempts: %w", row.Attempts+1, sendErr))
	}
	return result{row: row, out: outbox.Outcome{Status: outbox.Queued, Provider: provider, Reason: sendErr.Error()}, err: sendErr, retry: true}
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

// RetryDelay is asynq's RetryDelayFunc: the provider's Retry-After when it
// gave one, otherwise exponential backoff with full jitter (1 s doubling,
// at most 10 minutes). n counts the message's failed attempts before the
// last one, those of the batch it left included.
func RetryDelay(n int, err error, t *asynq.Task) time.Duration {
	var se *sdk.Error
	if errors.As(err, &se) && se.Class == sdk.ClassRateLimited && se.RetryAfter > 0 {
		return se.RetryAfter
	}
	if t != nil && t.Type() == jobs.TypeDeliver {
		if d, err := jobs.DecodeDeliver(t.Payload()); err == nil {
			n += d.Attempts
		}
	}
	ceiling := time.Second << min(n, 10)
	ceiling = min(ceiling, 10*time.Minute)
	return time.Duration(rand.Int64N(int64(ceiling))) + 100*time.Millisecond
}
