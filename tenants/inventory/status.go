package inventory

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
)

// BoxStatus is how a box is doing, as far as the platform knows: whether
// it has a device credential, whether it is online and since when, and
// what its last heartbeat said (firmware/health writes it). A box that
// never called is offline with no heartbeat.
type BoxStatus struct {
	Provisioned     bool       `json:"provisioned"`
	Online          bool       `json:"online"`
	Since           *time.Time `json:"since"`
	LastHeartbeatAt *time.Time `json:"last_heartbeat_at"`
	FirmwareVersion *string    `json:"firmware_version"`
	PowerSource     *string    `json:"power_source"`
	BatteryLevel    *int       `json:"battery_level"`
	Sleeping        *bool      `json:"sleeping"`
	OpenFlags       int        `json:"open_flags"` // inventory mismatches not yet resolved
}

// statusOf reads the status of boxes in one query.
func statusOf(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]BoxStatus, error) {
	out := map[uuid.UUID]BoxStatus{}
	if len(ids) == 0 {
		return out, nil
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var rows []struct {
		ID              uuid.UUID
		Provisioned     bool
		Online          *bool
		Since           *time.Time
		LastHeartbeatAt *time.Time
		FirmwareVersion *string
		PowerSource     *string
		BatteryLevel    *int
		Sleeping        *bool
		OpenFlags       int
	}
	err = tx.Raw(`SELECT b.id,
			EXISTS (SELECT 1 FROM box_credentials c WHERE c.box_id = b.id AND c.revoked_at IS NULL) AS provisioned,
			s.online, s.since, s.last_heartbeat_at, s.firmware_version, s.power_source, s.battery_level, s.sleeping,
			(SELECT count(*) FROM inventory_flags f WHERE f.box_id = b.id AND f.resolved_at IS NULL) AS open_flags
		FROM boxes b LEFT JOIN box_status s ON s.tenant_id = b.tenant_id AND s.box_id = b.id
		WHERE b.id IN ?`, ids).Scan(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("inventory: box status: %w", err)
	}
	for _, r := range rows {
		st := BoxStatus{Provisioned: r.Provisioned, Online: r.Online != nil && *r.Online && r.Provisioned, Since: utc(r.Since),
			LastHeartbeatAt: utc(r.LastHeartbeatAt), FirmwareVersion: r.FirmwareVersion, PowerSource: r.PowerSource,
			BatteryLevel: r.BatteryLevel, Sleeping: r.Sleeping, OpenFlags: r.OpenFlags}
		out[r.ID] = st
	}
	return out, nil
}
