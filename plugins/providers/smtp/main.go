// Command smtp is the provider plugin that sends email through an SMTP
// relay. See package smtp.
package main

import (
	"github.com/keyrelay/keyrelay/plugins/internal/egress"
	"github.com/keyrelay/keyrelay/plugins/providers/smtp/smtp"
	"github.com/keyrelay/keyrelay/plugins/sdk"
)

func main() {
	sdk.Serve(smtp.New(egress.FromEnv()))
}
