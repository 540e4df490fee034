// Package dashboard is the staff's web front and the visitor's booking
// page: server-rendered html/template pages with their assets embedded in
// the binary and htmx (vendored, assets/htmx.min.js) for the few partial
// updates, so that nothing needs a front-end build.
//
// Handlers call the domain services directly (never the API's handlers),
// inside the request's tenant transaction opened by the app's authenticate
// middleware; a page that answers 400 or more rolls it back, so a refused
// form writes nothing.
// Every POST carries a CSRF token bound to the browser and its session,
// and every page is served under a Content-Security-Policy that allows no
// inline script or style.
package dashboard

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/filesystem"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/bundles"
	"github.com/keyrelay/keyrelay/firmware/commands"
	"github.com/keyrelay/keyrelay/firmware/devices"
	"github.com/keyrelay/keyrelay/firmware/offline"
	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/accounts"
	"github.com/keyrelay/keyrelay/tenants/bookings"
	"github.com/keyrelay/keyrelay/tenants/inventory"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets
var assetFS embed.FS

// Hasher is the keyed hash the CSRF tokens are made with (the secretbox).
type Hasher interface {
	Hash(parts ...[]byte) []byte
}

// Releaser opens a bin from afar (firmware/commands), with the same checks
// and audit as the API's remote release.
type Releaser interface {
	Release(ctx context.Context, boxID uuid.UUID, bin int, reason string) (commands.Released, error)
}

// BundleStatus reads a box's offline bundle status (firmware/bundles).
type BundleStatus interface {
	StatusOf(ctx context.Context, boxID uuid.UUID) (bundles.Status, error)
}

// SyncState reads how far the server has a box's offline journal
// (firmware/sync).
type SyncState interface {
	StateOf(ctx context.Context, boxID uuid.UUID) (boxsync.BoxState, error)
}

// OfflineSheets makes a box's printable backup-code sheet, audited
// (firmware/offline).
type OfflineSheets interface {
	Sheet(ctx context.Context, boxID uuid.UUID, format string) (offline.Sheet, error)
}

// Deps is what the dashboard works with: the domain services, called in
// the request's tenant transaction, which check the caller themselves.
type Deps struct {
	Accounts  *accounts.Service
	Bookings  *bookings.Service
	Inventory *inventory.Service
	Outbox    *outbox.Outbox
	Devices   *devices.Service
	Scope     *tenants.Scope
	Keys      Hasher
	Log       *slog.Logger

	Commands   Releaser
	Bundles    BundleStatus
	Sync       SyncState
	Offline    OfflineSheets
	Production bool // hides the development mailbox link
	Secure     bool // cookies marked Secure (TLS)
}

// Dashboard serves the pages.
type Dashboard struct {
	Deps
	pages map[string]*template.Template
	now   func() time.Time
}

// New parses the templates once.
func New(d Deps) (*Dashboard, error) {
	if d.Accounts == nil || d.Bookings == nil || d.Inventory == nil || d.Outbox == nil || d.Devices == nil || d.Scope == nil || d.Keys == nil || d.Commands == nil || d.Bundles == nil || d.Sync == nil || d.Offline == nil {
		return nil, errors.New("dashboard: missing dependency")
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	return &Dashboard{Deps: d, pages: pages, now: time.Now}, nil
}

func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("dashboard: template %s: %w", n, err)
		}
		pages[base] = t
	}
	return pages, nil
}

// Mount lists the dashboard's routes on r. auth is the app's authenticate
// middleware (session cookie, tenant transaction); signin its rate limit
// for the sign-in forms. The pages' own table is here, read with the
// app's route table (app/routes.go mounts it at "/").
func (d *Dashboard) Mount(r fiber.Router, auth, signin fiber.Handler) {
	r.Use("/assets", filesystem.New(filesystem.Config{Root: http.FS(mustSub(assetFS, "assets")), MaxAge: 3600}))
	pub := r.Group("", d.headers, d.csrf)
	page := d.signedIn(auth)

	pub.Get("/login", d.loginPage)
	pub.Post("/login", signin, d.login)
	pub.Post("/login/verify", signin, d.verify)
	pub.Get("/signup", d.signupPage)
	pub.Post("/signup", signin, d.signup)
	pub.Get("/forgot-password", d.forgotPage)
	pub.Post("/forgot-password", signin, d.forgot)
	pub.Get("/reset-password", d.resetPage)
	pub.Post("/reset-password", signin, d.reset)
	pub.Post("/logout", page, d.logout)

	pub.Get("/", page, func(c *fiber.Ctx) error { return c.Redirect("/bookings", fiber.StatusSeeOther) })
	pub.Get("/bookings", page, d.bookingList)
	pub.Get("/bookings/new", page, d.bookingNew)
	pub.Post("/bookings", page, d.bookingCreate)
	pub.Get("/bookings/:id", page, d.bookingAbout)
	pub.Get("/bookings/:id/edit", page, d.bookingEdit)
	pub.Post("/bookings/:id/edit", page, d.bookingUpdate)
	pub.Post("/bookings/:id/revoke", page, d.bookingRevoke)
	pub.Post("/bookings/:id/resend", page, d.bookingResend)
	pub.Post("/bookings/:id/release", page, d.bookingRelease)
	pub.Get("/alias-codes", page, d.aliasList)
	pub.Post("/alias-codes", page, d.aliasCreate)
	pub.Post("/alias-codes/:id/retire", page, d.aliasRetire)

	pub.Get("/keys", page, d.keyList)
	pub.Post("/keys", page, d.keyCreate)
	pub.Get("/keys/sheet", page, d.keySheet)
	pub.Get("/keys/:id/visitors", page, d.keyVisitors)
	pub.Get("/keys/:id/edit", page, d.keyEdit)
	pub.Post("/keys/:id/edit", page, d.keyUpdate)
	pub.Post("/keys/:id/delete", page, d.keyDelete)
	pub.Post("/keys/:id/whereabouts", page, d.keyWhereabouts)
	pub.Get("/boxes", page, d.boxList)
	pub.Post("/boxes", page, d.boxCreate)
	pub.Get("/boxes/:id", page, d.boxDetail)
	pub.Post("/boxes/:id/edit", page, d.boxUpdate)
	pub.Post("/boxes/:id/delete", page, d.boxDelete)
	pub.Post("/boxes/:id/provisioning-token", page, d.boxToken)
	pub.Get("/boxes/:id/offline-codes", page, d.offlineCodes)
	pub.Post("/boxes/:id/flags/:flag/resolve", page, d.flagResolve)
	pub.Get("/boxes/:id/bins/:n/release", page, d.binReleaseConfirm)
	pub.Post("/boxes/:id/bins/:n/release", page, d.binRelease)
	pub.Get("/locations", page, d.locationList)
	pub.Post("/locations", page, d.locationCreate)
	pub.Post("/locations/:id/edit", page, d.locationUpdate)
	pub.Post("/locations/:id/delete", page, d.locationDelete)

	pub.Get("/messages", page, d.messageList)
	pub.Get("/audit", page, d.auditList)
	pub.Get("/security", page, d.securityPage)
	pub.Post("/security/password", page, d.changePassword)
	pub.Post("/security/login-2fa", page, d.setLogin2FA)
	pub.Post("/security/totp", page, d.startTOTP)
	pub.Post("/security/totp/confirm", page, d.confirmTOTP)
	pub.Post("/security/totp/remove", page, d.removeTOTP)
	pub.Post("/security/key-exchange", page, d.setPolicy)
	pub.Post("/security/pin", page, d.setPIN)
	pub.Get("/api-keys", page, d.apiKeyList)
	pub.Post("/api-keys", page, d.apiKeyCreate)
	pub.Post("/api-keys/:id/revoke", page, d.apiKeyRevoke)
	pub.Get("/users", page, d.userList)
	pub.Post("/users", page, d.userCreate)
	pub.Get("/users/:id/edit", page, d.userEdit)
	pub.Post("/users/:id/edit", page, d.userUpdate)

	// The visitor's booking page: the URL's token is the credential.
	r.Get("/b/:token", d.headers, d.visitorPage)
}

func mustSub(f fs.FS, dir string) fs.FS {
	s, err := fs.Sub(f, dir)
	if err != nil {
		panic(err)
	}
	return s
}

// contentSecurity allows this origin's scripts, styles and forms only;
// data: images are the authenticator QR code.
const contentSecurity = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// headers sets the security headers of every page. Pages carry tokens
// (booking URLs, reset links, provisioning tokens): no caching, no
// referrer.
func (d *Dashboard) headers(c *fiber.Ctx) error {
	c.Set("Content-Security-Policy", contentSecurity)
	c.Set("X-Content-Type-Options", "nosniff")
	c.Set("X-Frame-Options", "DENY")
	c.Set("Referrer-Policy", "no-referrer")
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Next()
}

// csrfCookie holds a random value per browser; a form's token is a keyed
// hash of it and of the session cookie, so a token neither crosses
// browsers nor outlives the session it was shown in.
const csrfCookie = "keyrelay_csrf"

type csrfKey struct{}

func (d *Dashboard) csrfToken(browser, session string) string {
	return base64.RawURLEncoding.EncodeToString(d.Keys.Hash([]byte("dashboard-csrf"), []byte(browser), []byte(session)))
}

func (d *Dashboard) csrf(c *fiber.Ctx) error {
	browser := c.Cookies(csrfCookie)
	if len(browser) < 32 {
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("dashboard: csrf: %w", err)
		}
		browser = base64.RawURLEncoding.EncodeToString(b[:])
		c.Cookie(&fiber.Cookie{Name: csrfCookie, Value: browser, Path: "/", HTTPOnly: true, Secure: d.Secure, SameSite: fiber.CookieSameSiteStrictMode})
	}
	want := d.csrfToken(browser, c.Cookies(accounts.CookieName))
	c.Locals(csrfKey{}, want)
	if c.Method() == fiber.MethodPost {
		got := c.FormValue("_csrf")
		if got == "" {
			got = c.Get("X-CSRF-Token")
		}
		if !hmac.Equal([]byte(got), []byte(want)) {
			return d.render(c.Status(fiber.StatusForbidden), "error", "Form expired", map[string]any{
				"Message": "This form has expired or did not come from this site. Go back, reload the page and try again."})
		}
	}
	return c.Next()
}

// signedIn runs the app's authentication, sending a browser without a
// valid session to the sign-in page instead of answering 401.
func (d *Dashboard) signedIn(auth fiber.Handler) fiber.Handler {
	return func(c *fiber.Ctx) error {
		toLogin := func() error {
			c.ClearCookie(accounts.CookieName)
			next := url.QueryEscape(c.OriginalURL())
			return c.Redirect("/login?next="+next, fiber.StatusSeeOther)
		}
		if _, ok := accounts.TenantOfToken(c.Cookies(accounts.CookieName)); !ok {
			return toLogin()
		}
		err := auth(c)
		if err != nil && tenants.ErrorCode(err) == tenants.EUnauthorized {
			if _, perr := tenants.PrincipalFrom(c.UserContext()); perr != nil {
				return toLogin()
			}
		}
		return err
	}
}

// view is what every page's layout needs.
type view struct {
	Title     string
	CSRF      string
	Principal *tenants.Principal
	Admin     bool
	Dev       bool
	Path      string
	Flash     string
	Error     string
	Fields    map[string]string
	Data      map[string]any
}

func (d *Dashboard) render(c *fiber.Ctx, page, title string, data map[string]any) error {
	t, ok := d.pages[page]
	if !ok {
		return fmt.Errorf("dashboard: no page %q", page)
	}
	v := view{Title: title, Dev: !d.Production, Path: c.Path(), Data: data, Flash: c.Query("done")}
	v.CSRF, _ = c.Locals(csrfKey{}).(string)
	if p, err := tenants.PrincipalFrom(c.UserContext()); err == nil {
		v.Principal, v.Admin = &p, p.Role.AtLeast(tenants.RoleAdmin)
	}
	if e, ok := data["err"].(error); ok {
		v.Error, v.Fields = describe(e)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, v); err != nil {
		return fmt.Errorf("dashboard: render %s: %w", page, err)
	}
	c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
	return c.Send(b.Bytes())
}

// statusOf maps a domain error to the HTTP status the page answers with;
// it mirrors the API's problem mapping, which stays the one place for JSON.
func statusOf(err error) int {
	switch tenants.ErrorCode(err) {
	case tenants.ENotFound:
		return fiber.StatusNotFound
	case tenants.EConflict:
		return fiber.StatusConflict
	case tenants.EInvalid:
		return fiber.StatusUnprocessableEntity
	case tenants.EForbidden:
		return fiber.StatusForbidden
	case tenants.EUnauthorized:
		return fiber.StatusUnauthorized
	case tenants.ERateLimited:
		return fiber.StatusTooManyRequests
	case tenants.EUnavailable:
		return fiber.StatusServiceUnavailable
	}
	return fiber.StatusInternalServerError
}

// describe turns an error into the sentence and per-field messages a form
// shows. Internal errors say nothing of their cause.
func describe(err error) (string, map[string]string) {
	var de *tenants.Error
	if !errors.As(err, &de) || statusOf(err) >= 500 {
		return "Something went wrong on our side. Try again in a moment.", nil
	}
	fields := map[string]string{}
	for _, f := range de.Fields {
		fields[f.Field] = f.Message
	}
	msg := de.Message
	if msg == "" && len(de.Fields) > 0 {
		msg = "Please correct the fields marked below."
	}
	return msg, fields
}

// fail answers with the page again (or the error page), the error shown,
// and the status that makes the tenant transaction roll back.
func (d *Dashboard) fail(c *fiber.Ctx, err error, page, title string, data map[string]any) error {
	status := statusOf(err)
	if status >= 500 && !errors.Is(err, context.Canceled) {
		d.Log.ErrorContext(c.UserContext(), "dashboard", "path", c.Path(), "error", err.Error())
	}
	if data == nil {
		data = map[string]any{}
	}
	data["err"] = err
	if page == "" {
		page, title = "error", http.StatusText(status)
	}
	return d.render(c.Status(status), page, title, data)
}

// done redirects after a successful POST (so a reload does not repeat
// it), with a short message for the next page.
func done(c *fiber.Ctx, to, msg string) error {
	sep := "?"
	if strings.Contains(to, "?") {
		sep = "&"
	}
	return c.Redirect(to+sep+"done="+url.QueryEscape(msg), fiber.StatusSeeOther)
}

func pathID(c *fiber.Ctx, what string) (uuid.UUID, error) {
	id, err := uuid.Parse(c.Params("id"))
	if err != nil {
		return uuid.Nil, tenants.NotFound(what)
	}
	return id, nil
}

func optional(s string) *string {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil
	}
	return &s
}
