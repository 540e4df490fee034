// Package commands carries what the platform asks of a box: open a bin (a
// booking-URL pickup, a remote release by staff), a new bundle is ready,
// firmware is available.
//
// A command is a row (box_commands) until the box acknowledges it or it
// expires; delivery is at least once, and a box acknowledges by id, so a
// command repeated after a lost answer is recognised. The box holds a long
// poll (GET /box/v1/commands) on whichever replica it reached; a new
// command is published on Redis after its transaction commits, every
// replica's Hub hears it, and the one holding that box's poll answers at
// once. When Redis is down the poll still ends at its timeout and finds the
// row: slower, never lost.
package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// Kind is what a command asks.
type Kind string

const (
	OpenBin           Kind = "open_bin"
	BundleReady       Kind = "bundle_ready"
	FirmwareAvailable Kind = "firmware_available"
)

// lifetime is how long a command waits for its box. An open-bin command
// must not outlive the person standing at the box.
var lifetime = map[Kind]time.Duration{
	OpenBin:           time.Minute,
	BundleReady:       24 * time.Hour,
	FirmwareAvailable: 7 * 24 * time.Hour,
}

// Command is one stored command, as the box receives it.
type Command struct {
	TenantID    uuid.UUID       `json:"-" gorm:"primaryKey"`
	ID          uuid.UUID       `json:"id" gorm:"primaryKey"`
	BoxID       uuid.UUID       `json:"-"`
	Kind        Kind            `json:"kind"`
	Payload     json.RawMessage `json:"payload" gorm:"type:jsonb"`
	CreatedBy   string          `json:"-"`
	CreatedAt   time.Time       `json:"created_at"`
	ExpiresAt   time.Time       `json:"expires_at"`
	DeliveredAt *time.Time      `json:"-"`
	AckedAt     *time.Time      `json:"-"`
	Result      *string         `json:"-"`
	Detail      string          `json:"-"`
}

func (Command) TableName() string { return "box_commands" }

// Publisher wakes the replica that holds a box's poll.
type Publisher interface {
	Publish(ctx context.Context, tenantID, boxID uuid.UUID)
}

// Service stores and hands out commands.
type Service struct {
	pub Publisher
	now func() time.Time
}

// New returns the service.
func New(pub Publisher) *Service { return &Service{pub: pub, now: time.Now} }

// Send stores a command for boxID in ctx's transaction; the box is woken
// once the transaction has committed. The command is recorded as the
// caller's (staff, an integration) or, without one, the platform's (the
// rollout loop, the bundle builder).
func (s *Service) Send(ctx context.Context, boxID uuid.UUID, kind Kind, payload any) (Command, error) {
	createdBy := "platform"
	if p, err := tenants.PrincipalFrom(ctx); err == nil {
		createdBy = p.Actor()
	}
	return s.send(ctx, boxID, kind, payload, createdBy)
}

func (s *Service) send(ctx context.Context, boxID uuid.UUID, kind Kind, payload any, createdBy string) (Command, error) {
	ttl, ok := lifetime[kind]
	if !ok {
		return Command{}, fmt.Errorf("commands: unknown kind %q", kind)
	}
	tenantID, ok := tenants.TenantOf(ctx)
	if !ok {
		return Command{}, errors.New("commands: no tenant transaction")
	}
	raw, err := json.Marshal(payload)
	if err != nil {
		return Command{}, fmt.Errorf("commands: payload: %w", err)
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Command{}, err
	}
	now := s.now()
	c := Command{TenantID: tenantID, ID: uuid.Must(uuid.NewV7()), BoxID: boxID, Kind: kind, Payload: raw,
		CreatedBy: createdBy, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if err := tx.Create(&c).Error; err != nil {
		return Command{}, fmt.Errorf("commands: store: %w", err)
	}
	tenants.AfterCommit(ctx, func() {
		// Detached from the request: it has answered by now.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		s.pub.Publish(ctx, tenantID, boxID)
	})
	return c, nil
}

// OpenBinPayload is an open-bin command's payload.
type OpenBinPayload struct {
	Bin      int        `json:"bin"`
	Reason   string     `json:"reason"` // remote_release, booking_url
	AccessID *uuid.UUID `json:"access_id,omitempty"`
}

// OpenBin asks the box to open a bin for a booking-URL pickup.
func (s *Service) OpenBin(ctx context.Context, boxID uuid.UUID, bin int, accessID uuid.UUID) error {
	// The booking page has no principal: its token stands for the visitor.
	_, err := s.send(ctx, boxID, OpenBin, OpenBinPayload{Bin: bin, Reason: "booking_url", AccessID: &accessID}, "visitor:booking:"+accessID.String())
	return err
}

// Pending returns the box's live commands, oldest first, and notes that
// they were handed out.
func (s *Service) Pending(ctx context.Context, boxID uuid.UUID) ([]Command, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now()
	var cs []Command
	if err := tx.Where("box_id = ? AND acked_at IS NULL AND expires_at > ?", boxID, now).Order("id").Limit(100).Find(&cs).Error; err != nil {
		return nil, fmt.Errorf("commands: pending: %w", err)
	}
	var fresh []uuid.UUID
	for _, c := range cs {
		if c.DeliveredAt == nil {
			fresh = append(fresh, c.ID)
		}
	}
	if len(fresh) > 0 {
		if err := tx.Model(&Command{}).Where("id IN ?", fresh).Update("delivered_at", now).Error; err != nil {
			return nil, fmt.Errorf("commands: mark delivered: %w", err)
		}
	}
	return cs, nil
}

// Result is the box's report on a command.
type Result string

const (
	Done   Result = "done"
	Failed Result = "failed"
)

// Ack records the box's report. A repeated ack is harmless; an expired
// command can still be acknowledged (the box may have acted just before
// the deadline), and the record says when.
func (s *Service) Ack(ctx context.Context, boxID, id uuid.UUID, result Result, detail string) error {
	var v tenants.Validator
	v.Check(result == Done || result == Failed, "result", "must be done or failed")
	v.Check(len(detail) <= 500, "detail", "must be at most 500 characters")
	if err := v.Err(); err != nil {
		return err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	var c Command
	err = tx.Where("id = ? AND box_id = ?", id, boxID).Take(&c).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return tenants.NotFound("command")
	}
	if err != nil {
		return fmt.Errorf("commands: load: %w", err)
	}
	if c.AckedAt != nil {
		return nil
	}
	r := string(result)
	if err := tx.Model(&c).Updates(map[string]any{"acked_at": s.now(), "result": r, "detail": detail}).Error; err != nil {
		return fmt.Errorf("commands: ack: %w", err)
	}
	details := map[string]string{"command": c.ID.String(), "kind": string(c.Kind), "result": r}
	if detail != "" {
		details["detail"] = detail
	}
	return audit.Record(ctx, "box:"+boxID.String(), "box.command_"+r, "box:"+boxID.String(), details)
}

// Release opens a bin from afar for staff (to fix the inventory, to hand a
// key to someone at the desk's request): it checks the caller, the box
// (within the caller's locations, provisioned) and the bin, sends the
// command and audits it with the reason. The API and the web dashboard
// both call it, so one path decides who may open what.
func (s *Service) Release(ctx context.Context, boxID uuid.UUID, bin int, reason string) (Released, error) {
	p, err := tenants.Require(ctx, tenants.RoleStaff)
	if err != nil {
		return Released{}, err
	}
	if bin < 1 {
		return Released{}, tenants.NotFound("bin")
	}
	if utf8.RuneCountInString(reason) > 500 {
		return Released{}, tenants.Invalid(tenants.FieldError{Field: "reason", Message: "must be at most 500 characters"})
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Released{}, err
	}
	var b struct {
		Bins        int
		LocationID  *uuid.UUID
		Provisioned bool
	}
	err = tx.Raw(`SELECT b.bins, b.location_id,
		EXISTS (SELECT 1 FROM box_credentials c WHERE c.box_id = b.id AND c.revoked_at IS NULL) AS provisioned
		FROM boxes b WHERE b.id = ? AND b.deleted_at IS NULL`, boxID).Take(&b).Error
	if errors.Is(err, gorm.ErrRecordNotFound) || err == nil && !p.Sees(b.LocationID) {
		return Released{}, tenants.NotFound("box")
	}
	if err != nil {
		return Released{}, fmt.Errorf("commands: load box: %w", err)
	}
	if bin > b.Bins {
		return Released{}, tenants.NotFound("bin")
	}
	if !b.Provisioned {
		return Released{}, tenants.Errorf(tenants.EConflict, "the box is not provisioned: it cannot receive commands")
	}
	cmd, err := s.Send(ctx, boxID, OpenBin, OpenBinPayload{Bin: bin, Reason: "remote_release"})
	if err != nil {
		return Released{}, err
	}
	details := map[string]string{"bin": strconv.Itoa(bin), "command": cmd.ID.String()}
	if reason != "" {
		details["reason"] = reason
	}
	if err := audit.Record(ctx, p.Actor(), "bin.release_requested", "box:"+boxID.String(), details); err != nil {
		return Released{}, err
	}
	return Released{CommandID: cmd.ID, BoxID: boxID, Bin: bin, ExpiresAt: cmd.ExpiresAt.UTC()}, nil
}
