package main

import (
	"fmt"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/ulule/limiter/v3"
	redisstore "github.com/ulule/limiter/v3/drivers/store/redis"

	"github.com/keyrelay/keyrelay/tenants"
)

// perIP limits a group of calls per client address, shared by every replica
// through Redis. Sign-in calls use it so that one address cannot turn the
// bounded argon2id pool into a denial of service or guess passwords fast.
func (a *App) perIP(name, format string) (fiber.Handler, error) {
	rate, err := limiter.NewRateFromFormatted(format)
	if err != nil {
		return nil, fmt.Errorf("rate %q for %s: %w", format, name, err)
	}
	store, err := redisstore.NewStoreWithOptions(a.redis, limiter.StoreOptions{Prefix: "keyrelay:limit:" + name, MaxRetry: 3})
	if err != nil {
		return nil, err
	}
	l := limiter.New(store, rate)
	return func(c *fiber.Ctx) error {
		res, err := l.Get(c.UserContext(), c.IP())
		if err != nil {
			return &tenants.Error{Code: tenants.EUnavailable, Message: "rate limiter unavailable", Err: err}
		}
		c.Set("RateLimit-Limit", strconv.FormatInt(res.Limit, 10))
		c.Set("RateLimit-Remaining", strconv.FormatInt(res.Remaining, 10))
		if res.Reached {
			return tenants.RateLimited("too many attempts from this address; wait and try again", time.Until(time.Unix(res.Reset, 0)))
		}
		return c.Next()
	}, nil
}
