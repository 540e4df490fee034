package releases

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// Update is the one firmware update offered to a box.
type Update struct {
	ReleaseID       uuid.UUID `json:"release_id"`
	RolloutID       uuid.UUID `json:"rollout_id"`
	Model           string    `json:"model"`
	Version         string    `json:"version"`
	SecurityVersion int       `json:"security_version"`
	Size            int64     `json:"size"`
	SHA256          string    `json:"sha256"`
	// Manifest is the signed envelope (firmware/signing), base64 of the
	// exact bytes to verify.
	Manifest     string `json:"manifest"`
	ArtifactPath string `json:"artifact_path"`
	Status       string `json:"status"`
}

// Check is the answer to a box's update check.
type Check struct {
	Update *Update `json:"update"`
	// Reason says why there is no update: none, outside_maintenance_window.
	Reason string `json:"reason,omitempty"`
}

// Current is what a box says it runs.
type Current struct {
	Version         string
	SecurityVersion *int
}

type boxInfo struct {
	Model    string
	Timezone string
}

// floor is the lowest version and security version a box may be offered
// anything above: the higher of what it reported after its last install
// and what it says now.
func floor(ctx context.Context, boxID uuid.UUID, cur Current) (int64, int, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return 0, 0, err
	}
	var f struct {
		VersionNumber   int64
		SecurityVersion int
	}
	if err := tx.Raw(`SELECT version_number, security_version FROM box_firmware WHERE box_id = ?`, boxID).Scan(&f).Error; err != nil {
		return 0, 0, fmt.Errorf("releases: box firmware: %w", err)
	}
	if n, ok := ParseVersion(cur.Version); ok && int64(n) > f.VersionNumber {
		f.VersionNumber = int64(n)
	}
	if cur.SecurityVersion != nil && *cur.SecurityVersion > f.SecurityVersion {
		f.SecurityVersion = *cur.SecurityVersion
	}
	return f.VersionNumber, f.SecurityVersion, nil
}

// CheckUpdate answers a box's poll: at most one update, the one its
// tenant's active rollout assigned to it, and only when it is for the
// box's model, above the version it runs and not below its security
// version — an assignment that breaks one of these is skipped, never
// offered — and, for a download not yet started, inside the rollout's
// maintenance window in the box's time zone.
func (s *Service) CheckUpdate(ctx context.Context, cur Current) (Check, error) {
	p, err := tenants.RequireBox(ctx)
	if err != nil {
		return Check{}, err
	}
	var v tenants.Validator
	_, okVersion := ParseVersion(cur.Version)
	v.Check(cur.Version == "" || okVersion, "version", "must be MAJOR.MINOR.PATCH")
	v.Check(cur.SecurityVersion == nil || *cur.SecurityVersion >= 0, "security_version", "must not be negative")
	if err := v.Err(); err != nil {
		return Check{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Check{}, err
	}
	var b boxInfo
	if err := tx.Raw(`SELECT model, timezone FROM boxes WHERE id = ?`, p.BoxID).Scan(&b).Error; err != nil {
		return Check{}, fmt.Errorf("releases: box: %w", err)
	}
	var a Assignment
	if err := tx.Table("firmware_assignments AS a").
		Joins("JOIN firmware_rollouts r ON r.tenant_id = a.tenant_id AND r.id = a.rollout_id").
		Where("a.box_id = ? AND r.state = ? AND a.status IN ('assigned', 'downloading', 'installing')", p.BoxID, Active).
		Order("a.assigned_at DESC").Limit(1).Select("a.*").Scan(&a).Error; err != nil {
		return Check{}, fmt.Errorf("releases: assignment: %w", err)
	}
	if a.RolloutID == uuid.Nil {
		return Check{Reason: "none"}, nil
	}
	var r Rollout
	if err := tx.Where("id = ?", a.RolloutID).Take(&r).Error; err != nil {
		return Check{}, fmt.Errorf("releases: rollout: %w", err)
	}
	minVersion, minSecurity, err := floor(ctx, p.BoxID, cur)
	if err != nil {
		return Check{}, err
	}
	skip := ""
	switch {
	case r.Model != b.Model:
		skip = fmt.Sprintf("firmware for %s, the box is an %s", r.Model, b.Model)
	case r.VersionNumber <= minVersion:
		skip = "the box runs this version or a newer one"
	case r.SecurityVersion < minSecurity:
		skip = fmt.Sprintf("security version %d is below the box's %d", r.SecurityVersion, minSecurity)
	}
	now := s.now()
	if skip != "" {
		if err := tx.Model(&Assignment{}).Where("rollout_id = ? AND box_id = ?", a.RolloutID, p.BoxID).
			Updates(map[string]any{"status": "skipped", "reason": skip, "updated_at": now}).Error; err != nil {
			return Check{}, fmt.Errorf("releases: skip: %w", err)
		}
		return Check{Reason: "none"}, audit.Record(ctx, p.Actor(), "firmware.skipped", "box:"+p.BoxID.String(),
			map[string]string{"rollout": r.ID.String(), "version": r.Version, "reason": skip})
	}
	if a.Status == "assigned" && r.WindowStart != nil && r.WindowEnd != nil {
		loc, err := time.LoadLocation(b.Timezone)
		if err != nil {
			loc = time.UTC
		}
		local := now.In(loc)
		if !inWindow(local.Hour()*60+local.Minute(), *r.WindowStart, *r.WindowEnd) {
			return Check{Reason: "outside_maintenance_window"}, nil
		}
	}
	var rel Release
	if err := tx.Where("id = ?", r.ReleaseID).Take(&rel).Error; err != nil {
		return Check{}, fmt.Errorf("releases: release: %w", err)
	}
	if a.OfferedAt == nil {
		if err := tx.Model(&Assignment{}).Where("rollout_id = ? AND box_id = ?", a.RolloutID, p.BoxID).
			Updates(map[string]any{"offered_at": now, "updated_at": now}).Error; err != nil {
			return Check{}, fmt.Errorf("releases: offer: %w", err)
		}
	}
	return Check{Update: &Update{ReleaseID: rel.ID, RolloutID: r.ID, Model: rel.Model, Version: rel.Version, SecurityVersion: rel.SecurityVersion,
		Size: rel.Size, SHA256: hex.EncodeToString(rel.SHA256), Manifest: base64.StdEncoding.EncodeToString(rel.Manifest),
		ArtifactPath: "/box/v1/firmware/" + rel.ID.String() + "/artifact", Status: a.Status}}, nil
}

// Artifact opens a release's artifact for the calling box: only a box
// with a live assignment of that release may download it.
func (s *Service) Artifact(ctx context.Context, releaseID uuid.UUID) (Object, string, error) {
	p, err := tenants.RequireBox(ctx)
	if err != nil {
		return nil, "", err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, "", err
	}
	var n int64
	if err := tx.Table("firmware_assignments AS a").Joins("JOIN firmware_rollouts r ON r.tenant_id = a.tenant_id AND r.id = a.rollout_id").
		Where("a.box_id = ? AND r.release_id = ? AND r.state IN ('active', 'paused') AND a.status IN ('assigned', 'downloading', 'installing')", p.BoxID, releaseID).
		Count(&n).Error; err != nil {
		return nil, "", fmt.Errorf("releases: assignment: %w", err)
	}
	if n == 0 {
		return nil, "", tenants.NotFound("firmware")
	}
	var rel Release
	if err := tx.Where("id = ? AND state = 'published'", releaseID).Take(&rel).Error; err != nil {
		return nil, "", tenants.NotFound("firmware")
	}
	obj, err := s.Store.Open(ctx, rel.StorageKey)
	if errors.Is(err, ErrNoObject) {
		return nil, "", &tenants.Error{Code: tenants.EUnavailable, Message: "the artifact is missing from storage", Err: err}
	}
	if err != nil {
		return nil, "", err
	}
	if obj.Size() != rel.Size {
		obj.Close()
		return nil, "", &tenants.Error{Code: tenants.EUnavailable, Message: "the stored artifact does not match its release",
			Err: fmt.Errorf("releases: %s holds %d bytes, want %d", rel.StorageKey, obj.Size(), rel.Size)}
	}
	return obj, hex.EncodeToString(rel.SHA256), nil
}

// Report is a box's progress on its update.
type Report struct {
	ReleaseID uuid.UUID `json:"release_id"`
	Status    string    `json:"status"`
	Reason    string    `json:"reason"`
}

var order = map[string]int{"assigned": 0, "downloading": 1, "installing": 2, "installed": 3, "failed": 3}

// ReportStatus records a box's progress: downloading, installing,
// installed, failed (with a reason). A repeated report changes nothing;
// an installed or failed update is final. A failure is weighed against
// the rollout's threshold at once.
func (s *Service) ReportStatus(ctx context.Context, in Report) (BoxProgress, error) {
	p, err := tenants.RequireBox(ctx)
	if err != nil {
		return BoxProgress{}, err
	}
	var v tenants.Validator
	v.Check(in.ReleaseID != uuid.Nil, "release_id", "is required")
	_, known := order[in.Status]
	v.Check(known && in.Status != "assigned", "status", "must be downloading, installing, installed or failed")
	v.Check(in.Status != "failed" || in.Reason != "", "reason", "is required when the install failed")
	v.Check(len(in.Reason) <= 500, "reason", "must be at most 500 characters")
	if err := v.Err(); err != nil {
		return BoxProgress{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return BoxProgress{}, err
	}
	var found struct{ ID uuid.UUID }
	if err := tx.Raw(`SELECT r.id FROM firmware_rollouts r JOIN firmware_assignments a ON a.tenant_id = r.tenant_id AND a.rollout_id = r.id
		WHERE r.release_id = ? AND a.box_id = ? ORDER BY a.assigned_at DESC LIMIT 1`, in.ReleaseID, p.BoxID).Scan(&found).Error; err != nil {
		return BoxProgress{}, fmt.Errorf("releases: assignment: %w", err)
	}
	rolloutID := found.ID
	if rolloutID == uuid.Nil {
		return BoxProgress{}, tenants.NotFound("firmware assignment")
	}
	r, err := lock(ctx, rolloutID)
	if err != nil {
		return BoxProgress{}, err
	}
	var a Assignment
	if err := tx.Where("rollout_id = ? AND box_id = ?", rolloutID, p.BoxID).Take(&a).Error; err != nil {
		return BoxProgress{}, fmt.Errorf("releases: assignment: %w", err)
	}
	progress := func() BoxProgress {
		return BoxProgress{BoxID: a.BoxID, Wave: a.Wave, FromVersion: a.FromVersion, ToVersion: r.Version, SHA256: hex.EncodeToString(r.SHA256),
			Status: a.Status, Reason: a.Reason, AssignedAt: a.AssignedAt.UTC(), OfferedAt: utc(a.OfferedAt), DownloadingAt: utc(a.DownloadingAt),
			InstallingAt: utc(a.InstallingAt), InstalledAt: utc(a.InstalledAt), FailedAt: utc(a.FailedAt)}
	}
	if a.Status == in.Status {
		return progress(), nil
	}
	if a.Status == "installed" || a.Status == "failed" || a.Status == "skipped" {
		return BoxProgress{}, tenants.Errorf(tenants.EConflict, "this update is %s already", a.Status)
	}
	if order[in.Status] < order[a.Status] {
		return BoxProgress{}, tenants.Errorf(tenants.EConflict, "the update is %s; it cannot go back to %s", a.Status, in.Status)
	}
	now := s.now()
	upd := map[string]any{"status": in.Status, "updated_at": now, in.Status + "_at": now}
	a.Status = in.Status
	switch in.Status {
	case "downloading":
		a.DownloadingAt = &now
	case "installing":
		a.InstallingAt = &now
	case "installed":
		a.InstalledAt = &now
		if err := tx.Exec(`INSERT INTO box_firmware (tenant_id, box_id, version, version_number, security_version, updated_at) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (tenant_id, box_id) DO UPDATE SET version = EXCLUDED.version, version_number = EXCLUDED.version_number,
			security_version = EXCLUDED.security_version, updated_at = EXCLUDED.updated_at`,
			p.TenantID, p.BoxID, r.Version, r.VersionNumber, r.SecurityVersion, now).Error; err != nil {
			return BoxProgress{}, fmt.Errorf("releases: box firmware: %w", err)
		}
	case "failed":
		a.FailedAt, a.Reason = &now, in.Reason
		upd["reason"] = in.Reason
	}
	if err := tx.Model(&Assignment{}).Where("rollout_id = ? AND box_id = ?", rolloutID, p.BoxID).Updates(upd).Error; err != nil {
		return BoxProgress{}, fmt.Errorf("releases: report: %w", err)
	}
	if in.Status == "installed" || in.Status == "failed" {
		details := map[string]string{"rollout": r.ID.String(), "version": r.Version, "sha256": hex.EncodeToString(r.SHA256)}
		action := "firmware.installed"
		if in.Status == "failed" {
			action, details["reason"] = "firmware.install_failed", in.Reason
		}
		if err := audit.Record(ctx, p.Actor(), action, "box:"+p.BoxID.String(), details); err != nil {
			return BoxProgress{}, err
		}
		if err := s.evaluate(ctx, &r); err != nil {
			return BoxProgress{}, err
		}
	}
	return progress(), nil
}

func auditSettings(ctx context.Context, p tenants.Principal, require bool) error {
	v := "false"
	if require {
		v = "true"
	}
	return audit.Record(ctx, p.Actor(), "firmware.settings_changed", "tenant:"+p.TenantID.String(), map[string]string{"require_approval": v})
}
