package sdk

// The plugin contract in one place: the handshake, the plugin set per
// protocol version, and the gRPC adapters on both sides of the wire.

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/keyrelay/keyrelay/plugins/sdk/providerpb"
)

// ProtocolVersion is the version of the wire contract this SDK speaks
// (providerpb, keyrelay.provider.v1). A host that adds version 2 keeps
// serving version 1 plugins; it reads the result of the negotiation from
// go-plugin's Client.NegotiatedVersion.
const ProtocolVersion = 1

// PluginName is the name the provider is dispensed under.
const PluginName = "provider"

// DefaultCallTimeout bounds a call whose context has no deadline: every call
// into a plugin must end, or a wedged plugin would hold the caller forever.
const DefaultCallTimeout = 30 * time.Second

// Handshake keeps a provider binary from being run by anything but the
// keyrelay host, and the host from running a program that is not a keyrelay
// provider. It is not a security measure; the manifest checksum is.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "KEYRELAY_PROVIDER_PLUGIN",
	MagicCookieValue: "5f0c1e5b8a2d4f7e9b3a6c1d0e8f7a2b",
}

// PluginSets returns the plugins served per protocol version. The host
// passes a nil impl; a plugin passes its provider.
func PluginSets(impl Provider) map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{
		ProtocolVersion: {PluginName: &GRPCPlugin{Impl: impl}},
	}
}

// GRPCPlugin plugs a Provider into go-plugin's gRPC transport.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Provider
}

func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	providerpb.RegisterProviderServer(s, NewGRPCServer(p.Impl))
	return nil
}

func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return NewGRPCClient(c), nil
}

// ---------------------------------------------------------------------------
// Plugin side.

// GRPCServer serves a Provider. Besides translating calls, it enforces what
// the host relies on whatever the provider does: messages on undeclared
// channels are refused, every failure leaves classified, a panic fails the
// call instead of the process, and calls that outlive their deadline are
// counted for Health.
type GRPCServer struct {
	providerpb.UnimplementedProviderServer
	impl Provider

	mu       sync.Mutex
	caps     *Capabilities
	seq      uint64
	inflight map[uint64]time.Time // call id → deadline (zero: none)
}

// NewGRPCServer wraps impl. Plugins use Serve; this is for plugins that
// assemble their own go-plugin server.
func NewGRPCServer(impl Provider) *GRPCServer {
	return &GRPCServer{impl: impl, inflight: make(map[uint64]time.Time)}
}

func (s *GRPCServer) begin(ctx context.Context) (end func()) {
	deadline, _ := ctx.Deadline()
	s.mu.Lock()
	s.seq++
	id := s.seq
	s.inflight[id] = deadline
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.inflight, id)
		s.mu.Unlock()
	}
}

// capabilities asks the provider once; they may not change while it runs.
func (s *GRPCServer) capabilities(ctx context.Context) (Capabilities, error) {
	s.mu.Lock()
	cached := s.caps
	s.mu.Unlock()
	if cached != nil {
		return *cached, nil
	}
	var caps Capabilities
	err := guard("Capabilities", func() (err error) {
		caps, err = s.impl.Capabilities(ctx)
		return err
	})
	if err != nil {
		return Capabilities{}, err
	}
	if caps.Name == "" || len(caps.Channels) == 0 {
		return Capabilities{}, Permanent(fmt.Errorf("%w: capabilities need a name and at least one channel", ErrProtocol))
	}
	for _, ch := range caps.Channels {
		if !ch.Valid() {
			return Capabilities{}, Permanent(fmt.Errorf("%w: unknown channel %q in capabilities", ErrProtocol, ch))
		}
	}
	_, caps.Receipts = s.impl.(ReceiptVerifier)
	caps.Channels = append([]Channel(nil), caps.Channels...)
	s.mu.Lock()
	s.caps = &caps
	s.mu.Unlock()
	return caps, nil
}

func (s *GRPCServer) Capabilities(ctx context.Context, _ *providerpb.CapabilitiesRequest) (*providerpb.CapabilitiesResponse, error) {
	defer s.begin(ctx)()
	caps, err := s.capabilities(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &providerpb.CapabilitiesResponse{Name: caps.Name, VerifiesReceipts: caps.Receipts}
	for _, ch := range caps.Channels {
		resp.Channels = append(resp.Channels, string(ch))
	}
	return resp, nil
}

func (s *GRPCServer) CheckConfig(ctx context.Context, req *providerpb.CheckConfigRequest) (*providerpb.CheckConfigResponse, error) {
	defer s.begin(ctx)()
	err := guard("CheckConfig", func() error { return s.impl.CheckConfig(ctx, req.GetSettings()) })
	if err != nil {
		return nil, toStatus(err)
	}
	return &providerpb.CheckConfigResponse{}, nil
}

func (s *GRPCServer) Send(ctx context.Context, req *providerpb.SendRequest) (*providerpb.SendResponse, error) {
	defer s.begin(ctx)()
	m := req.GetMessage()
	msg := Message{
		MessageID: m.GetMessageId(),
		TenantID:  m.GetTenantId(),
		Channel:   Channel(m.GetChannel()),
		To:        m.GetTo(),
		Subject:   m.GetSubject(),
		Text:      m.GetText(),
		HTML:      m.GetHtml(),
		Settings:  req.GetSettings(),
	}
	caps, err := s.capabilities(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	if !caps.Supports(msg.Channel) {
		return nil, toStatus(Permanent(fmt.Errorf("%w: %q", ErrUnsupportedChannel, msg.Channel)))
	}
	if err := validateMessage(msg); err != nil {
		return nil, toStatus(err)
	}
	var rcpt Receipt
	err = guard("Send", func() (err error) {
		rcpt, err = s.impl.Send(ctx, msg)
		return err
	})
	if err != nil {
		return nil, toStatus(err)
	}
	if rcpt.Status == "" {
		rcpt.Status = StatusSent
	}
	if rcpt.Status != StatusSent && rcpt.Status != StatusDelivered {
		return nil, toStatus(Permanent(fmt.Errorf("%w: Send returned status %q", ErrProtocol, rcpt.Status)))
	}
	return &providerpb.SendResponse{ProviderMessageId: rcpt.ProviderMessageID, Status: statusToPB(rcpt.Status)}, nil
}

func (s *GRPCServer) VerifyReceipt(ctx context.Context, req *providerpb.VerifyReceiptRequest) (*providerpb.VerifyReceiptResponse, error) {
	defer s.begin(ctx)()
	v, ok := s.impl.(ReceiptVerifier)
	if !ok {
		return nil, toStatus(Permanent(ErrReceiptsUnsupported))
	}
	in := InboundRequest{Method: req.GetMethod(), URL: req.GetUrl(), Header: make(http.Header), Body: req.GetBody()}
	for _, h := range req.GetHeaders() {
		for _, v := range h.GetValues() {
			in.Header.Add(h.GetName(), v)
		}
	}
	var upd ReceiptUpdate
	err := guard("VerifyReceipt", func() (err error) {
		upd, err = v.VerifyReceipt(ctx, req.GetSettings(), in)
		return err
	})
	if err != nil {
		return nil, toStatus(err)
	}
	if err := validateUpdate(upd); err != nil {
		return nil, toStatus(err)
	}
	return &providerpb.VerifyReceiptResponse{
		MessageId:         upd.MessageID,
		ProviderMessageId: upd.ProviderMessageID,
		Status:            statusToPB(upd.Status),
		Reason:            upd.Reason,
	}, nil
}

func (s *GRPCServer) Health(context.Context, *providerpb.HealthRequest) (*providerpb.HealthResponse, error) {
	now := time.Now()
	var overdue time.Duration
	s.mu.Lock()
	n := len(s.inflight)
	for _, deadline := range s.inflight {
		if !deadline.IsZero() && now.Sub(deadline) > overdue {
			overdue = now.Sub(deadline)
		}
	}
	s.mu.Unlock()
	return &providerpb.HealthResponse{InFlight: int32(n), MaxOverdue: durationpb.New(overdue)}, nil
}

// guard turns a provider panic into a failed call: the process serves other
// tenants' calls too, and a panic in a gRPC handler would take it down.
func guard(method string, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			// The panic value goes to the plugin's log, not into the error:
			// the error text ends up in message statuses tenants can read.
			slog.Error("provider panicked", "method", method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = Permanent(fmt.Errorf("provider panicked in %s", method))
		}
	}()
	return f()
}

// toStatus encodes err so that its class survives: a gRPC code that a
// client in any language understands, and an ErrorDetail with the class,
// the reason and the retry hint.
func toStatus(err error) error {
	class := ClassOf(err)
	code := codes.Unavailable
	pbClass := providerpb.ErrorClass_ERROR_CLASS_TEMPORARY
	switch class {
	case ClassPermanent:
		code, pbClass = codes.FailedPrecondition, providerpb.ErrorClass_ERROR_CLASS_PERMANENT
	case ClassRateLimited:
		code, pbClass = codes.ResourceExhausted, providerpb.ErrorClass_ERROR_CLASS_RATE_LIMITED
	}
	switch contextCause(err) {
	case context.DeadlineExceeded:
		code = codes.DeadlineExceeded
	case context.Canceled:
		code = codes.Canceled
	}
	detail := &providerpb.ErrorDetail{Class: pbClass, Reason: reasonOf(err), Code: codeOf(err)}
	if d := retryAfterOf(err); d > 0 {
		detail.RetryAfter = durationpb.New(d)
	}
	st, derr := status.New(code, detail.Reason).WithDetails(detail)
	if derr != nil {
		// Only a broken proto registry gets here; the code still classifies.
		return status.Error(code, detail.Reason)
	}
	return st.Err()
}

// ---------------------------------------------------------------------------
// Host side.

// GRPCClient calls a provider plugin. It implements Provider and
// ReceiptVerifier, so a host or a test can use it like an in-process
// provider; errors come back classified as the provider classified them.
type GRPCClient struct {
	client providerpb.ProviderClient
}

// NewGRPCClient returns a client on conn.
func NewGRPCClient(conn grpc.ClientConnInterface) *GRPCClient {
	return &GRPCClient{client: providerpb.NewProviderClient(conn)}
}

// Health is the plugin's account of its running calls.
type Health struct {
	InFlight int
	// MaxOverdue is how long the most overdue call has outlived its
	// deadline. A provider that honours its context keeps this near zero.
	MaxOverdue time.Duration
}

func withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultCallTimeout)
}

func (c *GRPCClient) Capabilities(ctx context.Context) (Capabilities, error) {
	ctx, cancel := withDeadline(ctx)
	defer cancel()
	resp, err := c.client.Capabilities(ctx, &providerpb.CapabilitiesRequest{})
	if err != nil {
		return Capabilities{}, fromStatus(err)
	}
	caps := Capabilities{Name: resp.GetName(), Receipts: resp.GetVerifiesReceipts()}
	for _, ch := range resp.GetChannels() {
		if !Channel(ch).Valid() {
			return Capabilities{}, Permanent(fmt.Errorf("%w: unknown channel %q in capabilities", ErrProtocol, ch))
		}
		caps.Channels = append(caps.Channels, Channel(ch))
	}
	if caps.Name == "" || len(caps.Channels) == 0 {
		return Capabilities{}, Permanent(fmt.Errorf("%w: capabilities without name or channels", ErrProtocol))
	}
	return caps, nil
}

func (c *GRPCClient) CheckConfig(ctx context.Context, settings map[string]string) error {
	if err := validateSettings(settings); err != nil {
		return err
	}
	ctx, cancel := withDeadline(ctx)
	defer cancel()
	if _, err := c.client.CheckConfig(ctx, &providerpb.CheckConfigRequest{Settings: settings}); err != nil {
		return fromStatus(err)
	}
	return nil
}

func (c *GRPCClient) Send(ctx context.Context, msg Message) (Receipt, error) {
	if err := validateMessage(msg); err != nil {
		return Receipt{}, err
	}
	if err := validateSettings(msg.Settings); err != nil {
		return Receipt{}, err
	}
	ctx, cancel := withDeadline(ctx)
	defer cancel()
	resp, err := c.client.Send(ctx, &providerpb.SendRequest{
		Message: &providerpb.Message{
			MessageId: msg.MessageID,
			TenantId:  msg.TenantID,
			Channel:   string(msg.Channel),
			To:        msg.To,
			Subject:   msg.Subject,
			Text:      msg.Text,
			Html:      msg.HTML,
		},
		Settings: msg.Settings,
	})
	if err != nil {
		return Receipt{}, fromStatus(err)
	}
	st, ok := statusFromPB(resp.GetStatus())
	if !ok || st == StatusFailed {
		return Receipt{}, Permanent(fmt.Errorf("%w: Send answered status %d", ErrProtocol, resp.GetStatus()))
	}
	if len(resp.GetProviderMessageId()) > maxIDLen {
		return Receipt{}, Permanent(fmt.Errorf("%w: provider message id longer than %d bytes", ErrProtocol, maxIDLen))
	}
	return Receipt{ProviderMessageID: resp.GetProviderMessageId(), Status: st}, nil
}

func (c *GRPCClient) VerifyReceipt(ctx context.Context, settings map[string]string, req InboundRequest) (ReceiptUpdate, error) {
	if err := validateSettings(settings); err != nil {
		return ReceiptUpdate{}, err
	}
	ctx, cancel := withDeadline(ctx)
	defer cancel()
	pbReq := &providerpb.VerifyReceiptRequest{Settings: settings, Method: req.Method, Url: req.URL, Body: req.Body}
	for name, values := range req.Header {
		pbReq.Headers = append(pbReq.Headers, &providerpb.Header{Name: name, Values: values})
	}
	resp, err := c.client.VerifyReceipt(ctx, pbReq)
	if err != nil {
		return ReceiptUpdate{}, fromStatus(err)
	}
	st, ok := statusFromPB(resp.GetStatus())
	upd := ReceiptUpdate{
		MessageID:         resp.GetMessageId(),
		ProviderMessageID: resp.GetProviderMessageId(),
		Status:            st,
		Reason:            resp.GetReason(),
	}
	if !ok {
		return ReceiptUpdate{}, Permanent(fmt.Errorf("%w: VerifyReceipt answered status %d", ErrProtocol, resp.GetStatus()))
	}
	if err := validateUpdate(upd); err != nil {
		return ReceiptUpdate{}, err
	}
	return upd, nil
}

// Health asks the plugin how its running calls are doing. Any error means
// the plugin did not answer.
func (c *GRPCClient) Health(ctx context.Context) (Health, error) {
	ctx, cancel := withDeadline(ctx)
	defer cancel()
	resp, err := c.client.Health(ctx, &providerpb.HealthRequest{})
	if err != nil {
		return Health{}, fromStatus(err)
	}
	return Health{InFlight: int(resp.GetInFlight()), MaxOverdue: resp.GetMaxOverdue().AsDuration()}, nil
}

// fromStatus rebuilds the provider's classified error. A status without a
// valid ErrorDetail did not come from a provider's verdict: either the call
// never got an answer (ErrTransport) or the plugin broke the protocol.
func fromStatus(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return Temporary(fmt.Errorf("%w: %w", ErrTransport, err))
	}
	var cause error
	switch st.Code() {
	case codes.DeadlineExceeded:
		cause = context.DeadlineExceeded
	case codes.Canceled:
		cause = context.Canceled
	}
	for _, d := range st.Details() {
		detail, ok := d.(*providerpb.ErrorDetail)
		if !ok {
			continue
		}
		remote := &remoteError{msg: detail.GetReason()}
		for _, c := range []error{cause, errOfCode(detail.GetCode())} {
			if c != nil {
				remote.causes = append(remote.causes, c)
			}
		}
		switch detail.GetClass() {
		case providerpb.ErrorClass_ERROR_CLASS_TEMPORARY:
			return &Error{Class: ClassTemporary, Err: remote}
		case providerpb.ErrorClass_ERROR_CLASS_PERMANENT:
			return &Error{Class: ClassPermanent, Err: remote}
		case providerpb.ErrorClass_ERROR_CLASS_RATE_LIMITED:
			after := detail.GetRetryAfter().AsDuration()
			if after < 0 {
				after = 0
			}
			return &Error{Class: ClassRateLimited, RetryAfter: after, Err: remote}
		}
	}
	switch st.Code() {
	case codes.DeadlineExceeded, codes.Canceled:
		return Temporary(fmt.Errorf("%w: no answer: %w", ErrTransport, cause))
	case codes.Unavailable:
		return Temporary(fmt.Errorf("%w: %s", ErrTransport, st.Message()))
	}
	return Permanent(fmt.Errorf("%w: unclassified %s: %s", ErrProtocol, st.Code(), st.Message()))
}

// maxIDLen bounds ids coming back from a plugin; they are stored and indexed.
const maxIDLen = 512

func validateMessage(msg Message) error {
	switch {
	case msg.MessageID == "":
		return Permanent(fmt.Errorf("%w: no message id", ErrInvalidMessage))
	case len(msg.MessageID) > maxIDLen:
		return Permanent(fmt.Errorf("%w: message id longer than %d bytes", ErrInvalidMessage, maxIDLen))
	case msg.To == "":
		return Permanent(fmt.Errorf("%w: no recipient", ErrInvalidMessage))
	case !msg.Channel.Valid():
		return Permanent(fmt.Errorf("%w: %q", ErrUnsupportedChannel, msg.Channel))
	}
	// protobuf strings must be UTF-8; catching it here names the field
	// instead of failing with a marshalling error on the wire.
	fields := [...]struct{ name, value string }{
		{"message id", msg.MessageID}, {"tenant id", msg.TenantID}, {"recipient", msg.To},
		{"subject", msg.Subject}, {"text", msg.Text}, {"html", msg.HTML},
	}
	for _, f := range fields {
		if !utf8.ValidString(f.value) {
			return Permanent(fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidMessage, f.name))
		}
	}
	return nil
}

func validateSettings(settings map[string]string) error {
	for k, v := range settings {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			// Name the key only when it is printable; never the value.
			if utf8.ValidString(k) {
				return Permanent(fmt.Errorf("%w: setting %q is not valid UTF-8", ErrInvalidMessage, k))
			}
			return Permanent(fmt.Errorf("%w: a setting name is not valid UTF-8", ErrInvalidMessage))
		}
	}
	return nil
}

func validateUpdate(u ReceiptUpdate) error {
	if !u.Status.Valid() {
		return Permanent(fmt.Errorf("%w: receipt status %q", ErrProtocol, u.Status))
	}
	if u.MessageID == "" && u.ProviderMessageID == "" {
		return Permanent(fmt.Errorf("%w: receipt names no message", ErrProtocol))
	}
	if len(u.MessageID) > maxIDLen || len(u.ProviderMessageID) > maxIDLen {
		return Permanent(fmt.Errorf("%w: receipt id longer than %d bytes", ErrProtocol, maxIDLen))
	}
	return nil
}

func statusToPB(s Status) providerpb.Status {
	switch s {
	case StatusSent:
		return providerpb.Status_STATUS_SENT
	case StatusDelivered:
		return providerpb.Status_STATUS_DELIVERED
	case StatusFailed:
		return providerpb.Status_STATUS_FAILED
	}
	return providerpb.Status_STATUS_UNSPECIFIED
}

// statusFromPB maps the wire status; an unset status means "sent", the
// least a plugin that answered at all can claim.
func statusFromPB(s providerpb.Status) (Status, bool) {
	switch s {
	case providerpb.Status_STATUS_UNSPECIFIED, providerpb.Status_STATUS_SENT:
		return StatusSent, true
	case providerpb.Status_STATUS_DELIVERED:
		return StatusDelivered, true
	case providerpb.Status_STATUS_FAILED:
		return StatusFailed, true
	}
	return "", false
}

var _ interface {
	Provider
	ReceiptVerifier
} = (*GRPCClient)(nil)
