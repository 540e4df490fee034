// Package janitor deletes what can never be used again: expired or ended
// sessions and password reset tokens, in every tenant. It is a narrowly
// granted cross-tenant path: it calls janitor_sweep (migrations/00002),
// which may delete those rows and read their timestamps, nothing else.
package janitor

import (
	"context"
	"log/slog"
	"time"

	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/jobs"
)

// Janitor sweeps periodically.
type Janitor struct {
	db    *gorm.DB
	idle  time.Duration // the session idle timeout
	every time.Duration
	log   *slog.Logger
}

// New returns a janitor over the application role's pool.
func New(db *gorm.DB, sessionIdle, every time.Duration, log *slog.Logger) *Janitor {
	return &Janitor{db: db, idle: sessionIdle, every: every, log: log}
}

// Sweep runs once and reports how many rows it deleted.
func (j *Janitor) Sweep(ctx context.Context) (sessions, resets int, err error) {
	var out struct{ Sessions, Resets int }
	err = j.db.WithContext(ctx).Raw("SELECT sessions, resets FROM janitor_sweep(make_interval(secs => ?))", j.idle.Seconds()).Scan(&out).Error
	return out.Sessions, out.Resets, err
}

// Run sweeps every period until ctx ends. Running it on several replicas
// is harmless: the deletes are idempotent.
func (j *Janitor) Run(ctx context.Context) error {
	jobs.Every(ctx, j.every, func(ctx context.Context) {
		s, r, err := j.Sweep(ctx)
		if err != nil && ctx.Err() == nil {
			j.log.Warn("janitor: sweep failed", "err", err)
		} else if s+r > 0 {
			j.log.Info("janitor: swept", "sessions", s, "reset_tokens", r)
		}
	})
	return nil
}
