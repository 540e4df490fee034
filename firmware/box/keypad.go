package box

// The keypad while the server cannot be reached: one entry point for
// every code a visitor or an admin may type, with the attempt limits that
// the guessing bound of firmware/offline's package doc is computed from.

import (
	"errors"

	"github.com/keyrelay/keyrelay/firmware/bundles"
	"github.com/keyrelay/keyrelay/firmware/offline"
	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
	"github.com/keyrelay/keyrelay/tenants/guard"
)

// Keypad decides a code typed while offline: a 15-digit derived code; a
// booking or alias code from the bundle (b, nil or empty when the box has
// none); a 10-digit backup code. Booking codes and backup codes are both
// 10 digits, so such a code is looked up in the bundle first and then
// among the backup codes.
//
// Failures are counted per kind, as the guessing bound assumes: bundle
// codes under the server's own box cool-down (guard.BoxCooldown, which the
// box cannot ask while offline), derived and backup codes under the
// offline limits. A 10-digit code that matches nothing is a guess at both
// kinds and counts against both. A kind whose window is spent is not
// checked at all; when a code could only have been of a locked kind the
// answer is "locked", not "wrong", so a visitor is not told that a good
// code is bad.
//
// A bundle code opens the bin the key's fob is in now, which may not be
// the bin the bundle names (a key dropped off into another bin while
// offline); the key leaving is journaled before the decision is returned.
func (o *Offline) Keypad(code string, b *Bundles) (Decision, error) {
	if len(code) == offline.DerivedDigits {
		return o.EnterCode(code)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	bundleLocked, bundleIdx := o.limited("bundle", guard.BoxCooldown.Hard, guard.BoxCooldown.Window)
	isBackup := len(code) == offline.BackupDigits
	backupLocked, backupIdx := false, int64(0)
	if isBackup {
		n, w := o.limits.BackupLimitFor(o.bins)
		backupLocked, backupIdx = o.limited("backup", n, w)
	}

	// A refusal that is not about the code (a stale bundle, a clock set
	// back) is kept: a backup code may still open, and otherwise that is
	// the truthful answer.
	held := ""
	guessedBundle := false
	if !bundleLocked && b != nil {
		d, err := b.OfflinePickup(code, "")
		switch {
		case errors.Is(err, ErrNoBundle):
		case err != nil:
			return Decision{}, err
		case d.Open:
			return o.bundlePickup(d, b)
		case d.Reason == bundles.UnknownCode:
			guessedBundle = true
		case d.Reason == bundles.BundleStale || d.Reason == bundles.ClockBehind:
			held = d.Reason
		default:
			// The code matched an access: not started, ended, revoked,
			// key elsewhere. Not a guess.
			return Decision{Reason: d.Reason}, nil
		}
	}
	if isBackup && !backupLocked {
		d, ok, err := o.matchBackup(code)
		if ok || err != nil {
			return d, err
		}
		if err := o.fail("backup", backupIdx); err != nil {
			return Decision{}, err
		}
	}
	if guessedBundle {
		if err := o.fail("bundle", bundleIdx); err != nil {
			return Decision{}, err
		}
	}
	switch {
	case bundleLocked || backupLocked:
		return Decision{Reason: offline.Locked}, nil
	case held != "":
		return Decision{Reason: held}, nil
	}
	return Decision{Reason: offline.WrongCode}, nil
}

// bundlePickup opens for a bundle decision, if the key is in the box.
// Called with o.mu held.
func (o *Offline) bundlePickup(d bundles.Decision, b *Bundles) (Decision, error) {
	fob := ""
	if p := b.Payload(); p != nil {
		for _, k := range p.Keys {
			if k.ID == d.KeyID {
				fob = k.FobSerial
				break
			}
		}
	}
	bin := 0
	if fob != "" && o.st.Bins[d.Bin] == fob {
		bin = d.Bin
	} else if fob != "" {
		for n, f := range o.st.Bins {
			if f == fob {
				bin = n
				break
			}
		}
	}
	if bin == 0 {
		return Decision{Reason: offline.KeyNotHere}, nil
	}
	e, err := o.J.Append(boxsync.Entry{BoxTime: o.clock().UTC(), ServerTimeSeen: o.st.LatestServer, Kind: boxsync.KindPickup, Bin: bin,
		FobSerial: fob, Method: boxsync.MethodVerifier, Verifier: d.Verifier, AccessID: d.AccessID.String()})
	if err != nil {
		return Decision{}, err
	}
	o.st.Bins[bin] = ""
	return Decision{Open: true, Bins: []int{bin}, Entry: e}, o.save()
}

// Screen is what the box's screen says for a refusal reason (offline, or
// the box's own), in the words a visitor at the keypad needs.
func Screen(reason string) string {
	switch reason {
	case offline.WrongCode, bundles.UnknownCode:
		return "This code does not open anything at this box."
	case offline.Malformed:
		return "Please type the whole code."
	case offline.Locked:
		return "Too many wrong codes: the keypad is locked for a while. Please try again later."
	case offline.NotStarted:
		return "Your access has not started yet."
	case offline.Ended:
		return "Your access has ended."
	case offline.Revoked:
		return "This access was cancelled. Please call the business."
	case offline.KeyNotHere:
		return "The key is not in this box. Please call the business."
	case offline.ClockBehind:
		return "This box cannot check times right now. Please call the business."
	case bundles.BundleStale:
		return "This box has been offline too long to check booking codes. Please call the business."
	case bundles.OfflineSMS:
		return "The box cannot send you a code right now: please type your booking code instead."
	case bundles.NoAccess:
		return "No booking for this phone number at this box."
	case NoOfflineMode:
		return "This box cannot reach the service and has no offline mode. Please try again later or call the business."
	case NoBundle:
		return "This box cannot reach the service: only printed backup codes work right now. Please call the business."
	case OfflineSecondFactor:
		return "The box cannot reach the service to check this code: please type your booking code instead."
	case BoxFull:
		return "There is no free bin for this key. Please call the business."
	}
	return "This code does not open anything at this box."
}

// Refusals of the box itself (beside those of firmware/offline and
// firmware/bundles).
const (
	// NoOfflineMode: an MS3 that cannot reach the server.
	NoOfflineMode = "offline_unavailable"
	// NoBundle: offline with no bundle yet (phone numbers cannot be checked).
	NoBundle = "no_bundle"
	// OfflineSecondFactor: the second step of a phone pickup needs the server.
	OfflineSecondFactor = "offline_second_factor"
	// BoxFull: a key to drop off offline and no free bin.
	BoxFull = "box_full"
)
