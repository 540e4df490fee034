package main

import (
	"context"
	"fmt"
	"io"

	"github.com/keyrelay/keyrelay/tenants/accounts"
)

// The demo tenant a newcomer signs in to; development mode only.
const (
	demoEmail    = "demo@keyrelay.local"
	demoPassword = "keyrelay-demo-2026"
)

// ensureDemo creates the demo tenant on the first start and prints how to
// sign in, with the development operator token.
func (a *App) ensureDemo(ctx context.Context, out io.Writer) error {
	exists, err := a.accounts.EmailKnown(ctx, demoEmail)
	if err != nil {
		return err
	}
	if !exists {
		_, _, err := a.accounts.Signup(ctx, accounts.SignupInput{
			Company: "Demo Car Rental", Name: "Demo Owner", Email: demoEmail, Phone: "+15555550100", Password: demoPassword,
		})
		if err != nil {
			return err
		}
	}
	fmt.Fprintf(out, `
  keyrelay is running in development mode at %s
  demo tenant:     %s / %s
  sign in:         curl -s %s/api/v1/auth/login -H 'Content-Type: application/json' -d '{"email":"%s","password":"%s"}'
  then:            read the 6-digit code at %s/dev/mailbox and POST it to /api/v1/auth/login/verify
  operator token:  %s (development only; set KEYRELAY_OPERATOR_TOKEN in production)

`, a.cfg.BaseURL, demoEmail, demoPassword, a.cfg.BaseURL, demoEmail, demoPassword, a.cfg.BaseURL, a.cfg.OperatorToken)
	return nil
}
