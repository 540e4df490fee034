package deploy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"debug/elf"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyrelay/keyrelay/migrations/dbtest"
)

// The image test builds deploy/Dockerfile without a Docker daemon, with
// buildah (vfs storage, chroot isolation: no kernel overlay, no user
// namespaces needed), and runs the image's binary from the image's own
// root filesystem mounted read-only, as the image's user, the way
// Kubernetes runs it (readOnlyRootFilesystem, an emptyDir on /tmp).
//
// Base images: when the registry is reachable, buildah pulls golang and
// debian as the Dockerfile names them. Where it is not (this workplace
// reaches Debian's and Go's package mirrors only), the test makes
// stand-ins under the same names once, kept in buildah's storage: the
// runtime base from `debootstrap --variant=minbase bookworm`, the build
// base from it plus this machine's Go toolchain (same major.minor as the
// Dockerfile's tag, checked) and CA bundle. The Dockerfile itself is built
// unchanged.

const imageTag = "localhost/keyrelay:imagetest"

// buildah runs buildah with the test's storage settings.
func buildah(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "buildah", append([]string{"--storage-driver", "vfs"}, args...)...)
}

func run(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, lastOf(out.Bytes(), 40))
	}
	return out.String()
}

func lastOf(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// needBuilder skips without buildah (or root, which chroot isolation and
// vfs need), except in CI, where .ci/run installs it.
func needBuilder(t *testing.T, tools ...string) {
	t.Helper()
	var missing []string
	for _, tool := range append([]string{"buildah"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	var why string
	switch {
	case len(missing) > 0:
		why = strings.Join(missing, ", ") + " not installed (apt-get install buildah debootstrap)"
	case os.Geteuid() != 0:
		why = "buildah's chroot isolation needs root"
	case runtime.GOOS != "linux":
		why = "buildah runs on Linux"
	default:
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("the image test cannot run: " + why)
	}
	t.Skip("the image test cannot run: " + why)
}

// haveImage reports whether buildah's storage holds name.
func haveImage(ctx context.Context, name string) bool {
	return buildah(ctx, "inspect", "--type", "image", name).Run() == nil
}

// ensureBases makes the Dockerfile's base images available: pulled, or
// made here (see the file's comment).
func ensureBases(t *testing.T, ctx context.Context, build, runtimeBase string) (pull string) {
	t.Helper()
	if haveImage(ctx, build) && haveImage(ctx, runtimeBase) {
		return "never"
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if buildah(pctx, "pull", build).Run() == nil && buildah(pctx, "pull", runtimeBase).Run() == nil {
		return "never"
	}
	t.Logf("cannot pull %s and %s; making stand-ins from Debian packages and this machine's Go", build, runtimeBase)
	if _, err := exec.LookPath("debootstrap"); err != nil {
		t.Fatal("no registry and no debootstrap to make the base images with (apt-get install debootstrap)")
	}
	// The build base must carry the Go the Dockerfile names.
	goVersion := strings.TrimPrefix(runtime.Version(), "go")
	tag := build[strings.LastIndex(build, ":")+1:]
	if want, _, _ := strings.Cut(tag, "-"); !strings.HasPrefix(goVersion, want+".") && goVersion != want {
		t.Fatalf("%s needs Go %s; this machine has %s", build, want, goVersion)
	}
	dir, err := os.MkdirTemp("", "keyrelay-rootfs-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	rootfs := filepath.Join(dir, "rootfs")
	suite := tag[strings.LastIndex(tag, "-")+1:] // golang:1.26-bookworm → bookworm
	began := time.Now()
	run(t, exec.CommandContext(ctx, "debootstrap", "--variant=minbase", suite, rootfs, "http://deb.debian.org/debian"))
	t.Logf("debootstrap %s: %v", suite, time.Since(began).Round(time.Second))

	ctr := strings.TrimSpace(run(t, buildah(ctx, "from", "scratch")))
	run(t, buildah(ctx, "copy", ctr, rootfs, "/"))
	run(t, buildah(ctx, "config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--cmd", `["bash"]`, ctr))
	run(t, buildah(ctx, "commit", "--rm", ctr, runtimeBase))

	ctr = strings.TrimSpace(run(t, buildah(ctx, "from", "--pull=never", runtimeBase)))
	run(t, buildah(ctx, "copy", ctr, runtime.GOROOT(), "/usr/local/go"))
	// The real image has Debian's CA certificates; this machine's bundle
	// also trusts whatever stands between it and the module proxy.
	run(t, buildah(ctx, "copy", ctr, "/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs/ca-certificates.crt"))
	run(t, buildah(ctx, "config", "--env", "GOLANG_VERSION="+goVersion, "--env", "GOPATH=/go",
		"--env", "PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--workingdir", "/go", ctr))
	run(t, buildah(ctx, "commit", "--rm", ctr, build))
	return "never"
}

// imageConfig is the part of `buildah inspect` read here (Docker format:
// the OCI format has no HEALTHCHECK).
type imageConfig struct {
	Docker struct {
		Config struct {
			User        string
			Env         []string
			Entrypoint  []string
			Cmd         []string
			WorkingDir  string
			StopSignal  string
			Healthcheck *struct {
				Test     []string
				Interval time.Duration
			}
			ExposedPorts map[string]struct{}
		} `json:"config"`
	}
}

// TestImage builds the image and checks what issue 10 asks of it: a static
// binary and the bundled plugins with matching checksums, owned by root
// and read-only to the non-root user it runs as; a HEALTHCHECK on /readyz
// with curl present; and `version`, `migrate`, `serve` and `worker` each
// working from a read-only root filesystem with only /tmp writable, in
// production mode, against the local PostgreSQL and Redis.
func TestImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a container image (minutes)")
	}
	if os.Getenv("KEYRELAY_SKIP_IMAGE_TEST") != "" {
		t.Skip("KEYRELAY_SKIP_IMAGE_TEST: .ci/run builds the image in a step of its own")
	}
	needBuilder(t, "unshare", "chroot", "mount")
	ctx := context.Background()
	ins := parseDockerfile(t)
	build, runtimeBase := fromOf(ins, "build"), fromOf(ins, "runtime")
	if build == "" || runtimeBase == "" {
		t.Fatalf("the Dockerfile's stages are build %q and runtime %q", build, runtimeBase)
	}
	pull := ensureBases(t, ctx, build, runtimeBase)

	version := "imagetest-" + randHex(t, 4)
	began := time.Now()
	run(t, buildah(ctx, "bud", "--isolation", "chroot", "--format", "docker", "--pull="+pull, "--layers=false",
		"--ignorefile", "Dockerfile.dockerignore", "-f", "Dockerfile", "--build-arg", "VERSION="+version, "-t", imageTag, ".."))
	t.Logf("image built in %v", time.Since(began).Round(time.Second))
	t.Cleanup(func() { _ = buildah(ctx, "rmi", imageTag).Run() })

	var inspected imageConfig
	if err := json.Unmarshal([]byte(run(t, buildah(ctx, "inspect", "--type", "image", imageTag))), &inspected); err != nil {
		t.Fatal(err)
	}
	cfg := inspected.Docker.Config
	t.Run("Config", func(t *testing.T) {
		if cfg.User != "10001:10001" {
			t.Errorf("USER %q, want the non-root 10001:10001", cfg.User)
		}
		if !slices.Equal(cfg.Entrypoint, []string{"/usr/local/bin/keyrelay"}) || !slices.Equal(cfg.Cmd, []string{"serve"}) {
			t.Errorf("ENTRYPOINT %v CMD %v, want keyrelay serve", cfg.Entrypoint, cfg.Cmd)
		}
		if hc := cfg.Healthcheck; hc == nil || !strings.Contains(strings.Join(hc.Test, " "), "/readyz") {
			t.Errorf("HEALTHCHECK %+v, want one on /readyz", hc)
		}
		if _, ok := cfg.ExposedPorts["8080/tcp"]; !ok {
			t.Errorf("EXPOSE %v lacks 8080", cfg.ExposedPorts)
		}
	})

	ctr := strings.TrimSpace(run(t, buildah(ctx, "from", "--pull=never", imageTag)))
	t.Cleanup(func() { _ = buildah(ctx, "rm", ctr).Run() })
	root := strings.TrimSpace(run(t, buildah(ctx, "mount", ctr)))
	t.Cleanup(func() { _ = buildah(ctx, "umount", ctr).Run() })

	t.Run("Files", func(t *testing.T) {
		bin := filepath.Join(root, "usr/local/bin/keyrelay")
		checkStatic(t, bin)
		for _, p := range []string{"usr/bin/curl", "etc/ssl/certs/ca-certificates.crt"} {
			if _, err := os.Stat(filepath.Join(root, p)); err != nil {
				t.Errorf("/%s: %v (the HEALTHCHECK needs curl, the plugins CA certificates)", p, err)
			}
		}
		for dir, want := range map[string][]string{"plugins": {"httpsms", "smtp", "webhook"}, "plugins-dev": {"devmailbox", "httpsms", "smtp", "webhook"}} {
			entries, err := os.ReadDir(filepath.Join(root, "opt/keyrelay", dir))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range entries {
				got = append(got, e.Name())
				checkPlugin(t, filepath.Join(root, "opt/keyrelay", dir, e.Name()))
			}
			if !slices.Equal(got, want) {
				t.Errorf("/opt/keyrelay/%s holds %v, want %v", dir, got, want)
			}
		}
		// Read-only to the process: root owns the binary and the plugins,
		// nobody else may write them.
		filepath.Walk(filepath.Join(root, "opt/keyrelay"), func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if st.Uid != 0 || (fi.Mode()&os.ModeSymlink == 0 && fi.Mode().Perm()&0o022 != 0) {
				t.Errorf("%s: owner %d mode %v; want root's and not writable by others", strings.TrimPrefix(p, root), st.Uid, fi.Mode())
			}
			return nil
		})
		if fi, err := os.Stat(filepath.Join(root, "var/lib/keyrelay/firmware")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 10001 {
			t.Errorf("/var/lib/keyrelay/firmware: %v; want it owned by 10001 (the volume's mount point)", err)
		}
		passwd, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
		if !strings.Contains(string(passwd), "keyrelay:x:10001:10001:") {
			t.Error("/etc/passwd has no keyrelay user 10001")
		}
	})

	// The commands, from the image's root mounted read-only.
	db := "keyrelay_test_image_" + randHex(t, 4)
	server, _ := pgx.ParseConfig(dbtest.Server())
	t.Cleanup(func() { dropDatabase(t, db) })
	port, metricsPort := freeTCPPort(t), freeTCPPort(t)
	env := append(slices.Clone(cfg.Env),
		"KEYRELAY_ENV=production",
		fmt.Sprintf("KEYRELAY_DATABASE_URL=postgres://%s@%s:%d/%s?sslmode=disable", server.User, server.Host, server.Port, db),
		fmt.Sprintf("KEYRELAY_APP_DATABASE_URL=postgres://keyrelay_app@%s:%d/%s?sslmode=disable", server.Host, server.Port, db),
		"KEYRELAY_REDIS_URL=redis://127.0.0.1:6379/9",
		fmt.Sprintf("KEYRELAY_LISTEN=127.0.0.1:%d", port),
		fmt.Sprintf("KEYRELAY_METRICS_LISTEN=127.0.0.1:%d", metricsPort),
		"KEYRELAY_BASE_URL=https://keys.example.test",
		"KEYRELAY_SECRET_KEY="+randB64(t, 32),
		"KEYRELAY_OPERATOR_TOKEN="+randHex(t, 24),
		"KEYRELAY_ROOT_PUBLIC_KEY="+randB64(t, 32),
		"KEYRELAY_WORKERS=separate",
		`KEYRELAY_DEFAULT_PROVIDERS={"email": {"provider": "smtp", "settings": {"host": "127.0.0.1", "port": "2525", "from": "keyrelay@example.test"}},`+
			` "sms": {"provider": "httpsms", "settings": {"base_url": "https://sms.example.test", "account_sid": "x", "auth_token": "y", "from": "+15550100"}}}`,
	)
	inImage := func(ctx context.Context, args ...string) *exec.Cmd {
		return readOnlyChroot(ctx, root, env, append([]string{cfg.Entrypoint[0]}, args...)...)
	}

	t.Run("ReadOnlyRootNonRoot", func(t *testing.T) {
		// The harness itself: the user is the image's, the root file
		// system refuses writes, /tmp takes them.
		if out := strings.TrimSpace(run(t, readOnlyChroot(ctx, root, env, "id", "-u"))); out != "10001" {
			t.Fatalf("id -u = %q, want 10001", out)
		}
		out, err := readOnlyChroot(ctx, root, env, "touch", "/var/lib/keyrelay/state/x").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Read-only file system") {
			t.Fatalf("a write to the root file system: %v %s, want refused as read-only", err, out)
		}
		run(t, readOnlyChroot(ctx, root, env, "touch", "/tmp/x"))
	})
	t.Run("Version", func(t *testing.T) {
		if out := run(t, inImage(ctx, "version")); !strings.Contains(out, version) {
			t.Fatalf("version printed %q, want %s", out, version)
		}
	})
	t.Run("Migrate", func(t *testing.T) {
		run(t, inImage(ctx, "migrate"))
	})
	t.Run("Serve", func(t *testing.T) {
		stop := start(t, inImage(ctx, "serve"))
		waitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
		// The HEALTHCHECK's own command, from the image (on the test's port).
		hc := slices.Clone(cfg.Healthcheck.Test[1:])
		for i, a := range hc {
			hc[i] = strings.Replace(a, "127.0.0.1:8080", fmt.Sprintf("127.0.0.1:%d", port), 1)
		}
		run(t, readOnlyChroot(ctx, root, env, hc...))
		if out := stop(); !strings.Contains(out, "listening") {
			t.Fatalf("serve's output:\n%s", out)
		}
	})
	t.Run("Worker", func(t *testing.T) {
		stop := start(t, inImage(ctx, "worker"))
		waitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
		stop()
	})
}

// readOnlyChroot runs argv inside root as the image's user, in a mount
// namespace of its own where root is a read-only bind mount with a fresh
// tmpfs on /tmp (Kubernetes' emptyDir) and on the firmware volume's mount
// point, and the host's /dev and a /proc: what the image gets under
// readOnlyRootFilesystem.
func readOnlyChroot(ctx context.Context, root string, env []string, argv ...string) *exec.Cmd {
	script := `set -e
root=$1; shift
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o mode=0700,uid=10001,gid=10001 tmpfs "$root/var/lib/keyrelay/firmware"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
cd "$root"
exec chroot --userspec=10001:10001 "$root" env -i "$@"
`
	args := append([]string{"--mount", "--propagation", "private", "--fork", "sh", "-c", script, "sh", root}, env...)
	cmd := exec.CommandContext(ctx, "unshare", append(args, argv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// start runs cmd until stop, which sends SIGTERM (the image's STOPSIGNAL),
// expects a clean exit and returns the output.
func start(t *testing.T, cmd *exec.Cmd) (stop func() string) {
	t.Helper()
	var out syncBuf
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop = func() string {
		if stopped {
			return out.String()
		}
		stopped = true
		// unshare forwards nothing: signal the whole process group.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s after SIGTERM: %v\n%s", strings.Join(cmd.Args[len(cmd.Args)-1:], " "), err, lastOf([]byte(out.String()), 20))
			}
		case <-time.After(45 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			t.Errorf("still running 45 s after SIGTERM:\n%s", lastOf([]byte(out.String()), 20))
		}
		return out.String()
	}
	t.Cleanup(func() { stop() })
	return stop
}

// syncBuf collects a process's output while it runs.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer 200 within 60 s (last: %v)", url, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkStatic fails for an executable that needs a dynamic loader.
func checkStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s is dynamically linked", path)
		}
	}
}

// checkPlugin checks a plugin folder: its manifest's sha256 is its
// binary's.
func checkPlugin(t *testing.T, dir string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	var m struct {
		Binary string `json:"binary"`
		SHA256 string `json:"sha256"`
	}
	if err := json.Unmarshal(raw, &m); err != nil || m.Binary == "" || m.SHA256 == "" {
		t.Fatalf("%s/manifest.json: %v %s", dir, err, raw)
	}
	bin := filepath.Join(dir, m.Binary) // plugins-dev links to plugins/ (relative links)
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != m.SHA256 {
		t.Errorf("%s: sha256 differs from its manifest", bin)
	}
	checkStatic(t, bin)
}

func dropDatabase(t *testing.T, name string) {
	conn, err := pgx.Connect(context.Background(), dbtest.Server())
	if err != nil {
		t.Error(err)
		return
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Error(err)
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func randHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func randB64(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}
