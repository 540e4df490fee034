// Package health keeps track of boxes in the field: the heartbeats they
// send (firmware version, power source, battery, sleep, signal), whether
// the server counts each one online and since when, and the tenant's
// alerts — power lost, battery low, offline too long — each sent once per
// incident, not on every heartbeat.
//
// A box is marked offline when its heartbeats stop. Nothing scans every
// box for that: each heartbeat moves the box's deadline in a Redis sorted
// set, and Sweep (run by the workers) handles the deadlines that passed,
// checking the database's last heartbeat before acting, so a replica or a
// Redis that lost a deadline errs towards "online", and a late sweep never
// marks a box that has called since.
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/keyrelay/keyrelay/jobs"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/inventory"
	"github.com/keyrelay/keyrelay/tenants/webhooks"
)

// Config holds the thresholds.
type Config struct {
	OfflineAfter     time.Duration // no heartbeat for this long: offline
	AlertAfter       time.Duration // offline for this long: the tenant is told
	LowBattery       int           // percent: alert below
	BatteryRecovered int           // percent: a new low-battery incident needs a recovery above this first
}

// DefaultConfig is 5 minutes to offline, an alert after 30 minutes
// offline, low battery below 20%.
func DefaultConfig() Config {
	return Config{OfflineAfter: 5 * time.Minute, AlertAfter: 30 * time.Minute, LowBattery: 20, BatteryRecovered: 30}
}

// Alerter tells the tenant's admins.
type Alerter interface {
	AlertAdmins(ctx context.Context, kind string, data map[string]string) error
}

// Service records heartbeats and sweeps for silent boxes.
type Service struct {
	scope  *tenants.Scope
	rdb    redis.UniversalClient
	prefix string
	alerts Alerter
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
}

// New returns the service.
func New(scope *tenants.Scope, rdb redis.UniversalClient, prefix string, alerts Alerter, cfg Config, log *slog.Logger) *Service {
	return &Service{scope: scope, rdb: rdb, prefix: prefix, alerts: alerts, cfg: cfg, log: log, now: time.Now}
}

// Status is a box's state as stored.
type Status struct {
	TenantID         uuid.UUID `gorm:"primaryKey"`
	BoxID            uuid.UUID `gorm:"primaryKey"`
	Online           bool
	Since            time.Time
	LastHeartbeatAt  time.Time
	BoxTime          *time.Time
	FirmwareVersion  string
	PowerSource      string
	BatteryLevel     *int
	Sleeping         bool
	SignalDBM        *int `gorm:"column:signal_dbm"`
	PowerAlertedAt   *time.Time
	BatteryAlertedAt *time.Time
	OfflineAlertedAt *time.Time
}

func (Status) TableName() string { return "box_status" }

// Heartbeat is what a box says about itself.
type Heartbeat struct {
	FirmwareVersion string     `json:"firmware_version"`
	PowerSource     string     `json:"power_source"` // mains or battery
	BatteryLevel    *int       `json:"battery_level,omitempty"`
	Sleeping        bool       `json:"sleeping"`
	SignalDBM       *int       `json:"signal_dbm,omitempty"`
	At              *time.Time `json:"at,omitempty"` // the box's clock
}

// View is a box's health as the tenant sees it.
type View struct {
	Online          bool      `json:"online"`
	Since           time.Time `json:"since"`
	LastHeartbeatAt time.Time `json:"last_heartbeat_at"`
	FirmwareVersion string    `json:"firmware_version"`
	PowerSource     string    `json:"power_source"`
	BatteryLevel    *int      `json:"battery_level"`
	Sleeping        bool      `json:"sleeping"`
	SignalDBM       *int      `json:"signal_dbm"`
}

// ViewOf turns a stored status into its view.
func ViewOf(s Status) View {
	return View{Online: s.Online, Since: s.Since.UTC(), LastHeartbeatAt: s.LastHeartbeatAt.UTC(), FirmwareVersion: s.FirmwareVersion,
		PowerSource: s.PowerSource, BatteryLevel: s.BatteryLevel, Sleeping: s.Sleeping, SignalDBM: s.SignalDBM}
}

// Record stores a heartbeat of the calling box, raises the alerts of a new
// incident and closes the incidents that ended.
func (s *Service) Record(ctx context.Context, hb Heartbeat) (View, error) {
	p, err := tenants.RequireBox(ctx)
	if err != nil {
		return View{}, err
	}
	var v tenants.Validator
	v.Check(len(hb.FirmwareVersion) <= 64, "firmware_version", "must be at most 64 characters")
	v.Check(hb.PowerSource == "mains" || hb.PowerSource == "battery", "power_source", "must be mains or battery")
	v.Check(hb.BatteryLevel == nil || *hb.BatteryLevel >= 0 && *hb.BatteryLevel <= 100, "battery_level", "must be 0 to 100")
	v.Check(hb.SignalDBM == nil || *hb.SignalDBM >= -150 && *hb.SignalDBM <= 0, "signal_dbm", "must be -150 to 0")
	if err := v.Err(); err != nil {
		return View{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return View{}, err
	}
	now := s.now()
	var st Status
	err = tx.Clauses(clause.Locking{Strength: "UPDATE"}).Where("box_id = ?", p.BoxID).Take(&st).Error
	isNew := errors.Is(err, gorm.ErrRecordNotFound)
	if err != nil && !isNew {
		return View{}, fmt.Errorf("health: load status: %w", err)
	}
	if isNew {
		st = Status{TenantID: p.TenantID, BoxID: p.BoxID, Online: true, Since: now, PowerSource: "mains"}
	}
	box := inventory.BoxName(ctx, p.BoxID)
	if !st.Online {
		st.Online, st.Since, st.OfflineAlertedAt = true, now, nil
		if err := audit.Record(ctx, p.Actor(), "box.online", "box:"+p.BoxID.String(), nil); err != nil {
			return View{}, err
		}
	}
	// Power: one alert when the box falls back on its battery, none again
	// until mains has come back.
	switch {
	case hb.PowerSource == "battery" && st.PowerAlertedAt == nil:
		st.PowerAlertedAt = &now
		if err := s.alert(ctx, p, "box_power_lost", box, hb.BatteryLevel, "box.power_lost"); err != nil {
			return View{}, err
		}
	case hb.PowerSource == "mains" && st.PowerAlertedAt != nil:
		st.PowerAlertedAt = nil
		if err := audit.Record(ctx, p.Actor(), "box.power_restored", "box:"+p.BoxID.String(), nil); err != nil {
			return View{}, err
		}
	}
	if lvl := hb.BatteryLevel; lvl != nil {
		switch {
		case *lvl < s.cfg.LowBattery && st.BatteryAlertedAt == nil:
			st.BatteryAlertedAt = &now
			if err := s.alert(ctx, p, "box_battery_low", box, lvl, "box.battery_low"); err != nil {
				return View{}, err
			}
		case *lvl >= s.cfg.BatteryRecovered:
			st.BatteryAlertedAt = nil
		}
	}
	st.LastHeartbeatAt, st.BoxTime = now, hb.At
	st.FirmwareVersion, st.PowerSource, st.BatteryLevel, st.Sleeping, st.SignalDBM = hb.FirmwareVersion, hb.PowerSource, hb.BatteryLevel, hb.Sleeping, hb.SignalDBM
	if isNew {
		err = tx.Create(&st).Error
	} else {
		err = tx.Save(&st).Error
	}
	if err != nil {
		return View{}, fmt.Errorf("health: store status: %w", err)
	}
	member := p.TenantID.String() + ":" + p.BoxID.String()
	tenants.AfterCommit(ctx, func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_, err := s.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
			pl.ZAdd(ctx, s.key("offline"), redis.Z{Score: float64(now.Add(s.cfg.OfflineAfter).Unix()), Member: member})
			pl.ZAdd(ctx, s.key("alert"), redis.Z{Score: float64(now.Add(s.cfg.OfflineAfter + s.cfg.AlertAfter).Unix()), Member: member})
			return nil
		})
		if err != nil {
			s.log.Warn("health: cannot schedule the offline check; the box stays marked online until its next heartbeat", "box_id", p.BoxID, "err", err)
		}
	})
	return ViewOf(st), nil
}

func (s *Service) key(set string) string { return s.prefix + "box-health:" + set }

func (s *Service) alert(ctx context.Context, p tenants.Principal, kind, box string, battery *int, action string) error {
	data := map[string]string{"box": box}
	details := map[string]string{}
	if battery != nil {
		data["battery"] = strconv.Itoa(*battery)
		details["battery_level"] = strconv.Itoa(*battery)
	}
	if err := s.alerts.AlertAdmins(ctx, kind, data); err != nil {
		return err
	}
	// The audit action is the webhook event's name (box.power_lost,
	// box.battery_low).
	if err := webhooks.Emit(ctx, action, map[string]any{"box_id": p.BoxID, "box_name": box, "battery_level": battery}); err != nil {
		return err
	}
	return audit.Record(ctx, "box:"+p.BoxID.String(), action, "box:"+p.BoxID.String(), details)
}

// Sweep handles the deadlines that passed: boxes whose heartbeats stopped
// are marked offline, and those offline for AlertAfter are reported. It
// returns how many boxes it looked at. Several replicas may sweep at once:
// removing a deadline from the set is the claim on it.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	n := 0
	for _, set := range []string{"offline", "alert"} {
		due, err := s.rdb.ZRangeByScore(ctx, s.key(set), &redis.ZRangeBy{Min: "-inf", Max: strconv.FormatInt(s.now().Unix(), 10), Count: 500}).Result()
		if err != nil {
			return n, fmt.Errorf("health: read deadlines: %w", err)
		}
		for _, m := range due {
			removed, err := s.rdb.ZRem(ctx, s.key(set), m).Result()
			if err != nil {
				return n, fmt.Errorf("health: claim deadline: %w", err)
			}
			if removed == 0 {
				continue // another replica has it
			}
			tenantID, boxID, ok := parseMember(m)
			if !ok {
				continue
			}
			n++
			err = s.scope.Do(ctx, tenantID, func(ctx context.Context) error {
				if set == "offline" {
					return s.markOffline(ctx, boxID)
				}
				return s.alertOffline(ctx, boxID)
			})
			if err != nil {
				// Put it back for the next sweep rather than lose it.
				s.rdb.ZAdd(ctx, s.key(set), redis.Z{Score: float64(s.now().Unix()), Member: m})
				return n, err
			}
		}
	}
	return n, nil
}

func parseMember(m string) (uuid.UUID, uuid.UUID, bool) {
	t, b, ok := strings.Cut(m, ":")
	if !ok {
		return uuid.Nil, uuid.Nil, false
	}
	tenantID, err1 := uuid.Parse(t)
	boxID, err2 := uuid.Parse(b)
	return tenantID, boxID, err1 == nil && err2 == nil
}

func (s *Service) load(ctx context.Context, boxID uuid.UUID) (Status, bool, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Status{}, false, err
	}
	var st Status
	err = tx.Clauses(clause.Locking{Strength: "UPDATE"}).Where("box_id = ?", boxID).Take(&st).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("health: load status: %w", err)
	}
	return st, true, nil
}

func (s *Service) markOffline(ctx context.Context, boxID uuid.UUID) error {
	st, ok, err := s.load(ctx, boxID)
	if err != nil || !ok || !st.Online || s.now().Sub(st.LastHeartbeatAt) < s.cfg.OfflineAfter {
		return err // called since: its new deadline is in the set
	}
	tx, _ := tenants.Tx(ctx)
	if err := tx.Model(&st).Updates(map[string]any{"online": false, "since": st.LastHeartbeatAt}).Error; err != nil {
		return fmt.Errorf("health: mark offline: %w", err)
	}
	return audit.Record(ctx, "platform", "box.offline", "box:"+boxID.String(), map[string]string{"last_heartbeat_at": st.LastHeartbeatAt.UTC().Format(time.RFC3339)})
}

func (s *Service) alertOffline(ctx context.Context, boxID uuid.UUID) error {
	if err := s.markOffline(ctx, boxID); err != nil {
		return err
	}
	st, ok, err := s.load(ctx, boxID)
	if err != nil || !ok || st.Online || st.OfflineAlertedAt != nil || s.now().Sub(st.Since) < s.cfg.AlertAfter {
		return err
	}
	now := s.now()
	tx, _ := tenants.Tx(ctx)
	if err := tx.Model(&st).Update("offline_alerted_at", now).Error; err != nil {
		return fmt.Errorf("health: note alert: %w", err)
	}
	minutes := strconv.Itoa(int(now.Sub(st.Since).Minutes()))
	name := inventory.BoxName(ctx, boxID)
	if err := s.alerts.AlertAdmins(ctx, "box_offline", map[string]string{"box": name, "minutes": minutes, "since": st.Since.UTC().Format(time.RFC3339)}); err != nil {
		return err
	}
	if err := webhooks.Emit(ctx, webhooks.BoxOffline, map[string]any{"box_id": boxID, "box_name": name, "offline_since": st.Since.UTC()}); err != nil {
		return err
	}
	return audit.Record(ctx, "platform", "box.offline_alerted", "box:"+boxID.String(), map[string]string{"minutes": minutes})
}

// Run sweeps every interval until ctx ends.
func (s *Service) Run(ctx context.Context, every time.Duration) {
	jobs.Every(ctx, every, func(ctx context.Context) {
		if _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("health: sweep failed; retrying at the next tick", "err", err)
		}
	})
}

// Of returns the stored health of the tenant's boxes in ctx, by box id.
func Of(ctx context.Context, boxIDs []uuid.UUID) (map[uuid.UUID]View, error) {
	out := map[uuid.UUID]View{}
	if len(boxIDs) == 0 {
		return out, nil
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var sts []Status
	if err := tx.Where("box_id IN ?", boxIDs).Find(&sts).Error; err != nil {
		return nil, fmt.Errorf("health: load: %w", err)
	}
	for _, st := range sts {
		out[st.BoxID] = ViewOf(st)
	}
	return out, nil
}
