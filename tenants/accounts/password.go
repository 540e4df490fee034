package accounts

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/trustelem/zxcvbn/frequency"
	"golang.org/x/crypto/argon2"

	"github.com/keyrelay/keyrelay/tenants"
)

// Password rules: the product's rule (8+ characters, a letter and a digit),
// long passphrases accepted whole, and the most common passwords refused
// (NIST SP 800-63B §3.1.1.2).
const (
	MinPasswordLen = 8
	// MaxPasswordLen bounds hashing work; argon2 does not truncate, so every
	// character up to here counts.
	MaxPasswordLen = 256
	// commonPasswords is how many of the most frequent leaked passwords are
	// refused. zxcvbn's list is ranked by frequency in real breaches.
	commonPasswords = 10000
)

var (
	commonOnce sync.Once
	commonSet  map[string]struct{}
)

func isCommon(pw string) bool {
	commonOnce.Do(func() {
		list := frequency.FrequencyLists["passwords"]
		if len(list) > commonPasswords {
			list = list[:commonPasswords]
		}
		commonSet = make(map[string]struct{}, len(list))
		for _, p := range list {
			commonSet[strings.ToLower(p)] = struct{}{}
		}
	})
	_, ok := commonSet[strings.ToLower(pw)]
	return ok
}

// CheckPassword returns a field error naming the rule pw breaks, for the
// request field called field.
func CheckPassword(field, pw string) error {
	n := utf8.RuneCountInString(pw)
	switch {
	case n < MinPasswordLen:
		return tenants.Invalid(tenants.FieldError{Field: field, Message: fmt.Sprintf("must be at least %d characters long", MinPasswordLen)})
	case n > MaxPasswordLen:
		return tenants.Invalid(tenants.FieldError{Field: field, Message: fmt.Sprintf("must be at most %d characters long", MaxPasswordLen)})
	}
	var letter, digit bool
	for _, r := range pw {
		letter = letter || unicode.IsLetter(r)
		digit = digit || unicode.IsDigit(r)
	}
	if !letter || !digit {
		return tenants.Invalid(tenants.FieldError{Field: field, Message: "must contain at least one letter and one number"})
	}
	if isCommon(pw) {
		return tenants.Invalid(tenants.FieldError{Field: field, Message: "is one of the most commonly used passwords; choose another"})
	}
	return nil
}

// Argon2id parameters: OWASP's minimum configuration (m = 19 MiB, t = 2,
// p = 1). They are stored with each hash, so raising them later only affects
// new hashes.
const (
	argonMemory  = 19 * 1024
	argonTime    = 2
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16
)

// Hasher hashes and verifies passwords with argon2id and bounds how many run
// at once: each takes 19 MiB, so an unbounded flood of logins would exhaust
// memory long before it exhausted the CPU.
type Hasher struct {
	slots chan struct{}
	wait  time.Duration
}

// NewHasher allows concurrent hashes at once; a caller waits at most wait for
// a slot before being told to come back later.
func NewHasher(concurrent int, wait time.Duration) *Hasher {
	if concurrent < 1 {
		concurrent = 1
	}
	return &Hasher{slots: make(chan struct{}, concurrent), wait: wait}
}

func (h *Hasher) acquire(ctx context.Context) error {
	t := time.NewTimer(h.wait)
	defer t.Stop()
	select {
	case h.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return &tenants.Error{Code: tenants.EUnavailable, Message: "too many sign-ins at once; try again shortly", RetryAfter: time.Second}
	}
}

func (h *Hasher) release() { <-h.slots }

// Hash returns the PHC-formatted argon2id hash of pw.
func (h *Hasher) Hash(ctx context.Context, pw string) (string, error) {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("accounts: salt: %w", err)
	}
	if err := h.acquire(ctx); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(pw), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	h.release()
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

var errBadHash = errors.New("accounts: malformed password hash")

// Verify reports whether pw matches encoded, using the parameters stored in
// encoded.
func (h *Hasher) Verify(ctx context.Context, encoded, pw string) (bool, error) {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, errBadHash
	}
	var version int
	var mem, iters uint32
	var threads uint8
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, errBadHash
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &mem, &iters, &threads); err != nil {
		return false, errBadHash
	}
	// A hash from the database is trusted data, but refuse parameters that
	// would blow the memory bound the semaphore is sized for.
	if mem == 0 || mem > 256*1024 || iters == 0 || iters > 16 || threads == 0 {
		return false, errBadHash
	}
	salt, err := base64.RawStdEncoding.DecodeString(parts[4])
	if err != nil {
		return false, errBadHash
	}
	want, err := base64.RawStdEncoding.DecodeString(parts[5])
	if err != nil || len(want) == 0 {
		return false, errBadHash
	}
	if err := h.acquire(ctx); err != nil {
		return false, err
	}
	got := argon2.IDKey([]byte(pw), salt, iters, mem, threads, uint32(len(want)))
	h.release()
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}
