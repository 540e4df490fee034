package guard

import (
	"net/netip"
	"strings"
	"time"
)

// The rules of issue 5. Keys passed with them must name the tenant and the
// subject (e.g. tenantID+"/"+email), so that tenants never share a counter.
var (
	// LoginAccount: ≤ 20 consecutive failed sign-ins per account; then the
	// account needs the reset flow (Reset it when the password is reset).
	// Success resets. The 30-day window is the longest a "consecutive"
	// count lasts without a success or a reset.
	LoginAccount = Rule{Name: "login-account", Free: 3, BaseDelay: 30 * time.Second, MaxDelay: time.Hour, Hard: 20, Window: 30 * 24 * time.Hour}

	// LoginAddress: ≤ 20 failed sign-ins per client address (ClientKey;
	// the address from the configured trusted proxy header only) per day.
	// KeepOnSuccess: signing in to one's own account must not clear the
	// failures the same address made against others.
	LoginAddress = Rule{Name: "login-address", Free: 3, BaseDelay: 30 * time.Second, MaxDelay: time.Hour, Hard: 20, Window: 24 * time.Hour, KeepOnSuccess: true}

	// CodeTries: 5 tries per 2FA code (key: the login attempt or key
	// exchange the code is bound to); the window outlives the code's 10
	// minutes, and a re-sent code keeps the same key, so it does not reset
	// the count.
	CodeTries = Rule{Name: "code-tries", Free: 3, BaseDelay: 30 * time.Second, MaxDelay: time.Hour, Hard: 5, Window: 15 * time.Minute}

	// CodePerPhone: ≤ 10 failed 2FA codes per phone number per 24 h.
	// KeepOnSuccess: a budget, not a run of failures.
	CodePerPhone = Rule{Name: "code-phone", Free: 3, BaseDelay: 30 * time.Second, MaxDelay: time.Hour, Hard: 10, Window: 24 * time.Hour, KeepOnSuccess: true}

	// PIN: a growing pause after each wrong PIN past the third in a row
	// (30 s, 1 min, … up to an hour), and 10 in a row disable the
	// PIN (key: PINSubject); refused with ErrHardLimit until its owner sets
	// a new one (Reset then). Success resets.
	PIN = Rule{Name: "pin", Free: 3, BaseDelay: 30 * time.Second, MaxDelay: time.Hour, Hard: 10, Window: 30 * 24 * time.Hour}

	// BookingCode: 10 failures per booking, then it locks (ErrHardLimit)
	// and the owner is alerted; Reset when the owner unlocks it. It only
	// counts (Free = Hard, no delays): each failure it counts was already
	// paced by the rule of the secret that failed (CodeTries, CodePerPhone,
	// PIN, BoxCooldown), and a second schedule of delays on top would let
	// a guesser at one booking lock its visitor out of a pickup for hours.
	BookingCode = Rule{Name: "booking-code", Free: 10, Hard: 10, Window: 30 * 24 * time.Hour}

	// BoxCooldown: more than 20 failures at one box in 15 minutes put the
	// box into a cool-down (ErrHardLimit, alert the tenant) until the
	// window ends: at most 20 failures per 15 minutes. No delays before
	// that (Free = Hard): a busy box serves many visitors. KeepOnSuccess:
	// a visitor's valid code must not clear a guesser's failures.
	BoxCooldown = Rule{Name: "box", Free: 20, Hard: 20, Window: 15 * time.Minute, KeepOnSuccess: true}
)

// BookingSubject is the key of a booking's BookingCode counter.
func BookingSubject(tenantID, bookingID string) string { return tenantID + "/" + bookingID }

// PINSubject is the key of a PIN's counter: its user's, whatever phone
// number it was reached by.
func PINSubject(tenantID, userID string) string { return tenantID + "/pin/" + userID }

// SMS budgets for Spend (the per-tenant daily budget is configuration).
const (
	SMSPerPhoneHour = 3  // codes per phone number and booking per hour
	SMSPerPhoneDay  = 10 // codes per phone number per day
)

// BookingCodeDigits is the booking-code length that keeps the chance of
// opening a bin by guessing at one box with 50 live bookings under 1 in
// 10,000 a week under BoxCooldown (see the package doc).
const BookingCodeDigits = 10

// ClientKey reduces a client address to the unit that is limited: an IPv6
// address to its /64 (one subscriber usually holds a whole /64), an IPv4
// address (or an IPv4-mapped IPv6 one) to itself. A port is dropped. What
// does not parse is returned unchanged, so it still gets a counter.
func ClientKey(ip string) string {
	s := strings.TrimSpace(ip)
	addr, err := netip.ParseAddr(s)
	if err != nil {
		ap, err2 := netip.ParseAddrPort(s)
		if err2 != nil {
			return s
		}
		addr = ap.Addr()
	}
	addr = addr.WithZone("").Unmap()
	if addr.Is4() {
		return addr.String()
	}
	return netip.PrefixFrom(addr, 64).Masked().String()
}
