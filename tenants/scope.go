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
// so a pooled connection cannot carry one tenant into the next request — in
// the same round trip as BEGIN (see Begin).
type Scope struct {
	db *gorm.DB
}

// NewScope wraps the application role's pool.
func NewScope(db *gorm.DB) *Scope { return &Scope{db: db} }

type txKey struct{}

type scopedTx struct {
	tenantID uuid.UUID
	tx       *gorm.DB
	pipe     *connTx      // tx's connection, when Begin opened it (pipeline.go)
	after    *[]func()    // run once the transaction has committed
	once     map[any]bool // keys of AfterCommitOnce already registered
	memo     map[any]any  // Memo's values
}

// Begin opens a transaction for tenantID. The caller must Commit or Rollback
// the returned handle; Do is the usual way in.
//
// Nothing is sent yet: BEGIN and the tenant setting go with the
// transaction's first statement, in one round trip (pipeline.go). Every
// request begins here, and a box's pickup is a handful of statements, so
// the round trip saved is a measurable share of it (deploy/bench).
func (s *Scope) Begin(ctx context.Context, tenantID uuid.UUID) (*gorm.DB, error) {
	if tenantID == uuid.Nil {
		return nil, errors.New("tenants: begin: no tenant")
	}
	pool, err := s.db.DB()
	if err != nil {
		return nil, fmt.Errorf("tenants: begin: %w", err)
	}
	conn, err := pool.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("tenants: begin: %w", err)
	}
	var tx TxPool = &connTx{conn: conn, ctx: ctx, tenantID: tenantID}
	if w, ok := s.db.ConnPool.(TxWrapper); ok {
		tx = w.WrapTx(ctx, tx)
	}
	db := s.db.Session(&gorm.Session{Context: ctx, NewDB: true})
	db.Statement.ConnPool = tx
	return db, nil
}

// TxPool is a transaction as GORM runs statements in it and ends it.
type TxPool interface {
	gorm.ConnPool
	gorm.TxCommitter
}

// TxWrapper is implemented by a pool that wraps each tenant transaction
// (tracing makes it a span). The wrapper should have an Unwrap() TxPool
// method, so QueryRow and ExecLater find the transaction under it.
type TxWrapper interface {
	WrapTx(ctx context.Context, tx TxPool) TxPool
}

// WithTx returns a context in which Tx finds tx, opened for tenantID.
func WithTx(ctx context.Context, tenantID uuid.UUID, tx *gorm.DB) context.Context {
	return context.WithValue(ctx, txKey{}, scopedTx{tenantID: tenantID, tx: tx, pipe: pipeOf(tx), after: &[]func(){}, once: map[any]bool{}, memo: map[any]any{}})
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

// Memo returns load's value, loaded once per transaction of ctx for key:
// for a row that several steps of one request read (the tenant's
// notification settings, read for each message a booking queues). Without
// a transaction in ctx it just loads. A transaction's goroutine only.
func Memo[T any](ctx context.Context, key any, load func() (T, error)) (T, error) {
	st, ok := ctx.Value(txKey{}).(scopedTx)
	if !ok || st.memo == nil {
		return load()
	}
	if v, ok := st.memo[key].(T); ok {
		return v, nil
	}
	v, err := load()
	if err == nil {
		st.memo[key] = v
	}
	return v, err
}

// Forget drops key's memo in ctx's transaction, after a change to what it
// read.
func Forget(ctx context.Context, key any) {
	if st, ok := ctx.Value(txKey{}).(scopedTx); ok && st.memo != nil {
		delete(st.memo, key)
	}
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
	st, err := scopedOf(ctx)
	if err != nil {
		return nil, err
	}
	return st.tx.WithContext(ctx), nil
}

// errNoTx is a programming error: a query outside any tenant.
var errNoTx = errors.New("tenants: no tenant transaction in context")

// scopedOf is ctx's tenant transaction, or errNoTx.
func scopedOf(ctx context.Context) (scopedTx, error) {
	st, ok := ctx.Value(txKey{}).(scopedTx)
	if !ok {
		return scopedTx{}, errNoTx
	}
	return st, nil
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
