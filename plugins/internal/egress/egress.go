// Package egress is how the bundled providers reach destinations that
// tenants choose: a webhook URL, an SMS gateway, an SMTP relay.
//
// A tenant-chosen destination is a server-side request forgery risk: without
// a check, a tenant could point its webhook at the cloud metadata service or
// at an internal admin port, and read the answer back in the message status.
// The dialer here refuses loopback, private, link-local and other
// non-public addresses after DNS resolution, so a name that resolves (or
// re-resolves) to one is refused too. Development and tests, whose servers
// live on 127.0.0.1, opt out with AllowPrivate, which is set by the operator
// (an environment variable of the plugin process), never by a tenant.
package egress

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"syscall"
	"time"
)

// EnvAllowPrivate is the environment variable that lets the bundled
// providers reach private and loopback addresses ("1" or "true").
const EnvAllowPrivate = "KEYRELAY_PLUGIN_ALLOW_PRIVATE_NETWORKS"

// ErrForbiddenAddress is returned (wrapped in the dial error) for a
// destination that is not a public address.
var ErrForbiddenAddress = errors.New("destination is not a public address")

// Policy decides which addresses may be dialled.
type Policy struct {
	AllowPrivate bool
}

// FromEnv reads the policy from the plugin's environment.
func FromEnv() Policy {
	allow, _ := strconv.ParseBool(os.Getenv(EnvAllowPrivate))
	return Policy{AllowPrivate: allow}
}

// Ranges that IsPrivate and friends do not cover but that are not the public
// internet either.
var extraForbidden = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"), // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
}

// Allowed reports whether addr may be dialled under p.
func (p Policy) Allowed(addr netip.Addr) bool {
	if p.AllowPrivate {
		return true
	}
	addr = addr.Unmap()
	if !addr.IsValid() || addr.IsLoopback() || addr.IsPrivate() || addr.IsUnspecified() ||
		addr.IsLinkLocalUnicast() || addr.IsLinkLocalMulticast() || addr.IsInterfaceLocalMulticast() || addr.IsMulticast() {
		return false
	}
	for _, pfx := range extraForbidden {
		if pfx.Contains(addr) {
			return false
		}
	}
	return true
}

// Dialer returns a dialer that refuses forbidden addresses. The check runs
// on the resolved address of each connection attempt.
func (p Policy) Dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{
		Timeout: timeout,
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: %s", ErrForbiddenAddress, address)
			}
			if !p.Allowed(ap.Addr()) {
				return fmt.Errorf("%w: %s", ErrForbiddenAddress, ap.Addr())
			}
			return nil
		},
	}
}

// HTTPClient returns a client for tenant-chosen URLs: it dials through
// Dialer, ignores proxy settings (a proxy would dial on our behalf, past the
// check), and does not follow redirects, which could lead anywhere; the
// caller sees the 3xx instead.
func (p Policy) HTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.DialContext = p.Dialer(10 * time.Second).DialContext
	tr.MaxIdleConnsPerHost = 16
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// Redact removes the URL from an HTTP client error, keeping scheme and host.
// net/http puts the whole URL in its errors, and tenant URLs often carry
// their secret in the path or the query.
func Redact(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	where := "destination"
	if u, perr := url.Parse(ue.URL); perr == nil && u.Host != "" {
		where = u.Scheme + "://" + u.Host
	}
	return fmt.Errorf("%s %s: %w", ue.Op, where, ue.Err)
}
