package accounts

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/tenants"
)

func TestCheckPassword(t *testing.T) {
	long := strings.Repeat("ab1", 40) // 120 characters
	for _, tc := range []struct {
		name, pw, rule string
	}{
		{"OK", "correct-horse-42", ""},
		{"OKLongPassphrase", long, ""},
		{"OKUnicode", "mötley-crüe-1984", ""},
		{"ErrTooShort", "abc123", "at least 8"},
		{"ErrNoDigit", "correcthorse", "letter and one number"},
		{"ErrNoLetter", "1234567890", "letter and one number"},
		{"ErrCommon", "password1", "commonly used"},
		{"ErrCommonAnyCase", "PASSWORD1", "commonly used"},
		{"ErrCommonLower", "abc12345", "commonly used"},
		{"ErrTooLong", strings.Repeat("a1", 129), "at most 256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckPassword("password", tc.pw)
			if tc.rule == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if tenants.ErrorCode(err) != tenants.EInvalid || !strings.Contains(err.Error(), tc.rule) {
				t.Fatalf("err = %v, want invalid naming %q", err, tc.rule)
			}
		})
	}
}

func TestCommonListIsLarge(t *testing.T) {
	isCommon("")
	if len(commonSet) < 3000 {
		t.Fatalf("only %d common passwords refused; want at least 3000", len(commonSet))
	}
}

func TestHasher(t *testing.T) {
	h := NewHasher(2, time.Second)
	ctx := context.Background()
	long := strings.Repeat("x1", 64) // 128 characters: nothing may be truncated
	enc, err := h.Hash(ctx, long)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(enc, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q does not carry the expected parameters", enc)
	}
	t.Run("OK", func(t *testing.T) {
		if ok, err := h.Verify(ctx, enc, long); !ok || err != nil {
			t.Fatalf("Verify = %v, %v", ok, err)
		}
	})
	t.Run("ErrWrongPassword", func(t *testing.T) {
		if ok, _ := h.Verify(ctx, enc, long[:127]); ok {
			t.Fatal("a truncated password matched")
		}
	})
	t.Run("ErrMalformed", func(t *testing.T) {
		if _, err := h.Verify(ctx, "$argon2id$v=19$m=99999999,t=2,p=1$AAAA$AAAA", "x"); err == nil {
			t.Fatal("absurd parameters accepted")
		}
	})
	t.Run("ErrBusy", func(t *testing.T) {
		busy := NewHasher(1, 10*time.Millisecond)
		busy.slots <- struct{}{} // the only slot is taken
		_, err := busy.Hash(ctx, "whatever-1")
		if tenants.ErrorCode(err) != tenants.EUnavailable {
			t.Fatalf("err = %v, want unavailable", err)
		}
	})
}

func TestTokens(t *testing.T) {
	tenant := newID()
	tok, hash, err := mintToken(kindSession, tenant)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := TenantOfToken(tok); !ok || got != tenant {
		t.Fatalf("TenantOfToken = %v, %v", got, ok)
	}
	if string(hashToken(tok)) != string(hash) {
		t.Fatal("hash differs")
	}
	for _, bad := range []string{"", "krs_", "krs_!!!", "kra" + tok[3:len(tok)-2], "krr" + tok[3:], tok + "A"} {
		if _, ok := TenantOfToken(bad); ok {
			t.Errorf("TenantOfToken(%q) accepted", bad)
		}
	}
}
