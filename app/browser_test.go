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
	"github.com/pquerna/otp/totp"

	"github.com/keyrelay/keyrelay/firmware/box"
	"github.com/keyrelay/keyrelay/firmware/boxkeys"
	"github.com/keyrelay/keyrelay/tenants/exchange"
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
			// The newest sign-in code among the messages that came since:
			// a security notice may arrive after it.
			var body string
			body, err = chromedp.Run(tab, chromedp.Evaluate[string](fmt.Sprintf(
				`[...document.querySelectorAll("article pre")].slice(0, %d).map(p => p.textContent).find(t => t.includes("sign-in code")) || ""`, n-after)))
			if m := sixDigits.FindString(body); err == nil && m != "" {
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

// signInUI signs in through the pages: the password, then the code read
// in the dev mailbox when one is asked for.
func (b *browser) signInUI(email, password string) {
	b.t.Helper()
	before := b.mailboxCount()
	b.visit("/login?email=" + url.QueryEscape(email))
	b.run(chromedp.SetValue(chromedp.CSS("#email"), email), chromedp.SendKeys(chromedp.CSS("#password"), password))
	b.submit(`form[action="/login"] button`, `#code, nav.menu`)
	if n, _ := chromedp.Run(b.ctx, chromedp.Evaluate[int](`document.querySelectorAll("#code").length`)); n == 1 {
		b.run(chromedp.SendKeys(chromedp.CSS("#code"), b.mailboxCode(before)))
		b.submit(`form[action="/login/verify"] button`, `nav.menu`)
	}
}

// a11yProblems is a basic automated accessibility check of the page: a
// lang, one h1, alt on every image, a label on every form control.
func (b *browser) a11yProblems() []string {
	b.t.Helper()
	ps, err := chromedp.Run(b.ctx, chromedp.Evaluate[[]string](`(() => {
		const p = [];
		if (!document.documentElement.lang) p.push("the page has no lang");
		const h1 = document.querySelectorAll("h1").length;
		if (h1 !== 1) p.push(h1 + " h1 elements");
		document.querySelectorAll("img").forEach(i => { if (!i.hasAttribute("alt")) p.push("image without alt"); });
		document.querySelectorAll("input, select, textarea").forEach(el => {
			if (el.type === "hidden") return;
			const ok = (el.id && document.querySelector('label[for="' + CSS.escape(el.id) + '"]')) || el.closest("label") ||
				el.getAttribute("aria-label") || el.getAttribute("aria-labelledby");
			if (!ok) p.push("unlabelled " + el.tagName.toLowerCase() + " " + (el.name || el.id));
		});
		return p;
	})()`))
	if err != nil {
		b.t.Fatalf("accessibility check: %v", err)
	}
	return ps
}

// TestBrowserStaffAndOutage walks what TestBrowserDashboard leaves out:
// a forgotten password reset from the emailed link, an authenticator app
// enrolled with the code computed from the page's key, a held booking
// released, an inventory flag resolved, a location that cannot be deleted
// while it has a box, the offline codes sheet's print view, a staff user
// limited to one location who then sees only its boxes, the phone-sized
// bookings list and visitor page, and an accessibility check of each page.
func TestBrowserStaffAndOutage(t *testing.T) {
	s := startServer(t, withWorkers)
	f := s.signup(t)
	o := f.Owner
	locA := o.expect(t, 201, "POST", "/api/v1/locations", map[string]any{"name": "Harbour"}).JSON(t)["id"].(string)
	locB := o.expect(t, 201, "POST", "/api/v1/locations", map[string]any{"name": "Station"}).JSON(t)["id"].(string)
	boxA := o.expect(t, 201, "POST", "/api/v1/boxes", map[string]any{"name": "Harbour box", "model": "MS5", "timezone": "Europe/Paris", "bins": 4, "location_id": locA}).JSON(t)["id"].(string)
	boxB := o.expect(t, 201, "POST", "/api/v1/boxes", map[string]any{"name": "Station box", "model": "MS5", "timezone": "Europe/Paris", "bins": 4, "location_id": locB}).JSON(t)["id"].(string)
	keyA := o.expect(t, 201, "POST", "/api/v1/keys", map[string]any{"name": "Boat 3", "fob_serial": "FOB-BOAT-3", "box_id": boxA, "bin": 1}).JSON(t)["id"].(string)
	ref := s.provisionBox(t, f, uuid.MustParse(boxA))
	now := time.Now().UTC()
	held := o.expect(t, 201, "POST", "/api/v1/bookings", map[string]any{"key_id": keyA, "kind": "one_time", "hold": true, "notify_via": "sms",
		"visitor":   map[string]any{"name": "Hana Held", "phone": "+14155550177"},
		"starts_at": now.Add(-time.Minute).Format(time.RFC3339), "ends_at": now.Add(3 * time.Hour).Format(time.RFC3339)}).JSON(t)
	heldID := held["id"].(string)

	b := newBrowser(t, s.url)

	// Forgot password: the link from the email sets a new one.
	b.visit("/forgot-password")
	b.run(chromedp.SendKeys(chromedp.CSS("#email"), f.Email))
	b.submit(`form[action="/forgot-password"] button`, `[role=status]`)
	b.wantText("main", "we sent it a link")
	b.visit("/reset-password?token=" + url.QueryEscape(s.resetToken(t, f.ID, f.Email)))
	const password = "new-tide-2024"
	b.run(chromedp.SendKeys(chromedp.CSS("#new_password"), password))
	b.submit(`form[action="/reset-password"] button`, `.flash`)
	b.wantText(".flash", "Your password is changed")
	b.signInUI(f.Email, password)
	b.wantText("h1", "Bookings")

	// Authenticator app: the key on the page gives the code that turns it on.
	b.visit("/security")
	b.run(chromedp.SendKeys(chromedp.CSS("#totp-current"), password))
	b.submit(`form[action="/security/totp"] button`, `#totp-secret`)
	if ps := b.a11yProblems(); len(ps) > 0 {
		t.Errorf("/security (enrolment): %v", ps)
	}
	code, err := totp.GenerateCode(b.text("#totp-secret"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b.run(chromedp.SendKeys(chromedp.CSS("#totp-code"), code))
	b.submit(`form[action="/security/totp/confirm"] button`, `#recovery-codes`)
	if n, _ := chromedp.Run(b.ctx, chromedp.Evaluate[int](`document.querySelectorAll("#recovery-codes li").length`)); n < 5 {
		t.Fatalf("%d recovery codes shown", n)
	}
	b.shot("01-recovery-codes")
	b.visit("/security")
	b.wantText("main", "Sign-in codes come from your authenticator app")

	// A held booking shows as held, and Release sends it on its way.
	b.visit("/bookings?status=held")
	b.wantText("#booking-list", "Hana Held")
	b.submit(`form[action="/bookings/`+heldID+`/release"] button`, `.flash`)
	b.wantText(".flash", "Booking released")
	if st := b.text("#booking-status"); st == "Held" {
		t.Fatal("the booking is still held after Release")
	}

	// An inventory flag from the box, resolved from the box's page.
	var rec exchange.Recorded
	if err := ref.Call(context.Background(), 200, "POST", "/box/v1/events", exchange.EventsInput{Events: []exchange.Event{{Type: "bin_closed", Bin: 3, FobSerial: fob("STRANGER-9")}}}, &rec); err != nil {
		t.Fatal(err)
	}
	b.visit("/boxes/" + boxA)
	b.wantText("#flags", "does not know")
	b.wantText("#bundle-status", "")
	b.wantText("#sync-state", "")
	b.shot("02-box-with-flag")
	if ps := b.a11yProblems(); len(ps) > 0 {
		t.Errorf("/boxes/{id}: %v", ps)
	}
	b.run(chromedp.SendKeys(chromedp.CSS(`#flags input[name=note]`), "a guest's own key ring"))
	b.submit(`#flags button`, `.flash`)
	b.wantText(".flash", "Flag resolved")
	if n, _ := chromedp.Run(b.ctx, chromedp.Evaluate[int](`document.querySelectorAll("#flags").length`)); n != 0 {
		t.Fatal("the resolved flag is still listed")
	}

	// The offline backup codes sheet opens as a print view: every bin and
	// the open-all code, a Print button, nothing of the dashboard around.
	b.submit(`#offline-codes-link`, `#offline-codes`)
	if n, _ := chromedp.Run(b.ctx, chromedp.Evaluate[int](`document.querySelectorAll("#offline-codes tbody tr").length`)); n != 5 {
		t.Fatalf("the sheet has %d rows, want 4 bins and the open-all code", n)
	}
	if n, _ := chromedp.Run(b.ctx, chromedp.Evaluate[int](`document.querySelectorAll("nav.menu").length + (document.getElementById("print") ? 0 : 10)`)); n != 0 {
		t.Fatal("the print view shows the menu or has no Print button")
	}
	b.shot("03-offline-codes")

	// A location with a box is not deleted, and the page says why.
	b.visit("/locations")
	del := `form[action="/locations/` + locA + `/delete"]`
	b.run(chromedp.Click(chromedp.CSS(`#locations details:has(`+del+`) summary`)), chromedp.Click(chromedp.CSS("#confirm-"+locA)))
	b.submit(del+` button`, `#form-error`)
	b.wantText("#form-error", "1 box(es) are in this location")

	// A staff user invited and limited to Harbour.
	staffEmail := fmt.Sprintf("sam-%s@example.com", uuid.NewString()[:8])
	b.visit("/users")
	b.run(chromedp.SendKeys(chromedp.CSS("#name"), "Sam Staff"), chromedp.SendKeys(chromedp.CSS("#email"), staffEmail),
		chromedp.SendKeys(chromedp.CSS("#phone"), "+14155550166"))
	b.submit(`form[action="/users"] button`, `.flash`)
	b.wantText(".flash", "Sam Staff is invited")
	if ps := b.a11yProblems(); len(ps) > 0 {
		t.Errorf("/users: %v", ps)
	}
	edit, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](`[...document.querySelectorAll("tbody tr")].find(r => r.textContent.includes("Sam Staff")).querySelector("a").getAttribute("href")`))
	if err != nil {
		t.Fatal(err)
	}
	b.visit(edit)
	b.run(chromedp.Click(chromedp.CSS("#loc-" + locA)))
	b.submit(`form[action$="/edit"] button[type=submit]`, `.flash`)
	b.wantText("tbody", "Harbour")
	// Limiting an admin is refused with the rule, and nothing changes.
	b.visit(edit)
	b.run(chromedp.SetValue(chromedp.CSS("#role"), "admin"))
	b.submit(`form[action$="/edit"] button[type=submit]`, `#form-error`)
	b.wantText("#form-error", "admins and owners see every location")

	// Phone-sized: the bookings list and the visitor's page.
	b.run(chromedp.EmulateViewport(390, 844))
	b.visit("/bookings")
	b.shot("04-phone-bookings")
	if ps := b.a11yProblems(); len(ps) > 0 {
		t.Errorf("/bookings: %v", ps)
	}
	b.visit("/bookings/" + heldID)
	bookingURL := b.text("#booking-url")
	b.visit(strings.TrimPrefix(bookingURL, s.app.cfg.BaseURL))
	b.wantText("#visitor-code", "")
	b.shot("05-phone-visitor")
	if ps := b.a11yProblems(); len(ps) > 0 {
		t.Errorf("visitor page: %v", ps)
	}
	if w, _ := chromedp.Run(b.ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth`)); w > 390 {
		t.Errorf("the visitor page is %dpx wide on a 390px phone", w)
	}

	// The staff user sets a password from the invitation and sees only
	// Harbour's box.
	sb := newBrowser(t, s.url)
	sb.visit("/reset-password?token=" + url.QueryEscape(s.resetToken(t, f.ID, staffEmail)))
	sb.run(chromedp.SendKeys(chromedp.CSS("#new_password"), "front-desk-88"))
	sb.submit(`form[action="/reset-password"] button`, `.flash`)
	sb.signInUI(staffEmail, "front-desk-88")
	sb.visit("/boxes")
	sb.wantText("tbody", "Harbour box")
	if strings.Contains(sb.text("main"), "Station box") {
		t.Fatal("a staff user limited to Harbour sees the Station box")
	}
	sb.shot("06-staff-boxes")
	sb.visit("/boxes/" + boxB)
	sb.wantText("h1", "Not Found")
	if strings.Contains(sb.text("main"), "Station box") {
		t.Fatal("the Station box's page opened for a staff user limited to Harbour")
	}

	// The audit log pages: the downloads, the resolution and the release
	// are recorded; Older leads to the entries before.
	b.run(chromedp.EmulateViewport(1280, 1000))
	for _, a := range []string{"box.offline_codes_downloaded", "inventory.flag_resolved", "booking.released", "user.updated"} {
		b.visit("/audit?action=" + a)
		if !strings.Contains(b.text("main"), a) {
			t.Errorf("the audit log lacks %s", a)
		}
	}
}

// TestBoxFlagsResolve: POST /api/v1/boxes/{id}/flags/{flag_id}/resolve
// acknowledges a box's inventory flag for staff who see the box, with the
// note in the audit log; twice is a conflict, a bad note writes nothing,
// and another tenant's or another location's flag is not found.
func TestBoxFlagsResolve(t *testing.T) {
	s := startServer(t)
	f := s.signup(t)
	st := s.newSite(t, f, 1)
	st.events(t, exchange.Event{Type: "bin_closed", Bin: 4, FobSerial: fob("STRANGER-2")})
	flags := f.Owner.expect(t, 200, "GET", "/api/v1/boxes/"+st.boxID+"/flags", nil).JSON(t)["items"].([]any)
	if len(flags) != 1 || flags[0].(map[string]any)["kind"] != "unknown_fob" {
		t.Fatalf("open flags %v", flags)
	}
	flagID := flags[0].(map[string]any)["id"].(string)
	resolve := "/api/v1/boxes/" + st.boxID + "/flags/" + flagID + "/resolve"

	t.Run("ErrNotFoundElsewhere", func(t *testing.T) {
		other := s.signup(t)
		problemOf(t, other.Owner.do(t, "POST", resolve, nil), 404)
		otherBox := s.newSite(t, f).boxID
		problemOf(t, f.Owner.do(t, "POST", "/api/v1/boxes/"+otherBox+"/flags/"+flagID+"/resolve", nil), 404)
		// A staff user limited to another location does not see the box.
		loc := f.Owner.expect(t, 201, "POST", "/api/v1/locations", map[string]any{"name": "Elsewhere"}).JSON(t)["id"].(string)
		email := fmt.Sprintf("limited-%s@example.com", uuid.NewString()[:8])
		f.Owner.expect(t, 201, "POST", "/api/v1/users", map[string]any{"name": "Lim", "email": email, "phone": "+14155550155", "role": "staff", "location_ids": []string{loc}})
		s.client().expect(t, 204, "POST", "/api/v1/auth/password/reset", map[string]any{"token": s.resetToken(t, f.ID, email), "new_password": "limited-pass-9"})
		limited := s.login(t, email, "limited-pass-9")
		problemOf(t, limited.do(t, "POST", resolve, nil), 404)
		problemOf(t, limited.do(t, "GET", "/api/v1/boxes/"+st.boxID+"/flags", nil), 404)
	})
	t.Run("ErrNoteTooLong", func(t *testing.T) {
		problemOf(t, f.Owner.do(t, "POST", resolve, map[string]any{"note": strings.Repeat("n", 501)}), 422)
		if n := len(f.Owner.expect(t, 200, "GET", "/api/v1/boxes/"+st.boxID+"/flags", nil).JSON(t)["items"].([]any)); n != 1 {
			t.Fatalf("%d open flags after a refused resolution", n)
		}
	})
	got := f.Owner.expect(t, 200, "POST", resolve, map[string]any{"note": "a guest's own keys"}).JSON(t)
	if got["resolved_at"] == nil {
		t.Fatalf("resolved flag %v", got)
	}
	if n := len(f.Owner.expect(t, 200, "GET", "/api/v1/boxes/"+st.boxID+"/flags", nil).JSON(t)["items"].([]any)); n != 0 {
		t.Fatalf("%d open flags after the resolution", n)
	}
	if b := f.Owner.expect(t, 200, "GET", "/api/v1/boxes/"+st.boxID, nil).JSON(t); b["status"].(map[string]any)["open_flags"] != float64(0) {
		t.Fatalf("box status %v", b["status"])
	}
	evs := f.Owner.expect(t, 200, "GET", "/api/v1/audit?action=inventory.flag_resolved", nil).JSON(t)["items"].([]any)
	if len(evs) != 1 || !strings.Contains(fmt.Sprint(evs[0]), "a guest's own keys") {
		t.Fatalf("audit %v", evs)
	}
	problemOf(t, f.Owner.do(t, "POST", resolve, nil), 409)
}
