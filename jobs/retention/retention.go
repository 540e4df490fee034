// Package retention keeps the personal data keyrelay holds to what it
// needs (issue 10), in every tenant, periodically:
//
//   - message bodies and recipients are purged MessageBodies after the
//     message was created, once it is finished (sent, delivered, failed or
//     cancelled); the delivery record stays (retention_purge_messages);
//   - pickup challenges, which hold the phone number typed at a box, are
//     deleted a day after they expired (retention_sweep_challenges);
//   - the durable copies of idempotent answers (app/idempotency.go) are
//     deleted a day after they were written, the lifetime of an
//     Idempotency-Key (retention_sweep_idempotency);
//   - bookings that ended or were revoked more than Visitors ago, and
//     alias codes retired that long ago, lose the visitor's name, phone
//     and email (tenants/visitors.AnonymiseEnded), tenant by tenant.
//
// The Redis copies of idempotent answers and the brute-force counters
// keyed by phone number (tenants/guard) expire with their TTLs.
// Sessions, reset tokens and login challenges are the janitor's
// (jobs/janitor).
//
// The cross-tenant steps are SECURITY DEFINER functions owned by
// keyrelay_janitor (migrations/00022_retention.sql, 00029), which can read ids and
// times and overwrite, never read, the purged columns. Running the job on
// several replicas at once is harmless: every step is idempotent, and
// purges skip rows another replica holds.
package retention

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/jobs"
	"github.com/keyrelay/keyrelay/tenants/visitors"
)

// Config says how long data is kept and how often the job looks.
type Config struct {
	// MessageBodies is how long a message's content and recipient are
	// kept (KEYRELAY_RETAIN_MESSAGE_BODIES, default 30 days).
	MessageBodies time.Duration
	// Visitors is how long after an access ended its visitor's contact
	// details are kept (KEYRELAY_RETAIN_VISITORS, default 180 days).
	Visitors time.Duration
	// Every is the period of the sweep.
	Every time.Duration
	// Batch bounds the messages purged per statement, so a first run on a
	// large table does not hold row locks for long.
	Batch int
}

// DefaultConfig is the issue's.
func DefaultConfig() Config {
	return Config{MessageBodies: 30 * 24 * time.Hour, Visitors: 180 * 24 * time.Hour, Every: time.Hour, Batch: 1000}
}

// Scope opens tenant-scoped transactions (tenants.Scope).
type Scope interface {
	Do(ctx context.Context, tenantID uuid.UUID, fn func(ctx context.Context) error) error
}

// Job runs the sweeps.
type Job struct {
	db    *gorm.DB
	scope Scope
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
}

// New returns the job over the application role's pool.
func New(db *gorm.DB, scope Scope, cfg Config, log *slog.Logger) (*Job, error) {
	if cfg.MessageBodies < time.Hour || cfg.Visitors < time.Hour {
		return nil, errors.New("retention: keep messages and visitors at least an hour")
	}
	if cfg.Every <= 0 || cfg.Batch < 1 {
		return nil, errors.New("retention: Every and Batch must be positive")
	}
	return &Job{db: db, scope: scope, cfg: cfg, log: log, now: time.Now}, nil
}

// Swept counts what one sweep changed.
type Swept struct {
	MessageBodies    int
	PickupChallenges int
	// IdempotentAnswers: durable copies of answers past their key's day.
	IdempotentAnswers int
	Tenants           int
	Bookings          int
	AliasCodes        int
}

// Sweep runs every step once. A tenant whose anonymisation fails does not
// stop the others; the first error is returned after all were tried.
func (j *Job) Sweep(ctx context.Context) (Swept, error) {
	var out Swept
	var err error
	out.MessageBodies, err = j.inBatches(ctx, "SELECT retention_purge_messages(make_interval(secs => ?), ?)", j.cfg.MessageBodies.Seconds())
	if err != nil {
		return out, fmt.Errorf("retention: purge messages: %w", err)
	}
	if err := j.db.WithContext(ctx).Raw("SELECT retention_sweep_challenges()").Scan(&out.PickupChallenges).Error; err != nil {
		return out, fmt.Errorf("retention: sweep pickup challenges: %w", err)
	}
	out.IdempotentAnswers, err = j.inBatches(ctx, "SELECT retention_sweep_idempotency(?)")
	if err != nil {
		return out, fmt.Errorf("retention: sweep idempotent answers: %w", err)
	}
	before := j.now().Add(-j.cfg.Visitors)
	var due []uuid.UUID
	if err := j.db.WithContext(ctx).Raw("SELECT tenant_id FROM retention_visitor_tenants(?)", before).Scan(&due).Error; err != nil {
		return out, fmt.Errorf("retention: tenants due: %w", err)
	}
	var first error
	for _, t := range due {
		var a visitors.Anonymised
		err := j.scope.Do(ctx, t, func(ctx context.Context) error {
			var err error
			a, err = visitors.AnonymiseEnded(ctx, before)
			return err
		})
		if err != nil {
			j.log.Warn("retention: anonymise visitors failed", "tenant", t, "err", err)
			if first == nil {
				first = fmt.Errorf("retention: tenant %s: %w", t, err)
			}
			continue
		}
		out.Tenants++
		out.Bookings += a.Bookings
		out.AliasCodes += a.AliasCodes
	}
	return out, first
}

// inBatches runs a step that changes at most Batch rows per call (query's
// last placeholder) until a call changes fewer, and returns the total.
func (j *Job) inBatches(ctx context.Context, query string, args ...any) (int, error) {
	total := 0
	for {
		var n int
		if err := j.db.WithContext(ctx).Raw(query, append(args, j.cfg.Batch)...).Scan(&n).Error; err != nil {
			return total, err
		}
		total += n
		if n < j.cfg.Batch {
			return total, nil
		}
	}
}

// Run sweeps every period until ctx ends.
func (j *Job) Run(ctx context.Context) error {
	jobs.Every(ctx, j.cfg.Every, func(ctx context.Context) {
		s, err := j.Sweep(ctx)
		if err != nil && ctx.Err() == nil {
			j.log.Warn("retention: sweep failed", "err", err)
		}
		if s.MessageBodies+s.PickupChallenges+s.Bookings+s.AliasCodes > 0 {
			j.log.Info("retention: swept", "message_bodies", s.MessageBodies, "pickup_challenges", s.PickupChallenges,
				"tenants", s.Tenants, "bookings", s.Bookings, "alias_codes", s.AliasCodes)
		}
	})
	return nil
}
