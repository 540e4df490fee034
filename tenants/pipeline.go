package tenants

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"gorm.io/gorm"
)

// A tenant transaction owes PostgreSQL statements nobody waits for: its
// BEGIN and tenant setting until its first statement, and the writes
// queued with ExecLater until the next statement or the COMMIT. They are
// sent in the same round trip as what comes next, as one pipeline (pgx's
// batch: one write, one Sync). On a box's pickup that is two round trips
// of five; each costs both processes a system call, a wake-up and the
// loopback's work, which on a loaded two-core machine is the largest
// share of a pickup's CPU (deploy/bench).
//
// GORM's statements go through database/sql, which can only send one
// statement at a time: before one, what is owed goes in a round trip of
// its own, so the order of statements is always the order of the calls.

// connTx is a transaction on a connection taken from the pool, ended with
// COMMIT or ROLLBACK and then given back; calls after that fail with
// sql.ErrTxDone or sql.ErrConnDone.
type connTx struct {
	conn     *sql.Conn
	ctx      context.Context // Begin's: a commit after the request was abandoned fails
	tenantID uuid.UUID

	mu     sync.Mutex // one statement at a time, as on any connection
	begun  bool       // BEGIN has been sent (whatever came back)
	queued []queuedExec
	done   bool
}

type queuedExec struct {
	sql  string
	args []any
}

// pipeOf finds the connTx under a transaction's wrappers, or nil (a
// transaction GORM began itself, a replica's).
func pipeOf(db *gorm.DB) *connTx {
	if db == nil || db.Statement == nil {
		return nil
	}
	p := db.Statement.ConnPool
	for {
		switch v := p.(type) {
		case *connTx:
			return v
		case interface{ Unwrap() TxPool }:
			p = v.Unwrap()
		default:
			return nil
		}
	}
}

// pgxConn is the driver connection under database/sql.
func pgxConn(dc any) (*pgx.Conn, error) {
	c, ok := dc.(interface{ Conn() *pgx.Conn })
	if !ok {
		return nil, fmt.Errorf("tenants: driver connection %T is not pgx's", dc)
	}
	return c.Conn(), nil
}

// owe queues on b what the transaction owes, and reports how many
// statements that is; the caller holds t.mu.
func (t *connTx) owe(b *pgx.Batch) int {
	n := 0
	if !t.begun {
		b.Queue("BEGIN")
		b.Queue("SELECT set_config('app.tenant_id', $1, true)", t.tenantID.String())
		n += 2
	}
	for _, q := range t.queued {
		b.Queue(q.sql, q.args...)
	}
	return n + len(t.queued)
}

// paid reads the results of the n owed statements at the head of br; the
// first error is the queued write's (or BEGIN's), and PostgreSQL skipped
// the rest of the pipeline after it.
func (t *connTx) paid(br pgx.BatchResults, n int) error {
	t.begun, t.queued = true, nil
	for range n {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	return nil
}

// pipeline sends what is owed and then run's statements (queued on b by
// run's caller) in one round trip; then run reads their results.
func (t *connTx) pipeline(ctx context.Context, b *pgx.Batch, prefix int, run func(br pgx.BatchResults) error) error {
	return t.conn.Raw(func(dc any) error {
		c, err := pgxConn(dc)
		if err != nil {
			return err
		}
		br := c.SendBatch(ctx, b)
		err = t.paid(br, prefix)
		if err == nil && run != nil {
			err = run(br)
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		return err
	})
}

// settle pays what is owed before a statement that goes through
// database/sql.
func (t *connTx) settle(ctx context.Context) error {
	if t.done {
		return sql.ErrTxDone
	}
	if t.begun && len(t.queued) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	n := t.owe(b)
	return t.pipeline(ctx, b, n, nil)
}

func (t *connTx) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.settle(ctx); err != nil {
		return nil, err
	}
	return t.conn.PrepareContext(ctx, query)
}

func (t *connTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.settle(ctx); err != nil {
		return nil, err
	}
	return t.conn.ExecContext(ctx, query, args...)
}

func (t *connTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.settle(ctx); err != nil {
		return nil, err
	}
	return t.conn.QueryContext(ctx, query, args...)
}

// QueryRowContext cannot return settle's error in a *sql.Row; when it
// fails the connection is given up, so the row reports sql.ErrConnDone and
// the transaction ends with an error.
func (t *connTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.settle(ctx); err != nil {
		t.conn.Close()
	}
	return t.conn.QueryRowContext(ctx, query, args...)
}

// end ends the transaction once, by fn, and gives the connection back to
// the pool.
func (t *connTx) end(fn func() error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return sql.ErrTxDone
	}
	t.done = true
	defer t.conn.Close()
	return fn()
}

// Commit sends what is owed and COMMIT in one round trip. PostgreSQL
// answers a COMMIT of a transaction in which a statement failed with
// ROLLBACK, not an error; that is reported as an error here, as pgx's own
// Tx does, so a request never answers success for a write that was rolled
// back. A transaction that never sent anything has nothing to commit.
func (t *connTx) Commit() error { return t.end(t.commit) }

func (t *connTx) commit() error {
	if !t.begun && len(t.queued) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	n := t.owe(b)
	b.Queue("COMMIT")
	err := t.pipeline(t.ctx, b, n, func(br pgx.BatchResults) error {
		tag, err := br.Exec()
		if err == nil && tag.String() == "ROLLBACK" {
			err = pgx.ErrTxCommitRollback
		}
		return err
	})
	if err != nil {
		// A queued write failed, so PostgreSQL skipped the COMMIT and the
		// transaction is still open: end it, so the connection goes back
		// to the pool clean (else the driver discards it).
		t.rollback()
	}
	return err
}

// Rollback rolls back, even when the request's context is already done, so
// the connection goes back to the pool clean; if it cannot, the driver
// discards the connection (it refuses one with an open transaction).
// Queued writes are dropped; a transaction that never sent anything has
// nothing to roll back.
func (t *connTx) Rollback() error {
	return t.end(func() error {
		t.queued = nil
		if !t.begun {
			return nil
		}
		return t.rollback()
	})
}

func (t *connTx) rollback() error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.ctx), 5*time.Second)
	defer cancel()
	_, err := t.conn.ExecContext(ctx, "ROLLBACK")
	return err
}

// Row is QueryRow's answer, read by Scan.
type Row struct {
	ctx   context.Context
	query string
	args  []any
}

// QueryRow runs a query of one row in ctx's transaction, with pgx's
// placeholders ($1) and types, straight on the driver: what the
// transaction owes goes in the same round trip, and neither GORM nor
// database/sql is on the way. For the statements of hot paths (a box's
// pickup); GORM is the way everywhere else. Scan returns an error that
// errors.Is sql.ErrNoRows when there is no row.
func QueryRow(ctx context.Context, query string, args ...any) Row {
	return Row{ctx: ctx, query: query, args: args}
}

// Scan runs the query and reads its row into dest.
func (r Row) Scan(dest ...any) error {
	st, ok := r.ctx.Value(txKey{}).(scopedTx)
	if !ok {
		return errors.New("tenants: no tenant transaction in context")
	}
	t := st.pipe
	if t == nil {
		return st.tx.Statement.ConnPool.QueryRowContext(r.ctx, r.query, r.args...).Scan(dest...)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return sql.ErrTxDone
	}
	b := &pgx.Batch{}
	n := t.owe(b)
	b.Queue(r.query, r.args...)
	return t.pipeline(r.ctx, b, n, func(br pgx.BatchResults) error {
		return br.QueryRow().Scan(dest...)
	})
}

// ExecLater queues a write whose outcome nothing in the request waits for
// (an audit entry): it is sent with the transaction's next statement or
// with its COMMIT, in the same round trip, with pgx's placeholders ($1).
// Its failure fails that statement or the commit, so the transaction never
// commits without it. Outside a transaction Begin opened it runs at once.
func ExecLater(ctx context.Context, query string, args ...any) error {
	st, ok := ctx.Value(txKey{}).(scopedTx)
	if !ok {
		return errors.New("tenants: no tenant transaction in context")
	}
	t := st.pipe
	if t == nil {
		_, err := st.tx.Statement.ConnPool.ExecContext(ctx, query, args...)
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return sql.ErrTxDone
	}
	t.queued = append(t.queued, queuedExec{sql: query, args: args})
	return nil
}
