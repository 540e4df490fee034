package main

import (
	"context"
	"time"

	"github.com/gofiber/fiber/v2"
)

// healthz says the process is alive; it checks nothing else, so an outage
// of a dependency does not make an orchestrator restart every replica.
func (a *App) healthz(c *fiber.Ctx) error {
	return c.JSON(fiber.Map{"status": "ok"})
}

// readyz says whether this replica can serve: PostgreSQL and Redis answer.
func (a *App) readyz(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(c.UserContext(), 2*time.Second)
	defer cancel()
	checks := fiber.Map{"postgres": "ok", "redis": "ok"}
	ready := true
	if sqlDB, err := a.db.DB(); err != nil || sqlDB.PingContext(ctx) != nil {
		checks["postgres"], ready = "unreachable", false
	}
	if err := a.redis.Ping(ctx).Err(); err != nil {
		checks["redis"], ready = "unreachable", false
	}
	status := fiber.StatusOK
	if !ready {
		status = fiber.StatusServiceUnavailable
	}
	return c.Status(status).JSON(fiber.Map{"ready": ready, "checks": checks})
}
