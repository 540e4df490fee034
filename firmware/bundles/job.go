package bundles

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5"

	"github.com/keyrelay/keyrelay/firmware/devices"
	"github.com/keyrelay/keyrelay/tenants"
)

// TypeRebuild is the asynq task that rebuilds one box's bundle.
const TypeRebuild = "bundle:rebuild"

// Channel is the PostgreSQL notification channel the triggers of
// migration 00015 notify, with "tenant:box" as payload.
const Channel = "keyrelay_bundles"

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

// Listen holds a connection LISTENing on Channel until ctx ends and
// schedules a rebuild for every box notified, reconnecting after a
// failure. Several workers may listen: the task ids make one rebuild.
func Listen(ctx context.Context, dsn string, q Enqueuer, debounce time.Duration, log *slog.Logger) {
	backoff := time.Second
	for ctx.Err() == nil {
		err := listenOnce(ctx, dsn, q, debounce, log)
		if ctx.Err() != nil {
			return
		}
		log.Warn("bundle change listener stopped; reconnecting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func listenOnce(ctx context.Context, dsn string, q Enqueuer, debounce time.Duration, log *slog.Logger) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+Channel); err != nil {
		return err
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		tenant, box, ok := strings.Cut(n.Payload, ":")
		t := RebuildTask{}
		t.TenantID, err = uuid.Parse(tenant)
		if err == nil {
			t.BoxID, err = uuid.Parse(box)
		}
		if !ok || err != nil {
			log.Warn("bundle change listener: bad payload", "payload", n.Payload)
			continue
		}
		if err := Schedule(ctx, q, debounce, t, time.Now()); err != nil {
			// The mark stays in box_bundles: the box's next fetch rebuilds.
			log.Warn("bundle rebuild not scheduled", "box", t.BoxID, "err", err)
		}
	}
}
