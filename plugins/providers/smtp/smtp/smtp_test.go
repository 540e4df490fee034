package smtp

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/keyrelay/keyrelay/plugins/internal/egress"
	"github.com/keyrelay/keyrelay/plugins/sdk"
	"github.com/keyrelay/keyrelay/plugins/sdk/sdktest"
)

const (
	user     = "keyrelay"
	password = "smtp-password-1"
)

// The SMTP server runs as its own process, started from this test binary:
// the provider then talks to a real server over a real socket, as it would
// to a relay, and nothing is shared in memory.
const envServer = "KEYRELAY_TEST_SMTP_SERVER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(envServer); mode != "" {
		runServer(mode, os.Getenv("KEYRELAY_TEST_SMTP_SPOOL"))
		return
	}
	os.Exit(m.Run())
}

type serverInfo struct {
	Addr string `json:"addr"`
	Cert string `json:"cert"`
}

// startServer starts an SMTP server process, mode "starttls" or "plain", that
// stores what it receives in spool. It stops with the test.
func startServer(t *testing.T, mode, spool string) serverInfo {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envServer+"="+mode, "KEYRELAY_TEST_SMTP_SPOOL="+spool)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe() // closing it stops the server
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		t.Fatalf("SMTP server did not start: %v", err)
	}
	var info serverInfo
	if err := json.Unmarshal(line, &info); err != nil {
		t.Fatalf("SMTP server said %q: %v", line, err)
	}
	return info
}

func runServer(mode, spool string) {
	certPEM, tlsConf := selfSigned()
	be := gosmtp.BackendFunc(func(*gosmtp.Conn) (gosmtp.Session, error) {
		return &session{spool: spool, requireAuth: mode == "starttls"}, nil
	})
	s := gosmtp.NewServer(be)
	s.Domain = "localhost"
	s.ReadTimeout = 10 * time.Second
	s.WriteTimeout = 10 * time.Second
	s.ErrorLog = nopLogger{}
	if mode == "starttls" {
		s.TLSConfig = tlsConf
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	out, _ := json.Marshal(serverInfo{Addr: ln.Addr().String(), Cert: certPEM})
	fmt.Println(string(out))
	_ = s.Serve(ln)
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
func (nopLogger) Println(...any)        {}

type session struct {
	spool       string
	requireAuth bool
	authed      bool
}

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, u, p string) error {
		if u != user || p != password {
			return &gosmtp.SMTPError{Code: 535, EnhancedCode: gosmtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
		}
		s.authed = true
		return nil
	}), nil
}

func (s *session) Mail(string, *gosmtp.MailOptions) error {
	if s.requireAuth && !s.authed {
		return &gosmtp.SMTPError{Code: 530, EnhancedCode: gosmtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	return nil
}

func (s *session) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	switch to {
	case "busy@example.com":
		return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "Mailbox busy, try later"}
	case "nobody@example.com":
		return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
	}
	return nil
}

func (s *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(s.spool, "*.eml")
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write(data)
	return err
}

func (s *session) Reset()        {}
func (s *session) Logout() error { return nil }

func selfSigned() (string, *tls.Config) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return string(certPEM), &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

func TestConformance(t *testing.T) {
	spool := t.TempDir()
	tlsSrv := startServer(t, "starttls", spool)
	plainSrv := startServer(t, "plain", t.TempDir())
	settings := func(srv serverInfo, changes ...string) map[string]string {
		host, port, _ := net.SplitHostPort(srv.Addr)
		s := map[string]string{
			SettingHost: host, SettingPort: port,
			SettingUsername: user, SettingPassword: password,
			SettingFrom: "Keyrelay <noreply@keyrelay.example>", SettingCACert: srv.Cert,
		}
		for i := 0; i+1 < len(changes); i += 2 {
			if changes[i+1] == "" {
				delete(s, changes[i])
			} else {
				s[changes[i]] = changes[i+1]
			}
		}
		return s
	}
	valid := settings(tlsSrv)

	sdktest.Run(t, New(egress.Policy{AllowPrivate: true}), sdktest.Options{
		ValidSettings: valid,
		InvalidSettings: []map[string]string{
			{},
			settings(tlsSrv, SettingFrom, ""),
			settings(tlsSrv, SettingFrom, "not an address"),
			settings(tlsSrv, SettingPort, "99999"),
			settings(tlsSrv, SettingPassword, ""),
			settings(tlsSrv, SettingStartTLS, "sometimes"),
			settings(tlsSrv, SettingCACert, "not a certificate"),
			settings(tlsSrv, SettingHost, "smtp.example.com/path"),
		},
		SecretKeys: []string{SettingPassword},
		Errors: []sdktest.ErrorCase{
			{Name: "Reply4xxIsTemporary", Message: sdk.Message{To: "busy@example.com"}, Class: sdk.ClassTemporary},
			{Name: "Reply5xxIsPermanent", Message: sdk.Message{To: "nobody@example.com"}, Class: sdk.ClassPermanent},
			{Name: "BadPasswordIsPermanent", Settings: settings(tlsSrv, SettingPassword, "wrong-password"), Class: sdk.ClassPermanent},
			{Name: "UntrustedCertificateIsPermanent", Settings: settings(tlsSrv, SettingCACert, ""), Class: sdk.ClassPermanent},
			{Name: "NoSTARTTLSIsPermanent", Settings: settings(plainSrv), Class: sdk.ClassPermanent},
			{Name: "ConnectionRefusedIsTemporary", Settings: settings(tlsSrv, SettingPort, "1"), Class: sdk.ClassTemporary},
		},
	})

	files, _ := filepath.Glob(filepath.Join(spool, "*.eml"))
	if len(files) != 1 {
		t.Fatalf("server received %d messages, want 1", len(files))
	}
	raw, _ := os.ReadFile(files[0])
	m, err := mail.ReadMessage(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatalf("received message does not parse: %v", err)
	}
	if got := m.Header.Get("Subject"); got != "Your keyrelay code" {
		t.Errorf("Subject %q", got)
	}
	if !strings.HasSuffix(m.Header.Get("Message-Id"), "@keyrelay.example>") || m.Header.Get("X-Keyrelay-Message-Id") == "" {
		t.Errorf("Message-ID %q, X-Keyrelay-Message-Id %q", m.Header.Get("Message-Id"), m.Header.Get("X-Keyrelay-Message-Id"))
	}
	if body := string(raw); !strings.Contains(body, "Your code is 123456") || !strings.Contains(body, "text/html") {
		t.Errorf("body lacks the text or the HTML part:\n%s", body)
	}
}

func TestImplicitTLSAndPlainRelays(t *testing.T) {
	p := New(egress.Policy{AllowPrivate: true})
	send := func(settings map[string]string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := p.Send(ctx, sdk.Message{MessageID: sdktest.NewMessageID(), Channel: sdk.ChannelEmail, To: "a@example.com", Subject: "s", Text: "t", Settings: settings})
		return err
	}
	spool := t.TempDir()
	plain := startServer(t, "plain", spool)
	host, port, _ := net.SplitHostPort(plain.Addr)

	t.Run("NoneDeliversInClear", func(t *testing.T) {
		if err := send(map[string]string{SettingHost: host, SettingPort: port, SettingFrom: "a@keyrelay.example", SettingStartTLS: TLSNone}); err != nil {
			t.Fatalf("Send: %v", err)
		}
	})
	t.Run("ErrPasswordNeverInClear", func(t *testing.T) {
		err := send(map[string]string{SettingHost: host, SettingPort: port, SettingFrom: "a@keyrelay.example", SettingStartTLS: TLSNone, SettingUsername: user, SettingPassword: password})
		if !errors.Is(err, sdk.ErrPermanent) {
			t.Fatalf("Send with AUTH over a clear connection: %v, want a permanent refusal", err)
		}
	})
	t.Run("ErrNoneOutsideDevelopment", func(t *testing.T) {
		err := New(egress.Policy{}).CheckConfig(context.Background(), map[string]string{SettingHost: "smtp.example.com", SettingFrom: "a@keyrelay.example", SettingStartTLS: TLSNone})
		if !errors.Is(err, sdk.ErrPermanent) {
			t.Fatalf("CheckConfig(starttls=none) without AllowPrivate: %v", err)
		}
	})
	t.Run("ErrPrivateRelayRefused", func(t *testing.T) {
		err := New(egress.Policy{}).CheckConfig(context.Background(), map[string]string{SettingHost: host, SettingPort: port, SettingFrom: "a@keyrelay.example"})
		if err != nil {
			t.Fatalf("CheckConfig: %v", err)
		}
		_, err = New(egress.Policy{}).Send(context.Background(), sdk.Message{MessageID: "m", Channel: sdk.ChannelEmail, To: "a@example.com",
			Settings: map[string]string{SettingHost: host, SettingPort: port, SettingFrom: "a@keyrelay.example"}})
		if !errors.Is(err, egress.ErrForbiddenAddress) || !errors.Is(err, sdk.ErrPermanent) {
			t.Fatalf("Send to a loopback relay: %v, want permanent ErrForbiddenAddress", err)
		}
	})
	if files, _ := filepath.Glob(filepath.Join(spool, "*.eml")); len(files) != 1 {
		t.Errorf("plain relay received %d messages, want 1", len(files))
	}
}
