package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"

	"github.com/keyrelay/keyrelay/jobs"
	"github.com/keyrelay/keyrelay/migrations/dbtest"
	"github.com/keyrelay/keyrelay/plugins/providers/httpsms/httpsms"
	"github.com/keyrelay/keyrelay/plugins/providers/webhook/webhook"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// tenantHook is a tenant's own endpoint behind the webhook provider; answer
// decides each response by the attempt number (1-based).
func tenantHook(t *testing.T, answer func(n int32) int) (*httptest.Server, *atomic.Int32) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(answer(calls.Add(1)))
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

// queueMessage writes an outbox row the way domain code does.
func (s *server) queueMessage(t *testing.T, tenantID uuid.UUID, m outbox.Message) uuid.UUID {
	t.Helper()
	var id uuid.UUID
	err := s.app.scope.Do(context.Background(), tenantID, func(ctx context.Context) error {
		var err error
		id, err = s.app.outbox.Add(ctx, m)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func (s *server) message(t *testing.T, tenantID, id uuid.UUID) outbox.Row {
	t.Helper()
	var row outbox.Row
	err := s.app.scope.Do(context.Background(), tenantID, func(ctx context.Context) error {
		var err error
		row, err = s.app.outbox.Get(ctx, id)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return row
}

func (s *server) waitStatus(t *testing.T, tenantID, id uuid.UUID, want outbox.Status) outbox.Row {
	t.Helper()
	var row outbox.Row
	waitFor(t, "message status "+string(want), 20*time.Second, func() bool {
		row = s.message(t, tenantID, id)
		return row.Status == want
	})
	return row
}

func useWebhook(t *testing.T, f tenantFixture, url string, fallback bool) {
	t.Helper()
	route := map[string]any{"provider": "webhook", "settings": map[string]string{"url": url, "signing_secret": "a-long-enough-secret-123"}}
	if fallback {
		route["fallback"] = map[string]any{"provider": "devmailbox", "settings": map[string]string{"dir": t.TempDir()}}
	}
	f.Owner.expect(t, 200, "PUT", "/api/v1/providers", map[string]any{"email": route})
}

var note = outbox.Message{Kind: "password_changed", Channel: outbox.Email, Recipient: "someone@example.com", Data: map[string]string{"name": "Someone"}}

func TestDeliveryOutcomes(t *testing.T) {
	s := startServer(t, withWorkers)
	t.Run("TemporaryRetried", func(t *testing.T) {
		f := s.signup(t)
		hook, calls := tenantHook(t, func(n int32) int {
			if n == 1 {
				return http.StatusServiceUnavailable
			}
			return http.StatusOK
		})
		useWebhook(t, f, hook.URL, false)
		id := s.queueMessage(t, f.ID, note)
		row := s.waitStatus(t, f.ID, id, outbox.Sent)
		if row.Attempts != 2 || row.Provider != "webhook" || calls.Load() != 2 {
			t.Fatalf("row = %+v, calls = %d", row, calls.Load())
		}
	})
	t.Run("PermanentFailsAtOnce", func(t *testing.T) {
		f := s.signup(t)
		hook, calls := tenantHook(t, func(int32) int { return http.StatusGone })
		useWebhook(t, f, hook.URL, false)
		id := s.queueMessage(t, f.ID, note)
		row := s.waitStatus(t, f.ID, id, outbox.Failed)
		if row.Attempts != 1 || row.Reason == "" || calls.Load() != 1 {
			t.Fatalf("row = %+v, calls = %d", row, calls.Load())
		}
		time.Sleep(1500 * time.Millisecond) // no retry comes later
		if calls.Load() != 1 {
			t.Fatalf("a permanent failure was retried (%d calls)", calls.Load())
		}
	})
	t.Run("FallbackOnce", func(t *testing.T) {
		f := s.signup(t)
		hook, calls := tenantHook(t, func(int32) int { return http.StatusBadRequest })
		useWebhook(t, f, hook.URL, true)
		id := s.queueMessage(t, f.ID, note)
		row := s.waitStatus(t, f.ID, id, outbox.Delivered) // the mailbox delivers at once
		if row.Provider != "devmailbox" || calls.Load() != 1 {
			t.Fatalf("row = %+v, webhook calls = %d", row, calls.Load())
		}
	})
	t.Run("UnknownKindFails", func(t *testing.T) {
		f := s.signup(t)
		id := s.queueMessage(t, f.ID, outbox.Message{Kind: "no_such_template", Channel: outbox.SMS, Recipient: "+14155550100"})
		row := s.waitStatus(t, f.ID, id, outbox.Failed)
		if row.Reason == "" {
			t.Fatal("no reason")
		}
	})
}

// TestDeliverySurvivesRedisOutage cuts Redis off while messages are being
// written: they wait in the outbox and all go out, once each, when Redis is
// back.
func TestDeliverySurvivesRedisOutage(t *testing.T) {
	p := dbtest.NewProxy(t, "127.0.0.1:6379")
	s := startServer(t, withWorkers, func(c *Config) { c.RedisURL = fmt.Sprintf("redis://%s/%d", p.Addr(), testRedisDB) })
	f := s.signup(t)
	p.SetDown(true)
	var ids []uuid.UUID
	for i := 0; i < 5; i++ {
		m := note
		m.Recipient = "outage-" + uuid.NewString()[:6] + "@example.com"
		ids = append(ids, s.queueMessage(t, f.ID, m))
	}
	time.Sleep(500 * time.Millisecond)
	for _, id := range ids {
		if st := s.message(t, f.ID, id).Status; st != outbox.Queued {
			t.Fatalf("status %s while Redis is down", st)
		}
	}
	p.SetDown(false)
	for _, id := range ids {
		row := s.waitStatus(t, f.ID, id, outbox.Delivered)
		if got := len(s.mailbox(t, row.Recipient)); got != 1 {
			t.Fatalf("%s received %d copies", row.Recipient, got)
		}
	}
}

// TestPluginCrashMidSend: the provider's process dies in the middle of a
// send. The host replaces it, the message is retried, it goes out once, and
// its status tells the story.
func TestPluginCrashMidSend(t *testing.T) {
	s := startServer(t, withWorkers)
	f := s.signup(t)
	dir := t.TempDir()
	f.Owner.expect(t, 200, "PUT", "/api/v1/providers", map[string]any{"email": map[string]any{"provider": "crashonce", "settings": map[string]string{"dir": dir}}})
	id := s.queueMessage(t, f.ID, note)
	row := s.waitStatus(t, f.ID, id, outbox.Sent)
	if row.Attempts != 2 || row.Provider != "crashonce" || row.ProviderMessageID != "crashonce-"+id.String() {
		t.Fatalf("row = %+v, want sent on the second attempt", row)
	}
	sent, err := os.ReadFile(filepath.Join(dir, "sent.log"))
	if err != nil {
		t.Fatal(err)
	}
	if string(sent) != id.String()+"\n" {
		t.Fatalf("the provider sent %q, want the message once", sent)
	}
}

// TestDeliveryReceipt: an SMS goes out through an HTTP gateway, which later
// calls back, signed, to say it arrived; the message moves to delivered. A
// callback with a wrong signature changes nothing.
func TestDeliveryReceipt(t *testing.T) {
	var mu sync.Mutex
	// The sign-up's login code goes through the same gateway: keep every
	// callback URL, by the message id it names.
	callbacks := map[string]string{}
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/Accounts/AC1/Messages.json" || r.ParseForm() != nil {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		cb := r.PostForm.Get("StatusCallback")
		mu.Lock()
		if u, err := url.Parse(cb); err == nil {
			callbacks[u.Query().Get(httpsms.QueryMessageID)] = cb
		}
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"sid":"SM123","status":"queued"}`))
	}))
	t.Cleanup(gw.Close)
	const token = "gateway-auth-token"
	s := startServer(t, withWorkers, func(c *Config) {
		c.DefaultProviders = fmt.Sprintf(`{"sms":{"provider":"httpsms","settings":{"base_url":%q,"account_sid":"AC1","auth_token":%q,"from":"KEYRELAY","status_callback_url":%q}},
			"email":{"provider":"devmailbox","settings":{"dir":%q}}}`, gw.URL, token, c.BaseURL+"/hooks/providers/httpsms", t.TempDir())
	})
	f := s.signup(t)
	id := s.queueMessage(t, f.ID, outbox.Message{Kind: "login_code", Channel: outbox.SMS, Recipient: "+14155550123", Priority: outbox.Critical, Data: map[string]string{"code": "424242"}})
	row := s.waitStatus(t, f.ID, id, outbox.Sent)
	if row.ProviderMessageID != "SM123" || row.Provider != "httpsms" {
		t.Fatalf("row = %+v", row)
	}
	mu.Lock()
	cb := callbacks[id.String()]
	mu.Unlock()
	u, err := url.Parse(cb)
	if err != nil || u.Query().Get(httpsms.QueryMessageID) != id.String() {
		t.Fatalf("callback URL %q does not carry the message id", cb)
	}
	form := url.Values{"MessageSid": {"SM123"}, "MessageStatus": {"delivered"}}
	post := func(sig string) int {
		req, _ := http.NewRequest("POST", s.url+u.RequestURI(), strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set(httpsms.HeaderSignature, sig)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if st := post("forged"); st != 401 {
		t.Fatalf("forged receipt: %d", st)
	}
	if got := s.message(t, f.ID, id).Status; got != outbox.Sent {
		t.Fatalf("a forged receipt moved the message to %s", got)
	}
	if st := post(httpsms.Sign(token, cb, form)); st != 204 {
		t.Fatalf("signed receipt: %d", st)
	}
	if got := s.message(t, f.ID, id); got.Status != outbox.Delivered || got.DeliveredAt == nil {
		t.Fatalf("after the receipt: %+v", got)
	}
}

// recordingHook is a tenant's webhook endpoint that counts the calls for
// each message and answers each by its recipient and the call's number for
// that message (1-based), after delay.
func recordingHook(t *testing.T, delay time.Duration, answer func(to string, n int) int) (*httptest.Server, func(id uuid.UUID) int) {
	var mu sync.Mutex
	calls := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p webhook.Payload
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		calls[p.ID]++
		n := calls[p.ID]
		mu.Unlock()
		time.Sleep(delay)
		w.WriteHeader(answer(p.To, n))
	}))
	t.Cleanup(srv.Close)
	return srv, func(id uuid.UUID) int {
		mu.Lock()
		defer mu.Unlock()
		return calls[id.String()]
	}
}

// queueMessages writes several outbox rows in one transaction, so that the
// relay sees them together and puts them in one batch.
func (s *server) queueMessages(t *testing.T, tenantID uuid.UUID, ms []outbox.Message) []uuid.UUID {
	t.Helper()
	var ids []uuid.UUID
	err := s.app.scope.Do(context.Background(), tenantID, func(ctx context.Context) error {
		for _, m := range ms {
			id, err := s.app.outbox.Add(ctx, m)
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

func to(addr string) outbox.Message {
	m := note
	m.Recipient = addr
	return m
}

// TestDeliveryBatch: messages written together travel in one batch task;
// each message's outcome is its own.
func TestDeliveryBatch(t *testing.T) {
	s := startServer(t, withWorkers)
	t.Run("OneFailureTouchesOnlyItsMessage", func(t *testing.T) {
		f := s.signup(t)
		hook, calls := recordingHook(t, 0, func(to string, n int) int {
			switch {
			case strings.HasPrefix(to, "flaky") && n == 1:
				return http.StatusServiceUnavailable
			case strings.HasPrefix(to, "gone"):
				return http.StatusGone
			}
			return http.StatusOK
		})
		useWebhook(t, f, hook.URL, false)
		ms := []outbox.Message{to("flaky@example.com"), to("gone@example.com")}
		for i := 0; i < 8; i++ {
			ms = append(ms, to(fmt.Sprintf("ok%d@example.com", i)))
		}
		ids := s.queueMessages(t, f.ID, ms)
		flaky := s.waitStatus(t, f.ID, ids[0], outbox.Sent)
		gone := s.waitStatus(t, f.ID, ids[1], outbox.Failed)
		if flaky.Attempts != 2 || calls(ids[0]) != 2 {
			t.Errorf("temporary failure: %+v after %d calls, want sent on the second", flaky, calls(ids[0]))
		}
		if gone.Attempts != 1 || gone.Reason == "" || calls(ids[1]) != 1 {
			t.Errorf("permanent failure: %+v after %d calls, want failed at once", gone, calls(ids[1]))
		}
		for _, id := range ids[2:] {
			if row := s.waitStatus(t, f.ID, id, outbox.Sent); row.Attempts != 1 {
				t.Errorf("a batch mate of the failures: %+v", row)
			}
		}
		time.Sleep(1500 * time.Millisecond) // no retry comes later
		for i, id := range ids {
			want := 1
			if i == 0 {
				want = 2
			}
			if got := calls(id); got != want {
				t.Errorf("%s: %d calls, want %d", ms[i].Recipient, got, want)
			}
		}
	})
	t.Run("DeadWorkersClaimExpires", func(t *testing.T) {
		// A worker claimed the message and died with its task; once the
		// lease is over the relay's sweep hands the message out again.
		f := s.signup(t)
		hook, calls := recordingHook(t, 0, func(string, int) int { return http.StatusOK })
		useWebhook(t, f, hook.URL, false)
		m := to("orphan@example.com")
		m.NotBefore = time.Now().Add(time.Hour) // its own task waits until then
		id := s.queueMessage(t, f.ID, m)
		waitFor(t, "relayed", 10*time.Second, func() bool {
			return ownerExec(t, "SELECT 1 FROM outbox WHERE id = $1 AND relayed_at IS NOT NULL", id) == 1
		})
		ownerExec(t, "UPDATE outbox SET not_before = NULL, claimed_by = 'dead', claim_expires_at = now() + interval '1 second' WHERE id = $1", id)
		time.Sleep(500 * time.Millisecond)
		if calls(id) != 0 {
			t.Fatal("sent while another worker's claim was live")
		}
		row := s.waitStatus(t, f.ID, id, outbox.Sent)
		if row.Attempts != 1 || calls(id) != 1 {
			t.Fatalf("row = %+v after %d calls", row, calls(id))
		}
	})
	t.Run("OverlappingBatchesSendOnce", func(t *testing.T) {
		// The relay enqueued a batch and crashed before marking its rows;
		// the next pass grouped them otherwise. Each message is in two or
		// three tasks, running at once while the provider is slow.
		f := s.signup(t)
		hook, calls := recordingHook(t, 300*time.Millisecond, func(string, int) int { return http.StatusOK })
		useWebhook(t, f, hook.URL, false)
		var ms []outbox.Message
		for i := 0; i < 12; i++ {
			ms = append(ms, to(fmt.Sprintf("overlap%d@example.com", i)))
		}
		ids := s.queueMessages(t, f.ID, ms)
		for _, part := range [][]uuid.UUID{ids[:8], ids[4:]} {
			b := jobs.DeliverBatch{TenantID: f.ID}
			for _, id := range part {
				b.Messages = append(b.Messages, jobs.Ref{ID: id})
			}
			if _, err := s.app.queue.Enqueue(asynq.NewTask(jobs.TypeDeliverBatch, b.Encode()), asynq.TaskID(b.TaskID()), asynq.Queue("default")); err != nil {
				t.Fatal(err)
			}
		}
		for _, id := range ids {
			s.waitStatus(t, f.ID, id, outbox.Sent)
		}
		// And once more, after they were sent.
		ownerExec(t, "UPDATE outbox SET relayed_at = NULL WHERE tenant_id = $1", f.ID)
		waitFor(t, "relayed again", 10*time.Second, func() bool {
			return ownerExec(t, "SELECT 1 FROM outbox WHERE tenant_id = $1 AND relayed_at IS NULL", f.ID) == 0
		})
		time.Sleep(time.Second)
		for _, id := range ids {
			if n := calls(id); n != 1 {
				t.Errorf("%s sent %d times", id, n)
			}
			if row := s.message(t, f.ID, id); row.Attempts != 1 {
				t.Errorf("%s: %d attempts recorded", id, row.Attempts)
			}
		}
	})
}
