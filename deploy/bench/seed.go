package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/box"
)

// api is a caller of the real HTTP API with a bearer credential.
type api struct {
	base  string
	http  *http.Client
	token string
}

func (e *env) client(token string) *api {
	return &api{base: e.baseURL, http: &http.Client{Timeout: 30 * time.Second}, token: token}
}

// call sends body as JSON and decodes the answer into out; any status but
// want is an error carrying the body.
func (a *api) call(ctx context.Context, want int, method, path string, body, out any) error {
	var rdr io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rdr = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rdr)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	res, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode != want {
		return fmt.Errorf("%s %s: status %d, want %d: %s", method, path, res.StatusCode, want, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return nil
}

// tenant is a tenant signed up through the API, its owner signed in, with
// a staff API key for the integration calls that are measured.
type tenant struct {
	ID       uuid.UUID
	owner    *api
	apiKey   string
	apiKeyID uuid.UUID
}

// signup creates a tenant the way a business does, reading the sign-in
// code from the outbox as the delivery worker would hand it on.
func (e *env) signup(ctx context.Context, n int) (tenant, error) {
	anon := e.client("")
	email := fmt.Sprintf("owner%d-%s@bench.example.com", n, uuid.NewString()[:8])
	const password = "bench-horse-42-staple"
	var su struct {
		TenantID uuid.UUID `json:"tenant_id"`
	}
	if err := anon.call(ctx, 201, "POST", "/api/v1/signup", map[string]any{"company": fmt.Sprintf("Bench Rentals %d", n),
		"name": "Bench Owner", "email": email, "phone": "+14155550100", "password": password}, &su); err != nil {
		return tenant{}, err
	}
	t := tenant{ID: su.TenantID}
	var login struct {
		ChallengeID string `json:"challenge_id"`
		Token       string `json:"token"`
	}
	if err := anon.call(ctx, 202, "POST", "/api/v1/auth/login", map[string]any{"email": email, "password": password}, &login); err != nil {
		return tenant{}, err
	}
	code, err := e.loginCode(ctx, t.ID)
	if err != nil {
		return tenant{}, err
	}
	if err := anon.call(ctx, 200, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": login.ChallengeID, "code": code}, &login); err != nil {
		return tenant{}, err
	}
	t.owner = e.client(login.Token)
	var key struct {
		ID  uuid.UUID `json:"id"`
		Key string    `json:"key"`
	}
	if err := t.owner.call(ctx, 201, "POST", "/api/v1/api-keys", map[string]any{"name": "bench integration", "role": "staff"}, &key); err != nil {
		return tenant{}, err
	}
	t.apiKey, t.apiKeyID = key.Key, key.ID
	return t, nil
}

// loginCode opens the newest login code in the tenant's outbox with the
// server's key (the bench chose it).
func (e *env) loginCode(ctx context.Context, tenantID uuid.UUID) (string, error) {
	var id uuid.UUID
	var payload []byte
	err := e.owner.QueryRow(ctx, `SELECT id, payload FROM outbox WHERE tenant_id = $1 AND kind = 'login_code' ORDER BY created_at DESC LIMIT 1`, tenantID).Scan(&id, &payload)
	if err != nil {
		return "", fmt.Errorf("login code: %w", err)
	}
	plain, err := e.box.Open(payload, []byte("outbox:"+tenantID.String()+":"+id.String()))
	if err != nil {
		return "", fmt.Errorf("login code: %w", err)
	}
	var data map[string]string
	if err := json.Unmarshal(plain, &data); err != nil {
		return "", err
	}
	return data["code"], nil
}

// site is a box of a tenant with keys in its bins, made through the API.
type site struct {
	boxID uuid.UUID
	keys  []uuid.UUID // keys[i] is in bin i+1
	box   *box.Client // set once provisioned
}

func (e *env) newSite(ctx context.Context, t tenant, name string, keys int) (site, error) {
	var b struct {
		ID uuid.UUID `json:"id"`
	}
	if err := t.owner.call(ctx, 201, "POST", "/api/v1/boxes", map[string]any{"name": name, "model": "MS5", "timezone": "Europe/Paris", "bins": max(keys, 1)}, &b); err != nil {
		return site{}, err
	}
	s := site{boxID: b.ID}
	for i := range keys {
		var k struct {
			ID uuid.UUID `json:"id"`
		}
		if err := t.owner.call(ctx, 201, "POST", "/api/v1/keys", map[string]any{"name": fmt.Sprintf("%s key %d", name, i+1),
			"fob_serial": "FOB-" + uuid.NewString()[:12], "box_id": b.ID, "bin": i + 1}, &k); err != nil {
			return site{}, err
		}
		s.keys = append(s.keys, k.ID)
	}
	return s, nil
}

// provision issues a token as the owner and provisions a reference box
// with it: the box generates its key pair, the server keeps the public key.
func (e *env) provision(ctx context.Context, t tenant, s *site) error {
	var tok struct {
		Token string `json:"token"`
	}
	if err := t.owner.call(ctx, 201, "POST", "/api/v1/boxes/"+s.boxID.String()+"/provisioning-token", nil, &tok); err != nil {
		return err
	}
	b, err := box.Provision(ctx, e.baseURL, tok.Token, nil)
	if err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	s.box = b
	return nil
}

// booking is the part of a created booking the bench uses.
type booking struct {
	ID   uuid.UUID `json:"id"`
	Code string    `json:"code"`
}

// book creates a one-time booking through the API as the integration does.
func (e *env) book(ctx context.Context, t tenant, keyID uuid.UUID, start, end time.Time) (booking, error) {
	var b booking
	err := e.client(t.apiKey).call(ctx, 201, "POST", "/api/v1/bookings", bookingBody(keyID, start, end), &b)
	return b, err
}

func bookingBody(keyID uuid.UUID, start, end time.Time) map[string]any {
	return map[string]any{"key_id": keyID, "kind": "one_time",
		"visitor":   map[string]any{"name": "Vic Visitor", "phone": "+14155550199", "email": "vic@example.com"},
		"starts_at": start.UTC().Format(time.RFC3339), "ends_at": end.UTC().Format(time.RFC3339), "notify_via": "sms"}
}
