package tenants

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"gorm.io/gorm"
)

// Scope opens tenant-scoped transactions on the application role's pool.
//
// Isolation does not rest on query discipline: every tenant-owned table has a
// FORCEd row-level-security policy comparing tenant_id with the transaction-local
// setting app.tenant_id, and the application role neither owns the tables nor
// has BYPASSRLS. A forgotten WHERE tenant_id = ? therefore returns the current
// tenant's rows only, and with no setting it returns nothing.
//
// The setting is applied with set_config(…, true) — local to the transaction,
// so a pooled connection cannot carry one tenant into the next request — and as
// a bound parameter, never interpolated.
type Scope struct {
	db *gorm.DB
}

// NewScope wraps the application role's pool.
func NewScope(db *gorm.DB) *Scope { return &Scope{db: db} }

type txKey struct{}

type scopedTx struct {
	tenantID uuid.UUID
	tx       *gorm.DB
	after    *[]func()    // run once the transaction has committed
	once     map[any]bool // keys of AfterCommitOnce already registered
}

// Begin opens a transaction for tenantID. The caller must Commit or Rollback
// the returned handle; Do is the usual way in.
func (s *Scope) Begin(ctx context.Context, tenantID uuid.UUID) (*gorm.DB, error) {
	if tenantID == uuid.Nil {
		return nil, errors.New("tenants: begin: no tenant")
	}
	tx := s.db.WithContext(ctx).Begin()
	if tx.Error != nil {
		return nil, fmt.Errorf("tenants: begin: %w", tx.Error)
	}
	if err := tx.Exec("SELECT set_config('app.tenant_id', ?, true)", tenantID.String()).Error; err != nil {
		tx.Rollback()
		return nil, fmt.Errorf("tenants: set tenant: %w", err)
	}
	return tx, nil
}

// WithTx returns a context in which Tx finds tx, opened for tenantID.
func WithTx(ctx context.Context, tenantID uuid.UUID, tx *gorm.DB) context.Context {
	return context.WithValue(ctx, txKey{}, scopedTx{tenantID: tenantID, tx: tx, after: &[]func(){}, once: map[any]bool{}})
}

// AfterCommit runs fn once ctx's transaction has committed, and never if it
// rolls back: for telling others about a change (waking a box that waits
// for commands) only when the change is there to be read. Without a
// transaction in ctx fn runs at once.
func AfterCommit(ctx context.Context, fn func()) {
	st, ok := ctx.Value(txKey{}).(scopedTx)
	if !ok || st.after == nil {
		fn()
		return
	}
	*st.after = append(*st.after, fn)
}

// AfterCommitOnce is AfterCommit for the first call with key in ctx's
// transaction only: one wake-up for a transaction that wrote many rows.
func AfterCommitOnce(ctx context.Context, key any, fn func()) {
	st, ok := ctx.Value(txKey{}).(scopedTx)
	if ok && st.once != nil {
		if st.once[key] {
			return
		}
		st.once[key] = true
	}
	AfterCommit(ctx, fn)
}

// Committed runs the AfterCommit functions of ctx's transaction. Whoever
// commits the transaction calls it (Do, and the HTTP layer's request
// transaction).
func Committed(ctx context.Context) {
	st, ok := ctx.Value(txKey{}).(scopedTx)
	if !ok || st.after == nil {
		return
	}
	fns := *st.after
	*st.after = nil
	for _, fn := range fns {
		fn()
	}
}

// Tx returns the tenant-scoped transaction of ctx. Domain stores call it for
// every query; a missing transaction is a programming error, reported as
// such rather than silently querying outside any tenant.
func Tx(ctx context.Context) (*gorm.DB, error) {
	st, ok := ctx.Value(txKey{}).(scopedTx)
	if !ok {
		return nil, errors.New("tenants: no tenant transaction in context")
	}
	return st.tx.WithContext(ctx), nil
}

// TenantOf returns the tenant of ctx's transaction.
func TenantOf(ctx context.Context) (uuid.UUID, bool) {
	st, ok := ctx.Value(txKey{}).(scopedTx)
	return st.tenantID, ok
}

// Do runs fn in a transaction for tenantID and commits when fn returns nil.
// When ctx already carries a transaction for the same tenant, fn joins it, so
// that a service method called from a request shares the request's
// transaction (the change, its outbox row and its audit entry commit together).
func (s *Scope) Do(ctx context.Context, tenantID uuid.UUID, fn func(ctx context.Context) error) (err error) {
	if st, ok := ctx.Value(txKey{}).(scopedTx); ok {
		if st.tenantID != tenantID {
			return fmt.Errorf("tenants: transaction for %s cannot serve %s", st.tenantID, tenantID)
		}
		return fn(ctx)
	}
	tx, err := s.Begin(ctx, tenantID)
	if err != nil {
		return err
	}
	// Roll back on every way out but a commit: an error, a panic (which
	// still propagates) and runtime.Goexit alike.
	committed := false
	defer func() {
		if !committed {
			tx.Rollback()
		}
	}()
	txCtx := WithTx(ctx, tenantID, tx)
	if err = fn(txCtx); err != nil {
		return err
	}
	if err = tx.Commit().Error; err != nil {
		return fmt.Errorf("tenants: commit: %w", err)
	}
	committed = true
	Committed(txCtx)
	return nil
}
