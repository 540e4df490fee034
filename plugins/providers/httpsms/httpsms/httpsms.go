// Package httpsms is the provider for SMS gateways with an HTTP API in the
// style of the common ones (Twilio and its look-alikes):
//
//	POST {base_url}/Accounts/{account_sid}/Messages.json
//	Authorization: Basic account_sid:auth_token
//	Idempotency-Key: <message id>
//	To=+33612345678&From=KEYRELAY&Body=...&StatusCallback=...
//
//	201 {"sid": "SM…", "status": "queued"}
//
// A 4xx answer fails the message (bad number, bad credentials), except 408
// and 429; 5xx and 408 are retried; 429, and a 503 with Retry-After, wait as
// long as the gateway asks.
//
// When the setting "status_callback_url" is set, the gateway reports
// delivery to it, with keyrelay's message id added to its query. The
// gateway signs each callback with the account's auth token:
//
//	X-Signature: base64(HMAC-SHA256(auth_token, url + k1 + v1 + k2 + v2 …))
//
// over the callback URL followed by the form parameters sorted by name.
// VerifyReceipt checks it and reads MessageSid, MessageStatus and
// ErrorCode/ErrorMessage.
package httpsms

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/keyrelay/keyrelay/plugins/internal/egress"
	"github.com/keyrelay/keyrelay/plugins/sdk"
)

// Name is the provider's name in its manifest.
const Name = "httpsms"

// Settings.
const (
	SettingBaseURL     = "base_url"
	SettingAccountSID  = "account_sid"
	SettingAuthToken   = "auth_token"
	SettingFrom        = "from"
	SettingCallbackURL = "status_callback_url"
)

// HeaderSignature carries a status callback's signature.
const HeaderSignature = "X-Signature"

// QueryMessageID is the query parameter that carries keyrelay's message id
// in the status callback URL.
const QueryMessageID = "keyrelay_message_id"

// Provider sends SMS through the gateway; it implements sdk.Provider and
// sdk.ReceiptVerifier.
type Provider struct {
	policy egress.Policy
	client *http.Client
	now    func() time.Time
}

// New returns a provider whose gateway addresses obey policy; plain http is
// accepted only when policy allows private addresses (development).
func New(policy egress.Policy) *Provider {
	return &Provider{policy: policy, client: policy.HTTPClient(), now: time.Now}
}

func (p *Provider) Capabilities(context.Context) (sdk.Capabilities, error) {
	return sdk.Capabilities{Name: Name, Channels: []sdk.Channel{sdk.ChannelSMS}}, nil
}

type config struct {
	base     *url.URL
	sid      string
	token    string
	from     string
	callback *url.URL
}

func (p *Provider) parse(s map[string]string) (config, error) {
	var c config
	for _, k := range []string{SettingBaseURL, SettingAccountSID, SettingAuthToken, SettingFrom} {
		if s[k] == "" {
			return c, sdk.Permanent(fmt.Errorf("httpsms: setting %q is required", k))
		}
	}
	var err error
	if c.base, err = p.parseURL(SettingBaseURL, s[SettingBaseURL]); err != nil {
		return c, err
	}
	if strings.ContainsAny(s[SettingAccountSID], "/?#") {
		return c, sdk.Permanent(fmt.Errorf("httpsms: setting %q contains a URL delimiter", SettingAccountSID))
	}
	c.sid, c.token, c.from = s[SettingAccountSID], s[SettingAuthToken], s[SettingFrom]
	if raw := s[SettingCallbackURL]; raw != "" {
		// The gateway calls it, not us: only its form matters here.
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
			return c, sdk.Permanent(fmt.Errorf("httpsms: setting %q is not an absolute http(s) URL", SettingCallbackURL))
		}
		c.callback = u
	}
	return c, nil
}

func (p *Provider) parseURL(key, raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" {
		return nil, sdk.Permanent(fmt.Errorf("httpsms: setting %q is not an absolute URL without credentials or query", key))
	}
	if u.Scheme != "https" && !(u.Scheme == "http" && p.policy.AllowPrivate) {
		return nil, sdk.Permanent(fmt.Errorf("httpsms: setting %q must be an https URL", key))
	}
	return u, nil
}

func (p *Provider) CheckConfig(_ context.Context, settings map[string]string) error {
	_, err := p.parse(settings)
	return err
}

// apiError is the gateway's error body.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func (p *Provider) Send(ctx context.Context, msg sdk.Message) (sdk.Receipt, error) {
	c, err := p.parse(msg.Settings)
	if err != nil {
		return sdk.Receipt{}, err
	}
	form := url.Values{"To": {msg.To}, "From": {c.from}, "Body": {msg.Text}}
	if c.callback != nil {
		cb := *c.callback
		q := cb.Query()
		q.Set(QueryMessageID, msg.MessageID)
		cb.RawQuery = q.Encode()
		form.Set("StatusCallback", cb.String())
	}
	endpoint := c.base.JoinPath("Accounts", c.sid, "Messages.json")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint.String(), strings.NewReader(form.Encode()))
	if err != nil {
		return sdk.Receipt{}, sdk.Permanent(errors.New("httpsms: cannot build the request"))
	}
	req.SetBasicAuth(c.sid, c.token)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "keyrelay-httpsms/1")
	req.Header.Set("Idempotency-Key", msg.MessageID)

	resp, err := p.client.Do(req)
	if err != nil {
		return sdk.Receipt{}, egress.RequestError("httpsms", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return sdk.Receipt{}, sdk.Temporary(fmt.Errorf("httpsms: read answer: %w", err))
	}
	if err := egress.StatusError("httpsms gateway", resp, p.now()); err != nil {
		var e apiError
		if json.Unmarshal(body, &e) == nil && (e.Code != 0 || e.Message != "") {
			// Keep the class, add the gateway's own words.
			return sdk.Receipt{}, withDetail(err, fmt.Sprintf("%d %s", e.Code, truncate(e.Message, 200)))
		}
		return sdk.Receipt{}, err
	}
	var ok struct {
		SID    string `json:"sid"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal(body, &ok); err != nil || ok.SID == "" {
		// Retrying is safe: the gateway deduplicates on Idempotency-Key.
		return sdk.Receipt{}, sdk.Temporary(errors.New("httpsms: gateway accepted the message without returning its sid"))
	}
	st := sdk.StatusSent
	if ok.Status == "delivered" {
		st = sdk.StatusDelivered
	}
	return sdk.Receipt{ProviderMessageID: ok.SID, Status: st}, nil
}

// withDetail appends detail to a classified error, keeping its class and
// retry hint.
func withDetail(err error, detail string) error {
	var e *sdk.Error
	if !errors.As(err, &e) {
		return fmt.Errorf("%w: %s", err, detail)
	}
	return &sdk.Error{Class: e.Class, RetryAfter: e.RetryAfter, Err: fmt.Errorf("%w: %s", e.Err, detail)}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// ErrBadSignature: a status callback whose signature does not match.
var ErrBadSignature = errors.New("httpsms: bad callback signature")

func (p *Provider) VerifyReceipt(_ context.Context, settings map[string]string, req sdk.InboundRequest) (sdk.ReceiptUpdate, error) {
	c, err := p.parse(settings)
	if err != nil {
		return sdk.ReceiptUpdate{}, err
	}
	if req.Method != http.MethodPost {
		return sdk.ReceiptUpdate{}, sdk.Permanent(fmt.Errorf("httpsms: callback method %s, want POST", req.Method))
	}
	params, err := url.ParseQuery(string(req.Body))
	if err != nil {
		return sdk.ReceiptUpdate{}, sdk.Permanent(errors.New("httpsms: callback body is not a form"))
	}
	want := Sign(c.token, req.URL, params)
	if !hmac.Equal([]byte(req.Header.Get(HeaderSignature)), []byte(want)) {
		return sdk.ReceiptUpdate{}, sdk.Permanent(ErrBadSignature)
	}
	upd := sdk.ReceiptUpdate{ProviderMessageID: params.Get("MessageSid")}
	if u, err := url.Parse(req.URL); err == nil {
		upd.MessageID = u.Query().Get(QueryMessageID)
	}
	if upd.ProviderMessageID == "" {
		return sdk.ReceiptUpdate{}, sdk.Permanent(errors.New("httpsms: callback without MessageSid"))
	}
	switch params.Get("MessageStatus") {
	case "delivered", "read":
		upd.Status = sdk.StatusDelivered
	case "failed", "undelivered":
		upd.Status = sdk.StatusFailed
		upd.Reason = strings.TrimSpace(truncate(params.Get("ErrorCode")+" "+params.Get("ErrorMessage"), 200))
		if upd.Reason == "" {
			upd.Reason = params.Get("MessageStatus")
		}
	default:
		// queued, sending, sent…: still on its way.
		upd.Status = sdk.StatusSent
	}
	return upd, nil
}

// Sign computes a callback signature: base64 HMAC-SHA256, keyed with the
// auth token, of the full callback URL followed by each form parameter's
// name and value, sorted by name.
func Sign(authToken, callbackURL string, params url.Values) string {
	mac := hmac.New(sha256.New, []byte(authToken))
	mac.Write([]byte(callbackURL))
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		for _, v := range params[k] {
			mac.Write([]byte(k))
			mac.Write([]byte(v))
		}
	}
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}
