package outbox_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/keyrelay/keyrelay/migrations/dbtest"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/outbox"
	"github.com/keyrelay/keyrelay/tenants/secretbox"
)

var testDB *dbtest.DB

func TestMain(m *testing.M) { dbtest.Main(m, "outbox", &testDB) }

type fixture struct {
	scope  *tenants.Scope
	outbox *outbox.Outbox
	tenant uuid.UUID
}

func setup(t *testing.T) *fixture {
	t.Helper()
	db, err := gorm.Open(postgres.Open(testDB.AppURL), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s, err := db.DB(); err == nil {
			s.Close()
		}
	})
	box, _ := secretbox.New(bytes.Repeat([]byte{5}, 32))
	f := &fixture{scope: tenants.NewScope(db), outbox: outbox.New(box), tenant: uuid.Must(uuid.NewV7())}
	testDB.Exec(t, "INSERT INTO tenants (tenant_id, name) VALUES ($1, 'claim test')", f.tenant)
	return f
}

func (f *fixture) do(t *testing.T, fn func(ctx context.Context) error) {
	t.Helper()
	if err := f.scope.Do(context.Background(), f.tenant, fn); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) add(t *testing.T, n int) []outbox.Ref {
	t.Helper()
	var refs []outbox.Ref
	f.do(t, func(ctx context.Context) error {
		for i := 0; i < n; i++ {
			id, err := f.outbox.Add(ctx, outbox.Message{Kind: "login_code", Channel: outbox.SMS, Recipient: "+14155550100", Language: "en", Priority: outbox.Critical, Data: map[string]string{"code": "1"}})
			if err != nil {
				return err
			}
			refs = append(refs, outbox.Ref{ID: id})
		}
		return nil
	})
	return refs
}

func (f *fixture) claim(t *testing.T, token string, lease time.Duration, refs []outbox.Ref) []uuid.UUID {
	t.Helper()
	var ids []uuid.UUID
	f.do(t, func(ctx context.Context) error {
		rows, err := f.outbox.Claim(ctx, token, lease, refs)
		for _, r := range rows {
			if r.Data["code"] != "1" {
				t.Errorf("claimed row without its data: %+v", r)
			}
			ids = append(ids, r.ID)
		}
		return err
	})
	return ids
}

func TestClaim(t *testing.T) {
	f := setup(t)
	t.Run("OKOnceAcrossOverlappingSets", func(t *testing.T) {
		refs := f.add(t, 6)
		first := f.claim(t, "a", time.Minute, refs[:4])
		second := f.claim(t, "b", time.Minute, refs[2:])
		if len(first) != 4 || len(second) != 2 {
			t.Fatalf("claimed %d then %d, want 4 then the 2 left", len(first), len(second))
		}
		for _, id := range second {
			for _, r := range refs[:4] {
				if r.ID == id {
					t.Fatalf("%s claimed twice", id)
				}
			}
		}
	})
	t.Run("OKConcurrentClaimersShareNothing", func(t *testing.T) {
		refs := f.add(t, 40)
		got := make(chan []uuid.UUID, 8)
		for i := 0; i < 8; i++ {
			go func() {
				var ids []uuid.UUID
				err := f.scope.Do(context.Background(), f.tenant, func(ctx context.Context) error {
					rows, err := f.outbox.Claim(ctx, uuid.NewString(), time.Minute, refs[i*4:min(len(refs), i*4+12)])
					for _, r := range rows {
						ids = append(ids, r.ID)
					}
					return err
				})
				if err != nil {
					t.Error(err)
				}
				got <- ids
			}()
		}
		count := map[uuid.UUID]int{}
		for i := 0; i < 8; i++ {
			for _, id := range <-got {
				count[id]++
			}
		}
		for _, r := range refs {
			if count[r.ID] != 1 {
				t.Errorf("%s claimed %d times", r.ID, count[r.ID])
			}
		}
	})
	t.Run("StaleRevisionNotClaimed", func(t *testing.T) {
		refs := f.add(t, 1)
		f.do(t, func(ctx context.Context) error {
			return f.outbox.Reschedule(ctx, refs[0].ID, time.Now().Add(time.Hour), time.Time{})
		})
		if got := f.claim(t, "a", time.Minute, refs); len(got) != 0 {
			t.Fatal("a task of the old revision claimed a moved message")
		}
		if got := f.claim(t, "a", time.Minute, []outbox.Ref{{ID: refs[0].ID, Rev: 1}}); len(got) != 1 {
			t.Fatal("the task of the new revision could not claim it")
		}
	})
	t.Run("ExpiredLeaseTakenOver", func(t *testing.T) {
		refs := f.add(t, 1)
		if got := f.claim(t, "dead", time.Millisecond, refs); len(got) != 1 {
			t.Fatal("not claimed")
		}
		time.Sleep(20 * time.Millisecond)
		if got := f.claim(t, "b", time.Minute, refs); len(got) != 1 {
			t.Fatal("a claim whose lease ended still holds the message")
		}
	})
	t.Run("RecordReleasesOnlyItsOwnClaim", func(t *testing.T) {
		refs := f.add(t, 2)
		f.claim(t, "a", time.Minute, refs)
		// A temporary failure: still queued, and free for the retry.
		f.do(t, func(ctx context.Context) error {
			return f.outbox.RecordClaimed(ctx, "a", map[uuid.UUID]outbox.Outcome{refs[0].ID: {Status: outbox.Queued, Reason: "busy"}})
		})
		f.do(t, func(ctx context.Context) error {
			return f.outbox.RecordClaimed(ctx, "other", map[uuid.UUID]outbox.Outcome{refs[1].ID: {Status: outbox.Queued, Reason: "busy"}})
		})
		if got := f.claim(t, "b", time.Minute, refs); len(got) != 1 || got[0] != refs[0].ID {
			t.Fatalf("claimed %v, want only the released %s", got, refs[0].ID)
		}
		f.do(t, func(ctx context.Context) error {
			return f.outbox.RecordClaimed(ctx, "b", map[uuid.UUID]outbox.Outcome{refs[0].ID: {Status: outbox.Sent, Provider: "p"}})
		})
		var row outbox.Row
		f.do(t, func(ctx context.Context) (err error) { row, err = f.outbox.Get(ctx, refs[0].ID); return err })
		if row.Status != outbox.Sent || row.Attempts != 2 || row.Reason != "" {
			t.Fatalf("row = %+v", row)
		}
		if n := testDB.Exec(t, "SELECT 1 FROM outbox WHERE id = $1 AND claimed_by IS NULL AND claim_expires_at IS NULL", refs[0].ID); n != 1 {
			t.Fatal("the claim outlived the outcome")
		}
		if got := f.claim(t, "c", time.Minute, refs[:1]); len(got) != 0 {
			t.Fatal("a sent message was claimed")
		}
	})
	t.Run("ErrNoLease", func(t *testing.T) {
		err := f.scope.Do(context.Background(), f.tenant, func(ctx context.Context) error {
			_, err := f.outbox.Claim(ctx, "a", 0, f.add(t, 1))
			return err
		})
		if err == nil {
			t.Fatal("claimed without a lease")
		}
	})
}
