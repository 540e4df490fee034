package dashboard

import (
	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/bookings"
	"github.com/keyrelay/keyrelay/tenants/inventory"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

const pageSize = 50

func (d *Dashboard) bookingList(c *fiber.Ctx) error {
	f := bookings.Filter{Status: bookings.Status(c.Query("status")), Visitor: c.Query("visitor"), Limit: pageSize}
	if s := c.Query("key_id"); s != "" {
		f.KeyID, _ = uuid.Parse(s)
	}
	f.After = cursor(c)
	// The pages' links keep the filters: Older goes on after this page's
	// last booking, Newest back to the first page.
	filters := []string{"status", string(f.Status), "visitor", f.Visitor, "key_id", ""}
	if f.KeyID != uuid.Nil {
		filters[5] = f.KeyID.String()
	}
	data := map[string]any{"Filter": f, "Statuses": []string{"upcoming", "active", "held", "ended", "revoked"},
		"First": f.After == uuid.Nil, "Newest": newestLink("/bookings", filters...), "Filtered": f.Status != "" || f.Visitor != "" || f.KeyID != uuid.Nil}
	list, err := d.Bookings.List(c.UserContext(), f)
	if err != nil {
		return d.fail(c, err, "bookings", "Bookings", data)
	}
	data["Bookings"] = list
	if len(list) == pageSize {
		data["Next"] = olderLink("/bookings", list[len(list)-1].ID, filters...)
	}
	return d.render(c, "bookings", "Bookings", data)
}

// keyChoices lists the keys a booking may be made on, with the boxes a
// booking of each names (Key.PickupBoxID): the form's times are read in
// that box's zone, the one the booking is then shown in.
func (d *Dashboard) keyChoices(c *fiber.Ctx) ([]inventory.Key, map[uuid.UUID]inventory.Box, error) {
	ctx := c.UserContext()
	keys, err := d.Inventory.ListKeys(ctx, inventory.KeyFilter{Limit: 200})
	if err != nil {
		return nil, nil, err
	}
	boxes, err := d.boxesByID(c)
	return keys, boxes, err
}

func (d *Dashboard) boxesByID(c *fiber.Ctx) (map[uuid.UUID]inventory.Box, error) {
	bs, err := d.Inventory.ListBoxes(c.UserContext(), inventory.BoxFilter{Limit: 200})
	if err != nil {
		return nil, err
	}
	m := make(map[uuid.UUID]inventory.Box, len(bs))
	for _, b := range bs {
		m[b.ID] = b
	}
	return m, nil
}

func (d *Dashboard) bookingForm(c *fiber.Ctx, status int, err error, in map[string]string) error {
	keys, boxes, lerr := d.keyChoices(c)
	if lerr != nil {
		return d.fail(c, lerr, "", "", nil)
	}
	data := map[string]any{"Keys": keys, "Boxes": boxes, "In": in}
	if err != nil {
		return d.fail(c, err, "booking_new", "New booking", data)
	}
	return d.render(c.Status(status), "booking_new", "New booking", data)
}

func (d *Dashboard) bookingNew(c *fiber.Ctx) error {
	return d.bookingForm(c, fiber.StatusOK, nil, map[string]string{"kind": "one_time", "notify_via": "sms", "key_id": c.Query("key_id"), "return_reminder": "on"})
}

func formMap(c *fiber.Ctx, names ...string) map[string]string {
	m := map[string]string{}
	for _, n := range names {
		m[n] = c.FormValue(n)
	}
	return m
}

func (d *Dashboard) bookingCreate(c *fiber.Ctx) error {
	ctx := c.UserContext()
	in := formMap(c, "key_id", "kind", "visitor_name", "visitor_phone", "visitor_email", "notify_via", "starts_at", "ends_at", "return_reminder", "hold")
	var v tenants.Validator
	tz := "UTC"
	if id, err := uuid.Parse(in["key_id"]); err == nil {
		if k, err := d.Inventory.GetKey(ctx, id); err == nil {
			if b, _, err := d.Inventory.GetBox(ctx, k.PickupBoxID()); err == nil {
				tz = b.Timezone
			}
		}
	}
	start, err := fromLocalInput(in["starts_at"], tz)
	v.Check(err == nil, "starts_at", "must be a date and time")
	end, err := fromLocalInput(in["ends_at"], tz)
	v.Check(err == nil, "ends_at", "must be a date and time")
	if err := v.Err(); err != nil {
		return d.bookingForm(c, 0, err, in)
	}
	kind := bookings.Kind(in["kind"])
	reminder := in["return_reminder"] != "" && kind == bookings.OneTime
	hold := in["hold"] != ""
	nb := bookings.NewBookingInput{KeyID: in["key_id"], Kind: kind, StartsAt: start, EndsAt: end, ReturnReminder: &reminder, Hold: &hold,
		NotifyVia: outbox.Channel(in["notify_via"]),
		Visitor:   &bookings.Visitor{Name: in["visitor_name"], Phone: optional(in["visitor_phone"]), Email: optional(in["visitor_email"])}}
	if kind == bookings.Ongoing {
		nb.EndsAt = nil
	}
	b, err := d.Bookings.Create(ctx, nb)
	if err != nil {
		return d.bookingForm(c, 0, err, in)
	}
	return done(c, "/bookings/"+b.ID.String(), "Booking created")
}

func (d *Dashboard) aboutData(c *fiber.Ctx) (bookings.View, map[string]any, error) {
	id, err := pathID(c, "booking")
	if err != nil {
		return bookings.View{}, nil, err
	}
	ctx := c.UserContext()
	b, err := d.Bookings.Get(ctx, id)
	if err != nil {
		return bookings.View{}, nil, err
	}
	details, err := d.Bookings.Details(ctx, id)
	if err != nil {
		return bookings.View{}, nil, err
	}
	return b, map[string]any{"B": b, "Details": details}, nil
}

func (d *Dashboard) bookingAbout(c *fiber.Ctx) error {
	_, data, err := d.aboutData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	return d.render(c, "booking", "About Booking", data)
}

func (d *Dashboard) bookingEdit(c *fiber.Ctx) error {
	_, data, err := d.aboutData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	return d.render(c, "booking_edit", "Edit booking", data)
}

func (d *Dashboard) bookingUpdate(c *fiber.Ctx) error {
	b, data, err := d.aboutData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	var v tenants.Validator
	start, err := fromLocalInput(c.FormValue("starts_at"), b.Box.Timezone)
	v.Check(err == nil && start != nil, "starts_at", "must be a date and time")
	end, err := fromLocalInput(c.FormValue("ends_at"), b.Box.Timezone)
	v.Check(err == nil, "ends_at", "must be a date and time")
	if err := v.Err(); err != nil {
		return d.fail(c, err, "booking_edit", "Edit booking", data)
	}
	patch := bookings.BookingPatch{StartsAt: start}
	if b.Kind == bookings.OneTime {
		reminder := c.FormValue("return_reminder") != ""
		patch.EndsAt, patch.ReturnReminder = end, &reminder
	}
	if _, err := d.Bookings.Update(c.UserContext(), b.ID, patch); err != nil {
		return d.fail(c, err, "booking_edit", "Edit booking", data)
	}
	return done(c, "/bookings/"+b.ID.String(), "Booking updated")
}

// bookingAction runs one of the booking's buttons and shows About Booking
// again, with the refusal when there is one.
func (d *Dashboard) bookingAction(c *fiber.Ctx, act func(id uuid.UUID) (bookings.View, error), msg string) error {
	id, err := pathID(c, "booking")
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	if _, err := act(id); err != nil {
		_, data, lerr := d.aboutData(c)
		if lerr != nil {
			return d.fail(c, err, "", "", nil)
		}
		return d.fail(c, err, "booking", "About Booking", data)
	}
	return done(c, "/bookings/"+id.String(), msg)
}

func (d *Dashboard) bookingRevoke(c *fiber.Ctx) error {
	confirmed := c.FormValue("confirm") != ""
	return d.bookingAction(c, func(id uuid.UUID) (bookings.View, error) {
		if !confirmed {
			return bookings.View{}, tenants.Invalid(tenants.FieldError{Field: "confirm", Message: "tick the box to confirm the revocation"})
		}
		return d.Bookings.Revoke(c.UserContext(), id)
	}, "Access revoked")
}

func (d *Dashboard) bookingResend(c *fiber.Ctx) error {
	return d.bookingAction(c, func(id uuid.UUID) (bookings.View, error) { return d.Bookings.Resend(c.UserContext(), id) }, "Access instructions sent again")
}

func (d *Dashboard) bookingRelease(c *fiber.Ctx) error {
	return d.bookingAction(c, func(id uuid.UUID) (bookings.View, error) { return d.Bookings.Release(c.UserContext(), id) }, "Booking released: the instructions are on their way")
}

func (d *Dashboard) aliasList(c *fiber.Ctx) error {
	return d.aliasPage(c, nil, nil)
}

func (d *Dashboard) aliasPage(c *fiber.Ctx, err error, in map[string]string) error {
	list, lerr := d.Bookings.ListAliases(c.UserContext(), uuid.Nil, 200)
	if lerr != nil {
		return d.fail(c, lerr, "", "", nil)
	}
	data := map[string]any{"Aliases": list, "In": in}
	if err != nil {
		return d.fail(c, err, "aliases", "Alias codes", data)
	}
	return d.render(c, "aliases", "Alias codes", data)
}

func (d *Dashboard) aliasCreate(c *fiber.Ctx) error {
	in := formMap(c, "code", "visitor_name", "visitor_phone", "visitor_email", "notify_via", "send")
	a, err := d.Bookings.CreateAlias(c.UserContext(), bookings.NewAliasInput{Code: optional(in["code"]), NotifyVia: outbox.Channel(in["notify_via"]), Send: in["send"] != "",
		Visitor: &bookings.Visitor{Name: in["visitor_name"], Phone: optional(in["visitor_phone"]), Email: optional(in["visitor_email"])}})
	if err != nil {
		return d.aliasPage(c, err, in)
	}
	return done(c, "/alias-codes", "Alias code "+a.Code+" created")
}

func (d *Dashboard) aliasRetire(c *fiber.Ctx) error {
	id, err := pathID(c, "alias code")
	if err == nil {
		err = d.Bookings.RetireAlias(c.UserContext(), id)
	}
	if err != nil {
		return d.aliasPage(c, err, nil)
	}
	return done(c, "/alias-codes", "Alias code retired")
}
