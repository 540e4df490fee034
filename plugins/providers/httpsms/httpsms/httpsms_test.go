package httpsms

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/plugins/internal/egress"
	"github.com/keyrelay/keyrelay/plugins/sdk"
	"github.com/keyrelay/keyrelay/plugins/sdk/sdktest"
)

const (
	sid   = "AC0123456789"
	token = "tok_9f8e7d6c5b4a"
)

// gateway behaves like a hosted SMS API: basic auth, form posts,
// idempotency keys, JSON errors, and magic numbers that fail on purpose.
type gateway struct {
	mu    sync.Mutex
	byKey map[string]string // idempotency key → sid
	sent  []url.Values
}

func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fail := func(status, code int, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"code": code, "message": msg, "status": status})
	}
	user, pass, ok := r.BasicAuth()
	if !ok || user != sid || pass != token {
		fail(http.StatusUnauthorized, 20003, "Authenticate")
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != "/2010-04-01/Accounts/"+sid+"/Messages.json" {
		fail(http.StatusNotFound, 20404, "not found")
		return
	}
	if err := r.ParseForm(); err != nil {
		fail(http.StatusBadRequest, 21000, "bad form")
		return
	}
	switch to := r.PostForm.Get("To"); to {
	case "+15005550001":
		fail(http.StatusBadRequest, 21211, "Invalid 'To' Phone Number")
		return
	case "+15005550429":
		w.Header().Set("Retry-After", "17")
		fail(http.StatusTooManyRequests, 20429, "Too Many Requests")
		return
	case "+15005550500":
		fail(http.StatusInternalServerError, 20500, "Internal Server Error")
		return
	case "+15005550503":
		fail(http.StatusServiceUnavailable, 20503, "Service Unavailable")
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	key := r.Header.Get("Idempotency-Key")
	msid, seen := g.byKey[key]
	if !seen {
		msid = fmt.Sprintf("SM%032d", len(g.byKey)+1)
		g.byKey[key] = msid
		g.sent = append(g.sent, r.PostForm)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]string{"sid": msid, "status": "queued"})
}

func callback(msgID string, params url.Values, key string) sdk.InboundRequest {
	u := "https://keyrelay.example/hooks/providers/httpsms?" + QueryMessageID + "=" + msgID
	return sdk.InboundRequest{
		Method: "POST",
		URL:    u,
		Header: http.Header{HeaderSignature: {Sign(key, u, params)}, "Content-Type": {"application/x-www-form-urlencoded"}},
		Body:   []byte(params.Encode()),
	}
}

func TestConformance(t *testing.T) {
	g := &gateway{byKey: map[string]string{}}
	srv := httptest.NewServer(g)
	defer srv.Close()
	valid := map[string]string{
		SettingBaseURL:     srv.URL + "/2010-04-01",
		SettingAccountSID:  sid,
		SettingAuthToken:   token,
		SettingFrom:        "KEYRELAY",
		SettingCallbackURL: "https://keyrelay.example/hooks/providers/httpsms",
	}
	with := func(k, v string) map[string]string {
		s := map[string]string{}
		for k, v := range valid {
			s[k] = v
		}
		s[k] = v
		return s
	}
	delivered := url.Values{"MessageSid": {"SM1"}, "MessageStatus": {"delivered"}}
	failed := url.Values{"MessageSid": {"SM2"}, "MessageStatus": {"undelivered"}, "ErrorCode": {"30003"}, "ErrorMessage": {"Unreachable destination handset"}}

	sdktest.Run(t, New(egress.Policy{AllowPrivate: true}), sdktest.Options{
		ValidSettings: valid,
		InvalidSettings: []map[string]string{
			{},
			with(SettingAuthToken, ""),
			with(SettingBaseURL, "ftp://gateway.example"),
			with(SettingBaseURL, "https://user:pw@gateway.example"),
			with(SettingAccountSID, "AC1/../x"),
			with(SettingCallbackURL, "/relative"),
		},
		SecretKeys: []string{SettingAuthToken},
		Idempotent: true,
		Errors: []sdktest.ErrorCase{
			{Name: "InvalidNumberIsPermanent", Message: sdk.Message{To: "+15005550001"}, Class: sdk.ClassPermanent},
			{Name: "BadCredentialsArePermanent", Settings: with(SettingAuthToken, "wrong-token-value"), Class: sdk.ClassPermanent},
			{Name: "TooManyRequestsHonoursRetryAfter", Message: sdk.Message{To: "+15005550429"}, Class: sdk.ClassRateLimited, RetryAfter: 17 * time.Second},
			{Name: "ServerErrorIsTemporary", Message: sdk.Message{To: "+15005550500"}, Class: sdk.ClassTemporary},
			{Name: "UnavailableIsTemporary", Message: sdk.Message{To: "+15005550503"}, Class: sdk.ClassTemporary},
			{Name: "GatewayDownIsTemporary", Settings: with(SettingBaseURL, "http://127.0.0.1:1"), Class: sdk.ClassTemporary},
		},
		Receipts: []sdktest.ReceiptCase{
			{Name: "Delivered", Request: callback("msg_1", delivered, token),
				Want: sdk.ReceiptUpdate{MessageID: "msg_1", ProviderMessageID: "SM1", Status: sdk.StatusDelivered}},
			{Name: "FailedWithReason", Request: callback("msg_2", failed, token),
				Want: sdk.ReceiptUpdate{MessageID: "msg_2", ProviderMessageID: "SM2", Status: sdk.StatusFailed, Reason: "30003 Unreachable destination handset"}},
			{Name: "ErrForgedSignature", Request: callback("msg_1", delivered, "not-the-token"), Class: sdk.ClassPermanent},
			{Name: "ErrTamperedMessageID", Request: func() sdk.InboundRequest {
				r := callback("msg_1", delivered, token)
				r.URL = strings.Replace(r.URL, "msg_1", "msg_9", 1)
				return r
			}(), Class: sdk.ClassPermanent},
		},
	})

	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.sent) != 1 {
		t.Fatalf("gateway stored %d messages, want 1 (sent twice with one idempotency key)", len(g.sent))
	}
	form := g.sent[0]
	if form.Get("From") != "KEYRELAY" || form.Get("Body") != "Your code is 123456" {
		t.Errorf("form %v", form)
	}
	cb, err := url.Parse(form.Get("StatusCallback"))
	if err != nil || cb.Query().Get(QueryMessageID) == "" {
		t.Errorf("StatusCallback %q does not carry the message id", form.Get("StatusCallback"))
	}
}
