// Command webhook is the provider plugin that delivers messages to a
// tenant's own HTTPS endpoint, signed. See package webhook.
package main

import (
	"github.com/keyrelay/keyrelay/plugins/internal/egress"
	"github.com/keyrelay/keyrelay/plugins/providers/webhook/webhook"
	"github.com/keyrelay/keyrelay/plugins/sdk"
)

func main() {
	sdk.Serve(webhook.New(egress.FromEnv()))
}
