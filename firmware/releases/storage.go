package releases

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Storage keeps firmware artifacts. An upload arrives in chunks, each
// appended where the previous one ended, so that an artifact is never held
// whole in memory and a cut upload resumes; boxes read any byte range of a
// finished one. An S3-compatible store implements it with a multipart
// upload (one part per chunk, completed when the release is published) and
// ranged GETs.
type Storage interface {
	// Append writes r at offset at of key and returns how many bytes it
	// wrote. Bytes past at+n from an earlier, abandoned attempt are cut off.
	Append(ctx context.Context, key string, at int64, r io.Reader) (int64, error)
	// Open returns the stored artifact for ranged reads.
	Open(ctx context.Context, key string) (Object, error)
}

// Object is one stored artifact.
type Object interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// ErrNoObject is an artifact the store does not hold.
var ErrNoObject = errors.New("releases: no such artifact")

// Dir is Storage in a local directory: the default, and what a single
// server or a shared volume needs.
type Dir struct{ root string }

// NewDir returns the store under root, creating it.
func NewDir(root string) (*Dir, error) {
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("releases: storage directory: %w", err)
	}
	return &Dir{root: root}, nil
}

func (d *Dir) path(key string) (string, error) {
	// Keys are made by this package; refuse anything that could leave root.
	if key == "" || strings.Contains(key, "..") || strings.HasPrefix(key, "/") {
		return "", fmt.Errorf("releases: bad storage key %q", key)
	}
	return filepath.Join(d.root, filepath.FromSlash(key)), nil
}

// Append implements Storage.
func (d *Dir) Append(ctx context.Context, key string, at int64, r io.Reader) (int64, error) {
	p, err := d.path(key)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		return 0, fmt.Errorf("releases: storage: %w", err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o640)
	if err != nil {
		return 0, fmt.Errorf("releases: storage: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(at, io.SeekStart); err != nil {
		return 0, fmt.Errorf("releases: storage: %w", err)
	}
	n, err := io.Copy(f, r)
	if err != nil {
		return n, fmt.Errorf("releases: storage: %w", err)
	}
	if err := f.Truncate(at + n); err != nil {
		return n, fmt.Errorf("releases: storage: %w", err)
	}
	if err := f.Sync(); err != nil {
		return n, fmt.Errorf("releases: storage: %w", err)
	}
	return n, nil
}

type fileObject struct {
	*os.File
	size int64
}

func (o fileObject) Size() int64 { return o.size }

// Open implements Storage.
func (d *Dir) Open(ctx context.Context, key string) (Object, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoObject
	}
	if err != nil {
		return nil, fmt.Errorf("releases: storage: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("releases: storage: %w", err)
	}
	return fileObject{File: f, size: st.Size()}, nil
}
