// Package sdk is what a keyrelay notification provider imports.
//
// A provider is a separate program that delivers messages (SMS, email) on
// keyrelay's behalf. It implements [Provider], and [ReceiptVerifier] too if
// its service reports delivery later, then calls [Serve] from main:
//
//	func main() { sdk.Serve(myprovider.New()) }
//
// The keyrelay plugin host starts the program, verifies its checksum, and
// talks to it over gRPC (hashicorp/go-plugin). A provider keeps no secrets and
// no tenant state: the host passes the tenant's settings, decrypted, with
// every call. Every call carries a context with a deadline; a provider must
// give up when it expires, or the host counts the plugin as wedged and
// replaces its process.
//
// Failures are classified with [Temporary], [Permanent] and [RateLimited]; the
// class survives the trip to the host, which retries temporary failures,
// waits out rate limits and gives up at once on permanent ones.
//
// The package imports nothing else from keyrelay, so it can move to a module
// of its own without a change. plugins/sdk/sdktest checks a provider against
// what the host expects.
package sdk

import (
	"context"
	"net/http"
)

// Channel is the kind of address a message goes to.
type Channel string

const (
	ChannelSMS   Channel = "sms"
	ChannelEmail Channel = "email"
)

// Valid reports whether c is a channel keyrelay knows.
func (c Channel) Valid() bool { return c == ChannelSMS || c == ChannelEmail }

// Message is one notification to deliver.
type Message struct {
	// MessageID is the idempotency key, the same from the outbox row to the
	// provider: a provider that sees an id twice must not deliver twice. Pass
	// it on to the upstream service when it supports idempotency keys.
	MessageID string
	TenantID  string
	Channel   Channel
	// To is a phone number in E.164 form for SMS, an address for email.
	To      string
	Subject string
	Text    string
	HTML    string
	// Settings are the tenant's settings for this provider (API keys,
	// passwords). Never log them and never put them in an error.
	Settings map[string]string
}

// Status is where a message stands with the provider.
type Status string

const (
	// StatusSent: the provider accepted the message; delivery is not known yet.
	StatusSent Status = "sent"
	// StatusDelivered: the message reached the recipient.
	StatusDelivered Status = "delivered"
	// StatusFailed: the provider gave up on the message after accepting it.
	StatusFailed Status = "failed"
)

// Valid reports whether s is one of the statuses above.
func (s Status) Valid() bool {
	return s == StatusSent || s == StatusDelivered || s == StatusFailed
}

// Receipt is a provider's answer to a successful Send.
type Receipt struct {
	// ProviderMessageID is the provider's own id for the message; delivery
	// receipts refer to it.
	ProviderMessageID string
	// Status is StatusSent, or StatusDelivered when delivery is immediate.
	Status Status
}

// Capabilities describes a provider.
type Capabilities struct {
	// Name is the provider's name, the same as in its manifest.
	Name     string
	Channels []Channel
	// Receipts is set by the SDK, not by the provider: true when the provider
	// implements ReceiptVerifier.
	Receipts bool
}

// Supports reports whether the provider sends on ch.
func (c Capabilities) Supports(ch Channel) bool {
	for _, have := range c.Channels {
		if have == ch {
			return true
		}
	}
	return false
}

// Provider is what a plugin implements.
type Provider interface {
	// Capabilities names the provider and its channels. It must not depend on
	// settings: the host asks once, when it starts the plugin.
	Capabilities(ctx context.Context) (Capabilities, error)
	// CheckConfig validates a tenant's settings when the tenant saves them,
	// without sending anything. Refuse bad settings with a Permanent error
	// whose text says which setting is wrong (never its value).
	CheckConfig(ctx context.Context, settings map[string]string) error
	// Send delivers msg on msg.Channel with msg.Settings. Classify failures
	// with Temporary, Permanent or RateLimited; an unclassified error counts
	// as temporary.
	Send(ctx context.Context, msg Message) (Receipt, error)
}

// ReceiptVerifier is implemented by providers whose service calls back with
// delivery receipts. The host hands each inbound callback to the provider to
// check its signature and parse it.
type ReceiptVerifier interface {
	// VerifyReceipt verifies req with the tenant's settings and says which
	// message it is about. A bad signature or an unparsable body is a
	// Permanent error; the host then answers the callback with a 4xx.
	VerifyReceipt(ctx context.Context, settings map[string]string, req InboundRequest) (ReceiptUpdate, error)
}

// InboundRequest is a callback as the host received it.
type InboundRequest struct {
	Method string
	// URL is the absolute URL the caller used, query included; some services
	// sign it.
	URL    string
	Header http.Header
	Body   []byte
}

// ReceiptUpdate is what a verified delivery receipt says.
type ReceiptUpdate struct {
	// MessageID is keyrelay's id when the callback carries it (for example in
	// the callback URL); otherwise the host finds the message by
	// ProviderMessageID.
	MessageID         string
	ProviderMessageID string
	Status            Status
	// Reason explains StatusFailed in the provider's words.
	Reason string
}
