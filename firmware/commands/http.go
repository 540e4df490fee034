package commands

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/web"
)

// MaxWait bounds a long poll, below the HTTP write timeout and the idle
// timeouts of common proxies.
const MaxWait = 25 * time.Second

// Handlers serve the command calls of /box/v1 and the staff's remote
// release.
type Handlers struct {
	svc   *Service
	hub   *Hub
	scope *tenants.Scope
}

// NewHandlers returns the handlers.
func NewHandlers(svc *Service, hub *Hub, scope *tenants.Scope) *Handlers {
	return &Handlers{svc: svc, hub: hub, scope: scope}
}

// List is the answer to a poll.
type List struct {
	Commands   []Command `json:"commands"`
	ServerTime time.Time `json:"server_time"`
}

// Poll handles GET /box/v1/commands?wait=N (seconds, default and at most
// 25): it answers at once when commands are pending, else when one
// arrives or the wait ends. It holds no database connection while it
// waits: the route's middleware authenticates in a transaction of its own
// and each read below opens a short one.
func (h *Handlers) Poll(c *fiber.Ctx) error {
	p, err := tenants.RequireBox(c.UserContext())
	if err != nil {
		return err
	}
	wait := MaxWait
	if s := c.Query("wait"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || time.Duration(n)*time.Second > MaxWait {
			return tenants.Invalid(tenants.FieldError{Field: "wait", Message: fmt.Sprintf("must be 0 to %d seconds", int(MaxWait.Seconds()))})
		}
		wait = time.Duration(n) * time.Second
	}
	ctx := c.UserContext()
	wake, cancel := h.hub.Subscribe(p.TenantID, p.BoxID)
	defer cancel()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		cs, err := h.pending(ctx, p)
		if err != nil {
			return err
		}
		if len(cs) > 0 || wait == 0 {
			return c.JSON(List{Commands: orEmpty(cs), ServerTime: time.Now().UTC()})
		}
		select {
		case <-wake:
		case <-deadline.C:
			wait = 0 // one last look, then answer
		case <-h.hub.Stopped():
			wait = 0
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (h *Handlers) pending(ctx context.Context, p tenants.Principal) ([]Command, error) {
	var cs []Command
	err := h.scope.Do(ctx, p.TenantID, func(ctx context.Context) error {
		var err error
		cs, err = h.svc.Pending(ctx, p.BoxID)
		return err
	})
	return cs, err
}

func orEmpty(cs []Command) []Command {
	if cs == nil {
		return []Command{}
	}
	return cs
}

// AckInput is the box's report on a command.
type AckInput struct {
	Result Result `json:"result"`
	Detail string `json:"detail"`
}

// Ack handles POST /box/v1/commands/{id}/ack.
func (h *Handlers) Ack(c *fiber.Ctx) error {
	p, err := tenants.RequireBox(c.UserContext())
	if err != nil {
		return err
	}
	id, err := web.ID(c, "id", "command")
	if err != nil {
		return err
	}
	var in AckInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	if err := h.svc.Ack(c.UserContext(), p.BoxID, id, in.Result, in.Detail); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// ReleaseInput says why staff open a bin from afar.
type ReleaseInput struct {
	Reason string `json:"reason"`
}

// Released is the answer to a remote release: the command on its way.
type Released struct {
	CommandID uuid.UUID `json:"command_id"`
	BoxID     uuid.UUID `json:"box_id"`
	Bin       int       `json:"bin"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Release handles POST /api/v1/boxes/{id}/bins/{n}/release.
func (h *Handlers) Release(c *fiber.Ctx) error {
	boxID, err := web.ID(c, "id", "box")
	if err != nil {
		return err
	}
	bin, err := strconv.Atoi(c.Params("n"))
	if err != nil || bin < 1 {
		return tenants.NotFound("bin")
	}
	var in ReleaseInput
	if len(c.Body()) > 0 {
		if err := web.Bind(c, &in); err != nil {
			return err
		}
	}
	out, err := h.svc.Release(c.UserContext(), boxID, bin, in.Reason)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusAccepted).JSON(out)
}
