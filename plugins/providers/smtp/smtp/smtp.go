// Package smtp is the provider that sends email through a tenant's SMTP
// relay, with STARTTLS and authentication, using github.com/wneessen/go-mail.
//
// Settings:
//
//	host, port       the relay (port defaults to 587, or 465 with starttls=implicit)
//	username, password
//	                 SMTP AUTH credentials; the best mechanism the relay offers
//	                 is chosen, and none that sends the password in clear over an
//	                 unencrypted connection
//	from             the sender address
//	starttls         "mandatory" (default): upgrade with STARTTLS or fail;
//	                 "implicit": TLS from the first byte (SMTPS, port 465);
//	                 "opportunistic": upgrade when offered;
//	                 "none": never (development relays only)
//	ca_cert          optional PEM certificate(s) to trust for a private relay
//
// A 4xx reply is retried, a 5xx reply fails the message, and so does a relay
// that cannot do what the settings require (no STARTTLS, no usable AUTH,
// an untrusted certificate). Connection failures are retried. The
// Message-ID header is derived from keyrelay's message id, so a retried
// message carries the same Message-ID and the receiving side can tell.
package smtp

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"

	"github.com/keyrelay/keyrelay/plugins/internal/egress"
	"github.com/keyrelay/keyrelay/plugins/sdk"
)

// Name is the provider's name in its manifest.
const Name = "smtp"

// Settings.
const (
	SettingHost     = "host"
	SettingPort     = "port"
	SettingUsername = "username"
	SettingPassword = "password"
	SettingFrom     = "from"
	SettingStartTLS = "starttls"
	SettingCACert   = "ca_cert"
)

// Values of the starttls setting.
const (
	TLSMandatory     = "mandatory"
	TLSImplicit      = "implicit"
	TLSOpportunistic = "opportunistic"
	TLSNone          = "none"
)

// Provider sends email; it implements sdk.Provider.
type Provider struct {
	policy egress.Policy
}

// New returns a provider whose relay addresses obey policy. starttls=none is
// accepted only when policy allows private addresses: elsewhere it would
// send passwords and codes in clear.
func New(policy egress.Policy) *Provider { return &Provider{policy: policy} }

func (p *Provider) Capabilities(context.Context) (sdk.Capabilities, error) {
	return sdk.Capabilities{Name: Name, Channels: []sdk.Channel{sdk.ChannelEmail}}, nil
}

type config struct {
	host, user, pass, from, mode string
	port                         int
	roots                        *x509.CertPool
}

func (p *Provider) parse(s map[string]string) (config, error) {
	c := config{host: s[SettingHost], user: s[SettingUsername], pass: s[SettingPassword], from: s[SettingFrom], mode: s[SettingStartTLS]}
	bad := func(format string, args ...any) (config, error) {
		return config{}, sdk.Permanent(fmt.Errorf("smtp: "+format, args...))
	}
	if c.host == "" || strings.ContainsAny(c.host, " /:") && net.ParseIP(c.host) == nil {
		return bad("setting %q must be a host name or address", SettingHost)
	}
	if c.mode == "" {
		c.mode = TLSMandatory
	}
	switch c.mode {
	case TLSMandatory, TLSImplicit, TLSOpportunistic:
	case TLSNone:
		if !p.policy.AllowPrivate {
			return bad("setting %q=none is for development relays only", SettingStartTLS)
		}
	default:
		return bad("setting %q must be mandatory, implicit, opportunistic or none", SettingStartTLS)
	}
	c.port = 587
	if c.mode == TLSImplicit {
		c.port = 465
	}
	if v := s[SettingPort]; v != "" {
		port, err := strconv.Atoi(v)
		if err != nil || port < 1 || port > 65535 {
			return bad("setting %q must be a port number", SettingPort)
		}
		c.port = port
	}
	if (c.user == "") != (c.pass == "") {
		return bad("settings %q and %q go together", SettingUsername, SettingPassword)
	}
	addr, err := mail.ParseAddress(c.from)
	if err != nil {
		return bad("setting %q is not an email address", SettingFrom)
	}
	c.from = addr.String()
	if pem := s[SettingCACert]; pem != "" {
		c.roots = x509.NewCertPool()
		if !c.roots.AppendCertsFromPEM([]byte(pem)) {
			return bad("setting %q holds no PEM certificate", SettingCACert)
		}
	}
	return c, nil
}

func (p *Provider) CheckConfig(_ context.Context, settings map[string]string) error {
	_, err := p.parse(settings)
	return err
}

func (p *Provider) Send(ctx context.Context, msg sdk.Message) (sdk.Receipt, error) {
	c, err := p.parse(msg.Settings)
	if err != nil {
		return sdk.Receipt{}, err
	}
	m := gomail.NewMsg()
	if err := m.From(c.from); err != nil {
		return sdk.Receipt{}, sdk.Permanent(fmt.Errorf("smtp: sender: %w", err))
	}
	if err := m.To(msg.To); err != nil {
		return sdk.Receipt{}, sdk.Permanent(fmt.Errorf("smtp: recipient: %w", err))
	}
	m.Subject(msg.Subject)
	messageID := messageIDFor(msg, c.from)
	m.SetMessageIDWithValue(messageID)
	m.SetGenHeader("X-Keyrelay-Message-Id", msg.MessageID)
	m.SetDate()
	switch {
	case msg.Text != "" && msg.HTML != "":
		m.SetBodyString(gomail.TypeTextPlain, msg.Text)
		m.AddAlternativeString(gomail.TypeTextHTML, msg.HTML)
	case msg.HTML != "":
		m.SetBodyString(gomail.TypeTextHTML, msg.HTML)
	default:
		m.SetBodyString(gomail.TypeTextPlain, msg.Text)
	}

	client, err := p.client(ctx, c)
	if err != nil {
		return sdk.Receipt{}, err
	}
	if err := client.DialAndSendWithContext(ctx, m); err != nil {
		return sdk.Receipt{}, classify(err)
	}
	return sdk.Receipt{ProviderMessageID: "<" + messageID + ">", Status: sdk.StatusSent}, nil
}

func (p *Provider) client(ctx context.Context, c config) (*gomail.Client, error) {
	timeout := 30 * time.Second
	if deadline, ok := ctx.Deadline(); ok {
		// go-mail bounds each exchange with its timeout rather than the
		// context; make that the call's remaining time.
		timeout = max(time.Until(deadline), time.Second)
	}
	tlsConf := &tls.Config{ServerName: c.host, RootCAs: c.roots, MinVersion: tls.VersionTLS12}
	dialer := p.policy.Dialer(timeout)
	dial := dialer.DialContext
	if c.mode == TLSImplicit {
		tlsDialer := &tls.Dialer{NetDialer: dialer, Config: tlsConf}
		dial = tlsDialer.DialContext
	}
	policy := gomail.TLSMandatory
	switch c.mode {
	case TLSOpportunistic:
		policy = gomail.TLSOpportunistic
	case TLSNone:
		policy = gomail.NoTLS
	case TLSImplicit:
		// The dialer already did TLS; opportunistic makes go-mail look at the
		// connection state instead of asking for STARTTLS, so it knows the
		// connection is encrypted when choosing an AUTH mechanism.
		policy = gomail.TLSOpportunistic
	}
	opts := []gomail.Option{
		gomail.WithPort(c.port),
		gomail.WithTimeout(timeout),
		gomail.WithTLSPolicy(policy),
		gomail.WithTLSConfig(tlsConf),
		gomail.WithDialContextFunc(dial),
	}
	if c.user != "" {
		opts = append(opts,
			gomail.WithSMTPAuth(gomail.SMTPAuthAutoDiscover),
			gomail.WithUsername(c.user),
			gomail.WithPassword(c.pass))
	}
	client, err := gomail.NewClient(c.host, opts...)
	if err != nil {
		return nil, sdk.Permanent(fmt.Errorf("smtp: client: %w", err))
	}
	return client, nil
}

// messageIDFor derives the Message-ID from the message id, so retries of one
// message share it; the hash keeps arbitrary ids within RFC 5322's syntax.
func messageIDFor(msg sdk.Message, from string) string {
	sum := sha256.Sum256([]byte(msg.TenantID + "\x00" + msg.MessageID))
	domain := "keyrelay.invalid"
	if at := strings.LastIndexByte(from, '@'); at >= 0 {
		domain = strings.TrimRight(from[at+1:], ">")
	}
	return hex.EncodeToString(sum[:16]) + "@" + domain
}

// Failures go-mail reports as plain text rather than typed errors: the
// relay cannot do what the settings ask, and will not learn to by retrying.
var permanentTexts = []string{
	"does not support STARTTLS",
	"does not support SMTP AUTH",
}

func classify(err error) error {
	err = fmt.Errorf("smtp: %w", err)
	var se *gomail.SendError
	if errors.As(err, &se) {
		switch code := se.ErrorCode(); {
		case code >= 500:
			return sdk.Permanent(err)
		case code >= 400:
			return sdk.Temporary(err)
		}
		switch se.Reason {
		case gomail.ErrGetSender, gomail.ErrGetRcpts, gomail.ErrNoUnencoded:
			return sdk.Permanent(err)
		}
		return sdk.Temporary(err)
	}
	var pe *textproto.Error
	if errors.As(err, &pe) {
		if pe.Code >= 500 {
			return sdk.Permanent(err)
		}
		return sdk.Temporary(err)
	}
	if errors.Is(err, gomail.ErrNoSupportedAuthDiscovered) || errors.Is(err, gomail.ErrPlainAuthNotSupported) ||
		errors.Is(err, gomail.ErrLoginAuthNotSupported) {
		return sdk.Permanent(err)
	}
	for _, text := range permanentTexts {
		if strings.Contains(err.Error(), text) {
			return sdk.Permanent(err)
		}
	}
	// Refused addresses and untrusted certificates are permanent; the rest
	// of the connection failures are not.
	return egress.RequestError("smtp", errors.Unwrap(err))
}
