// Command httpsms is the provider plugin for SMS gateways with a
// Twilio-style HTTP API. See package httpsms.
package main

import (
	"github.com/keyrelay/keyrelay/plugins/internal/egress"
	"github.com/keyrelay/keyrelay/plugins/providers/httpsms/httpsms"
	"github.com/keyrelay/keyrelay/plugins/sdk"
)

func main() {
	sdk.Serve(httpsms.New(egress.FromEnv()))
}
