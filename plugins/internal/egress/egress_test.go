package egress

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/plugins/sdk"
)

func TestAllowed(t *testing.T) {
	tests := []struct {
		addr string
		want bool
	}{
		{"93.184.216.34", true},
		{"2606:2800:220:1:248:1893:25c8:1946", true},
		{"127.0.0.1", false},
		{"::1", false},
		{"10.1.2.3", false},
		{"172.16.0.1", false},
		{"192.168.1.1", false},
		{"169.254.169.254", false}, // cloud metadata
		{"100.64.0.1", false},
		{"0.0.0.0", false},
		{"fd00::1", false},
		{"fe80::1", false},
		{"::ffff:127.0.0.1", false},
		{"224.0.0.1", false},
	}
	for _, tc := range tests {
		if got := (Policy{}).Allowed(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("Allowed(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
	if !(Policy{AllowPrivate: true}).Allowed(netip.MustParseAddr("127.0.0.1")) {
		t.Error("AllowPrivate did not allow loopback")
	}
}

func TestHTTPClientRefusesLoopback(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()

	req, _ := http.NewRequestWithContext(context.Background(), "GET", srv.URL+"/secret-path?token=abc", nil)
	_, err := Policy{}.HTTPClient().Do(req)
	if !errors.Is(err, ErrForbiddenAddress) {
		t.Fatalf("Do: %v, want ErrForbiddenAddress", err)
	}
	red := Redact(err)
	if strings.Contains(red.Error(), "secret-path") || strings.Contains(red.Error(), "token=abc") {
		t.Errorf("Redact left the URL in: %v", red)
	}
	if !errors.Is(red, ErrForbiddenAddress) {
		t.Errorf("Redact lost the cause: %v", red)
	}

	resp, err := Policy{AllowPrivate: true}.HTTPClient().Do(req.Clone(context.Background()))
	if err != nil {
		t.Fatalf("AllowPrivate: %v", err)
	}
	resp.Body.Close()
}

func TestHTTPClientDoesNotFollowRedirects(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://169.254.169.254/latest/meta-data", http.StatusFound)
	}))
	defer srv.Close()
	resp, err := Policy{AllowPrivate: true}.HTTPClient().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("status %d, want the 302 itself", resp.StatusCode)
	}
}

func TestStatusError(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		code  int
		retry string
		class sdk.Class
		after time.Duration
	}{
		{200, "", 0, 0},
		{204, "", 0, 0},
		{302, "", sdk.ClassPermanent, 0},
		{400, "", sdk.ClassPermanent, 0},
		{401, "", sdk.ClassPermanent, 0},
		{404, "", sdk.ClassPermanent, 0},
		{408, "", sdk.ClassTemporary, 0},
		{429, "", sdk.ClassRateLimited, 0},
		{429, "12", sdk.ClassRateLimited, 12 * time.Second},
		{429, now.Add(90 * time.Second).Format(http.TimeFormat), sdk.ClassRateLimited, 90 * time.Second},
		{500, "", sdk.ClassTemporary, 0},
		{502, "", sdk.ClassTemporary, 0},
		{503, "", sdk.ClassTemporary, 0},
		{503, "5", sdk.ClassRateLimited, 5 * time.Second},
	}
	for _, tc := range tests {
		resp := &http.Response{StatusCode: tc.code, Header: http.Header{}}
		if tc.retry != "" {
			resp.Header.Set("Retry-After", tc.retry)
		}
		err := StatusError("svc", resp, now)
		if got := sdk.ClassOf(err); got != tc.class {
			t.Errorf("%d: class %v, want %v (%v)", tc.code, got, tc.class, err)
		}
		var e *sdk.Error
		if tc.after > 0 && (!errors.As(err, &e) || e.RetryAfter != tc.after) {
			t.Errorf("%d Retry-After %q: %v, want %v", tc.code, tc.retry, err, tc.after)
		}
	}
}
