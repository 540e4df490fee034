// Package box is the reference box: what an MS5 does, in Go, for the tests,
// the demo and the integrators who want to see the whole flow. This file is
// its connection to the platform: provisioning and signed requests.
package box

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/boxkeys"
	"github.com/keyrelay/keyrelay/firmware/devices"
	"github.com/keyrelay/keyrelay/tenants/exchange"
)

// Identity is what a box keeps in its secure storage after provisioning.
type Identity struct {
	TenantID      string             `json:"tenant_id"`
	BoxID         string             `json:"box_id"`
	CredentialID  string             `json:"credential_id"`
	PrivateKey    ed25519.PrivateKey `json:"private_key"`
	Secret        []byte             `json:"box_secret"`
	RootPublicKey ed25519.PublicKey  `json:"root_public_key"`
	Model         string             `json:"model"`
	Timezone      string             `json:"timezone"`
	// BaseURL is the platform the box was provisioned against.
	BaseURL string `json:"base_url"`
}

// Client talks to /box/v1 as one box.
type Client struct {
	BaseURL string
	HTTP    *http.Client
	ID      Identity
	// Clock is the box's clock (tests move it); nil is time.Now.
	Clock func() time.Time
	// offset learns the server's time from its answers (NewClient,
	// Provision); nil: the box's clock is taken as the server's.
	offset *serverOffset
}

// NewClient is a client for a provisioned box that keeps to the server's
// time where it must (ScreenCode).
func NewClient(baseURL string, httpc *http.Client, id Identity) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), HTTP: httpc, ID: id, offset: &serverOffset{}}
}

// serverOffset is how far the server's clock is ahead of the box's, as
// the last answer's Date header said. Date has whole seconds, so the
// estimate is within about a second plus half the round trip: enough for
// 30-second screen codes, which is what it is for. The box's own clock
// still signs requests (the server allows MaxSkew) and dates the events it
// reports (recorded as the box's, never trusted).
type serverOffset struct {
	mu    sync.Mutex
	d     time.Duration
	known bool
}

func (o *serverOffset) learn(date string, sent, received time.Time) {
	t, err := http.ParseTime(date)
	if err != nil {
		return
	}
	// Date is truncated to the second: the server's clock read somewhere
	// in [t, t+1s), while the box's was between sent and received.
	d := t.Add(500 * time.Millisecond).Sub(sent.Add(received.Sub(sent) / 2))
	o.mu.Lock()
	o.d, o.known = d, true
	o.mu.Unlock()
}

// ServerNow is the box's best idea of the server's time: its own clock,
// moved by what the last answer said (its own clock alone before any).
func (c *Client) ServerNow() time.Time {
	now := c.now()
	if c.offset == nil {
		return now
	}
	c.offset.mu.Lock()
	defer c.offset.mu.Unlock()
	if !c.offset.known {
		return now
	}
	return now.Add(c.offset.d)
}

// Provision generates the box's key pair and exchanges the installer's
// token for the credential, the box secret and the pinned root key.
func Provision(ctx context.Context, baseURL, token string, httpc *http.Client) (*Client, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	if httpc == nil {
		httpc = &http.Client{Timeout: 30 * time.Second}
	}
	body, _ := json.Marshal(devices.ProvisionInput{Token: token, PublicKey: base64.StdEncoding.EncodeToString(pub)})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(baseURL, "/")+"/box/v1/provision", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := httpc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("box: provision: %w", err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if res.StatusCode != http.StatusCreated {
		return nil, &StatusError{Status: res.StatusCode, Body: raw}
	}
	var p devices.Provisioned
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("box: provision: %w", err)
	}
	secret, err := base64.StdEncoding.DecodeString(p.BoxSecret)
	if err != nil || len(secret) != devices.SecretSize {
		return nil, fmt.Errorf("box: provision: bad box secret")
	}
	root, err := base64.StdEncoding.DecodeString(p.RootPublicKey)
	if err != nil || len(root) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("box: provision: bad root key")
	}
	return NewClient(baseURL, httpc, Identity{
		TenantID: p.TenantID.String(), BoxID: p.BoxID.String(), CredentialID: p.CredentialID, PrivateKey: priv,
		Secret: secret, RootPublicKey: root, Model: p.Model, Timezone: p.Timezone, BaseURL: strings.TrimRight(baseURL, "/"),
	}), nil
}

// StatusError is an answer other than the one expected.
type StatusError struct {
	Status int
	Body   []byte
}

func (e *StatusError) Error() string { return fmt.Sprintf("box: status %d: %s", e.Status, e.Body) }

func (c *Client) now() time.Time {
	if c.Clock != nil {
		return c.Clock()
	}
	return time.Now()
}

// Request is one signed call; the raw answer is returned whatever its
// status, so callers (and tests) see refusals as they are.
func (c *Client) Request(ctx context.Context, method, path string, body any) (int, []byte, error) {
	var raw []byte
	if body != nil {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return 0, nil, err
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, bytes.NewReader(raw))
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	sent := c.now()
	for k, v := range devices.Sign(c.ID.PrivateKey, c.ID.CredentialID, method, path, raw, sent) {
		req.Header.Set(k, v)
	}
	res, err := c.HTTP.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	if c.offset != nil {
		c.offset.learn(res.Header.Get("Date"), sent, c.now())
	}
	out, err := io.ReadAll(io.LimitReader(res.Body, 32<<20))
	return res.StatusCode, out, err
}

// Call is Request for an expected status, decoding the answer into out.
func (c *Client) Call(ctx context.Context, want int, method, path string, body, out any) error {
	status, raw, err := c.Request(ctx, method, path, body)
	if err != nil {
		return err
	}
	if status != want {
		return &StatusError{Status: status, Body: raw}
	}
	if out != nil && len(raw) > 0 {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// ScreenCode is the code the box's screen shows now (booking-page pickups),
// at the server's time as far as the box knows it: the server checks it
// against its own clock, and a box whose clock drifted a minute would
// otherwise show codes nobody can use.
func (c *Client) ScreenCode() (string, error) {
	id, err := uuid.Parse(c.ID.BoxID)
	if err != nil {
		return "", err
	}
	return boxkeys.ScreenCode(c.ID.Secret, id, c.ServerNow())
}

// ReportPickup reports a bin opened on the server's word and the key
// taken from it, for a pickup made outside a running Device (the one-off
// command line).
func (c *Client) ReportPickup(ctx context.Context, bin int, accessID *uuid.UUID) error {
	now := c.now()
	return c.Call(ctx, http.StatusOK, http.MethodPost, "/box/v1/events", exchange.EventsInput{Events: []exchange.Event{
		{Type: "bin_opened", Bin: bin, At: &now}, {Type: "key_taken", Bin: bin, AccessID: accessID, At: &now}, {Type: "bin_closed", Bin: bin, At: &now}}}, nil)
}

// ReportDropoff reports a key put into a bin, the same way.
func (c *Client) ReportDropoff(ctx context.Context, bin int, fob string) error {
	now := c.now()
	return c.Call(ctx, http.StatusOK, http.MethodPost, "/box/v1/events", exchange.EventsInput{Events: []exchange.Event{
		{Type: "bin_opened", Bin: bin, At: &now}, {Type: "bin_closed", Bin: bin, FobSerial: &fob, At: &now}}}, nil)
}
