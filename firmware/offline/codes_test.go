package offline

import (
	"crypto/rand"
	"math"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/boxkeys"
	"github.com/keyrelay/keyrelay/tenants/guard"
)

func testKeys(t *testing.T) (kder, kbak []byte) {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	kder, err := boxkeys.Derive(k, boxkeys.Derived)
	if err != nil {
		t.Fatal(err)
	}
	kbak, err = boxkeys.Derive(k, boxkeys.Backup)
	if err != nil {
		t.Fatal(err)
	}
	return kder, kbak
}

// TestDerivedCode covers OFFLINE.md's derived-code refusals, each on its own.
func TestDerivedCode(t *testing.T) {
	kder, _ := testKeys(t)
	boxID := uuid.Must(uuid.NewV7())
	now := time.Date(2025, 5, 1, 9, 20, 0, 0, time.UTC)
	start := now.Add(2 * time.Hour).Truncate(time.Hour) // 11:00
	class, ok := ClassFor(3 * time.Hour)
	if !ok || class != 3 {
		t.Fatalf("class for 3 h = %d %v", class, ok)
	}
	g := Grant{Start: start, Class: class, Bin: 7}
	fobs := map[int]string{7: "FOB-7", 8: "FOB-8"}
	fobIn := func(b int) string { return fobs[b] }
	code := DerivedCode(kder, boxID, g, "FOB-7")
	if len(code) != DerivedDigits || !allDigits(code) {
		t.Fatalf("code %q", code)
	}
	during := start.Add(90 * time.Minute)
	check := func(code string, at, seen time.Time) string {
		_, _, reason := CheckDerived(kder, boxID, code, fobIn, at, seen)
		return reason
	}

	t.Run("OK", func(t *testing.T) {
		got, tag, reason := CheckDerived(kder, boxID, code, fobIn, during, now)
		if reason != "" || got.Bin != 7 || !got.Start.Equal(start) || !got.End().Equal(start.Add(3*time.Hour)) || tag != code[PayloadDigits:] {
			t.Fatalf("grant %+v tag %s reason %q", got, tag, reason)
		}
	})
	t.Run("ErrOutsideWindow", func(t *testing.T) {
		if r := check(code, start.Add(-time.Minute), now); r != NotStarted {
			t.Errorf("before: %q", r)
		}
		if r := check(code, start.Add(3*time.Hour), now); r != Ended {
			t.Errorf("at the end: %q", r)
		}
		// Far later the hour field resolves to another window, which has
		// not started or has ended: never this one.
		if r := check(code, start.Add(30*24*time.Hour), now); r != NotStarted && r != Ended {
			t.Errorf("30 days later: %q", r)
		}
	})
	t.Run("ErrOtherBox", func(t *testing.T) {
		_, _, reason := CheckDerived(kder, uuid.Must(uuid.NewV7()), code, fobIn, during, now)
		if reason != WrongCode {
			t.Errorf("another box: %q", reason)
		}
		other, _ := testKeys(t)
		if _, _, reason := CheckDerived(other, boxID, code, fobIn, during, now); reason != WrongCode {
			t.Errorf("another box secret: %q", reason)
		}
	})
	t.Run("ErrOtherBin", func(t *testing.T) {
		// The payload names bin 8 instead: the tag no longer matches.
		moved := code[:5] + "08" + code[7:]
		if r := check(moved, during, now); r != WrongCode {
			t.Errorf("bin changed: %q", r)
		}
		// The key left bin 7 (another fob there now, or none).
		fobs[7] = "FOB-X"
		if r := check(code, during, now); r != WrongCode {
			t.Errorf("other key in the bin: %q", r)
		}
		fobs[7] = ""
		if r := check(code, during, now); r != KeyNotHere {
			t.Errorf("empty bin: %q", r)
		}
		fobs[7] = "FOB-7"
	})
	t.Run("ErrOneDigitChanged", func(t *testing.T) {
		for i := 0; i < len(code); i++ {
			b := []byte(code)
			b[i] = '0' + (b[i]-'0'+1)%10
			r := check(string(b), during, now)
			if r == "" {
				t.Errorf("digit %d changed: still opens", i)
			}
		}
	})
	t.Run("ErrClockSetBack", func(t *testing.T) {
		// The box has seen the server at 12:00; its clock now reads 11:30
		// (set back): within the window by that clock, refused (R8).
		seen := start.Add(time.Hour)
		if r := check(code, start.Add(30*time.Minute), seen); r != ClockBehind {
			t.Errorf("clock behind the latest server time: %q", r)
		}
		if r := check(code, start.Add(61*time.Minute), seen); r != "" {
			t.Errorf("clock past it: %q", r)
		}
	})
	t.Run("ErrMalformed", func(t *testing.T) {
		for _, c := range []string{"", "123", code[:14], code + "1", "12345678901234a", code[:3] + "00" + code[5:], code[:3] + "99" + code[5:], code[:5] + "00" + code[7:]} {
			if r := check(c, during, now); r != Malformed {
				t.Errorf("%q: %q", c, r)
			}
		}
	})
	t.Run("ResolvesNearestHour", func(t *testing.T) {
		// A window starting 19 days ahead, used on its last hour, and one
		// that started 19 days ago: the hour field resolves right.
		for _, d := range []time.Duration{19 * 24 * time.Hour, -19 * 24 * time.Hour} {
			s := now.Add(d).Truncate(time.Hour)
			c, _ := ClassFor(20 * 24 * time.Hour)
			g := Grant{Start: s, Class: c, Bin: 8}
			got, _, ok := ParseDerived(DerivedCode(kder, boxID, g, "FOB-8"), s.Add(time.Minute))
			if !ok || !got.Start.Equal(s) {
				t.Errorf("start %v: resolved %v", s, got.Start)
			}
		}
	})
}

func TestClasses(t *testing.T) {
	for c := 1; c <= 43; c++ {
		if ClassDuration(c) == 0 || ClassDuration(c) > MaxWindow {
			t.Errorf("class %d: %v", c, ClassDuration(c))
		}
	}
	if ClassDuration(0) != 0 || ClassDuration(44) != 0 {
		t.Error("classes outside 1–43 must be invalid")
	}
	if c, ok := ClassFor(25 * time.Hour); !ok || ClassDuration(c) != 48*time.Hour {
		t.Errorf("25 h → class %d", c)
	}
	if _, ok := ClassFor(MaxWindow + time.Hour); ok {
		t.Error("a window over 20 days got a class")
	}
	// The nearest-candidate rule is exact for every start within the
	// horizon used before its window ends.
	if Horizon+MaxWindow > 2*HourModulus/2*time.Hour*2 || Horizon > HourModulus/2*time.Hour || MaxWindow > HourModulus/2*time.Hour {
		t.Error("horizon or window too long for a 1,000-hour field")
	}
}

func TestBackupCode(t *testing.T) {
	_, kbak := testKeys(t)
	boxID := uuid.Must(uuid.NewV7())
	seen := map[string]bool{}
	for bin := 0; bin <= 12; bin++ {
		for i := uint64(0); i < 3; i++ {
			c := BackupCode(kbak, boxID, bin, i)
			if len(c) != BackupDigits || !allDigits(c) || seen[c] {
				t.Fatalf("bin %d counter %d: %q", bin, i, c)
			}
			seen[c] = true
		}
	}
	if BackupCode(kbak, boxID, 1, 0) == BackupCode(kbak, uuid.Must(uuid.NewV7()), 1, 0) {
		t.Error("two boxes share a code")
	}
}

// TestUniformDigits checks the reduction: each leading digit about as
// often as the others.
func TestUniformDigits(t *testing.T) {
	key := []byte("k")
	var counts [10]int
	const n = 20000
	for i := 0; i < n; i++ {
		d := uniformDigits(key, TagDigits, []byte{byte(i), byte(i >> 8), byte(i >> 16)})
		counts[d[0]-'0']++
	}
	for d, c := range counts {
		if math.Abs(float64(c)-n/10) > 5*math.Sqrt(n/10) {
			t.Errorf("leading digit %d: %d of %d", d, c, n)
		}
	}
}

// TestGuessingBound computes the package doc's numbers from the
// configured limits (R3).
func TestGuessingBound(t *testing.T) {
	l := DefaultLimits()
	derived := l.DerivedWeeklyChance()
	backup := l.BackupWeeklyChance(12)
	if g := GuessesPerWeek(l.DerivedFailures, l.DerivedWindow); g != 845 {
		t.Errorf("derived guesses a week: %g, the doc says 845", g)
	}
	if g := GuessesPerWeek(l.BackupFailures, l.BackupWindow); g != 13460 {
		t.Errorf("backup guesses a week: %g, the doc says 13,460", g)
	}
	near := func(got, want float64) bool { return math.Abs(got-want) <= want*0.01 }
	if !near(derived, 8.45e-6) || !near(backup, 1.75e-5) {
		t.Errorf("derived %g, backup %g: the doc says 8.45e-6 and 1.75e-5", derived, backup)
	}
	// Booking codes from the bundle, at guard's box limit, 50 live codes of
	// guard.BookingCodeDigits digits.
	bundle := 13440 * 50 / math.Pow10(guard.BookingCodeDigits)
	sum := derived + backup + bundle
	if !near(sum, 9.32e-5) {
		t.Errorf("sum %g, the doc says 9.32e-5", sum)
	}
	for name, p := range map[string]float64{"derived": derived, "backup": backup, "sum": sum} {
		if p >= 1e-4 {
			t.Errorf("%s: %g a week, not below 1 in 10,000", name, p)
		}
	}
	// Larger boxes get a lower backup limit and stay within the budget.
	if n, w := l.BackupLimitFor(12); n != l.BackupFailures || w != l.BackupWindow {
		t.Errorf("12 bins: limit %d per %v, want the configured one", n, w)
	}
	for _, bins := range []int{24, 99, 500} {
		if p := l.BackupWeeklyChance(bins); p > BackupBudget {
			t.Errorf("%d bins: %g a week, over the backup budget %g", bins, p, BackupBudget)
		}
	}
	if n, w := l.BackupLimitFor(99); n != 3 || w != 15*time.Minute {
		t.Errorf("99 bins: limit %d per %v, the doc says 3 per 15 min", n, w)
	}
	if n, w := l.BackupLimitFor(500); n != 1 || w != 30*time.Minute {
		t.Errorf("500 bins: limit %d per %v, the doc says 1 per 30 min", n, w)
	}
}
