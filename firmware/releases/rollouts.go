package releases

import (
	"context"
	"database/sql/driver"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/keyrelay/keyrelay/firmware/commands"
	"github.com/keyrelay/keyrelay/jobs"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// Rollout states.
const (
	AwaitingApproval = "awaiting_approval"
	Active           = "active"
	Paused           = "paused"
	Completed        = "completed"
	Aborted          = "aborted"
)

// OperatorActor names the platform operator in tenants' audit logs.
const OperatorActor = "platform:operator"

// Waves are cumulative percentages of the eligible boxes.
type Waves []int

// Scan implements sql.Scanner (jsonb).
func (w *Waves) Scan(src any) error {
	switch v := src.(type) {
	case []byte:
		return json.Unmarshal(v, w)
	case string:
		return json.Unmarshal([]byte(v), w)
	}
	return fmt.Errorf("releases: waves: unexpected %T", src)
}

// Value implements driver.Valuer.
func (w Waves) Value() (driver.Value, error) {
	b, err := json.Marshal([]int(w))
	return string(b), err
}

// Rollout is one release going to one tenant's boxes.
type Rollout struct {
	TenantID         uuid.UUID `gorm:"primaryKey"`
	ID               uuid.UUID `gorm:"primaryKey"`
	ReleaseID        uuid.UUID
	Model            string
	Version          string
	VersionNumber    int64
	SecurityVersion  int
	SHA256           []byte `gorm:"column:sha256"`
	Waves            Waves  `gorm:"type:jsonb"`
	CurrentWave      int
	WaveStartedAt    *time.Time
	FailureThreshold float64
	ObservationSecs  int
	WindowStart      *int
	WindowEnd        *int
	State            string
	StateReason      string
	FailuresForgiven int
	ApprovedBy       *string
	ApprovedAt       *time.Time
	CreatedBy        string
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

func (Rollout) TableName() string { return "firmware_rollouts" }

func (r Rollout) window() time.Duration { return time.Duration(r.ObservationSecs) * time.Second }

// Assignment is one box's part in a rollout.
type Assignment struct {
	TenantID      uuid.UUID `gorm:"primaryKey"`
	RolloutID     uuid.UUID `gorm:"primaryKey"`
	BoxID         uuid.UUID `gorm:"primaryKey"`
	Wave          int
	Status        string
	Reason        string
	FromVersion   string
	AssignedAt    time.Time
	OfferedAt     *time.Time
	DownloadingAt *time.Time
	InstallingAt  *time.Time
	InstalledAt   *time.Time
	FailedAt      *time.Time
	UpdatedAt     time.Time
}

func (Assignment) TableName() string { return "firmware_assignments" }

// Window is a daily maintenance window in each box's own time zone.
type Window struct {
	Start string `json:"start"` // HH:MM
	End   string `json:"end"`   // HH:MM; before Start: spans midnight
}

func parseClock(s string) (int, bool) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, false
	}
	return t.Hour()*60 + t.Minute(), true
}

func clockOf(m int) string { return fmt.Sprintf("%02d:%02d", m/60, m%60) }

// inWindow reports whether local minute-of-day m is inside [start, end).
func inWindow(m, start, end int) bool {
	if start <= end {
		return m >= start && m < end
	}
	return m >= start || m < end
}

// NewRollout is the operator's request.
type NewRollout struct {
	TenantID          uuid.UUID `json:"tenant_id"`
	ReleaseID         uuid.UUID `json:"release_id"`
	Waves             []int     `json:"waves"`
	FailureThreshold  *float64  `json:"failure_threshold"`
	ObservationWindow string    `json:"observation_window"`
	MaintenanceWindow *Window   `json:"maintenance_window"`
}

// RolloutView is a rollout as the operator and the tenant see it.
type RolloutView struct {
	ID                uuid.UUID      `json:"id"`
	TenantID          uuid.UUID      `json:"tenant_id"`
	ReleaseID         uuid.UUID      `json:"release_id"`
	Model             string         `json:"model"`
	Version           string         `json:"version"`
	SecurityVersion   int            `json:"security_version"`
	SHA256            string         `json:"sha256"`
	Waves             []int          `json:"waves"`
	CurrentWave       int            `json:"current_wave"`
	FailureThreshold  float64        `json:"failure_threshold"`
	ObservationWindow string         `json:"observation_window"`
	MaintenanceWindow *Window        `json:"maintenance_window"`
	State             string         `json:"state"`
	StateReason       string         `json:"state_reason"`
	ApprovedBy        *string        `json:"approved_by"`
	ApprovedAt        *time.Time     `json:"approved_at"`
	CreatedAt         time.Time      `json:"created_at"`
	UpdatedAt         time.Time      `json:"updated_at"`
	Counts            map[string]int `json:"counts,omitempty"`
}

func rolloutView(r Rollout) RolloutView {
	v := RolloutView{ID: r.ID, TenantID: r.TenantID, ReleaseID: r.ReleaseID, Model: r.Model, Version: r.Version,
		SecurityVersion: r.SecurityVersion, SHA256: hex.EncodeToString(r.SHA256), Waves: r.Waves, CurrentWave: r.CurrentWave,
		FailureThreshold: r.FailureThreshold, ObservationWindow: r.window().String(), State: r.State, StateReason: r.StateReason,
		ApprovedBy: r.ApprovedBy, ApprovedAt: utc(r.ApprovedAt), CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC()}
	if r.WindowStart != nil && r.WindowEnd != nil {
		v.MaintenanceWindow = &Window{Start: clockOf(*r.WindowStart), End: clockOf(*r.WindowEnd)}
	}
	if v.Waves == nil {
		v.Waves = []int{}
	}
	return v
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// CreateRollout starts a release's rollout to one tenant's boxes of its
// model. It waits for the tenant's approval when the tenant asks for it;
// otherwise its first wave is entered at once.
func (s *Service) CreateRollout(ctx context.Context, in NewRollout) (RolloutView, error) {
	var v tenants.Validator
	v.Check(in.TenantID != uuid.Nil, "tenant_id", "is required")
	v.Check(in.ReleaseID != uuid.Nil, "release_id", "is required")
	if in.Waves == nil {
		in.Waves = []int{5, 25, 100}
	}
	okWaves := len(in.Waves) >= 1 && len(in.Waves) <= 10 && in.Waves[len(in.Waves)-1] == 100
	for i, w := range in.Waves {
		okWaves = okWaves && w >= 1 && w <= 100 && (i == 0 || w > in.Waves[i-1])
	}
	v.Check(okWaves, "waves", "must be 1 to 10 rising percentages from 1 to 100, ending at 100")
	threshold := 0.1
	if in.FailureThreshold != nil {
		threshold = *in.FailureThreshold
	}
	v.Check(threshold > 0 && threshold <= 1, "failure_threshold", "must be a fraction above 0 and at most 1")
	obs := time.Hour
	if in.ObservationWindow != "" {
		d, err := time.ParseDuration(in.ObservationWindow)
		v.Check(err == nil && d >= time.Minute && d <= 30*24*time.Hour, "observation_window", "must be a duration from 1m to 720h")
		obs = d
	}
	var ws, we *int
	if w := in.MaintenanceWindow; w != nil {
		a, ok1 := parseClock(w.Start)
		b, ok2 := parseClock(w.End)
		v.Check(ok1, "maintenance_window.start", "must be HH:MM")
		v.Check(ok2, "maintenance_window.end", "must be HH:MM")
		v.Check(!ok1 || !ok2 || a != b, "maintenance_window.end", "must differ from start")
		ws, we = &a, &b
	}
	if err := v.Err(); err != nil {
		return RolloutView{}, err
	}
	rel, err := s.release(ctx, s.DB.WithContext(ctx), in.ReleaseID)
	if err != nil {
		return RolloutView{}, err
	}
	if rel.State != "published" {
		return RolloutView{}, tenants.Errorf(tenants.EConflict, "the release is not published yet")
	}
	var out RolloutView
	err = s.Scope.Do(ctx, in.TenantID, func(ctx context.Context) error {
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return err
		}
		var exists bool
		if err := tx.Raw(`SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = ?)`, in.TenantID).Scan(&exists).Error; err != nil {
			return fmt.Errorf("releases: tenant: %w", err)
		}
		if !exists {
			return tenants.NotFound("tenant")
		}
		var approval bool
		tx.Raw(`SELECT require_approval FROM firmware_settings`).Scan(&approval)
		now := s.now()
		r := Rollout{TenantID: in.TenantID, ID: uuid.Must(uuid.NewV7()), ReleaseID: rel.ID, Model: rel.Model, Version: rel.Version,
			VersionNumber: rel.VersionNumber, SecurityVersion: rel.SecurityVersion, SHA256: rel.SHA256, Waves: in.Waves,
			FailureThreshold: threshold, ObservationSecs: int(obs / time.Second), WindowStart: ws, WindowEnd: we,
			State: Active, CreatedBy: OperatorActor, CreatedAt: now, UpdatedAt: now}
		if approval {
			r.State = AwaitingApproval
		}
		if err := tx.Create(&r).Error; err != nil {
			if isUniqueViolation(err) {
				return tenants.Errorf(tenants.EConflict, "the tenant has an open %s rollout already; abort it or let it finish first", rel.Model)
			}
			return fmt.Errorf("releases: create rollout: %w", err)
		}
		if err := audit.Record(ctx, OperatorActor, "firmware.rollout_created", "rollout:"+r.ID.String(),
			map[string]string{"model": r.Model, "version": r.Version, "sha256": hex.EncodeToString(r.SHA256), "state": r.State}); err != nil {
			return err
		}
		if r.State == Active {
			if err := s.evaluate(ctx, &r); err != nil {
				return err
			}
		}
		out, err = s.viewWithCounts(ctx, r)
		return err
	})
	return out, err
}

func (s *Service) viewWithCounts(ctx context.Context, r Rollout) (RolloutView, error) {
	v := rolloutView(r)
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return v, err
	}
	var rows []struct {
		Status string
		N      int
	}
	if err := tx.Raw(`SELECT status, count(*) AS n FROM firmware_assignments WHERE rollout_id = ? GROUP BY status`, r.ID).Scan(&rows).Error; err != nil {
		return v, fmt.Errorf("releases: counts: %w", err)
	}
	v.Counts = map[string]int{"assigned": 0, "downloading": 0, "installing": 0, "installed": 0, "failed": 0, "skipped": 0}
	for _, row := range rows {
		v.Counts[row.Status] = row.N
	}
	return v, nil
}

// lock loads a rollout of ctx's tenant for update.
func lock(ctx context.Context, id uuid.UUID) (Rollout, error) {
	var r Rollout
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return r, err
	}
	err = tx.Clauses(clause.Locking{Strength: "UPDATE"}).Where("id = ?", id).Take(&r).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return r, tenants.NotFound("rollout")
	}
	if err != nil {
		return r, fmt.Errorf("releases: load rollout: %w", err)
	}
	return r, nil
}

func (s *Service) setState(ctx context.Context, r *Rollout, state, reason, actor, action string, extra map[string]any) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	now := s.now()
	upd := map[string]any{"state": state, "state_reason": reason, "updated_at": now}
	for k, v := range extra {
		upd[k] = v
	}
	if err := tx.Model(&Rollout{}).Where("id = ?", r.ID).Updates(upd).Error; err != nil {
		return fmt.Errorf("releases: %s: %w", action, err)
	}
	r.State, r.StateReason, r.UpdatedAt = state, reason, now
	details := map[string]string{"model": r.Model, "version": r.Version}
	if reason != "" {
		details["reason"] = reason
	}
	return audit.Record(ctx, actor, action, "rollout:"+r.ID.String(), details)
}

// tenantOfRollout finds the tenant of a rollout the operator names by id.
func (s *Service) tenantOfRollout(ctx context.Context, id uuid.UUID) (uuid.UUID, error) {
	var tenant uuid.NullUUID
	if err := s.DB.WithContext(ctx).Raw(`SELECT firmware_rollout_tenant(?)`, id).Row().Scan(&tenant); err != nil {
		return uuid.Nil, fmt.Errorf("releases: rollout tenant: %w", err)
	}
	if !tenant.Valid {
		return uuid.Nil, tenants.NotFound("rollout")
	}
	return tenant.UUID, nil
}

// asOperator runs fn in the tenant transaction of rollout id.
func (s *Service) asOperator(ctx context.Context, id uuid.UUID, fn func(ctx context.Context) error) error {
	tenant, err := s.tenantOfRollout(ctx, id)
	if err != nil {
		return err
	}
	return s.Scope.Do(ctx, tenant, fn)
}

// Control is the operator's manual pause, resume or abort.
func (s *Service) Control(ctx context.Context, id uuid.UUID, action, reason string) (RolloutView, error) {
	if len(reason) > 500 {
		return RolloutView{}, tenants.Invalid(tenants.FieldError{Field: "reason", Message: "must be at most 500 characters"})
	}
	var out RolloutView
	err := s.asOperator(ctx, id, func(ctx context.Context) error {
		r, err := lock(ctx, id)
		if err != nil {
			return err
		}
		switch action {
		case "pause":
			if r.State != Active {
				return tenants.Errorf(tenants.EConflict, "only an active rollout can be paused; this one is %s", r.State)
			}
			if reason == "" {
				reason = "paused by the operator"
			}
			err = s.setState(ctx, &r, Paused, reason, OperatorActor, "firmware.rollout_paused", nil)
		case "resume":
			if r.State != Paused {
				return tenants.Errorf(tenants.EConflict, "only a paused rollout can be resumed; this one is %s", r.State)
			}
			// Resuming accepts the failures so far: the threshold counts
			// only new ones.
			failed, _, err := s.failures(ctx, r)
			if err != nil {
				return err
			}
			r.FailuresForgiven = failed
			if err = s.setState(ctx, &r, Active, reason, OperatorActor, "firmware.rollout_resumed", map[string]any{"failures_forgiven": failed}); err != nil {
				return err
			}
			err = s.evaluate(ctx, &r)
		case "abort":
			if r.State == Completed || r.State == Aborted {
				return tenants.Errorf(tenants.EConflict, "the rollout is %s already", r.State)
			}
			if reason == "" {
				reason = "aborted by the operator"
			}
			err = s.setState(ctx, &r, Aborted, reason, OperatorActor, "firmware.rollout_aborted", nil)
		default:
			return tenants.NotFound("action")
		}
		if err != nil {
			return err
		}
		out, err = s.viewWithCounts(ctx, r)
		return err
	})
	return out, err
}

// Approve is the tenant admin's go-ahead for a rollout that waits for it.
func (s *Service) Approve(ctx context.Context, id uuid.UUID) (RolloutView, error) {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return RolloutView{}, err
	}
	r, err := lock(ctx, id)
	if err != nil {
		return RolloutView{}, err
	}
	if r.State != AwaitingApproval {
		return RolloutView{}, tenants.Errorf(tenants.EConflict, "the rollout is %s, not awaiting approval", r.State)
	}
	now := s.now()
	actor := p.Actor()
	if err := s.setState(ctx, &r, Active, "", actor, "firmware.rollout_approved", map[string]any{"approved_by": actor, "approved_at": now}); err != nil {
		return RolloutView{}, err
	}
	r.ApprovedBy, r.ApprovedAt = &actor, &now
	if err := s.evaluate(ctx, &r); err != nil {
		return RolloutView{}, err
	}
	return s.viewWithCounts(ctx, r)
}

// failures counts the rollout's failed boxes and its boxes taking part.
func (s *Service) failures(ctx context.Context, r Rollout) (failed, total int, err error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return 0, 0, err
	}
	var c struct{ Failed, Total int }
	if err := tx.Raw(`SELECT count(*) FILTER (WHERE status = 'failed') AS failed, count(*) FILTER (WHERE status <> 'skipped') AS total
		FROM firmware_assignments WHERE rollout_id = ?`, r.ID).Scan(&c).Error; err != nil {
		return 0, 0, fmt.Errorf("releases: count failures: %w", err)
	}
	return c.Failed, c.Total, nil
}

// evaluate moves an active rollout on: boxes that went bad after
// installing count as failures; too many failures pause it; a finished
// wave lets the next one in; after the last it is complete. r is locked.
func (s *Service) evaluate(ctx context.Context, r *Rollout) error {
	if r.State != Active {
		return nil
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	now := s.now()
	window := r.window()
	// A box that installed and then went offline, or failed to open a bin,
	// within the observation window.
	var bad []struct {
		BoxID  uuid.UUID
		Reason string
	}
	if err := tx.Raw(`
		SELECT a.box_id,
		       CASE WHEN EXISTS (SELECT 1 FROM box_status s WHERE s.box_id = a.box_id AND NOT s.online)
		            THEN 'stopped sending heartbeats after installing'
		            ELSE 'failed to open a bin after installing' END AS reason
		FROM firmware_assignments a
		WHERE a.rollout_id = ? AND a.status = 'installed'
		  AND ((? <= a.installed_at + make_interval(secs => ?)
		        AND EXISTS (SELECT 1 FROM box_status s WHERE s.box_id = a.box_id AND NOT s.online))
		    OR EXISTS (SELECT 1 FROM box_commands c WHERE c.box_id = a.box_id AND c.kind = 'open_bin' AND c.result = 'failed'
		               AND c.acked_at >= a.installed_at AND c.acked_at <= a.installed_at + make_interval(secs => ?)))`,
		r.ID, now, r.ObservationSecs, r.ObservationSecs).Scan(&bad).Error; err != nil {
		return fmt.Errorf("releases: health after install: %w", err)
	}
	for _, b := range bad {
		if err := tx.Model(&Assignment{}).Where("rollout_id = ? AND box_id = ?", r.ID, b.BoxID).
			Updates(map[string]any{"status": "failed", "reason": b.Reason, "failed_at": now, "updated_at": now}).Error; err != nil {
			return fmt.Errorf("releases: mark failure: %w", err)
		}
		if err := audit.Record(ctx, "platform", "firmware.failed_after_install", "box:"+b.BoxID.String(),
			map[string]string{"rollout": r.ID.String(), "version": r.Version, "reason": b.Reason}); err != nil {
			return err
		}
	}
	failed, total, err := s.failures(ctx, *r)
	if err != nil {
		return err
	}
	if counted := failed - r.FailuresForgiven; counted > 0 && float64(counted) > r.FailureThreshold*float64(total) {
		reason := fmt.Sprintf("failure threshold crossed: %d of %d boxes failed (threshold %s)", counted, total, strconv.FormatFloat(r.FailureThreshold, 'f', -1, 64))
		s.Log.Warn("firmware rollout paused itself", "tenant_id", r.TenantID, "rollout_id", r.ID, "failed", counted, "boxes", total)
		return s.setState(ctx, r, Paused, reason, "platform", "firmware.rollout_paused", nil)
	}
	for {
		if r.CurrentWave > 0 {
			var open int64
			if err := tx.Model(&Assignment{}).Where(`rollout_id = ? AND (status IN ('assigned', 'downloading', 'installing')
				OR (status = 'installed' AND installed_at > ?))`, r.ID, now.Add(-window)).Count(&open).Error; err != nil {
				return fmt.Errorf("releases: wave progress: %w", err)
			}
			if open > 0 {
				return nil
			}
			if r.CurrentWave >= len(r.Waves) {
				return s.setState(ctx, r, Completed, "", "platform", "firmware.rollout_completed", nil)
			}
		}
		added, err := s.enterWave(ctx, r, r.CurrentWave+1)
		if err != nil || added > 0 {
			return err
		}
		// A wave that adds nobody (a small fleet) is over at once.
	}
}

// enterWave assigns the boxes that bring the rollout up to wave k's share.
func (s *Service) enterWave(ctx context.Context, r *Rollout, k int) (int, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return 0, err
	}
	now := s.now()
	var candidates []struct {
		ID      uuid.UUID
		Version string
	}
	// Provisioned, live boxes of the model that run something older and
	// not a higher security version; a stable pseudo-random order per
	// rollout so the first wave is not always the oldest boxes.
	if err := tx.Raw(`
		SELECT b.id, coalesce(f.version, s.firmware_version, '') AS version
		FROM boxes b
		LEFT JOIN box_firmware f ON f.box_id = b.id
		LEFT JOIN box_status s ON s.box_id = b.id
		WHERE b.model = ? AND b.deleted_at IS NULL
		  AND EXISTS (SELECT 1 FROM box_credentials c WHERE c.box_id = b.id AND c.revoked_at IS NULL)
		  AND NOT EXISTS (SELECT 1 FROM firmware_assignments a WHERE a.rollout_id = ? AND a.box_id = b.id)
		  AND (f.box_id IS NULL OR (f.version_number < ? AND f.security_version <= ?))
		ORDER BY md5(?::text || b.id::text)`, r.Model, r.ID, r.VersionNumber, r.SecurityVersion, r.ID.String()).Scan(&candidates).Error; err != nil {
		return 0, fmt.Errorf("releases: eligible boxes: %w", err)
	}
	_, assigned, err := s.failures(ctx, *r)
	if err != nil {
		return 0, err
	}
	target := int(math.Ceil(float64(r.Waves[k-1]) * float64(assigned+len(candidates)) / 100))
	need := min(max(target-assigned, 0), len(candidates))
	for _, c := range candidates[:need] {
		a := Assignment{TenantID: r.TenantID, RolloutID: r.ID, BoxID: c.ID, Wave: k, Status: "assigned", FromVersion: c.Version, AssignedAt: now, UpdatedAt: now}
		if err := tx.Create(&a).Error; err != nil {
			return 0, fmt.Errorf("releases: assign: %w", err)
		}
		payload := map[string]any{"release_id": r.ReleaseID, "rollout_id": r.ID, "version": r.Version}
		if _, err := s.Commands.Send(ctx, c.ID, commands.FirmwareAvailable, payload); err != nil {
			return 0, err
		}
	}
	if err := tx.Model(&Rollout{}).Where("id = ?", r.ID).Updates(map[string]any{"current_wave": k, "wave_started_at": now, "updated_at": now}).Error; err != nil {
		return 0, fmt.Errorf("releases: enter wave: %w", err)
	}
	r.CurrentWave, r.WaveStartedAt, r.UpdatedAt = k, &now, now
	if err := audit.Record(ctx, "platform", "firmware.wave_entered", "rollout:"+r.ID.String(),
		map[string]string{"wave": strconv.Itoa(k), "percent": strconv.Itoa(r.Waves[k-1]), "boxes": strconv.Itoa(need)}); err != nil {
		return 0, err
	}
	if need == 0 && k == len(r.Waves) && assigned == 0 {
		return 0, s.setState(ctx, r, Completed, "no box of this model needs the release", "platform", "firmware.rollout_completed", nil)
	}
	return need, nil
}

// Tick evaluates every active rollout of every tenant: the rollout loop
// calls it, and a box's failure report evaluates its own rollout at once.
// It returns how many rollouts it looked at.
func (s *Service) Tick(ctx context.Context) (int, error) {
	list, err := s.overview(ctx, []string{Active}, 5000)
	if err != nil {
		return 0, err
	}
	for _, o := range list {
		err := s.Scope.Do(ctx, o.TenantID, func(ctx context.Context) error {
			r, err := lock(ctx, o.ID)
			if err != nil {
				return err
			}
			return s.evaluate(ctx, &r)
		})
		if err != nil {
			return 0, fmt.Errorf("releases: rollout %s: %w", o.ID, err)
		}
	}
	return len(list), nil
}

// Run ticks every interval until ctx ends.
func (s *Service) Run(ctx context.Context, every time.Duration) {
	jobs.Every(ctx, every, func(ctx context.Context) {
		if _, err := s.Tick(ctx); err != nil && ctx.Err() == nil {
			s.Log.Warn("firmware rollouts: tick failed; retrying at the next one", "err", err)
		}
	})
}

// Summary is one rollout in the operator's cross-tenant list.
type Summary struct {
	TenantID    uuid.UUID `json:"tenant_id"`
	ID          uuid.UUID `json:"id"`
	ReleaseID   uuid.UUID `json:"release_id"`
	Model       string    `json:"model"`
	Version     string    `json:"version"`
	State       string    `json:"state"`
	CurrentWave int       `json:"current_wave"`
	Waves       Waves     `json:"waves"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

func (s *Service) overview(ctx context.Context, states []string, limit int) ([]Summary, error) {
	var out []Summary
	var arg any
	if len(states) > 0 {
		arg = "{" + strings.Join(states, ",") + "}"
	}
	if err := s.DB.WithContext(ctx).Raw(`SELECT * FROM firmware_rollouts_overview(?::text[], ?)`, arg, limit).Scan(&out).Error; err != nil {
		return nil, fmt.Errorf("releases: overview: %w", err)
	}
	for i := range out {
		out[i].CreatedAt, out[i].UpdatedAt = out[i].CreatedAt.UTC(), out[i].UpdatedAt.UTC()
	}
	return out, nil
}

var states = []string{AwaitingApproval, Active, Paused, Completed, Aborted}

// Overview is the operator's list of rollouts across tenants, newest first.
func (s *Service) Overview(ctx context.Context, state string) ([]Summary, error) {
	var filter []string
	if state != "" {
		ok := false
		for _, x := range states {
			ok = ok || x == state
		}
		if !ok {
			return nil, tenants.Invalid(tenants.FieldError{Field: "state", Message: "must be one of " + strings.Join(states, ", ")})
		}
		filter = []string{state}
	}
	out, err := s.overview(ctx, filter, 500)
	if out == nil {
		out = []Summary{}
	}
	return out, err
}
