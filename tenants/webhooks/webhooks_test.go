package webhooks

import (
	"net/netip"
	"testing"
)

func TestCheckURL(t *testing.T) {
	prod, dev := &Service{cfg: Config{}}, &Service{cfg: Config{AllowPrivate: true}}
	for _, tc := range []struct {
		url       string
		prod, dev bool // accepted
	}{
		{"https://hooks.example.com/keyrelay?token=x", true, true},
		{"http://hooks.example.com/keyrelay", false, true},
		{"http://127.0.0.1:8080/hook", false, true},
		{"https://127.0.0.1/hook", false, true},
		{"https://10.1.2.3/hook", false, true},
		{"https://169.254.169.254/latest/meta-data", false, true},
		{"https://[::1]/hook", false, true},
		{"https://[fd00::1]/hook", false, true},
		{"https://100.64.0.1/hook", false, true},
		{"https://localhost/hook", false, true},
		{"https://metadata.google.internal/", false, true},
		{"https://user:pw@hooks.example.com/", false, false},
		{"https://hooks.example.com/#frag", false, false},
		{"ftp://hooks.example.com/", false, false},
		{"hooks.example.com/x", false, false},
		{"", false, false},
	} {
		if got := prod.checkURL(tc.url) == ""; got != tc.prod {
			t.Errorf("production %q: accepted %v, want %v (%s)", tc.url, got, tc.prod, prod.checkURL(tc.url))
		}
		if got := dev.checkURL(tc.url) == ""; got != tc.dev {
			t.Errorf("development %q: accepted %v, want %v (%s)", tc.url, got, tc.dev, dev.checkURL(tc.url))
		}
	}
}

func TestPublicAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"93.184.216.34": true, "2606:4700::1111": true,
		"127.0.0.1": false, "10.0.0.1": false, "172.16.0.1": false, "192.168.1.1": false, "169.254.169.254": false,
		"0.0.0.0": false, "::1": false, "::ffff:127.0.0.1": false, "fe80::1": false, "224.0.0.1": false, "100.64.0.1": false,
	} {
		if got := PublicAddr(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: public %v, want %v", addr, got, want)
		}
	}
}
