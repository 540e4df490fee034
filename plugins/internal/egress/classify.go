package egress

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/keyrelay/keyrelay/plugins/sdk"
)

// StatusError classifies an HTTP answer the way the bundled providers agree
// on: 2xx is success (nil); 408 and 5xx are temporary; 429, and a 503 that
// says when to come back, are rate limits honouring Retry-After; 3xx (never
// followed) and the other 4xx are permanent. The error names the status only:
// response bodies may echo the request, codes included.
func StatusError(service string, resp *http.Response, now time.Time) error {
	code := resp.StatusCode
	err := fmt.Errorf("%s answered HTTP %d", service, code)
	switch {
	case code >= 200 && code < 300:
		return nil
	case code == http.StatusTooManyRequests:
		return sdk.RateLimited(RetryAfter(resp.Header, now), err)
	case code == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
		return sdk.RateLimited(RetryAfter(resp.Header, now), err)
	case code == http.StatusRequestTimeout || code >= 500:
		return sdk.Temporary(err)
	case code >= 300 && code < 400:
		return sdk.Permanent(fmt.Errorf("%w (redirects are not followed)", err))
	case code >= 400:
		return sdk.Permanent(err)
	}
	return sdk.Temporary(err)
}

// RetryAfter reads a Retry-After header, in seconds or as an HTTP date;
// zero when absent or unreadable.
func RetryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil {
		if secs < 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if at, err := http.ParseTime(v); err == nil && at.After(now) {
		return at.Sub(now).Round(time.Second)
	}
	return 0
}

// RequestError classifies a failure to get any answer: a refused
// destination or an untrusted certificate will not fix itself (permanent);
// the rest, from refused connections to timeouts, may (temporary). The URL
// is redacted.
func RequestError(service string, err error) error {
	err = fmt.Errorf("%s: %w", service, Redact(err))
	var (
		unknownCA *x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
	)
	if errors.Is(err, ErrForbiddenAddress) ||
		errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify) {
		return sdk.Permanent(err)
	}
	// Timeouts and cancellations stay recognisable through the wrapping.
	return sdk.Temporary(err)
}
