package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/box"
	"github.com/keyrelay/keyrelay/tenants/exchange"
)

const boxUsage = `keyrelay box: the reference box (an MS5 simulator) on the command line.

  keyrelay box provision -url URL -token krp_…   exchange the installer's token for a credential
  keyrelay box run [-hold 2=FOB,3=FOB …]           run the box: see "box run" below
  keyrelay box me                                 check the credential
  keyrelay box screen-code                        the code the screen shows now (booking-page pickups)
  keyrelay box pickup -code C | -phone +1…        a visitor at the keypad (online only)
  keyrelay box verify -challenge ID -code C | -pin P [-key KEY_ID]
  keyrelay box dropoff -fob SERIAL [-code C]      a key coming back (the reader sees its fob)

Every command takes -state DIR (default .keyrelay-box), where the identity is kept (0600).

box run is the whole device until Ctrl-C: heartbeats (firmware, power, battery, sleep,
signal), remote commands, firmware updates (on mains), the offline bundle, and the keypad,
answered by the server or — MS4/MS5 — offline from the bundle, derived and backup codes,
journaled in the state directory and synced when the server answers again. Its flags:

  -hold 2=FOB-A,3=FOB-B   what the bins' readers see at start (default: what the state remembers)
  -bins 12                how many bins the box has
  -firmware 5.2.0 -security-version 1   the factory image (an installed update wins)
  -battery 100            battery level at start, percent
  -heartbeat 1m -retry 10s
  -cut-firmware-after N   drop the first firmware download after N bytes (watch it resume)

It reads one command a line on standard input and answers each with one JSON line on
standard output (logs go to standard error):

  pickup CODE                    a code at the keypad: booking, alias, derived or backup code
  phone +E164                    a phone number at the keypad
  verify CHALLENGE CODE|PIN [KEY_ID]   the second step of a phone pickup (4 digits: a PIN)
  dropoff FOB [CODE]             a key coming back; the reader sees FOB
  button                         a key press: wakes a sleeping box
  mains off | mains on           cut or restore mains power (on battery the box sleeps after
                                 2 minutes idle, heartbeats every 4 minutes while asleep)
  status                         power, firmware, bins, bundle and journal as the box knows them`

// runBox is `keyrelay box …`. It needs no server configuration: it talks to
// a keyrelay over HTTP, as a box in the field does.
func runBox(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runBoxWith(ctx, args, os.Stdin, stdout, stderr)
}

// runBoxWith is runBox reading box run's commands from stdin.
func runBoxWith(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stdout, boxUsage)
		return nil
	}
	fs := flag.NewFlagSet("box "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	state := fs.String("state", ".keyrelay-box", "state directory")
	url := fs.String("url", "http://localhost:8080", "keyrelay base URL (provision)")
	token := fs.String("token", "", "provisioning token (provision)")
	code := fs.String("code", "", "booking, alias or pickup code")
	phone := fs.String("phone", "", "phone number in E.164 form")
	pin := fs.String("pin", "", "4-digit PIN")
	challenge := fs.String("challenge", "", "challenge id from pickup")
	key := fs.String("key", "", "key id, when a pickup offers several")
	fob := fs.String("fob", "", "fob serial the reader sees")
	every := fs.Duration("heartbeat", time.Minute, "heartbeat interval while awake (run)")
	retry := fs.Duration("retry", 10*time.Second, "wait after a failed update, sync or poll (run)")
	bins := fs.Int("bins", 12, "bins the box has (run)")
	hold := fs.String("hold", "", "what the bins hold at start, as BIN=FOB,BIN=FOB (run)")
	firmware := fs.String("firmware", "5.2.0", "factory firmware version (run)")
	security := fs.Int("security-version", 1, "factory firmware security version (run)")
	battery := fs.Int("battery", 100, "battery level at start, percent (run)")
	cutFirmware := fs.Int64("cut-firmware-after", 0, "drop the first firmware download after this many bytes, to watch it resume (run)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	print := func(v any) error {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	if args[0] == "provision" {
		if *token == "" {
			return errors.New("box provision: -token is required")
		}
		c, err := box.Provision(ctx, *url, *token, nil)
		if err != nil {
			return err
		}
		if err := box.SaveIdentity(*state, c.ID); err != nil {
			return err
		}
		saved := c.ID
		return print(map[string]any{"box_id": saved.BoxID, "tenant_id": saved.TenantID, "model": saved.Model, "url": *url, "state": *state})
	}
	id, err := box.LoadIdentity(*state)
	if err != nil {
		return err
	}
	base := id.BaseURL
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "url" {
			base = *url
		}
	})
	c := box.NewClient(base, &http.Client{Timeout: 40 * time.Second}, id)
	call := func(path string, body any) (exchange.Result, error) {
		var r exchange.Result
		err := c.Call(ctx, http.StatusOK, http.MethodPost, path, body, &r)
		return r, err
	}
	switch args[0] {
	case "me":
		var me map[string]any
		if err := c.Call(ctx, http.StatusOK, http.MethodGet, "/box/v1/me", nil, &me); err != nil {
			return err
		}
		return print(me)
	case "screen-code":
		// One call first: the code follows the server's clock, which the
		// box learns from the answer (a box offline shows its own).
		c.Call(ctx, http.StatusOK, http.MethodGet, "/box/v1/me", nil, nil)
		s, err := c.ScreenCode()
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, s)
		return nil
	case "run":
		held, err := parseHold(*hold)
		if err != nil {
			return err
		}
		cfg := box.DefaultConfig()
		cfg.Bins, cfg.Hold, cfg.FirmwareVersion, cfg.SecurityVersion, cfg.BatteryLevel = *bins, held, *firmware, *security, *battery
		cfg.HeartbeatEvery, cfg.RetryEvery, cfg.FirmwareCutAfter = *every, *retry, *cutFirmware
		dev, err := box.New(c, *state, cfg, slog.New(slog.NewTextHandler(stderr, nil)))
		if err != nil {
			return err
		}
		defer dev.Close()
		return runDevice(ctx, dev, stdin, stdout, stderr)
	case "pickup":
		r, err := call("/box/v1/pickups", exchange.PickupInput{Code: *code, Phone: *phone})
		if err != nil {
			return err
		}
		if r.Result == "open" {
			// The visitor takes the key; the box reports it.
			if err := c.ReportPickup(ctx, *r.Bin, r.AccessID); err != nil {
				return err
			}
		}
		return print(r)
	case "verify":
		in := exchange.VerifyInput{Code: *code, PIN: *pin}
		if in.ChallengeID, err = uuid.Parse(*challenge); err != nil {
			return errors.New("box verify: -challenge must be the challenge_id of the pickup")
		}
		if *key != "" {
			k, err := uuid.Parse(*key)
			if err != nil {
				return errors.New("box verify: -key must be a key_id the pickup offered")
			}
			in.KeyID = &k
		}
		r, err := call("/box/v1/pickups/verify", in)
		if err != nil {
			return err
		}
		if r.Result == "open" {
			if err := c.ReportPickup(ctx, *r.Bin, r.AccessID); err != nil {
				return err
			}
		}
		return print(r)
	case "dropoff":
		if *fob == "" {
			return errors.New("box dropoff: -fob is required (the serial the box's reader sees)")
		}
		in := exchange.DropoffInput{Code: *code}
		if *code == "" {
			in.FobSerial = *fob
		}
		r, err := call("/box/v1/dropoffs", in)
		if err != nil {
			return err
		}
		if r.Result == "open" {
			if err := c.ReportDropoff(ctx, *r.Bin, *fob); err != nil {
				return err
			}
		}
		return print(r)
	default:
		return fmt.Errorf("unknown box command %q\n\n%s", args[0], boxUsage)
	}
}

// parseHold reads -hold: BIN=FOB pairs separated by commas.
func parseHold(s string) (map[int]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[int]string{}
	for _, pair := range strings.Split(s, ",") {
		b, f, ok := strings.Cut(strings.TrimSpace(pair), "=")
		n, err := strconv.Atoi(b)
		if !ok || err != nil || n < 1 || f == "" {
			return nil, fmt.Errorf("box run: -hold %q: want BIN=FOB pairs separated by commas", pair)
		}
		out[n] = f
	}
	return out, nil
}

// runDevice runs dev until ctx ends, carrying out the commands read from
// stdin one by one. The end of stdin stops the reading, not the box: a
// box run with its input closed (a service) keeps working.
func runDevice(ctx context.Context, dev *box.Device, stdin io.Reader, stdout, stderr io.Writer) error {
	fmt.Fprintln(stderr, "box running; type commands (pickup CODE, dropoff FOB, mains off, button, status…); Ctrl-C to stop")
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- dev.Run(ctx) }()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()
	enc := json.NewEncoder(stdout)
	for {
		select {
		case <-ctx.Done():
			return <-done
		case line, ok := <-lines:
			if !ok {
				lines = nil // stdin ended; the box runs on
				continue
			}
			if strings.TrimSpace(line) == "" {
				continue
			}
			out, err := deviceCommand(ctx, dev, line)
			if err != nil {
				out = map[string]string{"error": err.Error()}
			}
			if err := enc.Encode(out); err != nil {
				return err
			}
		}
	}
}

// deviceCommand carries out one line of box run's input.
func deviceCommand(ctx context.Context, dev *box.Device, line string) (any, error) {
	f := strings.Fields(line)
	arg := func(i int) string {
		if i < len(f) {
			return f[i]
		}
		return ""
	}
	switch f[0] {
	case "pickup":
		if len(f) != 2 {
			return nil, errors.New("usage: pickup CODE")
		}
		return dev.Pickup(ctx, f[1])
	case "phone":
		if len(f) != 2 {
			return nil, errors.New("usage: phone +E164")
		}
		return dev.PickupPhone(ctx, f[1])
	case "verify":
		if len(f) < 3 || len(f) > 4 {
			return nil, errors.New("usage: verify CHALLENGE CODE|PIN [KEY_ID]")
		}
		in := exchange.VerifyInput{Code: f[2]}
		var err error
		if in.ChallengeID, err = uuid.Parse(f[1]); err != nil {
			return nil, errors.New("verify: CHALLENGE must be the challenge_id of the pickup")
		}
		if len(f[2]) == 4 {
			in.Code, in.PIN = "", f[2]
		}
		if k := arg(3); k != "" {
			id, err := uuid.Parse(k)
			if err != nil {
				return nil, errors.New("verify: KEY_ID must be a key_id the pickup offered")
			}
			in.KeyID = &id
		}
		return dev.Verify(ctx, in)
	case "dropoff":
		if len(f) < 2 || len(f) > 3 {
			return nil, errors.New("usage: dropoff FOB [CODE]")
		}
		return dev.Dropoff(ctx, f[1], arg(2))
	case "button":
		return dev.Button()
	case "mains":
		switch arg(1) {
		case "off":
			return dev.SetMains(false), nil
		case "on":
			return dev.SetMains(true), nil
		}
		return nil, errors.New("usage: mains off | mains on")
	case "status":
		return dev.Status(), nil
	}
	return nil, fmt.Errorf("unknown command %q (pickup, phone, verify, dropoff, button, mains, status)", f[0])
}
