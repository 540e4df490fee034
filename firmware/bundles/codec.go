package bundles

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// The signed bytes of a bundle (Format 2) are a compact binary encoding of
// Payload rather than its JSON: a box with 10,000 accesses gets about
// 0.9 MB instead of 2.5 MB, which the server stores (box_bundles.bundle,
// WAL and TOAST on every rebuild) and the box downloads, hashes and
// decodes; and neither side pays for reflection (BenchmarkBundle10k).
//
// Layout, in order; uvarint/varint as encoding/binary writes them:
//
//	magic "KRBN", uvarint format
//	tenant id, box id (16 bytes each), uvarint version
//	built at, valid until (time), timezone (string)
//	policy: visitor pickups (string), owner 2FA (1 byte), phone pickups (string)
//	keys: uvarint n, then n × (id, fob serial (string), varint bin, varint home bin)
//	accesses: uvarint n, then n × (id, key id, starts at (time), 1 byte: 1 if
//	  an end follows, [ends at (time)], code (bytes), phone (bytes), changed (time))
//	revoked: uvarint n, then n × (id, key id, code (bytes), revoked at (time))
//	revoked derived tags: uvarint n, then n × string
//
// A string or bytes is a uvarint length then the bytes; a time is a varint
// of Unix seconds then a uvarint of nanoseconds, read back in UTC. Nothing
// may follow the last field.
var magic = []byte("KRBN")

// legacyFormat is the JSON payload of the first bundles; Decode still
// reads it, so a box holding one from before an upgrade keeps it usable.
const legacyFormat = 1

// Per-item sizes assumed when sizing the buffer; a guess, not a limit.
const (
	keySize    = 16 + 1 + 24 + 2
	accessSize = 16 + 16 + 9 + 1 + 9 + 1 + VerifierSize + 1 + VerifierSize + 9
	revokeSize = 16 + 16 + 1 + VerifierSize + 9
)

// encode is the signed bytes of p.
func encode(p *Payload) ([]byte, error) {
	if p.Format != Format {
		return nil, fmt.Errorf("bundles: encode format %d, this server writes %d", p.Format, Format)
	}
	b := make([]byte, 0, 128+len(p.Keys)*keySize+len(p.Accesses)*accessSize+len(p.Revoked)*revokeSize+len(p.RevokedTags)*8)
	b = append(b, magic...)
	b = binary.AppendUvarint(b, uint64(p.Format))
	b = append(b, p.TenantID[:]...)
	b = append(b, p.BoxID[:]...)
	b = binary.AppendUvarint(b, p.Version)
	b = appendTime(b, p.BuiltAt)
	b = appendTime(b, p.ValidUntil)
	b = appendString(b, p.Timezone)
	b = appendString(b, p.Policy.VisitorPickups)
	b = appendBool(b, p.Policy.OwnerPickups2FA)
	b = appendString(b, p.Policy.PhonePickups)
	b = binary.AppendUvarint(b, uint64(len(p.Keys)))
	for _, k := range p.Keys {
		b = append(b, k.ID[:]...)
		b = appendString(b, k.FobSerial)
		b = binary.AppendVarint(b, int64(k.Bin))
		b = binary.AppendVarint(b, int64(k.HomeBin))
	}
	b = binary.AppendUvarint(b, uint64(len(p.Accesses)))
	for _, a := range p.Accesses {
		b = append(b, a.ID[:]...)
		b = append(b, a.KeyID[:]...)
		b = appendTime(b, a.StartsAt)
		b = appendBool(b, a.EndsAt != nil)
		if a.EndsAt != nil {
			b = appendTime(b, *a.EndsAt)
		}
		b = appendString(b, string(a.Code))
		b = appendString(b, string(a.Phone))
		b = appendTime(b, a.Changed)
	}
	b = binary.AppendUvarint(b, uint64(len(p.Revoked)))
	for _, r := range p.Revoked {
		b = append(b, r.ID[:]...)
		b = append(b, r.KeyID[:]...)
		b = appendString(b, string(r.Code))
		b = appendTime(b, r.RevokedAt)
	}
	b = binary.AppendUvarint(b, uint64(len(p.RevokedTags)))
	for _, t := range p.RevokedTags {
		b = appendString(b, t)
	}
	return b, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

func appendTime(b []byte, t time.Time) []byte {
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

// Decode parses a payload the box accepted (signing.Accept): its format,
// box and tenant must be the expected ones.
func Decode(raw []byte, boxID uuid.UUID) (*Payload, error) {
	var p *Payload
	var err error
	if len(raw) > 0 && raw[0] == '{' {
		p, err = decodeJSON(raw)
	} else {
		p, err = decodeBinary(raw)
	}
	if err != nil {
		return nil, err
	}
	if p.BoxID != boxID {
		return nil, fmt.Errorf("bundles: payload for box %s", p.BoxID)
	}
	return p, nil
}

func decodeJSON(raw []byte) (*Payload, error) {
	var p Payload
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("bundles: payload: %w", err)
	}
	if p.Format != legacyFormat {
		return nil, fmt.Errorf("bundles: payload format %d, this box reads %d", p.Format, Format)
	}
	return &p, nil
}

var errShort = errors.New("bundles: payload: truncated or malformed")

// reader walks a binary payload; the first error sticks and every later
// read returns zero values, so decodeBinary checks once at the end.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail() {
	if r.err == nil {
		r.err = errShort
	}
	r.b = nil
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) int() int {
	v := r.varint()
	if int64(int(v)) != v {
		r.fail()
		return 0
	}
	return int(v)
}

func (r *reader) take(n uint64) []byte {
	if n > uint64(len(r.b)) {
		r.fail()
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) uuid() (id uuid.UUID) {
	copy(id[:], r.take(16))
	return id
}

// bytes returns a sub-slice of the decoder's own copy of the payload.
func (r *reader) bytes() []byte {
	v := r.take(r.uvarint())
	if len(v) == 0 {
		return nil
	}
	return v
}

func (r *reader) string() string { return string(r.take(r.uvarint())) }

func (r *reader) bool() bool {
	v := r.take(1)
	if len(v) == 1 && v[0] > 1 {
		r.fail()
	}
	return len(v) == 1 && v[0] == 1
}

func (r *reader) time() time.Time {
	s, ns := r.varint(), r.uvarint()
	if ns >= uint64(time.Second) {
		r.fail()
		return time.Time{}
	}
	return time.Unix(s, int64(ns)).UTC()
}

// count reads a list length, refusing one the remaining bytes cannot hold
// at min bytes an item (no allocation from a forged length).
func (r *reader) count(min int) int {
	n := r.uvarint()
	if n > uint64(len(r.b)/min) {
		r.fail()
		return 0
	}
	return int(n)
}

func decodeBinary(raw []byte) (*Payload, error) {
	if len(raw) < len(magic) || string(raw[:len(magic)]) != string(magic) {
		return nil, errors.New("bundles: payload: not a bundle")
	}
	// One copy of the whole payload: the verifiers below are slices of it,
	// so the caller's buffer may be reused and decoding allocates little.
	r := &reader{b: append([]byte(nil), raw[len(magic):]...)}
	if f := r.uvarint(); r.err == nil && f != Format {
		return nil, fmt.Errorf("bundles: payload format %d, this box reads %d", f, Format)
	}
	p := &Payload{Format: Format}
	p.TenantID, p.BoxID = r.uuid(), r.uuid()
	p.Version = r.uvarint()
	p.BuiltAt, p.ValidUntil = r.time(), r.time()
	p.Timezone = r.string()
	p.Policy.VisitorPickups = r.string()
	p.Policy.OwnerPickups2FA = r.bool()
	p.Policy.PhonePickups = r.string()
	p.Keys = make([]Key, r.count(16+1+1+1))
	for i := range p.Keys {
		k := &p.Keys[i]
		k.ID, k.FobSerial, k.Bin, k.HomeBin = r.uuid(), r.string(), r.int(), r.int()
	}
	p.Accesses = make([]Access, r.count(16+16+2+1+1+1+2))
	ends := make([]time.Time, len(p.Accesses)) // one allocation for every EndsAt
	for i := range p.Accesses {
		a := &p.Accesses[i]
		a.ID, a.KeyID, a.StartsAt = r.uuid(), r.uuid(), r.time()
		if r.bool() {
			ends[i] = r.time()
			a.EndsAt = &ends[i]
		}
		a.Code, a.Phone, a.Changed = r.bytes(), r.bytes(), r.time()
	}
	p.Revoked = make([]Revocation, r.count(16+16+1+2))
	for i := range p.Revoked {
		v := &p.Revoked[i]
		v.ID, v.KeyID, v.Code, v.RevokedAt = r.uuid(), r.uuid(), r.bytes(), r.time()
	}
	p.RevokedTags = make([]string, r.count(1))
	for i := range p.RevokedTags {
		p.RevokedTags[i] = r.string()
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("bundles: payload: %d bytes after the end", len(r.b))
	}
	return p, nil
}
