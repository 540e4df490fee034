package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// sentinelSetup is a master, its replica and one sentinel watching them.
type sentinelSetup struct {
	master, replica *redisProc
	sentinel        *redisProc
	client          *redis.SentinelClient
}

const sentinelMaster = "mymaster"

func startSentinel(t *testing.T) *sentinelSetup {
	t.Helper()
	dir := t.TempDir()
	mp, rp, sp := freePort(t), freePort(t), freePort(t)
	st := &sentinelSetup{}
	st.master = startRedis(t, "redis-server", dir, mp, serverArgs(mp, "--dbfilename", fmt.Sprintf("dump-%d.rdb", mp))...)
	st.replica = startRedis(t, "redis-server", dir, rp, serverArgs(rp, "--dbfilename", fmt.Sprintf("dump-%d.rdb", rp),
		"--replicaof", "127.0.0.1", strconv.Itoa(mp), "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")...)
	// Sentinel rewrites its configuration file: it must be its own.
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s 127.0.0.1 %d 1\n"+
		"sentinel down-after-milliseconds %[3]s 1000\nsentinel failover-timeout %[3]s 10000\nsentinel parallel-syncs %[3]s 1\n",
		sp, dir, sentinelMaster, mp)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	st.sentinel = startRedis(t, "redis-sentinel", dir, sp, conf)
	st.client = redis.NewSentinelClient(&redis.Options{Addr: st.sentinel.addr})
	t.Cleanup(func() { st.client.Close() })
	// A failover needs a replica the sentinel knows and that is in sync.
	waitFor(t, "the sentinel to see the replica", 20*time.Second, func() bool {
		reps, err := st.client.Replicas(context.Background(), sentinelMaster).Result()
		return err == nil && len(reps) == 1 && reps[0]["master-link-status"] == "ok"
	})
	return st
}

// masterAddr is where the sentinel says the master is now.
func (st *sentinelSetup) masterAddr(t *testing.T) string {
	t.Helper()
	a, err := st.client.GetMasterAddrByName(context.Background(), sentinelMaster).Result()
	if err != nil {
		t.Fatal(err)
	}
	return a[0] + ":" + a[1]
}

// TestRedisSentinelFailover runs keyrelay on Redis behind a Sentinel and
// fails the master over while messages are being written and delivered —
// on request (SENTINEL FAILOVER: the old master lives on) and by killing
// it (no master until the sentinel notices) — : every message is
// delivered exactly once, and the app keeps working on the new master
// (sign-in with its code, the guard, idempotent replays).
func TestRedisSentinelFailover(t *testing.T) {
	needBinaries(t, "redis-server", "redis-sentinel")
	t.Run("SentinelFailover", func(t *testing.T) { failoverMidDelivery(t, false) })
	t.Run("MasterKilled", func(t *testing.T) { failoverMidDelivery(t, true) })
}

func failoverMidDelivery(t *testing.T, kill bool) {
	st := startSentinel(t)
	var logs syncBuffer
	s := startServerLogging(t, &logs, withWorkers, func(c *Config) {
		c.RedisURL = "redis-sentinel://" + st.sentinel.addr + "/" + sentinelMaster + "?db=0"
	})
	f := s.signup(t)
	deliveredOnceThrough(t, s, f, 60*time.Second, func() {
		before := st.masterAddr(t)
		if kill {
			st.master.stop()
		} else if err := st.client.Failover(context.Background(), sentinelMaster).Err(); err != nil {
			t.Fatalf("SENTINEL FAILOVER: %v", err)
		}
		waitFor(t, "the replica to be promoted", 30*time.Second, func() bool { return st.masterAddr(t) == st.replica.addr })
		t.Logf("failed over from %s to %s", before, st.replica.addr)
	})
	if t.Failed() {
		return
	}

	t.Run("WorksAfterFailover", func(t *testing.T) {
		// Sign-in: the guard's counters, the per-address limiter and the
		// code's delivery, all on the new master.
		c := s.login(t, f.Email, f.Password)
		c.expect(t, 200, "GET", "/api/v1/me", nil)
		idem := uuid.NewString()
		body := map[string]any{"name": "After failover " + idem[:6]}
		first := f.Owner.expect(t, 201, "POST", "/api/v1/locations", body, "Idempotency-Key", idem)
		again := f.Owner.expect(t, 201, "POST", "/api/v1/locations", body, "Idempotency-Key", idem)
		if string(first.Body) != string(again.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("not replayed: %s / %s", first.Body, again.Body)
		}
		m := note
		m.Recipient = "after-failover-" + uuid.NewString()[:8] + "@example.com"
		id := s.queueMessage(t, f.ID, m)
		waitStatusFor(t, s, f.ID, id, outbox.Delivered, 30*time.Second)
		// The data is on the promoted replica, not the old master.
		nc := redis.NewClient(&redis.Options{Addr: st.replica.addr})
		defer nc.Close()
		if role, err := nc.Do(context.Background(), "ROLE").Slice(); err != nil || role[0] != "master" {
			t.Fatalf("ROLE on %s: %v %v", st.replica.addr, role, err)
		}
	})
}

// deliveredOnceThrough writes messages in small batches from before
// failOver until well after it, so that some are written, relayed and sent
// while the old master still takes writes, some while no master does, and
// some on the new one; then checks that every one was delivered exactly
// once. failOver runs on the test's goroutine and returns once the new
// master is in place; every message must be delivered within deliverIn of
// the writes' end.
func deliveredOnceThrough(t *testing.T, s *server, f tenantFixture, deliverIn time.Duration, failOver func()) {
	t.Helper()
	const perBatch = 4
	var (
		mu  sync.Mutex
		ids []uuid.UUID
	)
	written := make(chan struct{})
	stop := make(chan struct{})
	due := make(chan struct{})
	go func() {
		defer close(written)
		for i := 0; ; i++ {
			if i == 10 {
				close(due)
			}
			select {
			case <-stop:
				return
			default:
			}
			var ms []outbox.Message
			for range perBatch {
				m := note
				m.Recipient = "failover-" + uuid.NewString()[:8] + "@example.com"
				ms = append(ms, m)
			}
			// Not queueMessages: its t.Fatal must not run off the test's goroutine.
			err := s.app.scope.Do(context.Background(), f.ID, func(ctx context.Context) error {
				for _, m := range ms {
					id, err := s.app.outbox.Add(ctx, m)
					if err != nil {
						return err
					}
					mu.Lock()
					ids = append(ids, id)
					mu.Unlock()
				}
				return nil
			})
			if err != nil {
				t.Errorf("writing messages: %v", err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	<-due
	mu.Lock()
	atFailover := len(ids)
	mu.Unlock()
	func() {
		defer func() {
			if t.Failed() {
				close(stop)
				<-written
			}
		}()
		failOver()
	}()
	if t.Failed() {
		return
	}
	time.Sleep(3 * time.Second) // the clients follow; writing goes on meanwhile
	close(stop)
	<-written
	if t.Failed() {
		return
	}
	mu.Lock()
	all := append([]uuid.UUID(nil), ids...)
	mu.Unlock()
	t.Logf("%d messages written before the failover, %d in all", atFailover, len(all))

	// Lost: a message whose task vanished with the old master's last
	// writes stays queued, relayed, forever.
	began := time.Now()
	deadline := began.Add(deliverIn)
	for _, id := range all {
		row := s.message(t, f.ID, id)
		for row.Status != outbox.Delivered && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
			row = s.message(t, f.ID, id)
		}
		if row.Status != outbox.Delivered {
			relayed := ownerQuery[bool](t, "SELECT relayed_at IS NOT NULL FROM outbox WHERE id = $1", id)
			t.Errorf("message %s lost: status %s, relayed %v, attempts %d", id, row.Status, relayed, row.Attempts)
			continue
		}
		if n := len(s.mailbox(t, row.Recipient)); n != 1 {
			t.Errorf("%s received %d copies, want exactly 1", row.Recipient, n)
		}
	}
	t.Logf("all delivered %v after the writes ended", time.Since(began).Round(100*time.Millisecond))
}

// waitStatusFor is waitStatus with a deadline of the caller's.
func waitStatusFor(t *testing.T, s *server, tenantID, id uuid.UUID, want outbox.Status, d time.Duration) outbox.Row {
	t.Helper()
	var row outbox.Row
	waitFor(t, fmt.Sprintf("message %s %s", id, want), d, func() bool {
		row = s.message(t, tenantID, id)
		return row.Status == want
	})
	return row
}
