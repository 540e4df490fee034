// Package relay moves committed outbox rows into the queue.
//
// It is one of the narrowly granted cross-tenant paths: it sees other
// tenants' rows only through outbox_pending and outbox_mark_relayed (see
// migrations/00002), which reveal ids and priority and nothing else.
//
// Each row becomes an asynq task whose id is the row id. A row is marked
// relayed only after its task is in Redis, in the same database transaction
// that locked it: a crash in between leaves the row pending, the next pass
// enqueues it again, and asynq refuses the duplicate id — nothing is lost
// and nothing is sent twice. While Redis is down rows simply wait.
//
// It wakes on PostgreSQL NOTIFY (sent by a trigger when an insert commits)
// and also polls slowly, in case a notification is missed.
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
	"github.com/jackc/pgx/v5"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/jobs"
)

// Enqueuer is the part of asynq.Client the relay uses.
type Enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// Config tunes the relay.
type Config struct {
	ListenURL string        // a connection for LISTEN (the application role)
	Batch     int           // rows per pass
	Parallel  int           // enqueues in flight at once
	Poll      time.Duration // safety-net polling interval
	MaxRetry  int           // delivery attempts before a message is archived
	// Retention keeps finished tasks (and so their ids) in Redis. Zero: a
	// row relayed again after its task finished gets a new task, which finds
	// the message no longer queued and sends nothing; keeping every
	// finished task would cost Redis work and memory per message.
	Retention   time.Duration
	TaskTimeout time.Duration
}

// DefaultConfig is tuned for latency and throughput on one node.
func DefaultConfig(listenURL string) Config {
	return Config{ListenURL: listenURL, Batch: 100, Parallel: 16, Poll: 2 * time.Second, MaxRetry: 12, TaskTimeout: time.Minute}
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
	return &Relay{db: db, q: q, cfg: cfg, log: log}
}

const channel = "keyrelay_outbox"

// Run relays until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	go r.listen(ctx, wake)
	backoff := time.Duration(0)
	for {
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

// listen forwards notifications to wake, reconnecting as needed.
func (r *Relay) listen(ctx context.Context, wake chan<- struct{}) {
	for ctx.Err() == nil {
		err := r.listenOnce(ctx, wake)
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("outbox relay: LISTEN connection lost; polling until it is back", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (r *Relay) listenOnce(ctx context.Context, wake chan<- struct{}) error {
	conn, err := pgx.Connect(ctx, r.cfg.ListenURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return err
	}
	// A pass right after (re)connecting catches what was inserted meanwhile.
	poke(wake)
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		poke(wake)
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
}

// pass relays one batch in one transaction: lock, enqueue, mark.
func (r *Relay) pass(ctx context.Context) (int, error) {
	tx := r.db.WithContext(ctx).Begin()
	if tx.Error != nil {
		return 0, tx.Error
	}
	defer tx.Rollback()
	var rows []pending
	if err := tx.Raw("SELECT tenant_id, id, priority, not_before, schedule_rev FROM outbox_pending(?)", r.cfg.Batch).Scan(&rows).Error; err != nil {
		return 0, fmt.Errorf("relay: pending: %w", err)
	}
	if len(rows) == 0 {
		return 0, nil
	}
	done := r.enqueue(ctx, rows)
	var tenantIDs, ids []uuid.UUID
	for i, ok := range done {
		if ok {
			tenantIDs, ids = append(tenantIDs, rows[i].TenantID), append(ids, rows[i].ID)
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

// enqueue puts rows in the queue, several at a time; done[i] says whether
// row i is in the queue (newly, or already from an earlier pass).
func (r *Relay) enqueue(ctx context.Context, rows []pending) []bool {
	done := make([]bool, len(rows))
	next := make(chan int)
	var wg sync.WaitGroup
	// After one failure the rest of the batch is left for the next pass:
	// Redis is most likely down, and each try would wait for a timeout.
	var failed atomic.Bool
	for w := 0; w < max(r.cfg.Parallel, 1); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if failed.Load() {
					continue
				}
				if done[i] = r.enqueueOne(ctx, rows[i]); !done[i] {
					failed.Store(true)
				}
			}
		}()
	}
	for i := range rows {
		next <- i
	}
	close(next)
	wg.Wait()
	return done
}

func (r *Relay) enqueueOne(ctx context.Context, row pending) bool {
	queue := row.Priority
	if _, ok := jobs.Queues[queue]; !ok {
		queue = "default"
	}
	d := jobs.Deliver{TenantID: row.TenantID, MessageID: row.ID, Rev: row.ScheduleRev}
	opts := []asynq.Option{asynq.TaskID(d.TaskID()), asynq.Queue(queue), asynq.MaxRetry(r.cfg.MaxRetry), asynq.Timeout(r.cfg.TaskTimeout)}
	if r.cfg.Retention > 0 {
		opts = append(opts, asynq.Retention(r.cfg.Retention))
	}
	if row.NotBefore != nil && row.NotBefore.After(time.Now()) {
		// Held by asynq's scheduled set until then, not by the outbox.
		// asynq keeps whole seconds: round up, never early.
		at := row.NotBefore.Truncate(time.Second)
		if at.Before(*row.NotBefore) {
			at = at.Add(time.Second)
		}
		opts = append(opts, asynq.ProcessAt(at))
	}
	_, err := r.q.EnqueueContext(ctx, asynq.NewTask(jobs.TypeDeliver, d.Encode()), opts...)
	if err == nil || errors.Is(err, asynq.ErrTaskIDConflict) {
		return true
	}
	return false
}

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
