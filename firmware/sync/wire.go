// Package boxsync is offline sync (OFFLINE.md, "The journal"; R6, R8):
// what a box did while it could not reach the server, uploaded on
// reconnect and stored exactly once. The directory is firmware/sync; the
// package is named boxsync so that it never shadows the standard library's
// sync where both are imported.
//
// # Wire format, shared with the reference box (firmware/box)
//
// A journal entry is a JSON object (Entry) that the box writes once and
// never re-serialises: its SHA-256 over the exact bytes is the link the
// next entry carries (prev), so the entries form a hash chain, and a batch
// is signed with the box's ed25519 device key over the exact bytes of its
// entries (BatchMessage). The server verifies the signature and the chain
// over the bytes it received, never over a re-encoding.
//
// # What the server does (Service.Ingest)
//
//   - signature over the batch by the box's live device key, or 422 and a
//     "forged" incident;
//   - seqs consecutive and each prev the hash of the entry before, or 422
//     (reordered or broken chain);
//   - the batch continues the stored journal: its first new entry follows
//     the highest contiguous seq stored, and links to that entry's hash;
//     a batch starting beyond it is a gap (409, incident), one whose
//     entries differ from stored ones at the same seqs is a fork (409,
//     incident), one that is wholly stored already is a replay (409, with
//     the highest seq so the box moves on); an overlap that matches is
//     stored from where the server stands;
//   - new entries stored once by (box, seq): the box's box_sync_state row
//     is locked, only seqs above its high seq are inserted, and the primary
//     key (box, seq) refuses a duplicate; one statement per batch, unnest
//     arrays rather than COPY, which row-level security forbids on the
//     journal (a COPY into a temporary table then INSERT … SELECT measured
//     slower: BenchmarkSyncIngest);
//   - key state updated as exchange does for online events (a pickup takes
//     the key out with its access, a dropoff puts it in that bin); server
//     times win for records, box times are kept beside them;
//   - the webhook events exchange emits online, "key.picked_up" and
//     "key.returned" (a dropoff of a key the records had out or missing),
//     with the same data plus offline: true, box_time and seq, written in
//     the batch's transaction (Deps.Emit, one statement for the batch);
//     entries already stored are cut off before they are applied, so a
//     resent entry never emits again;
//   - conflicts stored as they happened, never dropped: a pickup on access
//     revoked meanwhile (or a derived code the server never issued), a key
//     taken twice, a used backup code reported again; each raises an alert
//     to the tenant's admins (sync_conflict) and the webhook event
//     "sync.conflict" (Deps.Emit: tenants/webhooks).
//
// Incidents of refused batches (gap, fork, forged) are written in a
// transaction of their own, since the request's is rolled back; one per
// (box, kind, seq), so a box retrying the same bad batch alerts once.
package boxsync

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"time"
)

// Entry kinds.
const (
	// KindPickup: a key left bin Bin; FobSerial is the fob the box saw
	// leave; Method says what opened it and its field is set.
	KindPickup = "pickup"
	// KindDropoff: the key with FobSerial was put in bin Bin.
	KindDropoff = "dropoff"
	// KindBackupOpen: backup code BackupCounter of bin Bin (0: all) opened.
	KindBackupOpen = "backup_open"
)

// Methods of a pickup.
const (
	MethodVerifier = "verifier" // a bundle verifier (booking or alias code, phone + PIN)
	MethodDerived  = "derived"  // a derived code; DerivedTag is its tag
	MethodBackup   = "backup"   // after a backup code opened the bin
)

// Entry is one journal entry as the box writes it.
type Entry struct {
	Seq  uint64 `json:"seq"`
	Prev string `json:"prev"` // base64 SHA-256 of the previous entry's bytes; "" for seq 1
	// BoxTime is the box's clock when it happened; ServerTimeSeen the
	// latest server time the box had received then (R8).
	BoxTime        time.Time `json:"box_time"`
	ServerTimeSeen time.Time `json:"server_time_seen"`
	Kind           string    `json:"kind"`
	Bin            int       `json:"bin"`
	FobSerial      string    `json:"fob_serial,omitempty"`
	Method         string    `json:"method,omitempty"`
	Verifier       string    `json:"verifier,omitempty"`
	DerivedTag     string    `json:"derived_tag,omitempty"`
	BackupCounter  *uint64   `json:"backup_counter,omitempty"`
	AccessID       string    `json:"access_id,omitempty"`
}

// Hash is the link to an entry: SHA-256 of its exact bytes.
func Hash(raw []byte) [32]byte { return sha256.Sum256(raw) }

// Link encodes a hash as Entry.Prev carries it.
func Link(h [32]byte) string { return base64.StdEncoding.EncodeToString(h[:]) }

// BatchMessage is what a batch's signature covers: a domain label, the
// box id, and each entry's exact bytes on a line of its own (JSON never
// holds a raw newline).
func BatchMessage(boxID string, events []json.RawMessage) []byte {
	n := 32 + len(boxID)
	for _, e := range events {
		n += len(e) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, "keyrelay-journal-v1\n"...)
	b = append(b, boxID...)
	b = append(b, '\n')
	for _, e := range events {
		b = append(b, e...)
		b = append(b, '\n')
	}
	return b
}

// Batch is the body of POST /box/v1/sync.
type Batch struct {
	Events    []json.RawMessage `json:"events"`
	Signature string            `json:"signature"` // base64 ed25519 over BatchMessage
}

// SignBatch signs events as the box does.
func SignBatch(key ed25519.PrivateKey, boxID string, events []json.RawMessage) Batch {
	return Batch{Events: events, Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(key, BatchMessage(boxID, events)))}
}

// Conflict is a stored entry the tenant must look at.
type Conflict struct {
	Seq    uint64 `json:"seq"`
	Kind   string `json:"kind"` // revoked_access, taken_twice, backup_reused
	Detail string `json:"detail"`
}

// Result answers a stored batch.
type Result struct {
	// HighSeq is the highest seq stored with every seq below it: the box
	// may forget entries up to it.
	HighSeq    uint64     `json:"high_seq"`
	Stored     int        `json:"stored"`
	Duplicates int        `json:"duplicates"`
	Conflicts  []Conflict `json:"conflicts"`
}
