// Package webhook is the provider that hands messages to a tenant's own
// system: it POSTs each message as JSON to the tenant's URL (setting "url")
// and signs it with the tenant's secret (setting "signing_secret"):
//
//	X-Keyrelay-Timestamp: 1767225600
//	X-Keyrelay-Signature: v1=<hex HMAC-SHA256 of "1767225600.<body>">
//	Idempotency-Key: <message id>
//
// The receiver recomputes the signature (Verify does it in Go), rejects a
// timestamp far from its clock to stop replays, and deduplicates on the
// message id, since a message whose answer was lost is sent again.
//
// A 2xx answer means delivered to the tenant's system; 408, 429 and 5xx are
// retried (429 and a 503 with Retry-After after the wait they ask for);
// redirects and other 4xx fail the message.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/keyrelay/keyrelay/plugins/internal/egress"
	"github.com/keyrelay/keyrelay/plugins/sdk"
)

// Name is the provider's name in its manifest.
const Name = "webhook"

// Settings.
const (
	SettingURL    = "url"
	SettingSecret = "signing_secret"
)

// Headers of a delivery.
const (
	HeaderTimestamp = "X-Keyrelay-Timestamp"
	HeaderSignature = "X-Keyrelay-Signature"
)

// MinSecretLen is the shortest signing secret accepted: shorter ones can be
// guessed from signed samples.
const MinSecretLen = 16

// Payload is the JSON body of a delivery.
type Payload struct {
	ID       string      `json:"id"`
	TenantID string      `json:"tenant_id"`
	Channel  sdk.Channel `json:"channel"`
	To       string      `json:"to"`
	Subject  string      `json:"subject,omitempty"`
	Text     string      `json:"text,omitempty"`
	HTML     string      `json:"html,omitempty"`
}

// Provider delivers to webhooks; it implements sdk.Provider.
type Provider struct {
	policy egress.Policy
	client *http.Client
	now    func() time.Time
}

// New returns a provider whose destinations obey policy. Plain http URLs
// are accepted only when policy allows private addresses (development):
// elsewhere the body, which holds access codes, would cross the network in
// clear.
func New(policy egress.Policy) *Provider {
	return &Provider{policy: policy, client: policy.HTTPClient(), now: time.Now}
}

func (p *Provider) Capabilities(context.Context) (sdk.Capabilities, error) {
	return sdk.Capabilities{Name: Name, Channels: []sdk.Channel{sdk.ChannelEmail, sdk.ChannelSMS}}, nil
}

func (p *Provider) CheckConfig(_ context.Context, settings map[string]string) error {
	_, _, err := p.settings(settings)
	return err
}

func (p *Provider) settings(s map[string]string) (*url.URL, []byte, error) {
	raw := s[SettingURL]
	if raw == "" {
		return nil, nil, sdk.Permanent(fmt.Errorf("webhook: setting %q is required", SettingURL))
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil {
		// Not err itself: url errors quote the whole URL.
		return nil, nil, sdk.Permanent(fmt.Errorf("webhook: setting %q is not an absolute URL without credentials", SettingURL))
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && p.policy.AllowPrivate:
	default:
		return nil, nil, sdk.Permanent(fmt.Errorf("webhook: setting %q must be an https URL", SettingURL))
	}
	secret := s[SettingSecret]
	if len(secret) < MinSecretLen {
		return nil, nil, sdk.Permanent(fmt.Errorf("webhook: setting %q must be at least %d characters", SettingSecret, MinSecretLen))
	}
	return u, []byte(secret), nil
}

func (p *Provider) Send(ctx context.Context, msg sdk.Message) (sdk.Receipt, error) {
	u, secret, err := p.settings(msg.Settings)
	if err != nil {
		return sdk.Receipt{}, err
	}
	body, err := json.Marshal(Payload{
		ID: msg.MessageID, TenantID: msg.TenantID, Channel: msg.Channel, To: msg.To,
		Subject: msg.Subject, Text: msg.Text, HTML: msg.HTML,
	})
	if err != nil {
		return sdk.Receipt{}, sdk.Permanent(fmt.Errorf("webhook: encode: %w", err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return sdk.Receipt{}, sdk.Permanent(errors.New("webhook: cannot build the request"))
	}
	ts := strconv.FormatInt(p.now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "keyrelay-webhook/1")
	req.Header.Set("Idempotency-Key", msg.MessageID)
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, "v1="+Sign(secret, ts, body))
	resp, err := p.client.Do(req)
	if err != nil {
		return sdk.Receipt{}, egress.RequestError("webhook", err)
	}
	defer resp.Body.Close()
	// Drain a little so the connection can be reused; the content is not ours to keep.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if err := egress.StatusError("webhook", resp, p.now()); err != nil {
		return sdk.Receipt{}, err
	}
	return sdk.Receipt{ProviderMessageID: msg.MessageID, Status: sdk.StatusSent}, nil
}

// Sign returns the hex HMAC-SHA256 of "timestamp.body" under secret, the
// value after "v1=" in X-Keyrelay-Signature.
func Sign(secret []byte, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(timestamp))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return hex.EncodeToString(mac.Sum(nil))
}

// ErrBadSignature is returned by Verify.
var ErrBadSignature = errors.New("webhook: bad signature")

// Verify checks a delivery as a receiver should: the signature must match
// and the timestamp be within tolerance of now. Several v1= values, comma
// separated, are accepted so a sender can sign with an old and a new secret
// while the receiver rotates.
func Verify(secret []byte, header http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	ts := header.Get(HeaderTimestamp)
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: missing or malformed timestamp", ErrBadSignature)
	}
	if d := now.Sub(time.Unix(secs, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: timestamp outside tolerance", ErrBadSignature)
	}
	want := Sign(secret, ts, body)
	for _, part := range strings.Split(header.Get(HeaderSignature), ",") {
		sig, ok := strings.CutPrefix(strings.TrimSpace(part), "v1=")
		if ok && hmac.Equal([]byte(sig), []byte(want)) {
			return nil
		}
	}
	return ErrBadSignature
}
