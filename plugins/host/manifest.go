package host

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/keyrelay/keyrelay/plugins/sdk"
)

// ManifestFile is the manifest's name inside a plugin's folder.
const ManifestFile = "manifest.json"

// Manifest describes one plugin. It sits next to the binary, in the plugin's
// own folder under the plugins directory:
//
//	plugins/
//	  devmailbox/
//	    manifest.json  {"name": "devmailbox", "version": "1.0.0",
//	                    "channels": ["email", "sms"], "binary": "devmailbox",
//	                    "sha256": "9f86d0…"}
//	    devmailbox
type Manifest struct {
	Name     string        `json:"name"`
	Version  string        `json:"version"`
	Channels []sdk.Channel `json:"channels"`
	// Binary is the executable's file name, in the manifest's folder.
	Binary string `json:"binary"`
	// SHA256 is the hex SHA-256 of the binary. The host refuses to run a
	// binary that does not match.
	SHA256 string `json:"sha256"`
}

var manifestNameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// ErrInvalidManifest is returned for a manifest that cannot be used.
var ErrInvalidManifest = errors.New("invalid plugin manifest")

// Validate checks the manifest's fields.
func (m Manifest) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidManifest}, args...)...)
	}
	switch {
	case !manifestNameRE.MatchString(m.Name):
		return bad("name %q: lower-case letters, digits, - and _, starting with a letter", m.Name)
	case m.Version == "":
		return bad("%s: no version", m.Name)
	case len(m.Channels) == 0:
		return bad("%s: no channels", m.Name)
	case m.Binary == "" || m.Binary != filepath.Base(m.Binary) || m.Binary == "." || m.Binary == "..":
		// The binary lives in the manifest's folder, nowhere else: a path
		// would let a manifest point at any program on the machine.
		return bad("%s: binary must be a file name in the manifest's folder", m.Name)
	}
	for _, ch := range m.Channels {
		if !ch.Valid() {
			return bad("%s: unknown channel %q", m.Name, ch)
		}
	}
	if sum, err := hex.DecodeString(m.SHA256); err != nil || len(sum) != sha256.Size {
		return bad("%s: sha256 must be 64 hex digits", m.Name)
	}
	return nil
}

// NewManifest describes the binary at path, computing its checksum.
func NewManifest(path, name, version string, channels ...sdk.Channel) (Manifest, error) {
	sum, err := Checksum(path)
	if err != nil {
		return Manifest{}, err
	}
	m := Manifest{Name: name, Version: version, Channels: channels, Binary: filepath.Base(path), SHA256: sum}
	return m, m.Validate()
}

// WriteFile writes the manifest into dir as ManifestFile.
func (m Manifest) WriteFile(dir string) error {
	if err := m.Validate(); err != nil {
		return err
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, ManifestFile), append(data, '\n'), 0o644)
}

// Checksum returns the hex SHA-256 of the file at path.
func Checksum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("checksum: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("checksum %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// discovered is a plugin found on disk.
type discovered struct {
	manifest Manifest
	binary   string // absolute path
	sum      []byte
}

// discover reads the manifest of every folder directly under dir. Folders
// without a manifest are skipped; a manifest that is unreadable, invalid or
// a duplicate is an error, since a plugin the operator meant to install
// would otherwise silently be missing.
func discover(dir string) ([]discovered, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("plugins directory: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("plugins directory: %w", err)
	}
	var out []discovered
	seen := map[string]string{}
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		folder := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(filepath.Join(folder, ManifestFile))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("plugin %s: %w", e.Name(), err)
		}
		var m Manifest
		dec := json.NewDecoder(strings.NewReader(string(data)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&m); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInvalidManifest, filepath.Join(e.Name(), ManifestFile), err)
		}
		if err := m.Validate(); err != nil {
			return nil, fmt.Errorf("plugin folder %s: %w", e.Name(), err)
		}
		if other, dup := seen[m.Name]; dup {
			return nil, fmt.Errorf("%w: plugin %q is in both %s and %s", ErrInvalidManifest, m.Name, other, e.Name())
		}
		seen[m.Name] = e.Name()
		bin := filepath.Join(folder, m.Binary)
		info, err := os.Stat(bin)
		if err != nil {
			return nil, fmt.Errorf("plugin %s: %w", m.Name, err)
		}
		if !info.Mode().IsRegular() {
			return nil, fmt.Errorf("plugin %s: %s is not a regular file", m.Name, m.Binary)
		}
		sum, _ := hex.DecodeString(m.SHA256)
		out = append(out, discovered{manifest: m, binary: bin, sum: sum})
	}
	return out, nil
}
