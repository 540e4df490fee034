// Command crashonce is a provider plugin for keyrelay's tests: the first
// time it is asked to send a message it dies in the middle of the call, as
// a process killed mid-send would; asked again, it sends. What it sent is
// appended to <dir>/sent.log, one message id a line, so a test can count
// deliveries. Its "dir" setting says where it keeps that state.
package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"github.com/keyrelay/keyrelay/plugins/sdk"
)

type provider struct{}

func (provider) Capabilities(context.Context) (sdk.Capabilities, error) {
	return sdk.Capabilities{Name: "crashonce", Channels: []sdk.Channel{sdk.ChannelSMS, sdk.ChannelEmail}}, nil
}

func (provider) CheckConfig(_ context.Context, s map[string]string) error {
	if s["dir"] == "" {
		return errors.New("dir is required")
	}
	return nil
}

func (provider) Send(_ context.Context, msg sdk.Message) (sdk.Receipt, error) {
	dir := msg.Settings["dir"]
	marker := filepath.Join(dir, msg.MessageID+".crashed")
	if _, err := os.Stat(marker); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(marker, nil, 0o600); err != nil {
			return sdk.Receipt{}, sdk.Temporary(err)
		}
		os.Exit(3)
	}
	f, err := os.OpenFile(filepath.Join(dir, "sent.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return sdk.Receipt{}, sdk.Temporary(err)
	}
	defer f.Close()
	if _, err := f.WriteString(msg.MessageID + "\n"); err != nil {
		return sdk.Receipt{}, sdk.Temporary(err)
	}
	return sdk.Receipt{ProviderMessageID: "crashonce-" + msg.MessageID, Status: sdk.StatusSent}, nil
}

func main() { sdk.Serve(provider{}) }
