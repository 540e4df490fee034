// Package bundles builds, signs, stores and serves each offline-capable
// box's bundle: everything an MS4 or MS5 needs to authorize pickups and
// dropoffs for the next Horizon (KEYRELAY_BUNDLE_HORIZON, default 72 h)
// without the server. MS3 boxes have no offline mode and get none.
//
// # Contents (Payload)
//
// The keys the box holds now or is home to (fob serial ↔ bin), the live and
// upcoming accesses on those keys with their windows (starting before the
// horizon), the accesses revoked within the horizon (explicitly, R7), the
// derived-code tags revoked (firmware/offline), and the tenant's policy.
// Codes and phone numbers appear only as verifiers:
// HMAC-SHA256(K_ver, "code:" ‖ code)[:16] and HMAC-SHA256(K_ver, "phone:" ‖
// e164)[:16], with K_ver = HKDF(K, "keyrelay verifier v1") and K the box's
// own secret (firmware/devices). A bundle read in transit, from a cache, a
// log or a backup of box_bundles reveals no code, phone number or PIN
// (R1), and is useless at any other box.
//
// # Offline second factor
//
// Online, a pickup by phone number needs a second factor: a code sent by
// SMS or email, or the visitor's PIN, as the tenant's policy says. Offline
// no code can be sent. PINs are not carried either, deliberately: a PIN has
// 4 digits and a phone number is no secret, so a thief who knows a
// visitor's number would open the bin with probability n/10⁴ after n
// guesses; even a box that locks a phone number after its first wrong PIN
// gives 1/10⁴ per number it knows, which R3 (below 1 in 10,000 a week for
// every kind of code accepted offline) does not allow. So offline a phone
// number never opens a bin: the box recognises it (its verifier) and tells
// the visitor to type the booking code instead (reason
// offline_phone_needs_sms), which every booking has. Booking and alias
// codes are 10 digits under the box's attempt limits (tenants/guard,
// firmware/offline's bound). Staff without a code use the backup codes.
//
// # Freshness
//
// Database triggers (migrations 00015, 00024) append a row to
// box_bundle_changes in the transaction of any change a box's bundle
// depends on (an append locks nothing another transaction needs). The
// workers look for boxes with changes every second (Watch) and schedule
// one rebuild per box per Debounce window (an asynq task whose id names the
// box and the window, so a burst of changes is one rebuild). A build
// removes the changes it read before gathering the data, stores the new
// bundle with the next version and sends the box a bundle_ready command,
// which its long poll receives at once. A change thus reaches an online
// box within about Debounce + 2 s (measured in TestBundles). GET /box/v1/bundle also
// rebuilds on the spot a bundle dirty for longer than StaleDirty (the
// worker or Redis was down) or older than Refresh (upcoming accesses move
// into the horizon as time passes), so a box is never stuck on an old one.
//
// Limit (R7, for tenants): a revoked or shortened access stops working at
// a box only once the box has the new bundle; a box offline since before
// the change still honours the old window until it reconnects.
package bundles

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/firmware/boxkeys"
	"github.com/keyrelay/keyrelay/firmware/commands"
	"github.com/keyrelay/keyrelay/firmware/signing"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/accounts"
	"github.com/keyrelay/keyrelay/tenants/bookings"
)

// Config tunes the bundles.
type Config struct {
	Horizon    time.Duration // how far ahead a bundle grants, and its lifetime
	Debounce   time.Duration // changes within one window make one rebuild
	Refresh    time.Duration // a bundle older than this is rebuilt when fetched
	StaleDirty time.Duration // a dirty bundle the worker left this long is rebuilt when fetched
	MaxSize    int64         // payload bytes; a box refuses more
}

// DefaultConfig is the issue's: 72 hours ahead.
func DefaultConfig() Config {
	return Config{Horizon: 72 * time.Hour, Debounce: 2 * time.Second, Refresh: time.Hour, StaleDirty: 30 * time.Second, MaxSize: 32 << 20}
}

// Secrets gives the box secret K (firmware/devices).
type Secrets interface {
	Secret(ctx context.Context, boxID uuid.UUID) ([]byte, error)
}

// Signer signs manifests (signing.Keyring).
type Signer interface {
	Sign(m signing.Manifest) (signing.Signed, error)
}

// Opener opens sealed codes (tenants/secretbox).
type Opener interface {
	Open(sealed, context []byte) ([]byte, error)
}

// Policies gives the tenant's key-exchange policy (tenants/accounts).
type Policies interface {
	PolicyOf(ctx context.Context) (accounts.Policy, error)
}

// Commands tells a box a new bundle is ready (firmware/commands).
type Commands interface {
	Send(ctx context.Context, boxID uuid.UUID, kind commands.Kind, payload any) (commands.Command, error)
}

// RevokedTags lists the revoked derived-code tags of a box
// (firmware/offline); optional.
type RevokedTags interface {
	RevokedTags(ctx context.Context, boxID uuid.UUID) ([]string, error)
}

// Deps are what the service is built on.
type Deps struct {
	Secrets  Secrets
	Signer   Signer
	Codes    Opener
	Policies Policies
	Commands Commands
	Tags     RevokedTags // may be nil
	Observer Observer    // may be nil
	Replica  Replica     // may be nil: the build reads in its own transaction
}

// Replica runs read-only work on a streaming replica of the database (the
// app's KEYRELAY_DATABASE_REPLICA_URL): fn gets a context whose tenant
// transaction is a read-only one on the replica, for the tenant of ctx,
// once the replica holds everything committed before the call; a replica
// that lags or fails is read around, on the primary in ctx. fn may run
// twice and must only read.
type Replica interface {
	Read(ctx context.Context, fn func(ctx context.Context) error) error
}

// Observer counts rebuilds (the platform's metrics).
type Observer interface {
	BundleRebuilt(result string)
}

// Service builds and serves bundles. Every method runs in the tenant
// transaction of its context.
type Service struct {
	d   Deps
	cfg Config
	now func() time.Time
}

// New returns the service.
func New(d Deps, cfg Config) (*Service, error) {
	if d.Secrets == nil || d.Signer == nil || d.Codes == nil || d.Policies == nil || d.Commands == nil {
		return nil, errors.New("bundles: Secrets, Signer, Codes, Policies and Commands are required")
	}
	if cfg.Horizon <= 0 || cfg.Debounce <= 0 || cfg.Refresh <= 0 || cfg.MaxSize <= 0 {
		return nil, errors.New("bundles: Horizon, Debounce, Refresh and MaxSize must be positive")
	}
	return &Service{d: d, cfg: cfg, now: time.Now}, nil
}

// Config returns the service's configuration.
func (s *Service) Config() Config { return s.cfg }

// ErrNoOfflineMode answers for an MS3.
var ErrNoOfflineMode = tenants.Errorf(tenants.ENotFound, "this box is an MS3: MS3 boxes have no offline mode and get no bundle; they work online only")

// row is a box_bundles row.
type row struct {
	TenantID  uuid.UUID `gorm:"primaryKey"`
	BoxID     uuid.UUID `gorm:"primaryKey"`
	Version   uint64
	BuiltAt   *time.Time
	ExpiresAt *time.Time
	Accesses  int
	ETag      string `gorm:"column:etag"`
	Bundle    []byte
}

func (row) TableName() string { return "box_bundles" }

// pendingChanges returns the ids of the box's changes not yet in a built
// bundle, and when the oldest was made (nil: none).
func pendingChanges(ctx context.Context, boxID uuid.UUID) ([]uuid.UUID, *time.Time, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, nil, err
	}
	var cs []struct {
		ID        uuid.UUID
		ChangedAt time.Time
	}
	if err := tx.Raw(`SELECT id, changed_at FROM box_bundle_changes WHERE box_id = ? ORDER BY changed_at`, boxID).Scan(&cs).Error; err != nil {
		return nil, nil, fmt.Errorf("bundles: pending changes: %w", err)
	}
	if len(cs) == 0 {
		return nil, nil, nil
	}
	ids := make([]uuid.UUID, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	oldest := cs[0].ChangedAt
	return ids, &oldest, nil
}

type boxRow struct {
	ID         uuid.UUID
	Model      string
	Timezone   string
	LocationID *uuid.UUID
}

func loadBox(ctx context.Context, id uuid.UUID) (boxRow, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return boxRow{}, err
	}
	var b boxRow
	err = tx.Table("boxes").Select("id, model, timezone, location_id").Where("id = ? AND deleted_at IS NULL", id).Take(&b).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return b, tenants.NotFound("box")
	}
	if err != nil {
		return b, fmt.Errorf("bundles: load box: %w", err)
	}
	if b.Model == "MS3" {
		return b, ErrNoOfflineMode
	}
	return b, nil
}

// Built is the outcome of a build.
type Built struct {
	Version  uint64
	Accesses int
	Size     int
	ETag     string
}

// Build makes, signs and stores the box's next bundle. The box_bundles row
// is locked for the build, so two builds of one box (the worker and a
// fetch) take turns and versions only grow.
func (s *Service) Build(ctx context.Context, boxID uuid.UUID) (Built, error) {
	b, err := loadBox(ctx, boxID)
	if err != nil {
		return Built{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Built{}, err
	}
	tenantID, _ := tenants.TenantOf(ctx)
	if err := tx.Exec(`INSERT INTO box_bundles (tenant_id, box_id) VALUES (?, ?) ON CONFLICT DO NOTHING`, tenantID, boxID).Error; err != nil {
		return Built{}, fmt.Errorf("bundles: row: %w", err)
	}
	// Only the version: the stored bundle (megabytes) is not read back.
	var cur struct{ Version uint64 }
	if err := tx.Raw(`SELECT version FROM box_bundles WHERE box_id = ? FOR UPDATE`, boxID).Take(&cur).Error; err != nil {
		return Built{}, fmt.Errorf("bundles: lock: %w", err)
	}
	// The changes this build covers: read before the data, so any change
	// committed later stays pending for the next build.
	covered, _, err := pendingChanges(ctx, boxID)
	if err != nil {
		return Built{}, err
	}
	k, err := s.d.Secrets.Secret(ctx, boxID)
	if err != nil {
		return Built{}, err
	}
	kver, err := boxkeys.Derive(k, boxkeys.Verifier)
	if err != nil {
		return Built{}, err
	}
	now := s.now().UTC()
	// The data (keys, accesses, policy, revoked tags: the bulk of a build)
	// may come from the read replica. Read waits until the replica holds
	// what the primary had committed by now, so every change in covered is
	// in it; the lock, the version and the store stay on the primary.
	var p *Payload
	read := func(ctx context.Context) (err error) {
		p, err = s.payload(ctx, tenantID, b, kver, cur.Version+1, now)
		return err
	}
	if s.d.Replica != nil {
		err = s.d.Replica.Read(ctx, read)
	} else {
		err = read(ctx)
	}
	if err != nil {
		return Built{}, err
	}
	raw, err := encode(p)
	if err != nil {
		return Built{}, err
	}
	if int64(len(raw)) > s.cfg.MaxSize {
		return Built{}, tenants.Errorf(tenants.EConflict, "the box's bundle would be %d bytes, above the %d a box accepts", len(raw), s.cfg.MaxSize)
	}
	m := signing.Manifest{Type: signing.TypeBundle, TenantID: tenantID, BoxID: boxID, Version: p.Version,
		IssuedAt: now, ExpiresAt: p.ValidUntil}
	m.Describe(raw)
	signed, err := s.d.Signer.Sign(m)
	if err != nil {
		return Built{}, fmt.Errorf("bundles: sign: %w", err)
	}
	packed, err := signing.Pack(signed, raw)
	if err != nil {
		return Built{}, err
	}
	out := Built{Version: p.Version, Accesses: len(p.Accesses), Size: len(packed), ETag: `"` + strconv.FormatUint(p.Version, 10) + `"`}
	if _, err := tx.Statement.ConnPool.ExecContext(ctx, `UPDATE box_bundles SET version = $1, built_at = $2, expires_at = $3, accesses = $4, etag = $5, bundle = $6
		WHERE box_id = $7`, out.Version, now, p.ValidUntil, out.Accesses, out.ETag, packed, boxID.String()); err != nil {
		return Built{}, fmt.Errorf("bundles: store: %w", err)
	}
	if len(covered) > 0 {
		if err := tx.Exec(`DELETE FROM box_bundle_changes WHERE box_id = ? AND id IN ?`, boxID, covered).Error; err != nil {
			return Built{}, fmt.Errorf("bundles: clear changes: %w", err)
		}
	}
	return out, nil
}

// payload gathers what the box needs.
func (s *Service) payload(ctx context.Context, tenantID uuid.UUID, b boxRow, kver []byte, version uint64, now time.Time) (*Payload, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	pol, err := s.d.Policies.PolicyOf(ctx)
	if err != nil {
		return nil, err
	}
	p := &Payload{Format: Format, TenantID: tenantID, BoxID: b.ID, Version: version, BuiltAt: now,
		ValidUntil: now.Add(s.cfg.Horizon), Timezone: b.Timezone,
		Policy: Policy{VisitorPickups: pol.VisitorPickups, OwnerPickups2FA: pol.OwnerPickups2FA, PhonePickups: "deny"},
		Keys:   []Key{}, Accesses: []Access{}, Revoked: []Revocation{}, RevokedTags: []string{}}
	var keys []struct {
		ID        uuid.UUID
		FobSerial string
		BoxID     *uuid.UUID
		Bin       *int
		State     string
		HomeBoxID uuid.UUID
		HomeBin   int
	}
	if err := tx.Raw(`SELECT id, fob_serial, box_id, bin, state, home_box_id, home_bin FROM keys
		WHERE deleted_at IS NULL AND ((state = 'in_bin' AND box_id = @box) OR home_box_id = @box) ORDER BY id`,
		map[string]any{"box": b.ID}).Scan(&keys).Error; err != nil {
		return nil, fmt.Errorf("bundles: keys: %w", err)
	}
	ids := make([]uuid.UUID, 0, len(keys))
	for _, k := range keys {
		pk := Key{ID: k.ID, FobSerial: k.FobSerial}
		if k.State == "in_bin" && k.BoxID != nil && *k.BoxID == b.ID && k.Bin != nil {
			pk.Bin = *k.Bin
		}
		if k.HomeBoxID == b.ID {
			pk.HomeBin = k.HomeBin
		}
		p.Keys = append(p.Keys, pk)
		ids = append(ids, k.ID)
	}
	if len(ids) == 0 {
		return p, s.tags(ctx, p)
	}
	// Straight on the transaction's connection, not through gorm's
	// statement building and reflection, and uuids as their 16 bytes
	// (uuid_send) rather than text to format and parse: 10,000 rows is the
	// bulk of a build (BenchmarkBundle10k).
	rows, err := tx.Statement.ConnPool.QueryContext(ctx, `SELECT uuid_send(b.id), uuid_send(b.key_id), b.starts_at, b.ends_at, b.updated_at, b.visitor_phone, b.revoked_at,
			uuid_send(c.id), c.code_sealed
		FROM bookings b JOIN codes c ON c.tenant_id = b.tenant_id AND c.id = b.code_id
		WHERE b.key_id = ANY($1::uuid[]) AND NOT (b.hold AND b.released_at IS NULL) AND c.freed_at IS NULL
		  AND (b.ends_at IS NULL OR b.ends_at > $2) AND b.starts_at < $3
		  AND (b.revoked_at IS NULL OR b.revoked_at > $4)`, uuidArray(ids), now, p.ValidUntil, now.Add(-s.cfg.Horizon))
	if err != nil {
		return nil, fmt.Errorf("bundles: accesses: %w", err)
	}
	defer rows.Close()
	v := NewVerifiers(kver)
	for rows.Next() {
		var (
			a         Access
			phone     sql.NullString
			revokedAt *time.Time
			codeID    uuid.UUID
			sealed    sql.RawBytes
		)
		if err := rows.Scan(&a.ID, &a.KeyID, &a.StartsAt, &a.EndsAt, &a.Changed, &phone, &revokedAt, &codeID, &sealed); err != nil {
			return nil, fmt.Errorf("bundles: accesses: %w", err)
		}
		code, err := bookings.OpenSealedCode(s.d.Codes, tenantID, codeID, sealed)
		if err != nil {
			return nil, err
		}
		if revokedAt != nil {
			p.Revoked = append(p.Revoked, Revocation{ID: a.ID, KeyID: a.KeyID, Code: v.Code(code), RevokedAt: revokedAt.UTC()})
			continue
		}
		a.Code = v.Code(code)
		if phone.String != "" {
			a.Phone = v.Phone(phone.String)
		}
		a.StartsAt, a.Changed = a.StartsAt.UTC(), a.Changed.UTC()
		if a.EndsAt != nil {
			e := a.EndsAt.UTC()
			a.EndsAt = &e
		}
		p.Accesses = append(p.Accesses, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("bundles: accesses: %w", err)
	}
	// Sorted here rather than by the query: the same bundle for the same
	// data, without PostgreSQL sorting megabytes of rows it then sends.
	slices.SortFunc(p.Accesses, func(a, b Access) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	slices.SortFunc(p.Revoked, func(a, b Revocation) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	return p, s.tags(ctx, p)
}

func (s *Service) tags(ctx context.Context, p *Payload) error {
	if s.d.Tags == nil {
		return nil
	}
	tags, err := s.d.Tags.RevokedTags(ctx, p.BoxID)
	if err != nil {
		return err
	}
	sort.Strings(tags)
	p.RevokedTags = append(p.RevokedTags, tags...)
	return nil
}

// uuidArray is a PostgreSQL uuid[] literal for ANY(…).
func uuidArray(ids []uuid.UUID) string {
	buf := make([]byte, 0, len(ids)*37+2)
	buf = append(buf, '{')
	for i, id := range ids {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, id.String()...)
	}
	return string(append(buf, '}'))
}

// Current returns the box's bundle to serve, building it first when there
// is none, when it is older than Refresh, or when it has been dirty longer
// than StaleDirty (the worker should have rebuilt it).
func (s *Service) Current(ctx context.Context, boxID uuid.UUID) (etag string, bundle []byte, err error) {
	if _, err := loadBox(ctx, boxID); err != nil {
		return "", nil, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return "", nil, err
	}
	var r row
	err = tx.Where("box_id = ?", boxID).Take(&r).Error
	if err != nil && !errors.Is(err, gorm.ErrRecordNotFound) {
		return "", nil, fmt.Errorf("bundles: load: %w", err)
	}
	_, dirtySince, err := pendingChanges(ctx, boxID)
	if err != nil {
		return "", nil, err
	}
	now := s.now()
	stale := r.Bundle == nil || r.BuiltAt == nil || now.Sub(*r.BuiltAt) > s.cfg.Refresh ||
		(dirtySince != nil && now.Sub(*dirtySince) > s.cfg.StaleDirty)
	if stale {
		if _, err := s.Build(ctx, boxID); err != nil {
			return "", nil, err
		}
		if err := tx.Where("box_id = ?", boxID).Take(&r).Error; err != nil {
			return "", nil, fmt.Errorf("bundles: load: %w", err)
		}
	}
	return r.ETag, r.Bundle, nil
}

// Status is what the dashboard shows of a box's bundle.
type Status struct {
	BoxID      uuid.UUID  `json:"box_id"`
	Version    uint64     `json:"version"`
	BuiltAt    *time.Time `json:"built_at"`
	ExpiresAt  *time.Time `json:"expires_at"`
	Accesses   int        `json:"accesses"`
	Size       int        `json:"size"`
	DirtySince *time.Time `json:"dirty_since"`
}

// StatusOf returns the box's bundle status for staff who see the box.
func (s *Service) StatusOf(ctx context.Context, boxID uuid.UUID) (Status, error) {
	p, err := tenants.Require(ctx, tenants.RoleStaff)
	if err != nil {
		return Status{}, err
	}
	b, err := loadBox(ctx, boxID)
	if errors.Is(err, ErrNoOfflineMode) && !p.Sees(b.LocationID) {
		return Status{}, tenants.NotFound("box")
	}
	if err != nil {
		return Status{}, err
	}
	if !p.Sees(b.LocationID) {
		return Status{}, tenants.NotFound("box")
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Status{}, err
	}
	// The bundle's size, not the bundle (megabytes for a busy box).
	var r struct {
		Version            uint64
		BuiltAt, ExpiresAt *time.Time
		Accesses, Size     int
	}
	if err := tx.Raw(`SELECT version, built_at, expires_at, accesses, coalesce(length(bundle), 0) AS size FROM box_bundles WHERE box_id = ?`, boxID).
		Scan(&r).Error; err != nil {
		return Status{}, fmt.Errorf("bundles: load: %w", err)
	}
	_, dirtySince, err := pendingChanges(ctx, boxID)
	if err != nil {
		return Status{}, err
	}
	return Status{BoxID: boxID, Version: r.Version, BuiltAt: utc(r.BuiltAt), ExpiresAt: utc(r.ExpiresAt), Accesses: r.Accesses,
		Size: r.Size, DirtySince: utc(dirtySince)}, nil
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// ReadyPayload is the payload of a bundle_ready command.
type ReadyPayload struct {
	Version uint64 `json:"version"`
}

// Rebuild is the worker's job for one box: build, then tell the box. An
// unacknowledged bundle_ready of an older version is expired first, so a
// box that was offline for a day finds one command, not hundreds.
func (s *Service) Rebuild(ctx context.Context, boxID uuid.UUID) (out Built, err error) {
	defer func() {
		if s.d.Observer == nil {
			return
		}
		if err != nil {
			s.d.Observer.BundleRebuilt("error")
			return
		}
		tenants.AfterCommit(ctx, func() { s.d.Observer.BundleRebuilt("ok") })
	}()
	out, err = s.Build(ctx, boxID)
	if err != nil {
		return out, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return out, err
	}
	if err := tx.Exec(`UPDATE box_commands SET expires_at = ? WHERE box_id = ? AND kind = ? AND acked_at IS NULL AND expires_at > ?`,
		s.now(), boxID, string(commands.BundleReady), s.now()).Error; err != nil {
		return out, fmt.Errorf("bundles: expire older bundle_ready: %w", err)
	}
	if _, err := s.d.Commands.Send(ctx, boxID, commands.BundleReady, ReadyPayload{Version: out.Version}); err != nil {
		return out, err
	}
	return out, nil
}
