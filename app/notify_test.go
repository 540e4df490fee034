package main

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

func withWorkers(c *Config) { c.Workers = true }

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type mailboxEntry struct {
	ID, TenantID, Channel, To, Subject, Body string
}

func (s *server) mailbox(t testing.TB, to string) []mailboxEntry {
	t.Helper()
	r := s.client().expect(t, 200, "GET", "/dev/mailbox?to="+url.QueryEscape(to), nil, "Accept", "application/json")
	var raw []struct {
		ID       string `json:"id"`
		TenantID string `json:"tenant_id"`
		Channel  string `json:"channel"`
		To       string `json:"to"`
		Subject  string `json:"subject"`
		Body     string `json:"body"`
	}
	if err := json.Unmarshal(r.Body, &raw); err != nil {
		t.Fatalf("mailbox: %v: %s", err, r.Body)
	}
	out := make([]mailboxEntry, len(raw))
	for i, e := range raw {
		out[i] = mailboxEntry{e.ID, e.TenantID, e.Channel, e.To, e.Subject, e.Body}
	}
	return out
}

// TestPasswordResetEmailEndToEnd follows a reset email from the outbox row
// through the relay, the queue, the worker and the devmailbox plugin
// process, then uses the link it carries.
func TestPasswordResetEmailEndToEnd(t *testing.T) {
	s := startServer(t, withWorkers)
	f := s.signup(t)
	s.client().expect(t, 202, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": f.Email})

	var mail []mailboxEntry
	waitFor(t, "the reset email in the dev mailbox", 15*time.Second, func() bool {
		mail = s.mailbox(t, f.Email)
		return len(mail) > 0
	})
	m := mail[0]
	if m.Channel != "email" || m.Subject != "Reset your keyrelay password" || m.TenantID != f.ID.String() {
		t.Fatalf("mail = %+v", m)
	}
	_, tok, ok := strings.Cut(m.Body, "token=")
	if !ok {
		t.Fatalf("no link in %q", m.Body)
	}
	tok = strings.Fields(tok)[0]
	s.client().expect(t, 204, "POST", "/api/v1/auth/password/reset", map[string]any{"token": tok, "new_password": "mailed-reset-31"})
	s.login(t, f.Email, "mailed-reset-31")

	t.Run("StatusVisible", func(t *testing.T) {
		c := s.login(t, f.Email, "mailed-reset-31")
		var items []any
		waitFor(t, "status delivered", 10*time.Second, func() bool {
			r := c.expect(t, 200, "GET", "/api/v1/messages?status=delivered&channel=email", nil).JSON(t)
			items = r["items"].([]any)
			return len(items) >= 2 // the reset email and the "password changed" notice
		})
		msg := items[len(items)-1].(map[string]any)
		if msg["provider"] != "devmailbox" || msg["to"] != f.Email || msg["attempts"] != float64(1) || msg["kind"] != "password_reset" {
			t.Fatalf("message = %v", msg)
		}
		if strings.Contains(string(c.expect(t, 200, "GET", "/api/v1/messages", nil).Body), "token=") {
			t.Fatal("the message list reveals content")
		}
		problemOf(t, c.do(t, "GET", "/api/v1/messages?status=lost", nil), 422)
	})
	t.Run("OtherTenantSeesNothing", func(t *testing.T) {
		other := s.signup(t)
		r := other.Owner.expect(t, 200, "GET", "/api/v1/messages?limit=200", nil)
		if strings.Contains(string(r.Body), f.Email) || strings.Contains(string(r.Body), "password_reset") {
			t.Fatalf("another tenant sees this tenant's messages: %s", r.Body)
		}
	})
}

func TestDevMailboxOnlyInDevelopment(t *testing.T) {
	s := startServer(t, func(c *Config) {
		c.Env = "production"
		c.DefaultProviders = `{"sms":{"provider":"devmailbox","settings":{"dir":"/tmp/x"}},"email":{"provider":"devmailbox","settings":{"dir":"/tmp/x"}}}`
	})
	problemOf(t, s.client().do(t, "GET", "/dev/mailbox", nil), 404)
}

func TestProvidersSettings(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	t.Run("DefaultIsPlatform", func(t *testing.T) {
		r := f.Owner.expect(t, 200, "GET", "/api/v1/providers", nil).JSON(t)
		items := r["items"].([]any)
		if len(items) != 2 || items[0].(map[string]any)["platform_default"] != true {
			t.Fatalf("providers = %v", r)
		}
		if strings.Contains(string(f.Owner.do(t, "GET", "/api/v1/providers", nil).Body), s.app.cfg.mailboxDir()) {
			t.Fatal("platform settings leak to tenants")
		}
	})
	secret := "whsec-" + uuid.NewString()
	t.Run("OKSecretsWriteOnly", func(t *testing.T) {
		body := map[string]any{"email": map[string]any{"provider": "webhook", "settings": map[string]string{"url": "https://hooks.example.com/keyrelay", "signing_secret": secret},
			"fallback": map[string]any{"provider": "devmailbox", "settings": map[string]string{"dir": t.TempDir()}}}}
		r := f.Owner.expect(t, 200, "PUT", "/api/v1/providers", body)
		if strings.Contains(string(r.Body), secret) {
			t.Fatal("secret returned")
		}
		got := f.Owner.expect(t, 200, "GET", "/api/v1/providers", nil)
		if strings.Contains(string(got.Body), secret) || !strings.Contains(string(got.Body), "signing_secret") {
			t.Fatalf("GET = %s", got.Body)
		}
		if n := ownerExec(t, "SELECT 1 FROM tenant_providers WHERE position($1::bytea in settings) > 0", secret); n != 0 {
			t.Fatal("settings stored in clear")
		}
	})
	t.Run("ErrUnknownProvider", func(t *testing.T) {
		problemOf(t, f.Owner.do(t, "PUT", "/api/v1/providers", map[string]any{"sms": map[string]any{"provider": "carrier-pigeon", "settings": map[string]string{}}}), 422)
	})
	t.Run("ErrWrongChannel", func(t *testing.T) {
		problemOf(t, f.Owner.do(t, "PUT", "/api/v1/providers", map[string]any{"sms": map[string]any{"provider": "smtp", "settings": map[string]string{}}}), 422)
	})
	t.Run("ErrSettingsRefusedByPlugin", func(t *testing.T) {
		p := problemOf(t, f.Owner.do(t, "PUT", "/api/v1/providers", map[string]any{"email": map[string]any{"provider": "webhook", "settings": map[string]string{"url": "not a url"}}}), 422)
		if !strings.Contains(p["detail"].(string), "settings refused") {
			t.Fatalf("detail = %v", p["detail"])
		}
	})
	t.Run("ErrStaff", func(t *testing.T) {
		k := f.Owner.expect(t, 201, "POST", "/api/v1/api-keys", map[string]any{"name": "s", "role": "staff"}).JSON(t)["key"].(string)
		c := s.client()
		c.token = k
		problemOf(t, c.do(t, "GET", "/api/v1/providers", nil), 403)
		problemOf(t, c.do(t, "GET", "/api/v1/messages", nil), 403)
	})
}

func TestQueueDashboardForOperatorOnly(t *testing.T) {
	s := startServer(t)
	c := s.client()
	r := c.do(t, "GET", "/ops/queues", nil)
	if r.Status != 401 || r.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("anonymous: %d", r.Status)
	}
	f := s.signup(t)
	if r := f.Owner.do(t, "GET", "/ops/queues", nil); r.Status != 401 {
		t.Fatalf("a tenant owner reached the queue dashboard: %d", r.Status)
	}
	r = c.do(t, "GET", "/ops/queues/api/queues", nil, "Authorization", "Bearer "+s.app.cfg.OperatorToken)
	if r.Status != 200 {
		t.Fatalf("operator: %d %s", r.Status, r.Body)
	}
	r = c.do(t, "GET", "/ops/queues", nil, "Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("ops:"+s.app.cfg.OperatorToken)))
	if r.Status != 200 || !strings.Contains(string(r.Body), "<") {
		t.Fatalf("operator in a browser: %d", r.Status)
	}
}
