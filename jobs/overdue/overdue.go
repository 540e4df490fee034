// Package overdue tells a tenant when a key is not back by the end of the
// access it left with: one email to the owners and admins and one
// key.overdue webhook event per incident.
//
// Nothing on the request path looks for overdue keys. The sweep asks
// keys_overdue (a SECURITY DEFINER function that reveals the ids of keys
// due an alert and nothing else, see migrations/00012) and handles each in
// its tenant's transaction, checking the key again under a row lock, so two
// replicas sweeping at once alert once. keys.overdue_alerted_at records the
// alert: a key is due one again only when its out_until moves past it (a new
// pickup, or an end edited later that has passed again).
package overdue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/jobs"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/webhooks"
)

// Alerter tells the tenant's admins.
type Alerter interface {
	AlertAdmins(ctx context.Context, kind string, data map[string]string) error
}

// Sweeper finds overdue keys and raises their alerts.
type Sweeper struct {
	db     *gorm.DB
	scope  *tenants.Scope
	alerts Alerter
	log    *slog.Logger
}

// New returns a sweeper over the application role's pool.
func New(db *gorm.DB, scope *tenants.Scope, alerts Alerter, log *slog.Logger) *Sweeper {
	return &Sweeper{db: db, scope: scope, alerts: alerts, log: log}
}

// batch bounds one call of keys_overdue; Sweep asks again while full.
const batch = 200

type due struct {
	TenantID uuid.UUID
	ID       uuid.UUID
}

// Sweep alerts on every key due an alert and returns how many it alerted
// on. A key whose alert fails stays due and is tried at the next sweep.
func (s *Sweeper) Sweep(ctx context.Context) (int, error) {
	alerted := 0
	for {
		var rows []due
		if err := s.db.WithContext(ctx).Raw("SELECT tenant_id, id FROM keys_overdue(?)", batch).Scan(&rows).Error; err != nil {
			return alerted, fmt.Errorf("overdue: find keys: %w", err)
		}
		var failed error
		round := 0
		for _, r := range rows {
			var ok bool
			err := s.scope.Do(ctx, r.TenantID, func(ctx context.Context) error {
				var err error
				ok, err = s.alert(ctx, r.ID)
				return err
			})
			if err != nil {
				failed = errors.Join(failed, fmt.Errorf("overdue: key %s: %w", r.ID, err))
			} else if ok {
				round++
			}
		}
		alerted += round
		// A full batch may hide more; one that alerted on nothing would
		// only come back the same.
		if failed != nil || len(rows) < batch || round == 0 {
			return alerted, failed
		}
	}
}

type overdueKey struct {
	ID          uuid.UUID
	Name        string
	OutAccessID *uuid.UUID
	OutSince    time.Time
	OutUntil    time.Time
	Timezone    string
	VisitorName *string
}

// alert raises the alert of one key if it is still due one.
func (s *Sweeper) alert(ctx context.Context, keyID uuid.UUID) (bool, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return false, err
	}
	var k overdueKey
	err = tx.Raw(`SELECT k.id, k.name, k.out_access_id, k.out_since, k.out_until, bx.timezone, bk.visitor_name
		FROM keys k
		JOIN boxes bx ON bx.id = k.home_box_id
		LEFT JOIN bookings bk ON bk.id = k.out_access_id
		WHERE k.id = ? AND k.state = 'out' AND k.deleted_at IS NULL AND k.out_until < now()
		  AND (k.overdue_alerted_at IS NULL OR k.overdue_alerted_at < k.out_until)
		FOR UPDATE OF k`, keyID).Take(&k).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return false, nil // returned, moved or alerted since the scan
	}
	if err != nil {
		return false, fmt.Errorf("load key: %w", err)
	}
	if err := tx.Exec(`UPDATE keys SET overdue_alerted_at = now() WHERE id = ?`, keyID).Error; err != nil {
		return false, fmt.Errorf("mark alerted: %w", err)
	}
	loc, err := time.LoadLocation(k.Timezone)
	if err != nil {
		loc = time.UTC
	}
	data := map[string]string{"key": k.Name, "due": k.OutUntil.In(loc).Format("2006-01-02 15:04 MST"), "since": k.OutSince.In(loc).Format("2006-01-02 15:04 MST")}
	if k.VisitorName != nil {
		data["visitor"] = *k.VisitorName
	}
	if err := s.alerts.AlertAdmins(ctx, "key_overdue", data); err != nil {
		return false, err
	}
	event := map[string]any{"key_id": k.ID, "key_name": k.Name, "booking_id": k.OutAccessID,
		"out_since": k.OutSince.UTC(), "due_at": k.OutUntil.UTC()}
	if err := webhooks.Emit(ctx, webhooks.KeyOverdue, event); err != nil {
		return false, err
	}
	details := map[string]string{"due_at": k.OutUntil.UTC().Format(time.RFC3339)}
	if k.OutAccessID != nil {
		details["booking"] = k.OutAccessID.String()
	}
	return true, audit.Record(ctx, "platform", "key.overdue", "key:"+k.ID.String(), details)
}

// Run sweeps every interval until ctx ends.
func (s *Sweeper) Run(ctx context.Context, every time.Duration) {
	jobs.Every(ctx, every, func(ctx context.Context) {
		if n, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("overdue: sweep failed; retrying at the next tick", "alerted", n, "err", err)
		}
	})
}
