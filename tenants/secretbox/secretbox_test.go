package secretbox

import (
	"bytes"
	"errors"
	"testing"
)

func TestSealOpen(t *testing.T) {
	key := bytes.Repeat([]byte{7}, KeySize)
	b, err := New(key)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := b.Seal([]byte("reset link"), []byte("outbox:1"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("reset link")) {
		t.Fatal("plaintext visible in sealed value")
	}
	t.Run("OK", func(t *testing.T) {
		got, err := b.Open(sealed, []byte("outbox:1"))
		if err != nil || string(got) != "reset link" {
			t.Fatalf("Open = %q, %v", got, err)
		}
	})
	t.Run("ErrOtherContext", func(t *testing.T) {
		if _, err := b.Open(sealed, []byte("outbox:2")); !errors.Is(err, ErrOpen) {
			t.Fatalf("err = %v, want ErrOpen", err)
		}
	})
	t.Run("ErrFlippedByte", func(t *testing.T) {
		c := bytes.Clone(sealed)
		c[len(c)-1] ^= 1
		if _, err := b.Open(c, []byte("outbox:1")); !errors.Is(err, ErrOpen) {
			t.Fatalf("err = %v, want ErrOpen", err)
		}
	})
	t.Run("ErrOtherKey", func(t *testing.T) {
		other, _ := New(bytes.Repeat([]byte{8}, KeySize))
		if _, err := other.Open(sealed, []byte("outbox:1")); !errors.Is(err, ErrOpen) {
			t.Fatalf("err = %v, want ErrOpen", err)
		}
	})
	t.Run("ErrShortKey", func(t *testing.T) {
		if _, err := New(key[:16]); err == nil {
			t.Fatal("16-byte key accepted")
		}
	})
}

func TestHashIsKeyedAndUnambiguous(t *testing.T) {
	a, _ := New(bytes.Repeat([]byte{1}, KeySize))
	b, _ := New(bytes.Repeat([]byte{2}, KeySize))
	if bytes.Equal(a.Hash([]byte("123456789")), b.Hash([]byte("123456789"))) {
		t.Fatal("hash does not depend on the key")
	}
	if bytes.Equal(a.Hash([]byte("ab"), []byte("c")), a.Hash([]byte("a"), []byte("bc"))) {
		t.Fatal("part boundaries are ambiguous")
	}
}
