// Package webhooks sends a tenant's own systems signed events: a booking
// created, a key picked up, a box offline.
//
// A tenant registers endpoints (an HTTPS URL, the events it wants); each
// gets a signing secret, shown once and kept sealed. Domain code calls Emit
// in the transaction of the change it reports, which writes one delivery
// per subscribed endpoint: the event exists exactly when the change
// committed. jobs/webhooks sends the deliveries, signed, retrying with
// backoff, and records every attempt here.
//
// What a receiver gets (one POST per event and endpoint, JSON):
//
//	{"id": "<event id>", "type": "key.picked_up", "created_at": "…",
//	 "tenant_id": "…", "data": {…}}
//
//	X-Keyrelay-Event-Id:  the event id (also Idempotency-Key): at-least-once
//	                      delivery means a receiver may see an event twice
//	X-Keyrelay-Timestamp: unix seconds of this attempt
//	X-Keyrelay-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>
//
// The scheme is the bundled webhook provider's (plugins/providers/webhook),
// so one receiver-side check serves both. Payloads carry ids, names and
// times, never codes, links or a visitor's contact details.
package webhooks

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// Events a tenant may subscribe to.
const (
	BookingCreated  = "booking.created"
	BookingUpdated  = "booking.updated"
	BookingReleased = "booking.released"
	BookingRevoked  = "booking.revoked"
	KeyPickedUp     = "key.picked_up"
	KeyReturned     = "key.returned"
	KeyOverdue      = "key.overdue"
	BoxOffline      = "box.offline"
	BoxPowerLost    = "box.power_lost"
	BoxBatteryLow   = "box.battery_low"
	SyncConflict    = "sync.conflict"
)

// Events lists every event, in the order the documentation gives them.
var Events = []string{BookingCreated, BookingUpdated, BookingReleased, BookingRevoked, KeyPickedUp, KeyReturned, KeyOverdue,
	BoxOffline, BoxPowerLost, BoxBatteryLow, SyncConflict}

// MaxPayload bounds one event's body: receivers must be able to take it in
// one read, and an event carries ids, not documents.
const MaxPayload = 64 << 10

// MaxEndpoints bounds a tenant's live endpoints: each event costs one
// delivery per endpoint, inside the transaction of the change.
const MaxEndpoints = 20

// Sealer encrypts signing secrets bound to their endpoint.
type Sealer interface {
	Seal(plaintext, context []byte) ([]byte, error)
	Open(sealed, context []byte) ([]byte, error)
}

// Config says which URLs may be registered.
type Config struct {
	// AllowPrivate accepts http:// URLs and private or loopback addresses
	// (development, tests); production requires https to a public host.
	AllowPrivate bool
}

// Service manages endpoints and their deliveries.
type Service struct {
	sealer Sealer
	cfg    Config
	now    func() time.Time
}

// New returns the service.
func New(s Sealer, cfg Config) *Service { return &Service{sealer: s, cfg: cfg, now: time.Now} }

// Endpoint is a stored endpoint.
type Endpoint struct {
	TenantID     uuid.UUID `gorm:"primaryKey"`
	ID           uuid.UUID `gorm:"primaryKey"`
	URL          string
	Events       json.RawMessage `gorm:"type:jsonb"`
	Description  string
	SecretSealed []byte
	CreatedBy    string
	CreatedAt    time.Time
	DisabledAt   *time.Time
}

func (Endpoint) TableName() string { return "webhook_endpoints" }

// View is an endpoint as the tenant sees it; Secret is set only in the
// answer to its creation.
type View struct {
	ID          uuid.UUID  `json:"id"`
	URL         string     `json:"url"`
	Events      []string   `json:"events"`
	Description string     `json:"description"`
	CreatedAt   time.Time  `json:"created_at"`
	DisabledAt  *time.Time `json:"disabled_at"`
	Secret      string     `json:"secret,omitempty"`
}

func viewOf(e Endpoint) View {
	v := View{ID: e.ID, URL: e.URL, Events: []string{}, Description: e.Description, CreatedAt: e.CreatedAt.UTC(), DisabledAt: utc(e.DisabledAt)}
	_ = json.Unmarshal(e.Events, &v.Events)
	if len(v.Events) == 0 {
		v.Events = slices.Clone(Events)
	}
	return v
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// Input registers an endpoint. No events means all of them.
type Input struct {
	URL         string   `json:"url"`
	Events      []string `json:"events"`
	Description string   `json:"description"`
}

func sealContext(tenantID, id uuid.UUID) []byte {
	return []byte("webhook:" + tenantID.String() + ":" + id.String())
}

// Create registers an endpoint and returns it with its signing secret, the
// only time the secret is shown.
func (s *Service) Create(ctx context.Context, in Input) (View, error) {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return View{}, err
	}
	var v tenants.Validator
	in.URL = strings.TrimSpace(in.URL)
	if msg := s.checkURL(in.URL); msg != "" {
		v.Add("url", msg)
	}
	seen := map[string]bool{}
	for _, e := range in.Events {
		if !slices.Contains(Events, e) {
			v.Add("events", fmt.Sprintf("%q is not an event (one of %s)", e, strings.Join(Events, ", ")))
			break
		}
		seen[e] = true
	}
	in.Description = strings.TrimSpace(in.Description)
	v.Check(len(in.Description) <= 200, "description", "must be at most 200 characters")
	if err := v.Err(); err != nil {
		return View{}, err
	}
	// All the events, listed one by one, is still "all": store it as the
	// empty list so that events added later reach this endpoint too.
	events := []string{}
	if len(seen) < len(Events) {
		for _, e := range Events {
			if seen[e] {
				events = append(events, e)
			}
		}
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return View{}, err
	}
	var live int64
	if err := tx.Model(&Endpoint{}).Where("disabled_at IS NULL").Count(&live).Error; err != nil {
		return View{}, fmt.Errorf("webhooks: count endpoints: %w", err)
	}
	if live >= MaxEndpoints {
		return View{}, tenants.Errorf(tenants.EConflict, "a tenant has at most %d live webhook endpoints; delete one first", MaxEndpoints)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return View{}, err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return View{}, fmt.Errorf("webhooks: secret: %w", err)
	}
	secret := "whsec_" + base64.RawURLEncoding.EncodeToString(raw)
	sealed, err := s.sealer.Seal([]byte(secret), sealContext(p.TenantID, id))
	if err != nil {
		return View{}, fmt.Errorf("webhooks: seal secret: %w", err)
	}
	evJSON, _ := json.Marshal(events)
	e := Endpoint{TenantID: p.TenantID, ID: id, URL: in.URL, Events: evJSON, Description: in.Description, SecretSealed: sealed,
		CreatedBy: p.Actor(), CreatedAt: s.now()}
	if err := tx.Create(&e).Error; err != nil {
		return View{}, fmt.Errorf("webhooks: insert endpoint: %w", err)
	}
	// The URL's host only: a path or query may carry the receiver's own secret.
	host := ""
	if u, err := url.Parse(in.URL); err == nil {
		host = u.Host
	}
	if err := audit.Record(ctx, p.Actor(), "webhook.created", "webhook:"+id.String(), map[string]string{"host": host, "events": strings.Join(events, ",")}); err != nil {
		return View{}, err
	}
	out := viewOf(e)
	out.Secret = secret
	return out, nil
}

// checkURL says what is wrong with a URL, or "".
func (s *Service) checkURL(raw string) string {
	if raw == "" {
		return "is required"
	}
	if len(raw) > 2048 {
		return "must be at most 2048 characters"
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Hostname() == "" {
		return "must be an absolute URL"
	}
	if u.User != nil {
		return "must not carry credentials (the signature authenticates keyrelay)"
	}
	if u.Fragment != "" {
		return "must not have a fragment"
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && s.cfg.AllowPrivate:
	default:
		return "must be an https URL"
	}
	if s.cfg.AllowPrivate {
		return ""
	}
	// Names are checked again when each request is dialled (a name may
	// resolve elsewhere later); a literal address is refused now, so the
	// tenant hears of it at once.
	host := u.Hostname()
	if addr, err := netip.ParseAddr(host); err == nil && !PublicAddr(addr) {
		return "must point to a public address"
	}
	if h := strings.ToLower(strings.TrimSuffix(host, ".")); h == "localhost" || strings.HasSuffix(h, ".localhost") || strings.HasSuffix(h, ".internal") || strings.HasSuffix(h, ".local") {
		return "must point to a public address"
	}
	return ""
}

// Ranges that netip's predicates do not cover but that are not the public
// internet either.
var notPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"), // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
}

// PublicAddr reports whether addr is on the public internet: not loopback,
// private, link-local (cloud metadata), multicast or reserved. The bundled
// providers' egress policy (plugins/internal/egress) draws the same line;
// that package is internal to plugins/, hence this copy.
func PublicAddr(addr netip.Addr) bool {
	addr = addr.Unmap()
	if !addr.IsValid() || addr.IsLoopback() || addr.IsPrivate() || addr.IsUnspecified() ||
		addr.IsLinkLocalUnicast() || addr.IsLinkLocalMulticast() || addr.IsInterfaceLocalMulticast() || addr.IsMulticast() {
		return false
	}
	for _, p := range notPublic {
		if p.Contains(addr) {
			return false
		}
	}
	return true
}

// List returns the tenant's endpoints, newest first, disabled ones too.
func (s *Service) List(ctx context.Context, after uuid.UUID, limit int) ([]View, error) {
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return nil, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	q := tx.Omit("secret_sealed").Order("id DESC").Limit(limit)
	if after != uuid.Nil {
		q = q.Where("id < ?", after)
	}
	var es []Endpoint
	if err := q.Find(&es).Error; err != nil {
		return nil, fmt.Errorf("webhooks: list: %w", err)
	}
	out := make([]View, len(es))
	for i, e := range es {
		out[i] = viewOf(e)
	}
	return out, nil
}

func loadEndpoint(ctx context.Context, id uuid.UUID, forUpdate bool) (Endpoint, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Endpoint{}, err
	}
	q := tx.Where("id = ?", id)
	if forUpdate {
		q = q.Clauses(lockUpdate)
	}
	var e Endpoint
	if err := q.Take(&e).Error; err != nil {
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return Endpoint{}, tenants.NotFound("webhook endpoint")
		}
		return Endpoint{}, fmt.Errorf("webhooks: load endpoint: %w", err)
	}
	return e, nil
}

// Get returns one endpoint.
func (s *Service) Get(ctx context.Context, id uuid.UUID) (View, error) {
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return View{}, err
	}
	e, err := loadEndpoint(ctx, id, false)
	if err != nil {
		return View{}, err
	}
	return viewOf(e), nil
}

// Disable stops an endpoint: no new deliveries, and those still pending
// fail. The endpoint and its history stay readable. Disabling twice is a
// no-op.
func (s *Service) Disable(ctx context.Context, id uuid.UUID) error {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return err
	}
	e, err := loadEndpoint(ctx, id, true)
	if err != nil || e.DisabledAt != nil {
		return err
	}
	tx, _ := tenants.Tx(ctx)
	now := s.now()
	if err := tx.Model(&Endpoint{}).Where("id = ?", id).Update("disabled_at", now).Error; err != nil {
		return fmt.Errorf("webhooks: disable: %w", err)
	}
	if err := tx.Exec(`UPDATE webhook_deliveries SET status = 'failed', last_error = 'endpoint disabled', claim = NULL, updated_at = ?
		WHERE endpoint_id = ? AND status = 'pending'`, now, id).Error; err != nil {
		return fmt.Errorf("webhooks: cancel pending deliveries: %w", err)
	}
	return audit.Record(ctx, p.Actor(), "webhook.disabled", "webhook:"+id.String(), nil)
}

// Envelope is the body of every delivery.
type Envelope struct {
	ID        uuid.UUID `json:"id"`
	Type      string    `json:"type"`
	CreatedAt time.Time `json:"created_at"`
	TenantID  uuid.UUID `json:"tenant_id"`
	Data      any       `json:"data"`
}

// Event is one event for EmitAll.
type Event struct {
	Type string
	Data any
}

// Emit writes event, with data, for every live endpoint of ctx's tenant
// that subscribes to it, in ctx's transaction: the deliveries commit or
// roll back with the change they report. With no subscriber it costs one
// indexed read. data must marshal to JSON and hold no secrets.
func Emit(ctx context.Context, event string, data any) error {
	return EmitAll(ctx, Event{Type: event, Data: data})
}

// EmitAll is Emit for many events at the cost of one: one read of the
// endpoints and one insert of every delivery, whatever the number of
// events. A box's synced journal reports up to 2,000 pickups and returns
// in one transaction, where a round trip each would cost more than the
// journal's own insert.
func EmitAll(ctx context.Context, events ...Event) error {
	if len(events) == 0 {
		return nil
	}
	for _, e := range events {
		if !slices.Contains(Events, e.Type) {
			return fmt.Errorf("webhooks: unknown event %q", e.Type)
		}
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	tenantID, _ := tenants.TenantOf(ctx)
	var eps []struct {
		ID     uuid.UUID
		Events json.RawMessage
	}
	if err := tx.Raw(`SELECT id, events FROM webhook_endpoints WHERE disabled_at IS NULL`).Scan(&eps).Error; err != nil {
		return fmt.Errorf("webhooks: find endpoints: %w", err)
	}
	if len(eps) == 0 {
		return nil
	}
	// An endpoint's list is what it subscribed to; empty is every event,
	// those added later included.
	subs := make([][]string, len(eps))
	for i, ep := range eps {
		if err := json.Unmarshal(ep.Events, &subs[i]); err != nil {
			return fmt.Errorf("webhooks: events of endpoint %s: %w", ep.ID, err)
		}
	}
	now := time.Now().UTC()
	var ids, endpointIDs, eventIDs, types []string
	var payloads [][]byte
	for _, e := range events {
		var to []uuid.UUID
		for i, ep := range eps {
			if len(subs[i]) == 0 || slices.Contains(subs[i], e.Type) {
				to = append(to, ep.ID)
			}
		}
		if len(to) == 0 {
			continue
		}
		eventID, err := uuid.NewV7()
		if err != nil {
			return err
		}
		body, err := json.Marshal(Envelope{ID: eventID, Type: e.Type, CreatedAt: now.Truncate(time.Millisecond), TenantID: tenantID, Data: e.Data})
		if err != nil {
			return fmt.Errorf("webhooks: encode %s: %w", e.Type, err)
		}
		if len(body) > MaxPayload {
			return fmt.Errorf("webhooks: %s payload is %d bytes, over the %d-byte bound", e.Type, len(body), MaxPayload)
		}
		for _, endpointID := range to {
			id, err := uuid.NewV7()
			if err != nil {
				return err
			}
			ids, endpointIDs, eventIDs = append(ids, id.String()), append(endpointIDs, endpointID.String()), append(eventIDs, eventID.String())
			types, payloads = append(types, e.Type), append(payloads, body)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	// unnest, not a multi-row VALUES: 2,000 events to 20 endpoints would
	// pass PostgreSQL's 65,535 parameters.
	_, err = tx.Statement.ConnPool.ExecContext(ctx, `INSERT INTO webhook_deliveries (tenant_id, id, endpoint_id, event_id, event, payload, status, next_attempt_at, created_at, updated_at)
		SELECT $1, v.id, v.endpoint_id, v.event_id, v.event, v.payload, $2, $3, $3, $3
		FROM unnest($4::uuid[], $5::uuid[], $6::uuid[], $7::text[], $8::bytea[]) AS v(id, endpoint_id, event_id, event, payload)`,
		tenantID.String(), string(Pending), now, ids, endpointIDs, eventIDs, types, payloads)
	if err != nil {
		return fmt.Errorf("webhooks: insert deliveries: %w", err)
	}
	return nil
}
