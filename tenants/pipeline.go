package tenants

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
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
	failed error // a check's: the transaction may no longer go on
	done   bool
}

type queuedExec struct {
	sql   string
	args  []any
	check func(scan func(dest ...any) error) error // nil for a write (ExecLater)
}

// owed is what one pipeline pays: BEGIN and the setting, then the queue.
type owed struct {
	begin bool
	items []queuedExec
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

// owe queues on b what the transaction owes; the caller holds t.mu.
func (t *connTx) owe(b *pgx.Batch) owed {
	o := owed{begin: !t.begun, items: t.queued}
	if o.begin {
		b.Queue("BEGIN")
		b.Queue("SELECT set_config('app.tenant_id', $1, true)", t.tenantID.String())
	}
	for _, q := range o.items {
		b.Queue(q.sql, q.args...)
	}
	return o
}

// paid reads the results of the owed statements at the head of br. The
// first error is a queued write's (or BEGIN's), after which PostgreSQL
// skipped the rest of the pipeline, or a check's: the statements after a
// failed check did run, but their results are not read and the
// transaction can only roll back.
func (t *connTx) paid(br pgx.BatchResults, o owed) error {
	t.begun, t.queued = true, nil
	if o.begin {
		for range 2 {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
	}
	for _, q := range o.items {
		if q.check == nil {
			if _, err := br.Exec(); err != nil {
				return err
			}
			continue
		}
		rows, err := br.Query()
		if err == nil {
			err = q.check(func(dest ...any) error { return scanOne(rows, dest) })
		}
		rows.Close() // read to its end even when check did not, so the next result is the next statement's
		if err == nil {
			err = rows.Err()
		}
		if err != nil {
			t.failed = err
			return err
		}
	}
	return nil
}

// scanOne reads rows' first row into dest, as pgx's QueryRow does.
func scanOne(rows pgx.Rows, dest []any) error {
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	err := rows.Scan(dest...)
	rows.Close()
	return err
}

// pipeline sends what is owed and then run's statements (queued on b by
// run's caller) in one round trip; then run reads their results.
func (t *connTx) pipeline(ctx context.Context, b *pgx.Batch, prefix owed, run func(br pgx.BatchResults) error) error {
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
	return t.pay(ctx)
}

// pay is settle for Commit, which has marked the transaction done.
func (t *connTx) pay(ctx context.Context) error {
	if t.failed != nil {
		return t.failed
	}
	if t.begun && len(t.queued) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	return t.pipeline(ctx, b, t.owe(b), nil)
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
		return nil // a failed check has begun it
	}
	if t.failed != nil || t.checking() {
		// A check never travels with the COMMIT: PostgreSQL would have
		// committed by the time its answer is read.
		if err := t.pay(t.ctx); err != nil {
			if t.begun {
				t.rollback()
			}
			return err
		}
	}
	b := &pgx.Batch{}
	o := t.owe(b)
	b.Queue("COMMIT")
	err := t.pipeline(t.ctx, b, o, func(br pgx.BatchResults) error {
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
	st, err := scopedOf(r.ctx)
	if err != nil {
		return err
	}
	t := st.pipe
	if t == nil {
		return st.tx.Statement.ConnPool.QueryRowContext(r.ctx, r.query, r.args...).Scan(dest...)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.usable(); err != nil {
		return err
	}
	b := &pgx.Batch{}
	o := t.owe(b)
	b.Queue(r.query, r.args...)
	return t.pipeline(r.ctx, b, o, func(br pgx.BatchResults) error {
		return br.QueryRow().Scan(dest...)
	})
}

// ExecLater queues a write whose outcome nothing in the request waits for
// (an audit entry): it is sent with the transaction's next statement or
// with its COMMIT, in the same round trip, with pgx's placeholders ($1).
// Its failure fails that statement or the commit, so the transaction never
// commits without it. Outside a transaction Begin opened it runs at once.
func ExecLater(ctx context.Context, query string, args ...any) error {
	st, err := scopedOf(ctx)
	if err != nil {
		return err
	}
	t := st.pipe
	if t == nil {
		_, err := st.tx.Statement.ConnPool.ExecContext(ctx, query, args...)
		return err
	}
	return t.enqueue(queuedExec{sql: query, args: args})
}

// CheckLater queues a one-row read that decides whether the transaction
// may go on: check reads the row with scan (an error that errors.Is
// sql.ErrNoRows when there is none, as pgx's does) and returns an error
// to stop it. The read is sent with the transaction's next statement, in
// the same round trip, and its verdict comes before that statement's
// result: when check fails, that statement and every later one return
// check's error, and the transaction rolls back (Commit too returns the
// error). A COMMIT is never sent with a check: it goes first, in a round
// trip of its own.
//
// For a box's credential, read with the pickup's lookup (firmware/devices).
// The statement sent with the check does run: it must be one whose effects
// a rollback undoes, and whatever the request does outside the database
// before it must be harmless when the check fails, or be preceded by
// Verify.
func CheckLater(ctx context.Context, check func(scan func(dest ...any) error) error, query string, args ...any) error {
	st, err := scopedOf(ctx)
	if err != nil {
		return err
	}
	t := st.pipe
	if t == nil {
		return check(func(dest ...any) error {
			return st.tx.Statement.ConnPool.QueryRowContext(ctx, query, args...).Scan(dest...)
		})
	}
	return t.enqueue(queuedExec{sql: query, args: args, check: check})
}

// usable is why t can take no more statements, or nil; the caller holds
// t.mu.
func (t *connTx) usable() error {
	if t.done {
		return sql.ErrTxDone
	}
	return t.failed
}

// enqueue adds q to what t owes.
func (t *connTx) enqueue(q queuedExec) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.usable(); err != nil {
		return err
	}
	t.queued = append(t.queued, q)
	return nil
}

// checking reports whether a check is queued; the caller holds t.mu.
func (t *connTx) checking() bool {
	return slices.ContainsFunc(t.queued, func(q queuedExec) bool { return q.check != nil })
}

// Verify runs ctx's pending checks (CheckLater) now, in a round trip of
// their own, and returns the first failure; nil at once when none is
// pending. Call it before anything the request does outside the database
// that must not happen for a failed check.
func Verify(ctx context.Context) error {
	st, ok := ctx.Value(txKey{}).(scopedTx)
	if !ok || st.pipe == nil {
		return nil
	}
	t := st.pipe
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.failed != nil {
		return t.failed
	}
	if t.done || !t.checking() {
		return nil
	}
	return t.settle(ctx)
}
