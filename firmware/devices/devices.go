// Package devices is a box's identity: the one-time provisioning token a
// tenant admin issues, the exchange of that token for a device credential,
// the signed requests a box makes with it, and revocation.
//
// # Why signed requests
//
// The box generates an ed25519 key pair and registers only the public key.
// Every request carries the credential id, the box's time, a random nonce
// and a signature over the method, the path with its query, that time, the
// nonce and the SHA-256 of the body. Nothing the server stores, logs or backs up lets anyone act as
// the box (a bearer token would), a captured request cannot be altered, and
// the same key signs the offline journal (OFFLINE.md, R6). A replayed
// request is refused twice over: its time must be within MaxSkew of the
// server's, and a mutating request's signature is accepted once (Redis).
// TLS still carries everything; the signature does not replace it.
//
// The server also generates the box's 32-byte secret K at provisioning and
// sends it once; it is stored sealed under the platform key-encryption key
// and never logged. The offline construction derives its keys from it.
package devices

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// Headers of a signed box request.
const (
	HeaderCredential = "X-Keyrelay-Box"
	HeaderTime       = "X-Keyrelay-Time"
	HeaderSignature  = "X-Keyrelay-Signature"
	// HeaderNonce makes two identical requests in the same second two
	// different signed messages, so refusing a replayed one never refuses
	// a genuine repeat.
	HeaderNonce = "X-Keyrelay-Nonce"
)

const (
	// TokenTTL is how long a provisioning token can be exchanged.
	TokenTTL = 24 * time.Hour
	// MaxSkew is how far a box's clock may be from the server's. A box
	// refused for its clock reads the server's time from the problem
	// document and retries with the difference applied.
	MaxSkew = 5 * time.Minute
	// SecretSize is the length of the box secret K.
	SecretSize = 32
)

// Sealer keeps box secrets encrypted at rest.
type Sealer interface {
	Seal(plaintext, context []byte) ([]byte, error)
	Open(sealed, context []byte) ([]byte, error)
}

// Service issues, exchanges, checks and revokes box credentials.
type Service struct {
	scope *tenants.Scope
	keys  Sealer
	seen  redis.Cmdable
	// prefix namespaces the replay keys (tests share one Redis).
	prefix string
	root   ed25519.PublicKey
	now    func() time.Time
	// pubkeys lets a known box's signature be checked before its
	// credential is read (Authenticate).
	pubkeys keyCache
}

// New returns the service. root is the platform's pinned public key that
// boxes receive at provisioning.
func New(scope *tenants.Scope, keys Sealer, seen redis.Cmdable, prefix string, root ed25519.PublicKey) *Service {
	return &Service{scope: scope, keys: keys, seen: seen, prefix: prefix, root: root, now: time.Now}
}

type provisioningToken struct {
	TenantID  uuid.UUID `gorm:"primaryKey"`
	ID        uuid.UUID `gorm:"primaryKey"`
	BoxID     uuid.UUID
	TokenHash []byte
	CreatedBy string
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    *time.Time
}

func (provisioningToken) TableName() string { return "box_provisioning_tokens" }

type credential struct {
	TenantID     uuid.UUID `gorm:"primaryKey"`
	ID           uuid.UUID `gorm:"primaryKey"`
	BoxID        uuid.UUID
	PublicKey    []byte
	SecretSealed []byte
	CreatedAt    time.Time
	LastSeenAt   *time.Time
	RevokedAt    *time.Time
	RevokedBy    *string
}

func (credential) TableName() string { return "box_credentials" }

// Token is a freshly issued provisioning token, shown once.
type Token struct {
	Token     string    `json:"token"`
	BoxID     uuid.UUID `json:"box_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// box is what devices needs of a box row.
type box struct {
	ID         uuid.UUID
	Name       string
	Model      string
	LocationID *uuid.UUID
	Timezone   string
}

// visibleBox loads a live box the caller may manage.
func visibleBox(ctx context.Context, p tenants.Principal, id uuid.UUID) (box, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return box{}, err
	}
	var b box
	err = tx.Table("boxes").Select("id, name, model, location_id, timezone").Where("id = ? AND deleted_at IS NULL", id).Take(&b).Error
	if errors.Is(err, gorm.ErrRecordNotFound) || err == nil && !p.Sees(b.LocationID) {
		return box{}, tenants.NotFound("box")
	}
	if err != nil {
		return box{}, fmt.Errorf("devices: load box: %w", err)
	}
	return b, nil
}

// IssueToken makes a one-time provisioning token for a box. An earlier
// unused token of the box stops working: only the newest one may be
// typed into a box.
func (s *Service) IssueToken(ctx context.Context, boxID uuid.UUID) (Token, error) {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return Token{}, err
	}
	if _, err := visibleBox(ctx, p, boxID); err != nil {
		return Token{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Token{}, err
	}
	now := s.now()
	if err := tx.Model(&provisioningToken{}).Where("box_id = ? AND used_at IS NULL AND expires_at > ?", boxID, now).
		Update("expires_at", now).Error; err != nil {
		return Token{}, fmt.Errorf("devices: expire older tokens: %w", err)
	}
	tok, hash, err := mintToken(p.TenantID)
	if err != nil {
		return Token{}, err
	}
	row := provisioningToken{TenantID: p.TenantID, ID: uuid.Must(uuid.NewV7()), BoxID: boxID, TokenHash: hash,
		CreatedBy: p.Actor(), CreatedAt: now, ExpiresAt: now.Add(TokenTTL)}
	if err := tx.Create(&row).Error; err != nil {
		return Token{}, fmt.Errorf("devices: store token: %w", err)
	}
	if err := audit.Record(ctx, p.Actor(), "box.provisioning_token_issued", "box:"+boxID.String(), nil); err != nil {
		return Token{}, err
	}
	return Token{Token: tok, BoxID: boxID, ExpiresAt: row.ExpiresAt.UTC()}, nil
}

// Revoke ends the box's live credential: the box gets 401 from then on
// until it is provisioned again with a new token.
func (s *Service) Revoke(ctx context.Context, boxID uuid.UUID) error {
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return err
	}
	if _, err := visibleBox(ctx, p, boxID); err != nil {
		return err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	actor := p.Actor()
	res := tx.Model(&credential{}).Where("box_id = ? AND revoked_at IS NULL", boxID).
		Updates(map[string]any{"revoked_at": s.now(), "revoked_by": actor})
	if res.Error != nil {
		return fmt.Errorf("devices: revoke: %w", res.Error)
	}
	if res.RowsAffected == 0 {
		return tenants.Errorf(tenants.ENotFound, "the box has no live credential")
	}
	// A token issued but not yet used would let the thief re-provision.
	if err := tx.Model(&provisioningToken{}).Where("box_id = ? AND used_at IS NULL AND expires_at > ?", boxID, s.now()).
		Update("expires_at", s.now()).Error; err != nil {
		return fmt.Errorf("devices: expire tokens: %w", err)
	}
	return audit.Record(ctx, actor, "box.credential_revoked", "box:"+boxID.String(), nil)
}

// Provisioned is what a box receives once, in exchange for its token.
type Provisioned struct {
	TenantID     uuid.UUID `json:"tenant_id"`
	BoxID        uuid.UUID `json:"box_id"`
	CredentialID string    `json:"credential_id"`
	// BoxSecret is K, base64: the box keeps it in its secure storage.
	BoxSecret     string    `json:"box_secret"`
	RootPublicKey string    `json:"root_public_key"`
	ServerTime    time.Time `json:"server_time"`
	Model         string    `json:"model"`
	Timezone      string    `json:"timezone"`
}

// Provision exchanges a provisioning token for a credential bound to the
// box's public key. The token works once; a box provisioned again (a
// replacement) revokes the credential before.
func (s *Service) Provision(ctx context.Context, token string, publicKey []byte) (Provisioned, error) {
	tenantID, ok := parseToken(token)
	if !ok {
		return Provisioned{}, errBadToken
	}
	if len(publicKey) != ed25519.PublicKeySize {
		return Provisioned{}, tenants.Invalid(tenants.FieldError{Field: "public_key", Message: "must be an ed25519 public key (32 bytes, base64)"})
	}
	var out Provisioned
	err := s.scope.Do(ctx, tenantID, func(ctx context.Context) error {
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return err
		}
		now := s.now()
		var t provisioningToken
		// FOR UPDATE: two boxes racing with one token get one credential.
		err = tx.Set("gorm:query_option", "FOR UPDATE").
			Where("token_hash = ? AND used_at IS NULL AND expires_at > ?", hashToken(token), now).Take(&t).Error
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return errBadToken
		}
		if err != nil {
			return fmt.Errorf("devices: load token: %w", err)
		}
		b, err := visibleBox(ctx, tenants.Principal{TenantID: tenantID}, t.BoxID)
		if err != nil {
			return errBadToken // the box was archived after the token was issued
		}
		if err := tx.Model(&t).Update("used_at", now).Error; err != nil {
			return fmt.Errorf("devices: use token: %w", err)
		}
		if err := tx.Model(&credential{}).Where("box_id = ? AND revoked_at IS NULL", b.ID).
			Updates(map[string]any{"revoked_at": now, "revoked_by": "provisioning"}).Error; err != nil {
			return fmt.Errorf("devices: replace credential: %w", err)
		}
		secret := make([]byte, SecretSize)
		if _, err := rand.Read(secret); err != nil {
			return fmt.Errorf("devices: box secret: %w", err)
		}
		c := credential{TenantID: tenantID, ID: uuid.Must(uuid.NewV7()), BoxID: b.ID, PublicKey: publicKey, CreatedAt: now}
		if c.SecretSealed, err = s.keys.Seal(secret, secretContext(tenantID, b.ID, c.ID)); err != nil {
			return fmt.Errorf("devices: seal box secret: %w", err)
		}
		if err := tx.Create(&c).Error; err != nil {
			return fmt.Errorf("devices: store credential: %w", err)
		}
		out = Provisioned{TenantID: tenantID, BoxID: b.ID, CredentialID: CredentialID(tenantID, c.ID),
			BoxSecret: base64.StdEncoding.EncodeToString(secret), RootPublicKey: base64.StdEncoding.EncodeToString(s.root),
			ServerTime: now.UTC(), Model: b.Model, Timezone: b.Timezone}
		return audit.Record(ctx, "box:"+b.ID.String(), "box.provisioned", "box:"+b.ID.String(), map[string]string{"credential": c.ID.String()})
	})
	return out, err
}

// Secret returns the box secret K of the box's live credential, for the
// server-side computations that must agree with the box (screen codes,
// verifiers, derived and backup codes).
func (s *Service) Secret(ctx context.Context, boxID uuid.UUID) ([]byte, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	tenantID, _ := tenants.TenantOf(ctx)
	var c credential
	err = tx.Where("box_id = ? AND revoked_at IS NULL", boxID).Take(&c).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, ErrNotProvisioned
	}
	if err != nil {
		return nil, fmt.Errorf("devices: load credential: %w", err)
	}
	return s.keys.Open(c.SecretSealed, secretContext(tenantID, boxID, c.ID))
}

// ErrNotProvisioned means the box has no live credential.
var ErrNotProvisioned = tenants.Errorf(tenants.EConflict, "the box is not provisioned")

func secretContext(tenantID, boxID, credID uuid.UUID) []byte {
	return []byte("box_credentials.secret:" + tenantID.String() + ":" + boxID.String() + ":" + credID.String())
}

// errBadToken answers every unusable token alike: unknown, used, expired.
var errBadToken = tenants.Errorf(tenants.EUnauthorized, "the provisioning token is unknown, used or expired: ask the tenant's admin for a new one")

// SignedRequest is what a box sent, as the HTTP layer read it.
type SignedRequest struct {
	Credential string // HeaderCredential
	Time       string // HeaderTime, Unix seconds
	Signature  string // HeaderSignature, base64
	Nonce      string // HeaderNonce, 16 to 64 characters
	Method     string
	Path       string // with the query string, as sent
	Body       []byte
	// CheckWithFirstStatement lets the credential be read with the
	// handler's first statement instead of before the handler runs
	// (authenticateLater): for routes whose handler does nothing outside
	// the transaction before that statement that a revoked box must not
	// do, or calls tenants.Verify first.
	CheckWithFirstStatement bool
}

// Canonical is the exact byte string a box signs.
func Canonical(method, path, unixTime, nonce string, body []byte) []byte {
	sum := sha256.Sum256(body)
	var b bytes.Buffer
	b.WriteString("keyrelay-box-v1\n")
	b.WriteString(strings.ToUpper(method))
	b.WriteByte('\n')
	b.WriteString(path)
	b.WriteByte('\n')
	b.WriteString(unixTime)
	b.WriteByte('\n')
	b.WriteString(nonce)
	b.WriteByte('\n')
	b.WriteString(hex.EncodeToString(sum[:]))
	return b.Bytes()
}

// Sign returns the headers of a request signed with key at time at: what
// the reference box does for every call.
func Sign(key ed25519.PrivateKey, credentialID, method, path string, body []byte, at time.Time) map[string]string {
	ts := strconv.FormatInt(at.Unix(), 10)
	var n [16]byte
	rand.Read(n[:])
	nonce := hex.EncodeToString(n[:])
	sig := ed25519.Sign(key, Canonical(method, path, ts, nonce, body))
	return map[string]string{HeaderCredential: credentialID, HeaderTime: ts, HeaderNonce: nonce, HeaderSignature: base64.StdEncoding.EncodeToString(sig)}
}

// Authenticate checks a signed request inside the tenant's transaction
// (opened for the tenant the credential id names) and returns the box as
// the principal. Every failure but the clock is the same 401, so a caller
// learns nothing about which part was wrong.
func (s *Service) Authenticate(ctx context.Context, r SignedRequest) (tenants.Principal, error) {
	tenantID, credID, ok := ParseCredentialID(r.Credential)
	if !ok {
		return tenants.Principal{}, errBadSignature
	}
	unix, err := strconv.ParseInt(r.Time, 10, 64)
	if err != nil {
		return tenants.Principal{}, errBadSignature
	}
	now := s.now()
	if d := now.Sub(time.Unix(unix, 0)); d > MaxSkew || d < -MaxSkew {
		// The server's time is in the message (and the Date header), so the
		// box can correct its offset.
		return tenants.Principal{}, tenants.Errorf(tenants.EUnauthorized, "the box's clock is more than %s from the server's (%s)", MaxSkew, now.UTC().Format(time.RFC3339))
	}
	sig, err := base64.StdEncoding.DecodeString(r.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize || len(r.Nonce) < 16 || len(r.Nonce) > 64 {
		return tenants.Principal{}, errBadSignature
	}
	msg := Canonical(r.Method, r.Path, r.Time, r.Nonce, r.Body)
	mutating := r.Method != "GET" && r.Method != "HEAD"
	// A credential's public key and box never change (a new key is a new
	// credential), so one seen before lets the signature be checked before
	// the credential is read, and the replay check (Redis) run while it is
	// read (PostgreSQL). The read still decides: revoked or unknown is
	// refused, and a key that differs from the cached one is refused.
	cached, hit := s.pubkeys.get(credID)
	if hit && r.CheckWithFirstStatement && now.Sub(cached.seen) <= touchEvery {
		return s.authenticateLater(ctx, r, tenantID, credID, cached, msg, sig, mutating)
	}
	var replay chan error
	if hit {
		if !ed25519.Verify(cached.key, msg, sig) {
			return tenants.Principal{}, errBadSignature
		}
		if mutating {
			replay = make(chan error, 1)
			go func() { replay <- s.firstUse(ctx, r) }()
		}
	}
	c, err := loadCredential(ctx, credID)
	if err == nil && hit && !cached.is(c) {
		err = errBadSignature
	}
	if replay != nil {
		if rerr := <-replay; err == nil {
			err = rerr
		}
	}
	if err != nil {
		return tenants.Principal{}, err
	}
	if !hit {
		if !ed25519.Verify(c.PublicKey, msg, sig) {
			return tenants.Principal{}, errBadSignature
		}
		if mutating {
			if err := s.firstUse(ctx, r); err != nil {
				return tenants.Principal{}, err
			}
		}
	}
	// Touch at most once a minute: enough for "last seen", without a write
	// per request.
	seen := now
	if c.LastSeenAt != nil && now.Sub(*c.LastSeenAt) <= touchEvery {
		seen = *c.LastSeenAt
	} else {
		tx, err := tenants.Tx(ctx)
		if err != nil {
			return tenants.Principal{}, err
		}
		if err := tx.Model(&credential{}).Where("id = ?", c.ID).Update("last_seen_at", now).Error; err != nil {
			return tenants.Principal{}, fmt.Errorf("devices: touch credential: %w", err)
		}
	}
	s.pubkeys.put(credID, knownKey{key: c.PublicKey, box: c.BoxID, seen: seen})
	return tenants.Principal{TenantID: tenantID, BoxID: c.BoxID}, nil
}

// touchEvery is how stale a credential's last_seen_at may get.
const touchEvery = time.Minute

// authenticateLater is Authenticate for a route whose handler's first
// statement may carry the credential read (CheckWithFirstStatement), for a
// credential this server read less than touchEvery ago: the signature is
// checked against the key read then, and the read itself is queued as a
// check (tenants.CheckLater), so a code pickup takes one round trip to
// PostgreSQL less. A revoked or unknown credential, or one whose key or
// box differs from the cached one, still fails the request with the same
// 401, and its transaction rolls back; what the handler did outside the
// database before its first statement is the route's to keep harmless.
func (s *Service) authenticateLater(ctx context.Context, r SignedRequest, tenantID, credID uuid.UUID, cached knownKey, msg, sig []byte, mutating bool) (tenants.Principal, error) {
	if !ed25519.Verify(cached.key, msg, sig) {
		return tenants.Principal{}, errBadSignature
	}
	err := tenants.CheckLater(ctx, func(scan func(dest ...any) error) error {
		c, err := scanCredential(credID, scan)
		if err == nil && !cached.is(c) {
			err = errBadSignature
		}
		return err
	}, credentialSQL, credID)
	if err != nil {
		return tenants.Principal{}, err
	}
	if mutating {
		if err := s.firstUse(ctx, r); err != nil {
			return tenants.Principal{}, err
		}
	}
	return tenants.Principal{TenantID: tenantID, BoxID: cached.box}, nil
}

const credentialSQL = `SELECT tenant_id, box_id, public_key, last_seen_at FROM box_credentials WHERE id = $1 AND revoked_at IS NULL`

// loadCredential reads a live (not revoked) credential. It is the first
// statement of every box request's transaction, so it goes by
// tenants.QueryRow, which sends the transaction's BEGIN with it.
func loadCredential(ctx context.Context, id uuid.UUID) (credential, error) {
	return scanCredential(id, tenants.QueryRow(ctx, credentialSQL, id).Scan)
}

// scanCredential reads credential id from credentialSQL's row; none is
// the same 401 as a bad signature.
func scanCredential(id uuid.UUID, scan func(dest ...any) error) (credential, error) {
	c := credential{ID: id}
	err := scan(&c.TenantID, &c.BoxID, &c.PublicKey, &c.LastSeenAt)
	if errors.Is(err, sql.ErrNoRows) {
		return credential{}, errBadSignature
	}
	if err != nil {
		return credential{}, fmt.Errorf("devices: load credential: %w", err)
	}
	return c, nil
}

// firstUse accepts a mutating request once: a replay within the skew
// window would otherwise open a bin twice. Call it only on a request whose
// signature was checked, so nobody else can fill Redis with nonces.
func (s *Service) firstUse(ctx context.Context, r SignedRequest) error {
	sum := sha256.Sum256([]byte(r.Credential + "\n" + r.Nonce))
	first, err := s.seen.SetNX(ctx, s.prefix+"boxnonce:"+hex.EncodeToString(sum[:16]), 1, 2*MaxSkew+time.Minute).Result()
	if err != nil {
		return tenants.Errorf(tenants.EUnavailable, "replay check unavailable: %v", err)
	}
	if !first {
		return tenants.Errorf(tenants.EUnauthorized, "this signed request was already used")
	}
	return nil
}

// keyCache maps credential ids to what a read of the credential said.
// Bounded: when full it starts over, which costs a few unoverlapped
// requests, nothing else.
type keyCache struct {
	mu   sync.RWMutex
	keys map[uuid.UUID]knownKey
}

// knownKey is a live credential as last read: its key and box, which never
// change, and when it was last seen by then.
type knownKey struct {
	key  ed25519.PublicKey
	box  uuid.UUID
	seen time.Time
}

// is reports whether c is the credential k was read from.
func (k knownKey) is(c credential) bool {
	return c.BoxID == k.box && bytes.Equal(c.PublicKey, k.key)
}

const keyCacheSize = 100_000

func (k *keyCache) get(id uuid.UUID) (knownKey, bool) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	v, ok := k.keys[id]
	return v, ok
}

func (k *keyCache) put(id uuid.UUID, v knownKey) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.keys == nil || len(k.keys) >= keyCacheSize {
		k.keys = map[uuid.UUID]knownKey{}
	}
	v.key = bytes.Clone(v.key)
	k.keys[id] = v
}

var errBadSignature = tenants.Errorf(tenants.EUnauthorized, "the request is not signed by a live box credential")

// Me describes the calling box.
type Me struct {
	TenantID   uuid.UUID `json:"tenant_id"`
	BoxID      uuid.UUID `json:"box_id"`
	Name       string    `json:"name"`
	Model      string    `json:"model"`
	Timezone   string    `json:"timezone"`
	ServerTime time.Time `json:"server_time"`
}

// Whoami answers a box that checks its credential (at start, after a
// restore from backup).
func (s *Service) Whoami(ctx context.Context) (Me, error) {
	p, err := tenants.RequireBox(ctx)
	if err != nil {
		return Me{}, err
	}
	b, err := visibleBox(ctx, p, p.BoxID)
	if err != nil {
		return Me{}, err
	}
	return Me{TenantID: p.TenantID, BoxID: b.ID, Name: b.Name, Model: b.Model, Timezone: b.Timezone, ServerTime: s.now().UTC()}, nil
}
