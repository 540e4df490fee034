package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"

	"github.com/keyrelay/keyrelay/plugins/providers/devmailbox/devmailbox"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// BenchmarkLogin measures password steps per second through the real HTTP
// stack (rate limiter, guard counters, candidate lookup, argon2id, the
// challenge and its code in the outbox). Compare with
// BenchmarkArgon2id in tenants/accounts, the hashing ceiling:
//
//	go test -run x -bench 'Login' -benchtime 5s ./app/
//	go test -run x -bench 'Argon2id' -benchtime 5s ./tenants/accounts/
func BenchmarkLogin(b *testing.B) {
	s := startServer(b)
	f := s.signup(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := s.client()
		for pb.Next() {
			if r := c.do(b, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": f.Password}); r.Status != 202 {
				b.Fatalf("login: %d %s", r.Status, r.Body)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
}

// The delivery pipeline against its ceiling, bare asynq on the same Redis
// with the same concurrency and no-op tasks. Run both in one go:
//
//	go test -run x -bench 'BareAsynq|Delivery' -benchtime 5000x ./app/
func BenchmarkBareAsynq(b *testing.B) {
	cfg := testConfig(b)
	opt, err := asynq.ParseRedisURI(cfg.RedisURL)
	if err != nil {
		b.Fatal(err)
	}
	insp := asynq.NewInspector(opt)
	defer insp.Close()
	insp.DeleteQueue("bench", true)
	client := asynq.NewClient(opt)
	defer client.Close()
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				if _, err := client.Enqueue(asynq.NewTask("noop", nil), asynq.Queue("bench")); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	for i := 0; i < b.N; i++ {
		next <- i
	}
	close(next)
	wg.Wait()

	var done atomic.Int64
	all := make(chan struct{})
	srv := asynq.NewServer(opt, asynq.Config{Concurrency: cfg.WorkerConcurrency, Queues: map[string]int{"bench": 1},
		TaskCheckInterval: 20 * time.Millisecond, LogLevel: asynq.ErrorLevel})
	b.ResetTimer()
	if err := srv.Start(asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
		if done.Add(1) == int64(b.N) {
			close(all)
		}
		return nil
	})); err != nil {
		b.Fatal(err)
	}
	<-all
	b.StopTimer()
	srv.Shutdown()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
}

// BenchmarkDelivery measures committed outbox rows → relayed → task
// handled → rendered → sent through the devmailbox plugin process → status
// recorded. The b.N rows are committed first (domain code's part, not
// timed); the clock runs from starting the workers until every status is
// recorded.
func BenchmarkDelivery(b *testing.B) {
	s := startServer(b)
	f := s.signup(b)
	for left := b.N; left > 0; {
		n := min(left, 500)
		err := s.app.scope.Do(context.Background(), f.ID, func(ctx context.Context) error {
			for i := 0; i < n; i++ {
				if _, err := s.app.outbox.Add(ctx, outbox.Message{Kind: "login_code", Channel: outbox.SMS, Recipient: "+14155550100", Data: map[string]string{"code": "123456"}}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		left -= n
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	b.ResetTimer()
	go func() { done <- s.app.runWorkers(ctx) }()
	for {
		var left int64
		if err := s.app.scope.Do(context.Background(), f.ID, func(ctx context.Context) error {
			tx, err := tenants.Tx(ctx)
			if err != nil {
				return err
			}
			return tx.Raw("SELECT count(*) FROM outbox WHERE status = 'queued'").Scan(&left).Error
		}); err != nil {
			b.Fatal(err)
		}
		if left == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkCodeLatency measures how long a login code takes from its outbox
// row's commit to the provider plugin receiving it, while a background flow
// of 200 other messages a second goes through the same workers. The plugin
// stamps each message as it receives it (the dev mailbox's created_at).
//
//	go test -run x -bench CodeLatency -benchtime 300x ./app/
//
// Keep -benchtime in the hundreds: reading each code back from the dev
// mailbox scans its whole file.
func BenchmarkCodeLatency(b *testing.B) {
	s := startServer(b, withWorkers)
	f := s.signup(b)
	add := func(m outbox.Message) (uuid.UUID, time.Time) {
		var id uuid.UUID
		err := s.app.scope.Do(context.Background(), f.ID, func(ctx context.Context) error {
			var err error
			id, err = s.app.outbox.Add(ctx, m)
			return err
		})
		if err != nil {
			b.Error(err)
		}
		return id, time.Now()
	}
	ctx, cancel := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	bg.Add(1)
	go func() { // 200 messages/s of ordinary traffic
		defer bg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				add(outbox.Message{Kind: "password_changed", Channel: outbox.Email, Recipient: "bulk@example.com", Data: map[string]string{"name": "x"}})
			}
		}
	}()
	time.Sleep(time.Second) // the flow is steady
	type sent struct {
		id uuid.UUID
		at time.Time
	}
	codes := make([]sent, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id, at := add(outbox.Message{Kind: "login_code", Channel: outbox.SMS, Recipient: "+14155550100", Data: map[string]string{"code": "123456"}, Priority: outbox.Critical})
		codes = append(codes, sent{id, at})
		time.Sleep(20 * time.Millisecond)
	}
	b.StopTimer()
	mb := devmailbox.Open(s.app.cfg.mailboxDir())
	lat := make([]time.Duration, 0, len(codes))
	for _, c := range codes {
		var rec devmailbox.Record
		waitFor(b, "code delivered", 30*time.Second, func() bool {
			var err error
			rec, err = mb.Get(f.ID.String(), c.id.String())
			return err == nil
		})
		lat = append(lat, rec.CreatedAt.Sub(c.at))
	}
	cancel()
	bg.Wait()
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99_ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max_ms")
	// A coarse histogram, for the note.
	buckets := []time.Duration{5, 10, 20, 50, 100, 250, 1000}
	counts := make([]int, len(buckets)+1)
	for _, l := range lat {
		i := 0
		for i < len(buckets) && l > buckets[i]*time.Millisecond {
			i++
		}
		counts[i]++
	}
	for i, c := range counts {
		label := "> 1000ms"
		if i < len(buckets) {
			label = fmt.Sprintf("<= %dms", buckets[i])
		}
		b.Logf("%-9s %d", label, c)
	}
}
