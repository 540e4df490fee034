package health

import (
	"github.com/gofiber/fiber/v2"

	"github.com/keyrelay/keyrelay/tenants/web"
)

// HeartbeatHandler handles POST /box/v1/heartbeat.
func (s *Service) HeartbeatHandler(c *fiber.Ctx) error {
	var hb Heartbeat
	if err := web.Bind(c, &hb); err != nil {
		return err
	}
	v, err := s.Record(c.UserContext(), hb)
	if err != nil {
		return err
	}
	return c.JSON(v)
}
