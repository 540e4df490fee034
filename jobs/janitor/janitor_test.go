package janitor

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/keyrelay/keyrelay/migrations/dbtest"
)

var testDB *dbtest.DB

func TestMain(m *testing.M) { dbtest.Main(m, "janitor", &testDB) }

func owner(t *testing.T, sql string, args ...any) int64 { return testDB.Exec(t, sql, args...) }

// TestSweep runs the janitor as the application role: it deletes what can
// no longer be used, in every tenant, and nothing else.
func TestSweep(t *testing.T) {
	db, err := gorm.Open(postgres.Open(testDB.AppURL), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	for _, tenant := range []uuid.UUID{uuid.New(), uuid.New()} {
		user := uuid.New()
		owner(t, "INSERT INTO tenants (tenant_id, name) VALUES ($1, 't')", tenant)
		owner(t, "INSERT INTO users (tenant_id, id, name, email, role) VALUES ($1, $2, 'u', $3, 'owner')", tenant, user, user.String()+"@example.com")
		for _, s := range []struct {
			expires string
			ended   *string
		}{{"now() - interval '3 days'", nil}, {"now() + interval '1 hour'", nil}} {
			owner(t, "INSERT INTO sessions (tenant_id, id, user_id, token_hash, expires_at) VALUES ($1, $2, $3, $4, "+s.expires+")", tenant, uuid.New(), user, []byte(uuid.NewString()))
		}
		owner(t, "INSERT INTO password_resets (tenant_id, id, user_id, purpose, token_hash, expires_at) VALUES ($1, $2, $3, 'reset', $4, now() - interval '2 days')", tenant, uuid.New(), user, []byte(uuid.NewString()))
	}
	j := New(db, 30*time.Minute, time.Hour, slog.New(slog.NewTextHandler(io.Discard, nil)))
	sessions, resets, err := j.Sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if sessions != 2 || resets != 2 {
		t.Fatalf("swept %d sessions and %d resets, want 2 and 2", sessions, resets)
	}
	if n := owner(t, "SELECT 1 FROM sessions"); n != 2 {
		t.Fatalf("%d live sessions left, want 2", n)
	}
}
