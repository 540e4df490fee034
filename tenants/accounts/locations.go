package accounts

import (
	"context"
	"fmt"
	"slices"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
)

// userLocation is a row of user_locations: the user is limited to the
// boxes of its locations.
type userLocation struct {
	TenantID   uuid.UUID `gorm:"primaryKey"`
	UserID     uuid.UUID `gorm:"primaryKey"`
	LocationID uuid.UUID `gorm:"primaryKey"`
}

func (userLocation) TableName() string { return "user_locations" }

// limitedRole says whether a user of role r can be limited to locations:
// admins and owners run the whole tenant.
func limitedRole(r tenants.Role) bool { return !r.AtLeast(tenants.RoleAdmin) }

// loadLocations fills LocationIDs of each user in one query.
func loadLocations(ctx context.Context, users []User) error {
	if len(users) == 0 {
		return nil
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	ids := make([]uuid.UUID, len(users))
	for i, u := range users {
		ids[i] = u.ID
	}
	var rows []userLocation
	if err := tx.Where("user_id IN ?", ids).Order("location_id").Find(&rows).Error; err != nil {
		return fmt.Errorf("accounts: load user locations: %w", err)
	}
	for i := range users {
		users[i].LocationIDs = []uuid.UUID{}
		for _, r := range rows {
			if r.UserID == users[i].ID {
				users[i].LocationIDs = append(users[i].LocationIDs, r.LocationID)
			}
		}
	}
	return nil
}

// setLocations replaces the locations user is limited to. Every id must be
// one of the tenant's locations: an unknown one is a field error, not a
// silent widening or narrowing of what the user sees.
func setLocations(ctx context.Context, u User, ids []uuid.UUID, v *tenants.Validator) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	ids = slices.Compact(slices.SortedFunc(slices.Values(ids), func(a, b uuid.UUID) int { return slices.Compare(a[:], b[:]) }))
	if len(ids) > 0 && !limitedRole(u.Role) {
		v.Check(false, "location_ids", "only staff and visitors can be limited to locations; admins and owners see every location")
		return nil
	}
	if len(ids) > 0 {
		var n int64
		if err := tx.Table("locations").Where("id IN ?", ids).Count(&n).Error; err != nil {
			return fmt.Errorf("accounts: check locations: %w", err)
		}
		if int(n) != len(ids) {
			v.Check(false, "location_ids", "names a location that does not exist")
			return nil
		}
	}
	if err := tx.Where("user_id = ?", u.ID).Delete(&userLocation{}).Error; err != nil {
		return fmt.Errorf("accounts: clear user locations: %w", err)
	}
	if len(ids) == 0 {
		return nil
	}
	rows := make([]userLocation, len(ids))
	for i, id := range ids {
		rows[i] = userLocation{TenantID: u.TenantID, UserID: u.ID, LocationID: id}
	}
	if err := tx.Create(&rows).Error; err != nil {
		return fmt.Errorf("accounts: set user locations: %w", err)
	}
	return nil
}

// locationsOf returns the locations a signed-in user is limited to.
func locationsOf(ctx context.Context, u User) ([]uuid.UUID, error) {
	if !limitedRole(u.Role) {
		return nil, nil
	}
	us := []User{u}
	if err := loadLocations(ctx, us); err != nil {
		return nil, err
	}
	if len(us[0].LocationIDs) == 0 {
		return nil, nil
	}
	return us[0].LocationIDs, nil
}
