package box

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/boxkeys"
	"github.com/keyrelay/keyrelay/firmware/offline"
	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
)

func testIdentity(t *testing.T) Identity {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	k := make([]byte, 32)
	rand.Read(k)
	return Identity{BoxID: uuid.NewString(), PrivateKey: priv, Secret: k}
}

func TestOfflineBackupCodes(t *testing.T) {
	dir := t.TempDir()
	id := testIdentity(t)
	now := time.Date(2025, 5, 1, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	o, err := NewOffline(dir, id, 12, offline.DefaultLimits(), clock)
	if err != nil {
		t.Fatal(err)
	}
	o.SetBin(3, "FOB-3")
	kbak, _ := boxkeys.Derive(id.Secret, boxkeys.Backup)
	boxID := uuid.MustParse(id.BoxID)
	first := offline.BackupCode(kbak, boxID, 3, 0)

	d, err := o.EnterCode(first)
	if err != nil || !d.Open || len(d.Bins) != 1 || d.Bins[0] != 3 {
		t.Fatalf("first use: %+v %v", d, err)
	}
	if d.Entry.Kind != boxsync.KindBackupOpen || d.Entry.BackupCounter == nil || *d.Entry.BackupCounter != 0 || d.Entry.Seq != 1 {
		t.Errorf("journal entry %+v", d.Entry)
	}
	t.Run("ErrUsedTwice", func(t *testing.T) {
		if d, _ := o.EnterCode(first); d.Open || d.Reason != offline.WrongCode {
			t.Fatalf("second use: %+v", d)
		}
	})
	t.Run("ErrNoLookAhead", func(t *testing.T) {
		// Counter 2 of bin 3 while 1 is next: refused.
		if d, _ := o.EnterCode(offline.BackupCode(kbak, boxID, 3, 2)); d.Open {
			t.Fatal("a code ahead of the next counter opened")
		}
	})
	t.Run("ErrOldCounterAfterRestart", func(t *testing.T) {
		// The counter was persisted before the bin opened: a restart (a
		// power cut) does not bring the used code back.
		again, err := NewOffline(dir, id, 12, offline.DefaultLimits(), clock)
		if err != nil {
			t.Fatal(err)
		}
		if d, _ := again.EnterCode(first); d.Open {
			t.Fatal("used code opened after a restart")
		}
		if again.NextBackup(3) != 1 {
			t.Errorf("next counter %d, want 1", again.NextBackup(3))
		}
		if d, _ := again.EnterCode(offline.BackupCode(kbak, boxID, 3, 1)); !d.Open {
			t.Fatalf("next code: %+v", d)
		}
		again.J.Close()
	})
	t.Run("OpenAll", func(t *testing.T) {
		o, err := NewOffline(t.TempDir(), id, 12, offline.DefaultLimits(), clock)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := o.EnterCode(offline.BackupCode(kbak, boxID, offline.AllBins, 0))
		if !d.Open || len(d.Bins) != 12 {
			t.Fatalf("open all: %+v", d)
		}
	})
	t.Run("ErrLockedAfterFailures", func(t *testing.T) {
		o, err := NewOffline(t.TempDir(), id, 12, offline.DefaultLimits(), clock)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 20; i++ {
			if d, _ := o.EnterCode("0000000000"); d.Reason != offline.WrongCode {
				t.Fatalf("guess %d: %+v", i, d)
			}
		}
		// The window's failures are spent: even the right code waits.
		if d, _ := o.EnterCode(offline.BackupCode(kbak, boxID, 1, 0)); d.Reason != offline.Locked {
			t.Fatalf("after 20 failures: %+v", d)
		}
		// A clock set back does not reopen the window.
		now = now.Add(-time.Hour)
		if d, _ := o.EnterCode(offline.BackupCode(kbak, boxID, 1, 0)); d.Reason != offline.Locked {
			t.Fatalf("clock set back: %+v", d)
		}
		now = now.Add(time.Hour + 15*time.Minute)
		if d, _ := o.EnterCode(offline.BackupCode(kbak, boxID, 1, 0)); !d.Open {
			t.Fatalf("next window: %+v", d)
		}
	})
}

func TestOfflineDerivedAtBox(t *testing.T) {
	id := testIdentity(t)
	now := time.Date(2025, 5, 1, 10, 30, 0, 0, time.UTC)
	o, err := NewOffline(t.TempDir(), id, 12, offline.DefaultLimits(), func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	o.SetBin(4, "FOB-4")
	o.SawServerTime(now.Add(-time.Hour))
	kder, _ := boxkeys.Derive(id.Secret, boxkeys.Derived)
	g := offline.Grant{Start: now.Truncate(time.Hour), Class: 2, Bin: 4}
	code := offline.DerivedCode(kder, uuid.MustParse(id.BoxID), g, "FOB-4")

	t.Run("ErrRevokedByBundle", func(t *testing.T) {
		o.SetRevokedTags([]string{code[offline.PayloadDigits:]})
		if d, _ := o.EnterCode(code); d.Reason != offline.Revoked {
			t.Fatalf("revoked tag: %+v", d)
		}
		o.SetRevokedTags(nil)
	})
	t.Run("ErrClockSetBack", func(t *testing.T) {
		o.SawServerTime(now.Add(time.Minute))
		if d, _ := o.EnterCode(code); d.Reason != offline.ClockBehind {
			t.Fatalf("clock behind: %+v", d)
		}
		// An older server time does not move the latest back.
		o.SawServerTime(now.Add(-2 * time.Hour))
		if d, _ := o.EnterCode(code); d.Reason != offline.ClockBehind {
			t.Fatalf("clock behind after an older server time: %+v", d)
		}
		now = now.Add(2 * time.Minute)
	})
	d, err := o.EnterCode(code)
	if err != nil || !d.Open || d.Bins[0] != 4 {
		t.Fatalf("derived: %+v %v", d, err)
	}
	if d.Entry.Kind != boxsync.KindPickup || d.Entry.Method != boxsync.MethodDerived || d.Entry.DerivedTag != code[7:] || d.Entry.FobSerial != "FOB-4" {
		t.Errorf("entry %+v", d.Entry)
	}
	// The key left: the same code now finds the bin empty.
	if d, _ := o.EnterCode(code); d.Reason != offline.KeyNotHere {
		t.Fatalf("after pickup: %+v", d)
	}
	t.Run("ErrLockedAfterFiveFailures", func(t *testing.T) {
		o.SetBin(5, "FOB-5")
		for i := 0; i < 5; i++ {
			if d, _ := o.EnterCode("123010512345678"); d.Reason != offline.WrongCode {
				t.Fatalf("guess %d: %+v", i, d)
			}
		}
		if d, _ := o.EnterCode("123010512345678"); d.Reason != offline.Locked {
			t.Fatalf("sixth: %+v", d)
		}
	})
}

func TestJournalChain(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := j.Append(boxsync.Entry{BoxTime: time.Now(), Kind: boxsync.KindDropoff, Bin: 1, FobSerial: "F"}); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	j, err = OpenJournal(dir)
	if err != nil || j.Seq() != 3 {
		t.Fatalf("reopen: seq %d %v", j.Seq(), err)
	}
	e, _ := j.Append(boxsync.Entry{BoxTime: time.Now(), Kind: boxsync.KindDropoff, Bin: 2, FobSerial: "G"})
	if e.Seq != 4 || e.Prev == "" {
		t.Fatalf("entry after reopen: %+v", e)
	}
	j.Close()
	t.Run("ErrTampered", func(t *testing.T) {
		path := filepath.Join(dir, "journal.jsonl")
		raw, _ := os.ReadFile(path)
		raw[20] ^= 1
		os.WriteFile(path, raw, 0o600)
		if _, err := OpenJournal(dir); err == nil {
			t.Fatal("a tampered journal opened")
		}
	})
}
