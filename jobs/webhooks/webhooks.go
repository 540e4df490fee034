// Package webhooks sends the deliveries that tenants/webhooks.Emit wrote:
// signed POSTs to tenants' endpoints, retried with backoff, every attempt
// recorded.
//
// Why not the outbox and the bundled webhook provider: the outbox routes a
// rendered message (subject, text, HTML) to the tenant's one provider per
// channel, while a webhook event is a JSON document for one of several
// endpoints, each with its own URL and secret, and the tenant wants to see
// each attempt's HTTP status. Fitting that in would have meant a third
// channel in outbox, per-message provider settings in delivery and an event
// wrapped as the "text" of the provider's message envelope. The signing
// scheme is the provider's own (its Sign), so receivers verify both alike.
//
// Dispatch: any replica's dispatcher claims due deliveries across tenants
// through webhook_claim (a SECURITY DEFINER function that reveals ids and
// due times only, see migrations/00012), which pushes each claimed
// delivery's due time forward by a lease. The send runs outside any
// transaction; its outcome is recorded in the tenant's scope under the
// claim token. A dispatcher that dies mid-send leaves the delivery due
// again when the lease ends: delivery is at least once, and the event id
// lets a receiver drop a duplicate.
package webhooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/plugins/providers/webhook/webhook"
	"github.com/keyrelay/keyrelay/tenants"
	hooks "github.com/keyrelay/keyrelay/tenants/webhooks"
)

// Headers of a delivery besides the signature's (webhook.HeaderTimestamp,
// webhook.HeaderSignature).
const (
	HeaderEvent    = "X-Keyrelay-Event"
	HeaderEventID  = "X-Keyrelay-Event-Id"
	HeaderDelivery = "X-Keyrelay-Delivery"
)

// Store is the tenant side of a delivery.
type Store interface {
	Claimed(ctx context.Context, id, claim uuid.UUID) (hooks.Outgoing, bool, error)
	RecordAttempt(ctx context.Context, id, claim uuid.UUID, a hooks.Attempt) error
}

// Config tunes the dispatcher.
type Config struct {
	Poll        time.Duration // how often to look for due deliveries
	Parallel    int           // sends in flight at once per process
	Timeout     time.Duration // one request, connection included
	Lease       time.Duration // a claim's life: well past Timeout
	MaxAttempts int
	BaseDelay   time.Duration // the first retry's delay; each next one doubles
	MaxDelay    time.Duration
	// AllowPrivate lets requests reach loopback and private addresses
	// (development and tests). Production refuses them at dial time.
	AllowPrivate bool
}

// DefaultConfig retries 10 times over about four hours: 30 s, 1 min, 2 min
// … capped at 2 hours between attempts.
func DefaultConfig() Config {
	return Config{Poll: time.Second, Parallel: 16, Timeout: 10 * time.Second, Lease: 2 * time.Minute,
		MaxAttempts: 10, BaseDelay: 30 * time.Second, MaxDelay: 2 * time.Hour}
}

// Dispatcher claims and sends deliveries.
type Dispatcher struct {
	db     *gorm.DB
	scope  *tenants.Scope
	store  Store
	cfg    Config
	client *http.Client
	log    *slog.Logger
	now    func() time.Time
}

// New returns a dispatcher over the application role's pool.
func New(db *gorm.DB, scope *tenants.Scope, store Store, cfg Config, log *slog.Logger) *Dispatcher {
	def := DefaultConfig()
	if cfg.Poll <= 0 {
		cfg.Poll = def.Poll
	}
	cfg.Parallel = max(cfg.Parallel, 1)
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	if cfg.Lease < cfg.Timeout+30*time.Second {
		cfg.Lease = cfg.Timeout + 30*time.Second
	}
	cfg.MaxAttempts = max(cfg.MaxAttempts, 1)
	if cfg.BaseDelay <= 0 {
		cfg.BaseDelay = def.BaseDelay
	}
	if cfg.MaxDelay < cfg.BaseDelay {
		cfg.MaxDelay = cfg.BaseDelay
	}
	return &Dispatcher{db: db, scope: scope, store: store, cfg: cfg, client: newClient(cfg), log: log, now: time.Now}
}

// errForbiddenAddress marks a destination that is not a public address.
var errForbiddenAddress = errors.New("destination is not a public address")

// newClient dials only public addresses (unless allowed otherwise), checked
// on each resolved address so that a name re-pointed at an internal host is
// refused too; ignores proxy settings (a proxy would dial past the check)
// and follows no redirect, which could lead anywhere.
func newClient(cfg Config) *http.Client {
	dialer := &net.Dialer{Timeout: cfg.Timeout, Control: func(_, address string, _ syscall.RawConn) error {
		if cfg.AllowPrivate {
			return nil
		}
		ap, err := netip.ParseAddrPort(address)
		if err != nil || !hooks.PublicAddr(ap.Addr()) {
			return errForbiddenAddress
		}
		return nil
	}}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.DialContext = dialer.DialContext
	tr.MaxIdleConnsPerHost = 4
	tr.ResponseHeaderTimeout = cfg.Timeout
	return &http.Client{Transport: tr, Timeout: cfg.Timeout, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

type claimed struct {
	TenantID uuid.UUID
	ID       uuid.UUID
	Claim    uuid.UUID
}

func (d *Dispatcher) claim(ctx context.Context, n int) ([]claimed, error) {
	var rows []claimed
	err := d.db.WithContext(ctx).Raw("SELECT tenant_id, id, claim FROM webhook_claim(?, make_interval(secs => ?))", n, d.cfg.Lease.Seconds()).Scan(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("webhooks: claim: %w", err)
	}
	return rows, nil
}

// Pass claims what is due (up to Parallel deliveries), sends it and waits
// for the outcomes; it returns how many it sent. Run is the usual way in;
// tests call Pass to step.
func (d *Dispatcher) Pass(ctx context.Context) (int, error) {
	rows, err := d.claim(ctx, d.cfg.Parallel)
	if err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	for _, r := range rows {
		wg.Add(1)
		go func() { defer wg.Done(); d.deliver(ctx, r) }()
	}
	wg.Wait()
	return len(rows), nil
}

// Run dispatches until ctx ends. Sends run concurrently, up to Parallel,
// so one slow endpoint holds one slot, not the others' deliveries.
func (d *Dispatcher) Run(ctx context.Context) error {
	slots := make(chan struct{}, d.cfg.Parallel)
	var wg sync.WaitGroup
	defer wg.Wait()
	backoff := time.Duration(0)
	for {
		free := cap(slots) - len(slots)
		more := false
		if free > 0 {
			rows, err := d.claim(ctx, free)
			switch {
			case ctx.Err() != nil:
				return nil
			case err != nil:
				backoff = min(max(backoff*2, 100*time.Millisecond), 5*time.Second)
				d.log.Warn("webhooks: claim failed; deliveries wait", "err", err, "retry_in", backoff)
			default:
				backoff = 0
				more = len(rows) == free
			}
			for _, r := range rows {
				slots <- struct{}{}
				wg.Add(1)
				go func() {
					defer func() { <-slots; wg.Done() }()
					d.deliver(ctx, r)
				}()
			}
		}
		wait := d.cfg.Poll
		if backoff > 0 {
			wait = backoff
		} else if more {
			wait = 10 * time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// recordTimeout bounds recording an outcome, which runs even when the
// dispatcher is stopping, so that a send that happened is not sent again.
const recordTimeout = 10 * time.Second

func (d *Dispatcher) deliver(ctx context.Context, r claimed) {
	var out hooks.Outgoing
	var ok bool
	err := d.scope.Do(ctx, r.TenantID, func(ctx context.Context) error {
		var err error
		out, ok, err = d.store.Claimed(ctx, r.ID, r.Claim)
		return err
	})
	if err != nil {
		d.log.Warn("webhooks: load delivery; it is tried again when its claim ends", "delivery_id", r.ID, "err", err)
		return
	}
	if !ok {
		return
	}
	var a hooks.Attempt
	if out.Disabled {
		a = hooks.Attempt{At: d.now(), Error: "endpoint disabled", Outcome: hooks.OutcomeFailed}
	} else {
		a = d.send(ctx, out)
		if ctx.Err() != nil {
			// Stopping: not the endpoint's fault. The claim lapses and the
			// delivery goes out again, with the same event id.
			return
		}
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	err = d.scope.Do(rctx, r.TenantID, func(ctx context.Context) error {
		return d.store.RecordAttempt(ctx, r.ID, r.Claim, a)
	})
	if err != nil {
		d.log.Warn("webhooks: record attempt; the delivery goes out again when its claim ends", "delivery_id", r.ID, "err", err)
	}
}

// send makes one attempt and classifies it.
func (d *Dispatcher) send(ctx context.Context, out hooks.Outgoing) hooks.Attempt {
	start := d.now()
	a := hooks.Attempt{At: start}
	n := out.Attempts + 1
	status, retryAfter, err := d.post(ctx, out)
	a.Duration, a.StatusCode = d.now().Sub(start), status
	switch {
	case err == nil && status >= 200 && status < 300:
		a.Outcome = hooks.OutcomeDelivered
		return a
	case err != nil:
		a.Error = err.Error()
		if errors.Is(err, errForbiddenAddress) {
			a.Outcome = hooks.OutcomeFailed
			return a
		}
	case status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500:
		a.Error = fmt.Sprintf("the endpoint answered HTTP %d", status)
	case status >= 300 && status < 400:
		a.Error, a.Outcome = fmt.Sprintf("the endpoint answered HTTP %d (redirects are not followed)", status), hooks.OutcomeFailed
		return a
	default:
		a.Error, a.Outcome = fmt.Sprintf("the endpoint answered HTTP %d", status), hooks.OutcomeFailed
		return a
	}
	if n >= d.cfg.MaxAttempts {
		a.Error, a.Outcome = fmt.Sprintf("gave up after %d attempts: %s", n, a.Error), hooks.OutcomeFailed
		return a
	}
	a.Outcome, a.NextAt = hooks.OutcomeRetry, d.now().Add(d.delay(n, retryAfter))
	return a
}

// delay is the wait before attempt n+1: the endpoint's Retry-After when it
// gave one, otherwise exponential backoff with jitter, within MaxDelay.
func (d *Dispatcher) delay(n int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return min(retryAfter, d.cfg.MaxDelay)
	}
	base := min(d.cfg.BaseDelay<<min(n-1, 20), d.cfg.MaxDelay)
	// Half fixed, half random: retries of many deliveries to one endpoint
	// that came back do not arrive all at once.
	return base/2 + time.Duration(rand.Int64N(int64(base/2)+1))
}

// post signs and sends out; it returns the status (0 without an answer)
// and the Retry-After of a 429 or 503.
func (d *Dispatcher) post(ctx context.Context, out hooks.Outgoing) (int, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, out.URL, bytes.NewReader(out.Payload))
	if err != nil {
		return 0, 0, errors.New("the endpoint URL cannot be used")
	}
	ts := strconv.FormatInt(d.now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "keyrelay-webhooks/1")
	req.Header.Set(HeaderEvent, out.Event)
	req.Header.Set(HeaderEventID, out.EventID.String())
	req.Header.Set("Idempotency-Key", out.EventID.String())
	req.Header.Set(HeaderDelivery, out.ID.String())
	req.Header.Set(webhook.HeaderTimestamp, ts)
	req.Header.Set(webhook.HeaderSignature, "v1="+webhook.Sign(out.Secret, ts, out.Payload))
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, 0, redact(err)
	}
	defer resp.Body.Close()
	// Read a little so the connection can be reused; the answer is not
	// kept, it may echo the request.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	var after time.Duration
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		after = retryAfter(resp.Header.Get("Retry-After"), d.now())
	}
	return resp.StatusCode, after, nil
}

// redact keeps scheme and host of a client error's URL: tenants' URLs
// often carry a secret of their own in the path or query.
func redact(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	where := "the endpoint"
	if u, perr := url.Parse(ue.URL); perr == nil && u.Host != "" {
		where = u.Scheme + "://" + u.Host
	}
	inner := ue.Err
	if errors.Is(inner, errForbiddenAddress) {
		return fmt.Errorf("%s: %w", where, errForbiddenAddress)
	}
	if ue.Timeout() {
		return fmt.Errorf("%s: no answer in time", where)
	}
	return fmt.Errorf("%s %s: %w", ue.Op, where, inner)
}

func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil && secs > 0 {
		return time.Duration(secs) * time.Second
	}
	if at, err := http.ParseTime(v); err == nil && at.After(now) {
		return at.Sub(now)
	}
	return 0
}
