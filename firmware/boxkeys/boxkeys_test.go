package boxkeys

import (
	"bytes"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestDerivePurposesDiffer(t *testing.T) {
	k := bytes.Repeat([]byte{7}, 32)
	seen := map[string]bool{}
	for _, p := range []string{Verifier, Derived, Backup, Screen} {
		d, err := Derive(k, p)
		if err != nil || len(d) != 32 {
			t.Fatalf("%s: %v", p, err)
		}
		if seen[string(d)] {
			t.Fatalf("%s repeats another purpose's key", p)
		}
		seen[string(d)] = true
	}
	if _, err := Derive(k[:31], Screen); err == nil {
		t.Error("a short secret was accepted")
	}
}

func TestScreenCode(t *testing.T) {
	k := bytes.Repeat([]byte{9}, 32)
	box := uuid.New()
	at := time.Unix(1_800_000_000, 0) // a step boundary
	code, err := ScreenCode(k, box, at)
	if err != nil || len(code) != ScreenDigits {
		t.Fatalf("code %q: %v", code, err)
	}
	check := func(c string, now time.Time) bool {
		ok, err := CheckScreenCode(k, box, c, now)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !check(code, at) || !check(code, at.Add(29*time.Second)) || !check(code, at.Add(59*time.Second)) {
		t.Error("the current or the previous step's code was refused")
	}
	if check(code, at.Add(60*time.Second)) {
		t.Error("a code two steps old was accepted")
	}
	if !check(code, at.Add(-time.Second)) {
		t.Error("the next step's code (a box a second ahead) was refused")
	}
	if check(code, at.Add(-31*time.Second)) {
		t.Error("a code two steps ahead was accepted")
	}
	if otherKey, _ := ScreenCode(bytes.Repeat([]byte{8}, 32), box, at); otherKey == code {
		t.Error("another box secret gave the same code")
	}
	if check("12345", at) || check("abcdef", at) {
		t.Error("a malformed code was accepted")
	}
}
