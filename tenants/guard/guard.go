package guard

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/ulule/limiter/v3"
	redisstore "github.com/ulule/limiter/v3/drivers/store/redis"

	"github.com/keyrelay/keyrelay/tenants"
)

// Rule is one brute-force counter: Free failures back to back, then one
// attempt at a time with a delay that starts at BaseDelay and doubles up to
// MaxDelay, and never more than Hard failures per Window.
type Rule struct {
	Name      string        // e.g. "login-account"; part of the Redis key: letters, digits, '-', '_', '.'
	Free      int           // failures allowed before delays start (3)
	BaseDelay time.Duration // first delay after the free failures (30s), doubling…
	MaxDelay  time.Duration // …up to this (1h)
	Hard      int           // at most this many failures per Window; then refused until the window ends (or Reset)
	Window    time.Duration // the failure counter's fixed window, from its first counted attempt

	// KeepOnSuccess makes a success end only its own attempt (it is not
	// counted, and the lock it held is released) instead of resetting the
	// counter. Use it where the subject is shared and one party's success
	// must not wipe the failures of another: a client address (an attacker
	// who signs in to an account of their own would otherwise clear the
	// address after every few guesses), a box, a phone's daily budget.
	KeepOnSuccess bool
}

// Delay is the lockout that the n-th failure in a window earns: none for
// the first Free failures, then BaseDelay, doubling, capped at MaxDelay.
func (r Rule) Delay(n int) time.Duration {
	if n <= r.Free {
		return 0
	}
	d := r.BaseDelay
	for i := r.Free + 1; i < n && d < r.MaxDelay; i++ {
		d *= 2
	}
	return min(d, r.MaxDelay)
}

func (r Rule) validate() error {
	switch {
	case !validName(r.Name):
		return fmt.Errorf("guard: rule name %q: want letters, digits, '-', '_' or '.'", r.Name)
	case r.Free < 0 || r.Hard < 1 || r.Window < time.Millisecond:
		return fmt.Errorf("guard: rule %s: want Free >= 0, Hard >= 1, Window >= 1ms", r.Name)
	case r.Free < r.Hard && (r.BaseDelay < time.Millisecond || r.MaxDelay < r.BaseDelay):
		return fmt.Errorf("guard: rule %s: want BaseDelay >= 1ms and MaxDelay >= BaseDelay", r.Name)
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// ErrHardLimit is the cause (errors.Is) of a refusal because the rule's Hard
// limit is used up for the current window, as opposed to a delay: the caller
// may tell the user to use the reset flow, or alert the owner. A lasting
// change (disabling a PIN, locking a booking) belongs in the domain's own
// records, decided on its own count.
var ErrHardLimit = errors.New("guard: hard limit reached")

// Guard counts attempts and failures in Redis. It is safe for concurrent use
// and shared by every replica through Redis.
type Guard struct {
	rdb    redis.UniversalClient // one node, Sentinel or Cluster
	prefix string

	store atomic.Value // limiter.Store, once the Lua scripts are loaded
	mu    sync.Mutex   // one store construction at a time
}

// New returns a guard whose Redis keys start with prefix (e.g.
// "keyrelay:guard"). It builds the ulule/limiter Redis store; when Redis is
// unreachable it still returns the guard, which fails closed (EUnavailable)
// and builds the store on first use once Redis is back, so an application
// can start and serve plain reads while Redis is down.
func New(rdb redis.UniversalClient, prefix string) (*Guard, error) {
	if rdb == nil {
		return nil, errors.New("guard: nil redis client")
	}
	if prefix == "" || strings.ContainsAny(prefix, "{} \t\n") {
		return nil, fmt.Errorf("guard: prefix %q: want non-empty, no braces or spaces", prefix)
	}
	g := &Guard{rdb: rdb, prefix: prefix}
	_, _ = g.limiterStore() // best effort; see above
	return g, nil
}

// limiterStore returns the ulule store, building it if needed. Concurrent
// callers do not queue behind a slow connection attempt: they fail at once.
func (g *Guard) limiterStore() (limiter.Store, error) {
	if s, ok := g.store.Load().(limiter.Store); ok {
		return s, nil
	}
	if !g.mu.TryLock() {
		return nil, errors.New("guard: connecting to redis")
	}
	defer g.mu.Unlock()
	if s, ok := g.store.Load().(limiter.Store); ok {
		return s, nil
	}
	s, err := redisstore.NewStoreWithOptions(g.rdb, limiter.StoreOptions{Prefix: g.prefix})
	if err != nil {
		return nil, err
	}
	g.store.Store(s)
	return s, nil
}

func (g *Guard) limiter(r limiter.Rate) (*limiter.Limiter, error) {
	s, err := g.limiterStore()
	if err != nil {
		return nil, unavailable(err)
	}
	return limiter.New(s, r), nil
}

// keys names a subject's Redis keys. The subject is hashed so that phone
// numbers and email addresses never appear in key names (SCAN, MONITOR,
// slow log, metrics). The hash is not a secret: a phone number can be found
// from its hash by enumeration, so Redis holds personal data all the same.
// The {…} hash tag keeps a subject's counter and lock in one cluster slot,
// as the Lua scripts need.
type keys struct {
	counter string // the ulule/limiter key, relative to the store prefix
	lock    string // absolute
	full    string // the counter's absolute key, for the Lua scripts
}

func (g *Guard) keysFor(kind, name, key string) keys {
	sum := sha256.Sum256([]byte(key))
	tag := "{" + name + ":" + hex.EncodeToString(sum[:16]) + "}"
	k := keys{counter: kind + ":" + tag, lock: g.prefix + ":lock:" + tag}
	k.full = g.prefix + ":" + k.counter // as ulule's store names it
	return k
}

func unavailable(err error) error {
	return &tenants.Error{Code: tenants.EUnavailable, Message: "attempt limits are unavailable; try again shortly", RetryAfter: 5 * time.Second, Err: err}
}

func refused(msg string, after time.Duration, cause error) error {
	e := tenants.RateLimited(msg, max(after, time.Millisecond))
	e.Err = cause
	return e
}

func ms(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

// orSecond stands in for a TTL that Redis did not report (a key that
// expired or was deleted meanwhile): try again in a second.
func orSecond(d time.Duration) time.Duration {
	if d <= 0 {
		return time.Second
	}
	return d
}

const (
	msgWait = "too many failed attempts; wait and try again"
	msgHard = "too many failed attempts; this is locked for now"
)

// The Lua scripts. Each runs atomically in Redis, in one round trip; the
// counter is ulule/limiter's key (same name, same fixed window), so Peek
// and Spend's ulule store and these scripts read one number.
var (
	// begin is Begin: refuse while the lock is held (answer {-1, its
	// TTL}) or while the window's failures are used up ({-2, the window's
	// TTL}), neither counted; else count the attempt (starting the window
	// on its first count, as ulule's INCR script does) and, past Free,
	// take the lock for the delay this attempt's failure would earn.
	// Answers {n, 0}, n being the attempt's number in the window. Being one
	// script, nothing runs between the checks and the count: no attempt is
	// ever counted over Hard or past a held lock, so nothing is taken back.
	// KEYS: lock, counter. ARGV: Hard, Free, Window ms, token, BaseDelay
	// ms, MaxDelay ms.
	begin = redis.NewScript(`
local t = redis.call('pttl', KEYS[1])
if t > 0 or t == -1 then return {-1, t} end
local c = tonumber(redis.call('get', KEYS[2]) or '0')
if c >= tonumber(ARGV[1]) then return {-2, redis.call('pttl', KEYS[2])} end
local n = redis.call('incr', KEYS[2])
if n == 1 then redis.call('pexpire', KEYS[2], ARGV[3]) end
local free = tonumber(ARGV[2])
if n > free then
  local d, mx = tonumber(ARGV[5]), tonumber(ARGV[6])
  for i = free + 1, n - 1 do
    if d >= mx then break end
    d = d * 2
  end
  if d > mx then d = mx end
  redis.call('set', KEYS[1], ARGV[4], 'PX', d)
end
return {n, 0}`)

	// count is Count: refuse while the window's failures are used up
	// ({-2, the window's TTL}), without counting; else count a failure
	// (starting the window on its first, as begin does) and answer {n, 0},
	// or for a success reset the counter, or leave it under KeepOnSuccess,
	// and answer {0, 0}. KEYS: counter. ARGV: Hard, Window ms, failed
	// (1 or 0), keep on success (1 or 0).
	count = redis.NewScript(`
local c = tonumber(redis.call('get', KEYS[1]) or '0')
if c >= tonumber(ARGV[1]) then return {-2, redis.call('pttl', KEYS[1])} end
if ARGV[3] == '1' then
  local n = redis.call('incr', KEYS[1])
  if n == 1 then redis.call('pexpire', KEYS[1], ARGV[2]) end
  return {n, 0}
end
if ARGV[4] ~= '1' then redis.call('del', KEYS[1]) end
return {0, 0}`)

	// peek reads a subject without counting: {failures, lock TTL, window
	// TTL}. KEYS: lock, counter.
	peek = redis.NewScript(`
return {tonumber(redis.call('get', KEYS[2]) or '0'), redis.call('pttl', KEYS[1]), redis.call('pttl', KEYS[2])}`)

	// extend makes the lock last at least px from now (a failure never
	// shortens a lockout). KEYS: lock. ARGV: token, px.
	extend = redis.NewScript(`
local t = redis.call('pttl', KEYS[1])
if t < tonumber(ARGV[2]) then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return 0`)

	// release ends a successful attempt under KeepOnSuccess: its increment
	// is taken back and its lock, if it still holds it, released.
	// KEYS: counter, lock. ARGV: token (empty when it held no lock).
	release = redis.NewScript(`
local v = tonumber(redis.call('get', KEYS[1]) or '0')
if v > 1 then redis.call('decr', KEYS[1]) elseif v == 1 then redis.call('del', KEYS[1]) end
if ARGV[1] ~= '' and redis.call('get', KEYS[2]) == ARGV[1] then redis.call('del', KEYS[2]) end
return 0`)
)

// Attempt is one verification that Begin allowed. Call exactly one of
// Failed or Succeeded once the secret has been checked; an attempt that is
// abandoned (crash, lost connection) stays counted as a failure and its
// lock, if any, expires on its own.
type Attempt struct {
	g     *Guard
	rule  Rule
	keys  keys
	n     int    // this attempt's number in the window (1-based)
	token string // set when the attempt holds the lock
	done  atomic.Bool
}

// Begin must be called before checking a secret. It refuses with
// tenants.RateLimited (429, Retry-After) while the subject is locked out or
// over its Hard limit (the cause is then ErrHardLimit), and with
// EUnavailable (503) when Redis fails: verification fails closed.
//
// Begin counts the attempt up front, so N parallel guesses cannot all pass a
// check made before any of them has failed; past the Free failures it also
// takes the lockout key atomically, so only one attempt at a time runs
// during the delays (see the package doc).
func (g *Guard) Begin(ctx context.Context, r Rule, key string) (*Attempt, error) {
	if err := r.validate(); err != nil {
		return nil, err
	}
	k := g.keysFor("count", r.Name, key)
	token := ""
	if r.Free < r.Hard {
		token = rand.Text() // only an attempt past Free takes the lock with it
	}
	res, err := begin.Run(ctx, g.rdb, []string{k.lock, k.full}, r.Hard, r.Free, ms(r.Window), token, ms(r.BaseDelay), ms(r.MaxDelay)).Int64Slice()
	if err != nil || len(res) != 2 {
		return nil, unavailable(fmt.Errorf("guard: begin: %v %w", res, err))
	}
	switch n, ttl := res[0], time.Duration(res[1])*time.Millisecond; {
	case n == -1:
		if ttl < 0 { // a lock without expiry does not come from here; honour it
			ttl = r.MaxDelay
		}
		return nil, refused(msgWait, ttl, nil)
	case n == -2:
		return nil, refused(msgHard, orSecond(ttl), ErrHardLimit)
	case n < 1:
		return nil, unavailable(fmt.Errorf("guard: begin answered %d", n))
	default:
		a := &Attempt{g: g, rule: r, keys: k, n: int(n)}
		if a.n > r.Free {
			a.token = token
		}
		return a, nil
	}
}

func (a *Attempt) finish() error {
	if !a.done.CompareAndSwap(false, true) {
		return errors.New("guard: attempt already finished")
	}
	return nil
}

// Failed records that the secret was wrong. The failure was already counted
// by Begin; past the free failures Failed sets the lockout this failure
// earns (never shortening a longer one).
func (a *Attempt) Failed(ctx context.Context) error {
	if err := a.finish(); err != nil {
		return err
	}
	d := a.rule.Delay(a.n)
	if d <= 0 {
		return nil
	}
	if err := extend.Run(ctx, a.g.rdb, []string{a.keys.lock}, a.token, ms(d)).Err(); err != nil {
		return unavailable(err)
	}
	return nil
}

// Reached reports whether this attempt is the one that reached the rule's
// Hard limit: exactly one failed attempt per window is, since the counter
// gives each attempt its own number and a failure is never taken back. For
// alerting once when a subject locks (a Peek after Failed would let two
// concurrent failures both see the limit).
func (a *Attempt) Reached() bool { return a.n >= a.rule.Hard }

// Succeeded records that the secret was right: it resets the subject's
// counter and lockout, or, under KeepOnSuccess, only takes back this
// attempt and releases its lock.
func (a *Attempt) Succeeded(ctx context.Context) error {
	if err := a.finish(); err != nil {
		return err
	}
	var err error
	if a.rule.KeepOnSuccess {
		err = release.Run(ctx, a.g.rdb, []string{a.keys.full, a.keys.lock}, a.token).Err()
	} else {
		err = a.g.rdb.Del(ctx, a.keys.full, a.keys.lock).Err()
	}
	if err != nil {
		return unavailable(err)
	}
	return nil
}

// Count records the outcome of a secret the caller has already checked,
// in one round trip where Begin and Failed or Succeeded take two. It is
// for rules without delays (Free >= Hard: BoxCooldown), where counting
// after the check bounds what a guesser learns exactly as counting before
// it does, provided the caller reveals the outcome only when Count
// allows it: each outcome passes through this one atomic script, which
// refuses (tenants.RateLimited, cause ErrHardLimit) once the window holds
// Hard failures, whatever the outcome, so no more than Hard failures per
// window are ever answered, however many guesses run in parallel. A rule
// with delays needs Begin: its lock lets one attempt at a time check the
// secret.
//
// reached reports that this failure is the one that used the window up:
// exactly one per window is, for alerting once.
func (g *Guard) Count(ctx context.Context, r Rule, key string, failed bool) (reached bool, err error) {
	if err := r.validate(); err != nil {
		return false, err
	}
	if r.Free < r.Hard {
		return false, fmt.Errorf("guard: rule %s has delays; use Begin", r.Name)
	}
	k := g.keysFor("count", r.Name, key)
	flag := func(b bool) int {
		if b {
			return 1
		}
		return 0
	}
	res, err := count.Run(ctx, g.rdb, []string{k.full}, r.Hard, ms(r.Window), flag(failed), flag(r.KeepOnSuccess)).Int64Slice()
	if err != nil || len(res) != 2 {
		return false, unavailable(fmt.Errorf("guard: count: %v %w", res, err))
	}
	switch n := res[0]; {
	case n == -2:
		return false, refused(msgHard, orSecond(time.Duration(res[1])*time.Millisecond), ErrHardLimit)
	case n < 0 || (failed && n < 1):
		return false, unavailable(fmt.Errorf("guard: count answered %d", n))
	default:
		return failed && int(n) >= r.Hard, nil
	}
}

// Reset clears a subject's counter and lockout, e.g. after a password reset
// or when an owner unlocks a booking.
func (g *Guard) Reset(ctx context.Context, r Rule, key string) error {
	if err := r.validate(); err != nil {
		return err
	}
	k := g.keysFor("count", r.Name, key)
	if err := g.rdb.Del(ctx, k.full, k.lock).Err(); err != nil {
		return unavailable(err)
	}
	return nil
}

// Peek reports, without counting, the subject's failures in the current
// window (attempts in progress included, at most Hard) and how long Begin
// would refuse it (0 when it would not).
func (g *Guard) Peek(ctx context.Context, r Rule, key string) (failures int, retryAfter time.Duration, err error) {
	if err := r.validate(); err != nil {
		return 0, 0, err
	}
	k := g.keysFor("count", r.Name, key)
	res, err := peek.Run(ctx, g.rdb, []string{k.lock, k.full}).Int64Slice()
	if err != nil || len(res) != 3 {
		return 0, 0, unavailable(fmt.Errorf("guard: peek: %v %w", res, err))
	}
	failures = min(int(res[0]), r.Hard)
	lock, window := time.Duration(res[1])*time.Millisecond, time.Duration(res[2])*time.Millisecond
	retryAfter = max(lock, 0)
	if res[1] == -1 { // as Begin
		retryAfter = r.MaxDelay
	}
	if failures >= r.Hard {
		retryAfter = max(retryAfter, window)
	}
	return failures, retryAfter, nil
}

// Spend counts one use of a budget that is not about failures — SMS
// sending: SMSPerPhoneHour, SMSPerPhoneDay, a tenant's daily budget — and
// refuses with tenants.RateLimited once more than limit uses fall in the
// fixed window. Refused uses count too (harmless: the window never
// extends). With several budgets for one message, a refusal by a later one
// leaves the earlier ones spent: the conservative side.
func (g *Guard) Spend(ctx context.Context, name string, limit int64, window time.Duration, key string) error {
	if !validName(name) || limit < 1 || window < time.Millisecond {
		return fmt.Errorf("guard: budget %q: want a valid name, limit >= 1, window >= 1ms", name)
	}
	lim, err := g.limiter(limiter.Rate{Period: window, Limit: limit})
	if err != nil {
		return err
	}
	k := g.keysFor("spend", name, key)
	res, err := lim.Get(ctx, k.counter)
	if err != nil {
		return unavailable(err)
	}
	if !res.Reached {
		return nil
	}
	left, err := g.rdb.PTTL(ctx, k.full).Result()
	if err != nil {
		return unavailable(err)
	}
	if left <= 0 {
		left = time.Until(time.Unix(res.Reset+1, 0))
	}
	return refused("sending limit reached; try again later", left, nil)
}
