package box

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/boxkeys"
	"github.com/keyrelay/keyrelay/firmware/commands"
	"github.com/keyrelay/keyrelay/firmware/health"
	"github.com/keyrelay/keyrelay/tenants/exchange"
)

// Device is the online behaviour of an MS5: it sends heartbeats, holds a
// long poll for commands, opens the bins it is told to (here: reports it),
// acknowledges, and reports what the bins hold afterwards. Bins maps a bin
// to the fob serial it holds ("" for empty): the simulated hardware.
type Device struct {
	Client          *Client
	FirmwareVersion string
	Bins            map[int]string
	Log             *slog.Logger
	// Opened receives each bin the device opened, for tests and demos.
	Opened chan<- int
	// PowerSource and BatteryLevel are reported in heartbeats.
	PowerSource  string
	BatteryLevel int
	// Bundles, when set, fetches the offline bundle when the platform
	// says a new one is ready (MS4 and MS5).
	Bundles *Bundles
}

// ScreenCode is the code the device's screen shows now.
func (d *Device) ScreenCode() (string, error) {
	id, err := uuid.Parse(d.Client.ID.BoxID)
	if err != nil {
		return "", err
	}
	return boxkeys.ScreenCode(d.Client.ID.Secret, id, d.Client.now())
}

// Heartbeat reports the device's state once.
func (d *Device) Heartbeat(ctx context.Context) error {
	power := d.PowerSource
	if power == "" {
		power = "mains"
	}
	lvl := d.BatteryLevel
	hb := health.Heartbeat{FirmwareVersion: d.FirmwareVersion, PowerSource: power, BatteryLevel: &lvl}
	at := d.Client.now()
	hb.At = &at
	return d.Client.Call(ctx, http.StatusOK, http.MethodPost, "/box/v1/heartbeat", hb, nil)
}

// Run keeps the device online until ctx ends: a heartbeat every
// heartbeatEvery, and commands as they come.
func (d *Device) Run(ctx context.Context, heartbeatEvery time.Duration) error {
	go func() {
		t := time.NewTicker(heartbeatEvery)
		defer t.Stop()
		for {
			if err := d.Heartbeat(ctx); err != nil && ctx.Err() == nil {
				d.Log.Warn("heartbeat failed", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	for ctx.Err() == nil {
		if err := d.PollOnce(ctx, 25); err != nil && ctx.Err() == nil {
			d.Log.Warn("command poll failed; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
			}
		}
	}
	return nil
}

// PollOnce waits up to wait seconds for commands and carries them out.
func (d *Device) PollOnce(ctx context.Context, wait int) error {
	var l commands.List
	if err := d.Client.Call(ctx, http.StatusOK, http.MethodGet, fmt.Sprintf("/box/v1/commands?wait=%d", wait), nil, &l); err != nil {
		return err
	}
	for _, c := range l.Commands {
		result, detail := d.carryOut(ctx, c)
		if err := d.Client.Call(ctx, http.StatusNoContent, http.MethodPost, "/box/v1/commands/"+c.ID.String()+"/ack",
			commands.AckInput{Result: result, Detail: detail}, nil); err != nil {
			return err
		}
	}
	return nil
}

func (d *Device) carryOut(ctx context.Context, c commands.Command) (commands.Result, string) {
	switch c.Kind {
	case commands.OpenBin:
		var p commands.OpenBinPayload
		if err := json.Unmarshal(c.Payload, &p); err != nil || p.Bin < 1 {
			return commands.Failed, "bad payload"
		}
		if err := d.Open(ctx, p.Bin, p.AccessID, true); err != nil {
			return commands.Failed, err.Error()
		}
		return commands.Done, ""
	case commands.BundleReady:
		if d.Bundles == nil {
			return commands.Done, "no offline mode"
		}
		if _, err := d.Bundles.Fetch(ctx); err != nil {
			return commands.Failed, err.Error()
		}
		return commands.Done, ""
	default:
		// Firmware is fetched by its own loop.
		return commands.Done, "noted"
	}
}

// Open opens a bin. When take is set the person takes the key out; the
// device then reports the bin opened, the key taken and what the closed
// bin holds, as an MS5 does.
func (d *Device) Open(ctx context.Context, bin int, accessID *uuid.UUID, take bool) error {
	if d.Opened != nil {
		select {
		case d.Opened <- bin:
		default:
		}
	}
	now := d.Client.now()
	evs := []exchange.Event{{Type: "bin_opened", Bin: bin, At: &now}}
	if take && d.Bins[bin] != "" {
		evs = append(evs, exchange.Event{Type: "key_taken", Bin: bin, AccessID: accessID, At: &now})
		d.Bins[bin] = ""
	}
	fob := d.Bins[bin]
	var held *string
	if fob != "" {
		held = &fob
	}
	evs = append(evs, exchange.Event{Type: "bin_closed", Bin: bin, FobSerial: held, At: &now})
	return d.Client.Call(ctx, http.StatusOK, http.MethodPost, "/box/v1/events", exchange.EventsInput{Events: evs}, nil)
}

// Return puts a key back into bin and reports the closed bin.
func (d *Device) Return(ctx context.Context, bin int, fob string) error {
	d.Bins[bin] = fob
	now := d.Client.now()
	return d.Client.Call(ctx, http.StatusOK, http.MethodPost, "/box/v1/events", exchange.EventsInput{Events: []exchange.Event{
		{Type: "bin_opened", Bin: bin, At: &now}, {Type: "bin_closed", Bin: bin, FobSerial: &fob, At: &now}}}, nil)
}
