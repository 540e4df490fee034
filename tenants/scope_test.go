package tenants_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/keyrelay/keyrelay/migrations/dbtest"
	"github.com/keyrelay/keyrelay/tenants"
)

// The package's tests share one migrated database; every test makes its own
// tenants, so the other tenants' rows present in the database only make the
// isolation checks stronger.
var (
	testDB *dbtest.DB
	owner  *sql.DB // the owner: superuser locally, so it bypasses RLS (fixtures, checks)
)

func TestMain(m *testing.M) {
	var err error
	testDB, err = dbtest.Create("tenants")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tenants tests:", err)
		os.Exit(1)
	}
	owner, err = sql.Open("pgx", testDB.OwnerURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tenants tests:", err)
		testDB.Drop()
		os.Exit(1)
	}
	code := m.Run()
	owner.Close()
	if err := testDB.Drop(); err != nil {
		fmt.Fprintln(os.Stderr, "tenants tests: drop database:", err)
	}
	os.Exit(code)
}

// user is the part of the users table these tests read.
type user struct {
	TenantID uuid.UUID
	ID       uuid.UUID
	Name     string
	Email    string
	Role     string
}

func (user) TableName() string { return "users" }

type tenant struct {
	ID    uuid.UUID
	Users []uuid.UUID // sorted
}

// newTenant inserts, as the owner, a tenant with n users.
func newTenant(t *testing.T, n int) tenant {
	t.Helper()
	tn := tenant{ID: uuid.New()}
	if _, err := owner.Exec("INSERT INTO tenants (tenant_id, name) VALUES ($1, $2)", tn.ID, "tenant "+tn.ID.String()[:8]); err != nil {
		t.Fatalf("insert tenant: %v", err)
	}
	for i := range n {
		id := uuid.New()
		if _, err := owner.Exec("INSERT INTO users (tenant_id, id, name, email, role) VALUES ($1, $2, $3, $4, $5)",
			tn.ID, id, fmt.Sprintf("User %d", i), fmt.Sprintf("user%d-%s@example.com", i, id.String()[:8]), "staff"); err != nil {
			t.Fatalf("insert user: %v", err)
		}
		tn.Users = append(tn.Users, id)
	}
	slices.SortFunc(tn.Users, func(a, b uuid.UUID) int { return compareUUID(a, b) })
	return tn
}

func compareUUID(a, b uuid.UUID) int {
	for i := range a {
		if a[i] != b[i] {
			return int(a[i]) - int(b[i])
		}
	}
	return 0
}

// openApp connects gorm as the application role, like app.NewApp does.
func openApp(t *testing.T, maxConns int) (*gorm.DB, *tenants.Scope) {
	t.Helper()
	db, err := gorm.Open(postgres.Open(testDB.AppURL), &gorm.Config{
		Logger:                 logger.Discard,
		SkipDefaultTransaction: true,
	})
	if err != nil {
		t.Fatalf("open app pool: %v", err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatal(err)
	}
	sqlDB.SetMaxOpenConns(maxConns)
	sqlDB.SetMaxIdleConns(maxConns)
	t.Cleanup(func() { sqlDB.Close() })
	return db, tenants.NewScope(db)
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustTx(t *testing.T, ctx context.Context) *gorm.DB {
	t.Helper()
	tx, err := tenants.Tx(ctx)
	if err != nil {
		t.Fatalf("Tx: %v", err)
	}
	return tx
}

// wantCode fails unless err carries the SQLSTATE code.
func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("got error %v, want SQLSTATE %s", err, code)
	}
	if pgErr.Code != code {
		t.Fatalf("got SQLSTATE %s (%s), want %s", pgErr.Code, pgErr.Message, code)
	}
}

// userIDs lists the user ids a query returns, with their tenants checked.
func userIDs(t *testing.T, tx *gorm.DB, want uuid.UUID) []uuid.UUID {
	t.Helper()
	var us []user
	if err := tx.Raw("SELECT * FROM users").Scan(&us).Error; err != nil {
		t.Fatalf("select users: %v", err)
	}
	ids := make([]uuid.UUID, 0, len(us))
	for _, u := range us {
		if u.TenantID != want {
			t.Errorf("saw user %s of tenant %s from tenant %s", u.ID, u.TenantID, want)
		}
		ids = append(ids, u.ID)
	}
	slices.SortFunc(ids, compareUUID)
	return ids
}

// ownerCount counts rows as the owner, bypassing RLS.
func ownerCount(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	if err := owner.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func insertUser(tx *gorm.DB, tenantID, id uuid.UUID) error {
	return tx.Exec("INSERT INTO users (tenant_id, id, name, email, role) VALUES (?, ?, 'New', ?, 'staff')",
		tenantID, id, "new-"+id.String()[:8]+"@example.com").Error
}

// setting reads app.tenant_id as the next plain query on db sees it, with
// the backend's pid so a test can tell that the connection was reused.
func setting(t *testing.T, ctx context.Context, db *gorm.DB) (string, int) {
	t.Helper()
	var row struct {
		Setting string
		Pid     int
	}
	if err := db.WithContext(ctx).Raw("SELECT coalesce(current_setting('app.tenant_id', true), '') AS setting, pg_backend_pid() AS pid").Scan(&row).Error; err != nil {
		t.Fatalf("read setting: %v", err)
	}
	return row.Setting, row.Pid
}

func TestScopeSelect(t *testing.T) {
	_, scope := openApp(t, 4)
	ctx := testCtx(t)
	a, b := newTenant(t, 3), newTenant(t, 2)

	t.Run("OKNoFilterSeesOwnTenantOnly", func(t *testing.T) {
		for _, tn := range []tenant{a, b} {
			err := scope.Do(ctx, tn.ID, func(ctx context.Context) error {
				tx := mustTx(t, ctx)
				if got := userIDs(t, tx, tn.ID); !slices.Equal(got, tn.Users) {
					t.Errorf("tenant %s: SELECT * FROM users = %v, want %v", tn.ID, got, tn.Users)
				}
				// The same through a gorm model query with no condition.
				var us []user
				if err := tx.Find(&us).Error; err != nil {
					return err
				}
				if len(us) != len(tn.Users) {
					t.Errorf("tenant %s: Find = %d users, want %d", tn.ID, len(us), len(tn.Users))
				}
				var ts []uuid.UUID
				if err := tx.Raw("SELECT tenant_id FROM tenants").Scan(&ts).Error; err != nil {
					return err
				}
				if !slices.Equal(ts, []uuid.UUID{tn.ID}) {
					t.Errorf("tenant %s: SELECT FROM tenants = %v", tn.ID, ts)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("ErrOtherTenantIDNotFound", func(t *testing.T) {
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			var n int64
			err := mustTx(t, ctx).Model(&user{}).Where("tenant_id = ? AND id = ?", b.ID, b.Users[0]).Count(&n).Error
			if n != 0 {
				t.Errorf("A sees %d of B's users by id", n)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("OKTenantOf", func(t *testing.T) {
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			if got, ok := tenants.TenantOf(ctx); !ok || got != a.ID {
				t.Errorf("TenantOf = %s, %v; want %s", got, ok, a.ID)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestScopeWrite(t *testing.T) {
	_, scope := openApp(t, 4)
	ctx := testCtx(t)
	a, b := newTenant(t, 2), newTenant(t, 2)
	bUsers := func() int { return ownerCount(t, "SELECT count(*) FROM users WHERE tenant_id = $1", b.ID) }

	t.Run("ErrInsertOtherTenant", func(t *testing.T) {
		id := uuid.New()
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error { return insertUser(mustTx(t, ctx), b.ID, id) })
		wantCode(t, err, "42501")
		// Through a gorm model too.
		err = scope.Do(ctx, a.ID, func(ctx context.Context) error {
			return mustTx(t, ctx).Create(&user{TenantID: b.ID, ID: id, Name: "X", Email: "x-" + id.String()[:8] + "@example.com", Role: "staff"}).Error
		})
		wantCode(t, err, "42501")
		if n := ownerCount(t, "SELECT count(*) FROM users WHERE id = $1", id); n != 0 {
			t.Errorf("%d rows written", n)
		}
	})

	t.Run("ErrInsertOtherTenantRow", func(t *testing.T) {
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			return mustTx(t, ctx).Exec("INSERT INTO tenants (tenant_id, name) VALUES (?, 'intruder')", uuid.New()).Error
		})
		wantCode(t, err, "42501")
	})

	t.Run("ErrMoveRowToOtherTenant", func(t *testing.T) {
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			return mustTx(t, ctx).Exec("UPDATE users SET tenant_id = ? WHERE id = ?", b.ID, a.Users[0]).Error
		})
		wantCode(t, err, "42501")
		if n := ownerCount(t, "SELECT count(*) FROM users WHERE tenant_id = $1 AND id = $2", a.ID, a.Users[0]); n != 1 {
			t.Errorf("A's user moved: %d left in A", n)
		}
	})

	t.Run("OKUpdateOtherTenantAffectsNothing", func(t *testing.T) {
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			tx := mustTx(t, ctx)
			res := tx.Exec("UPDATE users SET name = 'Hijacked' WHERE tenant_id = ?", b.ID)
			if res.Error != nil {
				return res.Error
			}
			if res.RowsAffected != 0 {
				t.Errorf("UPDATE of B's users from A affected %d rows", res.RowsAffected)
			}
			// With no filter at all only A's rows change.
			res = tx.Exec("UPDATE users SET updated_at = now()")
			if res.Error != nil {
				return res.Error
			}
			if res.RowsAffected != int64(len(a.Users)) {
				t.Errorf("unfiltered UPDATE from A affected %d rows, want %d", res.RowsAffected, len(a.Users))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n := ownerCount(t, "SELECT count(*) FROM users WHERE tenant_id = $1 AND name = 'Hijacked'", b.ID); n != 0 {
			t.Errorf("%d of B's users renamed", n)
		}
	})

	t.Run("OKDeleteOtherTenantAffectsNothing", func(t *testing.T) {
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			tx := mustTx(t, ctx)
			for _, q := range []string{"DELETE FROM users WHERE tenant_id = ?", "DELETE FROM tenants WHERE tenant_id = ?"} {
				res := tx.Exec(q, b.ID)
				if res.Error != nil {
					return res.Error
				}
				if res.RowsAffected != 0 {
					t.Errorf("%s from A affected %d rows", q, res.RowsAffected)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n := bUsers(); n != len(b.Users) {
			t.Errorf("B has %d users, want %d", n, len(b.Users))
		}
	})
}

func TestNoSetting(t *testing.T) {
	db, scope := openApp(t, 2)
	ctx := testCtx(t)
	a := newTenant(t, 2)

	t.Run("OKSelectReturnsNoRows", func(t *testing.T) {
		for _, table := range []string{"users", "tenants", "sessions", "outbox", "audit_events"} {
			var n int
			if err := db.WithContext(ctx).Raw("SELECT count(*) FROM " + table).Scan(&n).Error; err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Errorf("%s: %d rows visible with no tenant set", table, n)
			}
		}
		if ownerCount(t, "SELECT count(*) FROM users") == 0 {
			t.Fatal("no fixture rows: the check above proves nothing")
		}
	})

	t.Run("ErrInsertRefused", func(t *testing.T) {
		wantCode(t, insertUser(db.WithContext(ctx), a.ID, uuid.New()), "42501")
	})

	t.Run("OKEmptySettingReturnsNoRows", func(t *testing.T) {
		err := db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			if err := tx.Exec("SELECT set_config('app.tenant_id', '', true)").Error; err != nil {
				return err
			}
			var n int
			if err := tx.Raw("SELECT count(*) FROM users").Scan(&n).Error; err != nil {
				return err
			}
			if n != 0 {
				t.Errorf("%d users visible with an empty setting", n)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ErrEmptySettingInsertRefused", func(t *testing.T) {
		err := db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
			if err := tx.Exec("SELECT set_config('app.tenant_id', '', true)").Error; err != nil {
				return err
			}
			return insertUser(tx, a.ID, uuid.New())
		})
		wantCode(t, err, "42501")
	})

	t.Run("ErrNilTenant", func(t *testing.T) {
		called := false
		err := scope.Do(ctx, uuid.Nil, func(context.Context) error { called = true; return nil })
		if err == nil || called {
			t.Fatalf("Do(uuid.Nil) = %v, fn called %v; want an error and no call", err, called)
		}
	})

	t.Run("ErrTxOutsideScope", func(t *testing.T) {
		if _, err := tenants.Tx(ctx); err == nil {
			t.Fatal("Tx outside a scope returned no error")
		}
		if _, ok := tenants.TenantOf(ctx); ok {
			t.Fatal("TenantOf outside a scope reported a tenant")
		}
	})
}

func TestPoolOfOne(t *testing.T) {
	db, scope := openApp(t, 1)
	ctx := testCtx(t)
	a, b := newTenant(t, 3), newTenant(t, 2)
	_, pid := setting(t, ctx, db)

	// clean checks that the pool's one connection carries no tenant.
	clean := func(t *testing.T) {
		t.Helper()
		s, p := setting(t, ctx, db)
		if s != "" {
			t.Errorf("app.tenant_id = %q outside any transaction", s)
		}
		if p != pid {
			t.Fatalf("backend pid %d, want %d: the pool did not reuse its one connection", p, pid)
		}
		var n int
		if err := db.WithContext(ctx).Raw("SELECT count(*) FROM users").Scan(&n).Error; err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%d users visible outside any transaction", n)
		}
	}
	sees := func(t *testing.T, tn tenant) {
		t.Helper()
		err := scope.Do(ctx, tn.ID, func(ctx context.Context) error {
			tx := mustTx(t, ctx)
			if got := userIDs(t, tx, tn.ID); !slices.Equal(got, tn.Users) {
				t.Errorf("tenant %s sees %v, want %v", tn.ID, got, tn.Users)
			}
			var p int
			if err := tx.Raw("SELECT pg_backend_pid()").Scan(&p).Error; err != nil {
				return err
			}
			if p != pid {
				t.Errorf("backend pid %d, want %d", p, pid)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	t.Run("OKTenantThenTenantThenNone", func(t *testing.T) {
		sees(t, a)
		sees(t, b)
		clean(t)
		sees(t, a)
		clean(t)
	})

	t.Run("OKAfterError", func(t *testing.T) {
		boom := errors.New("boom")
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			if err := insertUser(mustTx(t, ctx), a.ID, uuid.New()); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("Do = %v, want %v", err, boom)
		}
		clean(t)
		sees(t, b)
	})

	t.Run("OKAfterSQLError", func(t *testing.T) {
		// A failed statement aborts the transaction; the rollback must still
		// hand back a clean connection.
		err := scope.Do(ctx, b.ID, func(ctx context.Context) error {
			return insertUser(mustTx(t, ctx), a.ID, uuid.New())
		})
		wantCode(t, err, "42501")
		clean(t)
		sees(t, a)
	})

	t.Run("OKAfterPanic", func(t *testing.T) {
		func() {
			defer func() {
				if p := recover(); p != "boom" {
					t.Errorf("recovered %v, want the panic of fn", p)
				}
			}()
			scope.Do(ctx, b.ID, func(ctx context.Context) error {
				if err := insertUser(mustTx(t, ctx), b.ID, uuid.New()); err != nil {
					return err
				}
				panic("boom")
			})
		}()
		clean(t)
		sees(t, a)
		sees(t, b) // the panicking transaction's user was not committed
	})

	t.Run("CommitOfAbortedTransactionFails", func(t *testing.T) {
		// fn swallows a failed statement: PostgreSQL then answers the
		// COMMIT with ROLLBACK, which must come back as an error, not as
		// a success that wrote nothing.
		id := uuid.New()
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			tx := mustTx(t, ctx)
			if err := insertUser(tx, a.ID, id); err != nil {
				return err
			}
			_ = tx.Exec("SELECT 1/0").Error
			return nil
		})
		if err == nil {
			t.Fatal("Do committed a transaction whose statement failed")
		}
		if n := ownerCount(t, "SELECT count(*) FROM users WHERE id = $1", id); n != 0 {
			t.Errorf("the aborted transaction's user is there (%d)", n)
		}
		clean(t)
		sees(t, b)
	})

	t.Run("OKAfterCancelledContext", func(t *testing.T) {
		// The request is abandoned mid-transaction: the rollback still
		// runs and the one connection comes back without the tenant.
		cctx, cancel := context.WithCancel(ctx)
		err := scope.Do(cctx, a.ID, func(ctx context.Context) error {
			if err := insertUser(mustTx(t, ctx), a.ID, uuid.New()); err != nil {
				return err
			}
			cancel()
			return ctx.Err()
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Do = %v, want context.Canceled", err)
		}
		s, _ := setting(t, ctx, db)
		if s != "" {
			t.Errorf("app.tenant_id = %q after a cancelled transaction", s)
		}
		sees(t, b)
	})
}

func TestConcurrentTenants(t *testing.T) {
	_, scope := openApp(t, 2)
	ctx := testCtx(t)
	a, b := newTenant(t, 3), newTenant(t, 2)

	t.Run("OK", func(t *testing.T) {
		var wg sync.WaitGroup
		for _, tn := range []tenant{a, b, a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 25 {
					err := scope.Do(ctx, tn.ID, func(ctx context.Context) error {
						tx, err := tenants.Tx(ctx)
						if err != nil {
							return err
						}
						var ids []uuid.UUID
						if err := tx.Raw("SELECT id FROM users").Scan(&ids).Error; err != nil {
							return err
						}
						slices.SortFunc(ids, compareUUID)
						if !slices.Equal(ids, tn.Users) {
							return fmt.Errorf("tenant %s sees %v, want %v", tn.ID, ids, tn.Users)
						}
						return nil
					})
					if err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	})
}

func TestNested(t *testing.T) {
	_, scope := openApp(t, 2)
	ctx := testCtx(t)
	a, b := newTenant(t, 1), newTenant(t, 1)

	t.Run("OKSameTenantJoins", func(t *testing.T) {
		id := uuid.New()
		rollback := errors.New("roll back the outer transaction")
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			var outer, inner int64
			if err := mustTx(t, ctx).Raw("SELECT txid_current()").Scan(&outer).Error; err != nil {
				return err
			}
			err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
				tx := mustTx(t, ctx)
				if err := tx.Raw("SELECT txid_current()").Scan(&inner).Error; err != nil {
					return err
				}
				return insertUser(tx, a.ID, id)
			})
			if err != nil {
				return err
			}
			if inner != outer {
				t.Errorf("inner transaction %d, outer %d: the nested Do did not join", inner, outer)
			}
			var n int64
			if err := mustTx(t, ctx).Model(&user{}).Where("id = ?", id).Count(&n).Error; err != nil {
				return err
			}
			if n != 1 {
				t.Errorf("outer transaction sees %d of the inner's rows, want 1", n)
			}
			return rollback
		})
		if !errors.Is(err, rollback) {
			t.Fatalf("Do = %v, want %v", err, rollback)
		}
		// The inner Do returned nil but did not commit on its own.
		if n := ownerCount(t, "SELECT count(*) FROM users WHERE id = $1", id); n != 0 {
			t.Errorf("inner write survived the outer rollback (%d rows)", n)
		}
	})

	t.Run("ErrOtherTenant", func(t *testing.T) {
		var inner error
		called := false
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			inner = scope.Do(ctx, b.ID, func(ctx context.Context) error {
				called = true
				return nil
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if inner == nil || called {
			t.Fatalf("nested Do for another tenant = %v, fn called %v; want an error and no call", inner, called)
		}
	})
}

func TestForeignKey(t *testing.T) {
	_, scope := openApp(t, 2)
	ctx := testCtx(t)
	a, b := newTenant(t, 1), newTenant(t, 1)
	insertSession := func(tx *gorm.DB, tenantID, userID uuid.UUID) error {
		id := uuid.New()
		return tx.Exec("INSERT INTO sessions (tenant_id, id, user_id, token_hash, expires_at) VALUES (?, ?, ?, ?, now() + interval '1 hour')",
			tenantID, id, userID, id[:]).Error
	}

	t.Run("OK", func(t *testing.T) {
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error { return insertSession(mustTx(t, ctx), a.ID, a.Users[0]) })
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ErrReferencesOtherTenantsUser", func(t *testing.T) {
		// The foreign key includes tenant_id, so (A, B's user) matches no row
		// even though integrity checks bypass RLS.
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error { return insertSession(mustTx(t, ctx), a.ID, b.Users[0]) })
		wantCode(t, err, "23503")
	})

	t.Run("ErrSessionInOtherTenant", func(t *testing.T) {
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error { return insertSession(mustTx(t, ctx), b.ID, b.Users[0]) })
		wantCode(t, err, "42501")
		if n := ownerCount(t, "SELECT count(*) FROM sessions WHERE tenant_id = $1", b.ID); n != 0 {
			t.Errorf("%d sessions written in B", n)
		}
	})
}

func TestDo(t *testing.T) {
	_, scope := openApp(t, 2)
	ctx := testCtx(t)
	a := newTenant(t, 1)
	exists := func(id uuid.UUID) bool {
		return ownerCount(t, "SELECT count(*) FROM users WHERE tenant_id = $1 AND id = $2", a.ID, id) == 1
	}

	t.Run("OKCommits", func(t *testing.T) {
		id := uuid.New()
		if err := scope.Do(ctx, a.ID, func(ctx context.Context) error { return insertUser(mustTx(t, ctx), a.ID, id) }); err != nil {
			t.Fatal(err)
		}
		if !exists(id) {
			t.Error("Do returned nil but the row was not committed")
		}
	})

	t.Run("ErrRollsBack", func(t *testing.T) {
		id := uuid.New()
		boom := errors.New("boom")
		err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
			if err := insertUser(mustTx(t, ctx), a.ID, id); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("Do = %v, want %v", err, boom)
		}
		if exists(id) {
			t.Error("fn returned an error but its write was committed")
		}
	})

	t.Run("ErrPanicRollsBack", func(t *testing.T) {
		id := uuid.New()
		func() {
			defer func() {
				if p := recover(); p == nil {
					t.Error("Do swallowed fn's panic")
				}
			}()
			scope.Do(ctx, a.ID, func(ctx context.Context) error {
				if err := insertUser(mustTx(t, ctx), a.ID, id); err != nil {
					return err
				}
				panic("boom")
			})
		}()
		if exists(id) {
			t.Error("fn panicked but its write was committed")
		}
	})

	t.Run("ErrCanceledContext", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		called := false
		err := scope.Do(cctx, a.ID, func(context.Context) error { called = true; return nil })
		if err == nil || called {
			t.Fatalf("Do with a canceled context = %v, fn called %v", err, called)
		}
	})
}

// AfterCommit functions run after a commit, once, and never after a
// rollback; a nested Do hands them to the outer transaction.
func TestAfterCommit(t *testing.T) {
	_, scope := openApp(t, 2)
	ctx := context.Background()
	tenant := uuid.New()
	var ran []string
	err := scope.Do(ctx, tenant, func(ctx context.Context) error {
		tenants.AfterCommit(ctx, func() { ran = append(ran, "outer") })
		return scope.Do(ctx, tenant, func(ctx context.Context) error {
			tenants.AfterCommit(ctx, func() { ran = append(ran, "inner") })
			if len(ran) != 0 {
				t.Error("a function ran before the commit")
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ran, []string{"outer", "inner"}) {
		t.Fatalf("ran %v, want [outer inner] once each", ran)
	}
	ran = nil
	err = scope.Do(ctx, tenant, func(ctx context.Context) error {
		for range 3 {
			tenants.AfterCommitOnce(ctx, "wake", func() { ran = append(ran, "wake") })
		}
		return nil
	})
	if err != nil || !slices.Equal(ran, []string{"wake"}) {
		t.Fatalf("AfterCommitOnce ran %v (%v), want once", ran, err)
	}
	ran = nil
	err = scope.Do(ctx, tenant, func(ctx context.Context) error {
		tenants.AfterCommit(ctx, func() { ran = append(ran, "rolled back") })
		return errors.New("refused")
	})
	if err == nil || len(ran) != 0 {
		t.Fatalf("after a rollback: err %v, ran %v", err, ran)
	}
}

func TestMemo(t *testing.T) {
	_, scope := openApp(t, 1)
	ctx := testCtx(t)
	a := newTenant(t, 1)
	type key struct{}
	loads := 0
	load := func() (int, error) { loads++; return loads, nil }
	err := scope.Do(ctx, a.ID, func(ctx context.Context) error {
		for range 3 {
			if v, _ := tenants.Memo(ctx, key{}, load); v != 1 {
				t.Errorf("memo = %d, want the first load's 1", v)
			}
		}
		tenants.Forget(ctx, key{})
		if v, _ := tenants.Memo(ctx, key{}, load); v != 2 {
			t.Errorf("after Forget: %d, want a new load", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A new transaction starts without the memo; outside any it loads
	// every time.
	scope.Do(ctx, a.ID, func(ctx context.Context) error {
		if v, _ := tenants.Memo(ctx, key{}, load); v != 3 {
			t.Errorf("next transaction: %d, want a new load", v)
		}
		return nil
	})
	tenants.Memo(ctx, key{}, load)
	if v, _ := tenants.Memo(ctx, key{}, load); v != 5 {
		t.Errorf("outside a transaction: %d, want a load per call", v)
	}
	// A failed load is not remembered.
	boom := errors.New("boom")
	scope.Do(ctx, a.ID, func(ctx context.Context) error {
		if _, err := tenants.Memo(ctx, key{}, func() (int, error) { return 0, boom }); !errors.Is(err, boom) {
			t.Errorf("err = %v", err)
		}
		if v, _ := tenants.Memo(ctx, key{}, load); v != 6 {
			t.Errorf("after a failed load: %d, want a new load", v)
		}
		return nil
	})
}
