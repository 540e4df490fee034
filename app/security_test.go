package main

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/keyrelay/keyrelay/migrations/dbtest"
	"github.com/keyrelay/keyrelay/tenants/accounts"
)

// challenge runs the password step and returns the challenge.
func (s *server) challenge(t testing.TB, c *client, email, password string) (string, string) {
	t.Helper()
	r := c.expect(t, 202, "POST", "/api/v1/auth/login", map[string]any{"email": email, "password": password})
	m := r.JSON(t)
	return m["challenge_id"].(string), m["channel"].(string)
}

func TestLoginWithSMSCode(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	c := s.client()
	ch, channel := s.challenge(t, c, f.Email, f.Password)
	if channel != "sms" {
		t.Fatalf("channel %q, want sms", channel)
	}
	code := s.lastCode(t, ch)
	t.Run("CodeSentBySMSToOwner", func(t *testing.T) {
		row := s.outboxOf(t, f.ID)[0]
		if row.Kind != "login_code" || row.Channel != "sms" || row.Recipient != "+14155550100" || row.Priority != "critical" {
			t.Fatalf("outbox row = %+v", row)
		}
		if n := ownerExec(t, "SELECT 1 FROM login_challenges WHERE position(convert_to($1, 'UTF8') in code_hash) > 0", code); n != 0 {
			t.Fatal("code stored in clear")
		}
	})
	t.Run("ErrWrongCode", func(t *testing.T) {
		problemOf(t, c.do(t, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": wrong(code)}), 401)
	})
	t.Run("OK", func(t *testing.T) {
		r := c.expect(t, 200, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": code})
		c.token = r.JSON(t)["token"].(string)
		c.expect(t, 200, "GET", "/api/v1/me", nil)
	})
	t.Run("ErrSingleUse", func(t *testing.T) {
		problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": code}), 401)
	})
	t.Run("ErrExpired", func(t *testing.T) {
		ch, _ := s.challenge(t, s.client(), f.Email, f.Password)
		ownerExec(t, "UPDATE login_challenges SET expires_at = now() - interval '1 second' WHERE token_hash = sha256($1::bytea)", ch)
		problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": s.lastCode(t, ch)}), 401)
	})
	t.Run("ExpiresIn10Minutes", func(t *testing.T) {
		ch, _ := s.challenge(t, s.client(), f.Email, f.Password)
		if n := ownerExec(t, "SELECT 1 FROM login_challenges WHERE token_hash = sha256($1::bytea) AND expires_at = created_at + interval '10 minutes'", ch); n != 1 {
			t.Fatal("code does not expire after 10 minutes")
		}
	})
	t.Run("FiveTriesAndResendKeepsCount", func(t *testing.T) {
		c := s.client()
		ch, _ := s.challenge(t, c, f.Email, f.Password)
		first := s.lastCode(t, ch)
		for i := 0; i < 4; i++ {
			problemOf(t, c.do(t, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": wrong(first)}), 401)
			// Past 3 failures the phone's own counter delays each try; let
			// the delay pass, so this test sees the per-code limit.
			s.expireLocksIfAny(t)
		}
		c.expect(t, 202, "POST", "/api/v1/auth/login/resend", map[string]any{"challenge_id": ch})
		second := s.lastCode(t, ch)
		problemOf(t, c.do(t, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": wrong(second)}), 401)
		s.expireLocksIfAny(t)
		r := c.do(t, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": second})
		problemOf(t, r, 429)
		if r.Header.Get("Retry-After") == "" {
			t.Fatal("429 without Retry-After")
		}
	})
	t.Run("PhoneDelaysAfterThreeFailures", func(t *testing.T) {
		g := s.signup(t)
		c := s.client()
		ch, _ := s.challenge(t, c, g.Email, g.Password)
		code := s.lastCode(t, ch)
		for i := 0; i < 4; i++ {
			problemOf(t, c.do(t, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": wrong(code)}), 401)
		}
		r := c.do(t, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": code})
		problemOf(t, r, 429) // even the right code waits out the delay
		if r.Header.Get("Retry-After") != "30" {
			t.Fatalf("Retry-After %q, want 30", r.Header.Get("Retry-After"))
		}
	})
	t.Run("AuditTrail", func(t *testing.T) {
		list := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=login.succeeded", nil).JSON(t)
		items := list["items"].([]any)
		if len(items) == 0 {
			t.Fatal("no login.succeeded entry")
		}
		e := items[0].(map[string]any)
		if e["client_ip"] != "127.0.0.1" || e["actor"] != "user:"+f.OwnerID.String() {
			t.Fatalf("entry = %v", e)
		}
		failed := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=login.failed", nil).JSON(t)["items"].([]any)
		if len(failed) == 0 {
			t.Fatal("failed second factors are not audited")
		}
		body := string(f.Owner.expect(t, 200, "GET", "/api/v1/audit?limit=200", nil).Body)
		if strings.Contains(body, code) || strings.Contains(body, f.Password) {
			t.Fatal("a secret is in the audit log")
		}
		problemOf(t, f.Owner.do(t, "GET", "/api/v1/audit?since=yesterday", nil), 422)
		future := f.Owner.expect(t, 200, "GET", "/api/v1/audit?since="+time.Now().Add(time.Hour).UTC().Format(time.RFC3339), nil).JSON(t)
		if len(future["items"].([]any)) != 0 {
			t.Fatal("since does not filter")
		}
	})
}

// wrong returns a six-digit code that is not code.
func wrong(code string) string {
	if code == "000000" {
		return "000001"
	}
	return "000000"
}

func TestLoginWithAuthenticatorApp(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	problemOf(t, f.Owner.do(t, "POST", "/api/v1/me/totp", map[string]any{"current_password": "not-my-password-1"}), 403)
	e := f.Owner.expect(t, 201, "POST", "/api/v1/me/totp", map[string]any{"current_password": f.Password}).JSON(t)
	secret := e["secret"].(string)
	if !strings.HasPrefix(e["otpauth_url"].(string), "otpauth://totp/keyrelay:") || len(e["qr_png_base64"].(string)) < 100 {
		t.Fatalf("enrolment = %v", e)
	}
	problemOf(t, f.Owner.do(t, "POST", "/api/v1/me/totp/confirm", map[string]any{"code": "000000"}), 422)
	now, _ := totp.GenerateCode(secret, time.Now())
	codes := f.Owner.expect(t, 200, "POST", "/api/v1/me/totp/confirm", map[string]any{"code": now}).JSON(t)["recovery_codes"].([]any)
	if len(codes) != 10 {
		t.Fatalf("%d recovery codes, want 10", len(codes))
	}
	t.Run("OKTOTP", func(t *testing.T) {
		c := s.client()
		ch, channel := s.challenge(t, c, f.Email, f.Password)
		if channel != "totp" {
			t.Fatalf("channel %q, want totp", channel)
		}
		// The confirmation used this 30-second step's code; a code is good
		// once, so sign in with the next step's (within the allowed skew).
		code, _ := totp.GenerateCode(secret, time.Now().Add(30*time.Second))
		c.expect(t, 200, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": code})
		t.Run("ErrReplayed", func(t *testing.T) {
			ch, _ := s.challenge(t, s.client(), f.Email, f.Password)
			problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": code}), 401)
		})
	})
	t.Run("OKRecoveryCodeOnce", func(t *testing.T) {
		rc := codes[0].(string)
		ch, _ := s.challenge(t, s.client(), f.Email, f.Password)
		s.client().expect(t, 200, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "recovery_code": strings.ToUpper(rc)})
		ch, _ = s.challenge(t, s.client(), f.Email, f.Password)
		problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "recovery_code": rc}), 401)
	})
	t.Run("ErrBothOrNeither", func(t *testing.T) {
		ch, _ := s.challenge(t, s.client(), f.Email, f.Password)
		problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch}), 422)
	})
	t.Run("BackToSMS", func(t *testing.T) {
		f.Owner.expect(t, 204, "DELETE", "/api/v1/me/totp", map[string]any{"current_password": f.Password})
		_, channel := s.challenge(t, s.client(), f.Email, f.Password)
		if channel != "sms" {
			t.Fatalf("channel %q after removing the app", channel)
		}
	})
}

func TestMySecurity(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	sec := f.Owner.expect(t, 200, "GET", "/api/v1/me/security", nil).JSON(t)
	if sec["login_2fa"] != true || sec["method"] != "sms" || !strings.Contains(sec["sms_notice"].(string), "SIM swap") {
		t.Fatalf("security = %v", sec)
	}
	t.Run("ErrNeedsPassword", func(t *testing.T) {
		problemOf(t, f.Owner.do(t, "PUT", "/api/v1/me/security", map[string]any{"login_2fa": false, "current_password": "wrong-pass-123"}), 403)
		problemOf(t, f.Owner.do(t, "PUT", "/api/v1/me/security", map[string]any{"phone": "+14155550199"}), 403)
	})
	t.Run("OffThenPasswordChangeAsksAgain", func(t *testing.T) {
		f.Owner.expect(t, 200, "PUT", "/api/v1/me/security", map[string]any{"login_2fa": false, "current_password": f.Password})
		s.client().expect(t, 200, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": f.Password})
		f.Owner.expect(t, 204, "PUT", "/api/v1/me/password", map[string]any{"current_password": f.Password, "new_password": "changed-pass-456"})
		f.Password = "changed-pass-456"
		s.challenge(t, s.client(), f.Email, f.Password) // 202 despite 2FA off
		s.login(t, f.Email, f.Password)                 // completes it
		s.client().expect(t, 200, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": f.Password})
	})
	t.Run("PhoneChangeNotified", func(t *testing.T) {
		f.Owner.expect(t, 200, "PUT", "/api/v1/me/security", map[string]any{"phone": "+14155550199", "current_password": f.Password})
		var notified bool
		for _, row := range s.outboxOf(t, f.ID) {
			notified = notified || row.Kind == "security_changed" && strings.Contains(row.Data["change"], "phone changed")
		}
		if !notified {
			t.Fatal("no email about the phone change")
		}
		entries := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=user.security_changed", nil).JSON(t)["items"].([]any)
		if len(entries) < 2 {
			t.Fatalf("%d security entries, want the 2FA and phone changes", len(entries))
		}
	})
}

func TestPolicyAndPIN(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	pol := f.Owner.expect(t, 200, "GET", "/api/v1/security", nil).JSON(t)
	if pol["owner_pickups_2fa"] != true || pol["visitor_pickups"] != "sms" {
		t.Fatalf("defaults = %v", pol)
	}
	problemOf(t, f.Owner.do(t, "PUT", "/api/v1/me/pin", map[string]any{"pin": "8265"}), 409)
	t.Run("Exchange2FAOffWarnsAndAudits", func(t *testing.T) {
		r := f.Owner.expect(t, 200, "PUT", "/api/v1/security", map[string]any{"owner_pickups_2fa": false}).JSON(t)
		if w := r["warnings"].([]any); len(w) != 1 || !strings.Contains(w[0].(string), "anyone who knows the phone number") {
			t.Fatalf("warnings = %v", r["warnings"])
		}
		entries := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=security.exchange_2fa_disabled", nil).JSON(t)["items"].([]any)
		if len(entries) != 1 || entries[0].(map[string]any)["actor"] != "user:"+f.OwnerID.String() {
			t.Fatalf("audit = %v", entries)
		}
	})
	t.Run("ErrBadPolicy", func(t *testing.T) {
		problemOf(t, f.Owner.do(t, "PUT", "/api/v1/security", map[string]any{"visitor_pickups": "carrier-pigeon"}), 422)
	})
	t.Run("ErrStaff", func(t *testing.T) {
		k := f.Owner.expect(t, 201, "POST", "/api/v1/api-keys", map[string]any{"name": "s", "role": "staff"}).JSON(t)["key"].(string)
		c := s.client()
		c.token = k
		problemOf(t, c.do(t, "GET", "/api/v1/security", nil), 403)
		problemOf(t, c.do(t, "GET", "/api/v1/audit", nil), 403)
	})
	f.Owner.expect(t, 200, "PUT", "/api/v1/security", map[string]any{"visitor_pickups": "pin"})
	t.Run("PINRules", func(t *testing.T) {
		for _, pin := range []string{"1234", "0000", "7777", "1212", "2580", "1984", "6789", "9876", "123", "12345", "12a4"} {
			problemOf(t, f.Owner.do(t, "PUT", "/api/v1/me/pin", map[string]any{"pin": pin}), 422)
		}
		f.Owner.expect(t, 204, "PUT", "/api/v1/me/pin", map[string]any{"pin": "8265"})
		if n := ownerExec(t, "SELECT 1 FROM users WHERE id = $1 AND pin_hash IS NOT NULL AND position('8265'::bytea in pin_hash) = 0", f.OwnerID); n != 1 {
			t.Fatal("PIN not stored as a keyed hash")
		}
	})
}

// TestLoginLockout: three free failures, then growing delays; the lockout
// ends on its own; parallel guesses never get more tries than allowed.
func TestLoginLockout(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	bad := map[string]any{"email": f.Email, "password": "wrong-horse-99"}
	for i := 0; i < 3; i++ {
		problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login", bad), 401)
	}
	problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login", bad), 401) // the 4th runs, and earns 30 s
	r := s.client().do(t, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": f.Password})
	problemOf(t, r, 429)
	if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 25 || ra > 30 {
		t.Fatalf("Retry-After %q, want about 30", r.Header.Get("Retry-After"))
	}
	t.Run("ExpiresOnItsOwn", func(t *testing.T) {
		s.expireLocks(t)
		s.login(t, f.Email, f.Password)
	})
	t.Run("ParallelGuessesBounded", func(t *testing.T) {
		g := s.signup(t)
		var wg sync.WaitGroup
		var mu sync.Mutex
		statuses := map[int]int{}
		for i := 0; i < 30; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := s.client().do(t, "POST", "/api/v1/auth/login", map[string]any{"email": g.Email, "password": "wrong-horse-99"})
				mu.Lock()
				statuses[r.Status]++
				mu.Unlock()
			}()
		}
		wg.Wait()
		// 3 free failures and the one attempt that holds the lockout.
		if statuses[401] > 4 || statuses[401]+statuses[429] != 30 {
			t.Fatalf("statuses = %v: more guesses were checked than allowed", statuses)
		}
	})
}

// expireLocks ends every lockout of this server's guard, as time would.
func (s *server) expireLocks(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	iter := s.app.redis.Scan(ctx, 0, s.app.cfg.LimitPrefix+"*", 1000).Iterator()
	n := 0
	for iter.Next(ctx) {
		if strings.Contains(iter.Val(), "lock") {
			s.app.redis.PExpire(ctx, iter.Val(), time.Millisecond)
			n++
		}
	}
	if iter.Err() != nil || n == 0 {
		t.Fatalf("no lock found to expire (%v)", iter.Err())
	}
	time.Sleep(5 * time.Millisecond)
}

// expireLocksIfAny is expireLocks for when there may be none yet.
func (s *server) expireLocksIfAny(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	iter := s.app.redis.Scan(ctx, 0, s.app.cfg.LimitPrefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		if strings.Contains(iter.Val(), "lock") {
			s.app.redis.PExpire(ctx, iter.Val(), time.Millisecond)
		}
	}
	time.Sleep(5 * time.Millisecond)
}

// TestVerificationFailsClosed: with Redis gone, sign-in and codes answer
// 503, while reads that need no counter keep working.
func TestVerificationFailsClosed(t *testing.T) {
	p := dbtest.NewProxy(t, "127.0.0.1:6379")
	s := startServer(t, func(c *Config) { c.RedisURL = "redis://" + p.Addr() + "/" + strconv.Itoa(testRedisDB) })
	f := s.signup(t)
	c := s.client()
	ch, _ := s.challenge(t, c, f.Email, f.Password)
	p.SetDown(true)
	problemOf(t, c.do(t, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": f.Password}), 503)
	problemOf(t, c.do(t, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": "123456"}), 503)
	f.Owner.expect(t, 200, "GET", "/api/v1/me", nil)
	f.Owner.expect(t, 200, "GET", "/api/v1/users", nil)
}

// TestPINDisabledAfterTenFailures drives the PIN check the box exchange
// uses: ten wrong PINs in a row disable it until its owner sets a new one.
func TestPINDisabledAfterTenFailures(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	f.Owner.expect(t, 200, "PUT", "/api/v1/security", map[string]any{"visitor_pickups": "pin"})
	f.Owner.expect(t, 204, "PUT", "/api/v1/me/pin", map[string]any{"pin": "8265"})
	check := func(pin string) error {
		var got error
		err := s.app.scope.Do(context.Background(), f.ID, func(ctx context.Context) error {
			got = s.app.accounts.VerifyPIN(ctx, f.OwnerID, pin)
			return nil // commit: a wrong PIN must stay counted
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if err := check("8265"); err != nil {
		t.Fatalf("right PIN: %v", err)
	}
	for i := 0; i < 9; i++ {
		if err := check("5555"); err != accounts.ErrWrongPIN {
			t.Fatalf("try %d: %v", i, err)
		}
	}
	if err := check("8265"); err != nil { // a right PIN resets the run
		t.Fatalf("right PIN after 9 failures: %v", err)
	}
	for i := 0; i < 10; i++ {
		check("5555")
	}
	if err := check("8265"); err != accounts.ErrPINDisabled {
		t.Fatalf("after 10 failures: %v, want disabled", err)
	}
	if sec := f.Owner.expect(t, 200, "GET", "/api/v1/me/security", nil).JSON(t); sec["pin_disabled"] != true {
		t.Fatalf("security = %v", sec)
	}
	f.Owner.expect(t, 204, "PUT", "/api/v1/me/pin", map[string]any{"pin": "3905"})
	if err := check("3905"); err != nil {
		t.Fatalf("new PIN: %v", err)
	}
}

// TestTwentyFailuresNeedTheResetFlow: after 20 consecutive failures an
// account opens only through a password reset.
func TestTwentyFailuresNeedTheResetFlow(t *testing.T) {
	// Behind a trusted proxy, so the guesser and the owner have addresses of
	// their own: the guesser's address is limited too, the owner's is not.
	s := startServer(t, func(c *Config) { c.TrustedProxies = []string{"127.0.0.1"} })
	f := s.signup(t)
	attacker := []string{"X-Forwarded-For", "203.0.113.9"}
	for i := 0; i < 20; i++ {
		problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": "wrong-horse-99"}, attacker...), 401)
		s.expireLocksIfAny(t)
	}
	owner := []string{"X-Forwarded-For", "198.51.100.7"}
	problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": f.Password}, owner...), 429)
	s.client().expect(t, 202, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": f.Email}, owner...)
	s.client().expect(t, 204, "POST", "/api/v1/auth/password/reset", map[string]any{"token": s.resetToken(t, f.ID, f.Email), "new_password": "after-lockout-77"}, owner...)
	c := s.client()
	ch := c.expect(t, 202, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": "after-lockout-77"}, owner...).JSON(t)["challenge_id"].(string)
	c.token = c.expect(t, 200, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": ch, "code": s.lastCode(t, ch)}, owner...).JSON(t)["token"].(string)
	// The guesser's address stays blocked for the day.
	problemOf(t, s.client().do(t, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": "after-lockout-77"}, attacker...), 429)
	entries := c.expect(t, 200, "GET", "/api/v1/audit?action=login.failed&limit=5", nil).JSON(t)["items"].([]any)
	if len(entries) == 0 || entries[0].(map[string]any)["client_ip"] != "203.0.113.9" {
		t.Fatalf("audit of failures = %v", entries)
	}
}

// TestSMSBudget: at most 3 codes per phone an hour.
func TestSMSBudget(t *testing.T) {
	// testConfig raises the budgets for other tests; this one uses the real ones.
	s := startServer(t, func(c *Config) { c.SMSPerPhoneHour, c.SMSPerPhoneDay = 3, 10 })
	f := s.signup(t) // signup's login sent the first code
	for i := 0; i < 2; i++ {
		s.challenge(t, s.client(), f.Email, f.Password)
	}
	r := s.client().do(t, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": f.Password})
	problemOf(t, r, 429)
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After")
	}
}
