package main

import (
	_ "embed"

	"github.com/gofiber/fiber/v2"
)

// openAPI describes /api/v1. A test fails when a registered route is missing
// from it, so the document cannot silently fall behind the route table.
//
//go:embed openapi.json
var openAPI []byte

func serveOpenAPI(c *fiber.Ctx) error {
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	c.Set(fiber.HeaderCacheControl, "public, max-age=300")
	return c.Send(openAPI)
}
