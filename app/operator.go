package main

import (
	"crypto/subtle"
	"encoding/base64"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/hibiken/asynqmon"

	"github.com/keyrelay/keyrelay/tenants"
)

// operator lets the platform operator through: the operator token as a
// bearer token, or as the password of HTTP basic auth so that a browser can
// open the queue dashboard.
func (a *App) operator(c *fiber.Ctx) error {
	var given string
	h := c.Get(fiber.HeaderAuthorization)
	if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
		given = strings.TrimSpace(tok)
	} else if strings.HasPrefix(h, "Basic ") {
		given = basicPassword(h)
	}
	if given == "" || subtle.ConstantTimeCompare([]byte(given), []byte(a.cfg.OperatorToken)) != 1 {
		c.Set(fiber.HeaderWWWAuthenticate, `Basic realm="keyrelay operator"`)
		return tenants.Errorf(tenants.EUnauthorized, "operator credential required")
	}
	return c.Next()
}

func basicPassword(h string) string {
	raw, err := decodeBase64(strings.TrimPrefix(h, "Basic "))
	if err != nil {
		return ""
	}
	_, pw, _ := strings.Cut(string(raw), ":")
	return pw
}

// queueDashboard is asynqmon, the asynq web UI: queues, retries, archived
// (exhausted) deliveries.
func (a *App) queueDashboard() fiber.Handler {
	mon := asynqmon.New(asynqmon.Options{RootPath: "/ops/queues", RedisConnOpt: a.queueOpt, ReadOnly: false})
	return adaptor.HTTPHandler(mon)
}

func decodeBase64(s string) ([]byte, error) {
	return base64.StdEncoding.DecodeString(strings.TrimSpace(s))
}
