package boxsync_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/keyrelay/keyrelay/migrations/dbtest"
)

var testDB *dbtest.DB

func TestMain(m *testing.M) { dbtest.Main(m, "boxsync", &testDB) }

// The journal's statement-level box check (migration 00025) keeps what the
// foreign key it replaced guaranteed: entries name an existing box of their
// tenant, and a box with a journal is not deleted.
func TestJournalBoxCheck(t *testing.T) {
	ctx := context.Background()
	own, err := pgx.Connect(ctx, testDB.OwnerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close(ctx)
	const t1, t2 = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"
	const used, spare, other = "00000000-0000-0000-0000-0000000000b0", "00000000-0000-0000-0000-0000000000b1", "00000000-0000-0000-0000-0000000000b2"
	for _, q := range []string{
		`INSERT INTO tenants (tenant_id, name) VALUES ('` + t1 + `', 'one'), ('` + t2 + `', 'two')`,
		`INSERT INTO boxes (tenant_id, id, name, model, timezone, bins) VALUES ('` + t1 + `', '` + used + `', 'b', 'MS5', 'UTC', 12),
			('` + t1 + `', '` + spare + `', 'b', 'MS5', 'UTC', 12), ('` + t2 + `', '` + other + `', 'b', 'MS5', 'UTC', 12)`,
	} {
		if _, err := own.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	app, err := pgx.Connect(ctx, testDB.AppURL)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	insert := func(box string) error {
		tx, err := app.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, `SELECT set_config('app.tenant_id', $1, true)`, t1); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO box_journal (tenant_id, box_id, received_at, seq, hash, kind, bin, box_time)
			SELECT $1, $2, now(), g, sha256(g::text::bytea), 'dropoff', 1, now() FROM generate_series(1, 3) g`, t1, box); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}
	t.Run("OKExistingBox", func(t *testing.T) {
		if err := insert(used); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ErrUnknownBox", func(t *testing.T) {
		if err := insert("00000000-0000-0000-0000-0000000000ff"); err == nil {
			t.Fatal("entries for a box that does not exist were stored")
		}
	})
	t.Run("ErrOtherTenantsBox", func(t *testing.T) {
		if err := insert(other); err == nil {
			t.Fatal("entries for another tenant's box were stored")
		}
	})
	t.Run("ErrDeleteBoxWithJournal", func(t *testing.T) {
		if _, err := own.Exec(ctx, `DELETE FROM boxes WHERE id = $1`, used); err == nil {
			t.Fatal("a box with a journal was deleted")
		}
		if _, err := own.Exec(ctx, `DELETE FROM boxes WHERE id = $1`, spare); err != nil {
			t.Fatalf("a box without a journal: %v", err)
		}
	})
}
