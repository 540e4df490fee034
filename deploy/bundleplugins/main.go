// Command bundleplugins builds the bundled provider plugins into a plugins
// directory (KEYRELAY_PLUGINS_DIR), one folder each with the manifest and
// checksum the plugin host insists on:
//
//	go run ./deploy/bundleplugins -out /out/plugins -dev /out/plugins-dev -version 1.2.3
//
// -out gets the providers fit for production (smtp, httpsms, webhook). -dev,
// when given, gets those plus devmailbox, for a laptop; its folders link to
// the binaries in -out instead of copying them, so the image carries each
// binary once. The links are relative, so both directories must stay
// siblings (the image puts them under /opt/keyrelay).
//
// The container image runs this in its build stage; it needs the Go
// toolchain and the source tree, and is run from the module root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/keyrelay/keyrelay/plugins/host"
	"github.com/keyrelay/keyrelay/plugins/sdk"
)

// provider is one bundled plugin. The channels must be those the binary
// reports in Capabilities: the host refuses a plugin whose manifest
// disagrees (deploy_test starts the host on the result to prove it).
type provider struct {
	name     string
	channels []sdk.Channel
	devOnly  bool
}

var providers = []provider{
	{name: "smtp", channels: []sdk.Channel{sdk.ChannelEmail}},
	{name: "httpsms", channels: []sdk.Channel{sdk.ChannelSMS}},
	{name: "webhook", channels: []sdk.Channel{sdk.ChannelSMS, sdk.ChannelEmail}},
	// It delivers nothing and writes files where its settings say:
	// production refuses it anyway, so it stays out of the production
	// directory.
	{name: "devmailbox", channels: []sdk.Channel{sdk.ChannelSMS, sdk.ChannelEmail}, devOnly: true},
}

func main() {
	out := flag.String("out", "", "production plugins directory to create")
	dev := flag.String("dev", "", "development plugins directory to create as well (adds devmailbox); optional")
	version := flag.String("version", "dev", "version written into the manifests")
	flag.Parse()
	if *out == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: bundleplugins -out DIR [-dev DIR] [-version V]")
		os.Exit(2)
	}
	if err := run(context.Background(), *out, *dev, *version); err != nil {
		fmt.Fprintln(os.Stderr, "bundleplugins:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out, dev, version string) error {
	// Built with the release's version, not "bundled": a manifest names
	// what it vouches for.
	if version == "" {
		return errors.New("-version must not be empty")
	}
	var err error
	if out, err = filepath.Abs(out); err != nil {
		return err
	}
	if dev != "" {
		if dev, err = filepath.Abs(dev); err != nil {
			return err
		}
	}
	for _, p := range providers {
		if p.devOnly {
			continue
		}
		if err := build(ctx, out, p, version); err != nil {
			return err
		}
	}
	if dev == "" {
		return nil
	}
	for _, p := range providers {
		if p.devOnly {
			if err := build(ctx, dev, p, version); err != nil {
				return err
			}
			continue
		}
		if err := link(out, dev, p); err != nil {
			return err
		}
	}
	return nil
}

// build compiles one provider into dir/<name>/<name> and writes its
// manifest next to it.
func build(ctx context.Context, dir string, p provider, version string) error {
	folder := filepath.Join(dir, p.name)
	if err := os.MkdirAll(folder, 0o755); err != nil {
		return err
	}
	bin := filepath.Join(folder, p.name)
	// Static and reproducible: the runtime image has no Go toolchain and
	// no C library requirements of ours.
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./plugins/providers/"+p.name)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %w: %s", p.name, err, strings.TrimSpace(string(msg)))
	}
	m, err := host.NewManifest(bin, p.name, version, p.channels...)
	if err != nil {
		return fmt.Errorf("manifest %s: %w", p.name, err)
	}
	return m.WriteFile(folder)
}

// link gives dev a folder for a production provider whose binary is a
// relative link to the one under out, and a copy of its manifest. The host
// reads the binary through the link (os.Stat follows it), so the checksum
// still holds; a folder itself cannot be a link, the host skips those.
func link(out, dev string, p provider) error {
	folder := filepath.Join(dev, p.name)
	if err := os.MkdirAll(folder, 0o755); err != nil {
		return err
	}
	manifest, err := os.ReadFile(filepath.Join(out, p.name, host.ManifestFile))
	if err != nil {
		return fmt.Errorf("link %s: %w", p.name, err)
	}
	if err := os.WriteFile(filepath.Join(folder, host.ManifestFile), manifest, 0o644); err != nil {
		return err
	}
	target, err := filepath.Rel(folder, filepath.Join(out, p.name, p.name))
	if err != nil {
		return fmt.Errorf("link %s: %w", p.name, err)
	}
	bin := filepath.Join(folder, p.name)
	if err := os.Remove(bin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.Symlink(target, bin)
}
