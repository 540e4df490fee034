package boxsync

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/google/uuid"
	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/firmware/offline"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/webhooks"
)

// MaxEvents bounds one batch (about 300 bytes an entry, under the 1 MiB
// body limit).
const MaxEvents = 2000

// Offline is what sync needs of firmware/offline.
type Offline interface {
	BackupUsed(ctx context.Context, boxID uuid.UUID, bin int, counter uint64) (bool, error)
	LookupDerived(ctx context.Context, boxID uuid.UUID, tags []string) (map[string]offline.DerivedUse, error)
	TagHash(ctx context.Context, boxID uuid.UUID, tag string) []byte
}

// Alerts tells the tenant's admins (tenants/accounts).
type Alerts interface {
	AlertAdmins(ctx context.Context, kind string, data map[string]string) error
}

// Reminders follows an access's key out and back in for its return
// reminder (tenants/bookings), in the caller's transaction.
type Reminders interface {
	KeysTaken(ctx context.Context, bookingIDs []uuid.UUID) error
	KeysReturned(ctx context.Context, bookingIDs []uuid.UUID) error
	// KeysMoved: keys now picked up at another box, which their waiting
	// reminders name.
	KeysMoved(ctx context.Context, keyIDs []uuid.UUID) error
}

// Emit writes tenant webhook events in the caller's transaction, all of a
// batch's in one statement (tenants/webhooks.EmitAll).
type Emit func(ctx context.Context, events ...webhooks.Event) error

// Deps are the service's collaborators; Emit may be nil (no webhooks).
type Deps struct {
	Scope     *tenants.Scope
	Offline   Offline
	Alerts    Alerts
	Reminders Reminders
	Emit      Emit
	Log       *slog.Logger
	// Observer counts ingested entries (the platform's metrics); may be nil.
	Observer Observer
}

// Observer counts journal entries stored, by kind.
type Observer interface {
	SyncEventsIngested(kind string, n int)
}

// Service ingests box journals.
type Service struct {
	scope     *tenants.Scope
	offline   Offline
	alerts    Alerts
	reminders Reminders
	emit      Emit
	log       *slog.Logger
	observer  Observer
	now       func() time.Time
}

// New returns the service.
func New(d Deps) *Service {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	return &Service{scope: d.Scope, offline: d.Offline, alerts: d.Alerts, reminders: d.Reminders, emit: d.Emit, log: d.Log, observer: d.Observer, now: time.Now}
}

// State is where the server stands in a box's journal.
type State struct {
	HighSeq  uint64 `json:"high_seq"`
	HighHash string `json:"high_hash"` // Link of entry HighSeq; "" at 0
}

// State answers GET /box/v1/sync: a box that was refused (replay, gap)
// reads where to resume.
func (s *Service) State(ctx context.Context) (State, error) {
	p, err := tenants.RequireBox(ctx)
	if err != nil {
		return State{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return State{}, err
	}
	var st struct {
		HighSeq  uint64
		HighHash []byte
	}
	if err := tx.Raw(`SELECT high_seq, high_hash FROM box_sync_state WHERE box_id = ?`, p.BoxID).Scan(&st).Error; err != nil {
		return State{}, fmt.Errorf("boxsync: load state: %w", err)
	}
	return stateOf(st.HighSeq, st.HighHash), nil
}

func stateOf(seq uint64, hash []byte) State {
	st := State{HighSeq: seq}
	if len(hash) == 32 {
		st.HighHash = base64.StdEncoding.EncodeToString(hash)
	}
	return st
}

// parsed is one received entry with its exact bytes' hash.
type parsed struct {
	Entry
	hash [32]byte
}

// Ingest verifies and stores a batch (see the package doc for the order of
// checks and what each refusal means).
func (s *Service) Ingest(ctx context.Context, in Batch) (Result, error) {
	p, err := tenants.RequireBox(ctx)
	if err != nil {
		return Result{}, err
	}
	if len(in.Events) == 0 || len(in.Events) > MaxEvents {
		return Result{}, tenants.Invalid(tenants.FieldError{Field: "events", Message: fmt.Sprintf("must hold 1 to %d entries", MaxEvents)})
	}
	sig, err := base64.StdEncoding.DecodeString(in.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return Result{}, tenants.Invalid(tenants.FieldError{Field: "signature", Message: "must be a base64 ed25519 signature"})
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Result{}, err
	}
	var b struct {
		Name string
		Bins int
	}
	if err := tx.Raw(`SELECT name, bins FROM boxes WHERE id = ?`, p.BoxID).Take(&b).Error; err != nil {
		return Result{}, fmt.Errorf("boxsync: load box: %w", err)
	}
	// The journal is signed with the device key the request was signed
	// with: the box's live credential (firmware/devices).
	var cred struct{ PublicKey []byte }
	if err := tx.Raw(`SELECT public_key FROM box_credentials WHERE box_id = ? AND revoked_at IS NULL`, p.BoxID).Scan(&cred).Error; err != nil {
		return Result{}, fmt.Errorf("boxsync: load device key: %w", err)
	}
	pub := cred.PublicKey
	msg := BatchMessage(p.BoxID.String(), in.Events)
	var v tenants.Validator
	evs := decodeEntries(&v, in.Events, msg, b.Bins)
	if err := v.Err(); err != nil {
		return Result{}, err
	}
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, msg, sig) {
		s.incident(ctx, p, b.Name, "forged", evs[0].Seq, "a journal batch whose signature does not verify with the box's device key was refused")
		return Result{}, tenants.Invalid(tenants.FieldError{Field: "signature", Message: "does not verify with this box's device key over these entries"})
	}
	for i := 1; i < len(evs); i++ {
		f := "events[" + strconv.Itoa(i) + "]"
		if evs[i].Seq != evs[i-1].Seq+1 {
			return Result{}, tenants.Invalid(tenants.FieldError{Field: f + ".seq", Message: fmt.Sprintf("must be %d: entries go in journal order, one seq after the other", evs[i-1].Seq+1)})
		}
		if evs[i].Prev != Link(evs[i-1].hash) {
			s.incident(ctx, p, b.Name, "fork", evs[i].Seq, "a signed journal batch whose entries do not chain was refused")
			return Result{}, tenants.Invalid(tenants.FieldError{Field: f + ".prev", Message: "is not the hash of the entry before it"})
		}
	}

	tenantID := p.TenantID
	if err := tx.Exec(`INSERT INTO box_sync_state (tenant_id, box_id) VALUES (?, ?) ON CONFLICT DO NOTHING`, tenantID, p.BoxID).Error; err != nil {
		return Result{}, fmt.Errorf("boxsync: state: %w", err)
	}
	var st struct {
		HighSeq  uint64
		HighHash []byte
	}
	// FOR UPDATE: two uploads of one box run one after the other.
	if err := tx.Raw(`SELECT high_seq, high_hash FROM box_sync_state WHERE box_id = ? FOR UPDATE`, p.BoxID).Scan(&st).Error; err != nil {
		return Result{}, fmt.Errorf("boxsync: lock state: %w", err)
	}
	first, last := evs[0].Seq, evs[len(evs)-1].Seq
	if first > st.HighSeq+1 {
		s.incident(ctx, p, b.Name, "gap", st.HighSeq+1, fmt.Sprintf("the box sent entries from seq %d; the server holds its journal up to seq %d, so entries %d to %d are missing", first, st.HighSeq, st.HighSeq+1, first-1))
		return Result{}, tenants.Errorf(tenants.EConflict, "gap: this batch starts at seq %d, the next the server expects is %d; send from there", first, st.HighSeq+1)
	}
	res := Result{Conflicts: []Conflict{}}
	if first <= st.HighSeq {
		// Entries the server holds already must be the same entries.
		upto := min(last, st.HighSeq)
		var stored []struct {
			Seq  uint64
			Hash []byte
		}
		if err := tx.Raw(`SELECT seq, hash FROM box_journal WHERE box_id = ? AND seq BETWEEN ? AND ? ORDER BY seq`, p.BoxID, first, upto).Scan(&stored).Error; err != nil {
			return Result{}, fmt.Errorf("boxsync: load stored hashes: %w", err)
		}
		if uint64(len(stored)) != upto-first+1 {
			return Result{}, fmt.Errorf("boxsync: journal of box %s has holes below its high seq", p.BoxID)
		}
		for i, h := range stored {
			if !bytes.Equal(h.Hash, evs[i].hash[:]) {
				s.incident(ctx, p, b.Name, "fork", h.Seq, fmt.Sprintf("the box sent an entry %d that differs from the one stored: its journal was rewritten or another device signs for it", h.Seq))
				return Result{}, tenants.Errorf(tenants.EConflict, "fork: entry %d differs from the one the server stored", h.Seq)
			}
		}
		if last <= st.HighSeq {
			return Result{}, tenants.Errorf(tenants.EConflict, "replay: entries %d to %d are stored already; the server holds this journal up to seq %d", first, last, st.HighSeq)
		}
		res.Duplicates = int(upto - first + 1)
		evs = evs[res.Duplicates:]
	} else if want := stateOf(st.HighSeq, st.HighHash).HighHash; evs[0].Prev != want {
		s.incident(ctx, p, b.Name, "fork", first, fmt.Sprintf("entry %d does not continue the stored journal at seq %d", first, st.HighSeq))
		return Result{}, tenants.Errorf(tenants.EConflict, "fork: entry %d does not link to stored entry %d", first, st.HighSeq)
	}

	conflicts, err := s.apply(ctx, p, b.Name, evs)
	if err != nil {
		return Result{}, err
	}
	if err := s.store(ctx, p, evs, conflicts); err != nil {
		return Result{}, err
	}
	top := evs[len(evs)-1]
	if err := tx.Exec(`UPDATE box_sync_state SET high_seq = ?, high_hash = ?, updated_at = ? WHERE box_id = ?`, top.Seq, top.hash[:], s.now(), p.BoxID).Error; err != nil {
		return Result{}, fmt.Errorf("boxsync: advance state: %w", err)
	}
	res.HighSeq, res.Stored = top.Seq, len(evs)
	if obs := s.observer; obs != nil {
		byKind := map[string]int{}
		for _, e := range evs {
			byKind[string(e.Kind)]++
		}
		tenants.AfterCommit(ctx, func() {
			for k, n := range byKind {
				obs.SyncEventsIngested(k, n)
			}
		})
	}
	for _, c := range conflicts {
		res.Conflicts = append(res.Conflicts, c)
	}
	return res, nil
}

// decodeEntries parses and checks a batch's entries from msg, their
// BatchMessage. One decoder reads them all from the message, which holds
// each entry's exact bytes one after the other, rather than a decoder for
// each of 2,000 entries: each entry is one whole JSON value (the body was
// parsed), so entry i is the i-th value, and a refused one is consumed
// whole.
func decodeEntries(v *tenants.Validator, events []json.RawMessage, msg []byte, bins int) []parsed {
	evs := make([]parsed, len(events))
	tail := 0
	for _, raw := range events {
		tail += len(raw) + 1
	}
	dec := json.NewDecoder(bytes.NewReader(msg[len(msg)-tail:]))
	dec.DisallowUnknownFields()
	for i, raw := range events {
		f := "events[" + strconv.Itoa(i) + "]"
		if err := dec.Decode(&evs[i].Entry); err != nil {
			v.Add(f, "is not a journal entry: "+err.Error())
			continue
		}
		evs[i].hash = Hash(raw)
		checkEntry(v, f, evs[i].Entry, bins)
	}
	return evs
}

func checkEntry(v *tenants.Validator, f string, e Entry, bins int) {
	v.Check(e.Seq >= 1, f+".seq", "must be at least 1")
	v.Check(!e.BoxTime.IsZero(), f+".box_time", "is required")
	v.Check(len(e.FobSerial) <= 64, f+".fob_serial", "must be at most 64 characters")
	v.Check(len(e.Verifier) <= 128, f+".verifier", "must be at most 128 characters")
	switch e.Kind {
	case KindPickup:
		v.Check(e.Bin >= 1 && e.Bin <= bins, f+".bin", "must be a bin of this box")
		v.Check(e.FobSerial != "", f+".fob_serial", "is required: the fob that left the bin")
		switch e.Method {
		case MethodVerifier:
			v.Check(e.Verifier != "" || e.AccessID != "", f+".verifier", "is required for a verifier pickup")
		case MethodDerived:
			v.Check(len(e.DerivedTag) == offline.TagDigits, f+".derived_tag", fmt.Sprintf("must be %d digits", offline.TagDigits))
		case MethodBackup:
		default:
			v.Add(f+".method", "must be verifier, derived or backup")
		}
		if e.AccessID != "" {
			_, err := uuid.Parse(e.AccessID)
			v.Check(err == nil, f+".access_id", "must be a booking id")
		}
	case KindDropoff:
		v.Check(e.Bin >= 1 && e.Bin <= bins, f+".bin", "must be a bin of this box")
		v.Check(e.FobSerial != "", f+".fob_serial", "is required: the fob put in the bin")
	case KindBackupOpen:
		v.Check(e.Bin >= 0 && e.Bin <= bins, f+".bin", "must be a bin of this box or 0 (all bins)")
		v.Check(e.BackupCounter != nil, f+".backup_counter", "is required")
	default:
		v.Add(f+".kind", "must be pickup, dropoff or backup_open")
	}
}

// incident records a refused batch in a transaction of its own (the
// request's is rolled back with the refusal) and alerts the tenant once
// per (box, kind, seq). Failing to record it does not change the refusal.
func (s *Service) incident(ctx context.Context, p tenants.Principal, boxName, kind string, seq uint64, detail string) {
	bg, cancel := context.WithTimeout(tenants.WithPrincipal(context.Background(), p), 10*time.Second)
	defer cancel()
	err := s.scope.Do(bg, p.TenantID, func(ctx context.Context) error {
		return s.raise(ctx, p, boxName, Conflict{Seq: seq, Kind: kind, Detail: detail}, nil)
	})
	if err != nil {
		s.log.Error("boxsync: record incident", "tenant_id", p.TenantID, "box_id", p.BoxID, "kind", kind, "err", err)
	}
}

// raise stores an incident, audits it and alerts, unless the same one
// (box, kind, seq) was raised before.
func (s *Service) raise(ctx context.Context, p tenants.Principal, boxName string, c Conflict, boxTime *time.Time) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	res := tx.Exec(`INSERT INTO box_sync_incidents (tenant_id, id, box_id, kind, seq, detail, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant_id, box_id, kind, seq) DO NOTHING`, p.TenantID, uuid.Must(uuid.NewV7()), p.BoxID, c.Kind, c.Seq, c.Detail, s.now())
	if res.Error != nil {
		return fmt.Errorf("boxsync: store incident: %w", res.Error)
	}
	if res.RowsAffected == 0 {
		return nil
	}
	details := map[string]string{"kind": c.Kind, "seq": strconv.FormatUint(c.Seq, 10), "detail": c.Detail}
	if boxTime != nil {
		details["box_time"] = boxTime.UTC().Format(time.RFC3339)
	}
	if err := audit.Record(ctx, p.Actor(), "sync.conflict", "box:"+p.BoxID.String(), details); err != nil {
		return err
	}
	data := map[string]string{"box": boxName, "kind": c.Kind, "seq": details["seq"], "detail": c.Detail}
	if err := s.alerts.AlertAdmins(ctx, "sync_conflict", data); err != nil {
		return err
	}
	if s.emit != nil {
		return s.emit(ctx, webhooks.Event{Type: webhooks.SyncConflict, Data: data})
	}
	return nil
}

// keyRow is a key as sync reads and changes it.
type keyRow struct {
	ID          uuid.UUID
	Name        string
	FobSerial   string
	State       string
	BoxID       *uuid.UUID
	Bin         *int
	HomeBoxID   uuid.UUID
	OutAccessID *uuid.UUID
	OutUntil    *time.Time
	OutBy       *string
	changed     bool
}

// pickupBox is the box k's code opens it at: the one whose bin holds it,
// else its home, where it is expected back (as tenants/bookings names it).
func (k *keyRow) pickupBox() uuid.UUID {
	if k.State == "in_bin" && k.BoxID != nil {
		return *k.BoxID
	}
	return k.HomeBoxID
}

// apply runs the new entries against the key records in memory, in
// journal order, and writes the keys that changed, their audit entries and
// the conflicts. It returns the conflicts by entry seq.
func (s *Service) apply(ctx context.Context, p tenants.Principal, boxName string, evs []parsed) (map[uint64]Conflict, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now()
	// Each fob, tag, bin and access once: a batch of 2,000 entries names a
	// few keys many times, and a query with 2,000 parameters where a dozen
	// do costs both sides.
	fobs, tags, bins, accessIDs := []string{}, []string{}, []int{}, []uuid.UUID{}
	seen := map[string]bool{}
	once := func(kind, v string) bool {
		if seen[kind+v] {
			return false
		}
		seen[kind+v] = true
		return true
	}
	for _, e := range evs {
		if e.FobSerial != "" && once("f", e.FobSerial) {
			fobs = append(fobs, e.FobSerial)
		}
		if e.DerivedTag != "" && once("t", e.DerivedTag) {
			tags = append(tags, e.DerivedTag)
		}
		if e.Kind == KindDropoff && once("b", strconv.Itoa(e.Bin)) {
			bins = append(bins, e.Bin)
		}
		if e.AccessID != "" && once("a", e.AccessID) {
			accessIDs = append(accessIDs, uuid.MustParse(e.AccessID))
		}
	}
	var keys []*keyRow
	q := tx.Raw(`SELECT id, name, fob_serial, state, box_id, bin, home_box_id, out_access_id, out_until, out_by FROM keys
		WHERE deleted_at IS NULL AND (fob_serial IN ? OR (box_id = ? AND state = 'in_bin' AND bin IN ?))`, orNone(fobs), p.BoxID, orNoBins(bins))
	if err := q.Scan(&keys).Error; err != nil {
		return nil, fmt.Errorf("boxsync: load keys: %w", err)
	}
	byFob := map[string]*keyRow{}
	pickedUpAt := map[uuid.UUID]uuid.UUID{}
	for _, k := range keys {
		byFob[k.FobSerial] = k
		pickedUpAt[k.ID] = k.pickupBox()
	}
	derived, err := s.offline.LookupDerived(ctx, p.BoxID, tags)
	if err != nil {
		return nil, err
	}
	for _, d := range derived {
		accessIDs = append(accessIDs, d.BookingID)
	}
	type booking struct {
		ID        uuid.UUID
		KeyID     uuid.UUID
		EndsAt    *time.Time
		RevokedAt *time.Time
	}
	var bks []booking
	if len(accessIDs) > 0 {
		if err := tx.Raw(`SELECT id, key_id, ends_at, revoked_at FROM bookings WHERE id IN ?`, accessIDs).Scan(&bks).Error; err != nil {
			return nil, fmt.Errorf("boxsync: load bookings: %w", err)
		}
	}
	bookings := map[uuid.UUID]booking{}
	for _, b := range bks {
		bookings[b.ID] = b
	}

	conflicts := map[uint64]Conflict{}
	var entries []audit.Event
	// The same events, with the same data, as exchange emits for a pickup
	// and a return online, so that an integration sees every key movement;
	// offline and box_time tell it this one happened while the box was
	// offline, and when by the box's clock (at is the server's time, as
	// for the key's records). Only entries stored by this batch get here:
	// a resent entry is cut off in Ingest, so it never emits twice.
	var events []webhooks.Event
	offlineEvent := func(e parsed, event string, data map[string]any) {
		data["offline"], data["box_time"], data["seq"] = true, e.BoxTime.UTC(), e.Seq
		events = append(events, webhooks.Event{Type: event, Data: data})
	}
	// What each access last did with its key in this batch (true: took
	// it), for its return reminder: a return and a pickup after it leave
	// the reminder as a pickup does.
	lastTook, accesses := map[uuid.UUID]bool{}, []uuid.UUID{}
	follow := func(id uuid.UUID, took bool) {
		if _, ok := lastTook[id]; !ok {
			accesses = append(accesses, id)
		}
		lastTook[id] = took
	}
	auditEntry := func(e parsed, action string, details map[string]string) {
		details["seq"] = strconv.FormatUint(e.Seq, 10)
		details["bin"] = strconv.Itoa(e.Bin)
		details["box_time"] = e.BoxTime.UTC().Format(time.RFC3339)
		details["offline"] = "true"
		raw, _ := json.Marshal(details)
		entries = append(entries, audit.Event{TenantID: p.TenantID, ID: uuid.Must(uuid.NewV7()), Actor: p.Actor(), Action: action,
			Target: "box:" + p.BoxID.String(), Details: raw, ClientIP: tenants.ClientIP(ctx), CreatedAt: now})
	}
	for _, e := range evs {
		switch e.Kind {
		case KindBackupOpen:
			first, err := s.offline.BackupUsed(ctx, p.BoxID, e.Bin, *e.BackupCounter)
			if err != nil {
				return nil, err
			}
			if !first {
				conflicts[e.Seq] = Conflict{Seq: e.Seq, Kind: "backup_reused", Detail: fmt.Sprintf("backup code %d of bin %d was reported used again", *e.BackupCounter, e.Bin)}
			}
			auditEntry(e, "box.backup_code_used", map[string]string{"counter": strconv.FormatUint(*e.BackupCounter, 10)})
		case KindPickup:
			k := byFob[e.FobSerial]
			details := map[string]string{"method": e.Method, "fob_serial": e.FobSerial}
			var access *uuid.UUID
			switch {
			case e.Method == MethodDerived:
				d, ok := derived[e.DerivedTag]
				if !ok {
					conflicts[e.Seq] = Conflict{Seq: e.Seq, Kind: "revoked_access", Detail: fmt.Sprintf("bin %d was opened offline with a derived code the server never issued", e.Bin)}
					break
				}
				access = &d.BookingID
				if d.Revoked {
					conflicts[e.Seq] = Conflict{Seq: e.Seq, Kind: "revoked_access", Detail: fmt.Sprintf("bin %d was opened offline with the derived code of booking %s, revoked or changed meanwhile", e.Bin, d.BookingID)}
				}
			case e.AccessID != "":
				id := uuid.MustParse(e.AccessID)
				access = &id
				// Revoked before the pickup, by the box's clock: the box acted
				// on a bundle older than the revocation (R7).
				if bk, ok := bookings[id]; !ok || bk.RevokedAt != nil && bk.RevokedAt.Before(e.BoxTime) {
					conflicts[e.Seq] = Conflict{Seq: e.Seq, Kind: "revoked_access", Detail: fmt.Sprintf("bin %d was opened offline for booking %s, revoked meanwhile", e.Bin, id)}
				}
			}
			if k == nil {
				auditEntry(e, "key.taken_unrecorded", details)
				continue
			}
			details["key"] = k.ID.String()
			if k.State == "out" {
				if _, ok := conflicts[e.Seq]; !ok {
					conflicts[e.Seq] = Conflict{Seq: e.Seq, Kind: "taken_twice", Detail: fmt.Sprintf("%s was taken from bin %d offline while the records had it out already", k.Name, e.Bin)}
				}
			}
			k.State, k.BoxID, k.Bin, k.OutAccessID, k.OutUntil, k.changed = "out", nil, nil, access, nil, true
			by := "box:" + p.BoxID.String()
			if access != nil {
				follow(*access, true)
				details["booking"] = access.String()
				by = "booking:" + access.String()
				if bk, ok := bookings[*access]; ok {
					k.OutUntil = bk.EndsAt
				}
			}
			k.OutBy = &by
			auditEntry(e, "key.picked_up", details)
			offlineEvent(e, webhooks.KeyPickedUp, map[string]any{"key_id": k.ID, "box_id": p.BoxID, "bin": e.Bin, "booking_id": access,
				"at": now.UTC(), "due_at": k.OutUntil})
		case KindDropoff:
			k := byFob[e.FobSerial]
			details := map[string]string{"fob_serial": e.FobSerial}
			if k == nil {
				auditEntry(e, "key.returned_unknown_fob", details)
				continue
			}
			// Whatever the records had in that bin is not there.
			for _, o := range keys {
				if o != k && o.State == "in_bin" && o.BoxID != nil && *o.BoxID == p.BoxID && o.Bin != nil && *o.Bin == e.Bin {
					o.State, o.BoxID, o.Bin, o.changed = "missing", nil, nil, true
				}
			}
			details["key"] = k.ID.String()
			if k.OutAccessID != nil {
				follow(*k.OutAccessID, false)
				details["booking"] = k.OutAccessID.String()
			}
			// As online (exchange's binClosed): a key that the records had
			// in a bin was moved, not returned, and is no event.
			if k.State == "out" || k.State == "missing" {
				offlineEvent(e, webhooks.KeyReturned, map[string]any{"key_id": k.ID, "key_name": k.Name, "box_id": p.BoxID, "bin": e.Bin,
					"booking_id": k.OutAccessID, "at": now.UTC()})
			}
			bin, boxID := e.Bin, p.BoxID
			k.State, k.BoxID, k.Bin, k.OutAccessID, k.OutUntil, k.OutBy, k.changed = "in_bin", &boxID, &bin, nil, nil, nil, true
			auditEntry(e, "key.returned", details)
		}
	}
	if err := writeKeys(ctx, tx, keys, now); err != nil {
		return nil, err
	}
	// After the keys are written: a reminder queued again names the box
	// the key is at now.
	var took, returned []uuid.UUID
	for _, id := range accesses {
		if lastTook[id] {
			took = append(took, id)
		} else {
			returned = append(returned, id)
		}
	}
	if err := s.reminders.KeysReturned(ctx, returned); err != nil {
		return nil, err
	}
	if err := s.reminders.KeysTaken(ctx, took); err != nil {
		return nil, err
	}
	// Keys now picked up at another box: their waiting reminders name it.
	var moved []uuid.UUID
	for _, k := range keys {
		if k.pickupBox() != pickedUpAt[k.ID] {
			moved = append(moved, k.ID)
		}
	}
	if err := s.reminders.KeysMoved(ctx, moved); err != nil {
		return nil, err
	}
	if err := insertAudit(ctx, tx, entries); err != nil {
		return nil, err
	}
	if s.emit != nil && len(events) > 0 {
		if err := s.emit(ctx, events...); err != nil {
			return nil, err
		}
	}
	// Conflicts are stored (journal rows and incidents) and raised; a
	// flood of them alerts in full only up to maxAlerts per batch.
	raised := 0
	for _, e := range evs {
		c, ok := conflicts[e.Seq]
		if !ok {
			continue
		}
		if raised++; raised > maxAlerts {
			if err := tx.Exec(`INSERT INTO box_sync_incidents (tenant_id, id, box_id, kind, seq, detail, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)
				ON CONFLICT (tenant_id, box_id, kind, seq) DO NOTHING`, p.TenantID, uuid.Must(uuid.NewV7()), p.BoxID, c.Kind, c.Seq, c.Detail, now).Error; err != nil {
				return nil, fmt.Errorf("boxsync: store incident: %w", err)
			}
			continue
		}
		bt := e.BoxTime
		if err := s.raise(ctx, p, boxName, c, &bt); err != nil {
			return nil, err
		}
	}
	if raised > maxAlerts {
		more := Conflict{Seq: evs[len(evs)-1].Seq, Kind: "taken_twice", Detail: fmt.Sprintf("%d more conflicts in this sync; see the box's sync incidents", raised-maxAlerts)}
		if err := s.alerts.AlertAdmins(ctx, "sync_conflict", map[string]string{"box": boxName, "kind": "summary", "seq": strconv.FormatUint(more.Seq, 10), "detail": more.Detail}); err != nil {
			return nil, err
		}
	}
	return conflicts, nil
}

// insertAudit appends the batch's audit entries (tenants/audit's table,
// append-only) in one statement: one per offline pickup, dropoff and
// backup use, which at sync speed is too many for a statement each.
func insertAudit(ctx context.Context, tx *gorm.DB, entries []audit.Event) error {
	if len(entries) == 0 {
		return nil
	}
	ids, details := make([]string, len(entries)), make([]string, len(entries))
	actions := make([]string, len(entries))
	for i, e := range entries {
		ids[i], details[i], actions[i] = e.ID.String(), string(e.Details), e.Action
	}
	e := entries[0]
	_, err := tx.Statement.ConnPool.ExecContext(ctx, `INSERT INTO audit_events (tenant_id, id, actor, action, target, details, client_ip, created_at)
		SELECT $1, v.id, $2, v.action, $3, v.details, $4, $5 FROM unnest($6::uuid[], $7::text[], $8::jsonb[]) AS v(id, action, details)`,
		e.TenantID.String(), e.Actor, e.Target, e.ClientIP, e.CreatedAt, ids, actions, details)
	if err != nil {
		return fmt.Errorf("boxsync: audit: %w", err)
	}
	return nil
}

// maxAlerts bounds the messages one batch sends.
const maxAlerts = 20

// writeKeys stores the keys that changed in two statements: first out of
// every bin, then where they are now, so that keys swapping bins never
// meet in the one-key-per-bin index mid-statement.
func writeKeys(ctx context.Context, tx *gorm.DB, keys []*keyRow, now time.Time) error {
	var ids, states, accesses, outBys []string
	var boxes []*string
	var bins []*int64
	var untils []*time.Time
	for _, k := range keys {
		if !k.changed {
			continue
		}
		ids = append(ids, k.ID.String())
		states = append(states, k.State)
		var b *string
		if k.BoxID != nil {
			s := k.BoxID.String()
			b = &s
		}
		boxes = append(boxes, b)
		var bin *int64
		if k.Bin != nil {
			n := int64(*k.Bin)
			bin = &n
		}
		bins = append(bins, bin)
		a := ""
		if k.OutAccessID != nil {
			a = k.OutAccessID.String()
		}
		accesses = append(accesses, a)
		by := ""
		if k.OutBy != nil {
			by = *k.OutBy
		}
		outBys = append(outBys, by)
		untils = append(untils, k.OutUntil)
	}
	if len(ids) == 0 {
		return nil
	}
	pool := tx.Statement.ConnPool
	if _, err := pool.ExecContext(ctx, `UPDATE keys SET state = 'missing', box_id = NULL, bin = NULL, updated_at = $2 WHERE id = ANY($1::uuid[])`, ids, now); err != nil {
		return fmt.Errorf("boxsync: clear keys: %w", err)
	}
	_, err := pool.ExecContext(ctx, `UPDATE keys k SET state = v.state, box_id = v.box_id, bin = v.bin,
			out_access_id = NULLIF(v.access, '')::uuid,
			out_since = CASE WHEN v.state = 'out' THEN $8::timestamptz END,
			out_until = CASE WHEN v.state = 'out' THEN v.until END,
			out_by = NULLIF(v.out_by, ''), updated_at = $8
		FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::int[], $5::text[], $6::timestamptz[], $7::text[]) AS v(id, state, box_id, bin, access, until, out_by)
		WHERE k.id = v.id`, ids, states, boxes, bins, accesses, untils, outBys, now)
	if err != nil {
		return fmt.Errorf("boxsync: write keys: %w", err)
	}
	return nil
}

// store inserts the new entries in one statement: each (box, seq) once.
// No ON CONFLICT: under the box_sync_state row lock Ingest has kept only
// seqs above the stored high seq, so none can exist; should one anyway,
// the primary key refuses the batch rather than keeping a different entry
// under that seq and moving past it (and the speculative insertion ON
// CONFLICT needs costs a sixth of the statement).
func (s *Service) store(ctx context.Context, p tenants.Principal, evs []parsed, conflicts map[uint64]Conflict) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	n := len(evs)
	seqs, hashes := make([]int64, n), make([][]byte, n)
	kinds, methods := make([]string, n), make([]string, n)
	bins := make([]int64, n)
	fobs, verifiers, accesses, confl := make([]*string, n), make([]*string, n), make([]*string, n), make([]*string, n)
	tagHashes := make([][]byte, n)
	counters := make([]*int64, n)
	boxTimes, seen := make([]time.Time, n), make([]*time.Time, n)
	for i, e := range evs {
		seqs[i], hashes[i], kinds[i], methods[i], bins[i] = int64(e.Seq), e.hash[:], e.Kind, e.Method, int64(e.Bin)
		fobs[i], verifiers[i], accesses[i] = nonEmpty(e.FobSerial), nonEmpty(e.Verifier), nonEmpty(e.AccessID)
		if e.DerivedTag != "" {
			tagHashes[i] = s.offline.TagHash(ctx, p.BoxID, e.DerivedTag)
		}
		if e.BackupCounter != nil {
			c := int64(*e.BackupCounter)
			counters[i] = &c
		}
		boxTimes[i] = e.BoxTime
		if !e.ServerTimeSeen.IsZero() {
			t := e.ServerTimeSeen
			seen[i] = &t
		}
		if c, ok := conflicts[e.Seq]; ok {
			confl[i] = &c.Kind
		}
	}
	_, err = tx.Statement.ConnPool.ExecContext(ctx, `INSERT INTO box_journal (tenant_id, box_id, received_at, seq, hash, kind, bin, fob_serial, method,
			verifier, derived_tag_hash, backup_counter, access_id, box_time, server_time_seen, conflict)
		SELECT $1, $2, $3, * FROM unnest($4::bigint[], $5::bytea[], $6::text[], $7::int[], $8::text[], $9::text[], $10::text[],
			$11::bytea[], $12::bigint[], $13::uuid[], $14::timestamptz[], $15::timestamptz[], $16::text[])`,
		p.TenantID.String(), p.BoxID.String(), s.now(), seqs, hashes, kinds, bins, fobs, methods, verifiers, tagHashes, counters, accesses, boxTimes, seen, confl)
	if err != nil {
		return fmt.Errorf("boxsync: store entries: %w", err)
	}
	return nil
}

func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// orNone keeps an IN list valid when it is empty.
func orNone(s []string) []string {
	if len(s) == 0 {
		return []string{""}
	}
	return s
}

func orNoBins(b []int) []int {
	if len(b) == 0 {
		return []int{-1}
	}
	return b
}

// BoxState is the tenant's view of a box's journal: how far the server
// has it, when the box last uploaded, and the last batch the server
// refused. A refusal past HighSeq means entries are waiting on the box
// (it resends them from HighSeq+1 once it reads GET /box/v1/sync).
type BoxState struct {
	HighSeq       uint64     `json:"high_seq"`
	SyncedAt      *time.Time `json:"synced_at"` // nil: the box never uploaded
	LastIncident  *Incident  `json:"last_incident"`
	RefusedSince  bool       `json:"refused_since"` // LastIncident is past HighSeq: not resolved by a later upload
	IncidentCount int        `json:"incident_count"`
}

// Incident is a refused or suspicious journal entry (box_sync_incidents).
type Incident struct {
	Kind      string    `json:"kind"`
	Seq       uint64    `json:"seq"`
	Detail    string    `json:"detail"`
	CreatedAt time.Time `json:"created_at"`
}

// StateOf returns a box's sync state for staff who see the box (the
// dashboard's box page); a box outside the caller's locations is not
// found.
func (s *Service) StateOf(ctx context.Context, boxID uuid.UUID) (BoxState, error) {
	p, err := tenants.Require(ctx, tenants.RoleStaff)
	if err != nil {
		return BoxState{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return BoxState{}, err
	}
	var b []struct{ LocationID *uuid.UUID }
	if err := tx.Raw(`SELECT location_id FROM boxes WHERE id = ? AND deleted_at IS NULL`, boxID).Scan(&b).Error; err != nil {
		return BoxState{}, fmt.Errorf("boxsync: load box: %w", err)
	}
	if len(b) != 1 || !p.Sees(b[0].LocationID) {
		return BoxState{}, tenants.NotFound("box")
	}
	var st []struct {
		HighSeq   uint64
		UpdatedAt time.Time
	}
	if err := tx.Raw(`SELECT high_seq, updated_at FROM box_sync_state WHERE box_id = ?`, boxID).Scan(&st).Error; err != nil {
		return BoxState{}, fmt.Errorf("boxsync: load state: %w", err)
	}
	var out BoxState
	if len(st) == 1 && st[0].HighSeq > 0 { // the row exists from a first, refused, upload too
		at := st[0].UpdatedAt.UTC()
		out.HighSeq, out.SyncedAt = st[0].HighSeq, &at
	}
	var inc []Incident
	if err := tx.Raw(`SELECT kind, seq, detail, created_at FROM box_sync_incidents WHERE box_id = ? ORDER BY created_at DESC, id DESC LIMIT 1`, boxID).
		Scan(&inc).Error; err != nil {
		return BoxState{}, fmt.Errorf("boxsync: load incidents: %w", err)
	}
	if err := tx.Raw(`SELECT count(*) FROM box_sync_incidents WHERE box_id = ?`, boxID).Scan(&out.IncidentCount).Error; err != nil {
		return BoxState{}, fmt.Errorf("boxsync: count incidents: %w", err)
	}
	if len(inc) == 1 {
		inc[0].CreatedAt = inc[0].CreatedAt.UTC()
		out.LastIncident = &inc[0]
		out.RefusedSince = inc[0].Seq > out.HighSeq
	}
	return out, nil
}
