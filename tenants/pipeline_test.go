package tenants_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/keyrelay/keyrelay/tenants"
)

// TestQueryRow: the pgx path sees the tenant's rows only, on the
// transaction's connection, whether it is the first statement (carrying
// BEGIN and the setting) or comes after GORM's.
func TestQueryRow(t *testing.T) {
	_, scope := openApp(t, 2)
	ctx := testCtx(t)
	a, b := newTenant(t, 3), newTenant(t, 2)
	for _, tn := range []tenant{a, b} {
		err := scope.Do(ctx, tn.ID, func(ctx context.Context) error {
			var n int
			var setting string
			if err := tenants.QueryRow(ctx, "SELECT count(*), current_setting('app.tenant_id') FROM users").Scan(&n, &setting); err != nil {
				return err
			}
			if n != len(tn.Users) || setting != tn.ID.String() {
				t.Errorf("first statement: %d users, setting %q; want %d, %s", n, setting, len(tn.Users), tn.ID)
			}
			// The same transaction: GORM's statement sees the same backend,
			// and so does the next QueryRow.
			var gormPid, pgxPid int
			if err := mustTx(t, ctx).Raw("SELECT pg_backend_pid()").Scan(&gormPid).Error; err != nil {
				return err
			}
			if err := tenants.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pgxPid); err != nil {
				return err
			}
			if gormPid != pgxPid {
				t.Errorf("GORM ran on backend %d, QueryRow on %d", gormPid, pgxPid)
			}
			var id uuid.UUID
			err := tenants.QueryRow(ctx, "SELECT id FROM users WHERE id = $1", uuid.New()).Scan(&id)
			if !errors.Is(err, sql.ErrNoRows) {
				t.Errorf("no row: %v, want sql.ErrNoRows", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Another tenant's row by its id: RLS hides it.
	err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
		var name string
		err := tenants.QueryRow(ctx, "SELECT name FROM users WHERE id = $1", b.Users[0]).Scan(&name)
		if !errors.Is(err, sql.ErrNoRows) {
			t.Errorf("tenant a read tenant b's user: %q %v", name, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestExecLater: a queued write commits with the transaction, is visible
// to the transaction's later statements (GORM's and QueryRow's), goes
// with a rollback, and when it fails the commit fails and nothing of the
// transaction is written.
func TestExecLater(t *testing.T) {
	db, scope := openApp(t, 1)
	ctx := testCtx(t)
	a := newTenant(t, 1)
	insert := func(ctx context.Context, id uuid.UUID) error {
		return tenants.ExecLater(ctx, "INSERT INTO users (tenant_id, id, name, email, role) VALUES ($1, $2, 'Later', $3, 'staff')",
			a.ID, id, "later-"+id.String()[:8]+"@example.com")
	}
	count := func(id uuid.UUID) int { return ownerCount(t, "SELECT count(*) FROM users WHERE id = $1", id) }

	t.Run("Commits", func(t *testing.T) {
		id := uuid.New()
		if err := scope.Do(ctx, a.ID, func(ctx context.Context) error { return insert(ctx, id) }); err != nil {
			t.Fatal(err)
		}
		if count(id) != 1 {
			t.Fatal("the queued write did not commit")
		}
	})

	t.Run("SeenByLaterStatements", func(t *testing.T) {
		first, second := uuid.New(), uuid.New()
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			if err := insert(ctx, first); err != nil {
				return err
			}
			var n int64
			if err := mustTx(t, ctx).Raw("SELECT count(*) FROM users WHERE id = ?", first).Scan(&n).Error; err != nil {
				return err
			}
			if n != 1 {
				t.Errorf("GORM's statement after the queued write sees %d rows", n)
			}
			if err := insert(ctx, second); err != nil {
				return err
			}
			var m int
			if err := tenants.QueryRow(ctx, "SELECT count(*) FROM users WHERE id = ANY($1)", []uuid.UUID{first, second}).Scan(&m); err != nil {
				return err
			}
			if m != 2 {
				t.Errorf("QueryRow after the queued writes sees %d rows", m)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("RolledBack", func(t *testing.T) {
		id := uuid.New()
		boom := errors.New("boom")
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			if err := insert(ctx, id); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) || count(id) != 0 {
			t.Fatalf("Do: %v; %d rows", err, count(id))
		}
	})

	t.Run("FailedWriteFailsCommit", func(t *testing.T) {
		written, dup := uuid.New(), a.Users[0]
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			if err := insertUser(mustTx(t, ctx), a.ID, written); err != nil {
				return err
			}
			return insert(ctx, dup) // a primary key that exists
		})
		wantCode(t, err, "23505")
		if count(written) != 0 {
			t.Error("the transaction committed without its queued write")
		}
		// The pool's one connection is back, clean, outside any transaction.
		if s, _ := setting(t, ctx, db); s != "" {
			t.Errorf("app.tenant_id = %q after the failed commit", s)
		}
		if err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			var n int
			return tenants.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&n)
		}); err != nil {
			t.Fatalf("the next transaction: %v", err)
		}
	})

	t.Run("FailedWriteFailsNextStatement", func(t *testing.T) {
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			if err := insert(ctx, a.Users[0]); err != nil {
				return err
			}
			var n int
			return tenants.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&n)
		})
		wantCode(t, err, "23505")
	})

	t.Run("OtherTenantRefused", func(t *testing.T) {
		other := newTenant(t, 0)
		err := scope.Do(ctx, other.ID, func(ctx context.Context) error {
			return tenants.ExecLater(ctx, "INSERT INTO users (tenant_id, id, name, email, role) VALUES ($1, $2, 'X', 'x@example.com', 'staff')", a.ID, uuid.New())
		})
		wantCode(t, err, "42501") // RLS's WITH CHECK
	})
}

// TestCheckLater: a check travels with the next statement and decides
// before its result is used; a failed one stops the transaction for good
// (later statements, queued writes and the commit all fail with its error,
// and nothing of the transaction is written); Verify runs pending checks
// on demand; a check is never sent with the COMMIT it would have to stop.
func TestCheckLater(t *testing.T) {
	db, scope := openApp(t, 1)
	ctx := testCtx(t)
	a := newTenant(t, 2)
	errRevoked := errors.New("revoked")
	// userIs checks that the tenant has user id, as a box's credential
	// check does for its credential.
	userIs := func(ctx context.Context, id uuid.UUID) error {
		return tenants.CheckLater(ctx, func(scan func(...any) error) error {
			var name string
			if err := scan(&name); errors.Is(err, sql.ErrNoRows) {
				return errRevoked
			} else if err != nil {
				return err
			}
			return nil
		}, "SELECT name FROM users WHERE id = $1", id)
	}
	write := func(ctx context.Context, id uuid.UUID) error {
		return tenants.ExecLater(ctx, "INSERT INTO audit_events (tenant_id, id, actor, action) VALUES ($1, $2, 'test', 'check.later')", a.ID, id)
	}
	written := func(id uuid.UUID) bool {
		return ownerCount(t, "SELECT count(*) FROM audit_events WHERE id = $1", id) == 1
	}
	users := func(ctx context.Context) (int, error) {
		var n int
		err := tenants.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&n)
		return n, err
	}

	t.Run("Passes", func(t *testing.T) {
		id := uuid.New()
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			if err := userIs(ctx, a.Users[0]); err != nil {
				return err
			}
			if n, err := users(ctx); err != nil || n != len(a.Users) {
				t.Errorf("the read after the check: %d %v", n, err)
			}
			return write(ctx, id)
		})
		if err != nil || !written(id) {
			t.Fatalf("Do: %v; written %v", err, written(id))
		}
	})

	t.Run("FailsTheNextStatementAndAllAfter", func(t *testing.T) {
		id := uuid.New()
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			if err := write(ctx, id); err != nil { // queued before the check: goes with it, then rolls back
				return err
			}
			if err := userIs(ctx, uuid.New()); err != nil {
				return err
			}
			if _, err := users(ctx); !errors.Is(err, errRevoked) {
				t.Errorf("the statement sent with a failing check: %v", err)
			}
			if err := write(ctx, uuid.New()); !errors.Is(err, errRevoked) {
				t.Errorf("ExecLater after a failed check: %v", err)
			}
			if err := mustTx(t, ctx).Exec("SELECT 1").Error; !errors.Is(err, errRevoked) {
				t.Errorf("GORM after a failed check: %v", err)
			}
			if err := tenants.Verify(ctx); !errors.Is(err, errRevoked) {
				t.Errorf("Verify after a failed check: %v", err)
			}
			return nil // a handler that ignored it all: the commit still refuses
		})
		if !errors.Is(err, errRevoked) || written(id) {
			t.Fatalf("Do: %v; written %v", err, written(id))
		}
		if s, _ := setting(t, ctx, db); s != "" {
			t.Errorf("app.tenant_id = %q after the failed check", s)
		}
	})

	t.Run("PendingAtCommit", func(t *testing.T) {
		for _, live := range []bool{true, false} {
			id := uuid.New()
			user := uuid.New()
			if live {
				user = a.Users[1]
			}
			err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
				return errors.Join(userIs(ctx, user), write(ctx, id))
			})
			if live != (err == nil) || live != written(id) {
				t.Errorf("live %v: Do %v; written %v", live, err, written(id))
			}
		}
	})

	t.Run("Verify", func(t *testing.T) {
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			if err := userIs(ctx, uuid.New()); err != nil {
				return err
			}
			return tenants.Verify(ctx)
		})
		if !errors.Is(err, errRevoked) {
			t.Fatalf("Verify: %v", err)
		}
	})

	t.Run("CheckThatDoesNotRead", func(t *testing.T) {
		// The next statement's result is its own even when a check
		// returned without reading its row.
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			if err := tenants.CheckLater(ctx, func(func(...any) error) error { return nil }, "SELECT 'check'"); err != nil {
				return err
			}
			var s string
			if err := tenants.QueryRow(ctx, "SELECT 'statement'").Scan(&s); err != nil || s != "statement" {
				t.Errorf("QueryRow after the check: %q %v", s, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// roundTrips counts what the driver sends: each query and each batch is
// one round trip.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	r.n.Add(1)
	return ctx
}
func (r *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	r.n.Add(1)
	return ctx
}
func (r *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (r *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// TestRoundTrips: what a transaction owes travels with what comes next.
// Nothing is sent for a transaction that ran no statement; BEGIN and the
// setting go with the first statement; queued writes with the next
// statement or with COMMIT; a statement through GORM pays what is owed in
// a round trip of its own first.
func TestRoundTrips(t *testing.T) {
	cfg, err := pgx.ParseConfig(testDB.AppURL)
	if err != nil {
		t.Fatal(err)
	}
	trips := &roundTrips{}
	cfg.Tracer = trips
	sqlDB := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { sqlDB.Close() })
	sqlDB.SetMaxOpenConns(1)
	db, err := gorm.Open(postgres.New(postgres.Config{Conn: sqlDB}), &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
	if err != nil {
		t.Fatal(err)
	}
	scope := tenants.NewScope(db)
	ctx := testCtx(t)
	a := newTenant(t, 2)
	audit := func(ctx context.Context) error {
		return tenants.ExecLater(ctx, "INSERT INTO audit_events (tenant_id, id, actor, action) VALUES ($1, $2, 'test', 'round.trip')", a.ID, uuid.New())
	}
	count := func(ctx context.Context) error {
		var n int
		return tenants.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&n)
	}
	pass := func(ctx context.Context) error {
		return tenants.CheckLater(ctx, func(scan func(...any) error) error { var n int; return scan(&n) }, "SELECT count(*) FROM users")
	}
	boom := errors.New("boom")
	for _, tc := range []struct {
		name string
		fn   func(ctx context.Context) error
		want int64
	}{
		{"nothing, committed", func(context.Context) error { return nil }, 0},
		{"nothing, rolled back", func(context.Context) error { return boom }, 0},
		{"a read", count, 2},         // BEGIN+setting+read; COMMIT
		{"a queued write", audit, 1}, // BEGIN+setting+write+COMMIT
		{"a write then a read", func(ctx context.Context) error { return errors.Join(audit(ctx), count(ctx)) }, 2},
		{"a write then GORM", func(ctx context.Context) error {
			if err := audit(ctx); err != nil {
				return err
			}
			var n int64
			return mustTx(t, ctx).Raw("SELECT count(*) FROM users").Scan(&n).Error
		}, 3}, // BEGIN+setting+write; GORM's read; COMMIT
		{"a check then a read", func(ctx context.Context) error { return errors.Join(pass(ctx), count(ctx)) }, 2},        // BEGIN+setting+check+read; COMMIT
		{"a check then a write", func(ctx context.Context) error { return errors.Join(pass(ctx), audit(ctx)) }, 2},       // BEGIN+setting+check+write; COMMIT
		{"a check, verified", func(ctx context.Context) error { return errors.Join(pass(ctx), tenants.Verify(ctx)) }, 2}, // BEGIN+setting+check; COMMIT
		{"nothing to verify", func(ctx context.Context) error { return errors.Join(count(ctx), tenants.Verify(ctx)) }, 2},
	} {
		before := trips.n.Load()
		err := scope.Do(ctx, a.ID, tc.fn)
		if err != nil && !errors.Is(err, boom) {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := trips.n.Load() - before; got != tc.want {
			t.Errorf("%s: %d round trips, want %d", tc.name, got, tc.want)
		}
	}
}

// TestNothingSent: a transaction that ran no statement (TestRoundTrips:
// nothing is sent for it) leaves the pool's connection as it was, and the
// next transaction's first statement begins it properly.
func TestNothingSent(t *testing.T) {
	db, scope := openApp(t, 1)
	ctx := testCtx(t)
	a := newTenant(t, 1)
	_, pid := setting(t, ctx, db)
	for _, fail := range []bool{false, true} {
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			if fail {
				return pgx.ErrTxClosed
			}
			return nil
		})
		if fail != (err != nil) {
			t.Fatalf("Do (fail %v): %v", fail, err)
		}
	}
	if s, p := setting(t, ctx, db); s != "" || p != pid {
		t.Errorf("after empty transactions: setting %q, pid %d (want %d)", s, p, pid)
	}
	ids := []uuid.UUID{}
	if err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
		ids = userIDs(t, mustTx(t, ctx), a.ID)
		return nil
	}); err != nil || !slices.Equal(ids, a.Users) {
		t.Fatalf("then a statement: %v %v", ids, err)
	}
}
