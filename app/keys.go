package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keyrelay/keyrelay/firmware/signing"
	"github.com/keyrelay/keyrelay/tenants/secretbox"
)

const keysUsage = `usage:
  keyrelay keys list
  keyrelay keys create  bundles|firmware [-days 90] [-root-key FILE]
  keyrelay keys rotate  bundles|firmware [-days 90] [-root-key FILE]
  keyrelay keys new-root FILE
  keyrelay keys rotate-root [-root-key FILE -new-root-key FILE]

The online signing keys live in KEYRELAY_KEYS_DIR (sealed under
KEYRELAY_SECRET_KEY). The root's private key stays offline: -root-key names a
file holding its base64 seed (made by new-root). In development the root
under the state directory is used when -root-key is absent.`

// keysDir is where the keyring lives.
func (c Config) keysDir() string {
	if c.KeysDir != "" {
		return c.KeysDir
	}
	return filepath.Join(c.StateDir, "keys")
}

// keysCommand runs `keyrelay keys …`: the key ceremony's steps, each one a
// command an operator types on the machine that holds the root.
func keysCommand(cfg Config, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New(keysUsage)
	}
	sb, err := secretbox.New(cfg.SecretKey)
	if err != nil {
		return err
	}
	kr := signing.NewKeyring(cfg.keysDir(), sb)
	fs := flag.NewFlagSet("keys "+args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	days := fs.Int("days", 90, "validity of the new signing key's certificate, in days")
	rootFile := fs.String("root-key", "", "file with the current root's base64 seed")
	newRootFile := fs.String("new-root-key", "", "file with the new root's base64 seed")
	sub, rest := args[0], args[1:]
	var purpose signing.Purpose
	if (sub == "create" || sub == "rotate") && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		purpose, rest = signing.Purpose(rest[0]), rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return fmt.Errorf("%w\n%s", err, keysUsage)
	}
	switch sub {
	case "list":
		return listKeys(kr, stdout)
	case "create", "rotate":
		if purpose != signing.PurposeBundles && purpose != signing.PurposeFirmware {
			return fmt.Errorf("keys %s: name the purpose, bundles or firmware\n%s", sub, keysUsage)
		}
		if *days < 1 || *days > 730 {
			return errors.New("keys: -days must be 1 to 730")
		}
		root, err := rootKey(cfg, *rootFile)
		if err != nil {
			return err
		}
		info, err := kr.Create(purpose, root, time.Now().Add(time.Duration(*days)*24*time.Hour))
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s key %s certified by root %d until %s; older %s keys retired\n",
			info.Purpose, info.KeyID, info.RootVersion, info.ExpiresAt.Format(time.RFC3339), info.Purpose)
		return nil
	case "new-root":
		if fs.NArg() != 1 {
			return fmt.Errorf("keys new-root: name the file to write\n%s", keysUsage)
		}
		pub, err := writeNewRoot(fs.Arg(0))
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "root key written to %s (keep it offline)\npublic key: %s\n", fs.Arg(0), base64.StdEncoding.EncodeToString(pub))
		return nil
	case "rotate-root":
		return rotateRoot(cfg, kr, *rootFile, *newRootFile, stdout)
	default:
		return fmt.Errorf("keys: unknown subcommand %q\n%s", sub, keysUsage)
	}
}

func listKeys(kr *signing.Keyring, stdout io.Writer) error {
	v, err := kr.RootVersion()
	if err != nil {
		return err
	}
	infos, err := kr.List()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "keyring %s, root version %d\n", kr.Dir(), v)
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KEY\tPURPOSE\tROOT\tISSUED\tEXPIRES\tCURRENT")
	for _, k := range infos {
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%v\n", k.KeyID, k.Purpose, k.RootVersion, k.IssuedAt.Format(time.RFC3339), k.ExpiresAt.Format(time.RFC3339), k.Current)
	}
	return w.Flush()
}

// rootKey reads the root's private key from file, or in development takes
// the one under the state directory.
func rootKey(cfg Config, file string) (ed25519.PrivateKey, error) {
	if file == "" {
		if cfg.RootPrivateKey == nil {
			return nil, errors.New("keys: -root-key FILE is required (the root's private key is not on this machine)")
		}
		return cfg.RootPrivateKey, nil
	}
	return readSeed(file)
}

func readSeed(file string) (ed25519.PrivateKey, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("keys: %s does not hold an ed25519 seed (32 bytes, base64)", file)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// writeNewRoot writes a fresh root seed to file, refusing to overwrite.
func writeNewRoot(file string) (ed25519.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(base64.StdEncoding.EncodeToString(priv.Seed()) + "\n"); err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	return pub, nil
}

// rotateRoot moves the platform to the next root. In development, with no
// files given, it makes the new root itself and puts it where the
// configuration reads it, keeping the old one beside it.
func rotateRoot(cfg Config, kr *signing.Keyring, oldFile, newFile string, stdout io.Writer) error {
	old, err := rootKey(cfg, oldFile)
	if err != nil {
		return err
	}
	var next ed25519.PrivateKey
	devSwap := false
	switch {
	case newFile != "":
		if next, err = readSeed(newFile); err != nil {
			return err
		}
	case oldFile == "" && !cfg.Production():
		if _, next, err = ed25519.GenerateKey(rand.Reader); err != nil {
			return err
		}
		devSwap = true
	default:
		return fmt.Errorf("keys rotate-root: -new-root-key FILE is required (make one with keys new-root)\n%s", keysUsage)
	}
	v, err := kr.RotateRoot(old, next)
	if err != nil {
		return err
	}
	if devSwap {
		path := filepath.Join(cfg.StateDir, "root-key")
		if err := os.Rename(path, fmt.Sprintf("%s.v%d", path, v-1)); err != nil {
			return fmt.Errorf("keys: keep the old development root: %w", err)
		}
		if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(next.Seed())+"\n"), 0o600); err != nil {
			return fmt.Errorf("keys: write the new development root: %w", err)
		}
	}
	fmt.Fprintf(stdout, "root rotated to version %d; live signing keys certified again by it\n", v)
	fmt.Fprintf(stdout, "new root public key (set KEYRELAY_ROOT_PUBLIC_KEY for boxes provisioned from now on): %s\n",
		base64.StdEncoding.EncodeToString(next.Public().(ed25519.PublicKey)))
	return nil
}
