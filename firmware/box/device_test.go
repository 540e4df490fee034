package box

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/boxkeys"
	"github.com/keyrelay/keyrelay/firmware/offline"
	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
	"github.com/keyrelay/keyrelay/tenants/exchange"
)

// closedURL is the address of a port nothing listens on: a server that
// cannot be reached, refused at once.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// unreachableDevice is a device of model whose server cannot be reached.
func unreachableDevice(t *testing.T, model string, clock func() time.Time) (*Device, Identity, string) {
	t.Helper()
	id := testIdentity(t)
	id.Model = model
	dir := t.TempDir()
	c := &Client{BaseURL: closedURL(t), ID: id}
	d, err := New(c, dir, Config{Hold: map[int]string{1: "FOB-1", 2: "FOB-2"}, Clock: clock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, id, dir
}

func journalOnDisk(t *testing.T, dir string) []boxsync.Entry {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "journal.jsonl"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []boxsync.Entry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e boxsync.Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

func TestDeviceOfflineKeypad(t *testing.T) {
	ctx := context.Background()

	t.Run("OKMS5BackupCodeJournaled", func(t *testing.T) {
		d, id, dir := unreachableDevice(t, "MS5", nil)
		kbak, _ := boxkeys.Derive(id.Secret, boxkeys.Backup)
		code := offline.BackupCode(kbak, uuid.MustParse(id.BoxID), 2, 0)
		a, err := d.Pickup(ctx, code)
		if err != nil || a.Result != "open" || !a.Offline || len(a.Bins) != 1 || a.Bins[0] != 2 || a.JournalSeq != 2 {
			t.Fatalf("backup code offline: %+v %v", a, err)
		}
		j := journalOnDisk(t, dir)
		if len(j) != 2 || j[0].Kind != boxsync.KindBackupOpen || j[0].Bin != 2 || j[1].Kind != boxsync.KindPickup ||
			j[1].Method != boxsync.MethodBackup || j[1].FobSerial != "FOB-2" {
			t.Fatalf("journal on disk: %+v", j)
		}
		if st := d.Status(); st.Online || st.Bins[2] != "" || st.Bins[1] != "FOB-1" || st.JournalSeq != 2 || st.JournalAcked != 0 {
			t.Fatalf("status after the offline pickup: %+v", st)
		}
		// Spent: the same code again is a wrong code.
		if a, _ := d.Pickup(ctx, code); a.Result != "denied" || a.Reason != offline.WrongCode || a.Message == "" {
			t.Fatalf("backup code twice: %+v", a)
		}
		// A key coming back goes into a free bin, journaled.
		a, err = d.Dropoff(ctx, "FOB-2", "")
		if err != nil || a.Result != "open" || !a.Offline || len(a.Bins) != 1 || a.Bins[0] != 2 || a.JournalSeq != 3 {
			t.Fatalf("dropoff offline: %+v %v", a, err)
		}
		if j := journalOnDisk(t, dir); len(j) != 3 || j[2].Kind != boxsync.KindDropoff || j[2].FobSerial != "FOB-2" {
			t.Fatalf("journal after the dropoff: %+v", j)
		}
	})

	t.Run("ErrMS5PhoneAndSecondFactorOffline", func(t *testing.T) {
		d, _, _ := unreachableDevice(t, "MS5", nil)
		if a, err := d.PickupPhone(ctx, "+14155550199"); err != nil || a.Result != "denied" || a.Reason != NoBundle {
			t.Fatalf("phone offline without a bundle: %+v %v", a, err)
		}
		if a, err := d.Verify(ctx, exchange.VerifyInput{ChallengeID: uuid.New(), PIN: "1234"}); err != nil || a.Reason != OfflineSecondFactor {
			t.Fatalf("verify offline: %+v %v", a, err)
		}
	})

	t.Run("ErrLockedAfterGuesses", func(t *testing.T) {
		d, id, _ := unreachableDevice(t, "MS5", nil)
		n, _ := d.cfg.Limits.BackupLimitFor(d.cfg.Bins)
		for i := range n {
			if a, _ := d.Pickup(ctx, "0000000000"); a.Reason != offline.WrongCode {
				t.Fatalf("guess %d: %+v", i, a)
			}
		}
		kbak, _ := boxkeys.Derive(id.Secret, boxkeys.Backup)
		if a, _ := d.Pickup(ctx, offline.BackupCode(kbak, uuid.MustParse(id.BoxID), 1, 0)); a.Result != "denied" || a.Reason != offline.Locked {
			t.Fatalf("right code after %d guesses: %+v, want locked", n, a)
		}
	})

	t.Run("ErrMS3NoOfflineMode", func(t *testing.T) {
		d, id, dir := unreachableDevice(t, "MS3", nil)
		kbak, _ := boxkeys.Derive(id.Secret, boxkeys.Backup)
		a, err := d.Pickup(ctx, offline.BackupCode(kbak, uuid.MustParse(id.BoxID), 2, 0))
		if err != nil || a.Result != "denied" || a.Reason != NoOfflineMode || a.Message == "" || len(a.Bins) != 0 {
			t.Fatalf("MS3 pickup offline: %+v %v", a, err)
		}
		if a, err := d.Dropoff(ctx, "FOB-9", ""); err != nil || a.Result != "denied" || a.Reason != NoOfflineMode {
			t.Fatalf("MS3 dropoff offline: %+v %v", a, err)
		}
		if a, err := d.PickupPhone(ctx, "+14155550199"); err != nil || a.Reason != NoOfflineMode {
			t.Fatalf("MS3 phone offline: %+v %v", a, err)
		}
		st := d.Status()
		if st.OfflineMode || st.Bins[2] != "FOB-2" || st.BundleVersion != 0 {
			t.Fatalf("MS3 status: %+v", st)
		}
		for _, f := range []string{"journal.jsonl", "offline.json", "bundle-state.json"} {
			if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("an MS3 wrote %s: %v", f, err)
			}
		}
	})

	t.Run("ErrFlatBox", func(t *testing.T) {
		clk := newFakeClock()
		id := testIdentity(t)
		id.Model = "MS5"
		d, err := New(&Client{BaseURL: closedURL(t), ID: id}, t.TempDir(), Config{BatteryLevel: 1, Clock: clk.Now}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		d.SetMains(false)
		clk.Advance(3 * time.Hour)
		if _, err := d.Pickup(ctx, "0000000000"); !errors.Is(err, ErrNoPower) {
			t.Fatalf("keypad of a flat box: %v", err)
		}
		if j := d.offline.J.Seq(); j != 0 {
			t.Errorf("a flat box journaled %d entries", j)
		}
	})
}

// The heartbeat says what the supply does: source, level, sleep.
func TestDeviceHeartbeatReportsPower(t *testing.T) {
	clk := newFakeClock()
	d, _, _ := unreachableDevice(t, "MS5", clk.Now)
	hb := d.Heartbeat()
	if hb.PowerSource != Mains || hb.Sleeping || hb.BatteryLevel == nil || *hb.BatteryLevel != 100 || hb.FirmwareVersion != "5.2.0" || hb.SignalDBM == nil {
		t.Fatalf("on mains: %+v", hb)
	}
	d.SetMains(false)
	if hb := d.Heartbeat(); hb.PowerSource != Battery || hb.Sleeping {
		t.Fatalf("mains lost: %+v", hb)
	}
	clk.Advance(2*time.Minute + time.Second)
	if hb := d.Heartbeat(); !hb.Sleeping || hb.PowerSource != Battery {
		t.Fatalf("two idle minutes on battery: %+v", hb)
	}
	clk.Advance(10 * time.Hour)
	hb = d.Heartbeat()
	want := 100 - DefaultPowerConfig().DrainAwake*(2*time.Minute).Hours() - DefaultPowerConfig().DrainAsleep*(10*time.Hour+time.Second).Hours()
	if *hb.BatteryLevel != int(want+0.5) {
		t.Fatalf("battery after 10h asleep: %d, want %d", *hb.BatteryLevel, int(want+0.5))
	}
	// A key press wakes it (the keypad answers, offline here).
	if _, err := d.Pickup(context.Background(), "0000000000"); err != nil {
		t.Fatal(err)
	}
	if hb := d.Heartbeat(); hb.Sleeping {
		t.Fatalf("after a key press: %+v", hb)
	}
	if st, err := d.Button(); err != nil || st.Sleeping {
		t.Fatalf("button: %+v %v", st, err)
	}
}
