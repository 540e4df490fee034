package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/devices"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/accounts"
)

type requestIDKey struct{}

const headerRequestID = "X-Request-Id"

// withRequestID gives every request an id, echoed in the response and put in
// every log line about it. A caller's own id is kept when it looks sane.
func withRequestID(c *fiber.Ctx) error {
	id := c.Get(headerRequestID)
	if !saneID(id) {
		var b [12]byte
		rand.Read(b[:])
		id = hex.EncodeToString(b[:])
	}
	c.Set(headerRequestID, id)
	c.Locals(requestIDKey{}, id)
	ctx := context.WithValue(c.UserContext(), requestIDKey{}, id)
	c.SetUserContext(tenants.WithClientIP(ctx, c.IP()))
	return c.Next()
}

func saneID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

func requestID(c *fiber.Ctx) string {
	id, _ := c.Locals(requestIDKey{}).(string)
	return id
}

// accessLog writes one line per request. It logs the route pattern and the
// path without its query string: neither carries tokens or codes.
func (a *App) accessLog(c *fiber.Ctx) error {
	start := time.Now()
	err := c.Next()
	if err != nil {
		// Let the error handler write the response now, so the status logged
		// is the one the client gets.
		if herr := a.errorHandler(c, err); herr != nil {
			return herr
		}
	}
	attrs := []any{"request_id", requestID(c), "method", c.Method(), "path", c.Path(), "route", c.Route().Path,
		"status", c.Response().StatusCode(), "duration_ms", time.Since(start).Milliseconds()}
	if t, ok := tenants.TenantOf(c.UserContext()); ok {
		attrs = append(attrs, "tenant_id", t.String())
	}
	a.log.InfoContext(c.UserContext(), "request", attrs...)
	return nil
}

// credential returns the bearer token or session cookie of the request.
func credential(c *fiber.Ctx) string {
	if h := c.Get(fiber.HeaderAuthorization); h != "" {
		if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
			return strings.TrimSpace(tok)
		}
		return ""
	}
	return c.Cookies(accounts.CookieName)
}

// authenticate resolves the caller and opens the request's tenant
// transaction: every query of the handler runs in it, and it commits only
// when the handler succeeded, so a failed request leaves nothing
// half-written.
func (a *App) authenticate(c *fiber.Ctx) error {
	tok := credential(c)
	tenantID, ok := accounts.TenantOfToken(tok)
	if !ok {
		return tenants.Errorf(tenants.EUnauthorized, "sign in first: send a session token (Authorization: Bearer …) or the session cookie")
	}
	return a.inTenantTx(c, tenantID, func(ctx context.Context) (tenants.Principal, error) {
		return a.accounts.Authenticate(ctx, tok)
	})
}

// authenticateBox is authenticate for /box/v1: the caller is a box whose
// request is signed with its device key (firmware/devices).
func (a *App) authenticateBox(c *fiber.Ctx) error { return a.authenticateBoxWith(c, false) }

// authenticateBoxWithFirstStatement is authenticateBox for routes whose
// handler may have the credential read with its first statement
// (devices.SignedRequest.CheckWithFirstStatement): one round trip less on
// the hot ones. Their handlers call tenants.Verify before any effect
// outside the transaction that a revoked box must not have.
func (a *App) authenticateBoxWithFirstStatement(c *fiber.Ctx) error {
	return a.authenticateBoxWith(c, true)
}

func (a *App) authenticateBoxWith(c *fiber.Ctx, withFirst bool) error {
	req := signedRequest(c)
	req.CheckWithFirstStatement = withFirst
	tenantID, _, ok := devices.ParseCredentialID(req.Credential)
	if !ok {
		return errUnsignedBox
	}
	return a.inTenantTx(c, tenantID, func(ctx context.Context) (tenants.Principal, error) {
		return a.devices.Authenticate(ctx, req)
	})
}

// authenticateBoxBriefly authenticates a box in a transaction of its own
// and runs the rest of the chain outside any: for long polls, which must
// not hold a pooled connection while they wait.
func (a *App) authenticateBoxBriefly(c *fiber.Ctx) error {
	req := signedRequest(c)
	tenantID, _, ok := devices.ParseCredentialID(req.Credential)
	if !ok {
		return errUnsignedBox
	}
	var p tenants.Principal
	err := a.scope.Do(c.UserContext(), tenantID, func(ctx context.Context) error {
		var err error
		p, err = a.devices.Authenticate(ctx, req)
		return err
	})
	if err != nil {
		return err
	}
	c.SetUserContext(tenants.WithPrincipal(c.UserContext(), p))
	return c.Next()
}

var errUnsignedBox = tenants.Errorf(tenants.EUnauthorized, "sign the request with the box's device key (%s, %s, %s)", devices.HeaderCredential, devices.HeaderTime, devices.HeaderSignature)

func signedRequest(c *fiber.Ctx) devices.SignedRequest {
	return devices.SignedRequest{
		Credential: c.Get(devices.HeaderCredential),
		Time:       c.Get(devices.HeaderTime),
		Signature:  c.Get(devices.HeaderSignature),
		Nonce:      c.Get(devices.HeaderNonce),
		Method:     c.Method(),
		Path:       string(c.Request().URI().RequestURI()),
		Body:       c.Body(),
	}
}

// inTenantTx opens tenantID's transaction, resolves the caller in it and
// runs the rest of the chain with both in the context. It commits only
// when the handler answered below 400; afterTx hooks run once the outcome
// is known.
func (a *App) inTenantTx(c *fiber.Ctx, tenantID uuid.UUID, resolve func(ctx context.Context) (tenants.Principal, error)) error {
	ctx := c.UserContext()
	tx, err := a.scope.Begin(ctx, tenantID)
	if err != nil {
		return err
	}
	hooks := []func(final bool){}
	final := false
	defer func() {
		if !final {
			tx.Rollback()
		}
		for _, h := range hooks {
			h(final)
		}
	}()
	ctx = tenants.WithTx(ctx, tenantID, tx)
	p, err := resolve(ctx)
	if err != nil {
		return err
	}
	c.SetUserContext(tenants.WithPrincipal(ctx, p))
	c.Locals(afterTxKey{}, &hooks)
	err = c.Next()
	status := c.Response().StatusCode()
	if err != nil || status >= 400 {
		// A caller whose credential check is still pending (CheckLater)
		// learns that first, whatever else went wrong: the same 401 on
		// every route for a revoked box.
		if verr := tenants.Verify(ctx); verr != nil {
			return verr
		}
	}
	if err != nil {
		return err
	}
	if status >= 400 {
		// A refused request writes nothing, and its answer is final.
		tx.Rollback()
		final = status < 500
		return nil
	}
	if err := tx.Commit().Error; err != nil {
		if answeredMeanwhile(err) {
			return errAnsweredMeanwhile
		}
		return fmt.Errorf("commit: %w", err)
	}
	final = true
	tenants.Committed(ctx)
	return nil
}

// role lets through callers whose role is at least min. Domain services
// check again: this is the route table's readable statement of who may call.
func role(min tenants.Role) fiber.Handler {
	return func(c *fiber.Ctx) error {
		if _, err := tenants.Require(c.UserContext(), min); err != nil {
			return err
		}
		return c.Next()
	}
}
