package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/accounts"
	"github.com/keyrelay/keyrelay/tenants/bookings"
	"github.com/keyrelay/keyrelay/tenants/inventory"
)

// The demo tenant a newcomer signs in to; development mode only.
const (
	demoEmail    = "demo@keyrelay.local"
	demoPassword = "keyrelay-demo-2026"
)

// ensureDemo creates the demo tenant on the first start, with a box, keys
// and a booking to look at, and prints how to sign in, with the
// development operator token and (the first time) a provisioning token
// for the demo box.
func (a *App) ensureDemo(ctx context.Context, out io.Writer) error {
	exists, err := a.accounts.EmailKnown(ctx, demoEmail)
	if err != nil {
		return err
	}
	boxHint := ""
	if !exists {
		t, u, err := a.accounts.Signup(ctx, accounts.SignupInput{
			Company: "Demo Car Rental", Name: "Demo Owner", Email: demoEmail, Phone: "+15555550100", Password: demoPassword,
		})
		if err != nil {
			return err
		}
		owner := tenants.Principal{TenantID: t.TenantID, UserID: u.ID, Role: tenants.RoleOwner}
		var token string
		err = a.scope.Do(tenants.WithPrincipal(ctx, owner), t.TenantID, func(ctx context.Context) error {
			var err error
			token, err = a.seedDemo(ctx)
			return err
		})
		if err != nil {
			return fmt.Errorf("seed the demo tenant: %w", err)
		}
		boxHint = fmt.Sprintf("  demo box:        go run ./app box provision -url %s -token %s -state .keyrelay-box\n", a.cfg.BaseURL, token)
	}
	fmt.Fprintf(out, `
  keyrelay is running in development mode at %s
  demo tenant:     %s / %s
  sign in:         curl -s %s/api/v1/auth/login -H 'Content-Type: application/json' -d '{"email":"%s","password":"%s"}'
  then:            read the 6-digit code at %s/dev/mailbox and POST it to /api/v1/auth/login/verify
%s  operator token:  %s (development only; set KEYRELAY_OPERATOR_TOKEN in production)

`, a.cfg.BaseURL, demoEmail, demoPassword, a.cfg.BaseURL, demoEmail, demoPassword, a.cfg.BaseURL, boxHint, a.cfg.OperatorToken)
	return nil
}

// seedDemo gives the demo tenant a location, an MS5 box with three keys,
// one booking running now, and a provisioning token for the box.
func (a *App) seedDemo(ctx context.Context) (string, error) {
	loc, err := a.inventory.CreateLocation(ctx, inventory.LocationInput{Name: "Airport", Address: "Terminal 2, 95700 Roissy"})
	if err != nil {
		return "", err
	}
	locID := loc.ID.String()
	b, err := a.inventory.CreateBox(ctx, inventory.BoxInput{Name: "Airport desk", Model: "MS5", LocationID: &locID,
		Address: "Terminal 2, 95700 Roissy", Timezone: "Europe/Paris", Bins: 12})
	if err != nil {
		return "", err
	}
	var first inventory.Key
	for i, car := range []string{"Peugeot 208 · GH-421-KT", "Renault Clio · FK-118-PL", "Tesla Model 3 · HB-907-ZA"} {
		k, err := a.inventory.CreateKey(ctx, inventory.KeyInput{Name: car, FobSerial: fmt.Sprintf("DEMO-FOB-%03d", i+1), BoxID: b.ID.String(), Bin: i + 1})
		if err != nil {
			return "", err
		}
		if i == 0 {
			first = k
		}
	}
	now := time.Now().UTC()
	start, end := now.Add(-time.Minute).Format(time.RFC3339), now.Add(48*time.Hour).Format(time.RFC3339)
	phone, email := "+15555550199", "visitor@demo.keyrelay.local"
	reminder := true
	if _, err := a.bookings.Create(ctx, bookings.NewBookingInput{KeyID: first.ID.String(), Kind: bookings.OneTime,
		Visitor: &bookings.Visitor{Name: "Vic Visitor", Phone: &phone, Email: &email}, StartsAt: &start, EndsAt: &end,
		ReturnReminder: &reminder, NotifyVia: "sms"}); err != nil {
		return "", err
	}
	tok, err := a.devices.IssueToken(ctx, b.ID)
	if err != nil {
		return "", err
	}
	return tok.Token, nil
}
