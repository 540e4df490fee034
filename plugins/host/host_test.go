//go:build unix

package host

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/keyrelay/keyrelay/plugins/providers/devmailbox/devmailbox"
	"github.com/keyrelay/keyrelay/plugins/sdk"
)

func TestSendThroughDevmailbox(t *testing.T) {
	h := newHost(t, testConfig(t, install(t, "devmailbox")))
	mailbox := t.TempDir()
	settings := map[string]string{devmailbox.SettingDir: mailbox}

	t.Run("OK", func(t *testing.T) {
		m := msg("Your code is 424242")
		m.Channel, m.To, m.Subject, m.Settings = sdk.ChannelEmail, "guest@example.com", "Your code", settings
		rcpt, err := h.Send(ctxTimeout(t, 5*time.Second), "devmailbox", m)
		if err != nil {
			t.Fatalf("Send: %v", err)
		}
		if rcpt.Status != sdk.StatusDelivered || rcpt.ProviderMessageID == "" {
			t.Errorf("receipt %+v", rcpt)
		}
		got, err := devmailbox.Open(mailbox).List(context.Background(), devmailbox.Query{To: "guest@example.com"})
		if err != nil || len(got) != 1 || got[0].Text != "Your code is 424242" || got[0].ID != m.MessageID {
			t.Fatalf("mailbox holds %+v, %v", got, err)
		}
	})
	t.Run("Providers", func(t *testing.T) {
		ps := h.Providers()
		if len(ps) != 1 {
			t.Fatalf("Providers = %+v", ps)
		}
		p := ps[0]
		if p.Name != "devmailbox" || p.Version != "1.0.0" || p.State != StateRunning || !p.Healthy || p.ProtocolVersion != sdk.ProtocolVersion || !alive(p.PID) || p.Receipts {
			t.Errorf("Providers()[0] = %+v", p)
		}
	})
	t.Run("CheckConfig", func(t *testing.T) {
		if err := h.CheckConfig(ctxTimeout(t, 5*time.Second), "devmailbox", settings); err != nil {
			t.Errorf("CheckConfig(valid): %v", err)
		}
		err := h.CheckConfig(ctxTimeout(t, 5*time.Second), "devmailbox", map[string]string{devmailbox.SettingDir: "relative"})
		if !errors.Is(err, sdk.ErrPermanent) {
			t.Errorf("CheckConfig(invalid): %v, want permanent", err)
		}
	})
	t.Run("ErrUnknownProvider", func(t *testing.T) {
		_, err := h.Send(context.Background(), "nope", msg("x"))
		if !errors.Is(err, ErrUnknownProvider) || !errors.Is(err, sdk.ErrPermanent) {
			t.Fatalf("Send: %v", err)
		}
	})
	t.Run("ErrReceiptsUnsupported", func(t *testing.T) {
		_, err := h.VerifyReceipt(ctxTimeout(t, 5*time.Second), "devmailbox", settings, sdk.InboundRequest{Method: "POST"})
		if !errors.Is(err, sdk.ErrPermanent) || !errors.Is(err, sdk.ErrReceiptsUnsupported) {
			t.Fatalf("VerifyReceipt: %v, want permanent ErrReceiptsUnsupported", err)
		}
	})
	t.Run("OneProcessForAllCalls", func(t *testing.T) {
		before := h.Providers()[0].PID
		var wg sync.WaitGroup
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := msg("hi")
				m.Settings = settings
				if _, err := h.Send(ctxTimeout(t, 5*time.Second), "devmailbox", m); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if after := h.Providers()[0].PID; after != before {
			t.Errorf("pid changed from %d to %d", before, after)
		}
	})
}

func TestChecksumMismatchRefused(t *testing.T) {
	dir := install(t, "devmailbox")
	m, err := NewManifest(filepath.Join(bins, "faulty"), "devmailbox", "1.0.0", sdk.ChannelEmail, sdk.ChannelSMS)
	if err != nil {
		t.Fatal(err)
	}
	m.Binary = "devmailbox" // the manifest vouches for another binary's checksum
	if err := m.WriteFile(filepath.Join(dir, "devmailbox")); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, testConfig(t, dir))

	p := h.Providers()[0]
	if p.State != StateUnhealthy || p.PID != 0 || !strings.Contains(p.LastError, "checksum") {
		t.Fatalf("Providers()[0] = %+v, want unhealthy with a checksum error and no process", p)
	}
	_, err = h.Send(ctxTimeout(t, 5*time.Second), "devmailbox", msg("x"))
	if !errors.Is(err, plugin.ErrChecksumsDoNotMatch) || !errors.Is(err, ErrUnavailable) || !errors.Is(err, sdk.ErrTemporary) || errors.Is(err, sdk.ErrPermanent) {
		t.Fatalf("Send: %v, want a temporary ErrUnavailable caused by the checksum", err)
	}
}

func TestBinaryReplacedWhileRunningIsRefusedAtRestart(t *testing.T) {
	dir := install(t, "faulty")
	h := newHost(t, testConfig(t, dir))
	bin := filepath.Join(dir, "faulty", "faulty")
	tmp := bin + ".new"
	if err := os.Link(filepath.Join(bins, "devmailbox"), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	// The running process is the verified one; the next start is not.
	if _, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg("hi")); err != nil {
		t.Fatalf("Send to the running plugin: %v", err)
	}
	if _, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg("crash")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Send(crash): %v", err)
	}
	_, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg("hi"))
	if !errors.Is(err, plugin.ErrChecksumsDoNotMatch) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Send after the swap: %v, want ErrChecksumsDoNotMatch", err)
	}
	if p, _ := h.Provider("faulty"); p.State != StateUnhealthy || p.PID != 0 {
		t.Errorf("Provider = %+v, want unhealthy and not running", p)
	}
}

func TestCrashMidSend(t *testing.T) {
	h := newHost(t, testConfig(t, install(t, "faulty")))
	first := h.Providers()[0].PID

	_, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg("crash"))
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, sdk.ErrTemporary) || errors.Is(err, sdk.ErrPermanent) {
		t.Fatalf("Send(crash): %v, want temporary ErrUnavailable", err)
	}
	waitGone(t, first, 2*time.Second)

	rcpt, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg("hi"))
	if err != nil {
		t.Fatalf("Send after the crash: %v", err)
	}
	if pid := servedBy(t, rcpt); pid == first || !alive(pid) {
		t.Errorf("served by pid %d, want a new process (the crashed one was %d)", pid, first)
	}
	if p := h.Providers()[0]; !p.Healthy || p.Failures != 0 {
		t.Errorf("after a good call: %+v, want healthy with no failures", p)
	}
}

func TestCallsInFlightFailTemporarilyWhenThePluginDies(t *testing.T) {
	h := newHost(t, testConfig(t, install(t, "faulty")))
	errs := make(chan error, 5)
	for range 5 {
		go func() {
			_, err := h.Send(ctxTimeout(t, 10*time.Second), "faulty", msg("slow"))
			errs <- err
		}()
	}
	time.Sleep(200 * time.Millisecond) // let them reach the plugin
	if _, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg("crash")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Send(crash): %v", err)
	}
	for range 5 {
		err := <-errs
		if !errors.Is(err, sdk.ErrTemporary) || !errors.Is(err, ErrUnavailable) {
			t.Errorf("call in flight: %v, want temporary ErrUnavailable", err)
		}
	}
}

func TestHangPastDeadline(t *testing.T) {
	h := newHost(t, testConfig(t, install(t, "faulty")))
	first := h.Providers()[0].PID

	start := time.Now()
	_, err := h.Send(ctxTimeout(t, 300*time.Millisecond), "faulty", msg("hang"))
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, sdk.ErrTemporary) {
		t.Fatalf("Send(hang): %v, want a temporary deadline error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Send(hang) returned after %v; the deadline was 300ms", d)
	}

	// The plugin still runs the call past its deadline: it is wedged, and
	// replaced once WedgeGrace has passed.
	waitGone(t, first, 3*time.Second)
	rcpt, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg("hi"))
	if err != nil {
		t.Fatalf("Send after the wedge: %v", err)
	}
	if pid := servedBy(t, rcpt); pid == first {
		t.Errorf("still served by the wedged process %d", pid)
	}
}

func TestSlowButHonestPluginIsKept(t *testing.T) {
	h := newHost(t, testConfig(t, install(t, "faulty")))
	first := h.Providers()[0].PID
	_, err := h.Send(ctxTimeout(t, 200*time.Millisecond), "faulty", msg("slow"))
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, sdk.ErrTemporary) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Send(slow): %v, want a temporary deadline error", err)
	}
	time.Sleep(3 * testConfig(t, "").WedgeGrace)
	if p := h.Providers()[0]; p.PID != first || !p.Healthy {
		t.Fatalf("Providers()[0] = %+v, want the same healthy process %d", p, first)
	}
}

func TestGarbageIsAPermanentProtocolError(t *testing.T) {
	h := newHost(t, testConfig(t, install(t, "faulty")))
	first := h.Providers()[0].PID
	for _, text := range []string{"garbage", "garbage-error"} {
		_, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg(text))
		if !errors.Is(err, sdk.ErrProtocol) || !errors.Is(err, sdk.ErrPermanent) {
			t.Errorf("Send(%s): %v, want permanent ErrProtocol", text, err)
		}
	}
	if p := h.Providers()[0]; p.PID != first {
		t.Errorf("pid %d → %d: a plugin that answers is not restarted", first, p.PID)
	}
}

func TestErrorClassesCrossTheHost(t *testing.T) {
	h := newHost(t, testConfig(t, install(t, "faulty")))
	tests := []struct {
		text  string
		is    error
		class sdk.Class
	}{
		{"temporary", sdk.ErrTemporary, sdk.ClassTemporary},
		{"permanent", sdk.ErrPermanent, sdk.ClassPermanent},
		{"ratelimited", sdk.ErrRateLimited, sdk.ClassRateLimited},
	}
	for _, tc := range tests {
		t.Run(tc.text, func(t *testing.T) {
			_, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg(tc.text))
			if !errors.Is(err, tc.is) || sdk.ClassOf(err) != tc.class || errors.Is(err, ErrUnavailable) {
				t.Fatalf("Send: %v, want %v", err, tc.class)
			}
		})
	}
	var e *sdk.Error
	if _, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg("ratelimited")); !errors.As(err, &e) || e.RetryAfter != 42*time.Second {
		t.Fatalf("RetryAfter lost: %v", err)
	}
}

func TestRepeatedCrashesMarkUnhealthyWithBackoff(t *testing.T) {
	cfg := testConfig(t, install(t, "faulty"))
	cfg.RestartBackoff = 100 * time.Millisecond
	cfg.MaxRestartBackoff = 800 * time.Millisecond
	h := newHost(t, cfg)

	var waits []time.Duration
	for i := 1; i <= 3; i++ {
		_, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg("crash"))
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, sdk.ErrTemporary) {
			t.Fatalf("crash %d: %v", i, err)
		}
		p := h.Providers()[0]
		if p.Failures != i {
			t.Fatalf("after crash %d: %+v", i, p)
		}
		waits = append(waits, time.Until(p.NextRestart))
	}
	// 100ms, 200ms, 400ms, read a little after each failure.
	if !(waits[0] < waits[1] && waits[1] < waits[2] && waits[2] > 250*time.Millisecond) {
		t.Errorf("waits before restart %v: want exponential growth", waits)
	}
	p := h.Providers()[0]
	if p.State != StateUnhealthy || p.Healthy {
		t.Fatalf("after 3 crashes: %+v, want unhealthy", p)
	}

	start := time.Now()
	_, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg("hi"))
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, sdk.ErrTemporary) {
		t.Fatalf("Send while unhealthy: %v, want temporary ErrUnavailable", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Send while unhealthy took %v; it should fail fast", d)
	}

	// The backoff timer restarts it; one good call makes it healthy again.
	deadline := time.Now().Add(3 * time.Second)
	for h.Providers()[0].PID == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("not restarted: %+v", h.Providers()[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg("hi")); err != nil {
		t.Fatalf("Send after the restart: %v", err)
	}
	if p := h.Providers()[0]; !p.Healthy || p.Failures != 0 {
		t.Errorf("after a good call: %+v, want healthy", p)
	}
}

func TestHealthCheckReplacesAStoppedPlugin(t *testing.T) {
	cfg := testConfig(t, install(t, "faulty"))
	cfg.HealthInterval = 100 * time.Millisecond
	cfg.HealthTimeout = 200 * time.Millisecond
	h := newHost(t, cfg)
	first := h.Providers()[0].PID
	// A stopped process keeps its socket open but answers nothing, like a
	// deadlocked one.
	if err := syscall.Kill(first, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitGone(t, first, 3*time.Second)
	rcpt, err := h.Send(ctxTimeout(t, 5*time.Second), "faulty", msg("hi"))
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if servedBy(t, rcpt) == first {
		t.Fatal("served by the stopped process")
	}
}

func TestCloseKillsEveryPlugin(t *testing.T) {
	h, err := New(testConfig(t, install(t, "devmailbox", "faulty")))
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, p := range h.Providers() {
		if !alive(p.PID) {
			t.Fatalf("%s not running: %+v", p.Name, p)
		}
		pids = append(pids, p.PID)
	}
	// A call stuck in a plugin must not hold Close up.
	go func() { _, _ = h.Send(context.Background(), "faulty", msg("hang")) }()
	time.Sleep(100 * time.Millisecond)

	start := time.Now()
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v", d)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("plugin process %d still running after Close", pid)
		}
	}
	_, err = h.Send(context.Background(), "faulty", msg("hi"))
	if !errors.Is(err, ErrClosed) || !errors.Is(err, sdk.ErrTemporary) {
		t.Errorf("Send after Close: %v, want temporary ErrClosed", err)
	}
	for _, p := range h.Providers() {
		if p.State != StateClosed {
			t.Errorf("%s: state %s after Close", p.Name, p.State)
		}
	}
}

// startHelperHost runs a host in a process of its own (this test binary)
// and returns it with the pid of the named plugin.
func startHelperHost(t *testing.T, plugin string, noDeathSignal bool) (*exec.Cmd, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envHelper+"="+install(t, plugin), "KEYRELAY_HOST_TEST_PLUGIN="+plugin)
	if noDeathSignal {
		cmd.Env = append(cmd.Env, "KEYRELAY_HOST_TEST_NO_DEATH_SIGNAL=1")
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var hello struct{ PID int }
	line, err := bufio.NewReader(out).ReadBytes('\n')
	if err != nil || json.Unmarshal(line, &hello) != nil || !alive(hello.PID) {
		t.Fatalf("helper said %q (%v)", line, err)
	}
	return cmd, hello.PID
}

func killHost(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
}

// A host killed with SIGKILL runs no cleanup; its plugins must still go.
func TestNoOrphanWhenTheHostIsKilled(t *testing.T) {
	t.Run("ParentDeathSignal", func(t *testing.T) {
		cmd, pid := startHelperHost(t, "devmailbox", false)
		killHost(t, cmd)
		waitGone(t, pid, 2*time.Second)
	})
	t.Run("SDKParentWatch", func(t *testing.T) {
		// Without the kernel's help (as on other systems), sdk.Serve's watch
		// of its parent process stops the plugin.
		cmd, pid := startHelperHost(t, "devmailbox", true)
		killHost(t, cmd)
		waitGone(t, pid, 3*time.Second)
	})
	t.Run("GoPluginAloneLeavesAnOrphan", func(t *testing.T) {
		// The control: faulty serves with plain go-plugin, without the SDK's
		// watch; with the death signal off too, it outlives its host. This is
		// why both safeguards exist.
		cmd, pid := startHelperHost(t, "faulty", true)
		killHost(t, cmd)
		time.Sleep(1500 * time.Millisecond)
		if !alive(pid) {
			t.Fatal("go-plugin's plugin exited by itself; the safeguards may no longer be needed")
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
		waitGone(t, pid, 2*time.Second)
	})
}

func TestDiscoverRefusesBadManifests(t *testing.T) {
	valid := func() Manifest {
		m, err := NewManifest(filepath.Join(bins, "devmailbox"), "devmailbox", "1.0.0", sdk.ChannelEmail)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	write := func(t *testing.T, folder string, body any) string {
		dir := t.TempDir()
		f := filepath.Join(dir, folder)
		if err := os.Mkdir(f, 0o755); err != nil {
			t.Fatal(err)
		}
		data, _ := json.Marshal(body)
		if s, ok := body.(string); ok {
			data = []byte(s)
		}
		if err := os.WriteFile(filepath.Join(f, ManifestFile), data, 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	tests := []struct {
		name string
		dir  func(t *testing.T) string
	}{
		{"ErrNotJSON", func(t *testing.T) string { return write(t, "x", "{not json") }},
		{"ErrUnknownField", func(t *testing.T) string { return write(t, "x", `{"name":"x","command":"rm -rf /"}`) }},
		{"ErrBinaryPath", func(t *testing.T) string { m := valid(); m.Binary = "../../bin/sh"; return write(t, "x", m) }},
		{"ErrBadChecksum", func(t *testing.T) string { m := valid(); m.SHA256 = "abc"; return write(t, "x", m) }},
		{"ErrUnknownChannel", func(t *testing.T) string { m := valid(); m.Channels = []sdk.Channel{"fax"}; return write(t, "x", m) }},
		{"ErrMissingBinary", func(t *testing.T) string { return write(t, "x", valid()) }},
		{"ErrDuplicateName", func(t *testing.T) string {
			dir := install(t, "devmailbox")
			if err := os.Mkdir(filepath.Join(dir, "copy"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Link(filepath.Join(bins, "devmailbox"), filepath.Join(dir, "copy", "devmailbox")); err != nil {
				t.Fatal(err)
			}
			if err := valid().WriteFile(filepath.Join(dir, "copy")); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := New(testConfig(t, tc.dir(t)))
			if err == nil {
				h.Close()
				t.Fatal("New accepted the directory")
			}
			t.Log(err)
		})
	}
	t.Run("ErrNoDir", func(t *testing.T) {
		if _, err := New(testConfig(t, filepath.Join(t.TempDir(), "missing"))); err == nil {
			t.Fatal("New accepted a missing directory")
		}
	})
	t.Run("EmptyDirIsFine", func(t *testing.T) {
		h := newHost(t, testConfig(t, t.TempDir()))
		if len(h.Providers()) != 0 {
			t.Fatal(h.Providers())
		}
	})
}
