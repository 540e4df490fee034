// Package releases is how the platform updates its boxes: firmware
// releases per model, published by the platform operator, and staged
// rollouts of a release to one tenant's boxes.
//
// # Releases (platform data)
//
// The operator creates a release (model, version, security version, notes,
// size), uploads the artifact in chunks — each appended to Storage while its
// SHA-256 midstate advances, so the digest is computed as the bytes stream
// in and nothing holds the artifact whole — and publishes it: the manifest
// (firmware/signing: model, monotonic version, security version, size,
// digest, expiry) is signed then and stored as the exact bytes boxes get.
// Releases live in a global table the application can only read; its
// writes go through the keyrelay_firmware path role's functions.
//
// # Rollouts (tenant data)
//
// A rollout takes one release to one tenant's boxes of that model in waves
// of cumulative percentages (5 → 25 → 100): Tick enters the first wave,
// and enters the next once every box of the current one has installed and
// stayed healthy for the observation window. A failure is an install the
// box reported failed, or a box that installed and then went offline
// (firmware/health) or failed to open a bin within the window; when
// failures exceed the threshold (a fraction of the boxes assigned so far)
// the rollout pauses itself. The operator pauses, resumes (accepting the
// failures so far) or aborts; a tenant may require its own approval first.
// A box is offered its update only inside the rollout's maintenance window
// in the box's own time zone, and never firmware for another model, never
// a version at or below its own, never a security version below its own.
//
// Boxes of a wave get a firmware_available command; they also poll.
package releases

import (
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/firmware/commands"
	"github.com/keyrelay/keyrelay/firmware/signing"
	"github.com/keyrelay/keyrelay/tenants"
)

// Models are the box models firmware is built for.
var Models = []string{"MS3", "MS4", "MS5"}

// Config holds the limits.
type Config struct {
	// MaxArtifactSize bounds a release's artifact.
	MaxArtifactSize int64
	// ManifestTTL is how long a published manifest stays valid; a box
	// refuses an expired one.
	ManifestTTL time.Duration
}

// DefaultConfig allows 256 MiB artifacts and one-year manifests.
func DefaultConfig() Config {
	return Config{MaxArtifactSize: 256 << 20, ManifestTTL: 365 * 24 * time.Hour}
}

// Signer signs firmware manifests (firmware/signing's keyring).
type Signer interface {
	Sign(m signing.Manifest) (signing.Signed, error)
}

// Commander tells a box that firmware is waiting for it.
type Commander interface {
	Send(ctx context.Context, boxID uuid.UUID, kind commands.Kind, payload any) (commands.Command, error)
}

// Deps are what the service is built on.
type Deps struct {
	// DB is the application role's pool: the release catalogue and the
	// firmware path's functions are read outside any tenant.
	DB       *gorm.DB
	Scope    *tenants.Scope
	Store    Storage
	Signer   Signer
	Commands Commander
	Log      *slog.Logger
}

// Service publishes releases and runs rollouts.
type Service struct {
	Deps
	cfg Config
	now func() time.Time
}

// New returns the service.
func New(d Deps, cfg Config) (*Service, error) {
	if d.DB == nil || d.Scope == nil || d.Store == nil || d.Signer == nil || d.Commands == nil {
		return nil, errors.New("releases: missing dependency")
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	return &Service{Deps: d, cfg: cfg, now: time.Now}, nil
}

// Release is one firmware release as stored.
type Release struct {
	ID              uuid.UUID `gorm:"primaryKey"`
	Model           string
	Version         string
	VersionNumber   int64
	SecurityVersion int
	Notes           string
	State           string
	Size            int64
	Uploaded        int64
	HashState       []byte
	SHA256          []byte `gorm:"column:sha256"`
	StorageKey      string
	Manifest        []byte
	KeyID           *string
	CreatedBy       string
	CreatedAt       time.Time
	PublishedAt     *time.Time
}

func (Release) TableName() string { return "firmware_releases" }

// ReleaseView is a release as the operator sees it.
type ReleaseView struct {
	ID              uuid.UUID  `json:"id"`
	Model           string     `json:"model"`
	Version         string     `json:"version"`
	SecurityVersion int        `json:"security_version"`
	Notes           string     `json:"notes"`
	State           string     `json:"state"`
	Size            int64      `json:"size"`
	Uploaded        int64      `json:"uploaded"`
	SHA256          string     `json:"sha256,omitempty"`
	KeyID           string     `json:"key_id,omitempty"`
	CreatedAt       time.Time  `json:"created_at"`
	PublishedAt     *time.Time `json:"published_at"`
}

func viewOf(r Release) ReleaseView {
	v := ReleaseView{ID: r.ID, Model: r.Model, Version: r.Version, SecurityVersion: r.SecurityVersion, Notes: r.Notes,
		State: r.State, Size: r.Size, Uploaded: r.Uploaded, CreatedAt: r.CreatedAt.UTC(), PublishedAt: r.PublishedAt}
	if len(r.SHA256) > 0 {
		v.SHA256 = hex.EncodeToString(r.SHA256)
	}
	if r.KeyID != nil {
		v.KeyID = *r.KeyID
	}
	if v.PublishedAt != nil {
		t := v.PublishedAt.UTC()
		v.PublishedAt = &t
	}
	return v
}

// NewRelease is what the operator declares before uploading.
type NewRelease struct {
	Model           string `json:"model"`
	Version         string `json:"version"`
	SecurityVersion *int   `json:"security_version"`
	Notes           string `json:"notes"`
	Size            int64  `json:"size"`
}

func validModel(m string) bool {
	for _, x := range Models {
		if x == m {
			return true
		}
	}
	return false
}

// CreateRelease records a release awaiting its artifact.
func (s *Service) CreateRelease(ctx context.Context, actor string, in NewRelease) (ReleaseView, error) {
	var v tenants.Validator
	v.Check(validModel(in.Model), "model", "must be MS3, MS4 or MS5")
	num, ok := ParseVersion(in.Version)
	v.Check(ok, "version", "must be MAJOR.MINOR.PATCH, each part from 0 to 65535, not 0.0.0")
	v.Check(in.SecurityVersion != nil && *in.SecurityVersion >= 0 && *in.SecurityVersion <= 1000000, "security_version", "is required, from 0 to 1000000")
	v.Check(len(in.Notes) <= 20000, "notes", "must be at most 20000 characters")
	v.Check(in.Size > 0 && in.Size <= s.cfg.MaxArtifactSize, "size", fmt.Sprintf("must be from 1 to %d bytes", s.cfg.MaxArtifactSize))
	if err := v.Err(); err != nil {
		return ReleaseView{}, err
	}
	id := uuid.Must(uuid.NewV7())
	key := "firmware/" + in.Model + "/" + id.String() + ".bin"
	err := s.DB.WithContext(ctx).Exec(`SELECT firmware_release_create(?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		id, in.Model, in.Version, int64(num), *in.SecurityVersion, in.Notes, in.Size, key, actor).Error
	if isUniqueViolation(err) {
		return ReleaseView{}, tenants.Errorf(tenants.EConflict, "%s %s exists already", in.Model, in.Version)
	}
	if err != nil {
		return ReleaseView{}, fmt.Errorf("releases: create: %w", err)
	}
	return s.GetRelease(ctx, id)
}

// GetRelease returns one release.
func (s *Service) GetRelease(ctx context.Context, id uuid.UUID) (ReleaseView, error) {
	r, err := s.release(ctx, s.DB.WithContext(ctx), id)
	if err != nil {
		return ReleaseView{}, err
	}
	return viewOf(r), nil
}

func (s *Service) release(ctx context.Context, db *gorm.DB, id uuid.UUID) (Release, error) {
	var r Release
	err := db.Where("id = ?", id).Take(&r).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return r, tenants.NotFound("release")
	}
	if err != nil {
		return r, fmt.Errorf("releases: load: %w", err)
	}
	return r, nil
}

// ListReleases returns releases, newest first, optionally of one model.
func (s *Service) ListReleases(ctx context.Context, model string, after uuid.UUID, limit int) ([]ReleaseView, error) {
	q := s.DB.WithContext(ctx).Order("id DESC").Limit(limit)
	if model != "" {
		if !validModel(model) {
			return nil, tenants.Invalid(tenants.FieldError{Field: "model", Message: "must be MS3, MS4 or MS5"})
		}
		q = q.Where("model = ?", model)
	}
	if after != uuid.Nil {
		q = q.Where("id < ?", after)
	}
	var rs []Release
	if err := q.Find(&rs).Error; err != nil {
		return nil, fmt.Errorf("releases: list: %w", err)
	}
	out := make([]ReleaseView, len(rs))
	for i, r := range rs {
		out[i] = viewOf(r)
	}
	return out, nil
}

// Upload appends one chunk of the artifact at offset at. Chunks must come
// in order: a chunk that does not start where the upload stands is refused
// with the current offset, so a client that lost an answer resumes from
// there. The digest advances with every chunk.
func (s *Service) Upload(ctx context.Context, id uuid.UUID, at int64, total int64, chunk io.Reader, n int64) (ReleaseView, error) {
	err := s.DB.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		// One chunk of a release at a time, across replicas.
		if err := tx.Exec(`SELECT pg_advisory_xact_lock(hashtextextended(?, 17))`, id.String()).Error; err != nil {
			return fmt.Errorf("releases: lock upload: %w", err)
		}
		r, err := s.release(ctx, tx, id)
		if err != nil {
			return err
		}
		if r.State != "uploading" {
			return tenants.Errorf(tenants.EConflict, "the release is published; its artifact cannot change")
		}
		if total >= 0 && total != r.Size {
			return tenants.Invalid(tenants.FieldError{Field: "Content-Range", Message: fmt.Sprintf("the total must be the declared size, %d", r.Size)})
		}
		if at != r.Uploaded {
			return &tenants.Error{Code: tenants.EConflict, Message: fmt.Sprintf("the upload stands at byte %d; send the chunk that starts there", r.Uploaded)}
		}
		if n <= 0 || at+n > r.Size {
			return tenants.Invalid(tenants.FieldError{Field: "body", Message: fmt.Sprintf("must hold 1 to %d bytes", r.Size-at)})
		}
		h := sha256.New()
		if len(r.HashState) > 0 {
			if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(r.HashState); err != nil {
				return fmt.Errorf("releases: digest state: %w", err)
			}
		}
		wrote, err := s.Store.Append(ctx, r.StorageKey, at, io.TeeReader(io.LimitReader(chunk, n), h))
		if err != nil {
			return err
		}
		if wrote != n {
			return tenants.Invalid(tenants.FieldError{Field: "body", Message: fmt.Sprintf("holds %d bytes, Content-Range says %d", wrote, n)})
		}
		state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
		if err != nil {
			return fmt.Errorf("releases: digest state: %w", err)
		}
		var moved bool
		if err := tx.Raw(`SELECT firmware_release_advance(?, ?, ?, ?)`, id, at, at+n, state).Scan(&moved).Error; err != nil {
			return fmt.Errorf("releases: advance upload: %w", err)
		}
		if !moved {
			return tenants.Errorf(tenants.EConflict, "another chunk was stored meanwhile; read the release and resume")
		}
		return nil
	})
	if err != nil {
		return ReleaseView{}, err
	}
	return s.GetRelease(ctx, id)
}

// Publish finishes an upload: the digest is final, the manifest is signed
// and stored as boxes will receive it, and the release can be rolled out.
func (s *Service) Publish(ctx context.Context, id uuid.UUID) (ReleaseView, error) {
	r, err := s.release(ctx, s.DB.WithContext(ctx), id)
	if err != nil {
		return ReleaseView{}, err
	}
	if r.State == "published" {
		return viewOf(r), nil
	}
	if r.Uploaded != r.Size {
		return ReleaseView{}, tenants.Errorf(tenants.EConflict, "the artifact is incomplete: %d of %d bytes uploaded", r.Uploaded, r.Size)
	}
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(r.HashState); err != nil {
		return ReleaseView{}, fmt.Errorf("releases: digest state: %w", err)
	}
	sum := h.Sum(nil)
	now := s.now()
	signed, err := s.Signer.Sign(signing.Manifest{Type: signing.TypeFirmware, Model: r.Model, Version: uint64(r.VersionNumber),
		SecurityVersion: uint64(r.SecurityVersion), IssuedAt: now, ExpiresAt: now.Add(s.cfg.ManifestTTL), Size: r.Size, SHA256: hex.EncodeToString(sum)})
	if err != nil {
		return ReleaseView{}, fmt.Errorf("releases: sign manifest: %w", err)
	}
	envelope, err := json.Marshal(signed)
	if err != nil {
		return ReleaseView{}, fmt.Errorf("releases: manifest: %w", err)
	}
	var m signing.Manifest
	if err := json.Unmarshal(signed.Manifest, &m); err != nil {
		return ReleaseView{}, fmt.Errorf("releases: manifest: %w", err)
	}
	var done bool
	if err := s.DB.WithContext(ctx).Raw(`SELECT firmware_release_publish(?, ?, ?, ?)`, id, sum, envelope, m.KeyID).Scan(&done).Error; err != nil {
		return ReleaseView{}, fmt.Errorf("releases: publish: %w", err)
	}
	if !done {
		return ReleaseView{}, tenants.Errorf(tenants.EConflict, "the release changed meanwhile; read it again")
	}
	s.Log.Info("firmware release published", "release_id", id, "model", r.Model, "version", r.Version, "sha256", hex.EncodeToString(sum))
	return s.GetRelease(ctx, id)
}

func isUniqueViolation(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == "23505"
}
