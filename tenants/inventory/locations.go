package inventory

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// Location groups boxes: a branch, a hotel, a car park. Staff users can be
// limited to some locations.
type Location struct {
	TenantID  uuid.UUID `gorm:"primaryKey"`
	ID        uuid.UUID `gorm:"primaryKey"`
	Name      string
	Address   string
	CreatedAt time.Time
	UpdatedAt time.Time
}

func (Location) TableName() string { return "locations" }

// LocationInput is a new location.
type LocationInput struct {
	Name    string `json:"name"`
	Address string `json:"address"`
}

// LocationPatch changes a location; absent or null fields are unchanged.
type LocationPatch struct {
	Name    *string `json:"name"`
	Address *string `json:"address"`
}

// seesLocation reports whether p may see location id.
func seesLocation(p tenants.Principal, id uuid.UUID) bool {
	return !p.Limited() || slices.Contains(p.Locations, id)
}

// CreateLocation adds a location; names are unique within the tenant.
func (s *Service) CreateLocation(ctx context.Context, in LocationInput) (Location, error) {
	p, err := admin(ctx)
	if err != nil {
		return Location{}, err
	}
	var v tenants.Validator
	name, ok := cleanName(in.Name)
	v.Check(ok, "name", "is required: 1 to 200 characters, no control characters")
	address, ok := cleanAddress(in.Address)
	v.Check(ok, "address", "must be at most 500 characters, without control characters other than line breaks")
	if err := v.Err(); err != nil {
		return Location{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Location{}, err
	}
	if err := locationNameFree(tx, name, uuid.Nil); err != nil {
		return Location{}, err
	}
	now := s.now()
	l := Location{TenantID: p.TenantID, ID: newID(), Name: name, Address: address, CreatedAt: now, UpdatedAt: now}
	if err := tx.Create(&l).Error; err != nil {
		if uniqueViolation(err, "locations_tenant_id_name_key") {
			return Location{}, tenants.Errorf(tenants.EConflict, "a location named %q already exists", name)
		}
		return Location{}, wrap("create location", err)
	}
	return l, audit.Record(ctx, p.Actor(), "location.created", "location:"+l.ID.String(), map[string]string{"name": l.Name})
}

func locationNameFree(tx *gorm.DB, name string, self uuid.UUID) error {
	var other Location
	err := tx.Where("name = ? AND id <> ?", name, self).Take(&other).Error
	switch {
	case errors.Is(err, gorm.ErrRecordNotFound):
		return nil
	case err != nil:
		return wrap("check location name", err)
	}
	return tenants.Errorf(tenants.EConflict, "a location named %q already exists (%s)", name, other.ID)
}

// GetLocation returns a location the caller sees.
func (s *Service) GetLocation(ctx context.Context, id uuid.UUID) (Location, error) {
	p, err := staff(ctx)
	if err != nil {
		return Location{}, err
	}
	return loadLocation(ctx, p, id, "")
}

// loadLocation reads a location the caller sees, locked with lock ("" for
// none): one the caller may not see is answered like an unknown one.
func loadLocation(ctx context.Context, p tenants.Principal, id uuid.UUID, lock string) (Location, error) {
	if !seesLocation(p, id) {
		return Location{}, tenants.NotFound("location")
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Location{}, err
	}
	if lock != "" {
		tx = tx.Clauses(clause.Locking{Strength: lock})
	}
	var l Location
	if err := tx.Where("id = ?", id).Take(&l).Error; err != nil {
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return Location{}, tenants.NotFound("location")
		}
		return Location{}, wrap("load location", err)
	}
	return l, nil
}

// ListLocations returns a page of the locations the caller sees, newest
// first, after the cursor.
func (s *Service) ListLocations(ctx context.Context, after uuid.UUID, limit int) ([]Location, error) {
	p, err := staff(ctx)
	if err != nil {
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
	if p.Limited() {
		q = q.Where("id IN ?", p.Locations)
	}
	var ls []Location
	if err := q.Find(&ls).Error; err != nil {
		return nil, wrap("list locations", err)
	}
	return ls, nil
}

// UpdateLocation renames a location or changes its address.
func (s *Service) UpdateLocation(ctx context.Context, id uuid.UUID, in LocationPatch) (Location, error) {
	p, err := admin(ctx)
	if err != nil {
		return Location{}, err
	}
	l, err := loadLocation(ctx, p, id, "UPDATE")
	if err != nil {
		return Location{}, err
	}
	var v tenants.Validator
	details := map[string]string{}
	if in.Name != nil {
		name, ok := cleanName(*in.Name)
		v.Check(ok, "name", "must be 1 to 200 characters, no control characters")
		if name != l.Name {
			details["name"] = name
		}
		l.Name = name
	}
	if in.Address != nil {
		address, ok := cleanAddress(*in.Address)
		v.Check(ok, "address", "must be at most 500 characters, without control characters other than line breaks")
		if address != l.Address {
			details["address"] = "changed"
		}
		l.Address = address
	}
	if err := v.Err(); err != nil {
		return Location{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Location{}, err
	}
	if in.Name != nil {
		if err := locationNameFree(tx, l.Name, l.ID); err != nil {
			return Location{}, err
		}
	}
	l.UpdatedAt = s.now()
	err = tx.Model(&l).Updates(map[string]any{"name": l.Name, "address": l.Address, "updated_at": l.UpdatedAt}).Error
	if err != nil {
		if uniqueViolation(err, "locations_tenant_id_name_key") {
			return Location{}, tenants.Errorf(tenants.EConflict, "a location named %q already exists", l.Name)
		}
		return Location{}, wrap("update location", err)
	}
	return l, audit.Record(ctx, p.Actor(), "location.updated", "location:"+l.ID.String(), details)
}

// DeleteLocation removes a location that no live box is in and no user is
// limited to. The second rule keeps a limit from being lifted by accident:
// a staff user limited to this location alone would otherwise see every
// location. Archived boxes that were there lose their location.
func (s *Service) DeleteLocation(ctx context.Context, id uuid.UUID) error {
	p, err := admin(ctx)
	if err != nil {
		return err
	}
	l, err := loadLocation(ctx, p, id, "UPDATE")
	if err != nil {
		return err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	var boxes []Box
	if err := tx.Where("location_id = ? AND deleted_at IS NULL", l.ID).Order("name").Limit(3).Find(&boxes).Error; err != nil {
		return wrap("check location boxes", err)
	}
	if len(boxes) > 0 {
		var n int64
		if err := tx.Model(&Box{}).Where("location_id = ? AND deleted_at IS NULL", l.ID).Count(&n).Error; err != nil {
			return wrap("count location boxes", err)
		}
		return tenants.Errorf(tenants.EConflict, "%d box(es) are in this location (%s); move or delete them first", n, boxNames(boxes))
	}
	var users int64
	if err := tx.Table("user_locations").Where("location_id = ?", l.ID).Count(&users).Error; err != nil {
		return wrap("check location users", err)
	}
	if users > 0 {
		return tenants.Errorf(tenants.EConflict, "%d user(s) are limited to this location; change their locations first", users)
	}
	if err := tx.Model(&Box{}).Where("location_id = ? AND deleted_at IS NOT NULL", l.ID).Update("location_id", nil).Error; err != nil {
		return wrap("detach archived boxes", err)
	}
	if err := tx.Delete(&l).Error; err != nil {
		return wrap("delete location", err)
	}
	return audit.Record(ctx, p.Actor(), "location.deleted", "location:"+l.ID.String(), map[string]string{"name": l.Name})
}

func boxNames(bs []Box) string {
	s := ""
	for i, b := range bs {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%q", b.Name)
	}
	return s
}
