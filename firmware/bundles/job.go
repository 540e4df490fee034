package bundles

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/firmware/devices"
	"github.com/keyrelay/keyrelay/tenants"
)

// TypeRebuild is the asynq task that rebuilds one box's bundle.
const TypeRebuild = "bundle:rebuild"

// RebuildTask is the payload of a TypeRebuild task.
type RebuildTask struct {
	TenantID uuid.UUID `json:"tenant_id"`
	BoxID    uuid.UUID `json:"box_id"`
}

// Enqueuer queues tasks (asynq.Client).
type Enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// Schedule queues the rebuild of a box for the end of the current debounce
// window. The task id names the box and the window, so every change within
// one window is one rebuild, and a change after the window's task has
// started gets the next window's task: none is lost, since a change
// committed before a task starts is read by it.
func Schedule(ctx context.Context, q Enqueuer, debounce time.Duration, t RebuildTask, now time.Time) error {
	window := now.Truncate(debounce)
	raw, _ := json.Marshal(t)
	id := fmt.Sprintf("bundle:%s:%s:%d", t.TenantID, t.BoxID, window.UnixMilli())
	_, err := q.EnqueueContext(ctx, asynq.NewTask(TypeRebuild, raw), asynq.TaskID(id), asynq.ProcessAt(window.Add(debounce)),
		asynq.MaxRetry(5), asynq.Timeout(time.Minute), asynq.Queue("default"))
	if errors.Is(err, asynq.ErrTaskIDConflict) {
		return nil
	}
	return err
}

// Scope opens tenant transactions (tenants.Scope).
type Scope interface {
	Do(ctx context.Context, tenantID uuid.UUID, fn func(ctx context.Context) error) error
}

// Handler runs TypeRebuild tasks.
type Handler struct {
	svc   *Service
	scope Scope
	log   *slog.Logger
}

// NewHandler returns the task handler.
func NewHandler(svc *Service, scope Scope, log *slog.Logger) *Handler {
	return &Handler{svc: svc, scope: scope, log: log}
}

// ProcessTask implements asynq.Handler.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var rt RebuildTask
	if err := json.Unmarshal(t.Payload(), &rt); err != nil || rt.TenantID == uuid.Nil || rt.BoxID == uuid.Nil {
		return fmt.Errorf("bundles: bad task payload: %w", asynq.SkipRetry)
	}
	var out Built
	err := h.scope.Do(ctx, rt.TenantID, func(ctx context.Context) error {
		var err error
		out, err = h.svc.Rebuild(ctx, rt.BoxID)
		return err
	})
	var te *tenants.Error
	switch {
	case errors.Is(err, devices.ErrNotProvisioned), errors.Is(err, ErrNoOfflineMode), errors.As(err, &te) && te.Code == tenants.ENotFound:
		// Nothing to send to: the box gets its bundle when it is provisioned
		// (its first fetch builds it).
		return nil
	case err != nil:
		return err
	}
	h.log.Debug("bundle rebuilt", "box", rt.BoxID, "version", out.Version, "accesses", out.Accesses, "bytes", out.Size)
	return nil
}

// Pending lists boxes with changes not yet in a built bundle, across
// tenants (bundle_changes_pending: ids only).
type Pending interface {
	BoxesWithChanges(ctx context.Context, limit int) ([]RebuildTask, error)
}

// Watch schedules a rebuild for every box with pending changes, every
// interval, until ctx ends. Several workers may watch: the task ids make
// one rebuild per box and window.
func Watch(ctx context.Context, p Pending, q Enqueuer, debounce, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		due, err := p.BoxesWithChanges(ctx, 1000)
		if err != nil && ctx.Err() == nil {
			log.Warn("bundles: cannot read pending changes; retrying", "err", err)
		}
		for _, rt := range due {
			if err := Schedule(ctx, q, debounce, rt, time.Now()); err != nil && ctx.Err() == nil {
				log.Warn("bundles: cannot schedule a rebuild; retrying at the next tick", "box", rt.BoxID, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// PendingBoxes reads bundle_changes_pending on the application role's pool.
type PendingBoxes struct{ DB *gorm.DB }

// BoxesWithChanges implements Pending.
func (p PendingBoxes) BoxesWithChanges(ctx context.Context, limit int) ([]RebuildTask, error) {
	var out []RebuildTask
	err := p.DB.WithContext(ctx).Raw(`SELECT tenant_id, box_id FROM bundle_changes_pending(?)`, limit).Scan(&out).Error
	if err != nil {
		return nil, fmt.Errorf("bundles: pending boxes: %w", err)
	}
	return out, nil
}
