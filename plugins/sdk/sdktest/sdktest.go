// Package sdktest checks a provider against what the keyrelay host expects.
//
// A provider's own tests call Run with the provider and a few settings:
//
//	func TestConformance(t *testing.T) {
//		sdktest.Run(t, myprovider.New(), sdktest.Options{
//			ValidSettings:   map[string]string{"api_key": "k"},
//			InvalidSettings: []map[string]string{{}},
//			SecretKeys:      []string{"api_key"},
//		})
//	}
//
// Run serves the provider over go-plugin's real gRPC transport, in process,
// and talks to it through the same client the host uses, so what passes here
// behaves the same behind the host: it answers its capabilities, refuses bad
// settings as permanent failures, sends on each channel it declares, and its
// error classes (and retry hints) arrive intact on the other side.
package sdktest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/keyrelay/keyrelay/plugins/sdk"
)

// Options say what Run may do with the provider.
type Options struct {
	// ValidSettings must pass CheckConfig; the conformance sends use them.
	ValidSettings map[string]string
	// InvalidSettings must each fail CheckConfig with a permanent error.
	InvalidSettings []map[string]string
	// SecretKeys name settings that hold secrets: their values must never
	// appear in an error's text, which ends up in logs and statuses.
	SecretKeys []string
	// Recipients per channel for the conformance sends. Defaults:
	// "+15555550100" for SMS, "someone@example.com" for email.
	Recipients map[sdk.Channel]string
	// SkipSend skips the conformance sends (for a provider whose test cannot
	// receive them). Errors and Receipts still run.
	SkipSend bool
	// Idempotent asserts that sending one message id twice yields the same
	// receipt, as a provider that deduplicates promises.
	Idempotent bool
	// Errors are failures the test has arranged (a server answering 503, a
	// bad password…) and the class each must arrive with.
	Errors []ErrorCase
	// Receipts are delivery callbacks to verify.
	Receipts []ReceiptCase
	// Timeout bounds each call; default 10s.
	Timeout time.Duration
}

// ErrorCase is a send that must fail with a given class.
type ErrorCase struct {
	Name string
	// Settings replace ValidSettings when not nil.
	Settings map[string]string
	// Message fields left empty are filled in as for the conformance sends.
	Message sdk.Message
	Class   sdk.Class
	// RetryAfter, when not zero, is the hint a rate-limited error must carry.
	RetryAfter time.Duration
}

// ReceiptCase is a delivery callback and what verifying it must give.
type ReceiptCase struct {
	Name string
	// Settings replace ValidSettings when not nil.
	Settings map[string]string
	Request  sdk.InboundRequest
	// Want is the expected update when Class is zero.
	Want sdk.ReceiptUpdate
	// Class, when not zero, is the class the verification must fail with.
	Class sdk.Class
}

// Connect serves p over go-plugin's gRPC transport in this process and
// returns the client the host would use. The connection closes when the test
// ends.
func Connect(t testing.TB, p sdk.Provider) *sdk.GRPCClient {
	t.Helper()
	set := sdk.PluginSets(p)[sdk.ProtocolVersion]
	client, _ := plugin.TestPluginGRPCConn(t, false, set)
	// Closing the client has the server stop itself (go-plugin's Shutdown
	// call); stopping it here as well would race with that.
	t.Cleanup(func() { _ = client.Close() })
	raw, err := client.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatalf("dispense %s: %v", sdk.PluginName, err)
	}
	c, ok := raw.(*sdk.GRPCClient)
	if !ok {
		t.Fatalf("dispense %s: got %T, want *sdk.GRPCClient", sdk.PluginName, raw)
	}
	return c
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// Run checks p. See the package documentation.
func Run(t *testing.T, p sdk.Provider, opts Options) {
	t.Helper()
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	c := Connect(t, p)
	ctx := func(t *testing.T) context.Context {
		ctx, cancel := context.WithTimeout(t.Context(), opts.Timeout)
		t.Cleanup(cancel)
		return ctx
	}
	secrets := secretValues(opts)

	// Asked outside a subtest: everything below depends on it, also when
	// -run selects only some subtests.
	capsCtx, cancel := context.WithTimeout(t.Context(), opts.Timeout)
	caps, err := c.Capabilities(capsCtx)
	cancel()
	if err != nil {
		t.Fatalf("Capabilities: %v", err)
	}
	t.Run("Capabilities", func(t *testing.T) {
		if !nameRE.MatchString(caps.Name) {
			t.Errorf("name %q: want lower-case letters, digits, - or _, starting with a letter", caps.Name)
		}
		seen := map[sdk.Channel]bool{}
		for _, ch := range caps.Channels {
			if seen[ch] {
				t.Errorf("channel %q declared twice", ch)
			}
			seen[ch] = true
		}
		_, verifies := p.(sdk.ReceiptVerifier)
		if caps.Receipts != verifies {
			t.Errorf("Receipts = %v over the wire, but the provider implements ReceiptVerifier: %v", caps.Receipts, verifies)
		}
	})

	t.Run("CheckConfig", func(t *testing.T) {
		t.Run("OK", func(t *testing.T) {
			if err := c.CheckConfig(ctx(t), opts.ValidSettings); err != nil {
				t.Fatalf("CheckConfig(valid settings): %v", err)
			}
		})
		if len(opts.InvalidSettings) == 0 {
			t.Error("Options.InvalidSettings is empty: give at least one set of settings the provider must refuse")
		}
		for i, settings := range opts.InvalidSettings {
			t.Run("ErrInvalid/"+strconv.Itoa(i), func(t *testing.T) {
				err := c.CheckConfig(ctx(t), settings)
				if err == nil {
					t.Fatalf("CheckConfig accepted invalid settings #%d (keys %v)", i, keys(settings))
				}
				if !errors.Is(err, sdk.ErrPermanent) {
					t.Errorf("CheckConfig: %v: class %v, want permanent", err, sdk.ClassOf(err))
				}
				checkNoSecret(t, err, secrets)
			})
		}
	})

	if !opts.SkipSend {
		t.Run("Send", func(t *testing.T) {
			for _, ch := range caps.Channels {
				t.Run(string(ch), func(t *testing.T) {
					msg := message(opts, ch)
					rcpt, err := c.Send(ctx(t), msg)
					if err != nil {
						t.Fatalf("Send: %v", err)
					}
					if rcpt.Status != sdk.StatusSent && rcpt.Status != sdk.StatusDelivered {
						t.Errorf("receipt status %q, want sent or delivered", rcpt.Status)
					}
					if rcpt.ProviderMessageID == "" {
						t.Error("receipt has no provider message id; delivery receipts and support requests need one")
					}
					if !opts.Idempotent {
						return
					}
					again, err := c.Send(ctx(t), msg)
					if err != nil {
						t.Fatalf("Send again with the same message id: %v", err)
					}
					if again.ProviderMessageID != rcpt.ProviderMessageID {
						t.Errorf("same message id sent twice: provider ids %q then %q, want one message", rcpt.ProviderMessageID, again.ProviderMessageID)
					}
				})
			}
		})
	}

	t.Run("Send/ErrUnsupportedChannel", func(t *testing.T) {
		for _, ch := range []sdk.Channel{sdk.ChannelSMS, sdk.ChannelEmail} {
			if caps.Supports(ch) {
				continue
			}
			_, err := c.Send(ctx(t), message(opts, ch))
			if !errors.Is(err, sdk.ErrPermanent) || !errors.Is(err, sdk.ErrUnsupportedChannel) {
				t.Errorf("Send on undeclared channel %q: %v, want permanent ErrUnsupportedChannel", ch, err)
			}
		}
	})

	for _, tc := range opts.Errors {
		t.Run("Errors/"+tc.Name, func(t *testing.T) {
			msg := fill(tc.Message, opts, caps)
			if tc.Settings != nil {
				msg.Settings = tc.Settings
			}
			_, err := c.Send(ctx(t), msg)
			if err == nil {
				t.Fatal("Send succeeded, want an error")
			}
			t.Logf("Send: %v", err)
			if got := sdk.ClassOf(err); got != tc.Class {
				t.Errorf("Send: %v: class %v, want %v", err, got, tc.Class)
			}
			if tc.RetryAfter > 0 {
				var e *sdk.Error
				if !errors.As(err, &e) || e.RetryAfter != tc.RetryAfter {
					t.Errorf("Send: %v: retry after %v, want %v", err, retryAfter(err), tc.RetryAfter)
				}
			}
			checkNoSecret(t, err, secrets)
		})
	}

	if !caps.Receipts {
		t.Run("VerifyReceipt/ErrUnsupported", func(t *testing.T) {
			_, err := c.VerifyReceipt(ctx(t), opts.ValidSettings, sdk.InboundRequest{Method: "POST"})
			if !errors.Is(err, sdk.ErrPermanent) || !errors.Is(err, sdk.ErrReceiptsUnsupported) {
				t.Errorf("VerifyReceipt on a provider without receipts: %v, want permanent ErrReceiptsUnsupported", err)
			}
		})
	}
	for _, tc := range opts.Receipts {
		t.Run("VerifyReceipt/"+tc.Name, func(t *testing.T) {
			settings := opts.ValidSettings
			if tc.Settings != nil {
				settings = tc.Settings
			}
			got, err := c.VerifyReceipt(ctx(t), settings, tc.Request)
			if tc.Class != 0 {
				if err == nil {
					t.Fatalf("VerifyReceipt succeeded with %+v, want a %v error", got, tc.Class)
				}
				if sdk.ClassOf(err) != tc.Class {
					t.Errorf("VerifyReceipt: %v: class %v, want %v", err, sdk.ClassOf(err), tc.Class)
				}
				checkNoSecret(t, err, secrets)
				return
			}
			if err != nil {
				t.Fatalf("VerifyReceipt: %v", err)
			}
			if got != tc.Want {
				t.Errorf("VerifyReceipt = %+v, want %+v", got, tc.Want)
			}
		})
	}
}

func message(opts Options, ch sdk.Channel) sdk.Message {
	to := opts.Recipients[ch]
	if to == "" {
		to = "someone@example.com"
		if ch == sdk.ChannelSMS {
			to = "+15555550100"
		}
	}
	return sdk.Message{
		MessageID: NewMessageID(),
		TenantID:  "sdktest-tenant",
		Channel:   ch,
		To:        to,
		Subject:   "Your keyrelay code",
		Text:      "Your code is 123456",
		HTML:      "<p>Your code is <b>123456</b></p>",
		Settings:  opts.ValidSettings,
	}
}

// fill completes a partial message from an ErrorCase.
func fill(m sdk.Message, opts Options, caps sdk.Capabilities) sdk.Message {
	ch := m.Channel
	if ch == "" {
		ch = caps.Channels[0]
	}
	def := message(opts, ch)
	if m.MessageID == "" {
		m.MessageID = def.MessageID
	}
	if m.TenantID == "" {
		m.TenantID = def.TenantID
	}
	m.Channel = ch
	if m.To == "" {
		m.To = def.To
	}
	if m.Subject == "" {
		m.Subject = def.Subject
	}
	if m.Text == "" {
		m.Text = def.Text
	}
	if m.HTML == "" {
		m.HTML = def.HTML
	}
	if m.Settings == nil {
		m.Settings = def.Settings
	}
	return m
}

// NewMessageID returns a fresh random message id, as the outbox would.
func NewMessageID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "msg_" + hex.EncodeToString(b[:])
}

func secretValues(opts Options) []string {
	var out []string
	add := func(s map[string]string) {
		for _, k := range opts.SecretKeys {
			// Very short values would match by accident.
			if v := s[k]; len(v) >= 4 {
				out = append(out, v)
			}
		}
	}
	add(opts.ValidSettings)
	for _, s := range opts.InvalidSettings {
		add(s)
	}
	for _, tc := range opts.Errors {
		add(tc.Settings)
	}
	for _, tc := range opts.Receipts {
		add(tc.Settings)
	}
	return out
}

func checkNoSecret(t *testing.T, err error, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error text reveals the value of a secret setting: %q", strings.ReplaceAll(err.Error(), s, "<secret>"))
		}
	}
}

func retryAfter(err error) time.Duration {
	var e *sdk.Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
