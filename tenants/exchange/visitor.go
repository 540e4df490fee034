package exchange

import (
	"context"
	"errors"
	"strconv"
	"time"

	"gorm.io/gorm"

	"github.com/keyrelay/keyrelay/firmware/boxkeys"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/bookings"
	"github.com/keyrelay/keyrelay/tenants/guard"
)

// OnlineWithin is how recently a box must have called to count as online
// for a booking-URL pickup: its long poll calls at least every 25 s, and
// its credential records a call at most once a minute.
const OnlineWithin = 3 * time.Minute

// OpenInput is what the visitor's booking page sends.
type OpenInput struct {
	ScreenCode string `json:"screen_code"`
}

// OpenFromPage is a pickup with the booking URL. The URL is a secret, but
// one that travels (forwarded mails, shared screens), so it opens nothing
// by itself: the visitor types the code the box's screen shows, which
// proves they stand there, and the box gets an open-bin command. ctx
// carries the tenant transaction the token names (bookings.TenantOfURLToken).
func (s *Service) OpenFromPage(ctx context.Context, token string, in OpenInput) (res Result, err error) {
	defer func() { s.observe(ctx, res, err) }()
	tenantID, ok := tenants.TenantOf(ctx)
	if !ok {
		return Result{}, errors.New("exchange: no tenant transaction")
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Result{}, err
	}
	now := s.now()
	var g grant
	err = tx.Raw(`SELECT b.id AS booking_id, b.key_id, k.name AS key_name, b.starts_at, b.ends_at, b.revoked_at,
			(b.hold AND b.released_at IS NULL) AS held, k.state AS key_state, k.box_id AS key_box_id, k.bin AS key_bin,
			b.locked_at IS NOT NULL AS locked,
			(SELECT max(c.last_seen_at) FROM box_credentials c WHERE c.box_id = k.box_id AND c.revoked_at IS NULL) AS last_seen_at
		FROM bookings b JOIN keys k ON k.tenant_id = b.tenant_id AND k.id = b.key_id AND k.deleted_at IS NULL
		WHERE b.url_token_hash = ?`, bookings.URLTokenHash(token)).Take(&g).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return Result{}, tenants.NotFound("booking")
	}
	if err != nil {
		return Result{}, errf("find booking: %w", err)
	}
	actor := "visitor:booking:" + g.BookingID.String()
	details := map[string]string{"booking": g.BookingID.String(), "key": g.KeyID.String(), "method": "booking_url"}
	deny := func(reason string) (Result, error) {
		return denied(reason), audit.Record(ctx, actor, "pickup.denied", "booking:"+g.BookingID.String(), mergeDetails(details, map[string]string{"reason": reason}))
	}
	if reason := g.refusal(now); reason != "" {
		return deny(reason)
	}
	// A booking locked after wrong tries at the box stays locked for its
	// URL too, until staff unlock it.
	if g.Locked {
		return deny(Locked)
	}
	if g.KeyState != "in_bin" || g.KeyBoxID == nil || g.KeyBin == nil {
		return deny(KeyNotHere)
	}
	boxID, bin := *g.KeyBoxID, *g.KeyBin
	details["box"], details["bin"] = boxID.String(), strconv.Itoa(bin)
	if !digitsOnly(in.ScreenCode) || len(in.ScreenCode) != boxkeys.ScreenDigits {
		return Result{}, tenants.Invalid(tenants.FieldError{Field: "screen_code", Message: "must be the 6 digits on the box's screen"})
	}
	if g.LastSeenAt == nil || now.Sub(*g.LastSeenAt) > OnlineWithin {
		return deny(BoxOffline)
	}
	// Wrong screen codes are limited like other codes: per booking (its
	// tries) and at the box.
	perBooking, err := s.guard.Begin(ctx, guard.CodeTries, tenantID.String()+"/screen/"+g.BookingID.String())
	if err != nil {
		return Result{}, err
	}
	atBox, err := s.guard.Begin(ctx, guard.BoxCooldown, tenantID.String()+"/"+boxID.String())
	if err != nil {
		return Result{}, errors.Join(err, perBooking.Failed(ctx))
	}
	k, err := s.secrets.Secret(ctx, boxID)
	if err != nil {
		return Result{}, errors.Join(err, perBooking.Succeeded(ctx), atBox.Succeeded(ctx))
	}
	good, err := boxkeys.CheckScreenCode(k, boxID, in.ScreenCode, now)
	if err != nil {
		return Result{}, err
	}
	if !good {
		p := tenants.Principal{TenantID: tenantID, BoxID: boxID}
		if err := errors.Join(perBooking.Failed(ctx), s.failedAtBox(ctx, p, atBox)); err != nil {
			return Result{}, err
		}
		return deny(WrongScreen)
	}
	if err := errors.Join(perBooking.Succeeded(ctx), atBox.Succeeded(ctx)); err != nil {
		return Result{}, err
	}
	if err := s.commands.OpenBin(ctx, boxID, bin, g.BookingID); err != nil {
		return Result{}, err
	}
	if err := audit.Record(ctx, actor, "pickup.opened", "box:"+boxID.String(), details); err != nil {
		return Result{}, err
	}
	return Result{Result: "open", Bin: &bin, KeyID: &g.KeyID, AccessID: &g.BookingID}, nil
}
