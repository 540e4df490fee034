package inventory

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// Model is a box's hardware model.
type Model string

const (
	MS3 Model = "MS3"
	MS4 Model = "MS4"
	MS5 Model = "MS5"
)

// Valid reports whether m is a model keyrelay drives.
func (m Model) Valid() bool { return m == MS3 || m == MS4 || m == MS5 }

// OfflineCapable reports whether the model keeps working from a signed
// bundle when it loses its connection: MS3 has no offline mode.
func (m Model) OfflineCapable() bool { return m == MS4 || m == MS5 }

// Box is a kiosk with numbered bins (1…Bins). Archived boxes (DeletedAt
// set) are kept for the history that names them and are invisible here.
type Box struct {
	TenantID   uuid.UUID `gorm:"primaryKey"`
	ID         uuid.UUID `gorm:"primaryKey"`
	LocationID *uuid.UUID
	Name       string
	Model      Model
	Address    string
	Latitude   *float64
	Longitude  *float64
	Timezone   string
	Bins       int
	CreatedAt  time.Time
	UpdatedAt  time.Time
	DeletedAt  *time.Time
}

func (Box) TableName() string { return "boxes" }

// BoxInput is a new box. LocationID and the coordinates are optional; the
// coordinates go together.
type BoxInput struct {
	Name       string   `json:"name"`
	Model      Model    `json:"model"`
	LocationID *string  `json:"location_id"`
	Address    string   `json:"address"`
	Latitude   *float64 `json:"latitude"`
	Longitude  *float64 `json:"longitude"`
	Timezone   string   `json:"timezone"`
	Bins       int      `json:"bins"`
}

// BoxPatch changes a box. Absent fields are unchanged; so are null ones,
// except location_id and the coordinates, which null clears.
type BoxPatch struct {
	Name       *string           `json:"name"`
	Model      *Model            `json:"model"`
	LocationID Nullable[string]  `json:"location_id,omitzero"`
	Address    *string           `json:"address"`
	Latitude   Nullable[float64] `json:"latitude,omitzero"`
	Longitude  Nullable[float64] `json:"longitude,omitzero"`
	Timezone   *string           `json:"timezone"`
	Bins       *int              `json:"bins"`
}

// Bin is one bin of a box as the box's page shows it: the key it holds now
// and the key whose home it is. Occupied is true with Key nil when the key
// in the bin belongs to a location the caller does not see.
type Bin struct {
	Bin      int      `json:"bin"`
	Occupied bool     `json:"occupied"`
	Key      *BinKey  `json:"key"`
	HomeOf   *KeyName `json:"home_of"`
}

// BinKey names the key a bin holds.
type BinKey struct {
	ID        uuid.UUID `json:"id"`
	Name      string    `json:"name"`
	FobSerial string    `json:"fob_serial"`
}

// KeyName names the key whose home a bin is.
type KeyName struct {
	ID   uuid.UUID `json:"id"`
	Name string    `json:"name"`
}

// validZone reports whether name is an IANA time zone. "" and "Local"
// load, but mean the server's zone, not the box's.
func validZone(name string) bool {
	if name == "" || name == "Local" || len(name) > 64 {
		return false
	}
	_, err := time.LoadLocation(name)
	return err == nil
}

// clean normalises b's fields and records what is wrong with them.
func (b *Box) clean(v *tenants.Validator) {
	var ok bool
	b.Name, ok = cleanName(b.Name)
	v.Check(ok, "name", "is required: 1 to 200 characters, no control characters")
	v.Check(b.Model.Valid(), "model", "must be MS3, MS4 or MS5")
	b.Address, ok = cleanAddress(b.Address)
	v.Check(ok, "address", "must be at most 500 characters, without control characters other than line breaks")
	if b.Latitude != nil {
		v.Check(*b.Latitude >= -90 && *b.Latitude <= 90, "latitude", "must be from -90 to 90")
	}
	if b.Longitude != nil {
		v.Check(*b.Longitude >= -180 && *b.Longitude <= 180, "longitude", "must be from -180 to 180")
	}
	v.Check(b.Latitude != nil || b.Longitude == nil, "latitude", "is required with longitude: give both coordinates or neither")
	v.Check(b.Longitude != nil || b.Latitude == nil, "longitude", "is required with latitude: give both coordinates or neither")
	b.Timezone = strings.TrimSpace(b.Timezone)
	v.Check(validZone(b.Timezone), "timezone", "must be an IANA time zone, e.g. Europe/Paris")
	v.Check(b.Bins >= 1 && b.Bins <= maxBins, "bins", fmt.Sprintf("must be from 1 to %d", maxBins))
}

// CreateBox installs a box.
func (s *Service) CreateBox(ctx context.Context, in BoxInput) (Box, error) {
	p, err := admin(ctx)
	if err != nil {
		return Box{}, err
	}
	now := s.now()
	b := Box{TenantID: p.TenantID, ID: newID(), Name: in.Name, Model: in.Model, Address: in.Address,
		Latitude: in.Latitude, Longitude: in.Longitude, Timezone: in.Timezone, Bins: in.Bins, CreatedAt: now, UpdatedAt: now}
	var v tenants.Validator
	b.clean(&v)
	if in.LocationID != nil {
		id, ok := parseRef(*in.LocationID)
		v.Check(ok, "location_id", "must be a location id")
		b.LocationID = &id
	}
	if err := v.Err(); err != nil {
		return Box{}, err
	}
	if b.LocationID != nil {
		// Held until the box is in, so that the location cannot be deleted
		// meanwhile.
		if _, err := loadLocation(ctx, p, *b.LocationID, "SHARE"); err != nil {
			return Box{}, err
		}
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Box{}, err
	}
	if err := tx.Create(&b).Error; err != nil {
		return Box{}, wrap("create box", err)
	}
	return b, audit.Record(ctx, p.Actor(), "box.created", "box:"+b.ID.String(), map[string]string{"name": b.Name, "model": string(b.Model), "bins": fmt.Sprint(b.Bins)})
}

// loadBox reads a live box the caller sees, locked with lock ("" for none).
// A box in a location the caller may not see is answered like an unknown
// one.
func loadBox(ctx context.Context, p tenants.Principal, id uuid.UUID, lock string) (Box, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Box{}, err
	}
	if lock != "" {
		tx = tx.Clauses(clause.Locking{Strength: lock})
	}
	var b Box
	if err := tx.Where("id = ? AND deleted_at IS NULL", id).Take(&b).Error; err != nil {
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return Box{}, tenants.NotFound("box")
		}
		return Box{}, wrap("load box", err)
	}
	if !p.Sees(b.LocationID) {
		return Box{}, tenants.NotFound("box")
	}
	return b, nil
}

// GetBox returns a box the caller sees and what each of its bins holds.
func (s *Service) GetBox(ctx context.Context, id uuid.UUID) (Box, []Bin, error) {
	p, err := staff(ctx)
	if err != nil {
		return Box{}, nil, err
	}
	b, err := loadBox(ctx, p, id, "")
	if err != nil {
		return Box{}, nil, err
	}
	bins, err := binsOf(ctx, p, b)
	return b, bins, err
}

// binKey is a key that is in a box's bin or has its home there.
type binKey struct {
	ID             uuid.UUID
	Name           string
	FobSerial      string
	HomeBoxID      uuid.UUID
	HomeBin        int
	State          string
	BoxID          *uuid.UUID
	Bin            *int
	HomeLocationID *uuid.UUID
}

func binsOf(ctx context.Context, p tenants.Principal, b Box) ([]Bin, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var ks []binKey
	err = tx.Raw(`SELECT k.id, k.name, k.fob_serial, k.home_box_id, k.home_bin, k.state, k.box_id, k.bin, hb.location_id AS home_location_id
		FROM keys k JOIN boxes hb ON hb.tenant_id = k.tenant_id AND hb.id = k.home_box_id
		WHERE k.deleted_at IS NULL AND (k.home_box_id = ? OR (k.box_id = ? AND k.state = 'in_bin'))`, b.ID, b.ID).Scan(&ks).Error
	if err != nil {
		return nil, wrap("load bins", err)
	}
	bins := make([]Bin, b.Bins)
	for i := range bins {
		bins[i].Bin = i + 1
	}
	at := func(n int) *Bin {
		if n < 1 || n > len(bins) {
			return nil // a bin beyond the box's count cannot be: shrinking checks
		}
		return &bins[n-1]
	}
	for _, k := range ks {
		if k.HomeBoxID == b.ID {
			if bin := at(k.HomeBin); bin != nil {
				bin.HomeOf = &KeyName{ID: k.ID, Name: k.Name}
			}
		}
		if k.State == string(InBin) && k.BoxID != nil && *k.BoxID == b.ID && k.Bin != nil {
			if bin := at(*k.Bin); bin != nil {
				bin.Occupied = true
				if p.Sees(k.HomeLocationID) {
					bin.Key = &BinKey{ID: k.ID, Name: k.Name, FobSerial: k.FobSerial}
				}
			}
		}
	}
	return bins, nil
}

// BoxFilter selects boxes.
type BoxFilter struct {
	LocationID uuid.UUID // zero: any
	After      uuid.UUID
	Limit      int
}

// ListBoxes returns a page of the live boxes the caller sees, newest first.
func (s *Service) ListBoxes(ctx context.Context, f BoxFilter) ([]Box, error) {
	p, err := staff(ctx)
	if err != nil {
		return nil, err
	}
	locs, ok := locationScope(p, f.LocationID)
	if !ok {
		return []Box{}, nil
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	q := tx.Where("deleted_at IS NULL").Order("id DESC").Limit(f.Limit)
	if f.After != uuid.Nil {
		q = q.Where("id < ?", f.After)
	}
	if locs != nil {
		q = q.Where("location_id IN ?", locs)
	}
	var bs []Box
	if err := q.Find(&bs).Error; err != nil {
		return nil, wrap("list boxes", err)
	}
	return bs, nil
}

// locationScope turns the caller's limit and a location filter into the
// locations a list may show: nil for all, or a list; false when the two
// exclude each other (the list is empty).
func locationScope(p tenants.Principal, filter uuid.UUID) ([]uuid.UUID, bool) {
	switch {
	case filter != uuid.Nil && !seesLocation(p, filter):
		return nil, false
	case filter != uuid.Nil:
		return []uuid.UUID{filter}, true
	case p.Limited():
		return p.Locations, true
	}
	return nil, true
}

// UpdateBox changes a box. Its bins cannot shrink below a bin that holds a
// key or is a key's home.
func (s *Service) UpdateBox(ctx context.Context, id uuid.UUID, in BoxPatch) (Box, error) {
	p, err := admin(ctx)
	if err != nil {
		return Box{}, err
	}
	b, err := loadBox(ctx, p, id, "UPDATE")
	if err != nil {
		return Box{}, err
	}
	was := b
	if in.Name != nil {
		b.Name = *in.Name
	}
	if in.Model != nil {
		b.Model = *in.Model
	}
	if in.Address != nil {
		b.Address = *in.Address
	}
	if in.Latitude.Set {
		b.Latitude = in.Latitude.Value
	}
	if in.Longitude.Set {
		b.Longitude = in.Longitude.Value
	}
	if in.Timezone != nil {
		b.Timezone = *in.Timezone
	}
	if in.Bins != nil {
		b.Bins = *in.Bins
	}
	var v tenants.Validator
	b.clean(&v)
	if in.LocationID.Set {
		b.LocationID = nil
		if in.LocationID.Value != nil {
			id, ok := parseRef(*in.LocationID.Value)
			v.Check(ok, "location_id", "must be a location id, or null for none")
			b.LocationID = &id
		}
	}
	if err := v.Err(); err != nil {
		return Box{}, err
	}
	if b.LocationID != nil && (was.LocationID == nil || *was.LocationID != *b.LocationID) {
		if _, err := loadLocation(ctx, p, *b.LocationID, "SHARE"); err != nil {
			return Box{}, err
		}
	}
	if b.Bins < was.Bins {
		if err := binsFreeFrom(ctx, b, b.Bins+1); err != nil {
			return Box{}, err
		}
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Box{}, err
	}
	b.UpdatedAt = s.now()
	err = tx.Model(&b).Select("location_id", "name", "model", "address", "latitude", "longitude", "timezone", "bins", "updated_at").Updates(&b).Error
	if err != nil {
		return Box{}, wrap("update box", err)
	}
	if b.Name != was.Name || b.Address != was.Address || b.Timezone != was.Timezone {
		// The reminders waiting for the keys picked up here name the box
		// and were timed in its zone (a zone set right after bookings
		// were made).
		var keys []uuid.UUID
		if err := tx.Model(&Key{}).Where("deleted_at IS NULL AND ((state = 'in_bin' AND box_id = ?) OR (state <> 'in_bin' AND home_box_id = ?))", b.ID, b.ID).
			Pluck("id", &keys).Error; err != nil {
			return Box{}, wrap("keys of the box", err)
		}
		if err := s.access.KeysMoved(ctx, keys); err != nil {
			return Box{}, wrap("follow reminders", err)
		}
	}
	return b, audit.Record(ctx, p.Actor(), "box.updated", "box:"+b.ID.String(), boxChanges(was, b))
}

// binsFreeFrom refuses when a bin numbered from or above holds a key or is
// a key's home, naming the highest such bin; the box row is locked, so no
// key can move in meanwhile.
func binsFreeFrom(ctx context.Context, b Box, from int) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	var ks []Key
	err = tx.Where("deleted_at IS NULL AND ((home_box_id = ? AND home_bin >= ?) OR (box_id = ? AND bin >= ? AND state = 'in_bin'))", b.ID, from, b.ID, from).
		Find(&ks).Error
	if err != nil {
		return wrap("check bins", err)
	}
	var worst error
	top := 0
	for _, k := range ks {
		if k.HomeBoxID == b.ID && k.HomeBin >= from && k.HomeBin > top {
			top = k.HomeBin
			worst = tenants.Errorf(tenants.EConflict, "the box cannot have fewer than %d bins: bin %d is the home of key %q (%s); move that key first", top, top, k.Name, k.ID)
		}
		if k.BoxID != nil && *k.BoxID == b.ID && k.Bin != nil && *k.Bin > top {
			top = *k.Bin
			worst = tenants.Errorf(tenants.EConflict, "the box cannot have fewer than %d bins: bin %d holds key %q (%s); take it out first", top, top, k.Name, k.ID)
		}
	}
	return worst
}

func boxChanges(was, is Box) map[string]string {
	d := map[string]string{}
	if was.Name != is.Name {
		d["name"] = is.Name
	}
	if was.Model != is.Model {
		d["model"] = string(is.Model)
	}
	if was.Bins != is.Bins {
		d["bins"] = fmt.Sprint(is.Bins)
	}
	if was.Timezone != is.Timezone {
		d["timezone"] = is.Timezone
	}
	if ref(was.LocationID) != ref(is.LocationID) {
		d["location_id"] = ref(is.LocationID)
	}
	if was.Address != is.Address || !sameFloat(was.Latitude, is.Latitude) || !sameFloat(was.Longitude, is.Longitude) {
		d["address"] = "changed"
	}
	return d
}

func ref(id *uuid.UUID) string {
	if id == nil {
		return ""
	}
	return id.String()
}

func sameFloat(a, b *float64) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

// DeleteBox archives a box. It is refused while a live key has its home
// there or sits in one of its bins: those keys would point at a box that
// no longer shows anywhere.
func (s *Service) DeleteBox(ctx context.Context, id uuid.UUID) error {
	p, err := admin(ctx)
	if err != nil {
		return err
	}
	b, err := loadBox(ctx, p, id, "UPDATE")
	if err != nil {
		return err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	var homed int64
	if err := tx.Model(&Key{}).Where("deleted_at IS NULL AND home_box_id = ?", b.ID).Count(&homed).Error; err != nil {
		return wrap("count box keys", err)
	}
	if homed > 0 {
		return tenants.Errorf(tenants.EConflict, "%d key(s) have their home in this box; move or delete them first", homed)
	}
	var visiting Key
	err = tx.Where("deleted_at IS NULL AND box_id = ? AND state = 'in_bin'", b.ID).Take(&visiting).Error
	switch {
	case err == nil:
		return tenants.Errorf(tenants.EConflict, "bin %d holds key %q (%s) of another box; take it out first", *visiting.Bin, visiting.Name, visiting.ID)
	case !errors.Is(err, gorm.ErrRecordNotFound):
		return wrap("check box bins", err)
	}
	now := s.now()
	if err := tx.Model(&b).Updates(map[string]any{"deleted_at": now, "updated_at": now}).Error; err != nil {
		return wrap("archive box", err)
	}
	return audit.Record(ctx, p.Actor(), "box.deleted", "box:"+b.ID.String(), map[string]string{"name": b.Name})
}

// BoxName returns the name of a box of ctx's tenant for the texts of
// alerts ("" when it cannot be read: an alert is still worth sending).
func BoxName(ctx context.Context, boxID uuid.UUID) string {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return ""
	}
	var name string
	tx.Raw(`SELECT name FROM boxes WHERE id = ?`, boxID).Scan(&name)
	return name
}
