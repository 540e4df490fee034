package box

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/boxkeys"
	"github.com/keyrelay/keyrelay/firmware/offline"
	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
)

// Offline is what an MS4/MS5 decides alone at its keypad when it cannot
// reach the server: derived codes (15 digits) and backup codes (10
// digits), under its offline attempt limits, with every opening journaled
// before it is reported; and the upload of that journal on reconnect.
// Its state (latest server time seen, backup counters, what each bin
// holds, revoked derived tags, failure counters) is persisted in dir
// before any decision it affects is acted on: a power cut cannot reopen a
// used backup code or a spent failure window.
type Offline struct {
	mu     sync.Mutex
	dir    string
	boxID  uuid.UUID
	bins   int
	kder   []byte
	kbak   []byte
	limits offline.Limits
	clock  func() time.Time
	st     offlineState
	J      *Journal
}

type offlineState struct {
	// LatestServer is the latest server time the box has received (R8):
	// it only moves forward.
	LatestServer time.Time         `json:"latest_server_time"`
	NextBackup   map[int]uint64    `json:"next_backup"`
	Bins         map[int]string    `json:"bins"`
	RevokedTags  []string          `json:"revoked_derived_tags"`
	Failures     map[string]window `json:"failures"`
}

// window is a fixed-window failure counter of one kind of code.
type window struct {
	Index int64 `json:"index"`
	Count int   `json:"count"`
}

// Decision is the keypad's answer.
type Decision struct {
	Open   bool
	Bins   []int  // the bins opened (all bins for the open-all code)
	Reason string // offline.* refusal reason when !Open
	Entry  boxsync.Entry
}

// NewOffline opens the offline state and journal in dir for the box id
// names, with bins bins. clock is the box's clock (nil: time.Now).
func NewOffline(dir string, id Identity, bins int, limits offline.Limits, clock func() time.Time) (*Offline, error) {
	boxID, err := uuid.Parse(id.BoxID)
	if err != nil {
		return nil, fmt.Errorf("box: offline: %w", err)
	}
	o := &Offline{dir: dir, boxID: boxID, bins: bins, limits: limits, clock: clock}
	if o.clock == nil {
		o.clock = time.Now
	}
	if o.kder, err = boxkeys.Derive(id.Secret, boxkeys.Derived); err != nil {
		return nil, err
	}
	if o.kbak, err = boxkeys.Derive(id.Secret, boxkeys.Backup); err != nil {
		return nil, err
	}
	if o.J, err = OpenJournal(dir); err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, "offline.json"))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("box: offline state: %w", err)
	default:
		if err := json.Unmarshal(raw, &o.st); err != nil {
			return nil, fmt.Errorf("box: offline state: %w", err)
		}
	}
	if o.st.NextBackup == nil {
		o.st.NextBackup = map[int]uint64{}
	}
	if o.st.Bins == nil {
		o.st.Bins = map[int]string{}
	}
	if o.st.Failures == nil {
		o.st.Failures = map[string]window{}
	}
	return o, nil
}

func (o *Offline) save() error {
	raw, err := json.Marshal(o.st)
	if err != nil {
		return err
	}
	return replaceOfflineFile(filepath.Join(o.dir, "offline.json"), raw)
}

// SawServerTime records a time the server sent (provisioning, whoami, a
// bundle); an earlier one than already seen changes nothing.
func (o *Offline) SawServerTime(t time.Time) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !t.After(o.st.LatestServer) {
		return nil
	}
	o.st.LatestServer = t.UTC()
	return o.save()
}

// SetBin records what the bin's reader sees (a fob serial, "" for empty).
func (o *Offline) SetBin(bin int, fob string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.st.Bins[bin] = fob
	return o.save()
}

// Bin returns the fob serial the bin holds.
func (o *Offline) Bin(bin int) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.st.Bins[bin]
}

// SetRevokedTags replaces the revoked derived tags with a bundle's list.
func (o *Offline) SetRevokedTags(tags []string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.st.RevokedTags = slices.Clone(tags)
	return o.save()
}

// SetBins replaces what every bin holds with hold (bin → fob serial):
// what the readers see when the box starts.
func (o *Offline) SetBins(hold map[int]string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.st.Bins = map[int]string{}
	for bin, fob := range hold {
		o.st.Bins[bin] = fob
	}
	return o.save()
}

// Bins returns the bins that hold a key (bin → fob serial).
func (o *Offline) Bins() map[int]string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[int]string{}
	for bin, fob := range o.st.Bins {
		if fob != "" {
			out[bin] = fob
		}
	}
	return out
}

// NextBackup is the counter of the bin's next backup code.
func (o *Offline) NextBackup(bin int) uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.st.NextBackup[bin]
}

// limited refuses a kind of code whose failures of the current window are
// used up. The window index never goes back: a clock set back does not
// reopen a spent window.
func (o *Offline) limited(kind string, failures int, w time.Duration) (bool, int64) {
	idx := o.clock().UnixNano() / int64(w)
	cur := o.st.Failures[kind]
	if idx < cur.Index {
		idx = cur.Index
	}
	return idx == cur.Index && cur.Count >= failures, idx
}

func (o *Offline) fail(kind string, idx int64) error {
	cur := o.st.Failures[kind]
	if cur.Index != idx {
		cur = window{Index: idx}
	}
	cur.Count++
	o.st.Failures[kind] = cur
	return o.save()
}

// EnterCode handles a code typed at the keypad while offline.
func (o *Offline) EnterCode(code string) (Decision, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch len(code) {
	case offline.DerivedDigits:
		return o.derived(code)
	case offline.BackupDigits:
		return o.backup(code)
	}
	return Decision{Reason: offline.Malformed}, nil
}

func (o *Offline) derived(code string) (Decision, error) {
	locked, idx := o.limited("derived", o.limits.DerivedFailures, o.limits.DerivedWindow)
	if locked {
		return Decision{Reason: offline.Locked}, nil
	}
	now := o.clock()
	g, tag, reason := offline.CheckDerived(o.kder, o.boxID, code, func(bin int) string { return o.st.Bins[bin] }, now, o.st.LatestServer)
	if reason == "" && slices.Contains(o.st.RevokedTags, tag) {
		reason = offline.Revoked
	}
	switch reason {
	case "":
	case offline.WrongCode, offline.Malformed:
		// Only a wrong tag is a guess; a right code outside its window or
		// refused for the clock is not the attacker's win either, but it
		// is not a guess at the tag.
		return Decision{Reason: reason}, o.fail("derived", idx)
	default:
		return Decision{Reason: reason}, nil
	}
	fob := o.st.Bins[g.Bin]
	e, err := o.J.Append(boxsync.Entry{BoxTime: now.UTC(), ServerTimeSeen: o.st.LatestServer, Kind: boxsync.KindPickup, Bin: g.Bin,
		FobSerial: fob, Method: boxsync.MethodDerived, DerivedTag: tag})
	if err != nil {
		return Decision{}, err
	}
	o.st.Bins[g.Bin] = ""
	return Decision{Open: true, Bins: []int{g.Bin}, Entry: e}, o.save()
}

func (o *Offline) backup(code string) (Decision, error) {
	n, w := o.limits.BackupLimitFor(o.bins)
	locked, idx := o.limited("backup", n, w)
	if locked {
		return Decision{Reason: offline.Locked}, nil
	}
	d, ok, err := o.matchBackup(code)
	if ok || err != nil {
		return d, err
	}
	return Decision{Reason: offline.WrongCode}, o.fail("backup", idx)
}

// matchBackup opens for code if it is the next backup code of a bin (or
// of all bins), spending it; ok is false when it is none. Called with o.mu
// held, the limits already checked.
func (o *Offline) matchBackup(code string) (d Decision, ok bool, err error) {
	// Only each bin's next counter is live: no look-ahead, and a used
	// code is one counter behind.
	bin, found := -1, false
	for b := 0; b <= o.maxBin(); b++ {
		if offline.BackupCode(o.kbak, o.boxID, b, o.st.NextBackup[b]) == code {
			bin, found = b, true
			break
		}
	}
	if !found {
		return Decision{}, false, nil
	}
	counter := o.st.NextBackup[bin]
	// Spent before it opens: a power cut between here and the bin leaves
	// the code used, never reusable.
	o.st.NextBackup[bin] = counter + 1
	if err := o.save(); err != nil {
		return Decision{}, true, err
	}
	now := o.clock()
	e, err := o.J.Append(boxsync.Entry{BoxTime: now.UTC(), ServerTimeSeen: o.st.LatestServer, Kind: boxsync.KindBackupOpen, Bin: bin, BackupCounter: &counter})
	if err != nil {
		return Decision{}, true, err
	}
	bins := []int{bin}
	if bin == offline.AllBins {
		bins = bins[:0]
		for b := 1; b <= o.maxBin(); b++ {
			bins = append(bins, b)
		}
	}
	return Decision{Open: true, Bins: bins, Entry: e}, true, nil
}

func (o *Offline) maxBin() int { return o.bins }

// TakeKey journals that the key in an open bin left (after a backup code
// or a bundle code opened it).
func (o *Offline) TakeKey(bin int, method, verifier, accessID string) (boxsync.Entry, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	fob := o.st.Bins[bin]
	if fob == "" {
		return boxsync.Entry{}, fmt.Errorf("box: bin %d is empty", bin)
	}
	e, err := o.J.Append(boxsync.Entry{BoxTime: o.clock().UTC(), ServerTimeSeen: o.st.LatestServer, Kind: boxsync.KindPickup, Bin: bin,
		FobSerial: fob, Method: method, Verifier: verifier, AccessID: accessID})
	if err != nil {
		return e, err
	}
	o.st.Bins[bin] = ""
	return e, o.save()
}

// Dropoff journals a key put into a bin offline.
func (o *Offline) Dropoff(bin int, fob string) (boxsync.Entry, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	e, err := o.J.Append(boxsync.Entry{BoxTime: o.clock().UTC(), ServerTimeSeen: o.st.LatestServer, Kind: boxsync.KindDropoff, Bin: bin, FobSerial: fob})
	if err != nil {
		return e, err
	}
	o.st.Bins[bin] = fob
	return e, o.save()
}

// SyncBatch is the most entries the box sends at once.
const SyncBatch = 500

// Sync uploads the journal from the last confirmed entry, in batches
// signed with the device key, until the server holds all of it. A refusal
// for a replay or a gap reads where the server stands and resumes there;
// any other refusal is returned.
func (o *Offline) Sync(ctx context.Context, c *Client) (boxsync.Result, error) {
	var total boxsync.Result
	total.Conflicts = []boxsync.Conflict{}
	for tries := 0; tries < 1000; tries++ {
		evs := o.J.Pending(o.J.Acked(), SyncBatch)
		if len(evs) == 0 {
			return total, nil
		}
		batch := boxsync.SignBatch(c.ID.PrivateKey, c.ID.BoxID, evs)
		status, raw, err := c.Request(ctx, http.MethodPost, "/box/v1/sync", batch)
		if err != nil {
			return total, err
		}
		switch status {
		case http.StatusOK:
			var r boxsync.Result
			if err := json.Unmarshal(raw, &r); err != nil {
				return total, err
			}
			total.HighSeq, total.Stored, total.Duplicates = r.HighSeq, total.Stored+r.Stored, total.Duplicates+r.Duplicates
			total.Conflicts = append(total.Conflicts, r.Conflicts...)
			if err := o.J.Ack(r.HighSeq); err != nil {
				return total, err
			}
		case http.StatusConflict:
			var st boxsync.State
			if err := c.Call(ctx, http.StatusOK, http.MethodGet, "/box/v1/sync", nil, &st); err != nil {
				return total, err
			}
			if st.HighSeq <= o.J.Acked() && st.HighSeq != 0 || st.HighSeq == 0 && o.J.Acked() == 0 {
				// The server is not ahead of what the box knows: the refusal
				// was not a replay (a fork) and resending will not fix it.
				return total, &StatusError{Status: status, Body: raw}
			}
			total.HighSeq = st.HighSeq
			if err := o.J.Ack(st.HighSeq); err != nil {
				return total, err
			}
		default:
			return total, &StatusError{Status: status, Body: raw}
		}
	}
	return total, errors.New("box: sync did not finish")
}
