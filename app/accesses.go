package main

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/bookings"
)

// keyAccesses is what the inventory asks of bookings: how many live
// accesses a key has, and when one of them ends. Answering the second from
// bookings' own read keeps its rules (role, locations) in one place.
type keyAccesses struct{ *bookings.Service }

func (a keyAccesses) AccessEnd(ctx context.Context, keyID, accessID uuid.UUID) (*time.Time, error) {
	v, err := a.Get(ctx, accessID)
	if err != nil {
		return nil, err
	}
	if v.KeyID != keyID {
		return nil, tenants.NotFound("booking")
	}
	return v.EndsAt, nil
}
