package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/box"
	"github.com/keyrelay/keyrelay/firmware/boxkeys"
)

// browser is a headless Chromium tab driving the real server.
type browser struct {
	t         *testing.T
	ctx       context.Context
	base      string
	artifacts string
}

// newBrowser starts Debian's chromium headless. Without chromium the test
// is skipped, except in CI, where .ci/run installs it and a missing
// browser is a failure.
func newBrowser(t *testing.T, base string) *browser {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed, and CI must run the browser tests (.ci/run installs it)")
		}
		t.Skip("chromium is not installed: install it (apt-get install -y chromium) to run the browser tests")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.WindowSize(1280, 1000))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	ctx, cancelTime := context.WithTimeout(ctx, 4*time.Minute)
	t.Cleanup(func() { cancelTime(); cancelTab(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	dir := os.Getenv("KEYRELAY_ARTIFACTS")
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "keyrelay-screenshots-"); err != nil {
			t.Fatal(err)
		}
	}
	dir = filepath.Join(dir, t.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", dir)
	return &browser{t: t, ctx: ctx, base: base, artifacts: dir}
}

func (b *browser) run(actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, actions...); err != nil {
		b.t.Fatalf("browser: %v", err)
	}
}

func (b *browser) visit(path string) {
	b.t.Helper()
	b.run(chromedp.Navigate(b.base+path), chromedp.WaitReady(chromedp.CSS("main")))
}

// submit clicks a button and waits for the page it leads to: the old
// page is marked first, so that a selector it also has does not match.
func (b *browser) submit(sel string, next string) {
	b.t.Helper()
	if _, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](`window.__leaving = true`)); err != nil {
		b.t.Fatal(err)
	}
	b.run(chromedp.Click(chromedp.CSS(sel)))
	deadline := time.Now().Add(15 * time.Second)
	for {
		gone, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](`window.__leaving !== true && document.readyState !== "loading"`))
		if err == nil && gone {
			break
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("clicking %s did not lead to a new page", sel)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.run(chromedp.WaitVisible(chromedp.CSS(next)))
}

func (b *browser) text(sel string) string {
	b.t.Helper()
	s, err := chromedp.Run(b.ctx, chromedp.Text(chromedp.CSS(sel), chromedp.NodeVisible))
	if err != nil {
		b.t.Fatalf("browser: text of %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

func (b *browser) wantText(sel, want string) {
	b.t.Helper()
	if got := b.text(sel); !strings.Contains(got, want) {
		b.t.Fatalf("%s says %q, want it to contain %q", sel, got, want)
	}
}

func (b *browser) shot(name string) {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("browser: screenshot: %v", err)
	}
	if err := os.WriteFile(filepath.Join(b.artifacts, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

var sixDigits = regexp.MustCompile(`\b\d{6}\b`)

// mailboxCode reads the newest sign-in code from the dev mailbox page in a
// tab of its own, as a newcomer would.
func (b *browser) mailboxCode(after int) string {
	b.t.Helper()
	tab, cancel := chromedp.NewContext(b.ctx)
	defer cancel()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		err := chromedp.Do(tab, chromedp.Navigate(b.base+"/dev/mailbox"), chromedp.WaitReady(chromedp.CSS("body")))
		var n int
		if err == nil {
			n, err = chromedp.Run(tab, chromedp.Evaluate[int](`document.querySelectorAll("article").length`))
		}
		if err == nil && n > after {
			var body string
			body, err = chromedp.Run(tab, chromedp.Text(chromedp.CSS("article pre")))
			if m := sixDigits.FindString(body); err == nil && strings.Contains(body, "sign-in code") && m != "" {
				return m
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	b.t.Fatal("no sign-in code reached the dev mailbox")
	return ""
}

func (b *browser) mailboxCount() int {
	b.t.Helper()
	tab, cancel := chromedp.NewContext(b.ctx)
	defer cancel()
	if err := chromedp.Do(tab, chromedp.Navigate(b.base+"/dev/mailbox"), chromedp.WaitReady(chromedp.CSS("body"))); err != nil {
		b.t.Fatal(err)
	}
	n, err := chromedp.Run(tab, chromedp.Evaluate[int](`document.querySelectorAll("article").length`))
	if err != nil {
		b.t.Fatal(err)
	}
	return n
}

// TestBrowserDashboard walks the help center's flows in Chromium: sign
// up, sign in with the SMS code from the dev mailbox, a box and a key, a
// booking (copied, edited, resent too early, opened from the visitor's
// page, revoked), and the security settings.
func TestBrowserDashboard(t *testing.T) {
	s := startServer(t, withWorkers)
	b := newBrowser(t, s.url)
	email := fmt.Sprintf("desk-%s@example.com", uuid.NewString()[:8])
	const password = "correct-horse-42"

	// Sign up.
	b.visit("/signup")
	b.shot("01-signup")
	b.run(chromedp.SendKeys(chromedp.CSS("#company"), "Harbour Rentals"), chromedp.SendKeys(chromedp.CSS("#name"), "Dana Desk"),
		chromedp.SendKeys(chromedp.CSS("#email"), email), chromedp.SendKeys(chromedp.CSS("#phone"), "+14155550123"),
		chromedp.SendKeys(chromedp.CSS("#password"), password))
	b.submit(`form[action="/signup"] button[type=submit]`, `form[action="/login"]`)
	b.wantText(".flash", "Your account is ready")

	// Sign in: the password, then the SMS code read in the dev mailbox.
	before := b.mailboxCount()
	b.run(chromedp.SendKeys(chromedp.CSS("#password"), password))
	b.submit(`form[action="/login"] button`, `#code`)
	b.shot("02-login-code")
	code := b.mailboxCode(before)
	b.run(chromedp.SendKeys(chromedp.CSS("#code"), "000000"))
	if code == "000000" {
		b.run(chromedp.SetValue(chromedp.CSS("#code"), "999999"))
	}
	b.submit(`form[action="/login/verify"] button`, `#form-error`)
	b.wantText("#form-error", "wrong code")
	b.run(chromedp.SetValue(chromedp.CSS("#code"), code))
	b.submit(`form[action="/login/verify"] button`, `nav.menu`)
	b.wantText("h1", "Bookings")
	b.wantText(".empty", "No bookings yet")
	b.shot("03-bookings-empty")

	// A box, provisioned by the reference box with the token the page shows.
	b.visit("/boxes")
	b.wantText(".empty", "No boxes yet")
	b.run(chromedp.SendKeys(chromedp.CSS("#name"), "Harbour front"), chromedp.SetValue(chromedp.CSS("#model"), "MS5"),
		chromedp.SendKeys(chromedp.CSS("#address"), "1 Quai du Port\n13002 Marseille"), chromedp.SendKeys(chromedp.CSS("#timezone"), "Europe/Paris"),
		chromedp.SendKeys(chromedp.CSS("#bins"), "4"))
	b.submit(`form[action="/boxes"] button`, `#prov-h`)
	b.wantText(".flash", "Box Harbour front added")
	b.wantText("dl.facts", "Not provisioned")
	b.submit(`form[action$="/provisioning-token"] button`, `#prov-token`)
	token := b.text("#prov-token")
	ref, err := box.Provision(context.Background(), s.url, token, nil)
	if err != nil {
		t.Fatalf("provision with the dashboard's token: %v", err)
	}
	boxID := uuid.MustParse(ref.ID.BoxID)
	online := func() {
		t.Helper()
		if err := ref.Call(context.Background(), 200, "GET", "/box/v1/me", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	online()
	b.visit("/boxes/" + boxID.String())
	b.shot("04-box")
	b.visit("/boxes")
	b.wantText("tbody", "Harbour front")
	b.shot("05-boxes")

	// A key in bin 1.
	b.visit("/keys")
	b.run(chromedp.SendKeys(chromedp.CSS("#name"), "Van 12"), chromedp.SendKeys(chromedp.CSS("#fob_serial"), "FOB-VAN-12"),
		chromedp.SendKeys(chromedp.CSS("#bin"), "1"))
	b.submit(`form[action="/keys"] button`, `.flash`)
	b.wantText("tbody", "Van 12")
	b.wantText("tbody", "In its bin")
	b.shot("06-keys")

	// A booking, in the box's time zone.
	paris, _ := time.LoadLocation("Europe/Paris")
	start := time.Now().In(paris).Add(-10 * time.Minute)
	end := time.Now().In(paris).Add(2 * time.Hour)
	b.visit("/bookings/new")
	b.run(chromedp.SendKeys(chromedp.CSS("#visitor_name"), "Vera Visitor"), chromedp.SendKeys(chromedp.CSS("#visitor_phone"), "+14155550199"),
		chromedp.SetValue(chromedp.CSS("#starts_at"), start.Format("2006-01-02T15:04")), chromedp.SetValue(chromedp.CSS("#ends_at"), end.Format("2006-01-02T15:04")))
	b.shot("07-booking-new")
	b.submit(`form[action="/bookings"] button`, `#booking-code`)
	b.wantText(".flash", "Booking created")
	b.wantText("#booking-status", "Active")
	bookingCode := b.text("#booking-code")
	bookingURL := b.text("#booking-url")
	if len(bookingCode) < 6 || !strings.HasPrefix(bookingURL, s.app.cfg.BaseURL+"/b/") {
		t.Fatalf("code %q, URL %q", bookingCode, bookingURL)
	}
	b.wantText("dl.facts", start.Format("15:04")+" CET")

	// Copy Details copies the details text, which has the code and the URL.
	b.run(chromedp.Click(chromedp.CSS(`button[data-copy="#booking-details"]`)))
	b.run(chromedp.WaitVisible(chromedp.CSS(`button[data-copy="#booking-details"][data-copied]`)))
	attr, err := chromedp.Run(b.ctx, chromedp.AttributeValue(chromedp.CSS(`button[data-copy="#booking-details"]`), "data-copied"))
	if err != nil {
		t.Fatal(err)
	}
	copied := attr.Value
	if !strings.Contains(copied, bookingCode) || !strings.Contains(copied, bookingURL) {
		t.Fatalf("copied details %q lack the code or the URL", copied)
	}
	b.wantText("#copy-status", "Booking details copied")

	// Resend is disabled in the first hour, with the time left explained.
	disabled, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](`document.getElementById("resend").disabled`))
	if err != nil || !disabled {
		t.Fatal("Resend Access Instructions is enabled right after the instructions went out")
	}
	b.wantText("#resend-why", "You can resend in")
	b.shot("08-about-booking")
	bookingPath := strings.TrimPrefix(b.currentURL(), s.url)
	bookingPath = strings.SplitN(bookingPath, "?", 2)[0]

	// Edit: a later end, no reminder.
	b.visit(bookingPath + "/edit")
	later := end.Add(time.Hour)
	b.run(chromedp.SetValue(chromedp.CSS("#ends_at"), later.Format("2006-01-02T15:04")), chromedp.Click(chromedp.CSS("#return_reminder")))
	b.shot("09-booking-edit")
	b.submit(`form[action$="/edit"] button[type=submit]`, `.flash`)
	b.wantText(".flash", "Booking updated")
	b.wantText("dl.facts", later.Format("15:04"))
	b.wantText("dl.facts", "Return reminder\nOff")

	// The visitor's page: code in large type, then "Open at the box".
	tok := bookingURL[len(s.app.cfg.BaseURL+"/b/"):]
	visitor := "/b/" + url.PathEscape(tok)
	b.visit(visitor)
	b.wantText("#visitor-code", bookingCode)
	b.wantText("dl.facts", "Harbour front")
	if html := b.html("main"); strings.Contains(html, "+14155550199") || strings.Contains(html, email) || strings.Contains(html, "Harbour Rentals") {
		t.Fatal("the visitor page shows more than the visitor's booking")
	}
	screen, err := boxkeys.ScreenCode(ref.ID.Secret, boxID, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	wrong := fmt.Sprintf("%06d", (atoi(screen)+1)%1_000_000)
	b.run(chromedp.SendKeys(chromedp.CSS("#screen_code"), wrong), chromedp.Click(chromedp.CSS(`#open-form button`)))
	b.waitText("#open-result", "not the code on the box's screen")
	online()
	screen, _ = boxkeys.ScreenCode(ref.ID.Secret, boxID, time.Now())
	b.run(chromedp.SetValue(chromedp.CSS("#screen_code"), screen), chromedp.Click(chromedp.CSS(`#open-form button`)))
	b.waitText("#open-result", "Bin 1 is opening")
	b.shot("10-visitor-page")

	// Revoke Access from the edit page.
	b.visit(bookingPath + "/edit")
	b.run(chromedp.Click(chromedp.CSS(`input[name=confirm]`)))
	b.submit("#revoke", ".flash")
	b.wantText("#booking-status", "Revoked")
	b.visit(visitor)
	b.wantText("main", "This access was cancelled")

	// Security: 2FA off (with its warning), key-exchange by PIN, a PIN,
	// then a new password.
	b.visit("/security")
	b.shot("11-security")
	b.run(chromedp.Click(chromedp.CSS("#login_2fa")), chromedp.SendKeys(chromedp.CSS("#tfa-current"), password))
	b.submit(`form[action="/security/login-2fa"] button`, `#login-2fa-warning`)
	b.wantText(".flash", "Login 2FA is off")
	b.run(chromedp.SetValue(chromedp.CSS("#visitor_pickups"), "pin"))
	b.submit(`form[action="/security/key-exchange"] button`, `.flash`)
	b.wantText(".flash", "Key-exchange settings saved")
	b.run(chromedp.SendKeys(chromedp.CSS("#pin"), "1234"))
	b.submit(`form[action="/security/pin"] button`, `#form-error`)
	b.run(chromedp.SendKeys(chromedp.CSS("#pin"), "4827"))
	b.submit(`form[action="/security/pin"] button`, `.flash`)
	b.wantText(".flash", "Your PIN is set")
	const newPassword = "harbour-lights-77"
	b.run(chromedp.SendKeys(chromedp.CSS("#pw-current"), password), chromedp.SendKeys(chromedp.CSS("#pw-new"), newPassword))
	b.submit(`form[action="/security/password"] button`, `.flash`)
	b.wantText(".flash", "Your password is changed")
	b.shot("12-security-saved")

	// The other pages render, each with its empty state or list.
	for i, p := range []string{"/alias-codes", "/messages", "/audit", "/locations", "/api-keys", "/users", "/keys/" + b.firstKeyID() + "/visitors"} {
		b.visit(p)
		if got := b.text("h1"); got == "" || strings.Contains(got, "Not Found") || strings.Contains(got, "Internal") {
			t.Fatalf("%s: %q", p, got)
		}
		b.shot(fmt.Sprintf("%02d-%s", 13+i, strings.ReplaceAll(strings.Trim(p, "/"), "/", "-")))
	}

	// A confirmed remote release of bin 1, audited.
	b.visit("/boxes/" + boxID.String() + "/bins/1/release")
	b.run(chromedp.SendKeys(chromedp.CSS("#reason"), "key handed over at the desk"))
	b.submit(`form[action$="/release"] button`, `#form-error`) // not confirmed
	b.run(chromedp.Click(chromedp.CSS(`input[name=confirm]`)))
	b.submit(`form[action$="/release"] button`, `.flash`)
	b.wantText(".flash", "Bin 1 will open")
	b.visit("/audit")
	b.wantText("tbody", "booking.revoked")
	b.wantText("tbody", "bin.release_requested")
}

func (b *browser) currentURL() string {
	b.t.Helper()
	u, err := chromedp.Run(b.ctx, chromedp.Location())
	if err != nil {
		b.t.Fatal(err)
	}
	return u
}

func (b *browser) html(sel string) string {
	b.t.Helper()
	h, err := chromedp.Run(b.ctx, chromedp.OuterHTML(chromedp.CSS(sel)))
	if err != nil {
		b.t.Fatal(err)
	}
	return h
}

func (b *browser) waitText(sel, want string) {
	b.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var got string
	for time.Now().Before(deadline) {
		var err error
		if got, err = chromedp.Run(b.ctx, chromedp.Text(chromedp.CSS(sel))); err == nil && strings.Contains(got, want) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.t.Fatalf("%s says %q, want %q", sel, got, want)
}

func (b *browser) firstKeyID() string {
	b.t.Helper()
	b.visit("/keys")
	nodes, err := chromedp.Run(b.ctx, chromedp.Nodes(chromedp.CSS(`a[href$="/visitors"]`)))
	if err != nil || len(nodes) == 0 {
		b.t.Fatalf("no See Visitors link: %v", err)
	}
	href := nodes[0].AttributeValue("href")
	return strings.TrimSuffix(strings.TrimPrefix(href, "/keys/"), "/visitors")
}

// TestDashboardGuards: forms without the CSRF token are refused, pages
// need a session, every page carries the strict CSP, and an unknown
// booking link says so without detail.
func TestDashboardGuards(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	anon := s.client()
	anon.http.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	t.Run("RedirectedToSignIn", func(t *testing.T) {
		r := anon.do(t, "GET", "/bookings", nil)
		if r.Status != 303 || !strings.HasPrefix(r.Header.Get("Location"), "/login?next=") {
			t.Fatalf("%d %v", r.Status, r.Header)
		}
	})
	t.Run("StrictCSP", func(t *testing.T) {
		r := anon.do(t, "GET", "/login", nil)
		csp := r.Header.Get("Content-Security-Policy")
		if r.Status != 200 || !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") || r.Header.Get("Referrer-Policy") != "no-referrer" {
			t.Fatalf("%d CSP %q", r.Status, csp)
		}
		if strings.Contains(string(r.Body), "<script>") || strings.Contains(string(r.Body), " style=") {
			t.Fatal("the page has inline script or style")
		}
	})
	t.Run("ErrCSRF", func(t *testing.T) {
		// The owner's session cookie alone does not make a form post.
		owner := s.client()
		owner.http.CheckRedirect = anon.http.CheckRedirect
		s.signIn(t, owner, f.Email, f.Password)
		req, _ := http.NewRequest("POST", s.url+"/security/pin", strings.NewReader("pin=4827"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		res, err := owner.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 403 {
			t.Fatalf("a form without its token answered %d", res.StatusCode)
		}
		if me := f.Owner.expect(t, 200, "GET", "/api/v1/me/security", nil).JSON(t); me["pin_set"] != false {
			t.Fatal("the PIN was set by a forged form")
		}
	})
	t.Run("ErrUnknownBookingLink", func(t *testing.T) {
		r := anon.do(t, "GET", "/b/not-a-token", nil)
		if r.Status != 404 || !strings.Contains(string(r.Body), "not valid") {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
	})
}
