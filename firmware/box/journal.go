package box

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
)

// Journal is the box's append-only record of what it did offline (R6):
// one JSON entry per line in journal.jsonl, each carrying the next seq and
// the hash of the entry before it. An entry is written and synced to disk
// before the action it records is reported done; the bytes written are
// the bytes uploaded and hashed, never re-encoded. journal.acked holds the
// highest seq the server confirmed.
type Journal struct {
	mu      sync.Mutex
	dir     string
	f       *os.File
	entries []json.RawMessage // all of them, in seq order (a simulator's journal is small)
	last    [32]byte
	acked   uint64
}

// OpenJournal opens (or starts) the journal in dir, checking the chain of
// what is on disk: a box whose journal was tampered with refuses to start
// on it rather than upload it.
func OpenJournal(dir string) (*Journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("box: journal: %w", err)
	}
	j := &Journal{dir: dir}
	raw, err := os.ReadFile(filepath.Join(dir, "journal.jsonl"))
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("box: journal: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := append(json.RawMessage(nil), sc.Bytes()...)
		var e boxsync.Entry
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, fmt.Errorf("box: journal entry %d: %w", len(j.entries)+1, err)
		}
		want := ""
		if len(j.entries) > 0 {
			want = boxsync.Link(j.last)
		}
		if e.Seq != uint64(len(j.entries))+1 || e.Prev != want {
			return nil, fmt.Errorf("box: journal entry %d does not continue the chain", len(j.entries)+1)
		}
		j.entries = append(j.entries, line)
		j.last = boxsync.Hash(line)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "journal.acked")); err == nil {
		if j.acked, err = strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64); err != nil {
			return nil, fmt.Errorf("box: journal.acked: %w", err)
		}
	}
	if j.f, err = os.OpenFile(filepath.Join(dir, "journal.jsonl"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600); err != nil {
		return nil, fmt.Errorf("box: journal: %w", err)
	}
	return j, nil
}

// Close closes the journal file.
func (j *Journal) Close() error { return j.f.Close() }

// Append writes e as the next entry (its Seq and Prev are set here) and
// returns it as written.
func (j *Journal) Append(e boxsync.Entry) (boxsync.Entry, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	e.Seq = uint64(len(j.entries)) + 1
	e.Prev = ""
	if len(j.entries) > 0 {
		e.Prev = boxsync.Link(j.last)
	}
	line, err := json.Marshal(e)
	if err != nil {
		return e, err
	}
	if _, err := j.f.Write(append(line, '\n')); err != nil {
		return e, fmt.Errorf("box: journal write: %w", err)
	}
	if err := j.f.Sync(); err != nil {
		return e, fmt.Errorf("box: journal sync: %w", err)
	}
	j.entries = append(j.entries, line)
	j.last = boxsync.Hash(line)
	return e, nil
}

// Seq is the seq of the last entry written.
func (j *Journal) Seq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return uint64(len(j.entries))
}

// Acked is the highest seq the server confirmed.
func (j *Journal) Acked() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.acked
}

// Pending returns up to max entries after from (exact bytes).
func (j *Journal) Pending(from uint64, max int) []json.RawMessage {
	j.mu.Lock()
	defer j.mu.Unlock()
	if from >= uint64(len(j.entries)) {
		return nil
	}
	end := min(uint64(len(j.entries)), from+uint64(max))
	return append([]json.RawMessage(nil), j.entries[from:end]...)
}

// Ack records that the server holds every entry up to seq.
func (j *Journal) Ack(seq uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if seq <= j.acked {
		return nil
	}
	j.acked = min(seq, uint64(len(j.entries)))
	return replaceOfflineFile(filepath.Join(j.dir, "journal.acked"), []byte(strconv.FormatUint(j.acked, 10)))
}

// replaceOfflineFile replaces path with data, synced, so a power cut leaves
// either the old or the new content.
func replaceOfflineFile(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
