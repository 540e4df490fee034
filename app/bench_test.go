package main

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// BenchmarkLogin measures sign-ins per second through the real HTTP stack
// (rate limiter, candidate lookup, argon2id, session insert). Compare with
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
			if r := c.do(b, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": f.Password}); r.Status != 200 {
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
