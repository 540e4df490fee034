package offline

import (
	"math"
	"time"
)

// Limits are a box's offline attempt limits per kind of code: at most
// Failures wrong codes per fixed Window, after which the box refuses that
// kind of code without checking it until the window ends. They are the
// numbers the guessing bound (package doc) is computed from.
type Limits struct {
	DerivedFailures int
	DerivedWindow   time.Duration
	BackupFailures  int
	BackupWindow    time.Duration
}

// DefaultLimits are OFFLINE.md's numbers.
func DefaultLimits() Limits {
	return Limits{DerivedFailures: 5, DerivedWindow: time.Hour, BackupFailures: 20, BackupWindow: 15 * time.Minute}
}

// Week is the period R3 bounds.
const Week = 7 * 24 * time.Hour

// GuessesPerWeek is the most wrong codes a keypad attacker gets in a week
// under failures per fixed window. A week of fixed windows touches at most
// week/window + 1 of them when the window does not divide the week evenly
// with the attack's start; OFFLINE.md counts week/window (840, 13,440),
// which is exact for an attack aligned on the windows. Both are shown; the
// bound uses the conservative one.
func GuessesPerWeek(failures int, window time.Duration) float64 {
	return float64(failures) * (math.Ceil(float64(Week)/float64(window)) + 1)
}

// DerivedWeeklyChance is the chance that a week of guessing opens a bin
// with a derived code: any 15-digit string whose tag matches its payload
// opens, so each guess wins with 10⁻⁸ whatever its payload.
func (l Limits) DerivedWeeklyChance() float64 {
	return GuessesPerWeek(l.DerivedFailures, l.DerivedWindow) / math.Pow10(TagDigits)
}

// BackupBudget is the weekly chance backup codes may take of R3's 10⁻⁴,
// leaving the rest to derived and bundle codes (package doc).
const BackupBudget = 2.5e-5

// BackupLimitFor is the backup-code limit a box with bins bins applies:
// BackupFailures per BackupWindow, lowered for large boxes, whose bins + 1
// live codes would otherwise exceed BackupBudget (a 99-bin box allows 3
// per 15 minutes); below one failure per window, the window lengthens
// instead (a 500-bin box: 1 failure per 30 minutes).
func (l Limits) BackupLimitFor(bins int) (int, time.Duration) {
	w := l.BackupWindow
	for {
		perWindow := BackupBudget * math.Pow10(BackupDigits) / (float64(bins+1) * (math.Ceil(float64(Week)/float64(w)) + 1))
		if n := min(l.BackupFailures, int(perWindow)); n >= 1 {
			return n, w
		}
		w += l.BackupWindow
	}
}

// BackupWeeklyChance is the same for backup codes at a box with bins bins:
// bins + 1 live codes (one per bin and the open-all code), each 10 digits,
// under BackupLimitFor(bins).
func (l Limits) BackupWeeklyChance(bins int) float64 {
	n, w := l.BackupLimitFor(bins)
	return GuessesPerWeek(n, w) * float64(bins+1) / math.Pow10(BackupDigits)
}
