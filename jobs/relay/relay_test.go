package relay

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/keyrelay/keyrelay/migrations/dbtest"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/outbox"
	"github.com/keyrelay/keyrelay/tenants/secretbox"
)

// This package's own Redis database: asynq's queue names are fixed.
const redisDB = 6

var testDB *dbtest.DB

func TestMain(m *testing.M) { dbtest.Main(m, "relay", &testDB) }

type fixture struct {
	db     *gorm.DB
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
	box, _ := secretbox.New(bytes.Repeat([]byte{3}, 32))
	f := &fixture{db: db, scope: tenants.NewScope(db), outbox: outbox.New(box), tenant: uuid.Must(uuid.NewV7())}
	owner(t, "INSERT INTO tenants (tenant_id, name) VALUES ($1, 'relay test')", f.tenant)
	return f
}

func owner(t *testing.T, sql string, args ...any) int64 { return testDB.Exec(t, sql, args...) }

func redisOpt(addr string) asynq.RedisClientOpt {
	return asynq.RedisClientOpt{Addr: addr, DB: redisDB, DialTimeout: 300 * time.Millisecond, ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond}
}

func (f *fixture) add(t *testing.T, n int, prio outbox.Priority) []uuid.UUID {
	t.Helper()
	var ids []uuid.UUID
	err := f.scope.Do(context.Background(), f.tenant, func(ctx context.Context) error {
		for i := 0; i < n; i++ {
			id, err := f.outbox.Add(ctx, outbox.Message{Kind: "login_code", Channel: outbox.SMS, Recipient: "+14155550100", Data: map[string]string{"code": "123456"}, Priority: prio})
			if err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func queued(t *testing.T, insp *asynq.Inspector, queue string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	tasks, err := insp.ListPendingTasks(queue, asynq.PageSize(1000))
	if err != nil && err.Error() != "asynq: queue not found" {
		t.Fatalf("list %s: %v", queue, err)
	}
	for _, ti := range tasks {
		out[ti.ID] = true
	}
	return out
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestRelay(t *testing.T) {
	f := setup(t)
	client := asynq.NewClient(redisOpt("127.0.0.1:6379"))
	defer client.Close()
	insp := asynq.NewInspector(redisOpt("127.0.0.1:6379"))
	defer insp.Close()
	for _, q := range []string{"critical", "default", "low"} {
		insp.DeleteQueue(q, true)
	}
	r := New(f.db, client, DefaultConfig(testDB.AppURL), quiet())

	codes := f.add(t, 3, outbox.Critical)
	normal := f.add(t, 2, "")
	t.Run("OKByPriority", func(t *testing.T) {
		n, err := r.drain(context.Background())
		if err != nil || n < 5 {
			t.Fatalf("drain = %d, %v", n, err)
		}
		crit, def := queued(t, insp, "critical"), queued(t, insp, "default")
		for _, id := range codes {
			if !crit[id.String()] {
				t.Errorf("code %s not in the critical queue", id)
			}
		}
		for _, id := range normal {
			if !def[id.String()] {
				t.Errorf("message %s not in the default queue", id)
			}
		}
		if n := owner(t, "SELECT 1 FROM outbox WHERE tenant_id = $1 AND relayed_at IS NULL", f.tenant); n != 0 {
			t.Fatalf("%d rows not marked relayed", n)
		}
	})
	t.Run("RelayedTwiceQueuedOnce", func(t *testing.T) {
		// A crash between enqueue and mark: the rows are pending again.
		owner(t, "UPDATE outbox SET relayed_at = NULL WHERE tenant_id = $1", f.tenant)
		n, err := r.drain(context.Background())
		if err != nil || n < 5 {
			t.Fatalf("drain = %d, %v", n, err)
		}
		if got := len(queued(t, insp, "critical")) + len(queued(t, insp, "default")); got != 5 {
			t.Fatalf("%d tasks queued, want 5", got)
		}
	})
	t.Run("WakesOnCommit", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cfg := DefaultConfig(testDB.AppURL)
		cfg.Poll = time.Hour // only NOTIFY can wake it
		rl := New(f.db, client, cfg, quiet())
		done := make(chan error, 1)
		go func() { done <- rl.Run(ctx) }()
		time.Sleep(300 * time.Millisecond) // LISTEN is up
		ids := f.add(t, 1, outbox.Critical)
		deadline := time.Now().Add(5 * time.Second)
		for !queued(t, insp, "critical")[ids[0].String()] {
			if time.Now().After(deadline) {
				t.Fatal("a committed row was not relayed without polling")
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		<-done
	})
}

// TestRelayWaitsForRedis cuts Redis off: rows stay in the outbox, and go
// out once it is back.
func TestRelayWaitsForRedis(t *testing.T) {
	f := setup(t)
	p := dbtest.NewProxy(t, "127.0.0.1:6379")
	client := asynq.NewClient(redisOpt(p.Addr()))
	defer client.Close()
	insp := asynq.NewInspector(redisOpt("127.0.0.1:6379"))
	defer insp.Close()
	insp.DeleteQueue("low", true)
	r := New(f.db, client, DefaultConfig(testDB.AppURL), quiet())

	p.SetDown(true)
	ids := f.add(t, 4, outbox.Low)
	if _, err := r.drain(context.Background()); err == nil {
		t.Fatal("drain succeeded with Redis down")
	}
	if n := owner(t, "SELECT 1 FROM outbox WHERE tenant_id = $1 AND relayed_at IS NULL", f.tenant); n != 4 {
		t.Fatalf("%d rows pending, want all 4", n)
	}
	p.SetDown(false)
	// Other tests' rows may be pending too: the relay serves every tenant.
	if n, err := r.drain(context.Background()); err != nil || n < 4 {
		t.Fatalf("drain after Redis is back = %d, %v", n, err)
	}
	low := queued(t, insp, "low")
	for _, id := range ids {
		if !low[id.String()] {
			t.Errorf("%s lost", id)
		}
	}
}
