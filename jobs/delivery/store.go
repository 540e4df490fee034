package delivery

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/outbox"
	"github.com/keyrelay/keyrelay/tenants/providers"
)

// Messages is the outbox as delivery sees it.
type Messages interface {
	Claim(ctx context.Context, token string, lease time.Duration, refs []outbox.Ref) ([]outbox.Row, error)
	RecordClaimed(ctx context.Context, token string, outs map[uuid.UUID]outbox.Outcome) error
}

// Routes says which provider serves each channel for ctx's tenant.
type Routes interface {
	Routes(ctx context.Context) (map[string]providers.Route, error)
}

// Store is the database side of one delivery task: two short transactions
// in the tenant's scope, one before the sends and one after. No transaction
// stays open while providers are called, so a slow provider holds no
// connection and no row lock; the claim stands in for the lock.
type Store struct {
	scope  *tenants.Scope
	msgs   Messages
	routes Routes
}

// NewStore returns the store of delivery tasks.
func NewStore(scope *tenants.Scope, msgs Messages, routes Routes) *Store {
	return &Store{scope: scope, msgs: msgs, routes: routes}
}

// Claim takes the messages of refs that this attempt may send (see
// outbox.Claim) and returns them with the tenant's routes.
func (s *Store) Claim(ctx context.Context, tenantID uuid.UUID, token string, lease time.Duration, refs []outbox.Ref) ([]outbox.Row, map[string]providers.Route, error) {
	var rows []outbox.Row
	var routes map[string]providers.Route
	err := s.scope.Do(ctx, tenantID, func(ctx context.Context) error {
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return err
		}
		// The claim's commit does not wait for the disk: it is visible to
		// other workers at once all the same, and only a database crash in
		// the milliseconds before the flush could lose it, after which the
		// message may go out again as after any crash mid-send (with its
		// id, for the provider to drop the duplicate). Waiting would put a
		// flush on every login code's path.
		if err := tx.Exec("SET LOCAL synchronous_commit = off").Error; err != nil {
			return fmt.Errorf("delivery: claim: %w", err)
		}
		if rows, err = s.msgs.Claim(ctx, token, lease, refs); err != nil || len(rows) == 0 {
			return err
		}
		routes, err = s.routes.Routes(ctx)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return rows, routes, nil
}

// Record stores the outcomes of the attempt made under token and drops its
// claims.
func (s *Store) Record(ctx context.Context, tenantID uuid.UUID, token string, outs map[uuid.UUID]outbox.Outcome) error {
	return s.scope.Do(ctx, tenantID, func(ctx context.Context) error {
		return s.msgs.RecordClaimed(ctx, token, outs)
	})
}
