//go:build unix

package host

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/plugins/sdk"
)

// bins holds the plugin binaries built once for all tests.
var bins string

// The SIGKILL test runs a host in a process of its own: this test binary,
// started again with envHelper set.
const envHelper = "KEYRELAY_HOST_TEST_HELPER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(envHelper); dir != "" {
		runHelper(dir, os.Getenv("KEYRELAY_HOST_TEST_PLUGIN"), os.Getenv("KEYRELAY_HOST_TEST_NO_DEATH_SIGNAL") == "1")
		return
	}
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	var err error
	bins, err = os.MkdirTemp("", "keyrelay-plugins-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(bins)
	cmd := exec.Command("go", "build", "-o", bins+string(filepath.Separator), "../providers/devmailbox", "./testdata/faulty")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building test plugins: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// install puts the named plugin binaries, each in its folder with a
// manifest, into a new plugins directory.
func install(t testing.TB, names ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range names {
		folder := filepath.Join(dir, name)
		if err := os.Mkdir(folder, 0o755); err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(folder, name)
		if err := os.Link(filepath.Join(bins, name), bin); err != nil {
			t.Fatal(err)
		}
		m, err := NewManifest(bin, name, "1.0.0", sdk.ChannelEmail, sdk.ChannelSMS)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.WriteFile(folder); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// testConfig has timings short enough for tests.
func testConfig(t testing.TB, dir string) Config {
	return Config{
		Dir:               dir,
		Logger:            testLogger(t),
		CallTimeout:       5 * time.Second,
		HealthInterval:    time.Hour, // tests that want checks set it
		HealthTimeout:     time.Second,
		WedgeGrace:        400 * time.Millisecond,
		RestartBackoff:    50 * time.Millisecond,
		MaxRestartBackoff: 400 * time.Millisecond,
		UnhealthyAfter:    3,
	}
}

func newHost(t testing.TB, cfg Config) *Host {
	t.Helper()
	h, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// testLogger sends the host's log to the test's log, until the test ends.
func testLogger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// alive reports whether pid is a running process (a zombie is not).
func alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !os.IsNotExist(err)
	}
	// pid (comm) state …: comm may hold spaces, so look after the last ')'.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

func waitGone(t testing.TB, pid int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running after %v", pid, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runHelper is the helper process: a host that starts the plugins in dir,
// says the pid of the named one, and waits to be killed.
func runHelper(dir, name string, noDeathSignal bool) {
	cfg := Config{Dir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), noDeathSignal: noDeathSignal}
	h, err := New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	info, err := h.Provider(name)
	if err != nil || info.PID == 0 {
		fmt.Fprintln(os.Stderr, name, "did not start:", err, info.LastError)
		os.Exit(1)
	}
	_ = json.NewEncoder(os.Stdout).Encode(map[string]int{"pid": info.PID})
	time.Sleep(time.Hour)
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

var msgSeq atomic.Int64

func msg(text string) sdk.Message {
	return sdk.Message{
		MessageID: "msg_" + strconv.FormatInt(time.Now().UnixNano(), 36) + "_" + strconv.FormatInt(msgSeq.Add(1), 10),
		TenantID:  "tenant-1",
		Channel:   sdk.ChannelSMS,
		To:        "+15555550100",
		Text:      text,
	}
}

// servedBy returns the pid in a faulty plugin's provider message id.
func servedBy(t testing.TB, r sdk.Receipt) int {
	t.Helper()
	pid, err := strconv.Atoi(strings.SplitN(r.ProviderMessageID, "/", 2)[0])
	if err != nil {
		t.Fatalf("receipt %q names no pid", r.ProviderMessageID)
	}
	return pid
}
