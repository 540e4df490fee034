// Package relay moves committed outbox rows into the queue.
//
// It is one of the narrowly granted cross-tenant paths: it sees other
// tenants' rows only through outbox_pending, outbox_mark_relayed and
// outbox_reclaim (see migrations/00002 and 00009), which reveal ids,
// priority, schedule and claims and nothing else.
//
// The rows of one tenant and priority that may go now become one batch
// task (up to jobs.MaxBatch messages); a scheduled row becomes a task of
// its own, held by asynq until its time. A row is marked relayed only after
// its task is in Redis, in the same database transaction that locked it: a
// crash in between leaves the row pending and the next pass enqueues it
// again. The same grouping gets the same task id, which asynq refuses; a
// different grouping makes a second task, and the worker's claim on each
// message (outbox.Claim) lets only one of them send it. Nothing is lost and
// nothing is sent twice. While Redis is down rows simply wait.
//
// The relay also sweeps claims whose lease ran out (a worker died
// mid-send) and relays their messages again.
//
// It wakes on a Redis message the outbox publishes after each commit that
// wrote rows (Waker), and also polls slowly, in case one is missed. Not
// PostgreSQL NOTIFY: PostgreSQL serialises the commits of all transactions
// that notify, which capped bookings and pickups far below what the same
// transactions reach without it.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/jobs"
)

// Enqueuer is the part of asynq.Client the relay uses.
type Enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// Config tunes the relay.
type Config struct {
	ListenURL string // unused since wake-ups come through Redis; kept for callers' configs
	// Redis and WakeChannel: where Waker publishes after each commit that
	// wrote outbox rows. Nil Redis: the relay only polls.
	Redis       redis.UniversalClient
	WakeChannel string
	Batch       int           // rows per pass
	Group       int           // messages per batch task
	Parallel    int           // enqueues in flight at once
	Poll        time.Duration // safety-net polling interval
	MaxRetry    int           // delivery attempts before a message is archived
	// Retention keeps finished tasks (and so their ids) in Redis. Zero: a
	// row relayed again after its task finished gets a new task, which finds
	// the message no longer queued and sends nothing; keeping every
	// finished task would cost Redis work and memory per message.
	Retention   time.Duration
	TaskTimeout time.Duration
	// Tracer, when set, continues the trace of the request that wrote a
	// row: its enqueue span is the child of the row's outbox write and the
	// parent of the delivery job (through the task's headers).
	Tracer trace.Tracer
}

// DefaultConfig is tuned for latency and throughput on one node.
func DefaultConfig() Config {
	return Config{Batch: 500, Group: jobs.MaxBatch, Parallel: 16, Poll: 2 * time.Second, MaxRetry: 12, TaskTimeout: time.Minute}
}

// Relay runs the loop.
type Relay struct {
	db  *gorm.DB
	q   Enqueuer
	cfg Config
	log *slog.Logger
}

// New returns a relay over the application role's pool.
func New(db *gorm.DB, q Enqueuer, cfg Config, log *slog.Logger) *Relay {
	if cfg.Tracer == nil {
		cfg.Tracer = noop.NewTracerProvider().Tracer("")
	}
	return &Relay{db: db, q: q, cfg: cfg, log: log}
}

// DefaultWakeChannel is the Redis channel of outbox wake-ups.
const DefaultWakeChannel = "keyrelay:outbox-wake"

// Run relays until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	go r.listen(ctx, wake)
	backoff := time.Duration(0)
	var swept time.Time
	for {
		if time.Since(swept) >= r.cfg.Poll {
			// On the slow clock only: a dead worker's lease is minutes long.
			swept = time.Now()
			if n, err := r.Reclaim(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn("outbox relay: claim sweep failed", "err", err)
			} else if n > 0 {
				r.log.Warn("outbox relay: messages of a worker that stopped mid-send go out again", "messages", n)
			}
		}
		n, err := r.drain(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			backoff = min(max(backoff*2, 100*time.Millisecond), 5*time.Second)
			r.log.Warn("outbox relay: pass failed; rows wait in the outbox", "err", err, "retry_in", backoff)
		default:
			backoff = 0
			if n > 0 {
				r.log.Debug("outbox relay: relayed", "rows", n)
			}
		}
		wait := r.cfg.Poll
		if backoff > 0 {
			wait = backoff
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-wake:
			if backoff > 0 {
				// Still failing: don't hammer a broken Redis on every insert.
				<-t.C
			}
		case <-t.C:
		}
		t.Stop()
	}
}

// listen forwards wake-ups to wake: Redis messages published by
// Waker.Wake after a commit. go-redis resubscribes by itself after Redis
// comes back; the slow poll covers the gap.
func (r *Relay) listen(ctx context.Context, wake chan<- struct{}) {
	if r.cfg.Redis == nil {
		return // polling only
	}
	ps := r.cfg.Redis.Subscribe(ctx, r.cfg.WakeChannel)
	defer ps.Close()
	// A pass right after subscribing catches what was inserted meanwhile.
	poke(wake)
	msgs := ps.Channel()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-msgs:
			if !ok {
				return
			}
			poke(wake)
		}
	}
}

// Waker publishes the wake-up the relays of every replica listen for.
type Waker struct {
	Redis   redis.UniversalClient
	Channel string
	Log     *slog.Logger
}

// Wake tells the relays that rows were committed. A lost wake-up only
// costs the poll interval: the rows are in the outbox.
func (w Waker) Wake(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := w.Redis.Publish(ctx, w.Channel, "").Err(); err != nil && w.Log != nil {
		w.Log.Warn("outbox: cannot wake the relay; it finds the rows at its next poll", "err", err)
	}
}

func poke(wake chan<- struct{}) {
	select {
	case wake <- struct{}{}:
	default:
	}
}

// drain relays batches until the outbox has no pending row.
func (r *Relay) drain(ctx context.Context) (int, error) {
	total := 0
	for {
		n, err := r.pass(ctx)
		total += n
		if err != nil || n < r.cfg.Batch {
			return total, err
		}
	}
}

type pending struct {
	TenantID    uuid.UUID
	ID          uuid.UUID
	Priority    string
	NotBefore   *time.Time
	ScheduleRev int
	// TraceParent is the W3C trace context of the span that wrote the row,
	// when tracing was on.
	TraceParent *string
}

// Reclaim drops the claims whose lease ran out and hands their queued
// messages back to the relay; it reports how many.
func (r *Relay) Reclaim(ctx context.Context) (int, error) {
	var n int
	if err := r.db.WithContext(ctx).Raw("SELECT outbox_reclaim(?)", r.cfg.Batch).Scan(&n).Error; err != nil {
		return 0, fmt.Errorf("relay: reclaim: %w", err)
	}
	return n, nil
}

// pass relays one batch in one transaction: lock, enqueue, mark.
func (r *Relay) pass(ctx context.Context) (int, error) {
	tx := r.db.WithContext(ctx).Begin()
	if tx.Error != nil {
		return 0, tx.Error
	}
	defer tx.Rollback()
	// The mark does not wait for the disk: a mark lost to a database crash
	// only relays the rows again, which the claims make harmless, and
	// workers claiming these rows wait for this transaction to end.
	if err := tx.Exec("SET LOCAL synchronous_commit = off").Error; err != nil {
		return 0, fmt.Errorf("relay: %w", err)
	}
	var rows []pending
	if err := tx.Raw("SELECT tenant_id, id, priority, not_before, schedule_rev, trace_parent FROM outbox_pending(?)", r.cfg.Batch).Scan(&rows).Error; err != nil {
		return 0, fmt.Errorf("relay: pending: %w", err)
	}
	if len(rows) == 0 {
		return 0, nil
	}
	tasks := r.group(rows, time.Now())
	done := r.enqueue(ctx, tasks)
	var tenantIDs, ids []uuid.UUID
	for i, ok := range done {
		if ok {
			for _, row := range tasks[i].rows {
				tenantIDs, ids = append(tenantIDs, row.TenantID), append(ids, row.ID)
			}
		}
	}
	if len(ids) > 0 {
		if err := tx.Exec("SELECT outbox_mark_relayed(?::uuid[], ?::uuid[])", uuidArray(tenantIDs), uuidArray(ids)).Error; err != nil {
			return 0, fmt.Errorf("relay: mark: %w", err)
		}
	}
	if err := tx.Commit().Error; err != nil {
		return 0, fmt.Errorf("relay: commit: %w", err)
	}
	if len(ids) < len(rows) {
		return len(ids), fmt.Errorf("relay: %d of %d rows could not be enqueued", len(rows)-len(ids), len(rows))
	}
	return len(ids), nil
}

// task is one task to enqueue and the rows it carries.
type task struct {
	task *asynq.Task
	opts []asynq.Option
	rows []pending
}

func queueOf(priority string) string {
	if _, ok := jobs.Queues[priority]; ok {
		return priority
	}
	return "default"
}

// group makes the pass's tasks: the rows that may go now, in batches of
// one tenant and priority (in the order they were written), and one task
// per scheduled row.
func (r *Relay) group(rows []pending, now time.Time) []task {
	type key struct {
		tenant   uuid.UUID
		priority string
	}
	var tasks []task
	open := map[key]int{} // the batch still being filled, by key
	for _, row := range rows {
		if row.NotBefore != nil && row.NotBefore.After(now) {
			tasks = append(tasks, r.scheduled(row))
			continue
		}
		k := key{row.TenantID, queueOf(row.Priority)}
		i, ok := open[k]
		if !ok || len(tasks[i].rows) >= max(r.cfg.Group, 1) {
			i = len(tasks)
			open[k] = i
			tasks = append(tasks, task{})
		}
		tasks[i].rows = append(tasks[i].rows, row)
	}
	for i := range tasks {
		if tasks[i].task != nil {
			continue
		}
		b := jobs.DeliverBatch{TenantID: tasks[i].rows[0].TenantID}
		for _, row := range tasks[i].rows {
			b.Messages = append(b.Messages, jobs.Ref{ID: row.ID, Rev: row.ScheduleRev})
		}
		tasks[i].task = asynq.NewTask(jobs.TypeDeliverBatch, b.Encode())
		tasks[i].opts = r.options(b.TaskID(), queueOf(tasks[i].rows[0].Priority))
	}
	return tasks
}

func (r *Relay) options(id, queue string) []asynq.Option {
	opts := []asynq.Option{asynq.TaskID(id), asynq.Queue(queue), asynq.MaxRetry(r.cfg.MaxRetry), asynq.Timeout(r.cfg.TaskTimeout)}
	if r.cfg.Retention > 0 {
		opts = append(opts, asynq.Retention(r.cfg.Retention))
	}
	return opts
}

// scheduled is the task of a row that waits for its time.
func (r *Relay) scheduled(row pending) task {
	d := jobs.Deliver{TenantID: row.TenantID, MessageID: row.ID, Rev: row.ScheduleRev}
	// Held by asynq's scheduled set until then, not by the outbox. asynq
	// keeps whole seconds: round up, never early.
	at := row.NotBefore.Truncate(time.Second)
	if at.Before(*row.NotBefore) {
		at = at.Add(time.Second)
	}
	opts := append(r.options(d.TaskID(), queueOf(row.Priority)), asynq.ProcessAt(at))
	return task{task: asynq.NewTask(jobs.TypeDeliver, d.Encode()), opts: opts, rows: []pending{row}}
}

// enqueue puts tasks in the queue, several at a time; done[i] says whether
// task i is in the queue (newly, or already from an earlier pass).
func (r *Relay) enqueue(ctx context.Context, tasks []task) []bool {
	done := make([]bool, len(tasks))
	next := make(chan int)
	var wg sync.WaitGroup
	// After one failure the rest of the pass is left for the next one:
	// Redis is most likely down, and each try would wait for a timeout.
	var failed atomic.Bool
	for w := 0; w < min(max(r.cfg.Parallel, 1), len(tasks)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if failed.Load() {
					continue
				}
				_, err := r.enqueueTraced(ctx, tasks[i])
				if done[i] = err == nil || errors.Is(err, asynq.ErrTaskIDConflict); !done[i] {
					failed.Store(true)
				}
			}
		}()
	}
	for i := range tasks {
		next <- i
	}
	close(next)
	wg.Wait()
	return done
}

// enqueueTraced enqueues t under a span that continues the trace of its
// first traced row, linked to the other rows' traces; the span's context
// travels in the task's headers. Rows written without tracing make no span:
// a pass of the relay is not a trace of its own.
func (r *Relay) enqueueTraced(ctx context.Context, t task) (*asynq.TaskInfo, error) {
	var parent context.Context
	var links []trace.Link
	for _, row := range t.rows {
		if row.TraceParent == nil {
			continue
		}
		rc := traceContext.Extract(ctx, propagation.MapCarrier{"traceparent": *row.TraceParent})
		sc := trace.SpanContextFromContext(rc)
		if !sc.IsValid() {
			continue
		}
		if parent == nil {
			parent = rc
		} else {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	if parent == nil {
		return r.q.EnqueueContext(ctx, t.task, t.opts...)
	}
	sctx, span := r.cfg.Tracer.Start(parent, "outbox relay", trace.WithSpanKind(trace.SpanKindProducer), trace.WithLinks(links...),
		trace.WithAttributes(attribute.String("task.type", t.task.Type()), attribute.Int("messages", len(t.rows))))
	defer span.End()
	headers := propagation.MapCarrier{}
	traceContext.Inject(sctx, headers)
	info, err := r.q.EnqueueContext(ctx, asynq.NewTaskWithHeaders(t.task.Type(), t.task.Payload(), headers), t.opts...)
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		span.SetStatus(codes.Error, "enqueue failed")
	}
	return info, err
}

// traceContext is the W3C propagation the relay and delivery agree on.
var traceContext = propagation.TraceContext{}

// uuidArray renders ids as a PostgreSQL array literal for one bound
// parameter; uuids need no quoting.
func uuidArray(ids []uuid.UUID) string {
	b := make([]byte, 0, len(ids)*37+2)
	b = append(b, '{')
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, id.String()...)
	}
	return string(append(b, '}'))
}
