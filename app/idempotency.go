package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"

	"github.com/keyrelay/keyrelay/tenants"
)

const (
	headerIdempotencyKey = "Idempotency-Key"
	idempotencyTTL       = 24 * time.Hour
	// defaultIdempotencyLease is how long a "still running" mark lives
	// unless the replica running the request renews it (every third of
	// it). A request cut off by a crashed replica blocks its retries this
	// long at most, not for the length of the longest request.
	defaultIdempotencyLease = 10 * time.Second
)

// The mark's value holds a random holder token, so a request only renews,
// replaces or drops its own mark, never one a retry made after its lease
// lapsed.
var (
	renewMark = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)
	// claimMark takes the key for a request: KEYS[1] is its mark, KEYS[2]
	// a day-long note that some try took it before. It answers claimBusy
	// (another try holds the mark, or the answer is there: replay),
	// claimFirst, or claimAfterEarlierTry (a try took the key before and
	// left no answer: it failed, or died, maybe after its commit).
	claimMark = redis.NewScript(`
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
if redis.call('SET', KEYS[2], '1', 'PX', ARGV[3], 'GET') then
  return 2
end
return 1`)
	dropMark = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)
	// storeAnswer replaces the mark with the answer; also when the mark
	// lapsed and no retry has claimed the key since.
	storeAnswer = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0`)
)

// claimMark's answers.
const (
	claimBusy            = 0
	claimFirst           = 1
	claimAfterEarlierTry = 2
)

// idemRecord is what is kept per key. The response is sealed with the
// secret key: it may hold a secret shown once (a new API key).
type idemRecord struct {
	State       string `json:"state"` // pending | done
	BodyHash    string `json:"body_hash"`
	Holder      string `json:"holder,omitempty"` // pending: whose mark it is
	Status      int    `json:"status,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	Sealed      []byte `json:"sealed,omitempty"`
}

// idempotent replays the stored answer of a POST retried with the same
// Idempotency-Key and body, refuses the same key with another body (422),
// and answers 409 while the first request is still running. Keys are
// scoped to the caller's credential (anonymous callers: their address), so
// two callers never see each other's answers; on authenticated routes it
// runs after authenticate, so a credential that has since ended replays
// nothing. 5xx and 429 answers are not stored: the retry runs again.
// Keys are per request target (method and path with its query), so one
// key reused on two resources is two requests.
//
// Inside a tenant transaction the answer is stored only once the
// transaction has committed (or rolled back for a 4xx, which is final too),
// so a stored answer never describes a change that did not happen. An
// answer below 400 is also written to PostgreSQL in that transaction
// (idempotency_answers): if the replica dies between COMMIT and Redis, the
// retry that takes the key over after the lease finds it there and
// replays it instead of running the request again.
func (a *App) idempotent(c *fiber.Ctx) error {
	key := c.Get(headerIdempotencyKey)
	if key == "" {
		return c.Next()
	}
	if len(key) > 255 {
		return &tenants.Error{Code: tenants.EInvalid, Message: "Idempotency-Key must be at most 255 characters", Fields: []tenants.FieldError{{Field: headerIdempotencyKey, Message: "too long"}}}
	}
	who := credential(c)
	if who == "" {
		who = "anonymous:" + c.IP()
	}
	scope := sha256.Sum256([]byte(who))
	// The request's own target, not its route's pattern: the same key sent
	// to revoke two bookings is two requests, and the second must not get
	// the first one's answer.
	rk := sha256.Sum256(bytes.Join([][]byte{scope[:], []byte(c.Method()), []byte(c.OriginalURL()), []byte(key)}, []byte{0}))
	redisKey := "keyrelay:idem:" + hex.EncodeToString(rk[:])
	// ranKey shares redisKey's Cluster slot (its hash tag is redisKey).
	ranKey := "{" + redisKey + "}:ran"
	bh := sha256.Sum256(c.Body())
	bodyHash := hex.EncodeToString(bh[:])
	ctx := context.WithoutCancel(c.UserContext())
	_, inTx := c.Locals(afterTxKey{}).(*[]func(bool))

	holder := make([]byte, 16)
	rand.Read(holder)
	pending, _ := json.Marshal(idemRecord{State: "pending", BodyHash: bodyHash, Holder: hex.EncodeToString(holder)})
	lease := a.cfg.IdempotencyLease
	claim, err := claimMark.Run(ctx, a.redis, []string{redisKey, ranKey}, pending, lease.Milliseconds(), idempotencyTTL.Milliseconds()).Int()
	if err != nil {
		return &tenants.Error{Code: tenants.EUnavailable, Message: "idempotency store unavailable", Err: err}
	}
	if claim == claimBusy {
		return a.replay(c, redisKey, bodyHash)
	}
	release := a.holdMark(ctx, redisKey, pending, lease)
	drop := func() {
		release()
		dropMark.Run(ctx, a.redis, []string{redisKey}, pending)
	}
	defer func() {
		// A panicking handler answers 500 (the recover middleware): its
		// mark goes, and is no longer renewed.
		if r := recover(); r != nil {
			drop()
			panic(r)
		}
	}()
	store := func(status int, contentType string, sealed []byte) {
		release()
		done, _ := json.Marshal(idemRecord{State: "done", BodyHash: bodyHash, Status: status, ContentType: contentType, Sealed: sealed})
		stored, err := storeAnswer.Run(ctx, a.redis, []string{redisKey}, pending, done, idempotencyTTL.Milliseconds()).Int()
		switch {
		case err != nil:
			a.log.WarnContext(ctx, "idempotency: could not store the answer", "err", err)
		case stored == 0:
			// Only a stall longer than the lease gets here: a retry ran
			// too, and its answer is the one kept.
			a.log.WarnContext(ctx, "idempotency: the request outlived its lease; a retry ran as well")
		}
	}

	if claim == claimAfterEarlierTry && inTx {
		// An earlier try took the key and left no answer in Redis: it
		// failed, or its replica died, maybe after committing.
		earlier, found, err := readDurable(c.UserContext(), rk[:])
		switch {
		case err != nil:
			drop()
			return err
		case !found:
		case !bytes.Equal(earlier.bodyHash, bh[:]):
			drop()
			return errOtherBody()
		default:
			body, err := a.box.Open(earlier.sealed, []byte(redisKey))
			if err != nil {
				drop()
				return fmt.Errorf("idempotency: open the durable answer: %w", err)
			}
			store(earlier.status, earlier.contentType, earlier.sealed)
			return sendReplay(c, earlier.status, earlier.contentType, body)
		}
	}

	if err := c.Next(); err != nil {
		if herr := a.errorHandler(c, err); herr != nil {
			drop()
			return herr
		}
	}
	status := c.Response().StatusCode()
	if status >= 500 || status == fiber.StatusTooManyRequests {
		// Not final: a 429 says "later" (Retry-After), and a retry after
		// that wait must run, not replay the refusal for a day.
		drop()
		return nil
	}
	// Sealed now, once for both stores: the response buffer is reused once
	// the request ends.
	contentType := string(c.Response().Header.ContentType())
	sealed, serr := a.box.Seal(c.Response().Body(), []byte(redisKey))
	if status < 400 && inTx {
		if serr == nil {
			serr = keepDurable(c.UserContext(), durableAnswer{keyHash: rk[:], bodyHash: bh[:], status: status, contentType: contentType, sealed: sealed})
		}
		if serr != nil {
			drop()
			return fmt.Errorf("idempotency: keep the answer: %w", serr)
		}
	}
	finish := func(final bool) {
		if !final || serr != nil {
			drop()
			return
		}
		store(status, contentType, sealed)
	}
	if !afterTx(c, finish) {
		finish(true)
	}
	return nil
}

// durableAnswer is a row of idempotency_answers.
type durableAnswer struct {
	keyHash     []byte
	bodyHash    []byte
	status      int
	contentType string
	sealed      []byte
}

// keepDurable queues the answer's row in the request's transaction: it
// commits with the change it describes, in the COMMIT's round trip. A row
// already there (an earlier try committed, and its Redis records were
// lost) fails the commit: the retry never commits a second change.
func keepDurable(ctx context.Context, ans durableAnswer) error {
	return tenants.ExecLater(ctx, `INSERT INTO idempotency_answers (tenant_id, key_hash, body_hash, status, content_type, sealed)
		VALUES (NULLIF(current_setting('app.tenant_id', true), '')::uuid, $1, $2, $3, $4, $5)`, ans.keyHash, ans.bodyHash, ans.status, ans.contentType, ans.sealed)
}

// errAnsweredMeanwhile: the commit met the answer of an earlier try with
// the same Idempotency-Key (whose Redis records were lost): nothing of this
// try was written, and the retry replays that answer.
var errAnsweredMeanwhile = tenants.Errorf(tenants.EConflict, "a request with this Idempotency-Key has already been answered; retry to get its answer")

func answeredMeanwhile(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == "23505" && pg.ConstraintName == "idempotency_answers_pkey"
}

// readDurable reads the answer an earlier try with this key committed.
func readDurable(ctx context.Context, keyHash []byte) (durableAnswer, bool, error) {
	ans := durableAnswer{keyHash: keyHash}
	err := tenants.QueryRow(ctx, `SELECT body_hash, status, content_type, sealed FROM idempotency_answers WHERE key_hash = $1`, keyHash).
		Scan(&ans.bodyHash, &ans.status, &ans.contentType, &ans.sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return ans, false, nil
	}
	if err != nil {
		return ans, false, fmt.Errorf("idempotency: read the durable answer: %w", err)
	}
	return ans, true, nil
}

func errOtherBody() error {
	return &tenants.Error{Code: tenants.EInvalid, Message: "this Idempotency-Key was used with a different request body", Fields: []tenants.FieldError{{Field: headerIdempotencyKey, Message: "reused with a different body"}}}
}

func sendReplay(c *fiber.Ctx, status int, contentType string, body []byte) error {
	c.Set("Idempotent-Replayed", "true")
	c.Set(fiber.HeaderContentType, contentType)
	return c.Status(status).Send(body)
}

// holdMark renews the request's pending mark every third of its lease
// until the returned func is called, so that the mark outlives a slow
// request and dies soon with a crashed replica. Requests shorter than a
// third of the lease (nearly all) never renew.
func (a *App) holdMark(ctx context.Context, redisKey string, mark []byte, lease time.Duration) (release func()) {
	var mu sync.Mutex
	released := false
	var timer *time.Timer
	timer = time.AfterFunc(lease/3, func() {
		if err := renewMark.Run(ctx, a.redis, []string{redisKey}, mark, lease.Milliseconds()).Err(); err != nil {
			a.log.WarnContext(ctx, "idempotency: could not renew a running request's mark", "err", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if !released {
			timer.Reset(lease / 3)
		}
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		released = true
		timer.Stop()
	}
}

type afterTxKey struct{}

// afterTx defers fn until the request's tenant transaction has ended; fn
// learns whether the answer stands (committed, or rolled back for a 4xx).
// It reports false when the request has no such transaction.
func afterTx(c *fiber.Ctx, fn func(final bool)) bool {
	hooks, ok := c.Locals(afterTxKey{}).(*[]func(bool))
	if !ok {
		return false
	}
	*hooks = append(*hooks, fn)
	return true
}

func (a *App) replay(c *fiber.Ctx, redisKey, bodyHash string) error {
	raw, err := a.redis.Get(c.UserContext(), redisKey).Bytes()
	if errors.Is(err, redis.Nil) {
		return tenants.Errorf(tenants.EConflict, "a request with this Idempotency-Key just finished; retry")
	}
	if err != nil {
		return &tenants.Error{Code: tenants.EUnavailable, Message: "idempotency store unavailable", Err: err}
	}
	var rec idemRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return err
	}
	if rec.BodyHash != bodyHash {
		return errOtherBody()
	}
	if rec.State != "done" {
		return tenants.Errorf(tenants.EConflict, "a request with this Idempotency-Key is still in progress")
	}
	body, err := a.box.Open(rec.Sealed, []byte(redisKey))
	if err != nil {
		return err
	}
	return sendReplay(c, rec.Status, rec.ContentType, body)
}
