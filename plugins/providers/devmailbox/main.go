// Command devmailbox is the development provider plugin: it keeps every
// message in a local directory instead of sending it. See package
// devmailbox.
package main

import (
	"github.com/keyrelay/keyrelay/plugins/providers/devmailbox/devmailbox"
	"github.com/keyrelay/keyrelay/plugins/sdk"
)

func main() {
	sdk.Serve(devmailbox.New())
}
