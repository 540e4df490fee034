package relay

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/keyrelay/keyrelay/jobs"
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
	box    *secretbox.Box
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
	f := &fixture{db: db, scope: tenants.NewScope(db), outbox: outbox.New(box), tenant: uuid.Must(uuid.NewV7()), box: box}
	owner(t, "INSERT INTO tenants (tenant_id, name) VALUES ($1, 'relay test')", f.tenant)
	return f
}

func owner(t *testing.T, sql string, args ...any) int64 { return testDB.Exec(t, sql, args...) }

func redisOpt(addr string) asynq.RedisClientOpt {
	return asynq.RedisClientOpt{Addr: addr, DB: redisDB, DialTimeout: 300 * time.Millisecond, ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond}
}

func (f *fixture) add(t *testing.T, n int, prio outbox.Priority) []uuid.UUID {
	t.Helper()
	return f.addWith(t, f.outbox, n, prio)
}

// addWith commits n messages written through o.
func (f *fixture) addWith(t *testing.T, o *outbox.Outbox, n int, prio outbox.Priority) []uuid.UUID {
	t.Helper()
	var ids []uuid.UUID
	err := f.scope.Do(context.Background(), f.tenant, func(ctx context.Context) error {
		for i := 0; i < n; i++ {
			id, err := o.Add(ctx, outbox.Message{Kind: "login_code", Channel: outbox.SMS, Recipient: "+14155550100", Data: map[string]string{"code": "123456"}, Priority: prio})
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

// queued returns the message ids carried by the queue's pending tasks, each
// with the number of tasks that carry it.
func queued(t *testing.T, insp *asynq.Inspector, queue string) map[string]int {
	t.Helper()
	out := map[string]int{}
	tasks, err := insp.ListPendingTasks(queue, asynq.PageSize(1000))
	if err != nil && err.Error() != "asynq: queue not found" {
		t.Fatalf("list %s: %v", queue, err)
	}
	for _, ti := range tasks {
		for _, id := range carried(t, ti) {
			out[id.String()]++
		}
	}
	return out
}

func carried(t *testing.T, ti *asynq.TaskInfo) []uuid.UUID {
	t.Helper()
	switch ti.Type {
	case jobs.TypeDeliverBatch:
		b, err := jobs.DecodeDeliverBatch(ti.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if ti.ID != b.TaskID() {
			t.Fatalf("batch task id %s, want %s", ti.ID, b.TaskID())
		}
		var ids []uuid.UUID
		for _, m := range b.Messages {
			ids = append(ids, m.ID)
		}
		return ids
	case jobs.TypeDeliver:
		d, err := jobs.DecodeDeliver(ti.Payload)
		if err != nil {
			t.Fatal(err)
		}
		return []uuid.UUID{d.MessageID}
	}
	t.Fatalf("unexpected task type %s", ti.Type)
	return nil
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
	r := New(f.db, client, DefaultConfig(), quiet())

	codes := f.add(t, 3, outbox.Critical)
	normal := f.add(t, 2, "")
	t.Run("OKByPriority", func(t *testing.T) {
		n, err := r.drain(context.Background())
		if err != nil || n < 5 {
			t.Fatalf("drain = %d, %v", n, err)
		}
		crit, def := queued(t, insp, "critical"), queued(t, insp, "default")
		for _, id := range codes {
			if crit[id.String()] != 1 {
				t.Errorf("code %s in %d critical tasks, want 1", id, crit[id.String()])
			}
		}
		for _, id := range normal {
			if def[id.String()] != 1 {
				t.Errorf("message %s in %d default tasks, want 1", id, def[id.String()])
			}
		}
		// One batch per priority: the queue's cost is per task.
		if n, _ := insp.GetQueueInfo("critical"); n == nil || n.Pending != 1 {
			t.Errorf("critical queue: %+v, want one batch task", n)
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
		// The same grouping makes the same task ids, which the queue
		// refuses; the claim covers a different grouping (app tests).
		for _, q := range []string{"critical", "default"} {
			for id, n := range queued(t, insp, q) {
				if n != 1 {
					t.Errorf("%s is in %d %s tasks, want 1", id, n, q)
				}
			}
		}
		if got := len(queued(t, insp, "critical")) + len(queued(t, insp, "default")); got != 5 {
			t.Fatalf("%d messages queued, want 5", got)
		}
	})
	t.Run("WakesOnCommit", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
		defer rdb.Close()
		cfg := DefaultConfig()
		cfg.Poll = time.Hour // only the wake-up can wake it
		cfg.Redis, cfg.WakeChannel = rdb, "keyrelay-test:outbox-wake:"+uuid.NewString()
		rl := New(f.db, client, cfg, quiet())
		done := make(chan error, 1)
		go func() { done <- rl.Run(ctx) }()
		time.Sleep(300 * time.Millisecond) // subscribed
		// The outbox announces its rows after the commit, not before.
		waking := outbox.New(f.box, outbox.WithWaker(Waker{Redis: rdb, Channel: cfg.WakeChannel}))
		ids := f.addWith(t, waking, 1, outbox.Critical)
		deadline := time.Now().Add(5 * time.Second)
		for queued(t, insp, "critical")[ids[0].String()] == 0 {
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
	r := New(f.db, client, DefaultConfig(), quiet())

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
		if low[id.String()] == 0 {
			t.Errorf("%s lost", id)
		}
	}
}

func TestGroup(t *testing.T) {
	r := New(nil, nil, DefaultConfig(), quiet())
	now := time.Now()
	a, b := uuid.New(), uuid.New()
	later := now.Add(time.Hour)
	var rows []pending
	for i := 0; i < 120; i++ {
		rows = append(rows, pending{TenantID: a, ID: uuid.New(), Priority: "default"})
	}
	rows = append(rows,
		pending{TenantID: a, ID: uuid.New(), Priority: "critical"},
		pending{TenantID: b, ID: uuid.New(), Priority: "default", ScheduleRev: 2},
		pending{TenantID: b, ID: uuid.New(), Priority: "low", NotBefore: &later, ScheduleRev: 1},
		pending{TenantID: b, ID: uuid.New(), Priority: "low", NotBefore: &now}, // due: batched
	)
	tasks := r.group(rows, now)
	var sizes []int
	seen := map[uuid.UUID]int{}
	for _, tk := range tasks {
		sizes = append(sizes, len(tk.rows))
		switch tk.task.Type() {
		case jobs.TypeDeliverBatch:
			batch, err := jobs.DecodeDeliverBatch(tk.task.Payload())
			if err != nil {
				t.Fatal(err)
			}
			for i, m := range batch.Messages {
				row := tk.rows[i]
				if m.ID != row.ID || m.Rev != row.ScheduleRev || row.TenantID != batch.TenantID || row.Priority != tk.rows[0].Priority {
					t.Errorf("batch of %s/%s carries %+v of %+v", batch.TenantID, tk.rows[0].Priority, m, row)
				}
				seen[m.ID]++
			}
		case jobs.TypeDeliver:
			d, err := jobs.DecodeDeliver(tk.task.Payload())
			if err != nil {
				t.Fatal(err)
			}
			if d.Rev != 1 || tk.rows[0].NotBefore != &later {
				t.Errorf("single task %+v for row %+v, want only the scheduled one", d, tk.rows[0])
			}
			seen[d.MessageID]++
		}
	}
	if want := []int{50, 50, 20, 1, 1, 1, 1}; !slices.Equal(sizes, want) {
		t.Errorf("task sizes %v, want %v", sizes, want)
	}
	for _, row := range rows {
		if seen[row.ID] != 1 {
			t.Errorf("%s in %d tasks", row.ID, seen[row.ID])
		}
	}
}

// TestReclaim: a worker died mid-send and its claim's lease ran out; the
// sweep puts the message back in the relay's hands. A live claim, and the
// claim on a message already sent, are not relayed again.
func TestReclaim(t *testing.T) {
	f := setup(t)
	r := New(f.db, nil, DefaultConfig(), quiet())
	ids := f.add(t, 4, outbox.Normal)
	owner(t, "UPDATE outbox SET relayed_at = now() WHERE tenant_id = $1", f.tenant)
	owner(t, "UPDATE outbox SET claimed_by = 'dead', claim_expires_at = now() - interval '1 second' WHERE id = $1", ids[0])
	owner(t, "UPDATE outbox SET claimed_by = 'alive', claim_expires_at = now() + interval '1 minute' WHERE id = $1", ids[1])
	owner(t, "UPDATE outbox SET claimed_by = 'dead', claim_expires_at = now() - interval '1 second', status = 'sent' WHERE id = $1", ids[2])

	n, err := r.Reclaim(context.Background())
	if err != nil || n < 1 {
		t.Fatalf("reclaim = %d, %v", n, err)
	}
	state := func(id uuid.UUID) (relayed, claimed bool) {
		relayed = owner(t, "SELECT 1 FROM outbox WHERE id = $1 AND relayed_at IS NOT NULL", id) == 1
		claimed = owner(t, "SELECT 1 FROM outbox WHERE id = $1 AND claimed_by IS NOT NULL", id) == 1
		return
	}
	for i, want := range [][2]bool{{false, false}, {true, true}, {true, false}, {true, false}} {
		if relayed, claimed := state(ids[i]); relayed != want[0] || claimed != want[1] {
			t.Errorf("message %d: relayed %v claimed %v, want %v", i, relayed, claimed, want)
		}
	}
}
