package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/plugins/internal/egress"
	"github.com/keyrelay/keyrelay/plugins/sdk"
	"github.com/keyrelay/keyrelay/plugins/sdk/sdktest"
)

const secret = "whsec_0123456789abcdef"

// receiver is a tenant's endpoint: it verifies every delivery and answers
// with the status its path asks for.
type receiver struct {
	mu       sync.Mutex
	received []Payload
	bad      int
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := Verify([]byte(secret), r.Header, body, time.Now(), 5*time.Minute); err != nil {
		rc.mu.Lock()
		rc.bad++
		rc.mu.Unlock()
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	switch r.URL.Path {
	case "/408":
		w.WriteHeader(http.StatusRequestTimeout)
	case "/429":
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
	case "/500":
		w.WriteHeader(http.StatusInternalServerError)
	case "/404":
		w.WriteHeader(http.StatusNotFound)
	case "/302":
		http.Redirect(w, r, "https://elsewhere.example/", http.StatusFound)
	default:
		var p Payload
		if err := json.Unmarshal(body, &p); err != nil || r.Header.Get("Idempotency-Key") != p.ID {
			http.Error(w, "bad payload", http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		rc.received = append(rc.received, p)
		rc.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}
}

func TestConformance(t *testing.T) {
	rc := &receiver{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	settings := func(path string) map[string]string {
		return map[string]string{SettingURL: srv.URL + path, SettingSecret: secret}
	}
	sdktest.Run(t, New(egress.Policy{AllowPrivate: true}), sdktest.Options{
		ValidSettings: settings("/hooks/keyrelay"),
		InvalidSettings: []map[string]string{
			{},
			{SettingURL: srv.URL},
			{SettingURL: srv.URL, SettingSecret: "short"},
			{SettingURL: "not a url", SettingSecret: secret},
			{SettingURL: "ftp://example.com/x", SettingSecret: secret},
			{SettingURL: "https://user:pass@example.com/x", SettingSecret: secret},
		},
		SecretKeys: []string{SettingSecret},
		Errors: []sdktest.ErrorCase{
			{Name: "Timeout408IsTemporary", Settings: settings("/408"), Class: sdk.ClassTemporary},
			{Name: "TooMany429IsRateLimited", Settings: settings("/429"), Class: sdk.ClassRateLimited, RetryAfter: 30 * time.Second},
			{Name: "Server500IsTemporary", Settings: settings("/500"), Class: sdk.ClassTemporary},
			{Name: "NotFound404IsPermanent", Settings: settings("/404"), Class: sdk.ClassPermanent},
			{Name: "RedirectIsPermanent", Settings: settings("/302"), Class: sdk.ClassPermanent},
			{Name: "WrongSecretIsPermanent", Settings: map[string]string{SettingURL: srv.URL, SettingSecret: "another-secret-value"}, Class: sdk.ClassPermanent},
			{Name: "ConnectionRefusedIsTemporary", Settings: map[string]string{SettingURL: "http://127.0.0.1:1/x", SettingSecret: secret}, Class: sdk.ClassTemporary},
		},
	})
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.received) != 2 { // one per channel
		t.Fatalf("receiver got %d deliveries, want 2", len(rc.received))
	}
	if p := rc.received[0]; p.Text != "Your code is 123456" || p.TenantID != "sdktest-tenant" {
		t.Errorf("payload %+v", p)
	}
}

func TestPrivateDestinationsRefusedByDefault(t *testing.T) {
	p := New(egress.Policy{})
	err := p.CheckConfig(context.Background(), map[string]string{SettingURL: "http://127.0.0.1/x", SettingSecret: secret})
	if !errors.Is(err, sdk.ErrPermanent) {
		t.Fatalf("http URL accepted without AllowPrivate: %v", err)
	}
	_, err = p.Send(context.Background(), sdk.Message{MessageID: "m", Channel: sdk.ChannelSMS, To: "+1",
		Settings: map[string]string{SettingURL: "https://127.0.0.1:1/hook?token=abc", SettingSecret: secret}})
	if !errors.Is(err, egress.ErrForbiddenAddress) || !errors.Is(err, sdk.ErrPermanent) {
		t.Fatalf("Send to loopback: %v, want permanent ErrForbiddenAddress", err)
	}
	if s := err.Error(); strings.Contains(s, "token=abc") || strings.Contains(s, "/hook") {
		t.Errorf("error reveals the URL: %v", err)
	}
}

func TestVerify(t *testing.T) {
	now := time.Unix(1767225600, 0)
	body := []byte(`{"id":"m1"}`)
	h := http.Header{}
	h.Set(HeaderTimestamp, "1767225600")
	h.Set(HeaderSignature, "v1=deadbeef, v1="+Sign([]byte(secret), "1767225600", body))
	if err := Verify([]byte(secret), h, body, now, time.Minute); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if err := Verify([]byte(secret), h, []byte(`{"id":"m2"}`), now, time.Minute); !errors.Is(err, ErrBadSignature) {
		t.Errorf("tampered body: %v", err)
	}
	if err := Verify([]byte(secret), h, body, now.Add(10*time.Minute), time.Minute); !errors.Is(err, ErrBadSignature) {
		t.Errorf("replayed late: %v", err)
	}
}
