package box

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// identityFile holds the box's identity in its state directory. It holds
// the device private key and the box secret: readable by the box alone.
const identityFile = "identity.json"

// SaveIdentity writes id into dir (created 0700, the file 0600), replacing
// it atomically so a crash never leaves half an identity.
func SaveIdentity(dir string, id Identity) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("box: state dir: %w", err)
	}
	raw, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, identityFile+".*")
	if err != nil {
		return fmt.Errorf("box: save identity: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, identityFile))
}

// ErrNotProvisioned means the state directory holds no identity yet.
var ErrNotProvisioned = errors.New("box: not provisioned (run provision with the installer's token first)")

// LoadIdentity reads the identity SaveIdentity wrote.
func LoadIdentity(dir string) (Identity, error) {
	raw, err := os.ReadFile(filepath.Join(dir, identityFile))
	if errors.Is(err, os.ErrNotExist) {
		return Identity{}, ErrNotProvisioned
	}
	if err != nil {
		return Identity{}, fmt.Errorf("box: load identity: %w", err)
	}
	var id Identity
	if err := json.Unmarshal(raw, &id); err != nil {
		return Identity{}, fmt.Errorf("box: identity file is damaged: %w", err)
	}
	return id, nil
}
