package inventory

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// State is where a key is, as stored: in a bin, or out with a visitor.
type State string

const (
	InBin State = "in_bin"
	Out   State = "out"
	// Overdue is never stored: a key is overdue when it is out and the
	// access that took it has ended.
	Overdue State = "overdue"
	// Missing: the box reported the key's bin empty when nobody took it
	// (tenants/exchange), or staff said so (SetWhereabouts), until the key
	// turns up in a bin again.
	Missing State = "missing"
)

// Key is a physical key on an anonymous fob. Its home is a bin of a box;
// where it is now is a bin (BoxID, Bin: not necessarily its home, a visitor
// may drop it off at any box) or out with the access that took it.
type Key struct {
	TenantID    uuid.UUID `gorm:"primaryKey"`
	ID          uuid.UUID `gorm:"primaryKey"`
	Name        string
	FobSerial   string
	HomeBoxID   uuid.UUID
	HomeBin     int
	State       State
	BoxID       *uuid.UUID
	Bin         *int
	OutAccessID *uuid.UUID
	OutSince    *time.Time
	OutUntil    *time.Time // when that access ends; nil for ongoing access
	CreatedAt   time.Time
	UpdatedAt   time.Time
	DeletedAt   *time.Time
}

func (Key) TableName() string { return "keys" }

// AtHome reports whether the key is in its home bin.
func (k Key) AtHome() bool {
	return k.State == InBin && k.BoxID != nil && *k.BoxID == k.HomeBoxID && k.Bin != nil && *k.Bin == k.HomeBin
}

// PickupBoxID is the box a booking of k names: the box whose bin holds it
// (a booking code opens only that box), else its home box, where it is
// expected back. tenants/bookings names the same box.
func (k Key) PickupBoxID() uuid.UUID {
	if k.State == InBin && k.BoxID != nil {
		return *k.BoxID
	}
	return k.HomeBoxID
}

// Whereabouts says where a key is at a given time.
type Whereabouts struct {
	State    State      `json:"state"` // in_bin, out, overdue or missing
	BoxID    *uuid.UUID `json:"box_id"`
	Bin      *int       `json:"bin"`
	AccessID *uuid.UUID `json:"access_id"`
	Since    *time.Time `json:"since"`
	Until    *time.Time `json:"until"`
}

// WhereaboutsAt returns where the key is, judged at now.
func (k Key) WhereaboutsAt(now time.Time) Whereabouts {
	switch k.State {
	case Missing:
		return Whereabouts{State: Missing}
	case InBin:
		return Whereabouts{State: InBin, BoxID: k.BoxID, Bin: k.Bin}
	}
	w := Whereabouts{State: Out, AccessID: k.OutAccessID, Since: utc(k.OutSince), Until: utc(k.OutUntil)}
	if k.OutUntil != nil && k.OutUntil.Before(now) {
		w.State = Overdue
	}
	return w
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// KeyInput is a new key and its home bin; a new key is in its home bin.
type KeyInput struct {
	Name      string `json:"name"`
	FobSerial string `json:"fob_serial"`
	BoxID     string `json:"box_id"`
	Bin       int    `json:"bin"`
}

// KeyPatch changes a key; absent or null fields are unchanged. Changing
// box_id or bin moves the key's home, and the key with it when it is in its
// old home bin.
type KeyPatch struct {
	Name      *string `json:"name"`
	FobSerial *string `json:"fob_serial"`
	BoxID     *string `json:"box_id"`
	Bin       *int    `json:"bin"`
}

// fobSerialRE is what fob readers report, as the schema checks it.
var fobSerialRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)

const fobRule = "must be 1 to 64 letters, digits or . _ : -"

// CreateKey adds a key in its home bin.
func (s *Service) CreateKey(ctx context.Context, in KeyInput) (Key, error) {
	p, err := staff(ctx)
	if err != nil {
		return Key{}, err
	}
	var v tenants.Validator
	name, ok := cleanName(in.Name)
	v.Check(ok, "name", "is required: 1 to 200 characters, no control characters")
	fob := strings.TrimSpace(in.FobSerial)
	v.Check(fobSerialRE.MatchString(fob), "fob_serial", fobRule)
	boxID, ok := parseRef(in.BoxID)
	v.Check(ok, "box_id", "must be the id of a box")
	v.Check(in.Bin >= 1, "bin", "must be a bin number of the box, from 1")
	if err := v.Err(); err != nil {
		return Key{}, err
	}
	// Held until the key is in, so the box cannot shrink or be archived
	// under it.
	box, err := loadBox(ctx, p, boxID, "SHARE")
	if err != nil {
		return Key{}, err
	}
	if in.Bin > box.Bins {
		return Key{}, tenants.Invalid(tenants.FieldError{Field: "bin", Message: fmt.Sprintf("must be from 1 to %d (the bins of box %q)", box.Bins, box.Name)})
	}
	if err := fobFree(ctx, p, fob, uuid.Nil); err != nil {
		return Key{}, err
	}
	if err := homeFree(ctx, p, box, in.Bin, uuid.Nil); err != nil {
		return Key{}, err
	}
	if err := binEmpty(ctx, p, box, in.Bin, uuid.Nil); err != nil {
		return Key{}, err
	}
	now := s.now()
	bin := in.Bin
	k := Key{TenantID: p.TenantID, ID: newID(), Name: name, FobSerial: fob, HomeBoxID: box.ID, HomeBin: bin,
		State: InBin, BoxID: &box.ID, Bin: &bin, CreatedAt: now, UpdatedAt: now}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Key{}, err
	}
	if err := tx.Create(&k).Error; err != nil {
		return Key{}, keyWriteError("create key", err, box, bin, fob)
	}
	return k, audit.Record(ctx, p.Actor(), "key.created", "key:"+k.ID.String(),
		map[string]string{"name": k.Name, "fob_serial": k.FobSerial, "home": homeOf(box, bin)})
}

func homeOf(b Box, bin int) string { return fmt.Sprintf("box:%s bin:%d", b.ID, bin) }

// keyWriteError turns a unique-index refusal, which only a concurrent
// writer can cause once the explicit checks passed, into the same conflict
// the checks report.
func keyWriteError(what string, err error, box Box, bin int, fob string) error {
	switch {
	case uniqueViolation(err, "keys_fob_serial"):
		return tenants.Errorf(tenants.EConflict, "fob %s is already on another live key", fob)
	case uniqueViolation(err, "keys_home_bin"):
		return tenants.Errorf(tenants.EConflict, "bin %d of box %q is already another key's home", bin, box.Name)
	case uniqueViolation(err, "keys_in_bin"):
		return tenants.Errorf(tenants.EConflict, "bin %d of box %q holds another key", bin, box.Name)
	}
	return wrap(what, err)
}

// keyHolder is a key found in the way, with the location of its home box.
type keyHolder struct {
	ID             uuid.UUID
	Name           string
	HomeLocationID *uuid.UUID
}

// keyWhere finds a live key other than self matching cond.
func keyWhere(ctx context.Context, self uuid.UUID, cond string, args ...any) (*keyHolder, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var hs []keyHolder
	err = tx.Raw(`SELECT k.id, k.name, hb.location_id AS home_location_id
		FROM keys k JOIN boxes hb ON hb.tenant_id = k.tenant_id AND hb.id = k.home_box_id
		WHERE k.deleted_at IS NULL AND k.id <> ? AND `+cond+` LIMIT 1`, append([]any{self}, args...)...).Scan(&hs).Error
	if err != nil {
		return nil, wrap("find key", err)
	}
	if len(hs) == 0 {
		return nil, nil
	}
	return &hs[0], nil
}

// describe names h for p: by name and id when p sees it, else vaguely.
func (h keyHolder) describe(p tenants.Principal) string {
	if p.Sees(h.HomeLocationID) {
		return fmt.Sprintf("key %q (%s)", h.Name, h.ID)
	}
	return "a key of another location"
}

// fobFree refuses a fob serial that is on another live key. The key may be
// one the caller cannot see: the fob is physically taken all the same, but
// its name is not told.
func fobFree(ctx context.Context, p tenants.Principal, fob string, self uuid.UUID) error {
	h, err := keyWhere(ctx, self, "k.fob_serial = ?", fob)
	if err != nil || h == nil {
		return err
	}
	return tenants.Errorf(tenants.EConflict, "fob %s is already on %s", fob, h.describe(p))
}

// homeFree refuses a home bin that is another live key's home.
func homeFree(ctx context.Context, p tenants.Principal, box Box, bin int, self uuid.UUID) error {
	h, err := keyWhere(ctx, self, "k.home_box_id = ? AND k.home_bin = ?", box.ID, bin)
	if err != nil || h == nil {
		return err
	}
	return tenants.Errorf(tenants.EConflict, "bin %d of box %q is already the home of %s", bin, box.Name, h.describe(p))
}

// binEmpty refuses to put a key in a bin that holds another key.
func binEmpty(ctx context.Context, p tenants.Principal, box Box, bin int, self uuid.UUID) error {
	h, err := keyWhere(ctx, self, "k.box_id = ? AND k.bin = ? AND k.state = 'in_bin'", box.ID, bin)
	if err != nil || h == nil {
		return err
	}
	return tenants.Errorf(tenants.EConflict, "bin %d of box %q holds %s", bin, box.Name, h.describe(p))
}

// loadKey reads a live key whose home box the caller sees, locked with lock
// ("" for none), and that box.
func loadKey(ctx context.Context, p tenants.Principal, id uuid.UUID, lock string) (Key, Box, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Key{}, Box{}, err
	}
	if lock != "" {
		tx = tx.Clauses(clause.Locking{Strength: lock})
	}
	var k Key
	if err := tx.Where("id = ? AND deleted_at IS NULL", id).Take(&k).Error; err != nil {
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return Key{}, Box{}, tenants.NotFound("key")
		}
		return Key{}, Box{}, wrap("load key", err)
	}
	box, err := loadBox(ctx, p, k.HomeBoxID, "")
	if err != nil {
		if tenants.ErrorCode(err) == tenants.ENotFound {
			return Key{}, Box{}, tenants.NotFound("key")
		}
		return Key{}, Box{}, err
	}
	return k, box, nil
}

// GetKey returns a key the caller sees.
func (s *Service) GetKey(ctx context.Context, id uuid.UUID) (Key, error) {
	p, err := staff(ctx)
	if err != nil {
		return Key{}, err
	}
	k, _, err := loadKey(ctx, p, id, "")
	return k, err
}

// KeyFilter selects keys. BoxID and LocationID filter on the key's home.
type KeyFilter struct {
	BoxID      uuid.UUID // zero: any
	LocationID uuid.UUID // zero: any
	State      State     // "": any
	After      uuid.UUID
	Limit      int
}

// ListKeys returns a page of the live keys the caller sees, newest first.
func (s *Service) ListKeys(ctx context.Context, f KeyFilter) ([]Key, error) {
	p, err := staff(ctx)
	if err != nil {
		return nil, err
	}
	locs, ok := locationScope(p, f.LocationID)
	if !ok {
		return []Key{}, nil
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	q := tx.Where("deleted_at IS NULL").Order("id DESC").Limit(f.Limit)
	if f.After != uuid.Nil {
		q = q.Where("id < ?", f.After)
	}
	if f.BoxID != uuid.Nil {
		q = q.Where("home_box_id = ?", f.BoxID)
	}
	if locs != nil {
		q = q.Where("home_box_id IN (SELECT id FROM boxes WHERE location_id IN ?)", locs)
	}
	switch f.State {
	case InBin:
		q = q.Where("state = 'in_bin'")
	case Out:
		q = q.Where("state = 'out' AND (out_until IS NULL OR out_until >= ?)", s.now())
	case Overdue:
		q = q.Where("state = 'out' AND out_until < ?", s.now())
	case Missing:
		q = q.Where("state = 'missing'")
	}
	var ks []Key
	if err := q.Find(&ks).Error; err != nil {
		return nil, wrap("list keys", err)
	}
	return ks, nil
}

// UpdateKey renames a key, changes its fob or moves its home. A key in its
// old home bin moves with its home; a key elsewhere (out, or dropped off
// at another bin) stays where it is.
func (s *Service) UpdateKey(ctx context.Context, id uuid.UUID, in KeyPatch) (Key, error) {
	p, err := staff(ctx)
	if err != nil {
		return Key{}, err
	}
	k, home, err := loadKey(ctx, p, id, "UPDATE")
	if err != nil {
		return Key{}, err
	}
	was := k
	var v tenants.Validator
	if in.Name != nil {
		name, ok := cleanName(*in.Name)
		v.Check(ok, "name", "must be 1 to 200 characters, no control characters")
		k.Name = name
	}
	if in.FobSerial != nil {
		k.FobSerial = strings.TrimSpace(*in.FobSerial)
		v.Check(fobSerialRE.MatchString(k.FobSerial), "fob_serial", fobRule)
	}
	if in.BoxID != nil {
		boxID, ok := parseRef(*in.BoxID)
		v.Check(ok, "box_id", "must be the id of a box")
		k.HomeBoxID = boxID
	}
	if in.Bin != nil {
		v.Check(*in.Bin >= 1, "bin", "must be a bin number of the box, from 1")
		k.HomeBin = *in.Bin
	}
	if err := v.Err(); err != nil {
		return Key{}, err
	}
	if k.FobSerial != was.FobSerial {
		if err := fobFree(ctx, p, k.FobSerial, k.ID); err != nil {
			return Key{}, err
		}
	}
	moved := k.HomeBoxID != was.HomeBoxID || k.HomeBin != was.HomeBin
	if moved {
		// Read (again) under a share lock: the box cannot shrink or be
		// archived before the key is in.
		if home, err = loadBox(ctx, p, k.HomeBoxID, "SHARE"); err != nil {
			return Key{}, err
		}
		if k.HomeBin > home.Bins {
			return Key{}, tenants.Invalid(tenants.FieldError{Field: "bin", Message: fmt.Sprintf("must be from 1 to %d (the bins of box %q)", home.Bins, home.Name)})
		}
		if err := homeFree(ctx, p, home, k.HomeBin, k.ID); err != nil {
			return Key{}, err
		}
		if was.AtHome() {
			if err := binEmpty(ctx, p, home, k.HomeBin, k.ID); err != nil {
				return Key{}, err
			}
			bin := k.HomeBin
			k.BoxID, k.Bin = &home.ID, &bin
		}
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Key{}, err
	}
	k.UpdatedAt = s.now()
	err = tx.Model(&k).Select("name", "fob_serial", "home_box_id", "home_bin", "box_id", "bin", "updated_at").Updates(&k).Error
	if err != nil {
		return Key{}, keyWriteError("update key", err, home, k.HomeBin, k.FobSerial)
	}
	if k.PickupBoxID() != was.PickupBoxID() || k.Name != was.Name {
		if err := s.access.KeysMoved(ctx, []uuid.UUID{k.ID}); err != nil {
			return Key{}, wrap("follow reminders", err)
		}
	}
	return k, audit.Record(ctx, p.Actor(), "key.updated", "key:"+k.ID.String(), keyChanges(was, k, home))
}

func keyChanges(was, is Key, home Box) map[string]string {
	d := map[string]string{}
	if was.Name != is.Name {
		d["name"] = is.Name
	}
	if was.FobSerial != is.FobSerial {
		d["fob_serial"] = is.FobSerial
	}
	if was.HomeBoxID != is.HomeBoxID || was.HomeBin != is.HomeBin {
		d["home"] = homeOf(home, is.HomeBin)
		d["moved_with_home"] = fmt.Sprint(was.AtHome())
	}
	return d
}

// DeleteKey archives a key. It is refused while the key has live accesses
// (bookings not ended or revoked, ongoing access): they would open a bin
// for a key that no longer exists.
func (s *Service) DeleteKey(ctx context.Context, id uuid.UUID) error {
	p, err := staff(ctx)
	if err != nil {
		return err
	}
	// The row lock makes a booking being created for this key wait, as long
	// as bookings reads the key FOR SHARE.
	k, _, err := loadKey(ctx, p, id, "UPDATE")
	if err != nil {
		return err
	}
	n, err := s.access.LiveAccessCount(ctx, k.ID)
	if err != nil {
		return wrap("count live accesses", err)
	}
	if n > 0 {
		return tenants.Errorf(tenants.EConflict, "the key has %d live booking(s) or ongoing access(es); revoke them or let them end first", n)
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	now := s.now()
	if err := tx.Model(&k).Updates(map[string]any{"deleted_at": now, "updated_at": now}).Error; err != nil {
		return wrap("archive key", err)
	}
	return audit.Record(ctx, p.Actor(), "key.deleted", "key:"+k.ID.String(), map[string]string{"name": k.Name, "fob_serial": k.FobSerial})
}
