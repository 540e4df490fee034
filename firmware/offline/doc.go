// Package offline is what lets a box open bins without the server
// (OFFLINE.md): backup codes an admin prints ahead of an outage, and
// derived codes that carry their own grant for bookings made while a box
// is offline. The code functions (codes.go) are shared by the server and
// the reference box (firmware/box), so both agree by construction; the
// Service is the server's side: the printable sheet, deriving a code for a
// booking, the derived tags a bundle must revoke, and the backup counters
// that sync advances.
//
// # Backup codes (R3, R5)
//
// Per box one code per bin and one "open all" code (bin 0):
// code_i = Trunc10(HMAC(K_bak, box_id ‖ bin ‖ i)), 10 digits, reduced
// without modulo bias (rejection sampling over the MAC's 64-bit words).
// Like HOTP with a counter per bin, but without a look-ahead window: the
// box accepts only the next unused counter of each bin, persists the
// counter as used before it opens, and journals it. The sheet shows the
// next code of each bin as the server knows it; a code used offline comes
// back through sync, the server's counter moves past it, and the sheet
// shows the following one. A code used offline that has not been synced
// yet still shows on a sheet downloaded in between: the box refuses it.
//
// # Derived codes (R3, R4)
//
// 15 digits: payload (start hour mod 1,000, duration class, bin: 7 digits)
// and tag = HMAC(K_der, box_id ‖ payload ‖ fob serial of the key in that
// bin) reduced to 8 digits without bias. A code opens one bin (the
// payload's, and only while the key with that fob is in it) during one
// window (the payload's), at one box (the tag's key and box id). The box
// resolves the start hour to the candidate nearest its clock, so the
// server derives codes only for windows starting within Horizon (20 days)
// and lasting at most MaxWindow (20 days): 1–24 hours, then 2–20 days.
// OFFLINE.md's months do not fit a 3-digit hour field (see MaxWindow).
// The box refuses every derived code while its clock reads earlier than
// the latest server time it has seen (R8).
//
// Revocation (R7): a derived code stops working at a box only when the box
// receives a bundle that lists its tag (RevokedTags). Until then a revoked
// booking's derived code, or one whose window was shortened, still opens
// within the window it carries; sync then reports the pickup as a conflict.
//
// # Guessing bound (R3), computed by TestGuessingBound from DefaultLimits
//
// The box counts wrong codes per kind in fixed windows. A week touches at
// most week/window + 1 windows:
//
//	derived: 5 failures/hour   × (168 + 1) =    845 guesses × 1/10⁸        = 8.45·10⁻⁶
//	backup: 20 failures/15 min × (672 + 1) = 13,460 guesses × 13/10¹⁰      = 1.75·10⁻⁵ (12 bins)
//	bundle booking codes (tenants/guard, box cooldown): 13,440 × 50/10¹⁰ = 6.72·10⁻⁵
//	sum                                                                      = 9.32·10⁻⁵ < 10⁻⁴
//
// Each kind alone, and all three together, stay below 1 in 10,000 a week.
// A box with more bins has more live backup codes: it lowers its backup
// failure limit (Limits.BackupLimitFor) to keep backup codes within
// BackupBudget (2.5·10⁻⁵): 3 failures per 15 minutes at 99 bins, 1 per 30
// minutes at 500.
// The sum assumes the counters are separate (the worst case); a box that
// counts 10-digit guesses once for booking and backup codes does better.
package offline
