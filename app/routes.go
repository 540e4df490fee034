package main

import (
	"fmt"
	"github.com/gofiber/fiber/v2/middleware/recover"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/keyrelay/keyrelay/app/dashboard"
	"github.com/keyrelay/keyrelay/firmware/bundles"
	"github.com/keyrelay/keyrelay/firmware/commands"
	"github.com/keyrelay/keyrelay/firmware/devices"
	"github.com/keyrelay/keyrelay/firmware/offline"
	"github.com/keyrelay/keyrelay/firmware/releases"
	boxsync "github.com/keyrelay/keyrelay/firmware/sync"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/accounts"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/bookings"
	"github.com/keyrelay/keyrelay/tenants/exchange"
	"github.com/keyrelay/keyrelay/tenants/inventory"
	"github.com/keyrelay/keyrelay/tenants/providers"
	"github.com/keyrelay/keyrelay/tenants/visitors"
	"github.com/keyrelay/keyrelay/tenants/webhooks"
)

// newHTTP builds the Fiber app. Every endpoint of every surface is listed
// here with its middleware, so the whole product reads in one place.
func (a *App) newHTTP() (*fiber.App, error) {
	app := fiber.New(fiber.Config{
		AppName:               "keyrelay",
		BodyLimit:             a.cfg.BodyLimit,
		ErrorHandler:          a.errorHandler,
		DisableStartupMessage: true,
		ReadTimeout:           30 * time.Second,
		WriteTimeout:          30 * time.Second,
		IdleTimeout:           2 * time.Minute,
		// Client addresses (rate limits, logs) come from X-Forwarded-For only
		// when the request arrives through a proxy we were told to trust.
		EnableTrustedProxyCheck: len(a.cfg.TrustedProxies) > 0,
		TrustedProxies:          a.cfg.TrustedProxies,
		ProxyHeader:             proxyHeader(a.cfg.TrustedProxies),
	})
	// recover turns a panic into a 500 for that request instead of a crash.
	app.Use(a.observe) // outermost: the request's span and metrics see the final status
	app.Use(withRequestID, a.accessLog, recover.New())

	signin, err := a.perIP("signin", a.cfg.AuthRateLimit)
	if err != nil {
		return nil, err
	}
	acc := accounts.NewHandlers(a.accounts, a.secureCookies())
	auth := a.authenticate
	idem := a.idempotent
	admin := role(tenants.RoleAdmin)
	staff := role(tenants.RoleStaff)

	app.Get("/healthz", a.healthz)
	app.Get("/readyz", a.readyz)

	v1 := app.Group("/api/v1")
	doc, err := buildOpenAPI()
	if err != nil {
		return nil, fmt.Errorf("openapi: %w", err)
	}
	v1.Get("/openapi.json", serveOpenAPI(doc))

	// Accounts
	v1.Post("/signup", signin, idem, acc.Signup)
	v1.Post("/auth/login", signin, acc.Login)
	v1.Post("/auth/login/verify", signin, acc.VerifyLogin)
	v1.Post("/auth/login/resend", signin, acc.ResendCode)
	v1.Post("/auth/logout", auth, acc.Logout)
	v1.Post("/auth/password/forgot", signin, acc.ForgotPassword)
	v1.Post("/auth/password/reset", signin, acc.ResetPassword)
	v1.Get("/me", auth, acc.Me)
	v1.Put("/me/password", signin, auth, acc.ChangePassword)
	v1.Get("/me/security", auth, acc.GetMySecurity)
	v1.Put("/me/security", auth, acc.PutMySecurity)
	v1.Post("/me/totp", auth, acc.StartTOTP)
	v1.Post("/me/totp/confirm", auth, acc.ConfirmTOTP)
	v1.Delete("/me/totp", auth, acc.DisableTOTP)
	v1.Put("/me/pin", auth, acc.SetPIN)
	v1.Get("/security", auth, admin, acc.GetPolicy)
	v1.Put("/security", auth, admin, acc.PutPolicy)
	v1.Get("/audit", auth, admin, audit.ListHandler)
	v1.Get("/users", auth, admin, acc.ListUsers)
	v1.Post("/users", auth, idem, admin, acc.CreateUser)
	v1.Get("/users/:id", auth, acc.GetUser)
	v1.Patch("/users/:id", auth, admin, acc.UpdateUser)
	v1.Get("/api-keys", auth, admin, acc.ListAPIKeys)
	v1.Post("/api-keys", auth, idem, admin, acc.CreateAPIKey)
	v1.Delete("/api-keys/:id", auth, admin, acc.RevokeAPIKey)

	// Notifications
	prov := providers.NewHandlers(a.providers)
	v1.Get("/messages", auth, admin, a.outbox.ListHandler)
	v1.Get("/notification-settings", auth, admin, a.outbox.GetSettings)
	v1.Put("/notification-settings", auth, admin, a.outbox.PutSettings)
	v1.Get("/providers", auth, admin, prov.Get)
	v1.Put("/providers", auth, admin, prov.Put)
	app.Post("/hooks/providers/:name", a.providerReceipt)

	// Webhooks: the tenant's endpoints for signed events (admins).
	wh := webhooks.NewHandlers(a.webhooks)
	v1.Post("/webhooks", auth, idem, admin, wh.Create)
	v1.Get("/webhooks", auth, admin, wh.List)
	v1.Get("/webhooks/:id", auth, admin, wh.Get)
	v1.Delete("/webhooks/:id", auth, idem, admin, wh.Delete)
	v1.Get("/webhooks/:id/deliveries", auth, admin, wh.Deliveries)

	// Inventory: staff read and manage keys within their locations; boxes
	// and locations are installations, managed by admins.
	inv := inventory.NewHandlers(a.inventory)
	v1.Get("/locations", auth, staff, inv.ListLocations)
	v1.Post("/locations", auth, idem, admin, inv.CreateLocation)
	v1.Get("/locations/:id", auth, staff, inv.GetLocation)
	v1.Patch("/locations/:id", auth, idem, admin, inv.UpdateLocation)
	v1.Delete("/locations/:id", auth, idem, admin, inv.DeleteLocation)
	v1.Get("/boxes", auth, staff, inv.ListBoxes)
	v1.Post("/boxes", auth, idem, admin, inv.CreateBox)
	v1.Get("/boxes/:id", auth, staff, inv.GetBox)
	v1.Patch("/boxes/:id", auth, idem, admin, inv.UpdateBox)
	v1.Delete("/boxes/:id", auth, idem, admin, inv.DeleteBox)
	v1.Get("/boxes/:id/flags", auth, staff, inv.ListFlags)
	v1.Post("/boxes/:id/flags/:flag_id/resolve", auth, idem, staff, inv.ResolveFlag)
	v1.Get("/keys", auth, staff, inv.ListKeys)
	v1.Post("/keys", auth, idem, staff, inv.CreateKey)
	v1.Get("/keys/export", auth, staff, inv.ExportKeys)
	v1.Get("/keys/:id", auth, staff, inv.GetKey)
	v1.Patch("/keys/:id", auth, idem, staff, inv.UpdateKey)
	v1.Delete("/keys/:id", auth, idem, staff, inv.DeleteKey)
	v1.Put("/keys/:id/whereabouts", auth, idem, staff, inv.SetWhereabouts)

	// Bookings and alias codes: staff and up (users and API keys), within
	// the caller's locations; every change accepts an Idempotency-Key.
	bk := bookings.NewHandlers(a.bookings)
	v1.Post("/bookings", auth, idem, staff, bk.Create)
	v1.Get("/bookings", auth, staff, bk.List)
	v1.Get("/bookings/:id", auth, staff, bk.Get)
	v1.Patch("/bookings/:id", auth, idem, staff, bk.Update)
	v1.Post("/bookings/:id/release", auth, idem, staff, bk.Release)
	v1.Post("/bookings/:id/revoke", auth, idem, staff, bk.Revoke)
	v1.Post("/bookings/:id/unlock", auth, idem, staff, bk.Unlock)
	v1.Post("/bookings/:id/resend", auth, idem, staff, bk.Resend)
	v1.Get("/bookings/:id/details", auth, staff, bk.Details)
	v1.Get("/keys/:id/visitors", auth, staff, bk.KeyVisitors)
	v1.Post("/alias-codes", auth, idem, staff, bk.CreateAlias)
	v1.Get("/alias-codes", auth, staff, bk.ListAliases)
	v1.Get("/alias-codes/:id", auth, staff, bk.GetAlias)
	v1.Delete("/alias-codes/:id", auth, idem, staff, bk.RetireAlias)

	// Visitors as data subjects: staff find one by exact phone or email;
	// admins export what is held (an access request); only the owner
	// erases, confirming with one of the visitor's contacts.
	vis := visitors.NewHandlers(a.visitors)
	v1.Get("/visitors", auth, staff, vis.Search)
	v1.Get("/visitors/:id/export", auth, admin, vis.Export)
	v1.Delete("/visitors/:id", auth, idem, role(tenants.RoleOwner), vis.Erase)

	// Boxes: device identity (firmware/devices). A box signs every request
	// with its device key; provisioning is rate-limited like sign-in.
	dev := devices.NewHandlers(a.devices)
	v1.Post("/boxes/:id/provisioning-token", auth, idem, admin, dev.IssueToken)
	v1.Delete("/boxes/:id/credential", auth, admin, dev.Revoke)
	boxAPI := app.Group("/box/v1")
	boxAuth := a.authenticateBox
	boxAPI.Post("/provision", signin, dev.Provision)
	boxAPI.Get("/me", boxAuth, dev.Whoami)
	cmds := commands.NewHandlers(a.commands, a.hub, a.scope)
	v1.Post("/boxes/:id/bins/:n/release", auth, idem, staff, cmds.Release)
	boxAPI.Get("/commands", a.authenticateBoxBriefly, cmds.Poll)
	boxAPI.Post("/commands/:id/ack", boxAuth, cmds.Ack)
	xch := exchange.NewHandlers(a.exchange, a.scope)
	boxAPI.Post("/pickups", a.authenticateBoxWithFirstStatement, xch.Pickup) // its handler: tenants.Verify before any effect outside the transaction
	boxAPI.Post("/pickups/verify", boxAuth, xch.Verify)
	boxAPI.Post("/dropoffs", boxAuth, xch.Dropoff)
	boxAPI.Post("/events", boxAuth, xch.Events)
	boxAPI.Post("/heartbeat", boxAuth, a.health.HeartbeatHandler)

	// Boxes offline (firmware/offline, firmware/sync): the printable
	// backup-code sheet (admins, audited), a derived code for a booking
	// whose box is offline (staff), and the journal a box uploads when it
	// reconnects.
	off := offline.NewHandlers(a.offline)
	v1.Get("/boxes/:id/offline-codes", auth, admin, off.Sheet)
	v1.Post("/bookings/:id/offline-code", auth, idem, staff, off.Derive)
	// Offline bundles (firmware/bundles): the box fetches its signed
	// bundle (ETag, 304); staff see its version and age.
	bun := bundles.NewHandlers(a.bundles)
	boxAPI.Get("/bundle", boxAuth, bun.Fetch)
	v1.Get("/boxes/:id/bundle", auth, staff, bun.Status)
	syn := boxsync.NewHandlers(a.sync)
	boxAPI.Post("/sync", boxAuth, syn.Ingest)
	boxAPI.Get("/sync", boxAuth, syn.State)

	// Firmware (firmware/releases): the operator publishes releases and
	// rolls them out per tenant and model; the tenant's admins may have to
	// approve, and read each rollout's record; boxes check, download (with
	// Range) and report.
	fw := releases.NewHandlers(a.releases)
	op := a.operator
	v1.Post("/platform/firmware/releases", op, fw.CreateRelease)
	v1.Get("/platform/firmware/releases", op, fw.ListReleases)
	v1.Get("/platform/firmware/releases/:id", op, fw.GetRelease)
	v1.Put("/platform/firmware/releases/:id/artifact", op, fw.UploadArtifact)
	v1.Post("/platform/firmware/releases/:id/publish", op, fw.Publish)
	v1.Post("/platform/rollouts", op, fw.CreateRollout)
	v1.Get("/platform/rollouts", op, fw.Overview)
	v1.Get("/platform/rollouts/:id", op, fw.OperatorRollout)
	v1.Get("/platform/rollouts/:id/record", op, fw.OperatorRecord)
	v1.Post("/platform/rollouts/:id/pause", op, fw.Control("pause"))
	v1.Post("/platform/rollouts/:id/resume", op, fw.Control("resume"))
	v1.Post("/platform/rollouts/:id/abort", op, fw.Control("abort"))
	v1.Get("/firmware/settings", auth, admin, fw.GetSettings)
	v1.Put("/firmware/settings", auth, admin, fw.PutSettings)
	v1.Get("/firmware/rollouts", auth, admin, fw.Rollouts)
	v1.Get("/firmware/rollouts/:id", auth, admin, fw.Rollout)
	v1.Get("/firmware/rollouts/:id/record", auth, admin, fw.Record)
	v1.Post("/firmware/rollouts/:id/approve", auth, admin, fw.Approve)
	boxAPI.Get("/firmware", boxAuth, fw.Check)
	boxAPI.Get("/firmware/:id/artifact", boxAuth, fw.Artifact)
	boxAPI.Post("/firmware/status", boxAuth, fw.Status)

	// The visitor's booking page: the URL's token is the credential; a
	// pickup from it needs the code on the box's screen.
	app.Post("/b/:token/open", signin, xch.OpenFromPage)

	// Platform operator
	queues := a.queueDashboard()
	app.All("/ops/queues", a.operator, queues)
	app.All("/ops/queues/*", a.operator, queues)

	// Prometheus metrics (also on KEYRELAY_METRICS_LISTEN, without
	// credentials, for a private network).
	app.Get("/metrics", a.operator, a.metricsEndpoint())

	// Development
	app.Get("/dev/mailbox", a.devMailbox)

	// The staff dashboard and the visitor's booking page (GET /b/{token}),
	// server-rendered; their routes are listed in dashboard.Mount.
	dash, err := dashboard.New(dashboard.Deps{Accounts: a.accounts, Bookings: a.bookings, Inventory: a.inventory, Outbox: a.outbox,
		Devices: a.devices, Scope: a.scope, Keys: a.box, Log: a.log, Commands: a.commands, Bundles: a.bundles, Sync: a.sync, Offline: a.offline,
		Production: a.cfg.Production(), Secure: a.secureCookies()})
	if err != nil {
		return nil, err
	}
	dash.Mount(app, auth, signin)

	app.Use(func(c *fiber.Ctx) error {
		return tenants.Errorf(tenants.ENotFound, "no such endpoint: %s %s", c.Method(), c.Path())
	})
	return app, nil
}

// secureCookies is true when clients reach keyrelay over TLS.
func (a *App) secureCookies() bool { return len(a.cfg.BaseURL) > 8 && a.cfg.BaseURL[:8] == "https://" }

func proxyHeader(trusted []string) string {
	if len(trusted) == 0 {
		return ""
	}
	return fiber.HeaderXForwardedFor
}
