package guard

import (
	"context"
	"crypto/rand"
	"errors"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/ulule/limiter/v3"

	"github.com/keyrelay/keyrelay/tenants"
)

// redisOptions points at the local Redis (KEYRELAY_REDIS_URL when set).
func redisOptions(t *testing.T) *redis.Options {
	t.Helper()
	url := os.Getenv("KEYRELAY_REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/0"
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("KEYRELAY_REDIS_URL: %v", err)
	}
	return opts
}

// newClient returns a client for the real Redis; the test fails without one.
func newClient(t *testing.T) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(redisOptions(t))
	t.Cleanup(func() { _ = rdb.Close() })
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("these tests need Redis: %v", err)
	}
	return rdb
}

// newGuard returns a guard under a prefix of its own, whose keys are
// deleted when the test ends.
func newGuard(t *testing.T) (*Guard, *redis.Client) {
	t.Helper()
	rdb := newClient(t)
	prefix := "keyrelay-test:guard:" + strings.ToLower(rand.Text())
	t.Cleanup(func() {
		ctx := context.Background()
		cleaner := redis.NewClient(redisOptions(t))
		defer cleaner.Close()
		iter := cleaner.Scan(ctx, 0, prefix+":*", 100).Iterator()
		for iter.Next(ctx) {
			cleaner.Del(ctx, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Errorf("cleaning up %s: %v", prefix, err)
		}
	})
	g, err := New(rdb, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := g.store.Load().(limiter.Store); !ok {
		t.Fatal("New did not build the limiter store although Redis is up")
	}
	return g, rdb
}

// fail runs one allowed, wrong attempt.
func fail(t *testing.T, g *Guard, r Rule, key string) *Attempt {
	t.Helper()
	a, err := g.Begin(context.Background(), r, key)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if err := a.Failed(context.Background()); err != nil {
		t.Fatalf("Failed: %v", err)
	}
	return a
}

// refusedFor asserts a 429 and returns its Retry-After.
func refusedFor(t *testing.T, err error) time.Duration {
	t.Helper()
	var e *tenants.Error
	if !errors.As(err, &e) || e.Code != tenants.ERateLimited {
		t.Fatalf("got %v, want rate_limited", err)
	}
	if e.RetryAfter <= 0 {
		t.Fatalf("refusal without Retry-After: %v", err)
	}
	return e.RetryAfter
}

func near(got, want, tolerance time.Duration) bool {
	return got <= want && got > want-tolerance
}

// dropLock stands in for waiting out a lockout of the real schedule.
func dropLock(t *testing.T, g *Guard, rdb *redis.Client, r Rule, key string) {
	t.Helper()
	if err := rdb.Del(context.Background(), g.keysFor("count", r.Name, key).lock).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestSchedule(t *testing.T) {
	ctx := context.Background()
	g, rdb := newGuard(t)
	r := LoginAccount // the real numbers: 3 free, 30 s doubling to 1 h, 20 hard
	const key = "tenant-1/ann@example.com"

	t.Run("three free failures pass back to back", func(t *testing.T) {
		for range r.Free {
			fail(t, g, r, key)
		}
		n, wait, err := g.Peek(ctx, r, key)
		if err != nil || n != 3 || wait != 0 {
			t.Fatalf("Peek = %d, %v, %v; want 3, 0", n, wait, err)
		}
	})

	t.Run("the fourth runs and its failure earns 429 with Retry-After 30s", func(t *testing.T) {
		fail(t, g, r, key)
		_, err := g.Begin(ctx, r, key)
		if wait := refusedFor(t, err); !near(wait, 30*time.Second, 2*time.Second) {
			t.Fatalf("Retry-After %v, want about 30s", wait)
		}
		if errors.Is(err, ErrHardLimit) {
			t.Fatal("a delay is not the hard limit")
		}
	})

	t.Run("refusals during the delay are not counted", func(t *testing.T) {
		for range 10 {
			_, err := g.Begin(ctx, r, key)
			refusedFor(t, err)
		}
		n, wait, err := g.Peek(ctx, r, key)
		if err != nil || n != 4 || !near(wait, 30*time.Second, 2*time.Second) {
			t.Fatalf("Peek = %d, %v, %v; want 4, about 30s", n, wait, err)
		}
	})

	t.Run("the delay doubles and is capped at MaxDelay", func(t *testing.T) {
		for f := 5; f <= 14; f++ { // failure f earns 30 s·2^(f-4), at most 1 h
			dropLock(t, g, rdb, r, key)
			fail(t, g, r, key)
			want := min(30*time.Second<<(f-4), time.Hour)
			_, err := g.Begin(ctx, r, key)
			if wait := refusedFor(t, err); !near(wait, want, 2*time.Second) {
				t.Fatalf("after failure %d: Retry-After %v, want about %v", f, wait, want)
			}
		}
	})
}

func TestDelayTable(t *testing.T) {
	r := LoginAccount
	want := map[int]time.Duration{1: 0, 3: 0, 4: 30 * time.Second, 5: time.Minute, 10: 32 * time.Minute, 11: time.Hour, 20: time.Hour, 1000: time.Hour}
	for n, d := range want {
		if got := r.Delay(n); got != d {
			t.Errorf("Delay(%d) = %v, want %v", n, got, d)
		}
	}
}

func TestSuccess(t *testing.T) {
	ctx := context.Background()
	g, _ := newGuard(t)
	r := Rule{Name: "t-success", Free: 3, BaseDelay: time.Hour, MaxDelay: time.Hour, Hard: 20, Window: time.Hour}

	t.Run("success resets the counter and the lockout", func(t *testing.T) {
		for range r.Free {
			fail(t, g, r, "ann")
		}
		a, err := g.Begin(ctx, r, "ann") // holds the lock
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Succeeded(ctx); err != nil {
			t.Fatal(err)
		}
		n, wait, err := g.Peek(ctx, r, "ann")
		if err != nil || n != 0 || wait != 0 {
			t.Fatalf("Peek = %d, %v, %v; want 0, 0", n, wait, err)
		}
		for range r.Free + 1 {
			fail(t, g, r, "ann")
		}
	})

	t.Run("an attempt finishes once", func(t *testing.T) {
		a, err := g.Begin(ctx, r, "bob")
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Succeeded(ctx); err != nil {
			t.Fatal(err)
		}
		if err := a.Failed(ctx); err == nil {
			t.Fatal("Failed after Succeeded was accepted")
		}
	})

	t.Run("with KeepOnSuccess a success takes back only itself", func(t *testing.T) {
		k := r
		k.Name, k.KeepOnSuccess = "t-keep", true
		for range k.Free {
			fail(t, g, k, "10.0.0.1")
		}
		a, err := g.Begin(ctx, k, "10.0.0.1") // fourth: holds the lock
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Succeeded(ctx); err != nil {
			t.Fatal(err)
		}
		n, wait, err := g.Peek(ctx, k, "10.0.0.1")
		if err != nil || n != 3 || wait != 0 {
			t.Fatalf("Peek = %d, %v, %v; want the 3 failures kept and the lock released", n, wait, err)
		}
		fail(t, g, k, "10.0.0.1") // runs at once, earns the delay
		_, err = g.Begin(ctx, k, "10.0.0.1")
		refusedFor(t, err)
	})
}

func TestHardLimit(t *testing.T) {
	ctx := context.Background()
	g, _ := newGuard(t)

	t.Run("over Hard is refused until the window ends, with ErrHardLimit", func(t *testing.T) {
		r := Rule{Name: "t-hard", Free: 5, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond, Hard: 5, Window: time.Hour}
		for range r.Hard {
			fail(t, g, r, "booking-1")
		}
		_, err := g.Begin(ctx, r, "booking-1")
		if wait := refusedFor(t, err); !near(wait, time.Hour, 5*time.Second) {
			t.Fatalf("Retry-After %v, want about 1h", wait)
		}
		if !errors.Is(err, ErrHardLimit) {
			t.Fatalf("%v is not ErrHardLimit", err)
		}
		n, wait, err := g.Peek(ctx, r, "booking-1")
		if err != nil || n != r.Hard || !near(wait, time.Hour, 5*time.Second) {
			t.Fatalf("Peek = %d, %v, %v; want %d, about 1h", n, wait, err, r.Hard)
		}
	})

	t.Run("Reset lifts the hard limit", func(t *testing.T) {
		r := Rule{Name: "t-hard", Free: 5, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond, Hard: 5, Window: time.Hour}
		if err := g.Reset(ctx, r, "booking-1"); err != nil {
			t.Fatal(err)
		}
		fail(t, g, r, "booking-1")
	})

	t.Run("the hard limit holds through the delays and ends with the window", func(t *testing.T) {
		r := Rule{Name: "t-hard-window", Free: 1, BaseDelay: 5 * time.Millisecond, MaxDelay: 5 * time.Millisecond, Hard: 3, Window: 400 * time.Millisecond}
		start := time.Now()
		allowed := 0
		for time.Since(start) < 300*time.Millisecond {
			a, err := g.Begin(ctx, r, "k")
			if err != nil {
				refusedFor(t, err)
				time.Sleep(2 * time.Millisecond)
				continue
			}
			allowed++
			if err := a.Failed(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if allowed != r.Hard {
			t.Fatalf("%d attempts ran in the window, want Hard = %d", allowed, r.Hard)
		}
		_, wait, err := g.Peek(ctx, r, "k")
		if err != nil || wait <= 0 || wait > r.Window {
			t.Fatalf("Peek: %v, %v; want the rest of the window", wait, err)
		}
		time.Sleep(wait + 10*time.Millisecond)
		if _, err := g.Begin(ctx, r, "k"); err != nil {
			t.Fatalf("after the window: %v", err)
		}
	})

	t.Run("invalid rules are errors, not limits", func(t *testing.T) {
		for _, r := range []Rule{{}, {Name: "a:b", Hard: 1, Window: time.Second}, {Name: "x", Free: 1, Hard: 2, Window: time.Second}} {
			if _, err := g.Begin(ctx, r, "k"); err == nil || tenants.ErrorCode(err) != tenants.EInternal {
				t.Errorf("Begin(%+v) = %v, want an internal error", r, err)
			}
		}
	})
}

func TestLockoutExpires(t *testing.T) {
	ctx := context.Background()
	g, _ := newGuard(t)
	r := Rule{Name: "t-expiry", Free: 1, BaseDelay: 40 * time.Millisecond, MaxDelay: 160 * time.Millisecond, Hard: 100, Window: time.Minute}
	fail(t, g, r, "k") // free

	for _, want := range []time.Duration{40 * time.Millisecond, 80 * time.Millisecond, 160 * time.Millisecond, 160 * time.Millisecond} {
		t.Run("locked for "+want.String()+" then allowed again", func(t *testing.T) {
			fail(t, g, r, "k")
			_, err := g.Begin(ctx, r, "k")
			if wait := refusedFor(t, err); !near(wait, want, want/2) {
				t.Fatalf("Retry-After %v, want about %v", wait, want)
			}
			time.Sleep(want + 10*time.Millisecond)
		})
	}
}

func TestCountersSurviveRestart(t *testing.T) {
	ctx := context.Background()
	g, _ := newGuard(t)
	r := Rule{Name: "t-restart", Free: 3, BaseDelay: 30 * time.Second, MaxDelay: time.Hour, Hard: 20, Window: time.Hour}
	for range r.Free + 1 {
		fail(t, g, r, "ann")
	}

	t.Run("a new guard on a new connection sees the failures and the lockout", func(t *testing.T) {
		g2, err := New(newClient(t), g.prefix)
		if err != nil {
			t.Fatal(err)
		}
		n, wait, err := g2.Peek(ctx, r, "ann")
		if err != nil || n != 4 || !near(wait, 30*time.Second, 2*time.Second) {
			t.Fatalf("Peek = %d, %v, %v; want 4, about 30s", n, wait, err)
		}
		_, err = g2.Begin(ctx, r, "ann")
		refusedFor(t, err)
	})
}

func TestRedisDownFailsClosed(t *testing.T) {
	ctx := context.Background()
	r := Rule{Name: "t-down", Free: 3, BaseDelay: 30 * time.Second, MaxDelay: time.Hour, Hard: 20, Window: time.Hour}
	unavailable := func(t *testing.T, what string, err error) {
		t.Helper()
		if tenants.ErrorCode(err) != tenants.EUnavailable {
			t.Fatalf("%s: got %v, want unavailable", what, err)
		}
	}

	t.Run("unreachable at start: New works, every call is unavailable", func(t *testing.T) {
		down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
		defer down.Close()
		g, err := New(down, "keyrelay-test:guard:down")
		if err != nil {
			t.Fatalf("New must not fail while Redis is down: %v", err)
		}
		_, err = g.Begin(ctx, r, "ann")
		unavailable(t, "Begin", err)
		_, _, err = g.Peek(ctx, r, "ann")
		unavailable(t, "Peek", err)
		unavailable(t, "Reset", g.Reset(ctx, r, "ann"))
		unavailable(t, "Spend", g.Spend(ctx, "sms", 3, time.Hour, "ann"))
	})

	t.Run("lost after Begin: Failed and Succeeded are unavailable and the attempt stays counted", func(t *testing.T) {
		g, _ := newGuard(t)
		for range r.Free {
			fail(t, g, r, "ann")
		}
		conn := redis.NewClient(redisOptions(t))
		g2, err := New(conn, g.prefix)
		if err != nil {
			t.Fatal(err)
		}
		a, err := g2.Begin(ctx, r, "ann")
		if err != nil {
			t.Fatal(err)
		}
		b, err := g2.Begin(ctx, r, "bob")
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.Close() // Redis gone for this guard
		unavailable(t, "Failed", a.Failed(ctx))
		unavailable(t, "Succeeded", b.Succeeded(ctx))
		_, err = g2.Begin(ctx, r, "ann")
		unavailable(t, "Begin", err)

		n, wait, err := g.Peek(ctx, r, "ann")
		if err != nil || n != r.Free+1 || !near(wait, 30*time.Second, 2*time.Second) {
			t.Fatalf("Peek = %d, %v, %v; want the unreported attempt counted and locked", n, wait, err)
		}
	})
}

func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.7":                   "203.0.113.7",
		" 203.0.113.7 ":                 "203.0.113.7",
		"203.0.113.7:4431":              "203.0.113.7",
		"::ffff:203.0.113.7":            "203.0.113.7",
		"2001:db8:1:2:3:4:5:6":          "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff:ffff:ffff:1": "2001:db8:1:2::/64",
		"[2001:db8:1:2::9]:443":         "2001:db8:1:2::/64",
		"fe80::1%eth0":                  "fe80::/64",
		"::1":                           "::/64",
		"unknown":                       "unknown",
	} {
		if got := ClientKey(in); got != want {
			t.Errorf("ClientKey(%q) = %q, want %q", in, got, want)
		}
	}
	if ClientKey("2001:db8:1:2::1") != ClientKey("2001:db8:1:2:aaaa::2") || ClientKey("2001:db8:1:2::1") == ClientKey("2001:db8:1:3::1") {
		t.Error("one /64 must be one key, two /64s two keys")
	}
}

func TestSpend(t *testing.T) {
	ctx := context.Background()
	g, _ := newGuard(t)

	t.Run("three per hour pass, the fourth is refused until the hour ends", func(t *testing.T) {
		for i := range SMSPerPhoneHour {
			if err := g.Spend(ctx, "sms-hour", SMSPerPhoneHour, time.Hour, "t1/+41790000001"); err != nil {
				t.Fatalf("use %d: %v", i+1, err)
			}
		}
		err := g.Spend(ctx, "sms-hour", SMSPerPhoneHour, time.Hour, "t1/+41790000001")
		if wait := refusedFor(t, err); !near(wait, time.Hour, 5*time.Second) {
			t.Fatalf("Retry-After %v, want about 1h", wait)
		}
	})

	t.Run("another phone has its own budget", func(t *testing.T) {
		if err := g.Spend(ctx, "sms-hour", SMSPerPhoneHour, time.Hour, "t1/+41790000002"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the budget returns with the next window", func(t *testing.T) {
		for range 2 {
			if err := g.Spend(ctx, "tenant-day", 2, 150*time.Millisecond, "t1"); err != nil {
				t.Fatal(err)
			}
		}
		refusedFor(t, g.Spend(ctx, "tenant-day", 2, 150*time.Millisecond, "t1"))
		time.Sleep(170 * time.Millisecond)
		if err := g.Spend(ctx, "tenant-day", 2, 150*time.Millisecond, "t1"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("an invalid budget is an error", func(t *testing.T) {
		if err := g.Spend(ctx, "sms", 0, time.Hour, "k"); err == nil {
			t.Fatal("limit 0 accepted")
		}
	})
}

func TestKeysHideSubjects(t *testing.T) {
	ctx := context.Background()
	g, rdb := newGuard(t)
	fail(t, g, CodePerPhone, "tenant-1/+41791234567")
	if err := g.Spend(ctx, "sms-day", SMSPerPhoneDay, 24*time.Hour, "tenant-1/+41791234567"); err != nil {
		t.Fatal(err)
	}
	names, err := rdb.Keys(ctx, g.prefix+":*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 {
		t.Fatal("no keys written")
	}
	for _, k := range names {
		if strings.Contains(k, "4179") || strings.Contains(k, "tenant-1") {
			t.Errorf("key %q shows the subject", k)
		}
	}
}

func TestConcurrentGuessing(t *testing.T) {
	ctx := context.Background()
	g, _ := newGuard(t)
	const N = 50

	// burst starts N goroutines at once; each calls try once.
	burst := func(try func()) {
		var start, done sync.WaitGroup
		start.Add(1)
		for range N {
			done.Go(func() {
				start.Wait()
				try()
			})
		}
		start.Done()
		done.Wait()
	}

	t.Run("a burst of 50 wrong guesses gets Free+1 verifications and counts Free+1 failures", func(t *testing.T) {
		r := Rule{Name: "t-burst", Free: 3, BaseDelay: time.Hour, MaxDelay: time.Hour, Hard: 20, Window: time.Hour}
		var ran atomic.Int32
		burst(func() {
			a, err := g.Begin(ctx, r, "ann")
			if err != nil {
				if tenants.ErrorCode(err) != tenants.ERateLimited {
					t.Error(err)
				}
				return
			}
			ran.Add(1)
			time.Sleep(5 * time.Millisecond) // the verification
			if err := a.Failed(ctx); err != nil {
				t.Error(err)
			}
		})
		if got := int(ran.Load()); got != r.Free+1 {
			t.Fatalf("%d verifications ran, want Free+1 = %d", got, r.Free+1)
		}
		n, wait, err := g.Peek(ctx, r, "ann")
		if err != nil || n != r.Free+1 || !near(wait, time.Hour, 5*time.Second) {
			t.Fatalf("Peek = %d, %v, %v; want %d failures, about 1h", n, wait, err, r.Free+1)
		}
	})

	t.Run("bursts as each lockout ends get one verification each and do not spend the hard limit", func(t *testing.T) {
		r := Rule{Name: "t-bursts", Free: 1, BaseDelay: 250 * time.Millisecond, MaxDelay: 250 * time.Millisecond, Hard: 6, Window: time.Minute}
		fail(t, g, r, "bob")
		for round := 1; round <= 3; round++ {
			_, wait, err := g.Peek(ctx, r, "bob")
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(wait + 5*time.Millisecond)
			var ran atomic.Int32
			burst(func() {
				a, err := g.Begin(ctx, r, "bob")
				if err != nil {
					return
				}
				ran.Add(1)
				if err := a.Failed(ctx); err != nil {
					t.Error(err)
				}
			})
			n, _, err := g.Peek(ctx, r, "bob")
			if err != nil || ran.Load() != 1 || n != 1+round {
				t.Fatalf("round %d: %d verifications, %d failures counted (%v); want 1 and %d", round, ran.Load(), n, err, 1+round)
			}
		}
	})

	t.Run("50 guessers in a loop never exceed Hard and run one at a time in the delays", func(t *testing.T) {
		r := Rule{Name: "t-loop", Free: 3, BaseDelay: 50 * time.Millisecond, MaxDelay: 100 * time.Millisecond, Hard: 10, Window: time.Minute}
		var ran, inFlight, delayed, maxInFlight, maxDelayed atomic.Int32
		raise := func(m *atomic.Int32, v int32) {
			for {
				old := m.Load()
				if v <= old || m.CompareAndSwap(old, v) {
					return
				}
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		var wg sync.WaitGroup
		for range N {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					a, err := g.Begin(ctx, r, "carol")
					if errors.Is(err, ErrHardLimit) {
						return
					}
					if err != nil {
						time.Sleep(5 * time.Millisecond)
						continue
					}
					ran.Add(1)
					raise(&maxInFlight, inFlight.Add(1))
					if a.n > r.Free {
						raise(&maxDelayed, delayed.Add(1))
					}
					time.Sleep(time.Millisecond) // the verification, well under BaseDelay
					if a.n > r.Free {
						delayed.Add(-1)
					}
					inFlight.Add(-1)
					if err := a.Failed(ctx); err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
		if got := int(ran.Load()); got != r.Hard {
			t.Fatalf("%d verifications ran, want exactly Hard = %d", got, r.Hard)
		}
		if got := int(maxInFlight.Load()); got > r.Free+1 {
			t.Fatalf("%d verifications ran at once, want at most Free+1 = %d", got, r.Free+1)
		}
		if got := maxDelayed.Load(); got > 1 {
			t.Fatalf("%d verifications past the free failures ran at once, want 1", got)
		}
	})
}

// TestGuessingMath computes the package doc's numbers from the rules.
func TestGuessingMath(t *testing.T) {
	week := 7 * 24 * time.Hour

	// 2FA codes: 5 tries per code; ≤ 10 failures per 24 h window per phone,
	// a week touching at most 8 windows.
	if CodeTries.Hard != 5 || CodePerPhone.Hard != 10 || CodePerPhone.Window != 24*time.Hour {
		t.Fatalf("2FA rules changed: update the package doc")
	}
	perCode := float64(CodeTries.Hard) / 1e6
	windows := float64(week/CodePerPhone.Window) + 1
	perWeek := float64(CodePerPhone.Hard) * windows / 1e6
	if perCode != 5e-6 || perWeek != 8e-5 {
		t.Errorf("2FA: %g per code, %g a week; the doc says 5e-6 and 8e-5", perCode, perWeek)
	}

	// PINs: 10 guesses among at most 9,900 allowed PINs.
	if p := float64(PIN.Hard) / 9900; math.Abs(p-1.0e-3) > 0.02e-3 {
		t.Errorf("PIN: %g, the doc says 1.0e-3", p)
	}

	// Booking codes: guesses a week at one box × 50 live codes / 10^d.
	boxWeek := float64(BoxCooldown.Hard) * float64(week/BoxCooldown.Window)
	if boxWeek != 13440 {
		t.Errorf("box: %g guesses a week, the doc says 13,440", boxWeek)
	}
	p := func(digits int) float64 { return boxWeek * 50 / math.Pow10(digits) }
	if p(BookingCodeDigits) >= 1e-4 || p(BookingCodeDigits-1) < 1e-4 {
		t.Errorf("BookingCodeDigits = %d is not the shortest length under 1e-4: %g at %d digits, %g at %d",
			BookingCodeDigits, p(BookingCodeDigits-1), BookingCodeDigits-1, p(BookingCodeDigits), BookingCodeDigits)
	}
	if BookingCodeDigits < 9 {
		t.Error("the issue asks for 9 digits or more")
	}
	t.Logf("2FA %.1e/code %.1e/week; PIN %.2e; booking 9 digits %.2e, 10 digits %.2e a week", perCode, perWeek, float64(PIN.Hard)/9900, p(9), p(10))
}

// hashTag is the part of a key Redis Cluster hashes: the first {…} with
// something in it, else the whole key.
func hashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// TestKeysShareHashSlot: the Lua scripts and Succeeded's DEL touch a
// subject's counter and lock together, which Redis Cluster allows only
// within one hash slot (CROSSSLOT otherwise); distinct subjects and rules
// spread over slots.
func TestKeysShareHashSlot(t *testing.T) {
	g := &Guard{prefix: "keyrelay:guard"}
	seen := map[string]bool{}
	for _, r := range []Rule{LoginAccount, CodePerPhone} {
		for _, subject := range []string{"tenant-1/+41791234567", "tenant-1/+41791234568"} {
			k := g.keysFor("count", r.Name, subject)
			if hashTag(k.full) != hashTag(k.lock) || hashTag(k.full) == k.full {
				t.Fatalf("%s: counter %q and lock %q do not share a hash tag", r.Name, k.full, k.lock)
			}
			if seen[hashTag(k.full)] {
				t.Fatalf("%s: tag %q shared by two subjects", r.Name, hashTag(k.full))
			}
			seen[hashTag(k.full)] = true
		}
	}
	if _, err := New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), "a{b}"); err == nil {
		t.Fatal("a prefix with braces was accepted: it would move every key to one slot")
	}
}

// Exactly one failed attempt reaches the hard limit, also when the failures
// run concurrently: the one a lock alert is sent for.
func TestReachedOnce(t *testing.T) {
	g, _ := newGuard(t)
	ctx := context.Background()
	r := Rule{Name: "reached", Free: 8, Hard: 8, Window: time.Minute}
	var reached atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := g.Begin(ctx, r, "subject")
			if err != nil {
				t.Error(err)
				return
			}
			if err := a.Failed(ctx); err != nil {
				t.Error(err)
			}
			if a.Reached() {
				reached.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := reached.Load(); n != 1 {
		t.Fatalf("%d attempts reached the limit, want exactly 1", n)
	}
}

// TestCount: counting after the check. A burst of 50 parallel wrong
// guesses gets exactly Hard outcomes through and one "reached"; then every
// outcome, a right one too, is refused until the window ends; successes
// before that leave the failures (KeepOnSuccess) or clear them; a rule with
// delays is refused; Count and Begin read one counter.
func TestCount(t *testing.T) {
	ctx := context.Background()
	g, _ := newGuard(t)

	t.Run("burst", func(t *testing.T) {
		r := Rule{Name: "t-count", Free: 20, Hard: 20, Window: time.Minute, KeepOnSuccess: true}
		var answered, reached, refusedHard atomic.Int32
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				hit, err := g.Count(ctx, r, "box", true)
				switch {
				case err == nil:
					answered.Add(1)
					if hit {
						reached.Add(1)
					}
				case errors.Is(err, ErrHardLimit) && tenants.ErrorCode(err) == tenants.ERateLimited:
					refusedHard.Add(1)
				default:
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if answered.Load() != 20 || reached.Load() != 1 || refusedHard.Load() != 30 {
			t.Fatalf("%d answered, %d reached, %d refused; want 20, 1, 30", answered.Load(), reached.Load(), refusedHard.Load())
		}
		if _, err := g.Count(ctx, r, "box", false); !errors.Is(err, ErrHardLimit) {
			t.Fatalf("a right code during the cool-down: %v, want refused", err)
		}
		if _, wait, _ := g.Peek(ctx, r, "box"); !near(wait, time.Minute, 5*time.Second) {
			t.Fatalf("refused for %v, want the window's minute", wait)
		}
	})

	t.Run("successes", func(t *testing.T) {
		keep := Rule{Name: "t-count-keep", Free: 5, Hard: 5, Window: time.Minute, KeepOnSuccess: true}
		reset := Rule{Name: "t-count-reset", Free: 5, Hard: 5, Window: time.Minute}
		for _, r := range []Rule{keep, reset} {
			for range 3 {
				if _, err := g.Count(ctx, r, "s", true); err != nil {
					t.Fatal(err)
				}
			}
			if hit, err := g.Count(ctx, r, "s", false); err != nil || hit {
				t.Fatalf("%s: success: %v %v", r.Name, hit, err)
			}
			n, _, err := g.Peek(ctx, r, "s")
			want := 3
			if !r.KeepOnSuccess {
				want = 0
			}
			if err != nil || n != want {
				t.Fatalf("%s: %d failures after a success, want %d", r.Name, n, want)
			}
		}
	})

	t.Run("shared with Begin", func(t *testing.T) {
		r := Rule{Name: "t-count-begin", Free: 2, Hard: 2, Window: time.Minute, KeepOnSuccess: true}
		fail(t, g, r, "x")
		if hit, err := g.Count(ctx, r, "x", true); err != nil || !hit {
			t.Fatalf("second failure by Count: %v %v, want reached", hit, err)
		}
		if _, err := g.Begin(ctx, r, "x"); !errors.Is(err, ErrHardLimit) {
			t.Fatalf("Begin after Count used the window up: %v", err)
		}
	})

	t.Run("delays need Begin", func(t *testing.T) {
		if _, err := g.Count(ctx, PIN, "y", true); err == nil {
			t.Fatal("Count accepted a rule with delays")
		}
	})
}
