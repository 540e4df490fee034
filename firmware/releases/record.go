package releases

import (
	"context"
	"encoding/csv"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
)

// BoxProgress is one box's part in a rollout: the audit record's row
// (artifact digest → box → outcome, with times).
type BoxProgress struct {
	BoxID         uuid.UUID  `json:"box_id"`
	BoxName       string     `json:"box_name"`
	Wave          int        `json:"wave"`
	FromVersion   string     `json:"from_version"`
	ToVersion     string     `json:"to_version"`
	SHA256        string     `json:"sha256"`
	Status        string     `json:"status"`
	Reason        string     `json:"reason"`
	AssignedAt    time.Time  `json:"assigned_at"`
	OfferedAt     *time.Time `json:"offered_at"`
	DownloadingAt *time.Time `json:"downloading_at"`
	InstallingAt  *time.Time `json:"installing_at"`
	InstalledAt   *time.Time `json:"installed_at"`
	FailedAt      *time.Time `json:"failed_at"`
}

// Detail is a rollout with every box's progress.
type Detail struct {
	RolloutView
	Boxes []BoxProgress `json:"boxes"`
}

// detail reads rollout id in ctx's tenant transaction.
func (s *Service) detail(ctx context.Context, id uuid.UUID) (Detail, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Detail{}, err
	}
	var r Rollout
	if err := tx.Where("id = ?", id).Limit(1).Find(&r).Error; err != nil {
		return Detail{}, fmt.Errorf("releases: load rollout: %w", err)
	}
	if r.ID == uuid.Nil {
		return Detail{}, tenants.NotFound("rollout")
	}
	v, err := s.viewWithCounts(ctx, r)
	if err != nil {
		return Detail{}, err
	}
	var rows []struct {
		Assignment
		BoxName string
	}
	if err := tx.Raw(`SELECT a.*, b.name AS box_name FROM firmware_assignments a JOIN boxes b ON b.id = a.box_id
		WHERE a.rollout_id = ? ORDER BY a.wave, a.assigned_at, a.box_id`, id).Scan(&rows).Error; err != nil {
		return Detail{}, fmt.Errorf("releases: progress: %w", err)
	}
	d := Detail{RolloutView: v, Boxes: make([]BoxProgress, len(rows))}
	digest := hex.EncodeToString(r.SHA256)
	for i, a := range rows {
		d.Boxes[i] = BoxProgress{BoxID: a.BoxID, BoxName: a.BoxName, Wave: a.Wave, FromVersion: a.FromVersion, ToVersion: r.Version,
			SHA256: digest, Status: a.Status, Reason: a.Reason, AssignedAt: a.AssignedAt.UTC(), OfferedAt: utc(a.OfferedAt),
			DownloadingAt: utc(a.DownloadingAt), InstallingAt: utc(a.InstallingAt), InstalledAt: utc(a.InstalledAt), FailedAt: utc(a.FailedAt)}
	}
	return d, nil
}

// RolloutForOperator is a rollout with its per-box progress, for the
// platform operator.
func (s *Service) RolloutForOperator(ctx context.Context, id uuid.UUID) (Detail, error) {
	var d Detail
	err := s.asOperator(ctx, id, func(ctx context.Context) error {
		var err error
		d, err = s.detail(ctx, id)
		return err
	})
	return d, err
}

// Rollout is a rollout of the caller's tenant with its boxes' progress.
func (s *Service) Rollout(ctx context.Context, id uuid.UUID) (Detail, error) {
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return Detail{}, err
	}
	return s.detail(ctx, id)
}

// Rollouts lists the caller's tenant's rollouts, newest first.
func (s *Service) Rollouts(ctx context.Context, after uuid.UUID, limit int) ([]RolloutView, error) {
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return nil, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	q := tx.Order("id DESC").Limit(limit)
	if after != uuid.Nil {
		q = q.Where("id < ?", after)
	}
	var rs []Rollout
	if err := q.Find(&rs).Error; err != nil {
		return nil, fmt.Errorf("releases: list rollouts: %w", err)
	}
	out := make([]RolloutView, len(rs))
	for i, r := range rs {
		if out[i], err = s.viewWithCounts(ctx, r); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Settings is a tenant's firmware policy.
type Settings struct {
	RequireApproval bool `json:"require_approval"`
}

// SettingsInput is the tenant admin's change.
type SettingsInput struct {
	RequireApproval *bool `json:"require_approval"`
}

// GetSettings returns the tenant's firmware policy.
func (s *Service) GetSettings(ctx context.Context) (Settings, error) {
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return Settings{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Settings{}, err
	}
	var out Settings
	if err := tx.Raw(`SELECT require_approval FROM firmware_settings`).Scan(&out.RequireApproval).Error; err != nil {
		return out, fmt.Errorf("releases: settings: %w", err)
	}
	return out, nil
}

// PutSettings changes it; rollouts created from then on follow it.
func (s *Service) PutSettings(ctx context.Context, in SettingsInput) (Settings, error) {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return Settings{}, err
	}
	if in.RequireApproval == nil {
		return Settings{}, tenants.Invalid(tenants.FieldError{Field: "require_approval", Message: "is required"})
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Settings{}, err
	}
	if err := tx.Exec(`INSERT INTO firmware_settings (tenant_id, require_approval, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (tenant_id) DO UPDATE SET require_approval = EXCLUDED.require_approval, updated_at = EXCLUDED.updated_at`,
		p.TenantID, *in.RequireApproval, s.now()).Error; err != nil {
		return Settings{}, fmt.Errorf("releases: settings: %w", err)
	}
	return Settings{RequireApproval: *in.RequireApproval}, auditSettings(ctx, p, *in.RequireApproval)
}

// WriteCSV writes the record as CSV, one row per box.
func (d Detail) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{"rollout_id", "model", "box_id", "box_name", "wave", "from_version", "to_version", "sha256", "status", "reason",
		"assigned_at", "offered_at", "downloading_at", "installing_at", "installed_at", "failed_at"})
	ts := func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	for _, b := range d.Boxes {
		at := b.AssignedAt
		cw.Write([]string{d.ID.String(), d.Model, b.BoxID.String(), csvSafe(b.BoxName), strconv.Itoa(b.Wave), csvSafe(b.FromVersion), b.ToVersion, b.SHA256,
			b.Status, csvSafe(b.Reason), ts(&at), ts(b.OfferedAt), ts(b.DownloadingAt), ts(b.InstallingAt), ts(b.InstalledAt), ts(b.FailedAt)})
	}
	cw.Flush()
	return cw.Error()
}

// csvSafe keeps a spreadsheet from reading a cell as a formula (box names
// and reasons come from tenants and boxes).
func csvSafe(s string) string {
	if s != "" && (s[0] == '=' || s[0] == '+' || s[0] == '-' || s[0] == '@' || s[0] == '\t' || s[0] == '\r') {
		return "'" + s
	}
	return s
}
