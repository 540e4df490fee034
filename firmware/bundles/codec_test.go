package bundles

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

func samplePayload(n int) *Payload {
	now := time.Date(2026, 11, 25, 18, 0, 0, 123456789, time.UTC)
	v := NewVerifiers([]byte("kver"))
	keyA, keyB := uuid.New(), uuid.New()
	p := &Payload{Format: Format, TenantID: uuid.New(), BoxID: uuid.New(), Version: 42, BuiltAt: now, ValidUntil: now.Add(72 * time.Hour),
		Timezone: "Europe/Paris", Policy: Policy{VisitorPickups: "sms", OwnerPickups2FA: true, PhonePickups: "deny"},
		Keys:     []Key{{ID: keyA, FobSerial: "FOB-1", Bin: 3, HomeBin: 3}, {ID: keyB, FobSerial: "FOB-é", HomeBin: 12}},
		Accesses: []Access{}, Revoked: []Revocation{{ID: uuid.New(), KeyID: keyB, Code: v.Code("1234567890"), RevokedAt: now.Add(-time.Hour)}},
		RevokedTags: []string{"0042", "9999"}}
	for i := range n {
		a := Access{ID: uuid.New(), KeyID: keyA, StartsAt: now.Add(-time.Duration(i) * time.Second), Code: v.Code(strings.Repeat("7", i%10+1)),
			Changed: now.Add(-time.Minute)}
		if i%2 == 0 {
			e := now.Add(time.Duration(i) * time.Hour)
			a.EndsAt = &e
			a.Phone = v.Phone("+14155550100")
		}
		p.Accesses = append(p.Accesses, a)
	}
	return p
}

func TestCodecRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 1000} {
		p := samplePayload(n)
		raw, err := encode(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(raw, p.BoxID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, p) {
			t.Fatalf("%d accesses: round trip differs:\n got %+v\nwant %+v", n, got, p)
		}
		// The decoded payload does not alias the caller's buffer.
		clear(raw)
		if got.Accesses = got.Accesses[:len(p.Accesses)]; n > 0 && !bytes.Equal(got.Accesses[0].Code, p.Accesses[0].Code) {
			t.Fatal("decoded verifiers alias the input")
		}
	}
}

// A box holding a format-1 (JSON) bundle from before the binary format
// still reads it.
func TestCodecReadsLegacyJSON(t *testing.T) {
	p := samplePayload(3)
	p.Format = legacyFormat
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(raw, p.BoxID)
	if err != nil || len(got.Accesses) != 3 || got.Version != 42 {
		t.Fatalf("legacy: %+v %v", got, err)
	}
	p.Format = 7
	raw, _ = json.Marshal(p)
	if _, err := Decode(raw, p.BoxID); err == nil {
		t.Fatal("an unknown JSON format was read")
	}
}

func TestCodecRefusals(t *testing.T) {
	p := samplePayload(10)
	raw, err := encode(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(raw, uuid.New()); err == nil || !strings.Contains(err.Error(), "for box") {
		t.Errorf("another box's payload: %v", err)
	}
	for cut := 0; cut < len(raw); cut += 7 {
		if _, err := Decode(raw[:cut], p.BoxID); err == nil {
			t.Fatalf("truncated at %d of %d bytes: accepted", cut, len(raw))
		}
	}
	if _, err := Decode(append(bytes.Clone(raw), 0), p.BoxID); err == nil {
		t.Error("a trailing byte was accepted")
	}
	other := bytes.Clone(raw)
	other[len(magic)] = Format + 1
	if _, err := Decode(other, p.BoxID); err == nil || !strings.Contains(err.Error(), "format") {
		t.Errorf("unknown format: %v", err)
	}
	// A forged list length cannot make the decoder allocate beyond the input.
	forged := append(bytes.Clone(raw[:len(magic)+1+32+1]), 0xff, 0xff, 0xff, 0xff, 0x0f)
	if _, err := Decode(forged, p.BoxID); err == nil {
		t.Error("a forged length was accepted")
	}
}

// The binary payload is what makes a 10,000-access bundle small: report
// the sizes (the JSON of the first format beside it).
func TestCodecSize(t *testing.T) {
	p := samplePayload(10_000)
	raw, err := encode(p)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(p)
	if len(raw) >= len(js)/2 {
		t.Errorf("binary payload %d bytes, JSON %d: expected well under half", len(raw), len(js))
	}
	t.Logf("10,000 accesses: binary %d bytes, JSON %d bytes", len(raw), len(js))
}

func BenchmarkCodec10k(b *testing.B) {
	p := samplePayload(10_000)
	raw, _ := encode(p)
	b.Run("Encode", func(b *testing.B) {
		for b.Loop() {
			encode(p)
		}
	})
	b.Run("Decode", func(b *testing.B) {
		for b.Loop() {
			if _, err := Decode(raw, p.BoxID); err != nil {
				b.Fatal(err)
			}
		}
	})
}
