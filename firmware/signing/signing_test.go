package signing_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/signing"
	"github.com/keyrelay/keyrelay/tenants/secretbox"
)

func newRoot(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func newKeyring(t testing.TB, root ed25519.PrivateKey) *signing.Keyring {
	t.Helper()
	master := make([]byte, 32)
	rand.Read(master)
	sb, err := secretbox.New(master)
	if err != nil {
		t.Fatal(err)
	}
	kr := signing.NewKeyring(t.TempDir(), sb)
	for _, p := range signing.Purposes {
		if err := kr.Ensure(p, root, 90*24*time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	return kr
}

type fixture struct {
	root  ed25519.PrivateKey
	kr    *signing.Keyring
	boxID uuid.UUID
	now   time.Time
}

func newFixture(t testing.TB) fixture {
	root := newRoot(t)
	return fixture{root: root, kr: newKeyring(t, root), boxID: uuid.New(), now: time.Now()}
}

func (f fixture) bundle(t testing.TB, version uint64, payload []byte, mutate ...func(*signing.Manifest)) []byte {
	t.Helper()
	m := signing.Manifest{Type: signing.TypeBundle, TenantID: uuid.New(), BoxID: f.boxID, Version: version,
		IssuedAt: f.now, ExpiresAt: f.now.Add(72 * time.Hour)}
	m.Describe(payload)
	for _, fn := range mutate {
		fn(&m)
	}
	s, err := f.kr.Sign(m)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := signing.Pack(s, payload)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func (f fixture) state() signing.State {
	return signing.State{Root: f.root.Public().(ed25519.PublicKey)}
}

func (f fixture) expect() signing.Expect {
	return signing.Expect{Type: signing.TypeBundle, BoxID: f.boxID, MaxSize: 1 << 20}
}

func (f fixture) accept(raw []byte, st signing.State) (signing.State, []byte, error) {
	var saved signing.State
	_, payload, err := signing.Accept(raw, st, f.expect(), f.now, func(s signing.State) error { saved = s; return nil })
	return saved, payload, err
}

func TestAccept(t *testing.T) {
	f := newFixture(t)
	payload := []byte(`{"accesses":[]}`)

	t.Run("OK", func(t *testing.T) {
		st, got, err := f.accept(f.bundle(t, 1, payload), f.state())
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(payload) || st.Version != 1 || st.RootVersion != 1 {
			t.Fatalf("payload %q state %+v", got, st)
		}
	})
	t.Run("ErrTooLarge", func(t *testing.T) {
		big := make([]byte, 2<<20)
		_, _, err := f.accept(f.bundle(t, 1, big), f.state())
		if !errors.Is(err, signing.ErrTooLarge) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrTruncatedEnvelope", func(t *testing.T) {
		raw := f.bundle(t, 1, payload)
		_, _, err := f.accept(raw[:40], f.state())
		if !errors.Is(err, signing.ErrTruncated) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrTruncatedPayload", func(t *testing.T) {
		raw := f.bundle(t, 1, payload)
		_, _, err := f.accept(raw[:len(raw)-3], f.state())
		if !errors.Is(err, signing.ErrTruncated) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrPayloadHashFlippedByte", func(t *testing.T) {
		raw := f.bundle(t, 1, payload)
		raw[len(raw)-2] ^= 1
		_, _, err := f.accept(raw, f.state())
		if !errors.Is(err, signing.ErrPayloadHash) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrBadSignatureFlippedManifestByte", func(t *testing.T) {
		m := signing.Manifest{Type: signing.TypeBundle, BoxID: f.boxID, Version: 1, ExpiresAt: f.now.Add(time.Hour)}
		m.Describe(payload)
		s, err := f.kr.Sign(m)
		if err != nil {
			t.Fatal(err)
		}
		s.Manifest[len(s.Manifest)-3] ^= 1 // inside key_id's value: still JSON
		raw, _ := signing.Pack(s, payload)
		_, _, err = f.accept(raw, f.state())
		if !errors.Is(err, signing.ErrBadSignature) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrBadSignatureWrongKey", func(t *testing.T) {
		// Signed by another key under a valid certificate for this one.
		m := signing.Manifest{Type: signing.TypeBundle, BoxID: f.boxID, Version: 1, ExpiresAt: f.now.Add(time.Hour)}
		m.Describe(payload)
		good, err := f.kr.Sign(m)
		if err != nil {
			t.Fatal(err)
		}
		bad, err := signing.SignWith(newRoot(t), good.Certificate, nil, m, f.now)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := signing.Pack(bad, payload)
		_, _, err = f.accept(raw, f.state())
		if !errors.Is(err, signing.ErrBadSignature) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrUncertified", func(t *testing.T) {
		// A keyring of another root: a well-formed chain the box's root never made.
		other := fixture{root: newRoot(t), boxID: f.boxID, now: f.now}
		other.kr = newKeyring(t, other.root)
		_, _, err := f.accept(other.bundle(t, 1, payload), f.state())
		if !errors.Is(err, signing.ErrUncertified) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrCertExpired", func(t *testing.T) {
		key := newRoot(t)
		cert, err := signing.Certify(f.root, 1, signing.PurposeBundles, key.Public().(ed25519.PublicKey), f.now.Add(-48*time.Hour), f.now.Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		m := signing.Manifest{Type: signing.TypeBundle, BoxID: f.boxID, Version: 1, ExpiresAt: f.now.Add(time.Hour)}
		m.Describe(payload)
		s, err := signing.SignWith(key, cert, nil, m, f.now)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := signing.Pack(s, payload)
		_, _, err = f.accept(raw, f.state())
		if !errors.Is(err, signing.ErrCertExpired) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrWrongPurpose", func(t *testing.T) {
		// A firmware key's signature offered as a bundle.
		m := signing.Manifest{Type: signing.TypeFirmware, Model: "MS5", Version: 1, ExpiresAt: f.now.Add(time.Hour)}
		m.Describe(payload)
		s, err := f.kr.Sign(m)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := signing.Pack(s, payload)
		_, _, err = f.accept(raw, f.state())
		if !errors.Is(err, signing.ErrWrongPurpose) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrWrongBox", func(t *testing.T) {
		raw := f.bundle(t, 1, payload, func(m *signing.Manifest) { m.BoxID = uuid.New() })
		_, _, err := f.accept(raw, f.state())
		if !errors.Is(err, signing.ErrWrongBox) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrRollbackOlder", func(t *testing.T) {
		st := f.state()
		st.Version = 5
		_, _, err := f.accept(f.bundle(t, 4, payload), st)
		if !errors.Is(err, signing.ErrRollback) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrRollbackSame", func(t *testing.T) {
		st, _, err := f.accept(f.bundle(t, 7, payload), f.state())
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := f.accept(f.bundle(t, 7, payload), st); !errors.Is(err, signing.ErrRollback) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrExpired", func(t *testing.T) {
		raw := f.bundle(t, 1, payload, func(m *signing.Manifest) {
			m.IssuedAt, m.ExpiresAt = f.now.Add(-73*time.Hour), f.now.Add(-time.Hour)
		})
		_, _, err := f.accept(raw, f.state())
		if !errors.Is(err, signing.ErrExpired) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrMalformed", func(t *testing.T) {
		_, _, err := f.accept([]byte("<html>captive portal</html>"), f.state())
		if !errors.Is(err, signing.ErrMalformed) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("SaveFailsNothingUsed", func(t *testing.T) {
		_, got, err := signing.Accept(f.bundle(t, 1, payload), f.state(), f.expect(), f.now, func(signing.State) error { return errors.New("disk full") })
		if err == nil || got != nil {
			t.Fatalf("payload %q err %v", got, err)
		}
	})
}

// The checks run in the documented order: an artifact wrong in every way
// is refused for the first check, and fixing each in turn reveals the next.
func TestVerifyOrder(t *testing.T) {
	f := newFixture(t)
	payload := []byte("payload")
	st := f.state()
	st.Version = 10
	wrong := func(m *signing.Manifest) {
		m.BoxID, m.Version = uuid.New(), 3
		m.IssuedAt, m.ExpiresAt = f.now.Add(-2*time.Hour), f.now.Add(-time.Hour)
		m.SHA256 = m.SHA256[:63] + "0"
		if m.SHA256[63] == '0' {
			m.SHA256 = m.SHA256[:63] + "1"
		}
	}
	steps := []struct {
		want error
		fix  func(*signing.Manifest)
	}{
		{signing.ErrWrongBox, func(m *signing.Manifest) { m.BoxID = f.boxID }},
		{signing.ErrRollback, func(m *signing.Manifest) { m.Version = 11 }},
		{signing.ErrExpired, func(m *signing.Manifest) { m.ExpiresAt = f.now.Add(time.Hour) }},
		{signing.ErrPayloadHash, func(m *signing.Manifest) { m.Describe(payload) }},
		{nil, nil},
	}
	fixes := []func(*signing.Manifest){wrong}
	for _, s := range steps {
		_, _, err := f.accept(f.bundle(t, 3, payload, fixes...), st)
		if s.want == nil && err != nil || s.want != nil && !errors.Is(err, s.want) {
			t.Fatalf("after %d fixes: got %v, want %v", len(fixes)-1, err, s.want)
		}
		fixes = append(fixes, s.fix)
	}
}

func TestFirmwareManifest(t *testing.T) {
	f := newFixture(t)
	artifact := []byte("firmware image")
	m := signing.Manifest{Type: signing.TypeFirmware, Model: "MS5", Version: 4, SecurityVersion: 2, ExpiresAt: f.now.Add(30 * 24 * time.Hour)}
	m.Describe(artifact)
	s, err := f.kr.Sign(m)
	if err != nil {
		t.Fatal(err)
	}
	want := signing.Expect{Type: signing.TypeFirmware, Model: "MS5", MaxSize: 64 << 20}
	t.Run("OK", func(t *testing.T) {
		got, st, err := signing.Verify(s, f.state(), want, f.now)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(artifact)
		if err := got.CheckDigest(int64(len(artifact)), sum[:]); err != nil {
			t.Fatal(err)
		}
		if st.Version != 4 || st.SecurityVersion != 2 {
			t.Fatalf("state %+v", st)
		}
	})
	t.Run("ErrWrongModel", func(t *testing.T) {
		w := want
		w.Model = "MS3"
		if _, _, err := signing.Verify(s, f.state(), w, f.now); !errors.Is(err, signing.ErrWrongModel) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrRollbackSecurityVersion", func(t *testing.T) {
		st := f.state()
		st.SecurityVersion = 3 // a newer version number cannot undo a security fix
		if _, _, err := signing.Verify(s, st, want, f.now); !errors.Is(err, signing.ErrRollback) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrTruncatedStream", func(t *testing.T) {
		got, _, _ := signing.Verify(s, f.state(), want, f.now)
		sum := sha256.Sum256(artifact[:5])
		if err := got.CheckDigest(5, sum[:]); !errors.Is(err, signing.ErrTruncated) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestRotation(t *testing.T) {
	f := newFixture(t)
	payload := []byte("p")

	t.Run("OKSigningKeyRotated", func(t *testing.T) {
		st, _, err := f.accept(f.bundle(t, 1, payload), f.state())
		if err != nil {
			t.Fatal(err)
		}
		before, _ := f.kr.List()
		if _, err := f.kr.Create(signing.PurposeBundles, f.root, f.now.Add(30*24*time.Hour)); err != nil {
			t.Fatal(err)
		}
		st2, _, err := f.accept(f.bundle(t, 2, payload), st)
		if err != nil {
			t.Fatal(err)
		}
		if st2.Version != 2 {
			t.Fatalf("state %+v", st2)
		}
		after, _ := f.kr.List()
		if len(after) != len(before)+1 {
			t.Fatalf("keys before %v after %v", before, after)
		}
		// The old key's private half is gone.
		for _, k := range before {
			if k.Purpose == signing.PurposeBundles {
				if _, err := os.Stat(filepath.Join(f.kr.Dir(), k.KeyID+".key")); !os.IsNotExist(err) {
					t.Fatalf("retired key %s still present: %v", k.KeyID, err)
				}
			}
		}
	})
	t.Run("OKRootRotatedTwiceOldBoxFollows", func(t *testing.T) {
		f := newFixture(t)
		old := f.state() // a box provisioned before any rotation
		root2, root3 := newRoot(t), newRoot(t)
		if v, err := f.kr.RotateRoot(f.root, root2); err != nil || v != 2 {
			t.Fatalf("rotate: %d %v", v, err)
		}
		if v, err := f.kr.RotateRoot(root2, root3); err != nil || v != 3 {
			t.Fatalf("rotate: %d %v", v, err)
		}
		st, _, err := f.accept(f.bundle(t, 1, payload), old)
		if err != nil {
			t.Fatal(err)
		}
		if st.RootVersion != 3 || !st.Root.Equal(root3.Public()) {
			t.Fatalf("box pinned root %d", st.RootVersion)
		}
		// A box provisioned after the rotations pins root 3 without a number.
		fresh := signing.State{Root: root3.Public().(ed25519.PublicKey)}
		if st, _, err := f.accept(f.bundle(t, 1, payload), fresh); err != nil || st.RootVersion != 3 {
			t.Fatalf("fresh box: %+v %v", st, err)
		}
		// Once on root 3, a key certified only by root 1 is refused.
		cert, _ := signing.Certify(f.root, 1, signing.PurposeBundles, f.root.Public().(ed25519.PublicKey), f.now, f.now.Add(time.Hour))
		m := signing.Manifest{Type: signing.TypeBundle, BoxID: f.boxID, Version: 9, ExpiresAt: f.now.Add(time.Hour)}
		m.Describe(payload)
		s, _ := signing.SignWith(f.root, cert, nil, m, f.now)
		raw, _ := signing.Pack(s, payload)
		if _, _, err := f.accept(raw, st); !errors.Is(err, signing.ErrUncertified) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrRootRotationSignedByNewOnly", func(t *testing.T) {
		f := newFixture(t)
		thief, next := newRoot(t), newRoot(t)
		// Signed by "root 1" = thief: the box's root 1 did not sign it.
		rot, err := signing.Rotate(thief, next, 2, f.now)
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := signing.Certify(next, 2, signing.PurposeBundles, next.Public().(ed25519.PublicKey), f.now, f.now.Add(time.Hour))
		m := signing.Manifest{Type: signing.TypeBundle, BoxID: f.boxID, Version: 1, ExpiresAt: f.now.Add(time.Hour)}
		m.Describe(payload)
		s, _ := signing.SignWith(next, cert, []signing.Rotation{rot}, m, f.now)
		raw, _ := signing.Pack(s, payload)
		if _, _, err := f.accept(raw, f.state()); !errors.Is(err, signing.ErrRootRotation) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrRootRotationSkipsAVersion", func(t *testing.T) {
		f := newFixture(t)
		next := newRoot(t)
		rot, _ := signing.Rotate(f.root, next, 3, f.now) // 1 → 3
		cert, _ := signing.Certify(next, 3, signing.PurposeBundles, next.Public().(ed25519.PublicKey), f.now, f.now.Add(time.Hour))
		m := signing.Manifest{Type: signing.TypeBundle, BoxID: f.boxID, Version: 1, ExpiresAt: f.now.Add(time.Hour)}
		m.Describe(payload)
		s, _ := signing.SignWith(next, cert, []signing.Rotation{rot}, m, f.now)
		raw, _ := signing.Pack(s, payload)
		if _, _, err := f.accept(raw, f.state()); !errors.Is(err, signing.ErrUncertified) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ErrWrongRootForCreate", func(t *testing.T) {
		f := newFixture(t)
		if _, err := f.kr.Create(signing.PurposeBundles, newRoot(t), f.now.Add(time.Hour)); err == nil {
			t.Fatal("a key certified by a stranger root was created")
		}
		root2 := newRoot(t)
		if _, err := f.kr.RotateRoot(f.root, root2); err != nil {
			t.Fatal(err)
		}
		if _, err := f.kr.Create(signing.PurposeBundles, f.root, f.now.Add(time.Hour)); err == nil {
			t.Fatal("a key certified by the retired root was created")
		}
	})
}

func TestPrivateKeysSealed(t *testing.T) {
	f := newFixture(t)
	keys, err := f.kr.List()
	if err != nil {
		t.Fatal(err)
	}
	// Opening with another master key fails: the files alone sign nothing.
	other := make([]byte, 32)
	rand.Read(other)
	sb, _ := secretbox.New(other)
	stranger := signing.NewKeyring(f.kr.Dir(), sb)
	m := signing.Manifest{Type: signing.TypeBundle, BoxID: f.boxID, Version: 1, ExpiresAt: f.now.Add(time.Hour)}
	m.Describe(nil)
	if _, err := stranger.Sign(m); err == nil {
		t.Fatal("signed with a keyring opened under another KEYRELAY_SECRET_KEY")
	}
	for _, k := range keys {
		raw, err := os.ReadFile(filepath.Join(f.kr.Dir(), k.KeyID+".key"))
		if err != nil {
			t.Fatal(err)
		}
		if len(raw) < 64 {
			t.Fatalf("key file %s too short to be sealed", k.KeyID)
		}
	}
}
