package offline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/firmware/boxkeys"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// Secrets gives a box's secret K (firmware/devices).
type Secrets interface {
	Secret(ctx context.Context, boxID uuid.UUID) ([]byte, error)
}

// Keys seals derived codes for display and hashes their tags for lookup
// (tenants/secretbox).
type Keys interface {
	Seal(plaintext, context []byte) ([]byte, error)
	Open(sealed, context []byte) ([]byte, error)
	Hash(parts ...[]byte) []byte
}

// Service is the server's side of offline codes.
type Service struct {
	secrets Secrets
	keys    Keys
	now     func() time.Time
}

// New returns the service.
func New(secrets Secrets, keys Keys) *Service {
	return &Service{secrets: secrets, keys: keys, now: time.Now}
}

type boxRow struct {
	ID         uuid.UUID
	Name       string
	Model      string
	LocationID *uuid.UUID
	Bins       int
	Location   string
}

// loadBox returns a live box the caller sees; MS3 boxes have no offline
// mode, so nothing of this package applies to them.
func loadBox(ctx context.Context, p tenants.Principal, id uuid.UUID, lock bool) (boxRow, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return boxRow{}, err
	}
	q := tx.Table("boxes AS b").Select("b.id, b.name, b.model, b.location_id, b.bins, COALESCE(l.name, '') AS location").
		Joins("LEFT JOIN locations l ON l.tenant_id = b.tenant_id AND l.id = b.location_id").
		Where("b.id = ? AND b.deleted_at IS NULL", id)
	if lock {
		// Derivations at one box run one at a time, so two cannot both pass
		// the collision check.
		q = q.Set("gorm:query_option", "FOR UPDATE OF b")
	}
	var b boxRow
	err = q.Take(&b).Error
	if errors.Is(err, gorm.ErrRecordNotFound) || err == nil && !p.Sees(b.LocationID) {
		return boxRow{}, tenants.NotFound("box")
	}
	if err != nil {
		return boxRow{}, fmt.Errorf("offline: load box: %w", err)
	}
	if b.Model == "MS3" {
		return boxRow{}, tenants.Errorf(tenants.EConflict, "MS3 boxes have no offline mode: they open nothing without the server")
	}
	return b, nil
}

func (s *Service) boxKey(ctx context.Context, boxID uuid.UUID, purpose string) ([]byte, error) {
	k, err := s.secrets.Secret(ctx, boxID)
	if err != nil {
		return nil, err
	}
	return boxkeys.Derive(k, purpose)
}

// SheetRow is one line of the printable sheet: a bin's next backup code
// with the key that lives there (the key data sheet), or the open-all code
// (Bin 0, no key).
type SheetRow struct {
	Bin       int    `json:"bin"`
	Code      string `json:"code"`
	Counter   uint64 `json:"counter"`
	KeyName   string `json:"key_name"`
	FobSerial string `json:"fob_serial"`
}

// Sheet is the printable sheet of a box.
type Sheet struct {
	BoxID       uuid.UUID  `json:"box_id"`
	BoxName     string     `json:"box_name"`
	Location    string     `json:"location"`
	GeneratedAt time.Time  `json:"generated_at"`
	Rows        []SheetRow `json:"rows"`
}

// Sheet returns the box's next backup code per bin and its open-all code,
// with the key data sheet, and audits the download: whoever holds it can
// open the box once per code. Admins and owners only, within their
// locations.
func (s *Service) Sheet(ctx context.Context, boxID uuid.UUID, format string) (Sheet, error) {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return Sheet{}, err
	}
	b, err := loadBox(ctx, p, boxID, false)
	if err != nil {
		return Sheet{}, err
	}
	kbak, err := s.boxKey(ctx, boxID, boxkeys.Backup)
	if err != nil {
		return Sheet{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Sheet{}, err
	}
	var counters []struct {
		Bin         int
		NextCounter uint64
	}
	if err := tx.Raw(`SELECT bin, next_counter FROM offline_backup_counters WHERE box_id = ?`, boxID).Scan(&counters).Error; err != nil {
		return Sheet{}, fmt.Errorf("offline: load counters: %w", err)
	}
	next := map[int]uint64{}
	for _, c := range counters {
		next[c.Bin] = c.NextCounter
	}
	var keys []struct {
		HomeBin   int
		Name      string
		FobSerial string
	}
	if err := tx.Raw(`SELECT home_bin, name, fob_serial FROM keys WHERE home_box_id = ? AND deleted_at IS NULL`, boxID).Scan(&keys).Error; err != nil {
		return Sheet{}, fmt.Errorf("offline: load keys: %w", err)
	}
	sh := Sheet{BoxID: b.ID, BoxName: b.Name, Location: b.Location, GeneratedAt: s.now().UTC()}
	for bin := 0; bin <= b.Bins; bin++ {
		sh.Rows = append(sh.Rows, SheetRow{Bin: bin, Counter: next[bin], Code: BackupCode(kbak, boxID, bin, next[bin])})
	}
	for _, k := range keys {
		if k.HomeBin >= 1 && k.HomeBin <= b.Bins {
			sh.Rows[k.HomeBin].KeyName, sh.Rows[k.HomeBin].FobSerial = k.Name, k.FobSerial
		}
	}
	err = audit.Record(ctx, p.Actor(), "box.offline_codes_downloaded", "box:"+boxID.String(),
		map[string]string{"format": format, "codes": strconv.Itoa(len(sh.Rows))})
	return sh, err
}

// BackupUsed moves a bin's counter past a code the box reports used
// (sync). It reports false when the counter was already past it: the
// server knew that code as used, so the report is a reuse.
func (s *Service) BackupUsed(ctx context.Context, boxID uuid.UUID, bin int, counter uint64) (bool, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return false, err
	}
	tenantID, _ := tenants.TenantOf(ctx)
	var before *uint64
	if err := tx.Raw(`SELECT next_counter FROM offline_backup_counters WHERE box_id = ? AND bin = ? FOR UPDATE`, boxID, bin).Scan(&before).Error; err != nil {
		return false, fmt.Errorf("offline: load counter: %w", err)
	}
	if before != nil && *before > counter {
		return false, nil
	}
	if err := tx.Exec(`INSERT INTO offline_backup_counters (tenant_id, box_id, bin, next_counter, updated_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (tenant_id, box_id, bin) DO UPDATE SET next_counter = GREATEST(offline_backup_counters.next_counter, EXCLUDED.next_counter), updated_at = EXCLUDED.updated_at`,
		tenantID, boxID, bin, counter+1, s.now()).Error; err != nil {
		return false, fmt.Errorf("offline: advance counter: %w", err)
	}
	return true, nil
}

// Derived is a derived code as staff see it.
type Derived struct {
	Code       string    `json:"code"`
	Display    string    `json:"display"` // in groups of three, for reading aloud
	BookingID  uuid.UUID `json:"booking_id"`
	BoxID      uuid.UUID `json:"box_id"`
	Bin        int       `json:"bin"`
	ValidFrom  time.Time `json:"valid_from"`
	ValidUntil time.Time `json:"valid_until"`
}

type bookingRow struct {
	ID         uuid.UUID
	KeyID      uuid.UUID
	Kind       string
	StartsAt   time.Time
	EndsAt     *time.Time
	RevokedAt  *time.Time
	Hold       bool
	ReleasedAt *time.Time
	BoxID      uuid.UUID
	Bin        int
	FobSerial  string
}

type derivedRow struct {
	TenantID      uuid.UUID
	ID            uuid.UUID
	BoxID         uuid.UUID
	BookingID     uuid.UUID
	KeyID         uuid.UUID
	Bin           int
	TagHash       []byte
	CodeSealed    []byte
	ValidFrom     time.Time
	ValidUntil    time.Time
	BookingStarts time.Time
	BookingEnds   time.Time
	CreatedBy     string
	CreatedAt     time.Time
	RevokedAt     *time.Time
}

func (derivedRow) TableName() string { return "offline_derived_codes" }

// Derive returns the derived code of a booking, for a visitor whose box is
// offline: the code itself carries the grant (bin and window) and the box
// checks it with no bundle update. Deriving again for an unchanged booking
// returns the same code; after an edit the old code is revoked and a new
// one derived. Staff and up, within their locations.
func (s *Service) Derive(ctx context.Context, bookingID uuid.UUID) (Derived, error) {
	p, err := tenants.Require(ctx, tenants.RoleStaff)
	if err != nil {
		return Derived{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Derived{}, err
	}
	var bk bookingRow
	err = tx.Raw(`SELECT b.id, b.key_id, b.kind, b.starts_at, b.ends_at, b.revoked_at, b.hold, b.released_at,
			k.home_box_id AS box_id, k.home_bin AS bin, k.fob_serial
		FROM bookings b JOIN keys k ON k.tenant_id = b.tenant_id AND k.id = b.key_id
		WHERE b.id = ?`, bookingID).Take(&bk).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return Derived{}, tenants.NotFound("booking")
	}
	if err != nil {
		return Derived{}, fmt.Errorf("offline: load booking: %w", err)
	}
	b, err := loadBox(ctx, p, bk.BoxID, true)
	if tenants.ErrorCode(err) == tenants.ENotFound {
		return Derived{}, tenants.NotFound("booking") // a box the caller does not see
	}
	if err != nil {
		return Derived{}, err
	}
	now := s.now()
	switch {
	case bk.RevokedAt != nil:
		return Derived{}, tenants.Errorf(tenants.EConflict, "the booking is revoked")
	case bk.Hold && bk.ReleasedAt == nil:
		return Derived{}, tenants.Errorf(tenants.EConflict, "the booking is on hold: release it first")
	case bk.EndsAt == nil:
		return Derived{}, tenants.Invalid(tenants.FieldError{Field: "booking", Message: "is ongoing access: a derived code needs a window with an end"})
	case !bk.EndsAt.After(now):
		return Derived{}, tenants.Errorf(tenants.EConflict, "the booking has ended")
	case bk.Bin > MaxDerivedBin:
		return Derived{}, tenants.Invalid(tenants.FieldError{Field: "booking", Message: fmt.Sprintf("its key lives in bin %d: derived codes name bins 1 to %d", bk.Bin, MaxDerivedBin)})
	}
	// The window starts on the hour of the booking's start, or of now for
	// a booking already running (the past part is of no use), and ends at
	// or after the booking's end.
	from := bk.StartsAt
	if from.Before(now) {
		from = now
	}
	start := from.UTC().Truncate(time.Hour)
	if start.After(now.Add(Horizon)) {
		return Derived{}, tenants.Invalid(tenants.FieldError{Field: "booking", Message: "starts more than 20 days from now: derive its code closer to the start"})
	}
	class, ok := ClassFor(bk.EndsAt.Sub(start))
	if !ok {
		return Derived{}, tenants.Invalid(tenants.FieldError{Field: "booking", Message: "lasts more than 20 days: derived codes cover 20 days at most"})
	}
	g := Grant{Start: start, Class: class, Bin: bk.Bin}
	kder, err := s.boxKey(ctx, b.ID, boxkeys.Derived)
	if err != nil {
		return Derived{}, err
	}
	code := DerivedCode(kder, b.ID, g, bk.FobSerial)
	tenantID, _ := tenants.TenantOf(ctx)
	tagHash := s.tagHash(tenantID, b.ID, code[PayloadDigits:])

	var existing []derivedRow
	if err := tx.Where("booking_id = ? AND revoked_at IS NULL", bk.ID).Find(&existing).Error; err != nil {
		return Derived{}, fmt.Errorf("offline: load derived codes: %w", err)
	}
	// A code derived before for this booking stands while the booking,
	// its key and the key's fob are unchanged: the same code again, even
	// though a running booking's window would now start later.
	for _, e := range existing {
		if e.BoxID != b.ID || e.KeyID != bk.KeyID || e.Bin != bk.Bin || !e.BookingStarts.Equal(bk.StartsAt) || !e.BookingEnds.Equal(*bk.EndsAt) {
			continue
		}
		old, err := s.keys.Open(e.CodeSealed, sealContext(tenantID, e.ID))
		if err != nil {
			return Derived{}, fmt.Errorf("offline: open derived code: %w", err)
		}
		c, ok := ClassFor(e.ValidUntil.Sub(e.ValidFrom))
		eg := Grant{Start: e.ValidFrom.UTC(), Class: c, Bin: e.Bin}
		if ok && DerivedCode(kder, b.ID, eg, bk.FobSerial) == string(old) {
			return view(string(old), bk.ID, b.ID, eg), nil
		}
	}
	// Any other live code of this booking is for a window or bin that no
	// longer holds: revoked, so the next bundle carries its tag.
	if err := tx.Model(&derivedRow{}).Where("booking_id = ? AND revoked_at IS NULL", bk.ID).Update("revoked_at", now).Error; err != nil {
		return Derived{}, fmt.Errorf("offline: revoke older code: %w", err)
	}
	// A code equal to one still in force at this box (another booking of
	// the same key and rounded window), or whose tag a revocation lists,
	// would open for the wrong grant or be revoked with the other: refuse.
	// Booking and alias codes (10–12 digits) never equal a 15-digit code.
	var clash int64
	if err := tx.Model(&derivedRow{}).Where("box_id = ? AND tag_hash = ? AND valid_until > ?", b.ID, tagHash, now).Count(&clash).Error; err != nil {
		return Derived{}, fmt.Errorf("offline: check collisions: %w", err)
	}
	if clash > 0 {
		return Derived{}, tenants.Errorf(tenants.EConflict, "this code would collide with a derived code still in force at this box; move the booking's start by an hour and derive again")
	}
	row := derivedRow{TenantID: tenantID, ID: uuid.Must(uuid.NewV7()), BoxID: b.ID, BookingID: bk.ID, KeyID: bk.KeyID, Bin: g.Bin,
		TagHash: tagHash, ValidFrom: g.Start, ValidUntil: g.End(), BookingStarts: bk.StartsAt, BookingEnds: *bk.EndsAt,
		CreatedBy: p.Actor(), CreatedAt: now}
	if row.CodeSealed, err = s.keys.Seal([]byte(code), sealContext(tenantID, row.ID)); err != nil {
		return Derived{}, fmt.Errorf("offline: seal code: %w", err)
	}
	if err := tx.Create(&row).Error; err != nil {
		return Derived{}, fmt.Errorf("offline: store derived code: %w", err)
	}
	err = audit.Record(ctx, p.Actor(), "booking.offline_code_derived", "booking:"+bk.ID.String(), map[string]string{
		"box": b.ID.String(), "bin": strconv.Itoa(g.Bin), "valid_from": g.Start.Format(time.RFC3339), "valid_until": g.End().Format(time.RFC3339)})
	return view(code, bk.ID, b.ID, g), err
}

func view(code string, bookingID, boxID uuid.UUID, g Grant) Derived {
	return Derived{Code: code, Display: code[0:3] + " " + code[3:6] + " " + code[6:9] + " " + code[9:12] + " " + code[12:15],
		BookingID: bookingID, BoxID: boxID, Bin: g.Bin, ValidFrom: g.Start, ValidUntil: g.End()}
}

func sealContext(tenantID, id uuid.UUID) []byte {
	return []byte("offline_derived_codes.code:" + tenantID.String() + ":" + id.String())
}

func (s *Service) tagHash(tenantID, boxID uuid.UUID, tag string) []byte {
	return s.keys.Hash([]byte("offline-derived-tag"), tenantID[:], boxID[:], []byte(tag))
}

// revokedWhere selects derived codes that no longer stand: revoked here,
// their booking revoked, its window moved inside theirs, or their key no
// longer living in that bin.
const revokedWhere = `(d.revoked_at IS NOT NULL OR b.revoked_at IS NOT NULL
	OR b.starts_at > d.booking_starts OR b.ends_at IS NULL OR b.ends_at < d.booking_ends
	OR k.deleted_at IS NOT NULL OR k.home_box_id <> d.box_id OR k.home_bin <> d.bin)`

// RevokedTags lists the tags of the box's derived codes that must stop
// working while their window still runs: what the box's next bundle
// carries as revoked_derived_tags (R7). Runs in the box's tenant
// transaction (the bundle builder's).
func (s *Service) RevokedTags(ctx context.Context, boxID uuid.UUID) ([]string, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	tenantID, _ := tenants.TenantOf(ctx)
	var rows []derivedRow
	err = tx.Raw(`SELECT d.id, d.code_sealed FROM offline_derived_codes d
		JOIN bookings b ON b.tenant_id = d.tenant_id AND b.id = d.booking_id
		JOIN keys k ON k.tenant_id = d.tenant_id AND k.id = d.key_id
		WHERE d.box_id = ? AND d.valid_until > ? AND `+revokedWhere, boxID, s.now()).Scan(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("offline: revoked tags: %w", err)
	}
	tags := make([]string, 0, len(rows))
	for _, r := range rows {
		code, err := s.keys.Open(r.CodeSealed, sealContext(tenantID, r.ID))
		if err != nil {
			return nil, fmt.Errorf("offline: open derived code: %w", err)
		}
		tags = append(tags, string(code[PayloadDigits:]))
	}
	slices.Sort(tags)
	return slices.Compact(tags), nil
}

// DerivedUse is what the server knows of a derived tag a box used.
type DerivedUse struct {
	BookingID uuid.UUID
	KeyID     uuid.UUID
	Revoked   bool // no longer standing (see RevokedTags)
}

// LookupDerived finds the derived codes a box used, by tag, for sync; an
// unknown tag is absent from the map (a code the box accepted that the
// server never issued: only a holder of K_der makes one).
func (s *Service) LookupDerived(ctx context.Context, boxID uuid.UUID, tags []string) (map[string]DerivedUse, error) {
	out := map[string]DerivedUse{}
	if len(tags) == 0 {
		return out, nil
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	tenantID, _ := tenants.TenantOf(ctx)
	byHash := map[string]string{}
	hashes := make([][]byte, 0, len(tags))
	for _, t := range tags {
		h := s.tagHash(tenantID, boxID, t)
		byHash[string(h)] = t
		hashes = append(hashes, h)
	}
	var rows []struct {
		TagHash   []byte
		BookingID uuid.UUID
		KeyID     uuid.UUID
		Revoked   bool
	}
	err = tx.Raw(`SELECT d.tag_hash, d.booking_id, d.key_id, `+revokedWhere+` AS revoked
		FROM offline_derived_codes d
		JOIN bookings b ON b.tenant_id = d.tenant_id AND b.id = d.booking_id
		JOIN keys k ON k.tenant_id = d.tenant_id AND k.id = d.key_id
		WHERE d.box_id = ? AND d.tag_hash IN ? ORDER BY d.id`, boxID, hashes).Scan(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("offline: look up derived tags: %w", err)
	}
	for _, r := range rows {
		// The newest code with that tag wins (ORDER BY id: UUIDv7).
		out[byHash[string(r.TagHash)]] = DerivedUse{BookingID: r.BookingID, KeyID: r.KeyID, Revoked: r.Revoked}
	}
	return out, nil
}

// TagHash is the keyed hash a used derived tag is stored under in the
// journal (never the tag).
func (s *Service) TagHash(ctx context.Context, boxID uuid.UUID, tag string) []byte {
	tenantID, _ := tenants.TenantOf(ctx)
	return s.tagHash(tenantID, boxID, tag)
}
