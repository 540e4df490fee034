package main

import (
	"github.com/gofiber/fiber/v2"
)

// serveBare is the framework's floor for the pickup: Fiber's defaults, the
// same route, and a constant JSON answer of the same shape as an "open".
// No middleware, no database, no Redis: what is left is HTTP parsing,
// routing and JSON encoding on this machine.
func serveBare(addr string) error {
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	app.Get("/readyz", func(c *fiber.Ctx) error { return c.SendString("ok") })
	app.Post("/box/v1/pickups", func(c *fiber.Ctx) error {
		return c.JSON(fiber.Map{"result": "open", "bin": 1, "key_id": "0190d4c4-0000-7000-8000-000000000001", "access_id": "0190d4c4-0000-7000-8000-000000000002"})
	})
	return app.Listen(addr)
}
