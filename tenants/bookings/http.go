package bookings

import (
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/outbox"
	"github.com/keyrelay/keyrelay/tenants/web"
)

// BoxView names the box where a booking's code works.
type BoxView struct {
	ID       uuid.UUID `json:"id"`
	Name     string    `json:"name"`
	Address  string    `json:"address"`
	Timezone string    `json:"timezone"`
}

// View is a booking as the API shows it ("About Booking"). Code and URL are
// filled in single reads and left out of lists.
type View struct {
	ID             uuid.UUID      `json:"id"`
	Kind           Kind           `json:"kind"`
	Status         Status         `json:"status"`
	KeyID          uuid.UUID      `json:"key_id"`
	KeyName        string         `json:"key_name"`
	Box            BoxView        `json:"box"`
	Visitor        Visitor        `json:"visitor"`
	StartsAt       time.Time      `json:"starts_at"`
	EndsAt         *time.Time     `json:"ends_at"`
	ReturnReminder bool           `json:"return_reminder"`
	NotifyVia      outbox.Channel `json:"notify_via"`
	Code           string         `json:"code,omitempty"`
	URL            string         `json:"url,omitempty"`
	AliasCodeID    *uuid.UUID     `json:"alias_code_id"`
	Hold           bool           `json:"hold"`
	CreatedBy      string         `json:"created_by"`
	CreatedAt      time.Time      `json:"created_at"`
	SentAt         *time.Time     `json:"sent_at"`
	ResentAt       *time.Time     `json:"resent_at"`
	ReleasedAt     *time.Time     `json:"released_at"`
	RevokedAt      *time.Time     `json:"revoked_at"`
	// ResendAvailableAt is when POST /resend will be accepted; null when
	// nothing can be resent (held, ended, revoked).
	ResendAvailableAt *time.Time `json:"resend_available_at"`
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func (s *Service) view(b Booking, k keyRef, code, url string, now time.Time) View {
	v := View{ID: b.ID, Kind: b.Kind, Status: b.StatusAt(now), KeyID: b.KeyID, KeyName: k.Name,
		Box:     BoxView{ID: k.BoxID, Name: k.BoxName, Address: k.BoxAddress, Timezone: k.BoxTimezone},
		Visitor: Visitor{Name: b.VisitorName, Phone: b.VisitorPhone, Email: b.VisitorEmail}, StartsAt: b.StartsAt.UTC(),
		EndsAt: utc(b.EndsAt), ReturnReminder: b.ReturnReminder, NotifyVia: b.NotifyVia, Code: code, URL: url,
		AliasCodeID: b.AliasCodeID, Hold: b.Hold, CreatedBy: b.CreatedBy, CreatedAt: b.CreatedAt.UTC(), SentAt: utc(b.SentAt),
		ResentAt: utc(b.ResentAt), ReleasedAt: utc(b.ReleasedAt), RevokedAt: utc(b.RevokedAt)}
	if st := v.Status; (st == Active || st == Upcoming) && b.SentAt != nil {
		at := later(b.SentAt.Add(s.cfg.ResendAfter), now).UTC()
		v.ResendAvailableAt = &at
	}
	return v
}

// AliasView is an alias code as the API shows it; Code is left out of
// lists.
type AliasView struct {
	ID        uuid.UUID      `json:"id"`
	Code      string         `json:"code,omitempty"`
	Status    AliasStatus    `json:"status"`
	Visitor   Visitor        `json:"visitor"`
	NotifyVia outbox.Channel `json:"notify_via"`
	// BookingID is the live booking whose code the alias is; null when free.
	BookingID *uuid.UUID `json:"booking_id"`
	CreatedBy string     `json:"created_by"`
	CreatedAt time.Time  `json:"created_at"`
	SentAt    *time.Time `json:"sent_at"`
	RetiredAt *time.Time `json:"retired_at"`
}

func aliasView(a aliasRow, code string) AliasView {
	return AliasView{ID: a.ID, Code: code, Status: a.status(), Visitor: Visitor{Name: a.VisitorName, Phone: a.VisitorPhone, Email: a.VisitorEmail},
		NotifyVia: a.NotifyVia, BookingID: a.LiveBookingID, CreatedBy: a.CreatedBy, CreatedAt: a.CreatedAt.UTC(), SentAt: utc(a.SentAt), RetiredAt: utc(a.RetiredAt)}
}

// Handlers serves the booking and alias-code calls of /api/v1. Handlers
// are thin: decode, call the service, encode.
type Handlers struct {
	svc *Service
}

// NewHandlers returns the booking handlers.
func NewHandlers(svc *Service) *Handlers { return &Handlers{svc: svc} }

// Create handles POST /bookings.
func (h *Handlers) Create(c *fiber.Ctx) error {
	var in NewBookingInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	v, err := h.svc.Create(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(v)
}

// List handles GET /bookings?status=&key_id=&visitor=&cursor=&limit=.
func (h *Handlers) List(c *fiber.Ctx) error {
	page, err := web.PageOf(c)
	if err != nil {
		return err
	}
	f := Filter{Status: Status(c.Query("status")), Visitor: c.Query("visitor"), After: page.After, Limit: page.Limit}
	if s := c.Query("key_id"); s != "" {
		id, err := uuid.Parse(s)
		if err != nil {
			return tenants.Invalid(tenants.FieldError{Field: "key_id", Message: "must be a key id"})
		}
		f.KeyID = id
	}
	vs, err := h.svc.List(c.UserContext(), f)
	if err != nil {
		return err
	}
	return c.JSON(web.NewList(vs, page.Limit, func(v View) uuid.UUID { return v.ID }))
}

// one runs call on the booking named by the path and answers its view.
func one(c *fiber.Ctx, call func(id uuid.UUID) (View, error)) error {
	id, err := web.ID(c, "id", "booking")
	if err != nil {
		return err
	}
	v, err := call(id)
	if err != nil {
		return err
	}
	return c.JSON(v)
}

// Get handles GET /bookings/{id}.
func (h *Handlers) Get(c *fiber.Ctx) error {
	return one(c, func(id uuid.UUID) (View, error) { return h.svc.Get(c.UserContext(), id) })
}

// Update handles PATCH /bookings/{id}.
func (h *Handlers) Update(c *fiber.Ctx) error {
	return one(c, func(id uuid.UUID) (View, error) {
		var in BookingPatch
		if err := web.Bind(c, &in); err != nil {
			return View{}, err
		}
		return h.svc.Update(c.UserContext(), id, in)
	})
}

// Release handles POST /bookings/{id}/release.
func (h *Handlers) Release(c *fiber.Ctx) error {
	return one(c, func(id uuid.UUID) (View, error) { return h.svc.Release(c.UserContext(), id) })
}

// Revoke handles POST /bookings/{id}/revoke.
func (h *Handlers) Revoke(c *fiber.Ctx) error {
	return one(c, func(id uuid.UUID) (View, error) { return h.svc.Revoke(c.UserContext(), id) })
}

// Resend handles POST /bookings/{id}/resend.
func (h *Handlers) Resend(c *fiber.Ctx) error {
	return one(c, func(id uuid.UUID) (View, error) { return h.svc.Resend(c.UserContext(), id) })
}

// Details handles GET /bookings/{id}/details.
func (h *Handlers) Details(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "booking")
	if err != nil {
		return err
	}
	text, err := h.svc.Details(c.UserContext(), id)
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"text": text})
}

// KeyVisitors handles GET /keys/{id}/visitors.
func (h *Handlers) KeyVisitors(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "key")
	if err != nil {
		return err
	}
	page, err := web.PageOf(c)
	if err != nil {
		return err
	}
	vs, err := h.svc.Visitors(c.UserContext(), id, page.After, page.Limit)
	if err != nil {
		return err
	}
	return c.JSON(web.NewList(vs, page.Limit, func(v View) uuid.UUID { return v.ID }))
}

// CreateAlias handles POST /alias-codes.
func (h *Handlers) CreateAlias(c *fiber.Ctx) error {
	var in NewAliasInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	v, err := h.svc.CreateAlias(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(v)
}

// ListAliases handles GET /alias-codes.
func (h *Handlers) ListAliases(c *fiber.Ctx) error {
	page, err := web.PageOf(c)
	if err != nil {
		return err
	}
	vs, err := h.svc.ListAliases(c.UserContext(), page.After, page.Limit)
	if err != nil {
		return err
	}
	return c.JSON(web.NewList(vs, page.Limit, func(v AliasView) uuid.UUID { return v.ID }))
}

// GetAlias handles GET /alias-codes/{id}.
func (h *Handlers) GetAlias(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "alias code")
	if err != nil {
		return err
	}
	v, err := h.svc.GetAlias(c.UserContext(), id)
	if err != nil {
		return err
	}
	return c.JSON(v)
}

// RetireAlias handles DELETE /alias-codes/{id}.
func (h *Handlers) RetireAlias(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "alias code")
	if err != nil {
		return err
	}
	if err := h.svc.RetireAlias(c.UserContext(), id); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}
