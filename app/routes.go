package main

import (
	"fmt"
	"github.com/gofiber/fiber/v2/middleware/recover"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/keyrelay/keyrelay/firmware/devices"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/accounts"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/providers"
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
	app.Use(withRequestID, a.accessLog, recover.New())

	signin, err := a.perIP("signin", a.cfg.AuthRateLimit)
	if err != nil {
		return nil, err
	}
	acc := accounts.NewHandlers(a.accounts, a.secureCookies())
	auth := a.authenticate
	idem := a.idempotent
	admin := role(tenants.RoleAdmin)

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

	// Boxes: device identity (firmware/devices). A box signs every request
	// with its device key; provisioning is rate-limited like sign-in.
	dev := devices.NewHandlers(a.devices)
	v1.Post("/boxes/:id/provisioning-token", auth, admin, dev.IssueToken)
	v1.Delete("/boxes/:id/credential", auth, admin, dev.Revoke)
	boxAPI := app.Group("/box/v1")
	boxAuth := a.authenticateBox
	boxAPI.Post("/provision", signin, dev.Provision)
	boxAPI.Get("/me", boxAuth, dev.Whoami)

	// Platform operator
	queues := a.queueDashboard()
	app.All("/ops/queues", a.operator, queues)
	app.All("/ops/queues/*", a.operator, queues)

	// Development
	app.Get("/dev/mailbox", a.devMailbox)

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
