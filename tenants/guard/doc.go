// Package guard is the one engine for every brute-force counter of
// keyrelay: sign-in per account and per client address, 2FA codes per code
// and per phone, PINs, booking codes per booking and per box, and (Spend)
// the SMS sending budgets.
//
// # Use
//
//	a, err := g.Begin(ctx, guard.PIN, guard.PINSubject(tenantID, userID))
//	if err != nil {
//		return err // 429 with Retry-After, or 503: fail closed
//	}
//	if !pinMatches {
//		return errors.Join(errWrongPIN, a.Failed(ctx))
//	}
//	return a.Succeeded(ctx)
//
// # Schedule
//
// Every Rule follows one schedule: Free failures back to back, then one
// attempt at a time with a delay after each failure that starts at
// BaseDelay and doubles up to MaxDelay, and at most Hard failures per
// Window, after which Begin refuses (cause ErrHardLimit) until the window
// ends or Reset. With the numbers (3 free, 30 s doubling to 1 h):
// failures 1–3 cost nothing, failure 4 earns 30 s, 5 one minute, then 2, 4,
// 8, 16, 32 minutes and 1 h from failure 11 on; reaching 20 failures takes
// at least 3,810 s + 9 × 3,600 s ≈ 10 h.
//
// The failure counter is a ulule/limiter fixed-window counter in Redis
// (Rate{Period: Window, Limit: Hard}); the lockout is its own Redis key with
// a TTL. Both survive an application restart and are shared by replicas.
// Fixed windows let up to twice Hard through across a window edge; every
// weekly bound below counts whole windows, which a window edge does not
// change. Subjects are hashed (SHA-256) in key names, so phone numbers and
// email addresses never show there; the hash is not a secret (a phone
// number can be recovered by enumeration), so Redis still holds personal
// data.
//
// # Why Begin counts up front
//
// "Peek before verifying, increment on failure" lets N parallel guesses all
// pass the peek before any of them has failed: a burst of 50 requests
// would get 50 verifications against a limit of 3. So Begin increments the
// counter before the secret is checked and refuses when the count exceeds
// Hard; once past the Free failures it also takes the lockout key, in the
// same script, for the delay that its own failure would earn. Only one
// attempt at a time runs during the delay phase; the others get 429 with the lock's
// remaining TTL. Failed keeps or extends the lock to the delay the failure
// earned; Succeeded deletes counter and lock (or, with KeepOnSuccess, takes
// back its own increment and releases its own lock). So the Free attempts
// of a window may run together, then one more takes the lock: at most
// Free+1 verifications before the first delay has passed, one per delay
// after that, and never more than Hard in a window. An attempt that never
// reports (crash, Redis failing after Begin) stays counted as a failure.
//
// What refusals cost: nothing. Begin is one Lua script: it reads the lock
// and the counter, refuses uncounted while the lock is held or the
// window's failures are used up, and otherwise counts the attempt and (past
// Free) takes the lock, with nothing running in between. So a burst of 50
// requests fired when a lockout expires gets one attempt and 49 refusals
// that spend nothing: it cannot use up the Hard limit and lock the owner
// out. The same script answers in one round trip, which the box's hot path
// (a pickup) needs.
//
// The bound assumes that a verification takes less than BaseDelay (30 s
// against an argon2id or HMAC check of milliseconds): a lock that expires
// while its attempt still runs lets the next attempt start.
//
// When Redis fails, Begin, Failed, Succeeded, Reset, Peek and Spend return
// a tenants.Error with code EUnavailable (503): verification fails closed.
//
// # Guessing math
//
// 2FA codes (6 digits, from a CSPRNG, single use): one code allows 5 tries,
// so a guesser wins with probability 5/10⁶ = 5·10⁻⁶ per code. Per phone
// (CodePerPhone) at most 10 failures per 24 h window; a week touches at
// most 8 windows, so at most 80 guesses: 80/10⁶ = 8·10⁻⁵ a week (1 in
// 12,500), and this only after the password (login) or the phone number
// (key exchange) is known.
//
// 4-digit PINs (a second factor after the phone number): 10 consecutive
// failures disable the PIN, so 10 guesses among at most 10⁴ − 100 = 9,900
// allowed PINs (the blocklist refuses at least the 100 most common):
// 10/9,900 ≈ 1.0·10⁻³ per PIN if PINs were uniform. They are not (people
// pick dates and patterns beyond any blocklist), so this is the floor, not
// the ceiling, and since a success resets a consecutive count, each
// legitimate use gives a guesser up to 9 more tries: this is why a PIN is
// never a factor on its own and why failures are also counted per box.
//
// Booking codes (d digits, random, unique among a tenant's live codes): one
// booking locks after 10 failures (BookingCode), so a guesser aiming at one
// known booking wins with 10/10^d (10⁻⁹ at 10 digits). Guessing at a box
// keypad is not aimed: each guess matches any of the L live codes at that
// box, with probability L/10^d, and is counted only by the box. BoxCooldown
// allows 20 failures per 15 minutes: 20 × 4 × 24 × 7 = 13,440 guesses a
// week (13,460 counting a partial window at each end). With 50 live
// bookings at one box:
//
//	P(week) ≤ 13,440 × 50 / 10^d = 672,000 / 10^d
//	d = 8:  6.7·10⁻³
//	d = 9:  6.7·10⁻⁴  (1 in 1,488)  — above 1 in 10,000
//	d = 10: 6.7·10⁻⁵  (1 in 14,881) — below 1 in 10,000
//
// So booking codes need 9 digits or more, and with this box limit 10:
// BookingCodeDigits. Nine digits would hold only if a box allowed at most
// 10⁹ × 10⁻⁴ / 50 = 2,000 guesses a week (about 20 failures per 100
// minutes). Codes a box accepts while offline are bounded by its own
// limits: OFFLINE.md.
package guard
