package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/keyrelay/keyrelay/firmware/box"
	"github.com/keyrelay/keyrelay/firmware/devices"
)

// insertBox makes a box for tenant as its admin would, straight in the
// database: these tests are about the box's identity, not the box API.
func insertBox(t testing.TB, tenantID uuid.UUID, model string) uuid.UUID {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	ownerExec(t, `INSERT INTO boxes (tenant_id, id, name, model, timezone, bins) VALUES ($1, $2, $3, $4, 'Europe/Paris', 12)`, tenantID, id, "Box "+id.String()[:8], model)
	return id
}

// provisionBox issues a token as the tenant's owner and provisions a
// reference box with it.
func (s *server) provisionBox(t testing.TB, f tenantFixture, boxID uuid.UUID) *box.Client {
	t.Helper()
	tok := f.Owner.expect(t, 201, "POST", "/api/v1/boxes/"+boxID.String()+"/provisioning-token", nil).JSON(t)["token"].(string)
	b, err := box.Provision(context.Background(), s.url, tok, nil)
	if err != nil {
		t.Fatalf("provision: %v", err)
	}
	return b
}

func TestBoxProvisioning(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	boxID := insertBox(t, f.ID, "MS5")
	ctx := context.Background()

	// The installer's screen retried with its Idempotency-Key: the same
	// token, not a second one that voids the first.
	idem := uuid.NewString()
	tok := f.Owner.expect(t, 201, "POST", "/api/v1/boxes/"+boxID.String()+"/provisioning-token", nil, "Idempotency-Key", idem).JSON(t)
	if again := f.Owner.expect(t, 201, "POST", "/api/v1/boxes/"+boxID.String()+"/provisioning-token", nil, "Idempotency-Key", idem).JSON(t); again["token"] != tok["token"] {
		t.Fatal("a retried token request issued another token")
	}
	exp, _ := time.Parse(time.RFC3339, tok["expires_at"].(string))
	if d := time.Until(exp); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("token expires in %v, want 24h", d)
	}
	b, err := box.Provision(ctx, s.url, tok["token"].(string), nil)
	if err != nil {
		t.Fatal(err)
	}
	if b.ID.BoxID != boxID.String() || b.ID.Model != "MS5" || len(b.ID.Secret) != 32 {
		t.Fatalf("identity: %+v", b.ID)
	}
	if !bytes.Equal(b.ID.RootPublicKey, s.app.cfg.RootPublicKey) {
		t.Error("the box did not receive the platform's root key")
	}
	var me devices.Me
	if err := b.Call(ctx, 200, "GET", "/box/v1/me", nil, &me); err != nil {
		t.Fatal(err)
	}
	if me.BoxID != boxID || me.TenantID != f.ID {
		t.Errorf("me = %+v", me)
	}
	// The box secret is stored sealed, never as it was sent.
	conn, err := pgx.Connect(ctx, testDB.OwnerURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var stored []byte
	if err := conn.QueryRow(ctx, `SELECT secret_sealed FROM box_credentials WHERE box_id = $1`, boxID).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(stored, b.ID.Secret) || bytes.Contains(stored, []byte(base64.StdEncoding.EncodeToString(b.ID.Secret))) {
		t.Error("the box secret is stored in clear")
	}

	t.Run("ErrTokenUsedTwice", func(t *testing.T) {
		if _, err := box.Provision(ctx, s.url, tok["token"].(string), nil); !isStatus(err, 401) {
			t.Fatalf("second use: %v, want 401", err)
		}
	})
	t.Run("ErrTokenExpired", func(t *testing.T) {
		other := insertBox(t, f.ID, "MS4")
		tok := f.Owner.expect(t, 201, "POST", "/api/v1/boxes/"+other.String()+"/provisioning-token", nil).JSON(t)["token"].(string)
		ownerExec(t, `UPDATE box_provisioning_tokens SET expires_at = now() - interval '1 second' WHERE box_id = $1`, other)
		if _, err := box.Provision(ctx, s.url, tok, nil); !isStatus(err, 401) {
			t.Fatalf("expired token: %v, want 401", err)
		}
	})
	t.Run("ErrOlderTokenReplaced", func(t *testing.T) {
		other := insertBox(t, f.ID, "MS4")
		first := f.Owner.expect(t, 201, "POST", "/api/v1/boxes/"+other.String()+"/provisioning-token", nil).JSON(t)["token"].(string)
		f.Owner.expect(t, 201, "POST", "/api/v1/boxes/"+other.String()+"/provisioning-token", nil)
		if _, err := box.Provision(ctx, s.url, first, nil); !isStatus(err, 401) {
			t.Fatalf("replaced token: %v, want 401", err)
		}
	})
	t.Run("ErrGarbage", func(t *testing.T) {
		for _, tok := range []string{"", "krp_", "krp_" + base64.RawURLEncoding.EncodeToString(make([]byte, 48)), "kra_nope"} {
			if _, err := box.Provision(ctx, s.url, tok, nil); !isStatus(err, 401) {
				t.Errorf("token %q: %v, want 401", tok, err)
			}
		}
		problemOf(t, s.client().do(t, "POST", "/box/v1/provision", map[string]any{"token": tok["token"], "public_key": "c2hvcnQ="}), 422)
	})
	t.Run("ErrRoles", func(t *testing.T) {
		staffEmail := "staff-" + uuid.NewString()[:8] + "@example.com"
		f.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Sam", "email": staffEmail, "role": "staff"})
		ownerExec(t, `UPDATE users SET password_hash = (SELECT password_hash FROM users WHERE id = $1) WHERE email = $2`, f.OwnerID, staffEmail)
		staff := s.login(t, staffEmail, f.Password)
		problemOf(t, staff.do(t, "POST", "/api/v1/boxes/"+boxID.String()+"/provisioning-token", nil), 403)
		problemOf(t, staff.do(t, "DELETE", "/api/v1/boxes/"+boxID.String()+"/credential", nil), 403)
	})
	t.Run("ErrOtherTenantsBox", func(t *testing.T) {
		g := s.signup(t)
		problemOf(t, g.Owner.do(t, "POST", "/api/v1/boxes/"+boxID.String()+"/provisioning-token", nil), 404)
		problemOf(t, g.Owner.do(t, "DELETE", "/api/v1/boxes/"+boxID.String()+"/credential", nil), 404)
	})
}

func isStatus(err error, status int) bool {
	se, ok := err.(*box.StatusError)
	return ok && se.Status == status
}

func TestBoxSignedRequests(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	boxID := insertBox(t, f.ID, "MS5")
	b := s.provisionBox(t, f, boxID)
	ctx := context.Background()

	t.Run("ErrUnsigned", func(t *testing.T) {
		problemOf(t, s.client().do(t, "GET", "/box/v1/me", nil), 401)
	})
	t.Run("ErrWrongKey", func(t *testing.T) {
		other := s.provisionBox(t, f, insertBox(t, f.ID, "MS5"))
		forged := *b
		forged.ID.PrivateKey = other.ID.PrivateKey // right credential id, another box's key
		if status, _, _ := forged.Request(ctx, "GET", "/box/v1/me", nil); status != 401 {
			t.Fatalf("status %d, want 401", status)
		}
	})
	t.Run("ErrAlteredPath", func(t *testing.T) {
		// A signature made for one path does not carry over to another.
		h := devices.Sign(b.ID.PrivateKey, b.ID.CredentialID, "GET", "/box/v1/me?x=1", nil, time.Now())
		req, _ := http.NewRequest("GET", s.url+"/box/v1/me", nil)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 401 {
			t.Fatalf("status %d, want 401", res.StatusCode)
		}
	})
	t.Run("ErrClockSkew", func(t *testing.T) {
		skewed := *b
		skewed.Clock = func() time.Time { return time.Now().Add(-10 * time.Minute) }
		status, body, _ := skewed.Request(ctx, "GET", "/box/v1/me", nil)
		if status != 401 || !bytes.Contains(body, []byte("clock")) {
			t.Fatalf("status %d %s, want 401 naming the clock", status, body)
		}
	})
	t.Run("ErrOtherTenantsCredential", func(t *testing.T) {
		// Tenant g's credential id presented with tenant f's id: the lookup
		// runs in f's rows and finds nothing.
		g := s.signup(t)
		gb := s.provisionBox(t, g, insertBox(t, g.ID, "MS5"))
		_, credID, _ := devices.ParseCredentialID(gb.ID.CredentialID)
		mixed := *gb
		mixed.ID.CredentialID = devices.CredentialID(f.ID, credID)
		if status, _, _ := mixed.Request(ctx, "GET", "/box/v1/me", nil); status != 401 {
			t.Fatalf("status %d, want 401", status)
		}
	})
	t.Run("Revoked", func(t *testing.T) {
		f.Owner.expect(t, 204, "DELETE", "/api/v1/boxes/"+boxID.String()+"/credential", nil)
		if status, _, _ := b.Request(ctx, "GET", "/box/v1/me", nil); status != 401 {
			t.Fatalf("a revoked box got %d, want 401", status)
		}
		problemOf(t, f.Owner.do(t, "DELETE", "/api/v1/boxes/"+boxID.String()+"/credential", nil), 404)
		// A new token brings the box back with a new credential; the old
		// one stays dead.
		nb := s.provisionBox(t, f, boxID)
		if err := nb.Call(ctx, 200, "GET", "/box/v1/me", nil, nil); err != nil {
			t.Fatal(err)
		}
		if status, _, _ := b.Request(ctx, "GET", "/box/v1/me", nil); status != 401 {
			t.Fatalf("the old credential got %d after re-provisioning", status)
		}
		// Provisioning again replaces the live credential too.
		nb2 := s.provisionBox(t, f, boxID)
		if status, _, _ := nb.Request(ctx, "GET", "/box/v1/me", nil); status != 401 {
			t.Fatalf("a replaced credential got %d, want 401", status)
		}
		if err := nb2.Call(ctx, 200, "GET", "/box/v1/me", nil, nil); err != nil {
			t.Fatal(err)
		}
	})
}

// A captured mutating request cannot be sent again, while the box's own
// identical repeat (a new nonce) goes through.
func TestBoxReplayRefused(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	boxID := insertBox(t, f.ID, "MS5")
	b := s.provisionBox(t, f, boxID)
	rel := f.Owner.expect(t, 202, "POST", "/api/v1/boxes/"+boxID.String()+"/bins/1/release", nil).JSON(t)
	path := "/box/v1/commands/" + rel["command_id"].(string) + "/ack"
	body := []byte(`{"result":"done"}`)
	h := devices.Sign(b.ID.PrivateKey, b.ID.CredentialID, "POST", path, body, time.Now())
	send := func() int {
		req, _ := http.NewRequest("POST", s.url+path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range h {
			req.Header.Set(k, v)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if got := send(); got != 204 {
		t.Fatalf("first: %d", got)
	}
	if got := send(); got != 401 {
		t.Fatalf("replayed: %d, want 401", got)
	}
	if err := b.Call(context.Background(), 204, "POST", path, map[string]any{"result": "done"}, nil); err != nil {
		t.Fatalf("the box's own repeat: %v", err)
	}
}
