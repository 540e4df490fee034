package main

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
)

func TestSignup(t *testing.T) {
	s := startServer(t)
	c := s.client()
	valid := func() map[string]any {
		return map[string]any{"company": "Acme Cars", "name": "Ann", "email": "ann-" + uuid.NewString()[:8] + "@example.com", "phone": "+14155550100", "password": "correct-horse-42"}
	}
	t.Run("OK", func(t *testing.T) {
		m := c.expect(t, 201, "POST", "/api/v1/signup", valid()).JSON(t)
		if _, err := uuid.Parse(m["tenant_id"].(string)); err != nil {
			t.Fatalf("tenant_id: %v", err)
		}
	})
	t.Run("ErrWeakPassword", func(t *testing.T) {
		for pw, rule := range map[string]string{"short1": "at least 8", "onlyletters": "one number", "password1": "commonly used"} {
			in := valid()
			in["password"] = pw
			p := problemOf(t, c.do(t, "POST", "/api/v1/signup", in), 422)
			if !strings.Contains(p["detail"].(string), rule) {
				t.Errorf("%q: detail %q does not name the rule %q", pw, p["detail"], rule)
			}
			errs := p["errors"].([]any)
			if errs[0].(map[string]any)["field"] != "password" {
				t.Errorf("%q: errors = %v", pw, errs)
			}
		}
	})
	t.Run("ErrFieldsListed", func(t *testing.T) {
		p := problemOf(t, c.do(t, "POST", "/api/v1/signup", map[string]any{"company": "", "name": "", "email": "nope", "phone": "555", "password": "correct-horse-42"}), 422)
		if n := len(p["errors"].([]any)); n != 4 {
			t.Fatalf("%d field errors, want 4: %v", n, p["errors"])
		}
	})
	t.Run("ErrUnknownField", func(t *testing.T) {
		in := valid()
		in["role"] = "admin"
		p := problemOf(t, c.do(t, "POST", "/api/v1/signup", in), 400)
		if !strings.Contains(p["detail"].(string), "role") {
			t.Fatalf("detail %q does not name the field", p["detail"])
		}
	})
	t.Run("ErrMalformedJSON", func(t *testing.T) {
		problemOf(t, c.do(t, "POST", "/api/v1/signup", `{"company": `), 400)
		problemOf(t, c.do(t, "POST", "/api/v1/signup", `{} {}`), 400)
	})
	t.Run("ErrNotJSON", func(t *testing.T) {
		problemOf(t, c.do(t, "POST", "/api/v1/signup", `company=x`, "Content-Type", "application/x-www-form-urlencoded"), 400)
	})
	t.Run("ErrBodyTooLarge", func(t *testing.T) {
		// A raw request: the server answers 413 from the Content-Length
		// alone and drops the connection, which would cut an HTTP client
		// off while it is still sending.
		conn, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /api/v1/signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", 2<<20)
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != 413 {
			t.Fatalf("status %d, want 413", res.StatusCode)
		}
	})
	t.Run("NothingHalfWritten", func(t *testing.T) {
		in := valid()
		in["password"] = "short1"
		c.do(t, "POST", "/api/v1/signup", in)
		if n := ownerExec(t, "SELECT 1 FROM users WHERE email = $1", in["email"]); n != 0 {
			t.Fatal("a refused signup left a user behind")
		}
	})
}

func TestLoginLogout(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	t.Run("ErrWrongPassword", func(t *testing.T) {
		p := problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": "wrong-horse-42"}), 401)
		unknown := problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login", map[string]any{"email": "nobody-" + uuid.NewString() + "@example.com", "password": "wrong-horse-42"}), 401)
		if p["detail"] != unknown["detail"] {
			t.Fatalf("wrong password and unknown email answer differently: %v / %v", p["detail"], unknown["detail"])
		}
	})
	t.Run("OKEmailCaseInsensitive", func(t *testing.T) {
		s.login(t, strings.ToUpper(f.Email), f.Password)
	})
	t.Run("NewTokenEveryLogin", func(t *testing.T) {
		a, b := s.login(t, f.Email, f.Password), s.login(t, f.Email, f.Password)
		if a.token == b.token {
			t.Fatal("two logins got the same token")
		}
	})
	t.Run("OKCookie", func(t *testing.T) {
		c := s.client()
		r := s.signIn(t, c, f.Email, f.Password)
		sc := r.Header.Get("Set-Cookie")
		for _, attr := range []string{"keyrelay_session=krs_", "HttpOnly", "SameSite=Lax", "path=/"} {
			if !strings.Contains(sc, attr) {
				t.Errorf("Set-Cookie %q lacks %q", sc, attr)
			}
		}
		if strings.Contains(sc, "Secure") {
			t.Errorf("Secure cookie over plain HTTP base URL: %q", sc)
		}
		c.expect(t, 200, "GET", "/api/v1/me", nil) // the jar sends the cookie
		c.expect(t, 204, "POST", "/api/v1/auth/logout", nil)
		c.expect(t, 401, "GET", "/api/v1/me", nil)
	})
	t.Run("LogoutEndsOnlyThatSession", func(t *testing.T) {
		a, b := s.login(t, f.Email, f.Password), s.login(t, f.Email, f.Password)
		a.expect(t, 204, "POST", "/api/v1/auth/logout", nil)
		problemOf(t, a.do(t, "GET", "/api/v1/me", nil), 401)
		b.expect(t, 200, "GET", "/api/v1/me", nil)
	})
	t.Run("ErrNoCredential", func(t *testing.T) {
		problemOf(t, s.client().do(t, "GET", "/api/v1/me", nil), 401)
	})
	t.Run("ErrForgedTenantInToken", func(t *testing.T) {
		other := s.signup(t)
		raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(f.Owner.token, "krs_"))
		if err != nil {
			t.Fatal(err)
		}
		// The same secret under the other tenant's id: the lookup runs in
		// the other tenant, where this hash does not exist.
		copy(raw[:16], other.ID[:])
		c := s.client()
		c.token = "krs_" + base64.RawURLEncoding.EncodeToString(raw)
		problemOf(t, c.do(t, "GET", "/api/v1/me", nil), 401)
	})
}

func TestSessionLimits(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	t.Run("ErrIdle", func(t *testing.T) {
		c := s.login(t, f.Email, f.Password)
		c.expect(t, 200, "GET", "/api/v1/me", nil)
		ownerExec(t, "UPDATE sessions SET last_seen_at = now() - interval '31 minutes' WHERE token_hash = sha256($1::bytea)", c.token)
		problemOf(t, c.do(t, "GET", "/api/v1/me", nil), 401)
	})
	t.Run("OKActiveWithinIdle", func(t *testing.T) {
		c := s.login(t, f.Email, f.Password)
		ownerExec(t, "UPDATE sessions SET last_seen_at = now() - interval '29 minutes' WHERE token_hash = sha256($1::bytea)", c.token)
		c.expect(t, 200, "GET", "/api/v1/me", nil)
		// That request moved last_seen_at: another 29 minutes later it still works.
		ownerExec(t, "UPDATE sessions SET last_seen_at = last_seen_at - interval '2 minutes' WHERE token_hash = sha256($1::bytea)", c.token)
		c.expect(t, 200, "GET", "/api/v1/me", nil)
	})
	t.Run("ErrExpired", func(t *testing.T) {
		c := s.login(t, f.Email, f.Password)
		n := ownerExec(t, "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE token_hash = sha256($1::bytea)", c.token)
		if n != 1 {
			t.Fatalf("session row not found by hash (%d)", n)
		}
		problemOf(t, c.do(t, "GET", "/api/v1/me", nil), 401)
	})
	t.Run("AtMost12Hours", func(t *testing.T) {
		c := s.login(t, f.Email, f.Password)
		n := ownerExec(t, "SELECT 1 FROM sessions WHERE token_hash = sha256($1::bytea) AND expires_at <= created_at + interval '12 hours'", c.token)
		if n != 1 {
			t.Fatal("session lives longer than 12 hours")
		}
	})
	t.Run("TokenStoredHashed", func(t *testing.T) {
		c := s.login(t, f.Email, f.Password)
		if n := ownerExec(t, "SELECT 1 FROM sessions WHERE encode(token_hash, 'escape') LIKE '%' || $1 || '%'", c.token[4:20]); n != 0 {
			t.Fatal("token stored in clear")
		}
	})
}

func TestChangePassword(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	other := s.login(t, f.Email, f.Password)
	t.Run("ErrWrongCurrent", func(t *testing.T) {
		problemOf(t, f.Owner.do(t, "PUT", "/api/v1/me/password", map[string]any{"current_password": "nope-nope-1", "new_password": "brand-new-pass-7"}), 403)
	})
	t.Run("ErrWeakNew", func(t *testing.T) {
		problemOf(t, f.Owner.do(t, "PUT", "/api/v1/me/password", map[string]any{"current_password": f.Password, "new_password": "qwerty123"}), 422)
	})
	t.Run("OK", func(t *testing.T) {
		f.Owner.expect(t, 204, "PUT", "/api/v1/me/password", map[string]any{"current_password": f.Password, "new_password": "brand-new-pass-7"})
		f.Owner.expect(t, 200, "GET", "/api/v1/me", nil) // this session goes on
		problemOf(t, other.do(t, "GET", "/api/v1/me", nil), 401)
		problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": f.Password}), 401)
		s.login(t, f.Email, "brand-new-pass-7")
		var notified bool
		for _, row := range s.outboxOf(t, f.ID) {
			notified = notified || row.Kind == "password_changed" && row.Recipient == f.Email
		}
		if !notified {
			t.Fatal("no password-changed email in the outbox")
		}
	})
}

func TestPasswordReset(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	anon := s.client()
	t.Run("SameAnswerForUnknownEmail", func(t *testing.T) {
		before := len(s.outboxOf(t, f.ID))
		r := anon.expect(t, 202, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": "nobody-" + uuid.NewString() + "@example.com"})
		known := anon.expect(t, 202, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": f.Email})
		if string(r.Body) != string(known.Body) {
			t.Fatalf("answers differ: %q vs %q", r.Body, known.Body)
		}
		if got := len(s.outboxOf(t, f.ID)); got != before+1 {
			t.Fatalf("outbox grew by %d, want 1", got-before)
		}
	})
	t.Run("LinkFromBaseURLNotHost", func(t *testing.T) {
		anon.expect(t, 202, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": f.Email}, "Host", "evil.example", "X-Forwarded-Host", "evil.example")
		row := s.outboxOf(t, f.ID)[0]
		if !strings.HasPrefix(row.Data["link"], s.app.cfg.BaseURL+"/reset-password?token=krr_") {
			t.Fatalf("link %q not built from the base URL", row.Data["link"])
		}
	})
	t.Run("OKOnceAndEndsSessions", func(t *testing.T) {
		session := s.login(t, f.Email, f.Password)
		anon.expect(t, 202, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": f.Email})
		tok := s.resetToken(t, f.ID, f.Email)
		r := anon.expect(t, 204, "POST", "/api/v1/auth/password/reset", map[string]any{"token": tok, "new_password": "after-reset-99"})
		if strings.Contains(r.Header.Get("Set-Cookie"), "keyrelay_session=krs_") {
			t.Fatal("reset signed the user in")
		}
		problemOf(t, session.do(t, "GET", "/api/v1/me", nil), 401)
		problemOf(t, anon.do(t, "POST", "/api/v1/auth/password/reset", map[string]any{"token": tok, "new_password": "second-use-99"}), 422)
		s.login(t, f.Email, "after-reset-99")
		f.Password = "after-reset-99"
	})
	t.Run("ErrExpired", func(t *testing.T) {
		anon.expect(t, 202, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": f.Email})
		tok := s.resetToken(t, f.ID, f.Email)
		ownerExec(t, "UPDATE password_resets SET expires_at = now() - interval '1 second' WHERE token_hash = sha256($1::bytea)", tok)
		problemOf(t, anon.do(t, "POST", "/api/v1/auth/password/reset", map[string]any{"token": tok, "new_password": "too-late-pass-1"}), 422)
		s.login(t, f.Email, f.Password)
	})
	t.Run("ExpiresIn30Minutes", func(t *testing.T) {
		anon.expect(t, 202, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": f.Email})
		tok := s.resetToken(t, f.ID, f.Email)
		if n := ownerExec(t, "SELECT 1 FROM password_resets WHERE token_hash = sha256($1::bytea) AND expires_at = created_at + interval '30 minutes'", tok); n != 1 {
			t.Fatal("reset token does not expire 30 minutes after it was made")
		}
	})
	t.Run("ErrWeakPasswordKeepsToken", func(t *testing.T) {
		anon.expect(t, 202, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": f.Email})
		tok := s.resetToken(t, f.ID, f.Email)
		problemOf(t, anon.do(t, "POST", "/api/v1/auth/password/reset", map[string]any{"token": tok, "new_password": "weak"}), 422)
		anon.expect(t, 204, "POST", "/api/v1/auth/password/reset", map[string]any{"token": tok, "new_password": "strong-enough-5"})
	})
	t.Run("ErrGarbageToken", func(t *testing.T) {
		problemOf(t, anon.do(t, "POST", "/api/v1/auth/password/reset", map[string]any{"token": "krr_nope", "new_password": "strong-enough-5"}), 422)
	})
}

func TestUsersAndRoles(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	invite := func(c *client, role string) (map[string]any, string) {
		email := role + "-" + uuid.NewString()[:8] + "@example.com"
		m := c.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "New " + role, "email": email, "role": role}).JSON(t)
		return m, email
	}
	join := func(email string) *client {
		tok := s.resetToken(t, f.ID, email)
		s.client().expect(t, 204, "POST", "/api/v1/auth/password/reset", map[string]any{"token": tok, "new_password": "invited-pass-8"})
		return s.login(t, email, "invited-pass-8")
	}
	_, adminEmail := invite(f.Owner, "admin")
	admin := join(adminEmail)
	staffUser, staffEmail := invite(admin, "staff")
	staff := join(staffEmail)
	_, visitorEmail := invite(admin, "visitor")
	visitor := join(visitorEmail)

	t.Run("OKList", func(t *testing.T) {
		m := admin.expect(t, 200, "GET", "/api/v1/users?limit=2", nil).JSON(t)
		if len(m["items"].([]any)) != 2 || m["next_cursor"] == nil {
			t.Fatalf("page = %v", m)
		}
		next := admin.expect(t, 200, "GET", "/api/v1/users?limit=2&cursor="+m["next_cursor"].(string), nil).JSON(t)
		if len(next["items"].([]any)) != 2 {
			t.Fatalf("second page = %v", next)
		}
	})
	t.Run("ErrStaffCannotManage", func(t *testing.T) {
		problemOf(t, staff.do(t, "GET", "/api/v1/users", nil), 403)
		problemOf(t, staff.do(t, "POST", "/api/v1/users", map[string]any{"name": "X", "email": "x@example.com", "role": "staff"}), 403)
		problemOf(t, visitor.do(t, "GET", "/api/v1/api-keys", nil), 403)
	})
	t.Run("OKReadSelf", func(t *testing.T) {
		staff.expect(t, 200, "GET", "/api/v1/users/"+staffUser["id"].(string), nil)
		problemOf(t, staff.do(t, "GET", "/api/v1/users/"+f.OwnerID.String(), nil), 403)
	})
	t.Run("ErrAdminCannotMakeOwner", func(t *testing.T) {
		problemOf(t, admin.do(t, "POST", "/api/v1/users", map[string]any{"name": "X", "email": "x2@example.com", "role": "owner"}), 403)
		problemOf(t, admin.do(t, "PATCH", "/api/v1/users/"+staffUser["id"].(string), map[string]any{"role": "owner"}), 403)
		problemOf(t, admin.do(t, "PATCH", "/api/v1/users/"+f.OwnerID.String(), map[string]any{"name": "Renamed"}), 403)
	})
	t.Run("ErrDuplicateEmail", func(t *testing.T) {
		problemOf(t, admin.do(t, "POST", "/api/v1/users", map[string]any{"name": "X", "email": staffEmail, "role": "staff"}), 409)
	})
	t.Run("ErrOwnRole", func(t *testing.T) {
		problemOf(t, f.Owner.do(t, "PATCH", "/api/v1/users/"+f.OwnerID.String(), map[string]any{"role": "admin"}), 403)
	})
	t.Run("OKDisableEndsSessions", func(t *testing.T) {
		admin.expect(t, 200, "PATCH", "/api/v1/users/"+staffUser["id"].(string), map[string]any{"disabled": true})
		problemOf(t, staff.do(t, "GET", "/api/v1/me", nil), 401)
		problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login", map[string]any{"email": staffEmail, "password": "invited-pass-8"}), 401)
		admin.expect(t, 200, "PATCH", "/api/v1/users/"+staffUser["id"].(string), map[string]any{"disabled": false})
		s.login(t, staffEmail, "invited-pass-8")
	})
	t.Run("ErrMassAssignment", func(t *testing.T) {
		problemOf(t, admin.do(t, "PATCH", "/api/v1/users/"+staffUser["id"].(string), map[string]any{"tenant_id": uuid.NewString()}), 400)
		problemOf(t, admin.do(t, "PATCH", "/api/v1/users/"+staffUser["id"].(string), map[string]any{"password_hash": "x"}), 400)
	})
	t.Run("ErrUnknownID", func(t *testing.T) {
		problemOf(t, admin.do(t, "GET", "/api/v1/users/"+uuid.NewString(), nil), 404)
		problemOf(t, admin.do(t, "GET", "/api/v1/users/not-a-uuid", nil), 404)
	})
}

func TestAPIKeys(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	r := f.Owner.expect(t, 201, "POST", "/api/v1/api-keys", map[string]any{"name": "rental system", "role": "staff"}).JSON(t)
	key := r["key"].(string)
	id := r["id"].(string)
	integration := s.client()
	integration.token = key
	t.Run("OKAuthenticates", func(t *testing.T) {
		problemOf(t, integration.do(t, "GET", "/api/v1/me", nil), 403)    // a key is not a user
		problemOf(t, integration.do(t, "GET", "/api/v1/users", nil), 403) // staff role
	})
	t.Run("ShownOnce", func(t *testing.T) {
		list := f.Owner.expect(t, 200, "GET", "/api/v1/api-keys", nil)
		if strings.Contains(string(list.Body), key) || strings.Contains(string(list.Body), "token_hash") {
			t.Fatal("the list reveals the key")
		}
		if n := ownerExec(t, "SELECT 1 FROM api_keys WHERE token_hash = sha256($1::bytea)", key); n != 1 {
			t.Fatal("key not stored as its hash")
		}
	})
	t.Run("AdminKey", func(t *testing.T) {
		r := f.Owner.expect(t, 201, "POST", "/api/v1/api-keys", map[string]any{"name": "admin key", "role": "admin"}).JSON(t)
		c := s.client()
		c.token = r["key"].(string)
		c.expect(t, 200, "GET", "/api/v1/users", nil)
		problemOf(t, c.do(t, "POST", "/api/v1/api-keys", map[string]any{"name": "child", "role": "staff"}), 403)
	})
	t.Run("ErrOwnerRoleKey", func(t *testing.T) {
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/api-keys", map[string]any{"name": "x", "role": "owner"}), 422)
	})
	t.Run("Revoke", func(t *testing.T) {
		f.Owner.expect(t, 204, "DELETE", "/api/v1/api-keys/"+id, nil)
		problemOf(t, integration.do(t, "GET", "/api/v1/users", nil), 401)
		f.Owner.expect(t, 204, "DELETE", "/api/v1/api-keys/"+id, nil)
		problemOf(t, f.Owner.do(t, "DELETE", "/api/v1/api-keys/"+uuid.NewString(), nil), 404)
	})
}

// TestTenantsIsolatedOverHTTP runs two tenants side by side through the
// real HTTP stack: neither ever sees the other's data, and the other's ids
// answer 404.
func TestTenantsIsolatedOverHTTP(t *testing.T) {
	s := startServer(t)
	a, b := s.signup(t), s.signup(t)
	ak := a.Owner.expect(t, 201, "POST", "/api/v1/api-keys", map[string]any{"name": "a", "role": "staff"}).JSON(t)["id"].(string)
	bk := b.Owner.expect(t, 201, "POST", "/api/v1/api-keys", map[string]any{"name": "b", "role": "staff"}).JSON(t)["id"].(string)

	var wg sync.WaitGroup
	errs := make(chan error, 100)
	work := func(me, other tenantFixture, otherKey string) {
		defer wg.Done()
		for i := 0; i < 10; i++ {
			email := fmt.Sprintf("u%d-%s@example.com", i, uuid.NewString()[:6])
			r := me.Owner.do(t, "POST", "/api/v1/users", map[string]any{"name": "u", "email": email, "role": "staff"})
			if r.Status != 201 {
				errs <- fmt.Errorf("create: %d %s", r.Status, r.Body)
				return
			}
			list := me.Owner.do(t, "GET", "/api/v1/users?limit=200", nil)
			if strings.Contains(string(list.Body), other.Email) || strings.Contains(string(list.Body), other.OwnerID.String()) {
				errs <- fmt.Errorf("tenant %s saw tenant %s's users", me.ID, other.ID)
			}
			for _, path := range []string{"/api/v1/users/" + other.OwnerID.String()} {
				if r := me.Owner.do(t, "GET", path, nil); r.Status != 404 {
					errs <- fmt.Errorf("GET %s across tenants: %d", path, r.Status)
				}
			}
			if r := me.Owner.do(t, "PATCH", "/api/v1/users/"+other.OwnerID.String(), map[string]any{"name": "pwned"}); r.Status != 404 {
				errs <- fmt.Errorf("PATCH across tenants: %d", r.Status)
			}
			if r := me.Owner.do(t, "DELETE", "/api/v1/api-keys/"+otherKey, nil); r.Status != 404 {
				errs <- fmt.Errorf("DELETE api key across tenants: %d", r.Status)
			}
		}
	}
	wg.Add(2)
	go work(a, b, bk)
	go work(b, a, ak)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := ownerExec(t, "SELECT 1 FROM users WHERE name = 'pwned'"); n != 0 {
		t.Fatal("a cross-tenant PATCH changed a row")
	}
	if n := ownerExec(t, "SELECT 1 FROM api_keys WHERE revoked_at IS NOT NULL AND id IN ($1, $2)", ak, bk); n != 0 {
		t.Fatal("a cross-tenant DELETE revoked a key")
	}
}

// TestSameEmailInTwoTenants: a person can be a user of two businesses; the
// password picks the account, and tenant_id picks it when asked.
func TestSameEmailInTwoTenants(t *testing.T) {
	s := startServer(t)
	email := "shared-" + uuid.NewString()[:8] + "@example.com"
	ids := map[string]string{}
	for _, pw := range []string{"first-tenant-11", "second-tenant-22"} {
		m := s.client().expect(t, 201, "POST", "/api/v1/signup", map[string]any{"company": "Co " + pw, "name": "Sam", "email": email, "phone": "+14155550100", "password": pw}).JSON(t)
		ids[pw] = m["tenant_id"].(string)
	}
	for pw, tenant := range ids {
		c := s.login(t, email, pw)
		if got := c.expect(t, 200, "GET", "/api/v1/me", nil).JSON(t)["id"]; got == nil {
			t.Fatal("no user")
		}
		if tok, _ := TenantOfTokenForTest(c.token); tok != tenant {
			t.Errorf("password %q signed in to tenant %s, want %s", pw, tok, tenant)
		}
	}
	problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login", map[string]any{"email": email, "password": "first-tenant-11", "tenant_id": ids["second-tenant-22"]}), 401)
}

func TestSecureCookieOverTLS(t *testing.T) {
	s := startServer(t, func(c *Config) { c.BaseURL = "https://keys.example.com" })
	f := s.signup(t)
	r := s.signIn(t, s.client(), f.Email, f.Password)
	if !strings.Contains(r.Header.Get("Set-Cookie"), "secure") && !strings.Contains(r.Header.Get("Set-Cookie"), "Secure") {
		t.Fatalf("cookie not Secure behind an https base URL: %q", r.Header.Get("Set-Cookie"))
	}
}

// Staff users can be limited to locations; admins and owners cannot, and
// an unknown location is refused without writing the user.
func TestUserLocations(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	other := s.signup(t)
	loc := uuid.New()
	foreign := uuid.New()
	ownerExec(t, `INSERT INTO locations (tenant_id, id, name) VALUES ($1, $2, 'Airport'), ($3, $4, 'Airport')`, f.ID, loc, other.ID, foreign)

	staff := f.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Sam", "email": "sam@example.com", "role": "staff", "location_ids": []string{loc.String()}}).JSON(t)
	if ids := staff["location_ids"].([]any); len(ids) != 1 || ids[0] != loc.String() {
		t.Fatalf("location_ids = %v, want [%s]", ids, loc)
	}
	staffID := staff["id"].(string)
	got := f.Owner.expect(t, 200, "GET", "/api/v1/users/"+staffID, nil).JSON(t)
	if ids := got["location_ids"].([]any); len(ids) != 1 || ids[0] != loc.String() {
		t.Fatalf("read back location_ids = %v", ids)
	}

	t.Run("ErrOtherTenantsLocation", func(t *testing.T) {
		p := problemOf(t, f.Owner.do(t, "POST", "/api/v1/users", map[string]any{"name": "Tom", "email": "tom@example.com", "role": "staff", "location_ids": []string{foreign.String()}}), 422)
		if fe := p["errors"].([]any)[0].(map[string]any); fe["field"] != "location_ids" {
			t.Errorf("errors = %v", p["errors"])
		}
		// Nothing half-written: the address is still free.
		f.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Tom", "email": "tom@example.com", "role": "staff"})
	})
	t.Run("ErrAdminLimited", func(t *testing.T) {
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/users", map[string]any{"name": "Ada", "email": "ada@example.com", "role": "admin", "location_ids": []string{loc.String()}}), 422)
	})
	t.Run("PatchLiftsLimit", func(t *testing.T) {
		m := f.Owner.expect(t, 200, "PATCH", "/api/v1/users/"+staffID, map[string]any{"location_ids": []string{}}).JSON(t)
		if ids := m["location_ids"].([]any); len(ids) != 0 {
			t.Fatalf("location_ids = %v after lifting the limit", ids)
		}
		f.Owner.expect(t, 200, "PATCH", "/api/v1/users/"+staffID, map[string]any{"location_ids": []string{loc.String()}})
		// Promoting to admin drops the limit rather than leaving a stale one.
		m = f.Owner.expect(t, 200, "PATCH", "/api/v1/users/"+staffID, map[string]any{"role": "admin"}).JSON(t)
		if ids := m["location_ids"].([]any); len(ids) != 0 {
			t.Fatalf("an admin kept location_ids %v", ids)
		}
	})
}
