package boxsync_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/keyrelay/keyrelay/firmware/offline"
	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/bookings"
	"github.com/keyrelay/keyrelay/tenants/guard"
	"github.com/keyrelay/keyrelay/tenants/outbox"
	"github.com/keyrelay/keyrelay/tenants/secretbox"
	"github.com/keyrelay/keyrelay/tenants/webhooks"
)

// adminAlerts stands in for tenants/accounts, whose alerts are outbox
// messages to the admins: sync only needs them sent once per conflict.
type adminAlerts struct {
	mu    sync.Mutex
	kinds []string
}

func (a *adminAlerts) AlertAdmins(_ context.Context, kind string, data map[string]string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.kinds = append(a.kinds, kind+":"+data["kind"])
	return nil
}

var (
	setupOnce sync.Once
	scope     *tenants.Scope
	hooks     *webhooks.Service
	svc       *boxsync.Service
	alerts    = &adminAlerts{}
)

// setup wires the service as app does, on the application role.
func setup(t *testing.T) {
	t.Helper()
	setupOnce.Do(func() {
		db, err := gorm.Open(postgres.Open(testDB.AppURL), &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
		if err != nil {
			t.Fatal(err)
		}
		master := make([]byte, secretbox.KeySize)
		rand.Read(master)
		sb, err := secretbox.New(master)
		if err != nil {
			t.Fatal(err)
		}
		scope = tenants.NewScope(db)
		hooks = webhooks.New(sb, webhooks.Config{AllowPrivate: true})
		// The access's return reminder follows its key (tenants/bookings,
		// on its outbox); its locks need Redis, under a prefix of its own.
		locks, err := guard.New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"}), "keyrelay-test:sync:"+uuid.NewString())
		if err != nil {
			t.Fatal(err)
		}
		reminders, err := bookings.NewService(bookings.Deps{Keys: sb, Messages: outbox.New(sb), Locks: locks}, bookings.DefaultConfig("https://keys.example.com"))
		if err != nil {
			t.Fatal(err)
		}
		svc = boxsync.New(boxsync.Deps{Scope: scope, Offline: offline.New(nil, sb), Alerts: alerts, Reminders: reminders, Emit: webhooks.EmitAll})
	})
	if svc == nil {
		t.Fatal("setup failed earlier")
	}
}

// site is a tenant with one provisioned 4-bin box and a key in bins 1
// and 2.
type site struct {
	tenant, box uuid.UUID
	device      ed25519.PrivateKey
	keys        [3]uuid.UUID // by bin
	fobs        [3]string
}

func newSite(t *testing.T) *site {
	t.Helper()
	setup(t)
	s := &site{tenant: uuid.New(), box: uuid.New()}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	s.device = priv
	testDB.Exec(t, `INSERT INTO tenants (tenant_id, name) VALUES ($1, 'sync webhooks')`, s.tenant)
	testDB.Exec(t, `INSERT INTO boxes (tenant_id, id, name, model, timezone, bins) VALUES ($1, $2, 'Lobby', 'MS5', 'UTC', 4)`, s.tenant, s.box)
	testDB.Exec(t, `INSERT INTO box_credentials (tenant_id, id, box_id, public_key, secret_sealed) VALUES ($1, $2, $3, $4, 'x')`, s.tenant, uuid.New(), s.box, []byte(pub))
	for bin := 1; bin <= 2; bin++ {
		s.keys[bin], s.fobs[bin] = uuid.New(), "FOB-"+uuid.NewString()[:8]
		testDB.Exec(t, `INSERT INTO keys (tenant_id, id, name, fob_serial, home_box_id, home_bin, state, box_id, bin) VALUES ($1, $2, $3, $4, $5, $6, 'in_bin', $5, $6)`,
			s.tenant, s.keys[bin], fmt.Sprintf("Car %d", bin), s.fobs[bin], s.box, bin)
	}
	return s
}

// booking is a live one-time booking of the key in bin, ending at ends.
func (s *site) booking(t *testing.T, bin int, ends time.Time) uuid.UUID {
	t.Helper()
	id, code := uuid.New(), uuid.New()
	testDB.Exec(t, `INSERT INTO codes (tenant_id, id, code_hash, code_sealed) VALUES ($1, $2, $3, 'x')`, s.tenant, code, bytes.Repeat([]byte{byte(bin)}, 32))
	testDB.Exec(t, `INSERT INTO bookings (tenant_id, id, key_id, kind, visitor_name, visitor_email, notify_via, starts_at, ends_at, live_from, return_reminder,
			code_id, url_token_hash, url_token_sealed, created_by)
		VALUES ($1, $2, $3, 'one_time', 'Vic', 'vic@example.com', 'email', now() - interval '1 hour', $4, now() - interval '1 hour', false, $5, $6, 'x', 'test')`,
		s.tenant, id, s.keys[bin], ends, code, bytes.Repeat([]byte{byte(bin) + 100}, 32))
	return id
}

// owner runs fn as the tenant's owner in a committed transaction.
func (s *site) owner(t *testing.T, fn func(ctx context.Context) error) {
	t.Helper()
	p := tenants.Principal{TenantID: s.tenant, UserID: uuid.New(), Role: tenants.RoleOwner}
	if err := scope.Do(context.Background(), s.tenant, func(ctx context.Context) error { return fn(tenants.WithPrincipal(ctx, p)) }); err != nil {
		t.Fatal(err)
	}
}

// ingest uploads entries as the box does, in a request transaction.
func (s *site) ingest(t *testing.T, events []json.RawMessage) (boxsync.Result, error) {
	t.Helper()
	p := tenants.Principal{TenantID: s.tenant, BoxID: s.box}
	var res boxsync.Result
	err := scope.Do(context.Background(), s.tenant, func(ctx context.Context) error {
		var err error
		res, err = svc.Ingest(tenants.WithPrincipal(ctx, p), boxsync.SignBatch(s.device, s.box.String(), events))
		return err
	})
	return res, err
}

// journal writes entries as the box's journal does: seqs from 1, each
// linked to the one before.
func journal(t *testing.T, entries ...boxsync.Entry) []json.RawMessage {
	t.Helper()
	out := make([]json.RawMessage, len(entries))
	prev := ""
	for i, e := range entries {
		e.Seq, e.Prev = uint64(i+1), prev
		raw, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		out[i], prev = raw, boxsync.Link(boxsync.Hash(raw))
	}
	return out
}

type sent struct {
	Event string
	Data  map[string]any
}

// deliveries reads the tenant's webhook deliveries as stored, oldest
// first.
func (s *site) deliveries(t *testing.T) []sent {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testDB.OwnerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT event, payload FROM webhook_deliveries WHERE tenant_id = $1 ORDER BY id`, s.tenant)
	if err != nil {
		t.Fatal(err)
	}
	var out []sent
	for rows.Next() {
		var d sent
		var payload []byte
		if err := rows.Scan(&d.Event, &payload); err != nil {
			t.Fatal(err)
		}
		var env struct {
			Type string         `json:"type"`
			Data map[string]any `json:"data"`
		}
		if err := json.Unmarshal(payload, &env); err != nil || env.Type != d.Event {
			t.Fatalf("payload of %s: %s (%v)", d.Event, payload, err)
		}
		d.Data = env.Data
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// Pickups and returns a box made offline reach the tenant's webhooks when
// it syncs, as the online ones do, each once however often the box sends
// its journal.
func TestSyncWebhooks(t *testing.T) {
	s := newSite(t)
	ends := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	bookingID := s.booking(t, 1, ends)
	s.owner(t, func(ctx context.Context) error {
		if _, err := hooks.Create(ctx, webhooks.Input{URL: "http://127.0.0.1:9/hook", Events: []string{webhooks.KeyPickedUp, webhooks.KeyReturned, webhooks.SyncConflict}}); err != nil {
			return err
		}
		// Subscribed to none of sync's events: the counts below hold only
		// if it gets no delivery.
		_, err := hooks.Create(ctx, webhooks.Input{URL: "http://127.0.0.1:9/bookings", Events: []string{webhooks.BookingCreated}})
		return err
	})
	t0 := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	evs := journal(t,
		boxsync.Entry{BoxTime: t0, Kind: boxsync.KindPickup, Bin: 1, FobSerial: s.fobs[1], Method: boxsync.MethodVerifier, AccessID: bookingID.String()},
		boxsync.Entry{BoxTime: t0.Add(time.Minute), Kind: boxsync.KindDropoff, Bin: 3, FobSerial: s.fobs[1]},
		boxsync.Entry{BoxTime: t0.Add(2 * time.Minute), Kind: boxsync.KindPickup, Bin: 2, FobSerial: s.fobs[2], Method: boxsync.MethodBackup},
		boxsync.Entry{BoxTime: t0.Add(3 * time.Minute), Kind: boxsync.KindDropoff, Bin: 2, FobSerial: s.fobs[2]},
		// Key 1 moved from bin 3 to bin 4: no return.
		boxsync.Entry{BoxTime: t0.Add(4 * time.Minute), Kind: boxsync.KindDropoff, Bin: 4, FobSerial: s.fobs[1]},
		// Key 2 taken twice: both pickups happened, one is a conflict.
		boxsync.Entry{BoxTime: t0.Add(5 * time.Minute), Kind: boxsync.KindPickup, Bin: 2, FobSerial: s.fobs[2], Method: boxsync.MethodBackup},
		boxsync.Entry{BoxTime: t0.Add(6 * time.Minute), Kind: boxsync.KindPickup, Bin: 2, FobSerial: s.fobs[2], Method: boxsync.MethodBackup},
	)
	before := time.Now().Add(-time.Second)

	t.Run("OKPickupAndReturn", func(t *testing.T) {
		if res, err := s.ingest(t, evs[:2]); err != nil || res.Stored != 2 {
			t.Fatalf("sync: %+v %v", res, err)
		}
		got := s.deliveries(t)
		if len(got) != 2 || got[0].Event != webhooks.KeyPickedUp || got[1].Event != webhooks.KeyReturned {
			t.Fatalf("deliveries %+v, want key.picked_up then key.returned", got)
		}
		up, back := got[0].Data, got[1].Data
		for _, d := range []map[string]any{up, back} {
			if d["key_id"] != s.keys[1].String() || d["box_id"] != s.box.String() || d["booking_id"] != bookingID.String() || d["offline"] != true {
				t.Errorf("data %v", d)
			}
			if at, err := time.Parse(time.RFC3339Nano, d["at"].(string)); err != nil || at.Before(before) {
				t.Errorf("at %v: the server's time of the sync (%v)", d["at"], err)
			}
		}
		if up["bin"] != float64(1) || up["seq"] != float64(1) || up["box_time"] != t0.Format(time.RFC3339) || up["due_at"] != ends.Format(time.RFC3339) {
			t.Errorf("key.picked_up data %v", up)
		}
		if back["bin"] != float64(3) || back["seq"] != float64(2) || back["key_name"] != "Car 1" || back["box_time"] != t0.Add(time.Minute).Format(time.RFC3339) {
			t.Errorf("key.returned data %v", back)
		}
	})
	t.Run("ErrReplayedEmitsNothing", func(t *testing.T) {
		if _, err := s.ingest(t, evs[:2]); tenants.ErrorCode(err) != tenants.EConflict {
			t.Fatalf("replay: %v, want a conflict", err)
		}
		if n := len(s.deliveries(t)); n != 2 {
			t.Fatalf("%d deliveries after a replay, want 2", n)
		}
	})
	t.Run("OverlapEmitsNewEntriesOnly", func(t *testing.T) {
		res, err := s.ingest(t, evs[:4])
		if err != nil || res.Stored != 2 || res.Duplicates != 2 {
			t.Fatalf("sync: %+v %v", res, err)
		}
		got := s.deliveries(t)
		if len(got) != 4 || got[2].Event != webhooks.KeyPickedUp || got[3].Event != webhooks.KeyReturned {
			t.Fatalf("deliveries %+v", got)
		}
		for i, d := range got {
			if d.Data["seq"] != float64(i+1) {
				t.Errorf("delivery %d is of seq %v", i, d.Data["seq"])
			}
		}
		if d := got[2].Data; d["key_id"] != s.keys[2].String() || d["booking_id"] != nil || d["due_at"] != nil {
			t.Errorf("pickup with a backup code: %v", d)
		}
	})
	t.Run("MovedIsNoReturnTakenTwiceIsPickedUp", func(t *testing.T) {
		res, err := s.ingest(t, evs[4:])
		if err != nil || res.Stored != 3 || len(res.Conflicts) != 1 || res.Conflicts[0].Kind != "taken_twice" {
			t.Fatalf("sync: %+v %v", res, err)
		}
		all := s.deliveries(t)
		if len(all) != 7 {
			t.Fatalf("%d deliveries, want 7", len(all))
		}
		got := all[4:]
		if got[0].Event != webhooks.KeyPickedUp || got[1].Event != webhooks.KeyPickedUp || got[2].Event != webhooks.SyncConflict {
			t.Fatalf("deliveries %+v, want two key.picked_up then sync.conflict", got)
		}
		if got[0].Data["seq"] != float64(6) || got[1].Data["seq"] != float64(7) || got[2].Data["seq"] != "7" {
			t.Errorf("seqs %v %v %v", got[0].Data["seq"], got[1].Data["seq"], got[2].Data["seq"])
		}
	})
}
