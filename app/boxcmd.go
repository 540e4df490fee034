package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/box"
	"github.com/keyrelay/keyrelay/tenants/exchange"
)

const boxUsage = `keyrelay box: the reference box (an MS5 simulator) on the command line.

  keyrelay box provision -url URL -token krp_…   exchange the installer's token for a credential
  keyrelay box run                                stay online: heartbeats, commands (remote opens)
  keyrelay box me                                 check the credential
  keyrelay box screen-code                        the code the screen shows now (booking-page pickups)
  keyrelay box pickup -code C | -phone +1…        a visitor at the keypad
  keyrelay box verify -challenge ID -code C | -pin P [-key KEY_ID]
  keyrelay box dropoff -fob SERIAL [-code C]      a key coming back (the reader sees its fob)

Every command takes -state DIR (default .keyrelay-box), where the identity is kept (0600).`

// runBox is `keyrelay box …`. It needs no server configuration: it talks to
// a keyrelay over HTTP, as a box in the field does.
func runBox(ctx context.Context, args []string, stdout, stderr io.Writer) error {
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
	every := fs.Duration("heartbeat", time.Minute, "heartbeat interval (run)")
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
	c := &box.Client{BaseURL: base, HTTP: &http.Client{Timeout: 40 * time.Second}, ID: id}
	dev := &box.Device{Client: c, FirmwareVersion: "5.2.0", Bins: map[int]string{}, Log: slog.New(slog.NewTextHandler(stderr, nil))}
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
		s, err := dev.ScreenCode()
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, s)
		return nil
	case "run":
		if id.Model != "MS3" { // MS3 boxes have no offline mode
			if dev.Bundles, err = box.OpenBundles(c, *state); err != nil {
				return err
			}
		}
		fmt.Fprintln(stderr, "box online; Ctrl-C to stop")
		return dev.Run(ctx, *every)
	case "pickup":
		r, err := call("/box/v1/pickups", exchange.PickupInput{Code: *code, Phone: *phone})
		if err != nil {
			return err
		}
		if r.Result == "open" {
			// The visitor takes the key; the box reports it.
			dev.Bins[*r.Bin] = "present"
			if err := dev.Open(ctx, *r.Bin, r.AccessID, true); err != nil {
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
			dev.Bins[*r.Bin] = "present"
			if err := dev.Open(ctx, *r.Bin, r.AccessID, true); err != nil {
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
			if err := dev.Return(ctx, *r.Bin, *fob); err != nil {
				return err
			}
		}
		return print(r)
	default:
		return fmt.Errorf("unknown box command %q\n\n%s", args[0], boxUsage)
	}
}
