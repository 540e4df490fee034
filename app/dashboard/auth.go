package dashboard

import (
	"net/url"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/keyrelay/keyrelay/tenants/accounts"
)

// nextPage keeps a post-login redirect on this site.
func nextPage(s string) string {
	if !strings.HasPrefix(s, "/") || strings.HasPrefix(s, "//") || strings.HasPrefix(s, "/\\") {
		return "/bookings"
	}
	return s
}

func (d *Dashboard) loginPage(c *fiber.Ctx) error {
	return d.render(c, "login", "Sign in", map[string]any{"Next": nextPage(c.Query("next")), "Email": c.Query("email")})
}

func (d *Dashboard) setSession(c *fiber.Ctx, tok string, sess accounts.Session) {
	c.Cookie(&fiber.Cookie{Name: accounts.CookieName, Value: tok, Path: "/", Expires: sess.ExpiresAt, HTTPOnly: true, Secure: d.Secure, SameSite: fiber.CookieSameSiteLaxMode})
}

func (d *Dashboard) login(c *fiber.Ctx) error {
	next := nextPage(c.FormValue("next"))
	email := c.FormValue("email")
	res, err := d.Accounts.Login(c.UserContext(), accounts.LoginInput{Email: email, Password: c.FormValue("password"), UserAgent: c.Get(fiber.HeaderUserAgent)})
	if err != nil {
		return d.fail(c, err, "login", "Sign in", map[string]any{"Next": next, "Email": email})
	}
	if res.ChallengeID != "" {
		return d.render(c, "verify", "Enter your code", map[string]any{"Next": next, "Challenge": res.ChallengeID, "Channel": res.Channel})
	}
	d.setSession(c, res.Token, res.Session)
	return c.Redirect(next, fiber.StatusSeeOther)
}

func (d *Dashboard) verify(c *fiber.Ctx) error {
	next := nextPage(c.FormValue("next"))
	in := accounts.VerifyInput{ChallengeID: c.FormValue("challenge"), UserAgent: c.Get(fiber.HeaderUserAgent)}
	code := strings.ReplaceAll(strings.TrimSpace(c.FormValue("code")), " ", "")
	if c.FormValue("use_recovery") != "" {
		in.RecoveryCode = code
	} else {
		in.Code = code
	}
	tok, sess, err := d.Accounts.VerifyLogin(c.UserContext(), in)
	if err != nil {
		return d.fail(c, err, "verify", "Enter your code", map[string]any{"Next": next, "Challenge": in.ChallengeID, "Channel": c.FormValue("channel")})
	}
	d.setSession(c, tok, sess)
	return c.Redirect(next, fiber.StatusSeeOther)
}

func (d *Dashboard) signupPage(c *fiber.Ctx) error {
	return d.render(c, "signup", "Sign up your business", map[string]any{})
}

func (d *Dashboard) signup(c *fiber.Ctx) error {
	in := accounts.SignupInput{Company: c.FormValue("company"), Name: c.FormValue("name"), Email: c.FormValue("email"), Phone: c.FormValue("phone"), Password: c.FormValue("password")}
	if _, _, err := d.Accounts.Signup(c.UserContext(), in); err != nil {
		in.Password = ""
		return d.fail(c, err, "signup", "Sign up your business", map[string]any{"In": in})
	}
	return done(c, "/login?email="+url.QueryEscape(in.Email), "Your account is ready: sign in")
}

func (d *Dashboard) forgotPage(c *fiber.Ctx) error {
	return d.render(c, "forgot", "Forgot your password?", map[string]any{"Email": c.Query("email")})
}

func (d *Dashboard) forgot(c *fiber.Ctx) error {
	if err := d.Accounts.ForgotPassword(c.UserContext(), c.FormValue("email")); err != nil {
		return d.fail(c, err, "forgot", "Forgot your password?", map[string]any{"Email": c.FormValue("email")})
	}
	// The same answer whether the address is known or not.
	return d.render(c, "forgot", "Forgot your password?", map[string]any{"Sent": true})
}

func (d *Dashboard) resetPage(c *fiber.Ctx) error {
	return d.render(c, "reset", "Choose a new password", map[string]any{"Token": c.Query("token")})
}

func (d *Dashboard) reset(c *fiber.Ctx) error {
	tok := c.FormValue("token")
	if err := d.Accounts.ResetPassword(c.UserContext(), tok, c.FormValue("new_password")); err != nil {
		return d.fail(c, err, "reset", "Choose a new password", map[string]any{"Token": tok})
	}
	return done(c, "/login", "Your password is changed: sign in with it")
}

func (d *Dashboard) logout(c *fiber.Ctx) error {
	if err := d.Accounts.Logout(c.UserContext()); err != nil {
		return d.fail(c, err, "", "", nil)
	}
	c.Cookie(&fiber.Cookie{Name: accounts.CookieName, Value: "", Path: "/", MaxAge: -1, Expires: time.Unix(0, 0), HTTPOnly: true, Secure: d.Secure, SameSite: fiber.CookieSameSiteLaxMode})
	return done(c, "/login", "You are signed out")
}
