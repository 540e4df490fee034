package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/keyrelay/keyrelay/plugins/host"
	"github.com/keyrelay/keyrelay/plugins/providers/devmailbox/devmailbox"
	"github.com/keyrelay/keyrelay/plugins/sdk"
	"github.com/keyrelay/keyrelay/tenants/providers"
)

// bundled are the providers shipped in plugins/providers, with the channels
// each serves.
var bundled = map[string][]sdk.Channel{
	"devmailbox": {sdk.ChannelSMS, sdk.ChannelEmail},
	"smtp":       {sdk.ChannelEmail},
	"httpsms":    {sdk.ChannelSMS},
	"webhook":    {sdk.ChannelSMS, sdk.ChannelEmail},
}

// buildBundledPlugins compiles the bundled providers into dir, one folder
// each with its manifest, so that `go run ./app` works with no setup. It
// needs the Go toolchain and the source tree: development only; production
// points KEYRELAY_PLUGINS_DIR at plugins built by the release.
func buildBundledPlugins(ctx context.Context, dir string, log *slog.Logger) error {
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	for name, channels := range bundled {
		src := filepath.Join(root, "plugins", "providers", name)
		if _, err := os.Stat(src); err != nil {
			continue
		}
		out := filepath.Join(dir, name)
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		bin := filepath.Join(out, name)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./plugins/providers/"+name)
		cmd.Dir = root
		if msg, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build plugin %s: %w: %s", name, err, strings.TrimSpace(string(msg)))
		}
		sum, err := fileSHA256(bin)
		if err != nil {
			return err
		}
		m := host.Manifest{Name: name, Version: "bundled", Channels: channels, Binary: name, SHA256: sum}
		if err := m.WriteFile(out); err != nil {
			return err
		}
	}
	log.Debug("bundled provider plugins built", "dir", dir)
	return nil
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("the bundled plugins are built with the Go toolchain (or set KEYRELAY_PLUGINS_DIR): %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run keyrelay from its source tree to build the bundled plugins, or set KEYRELAY_PLUGINS_DIR")
	}
	return filepath.Dir(mod), nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// mailboxDir is where the development mailbox keeps messages.
func (c Config) mailboxDir() string { return filepath.Join(c.StateDir, "mailbox") }

// defaultProviders is the platform's provider per channel: from
// KEYRELAY_DEFAULT_PROVIDERS, or the development mailbox.
func (c Config) defaultProviders() (map[string]providers.Choice, error) {
	if c.DefaultProviders == "" {
		d := providers.Choice{Provider: devmailbox.Name, Settings: map[string]string{devmailbox.SettingDir: c.mailboxDir()}}
		return map[string]providers.Choice{"sms": d, "email": d}, nil
	}
	var raw map[string]struct {
		Provider string            `json:"provider"`
		Settings map[string]string `json:"settings"`
	}
	if err := json.Unmarshal([]byte(c.DefaultProviders), &raw); err != nil {
		return nil, fmt.Errorf("KEYRELAY_DEFAULT_PROVIDERS: %w", err)
	}
	out := map[string]providers.Choice{}
	for _, ch := range providers.Channels {
		r, ok := raw[ch]
		if !ok || r.Provider == "" {
			return nil, fmt.Errorf("KEYRELAY_DEFAULT_PROVIDERS: no provider for %s", ch)
		}
		out[ch] = providers.Choice{Provider: r.Provider, Settings: r.Settings}
	}
	return out, nil
}
