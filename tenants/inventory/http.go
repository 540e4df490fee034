package inventory

import (
	"bytes"
	"context"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/web"
)

// Handlers serves the inventory calls of /api/v1: decode, call the
// service, encode.
type Handlers struct {
	svc *Service
}

// NewHandlers returns the inventory handlers.
func NewHandlers(svc *Service) *Handlers { return &Handlers{svc: svc} }

// LocationView is a location as the API shows it.
type LocationView struct {
	ID        uuid.UUID `json:"id"`
	Name      string    `json:"name"`
	Address   string    `json:"address"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

func viewLocation(l Location) LocationView {
	return LocationView{ID: l.ID, Name: l.Name, Address: l.Address, CreatedAt: l.CreatedAt.UTC(), UpdatedAt: l.UpdatedAt.UTC()}
}

// BoxView is a box as the API shows it.
type BoxView struct {
	ID             uuid.UUID  `json:"id"`
	Name           string     `json:"name"`
	Model          Model      `json:"model"`
	OfflineCapable bool       `json:"offline_capable"`
	LocationID     *uuid.UUID `json:"location_id"`
	Address        string     `json:"address"`
	Latitude       *float64   `json:"latitude"`
	Longitude      *float64   `json:"longitude"`
	Timezone       string     `json:"timezone"`
	Bins           int        `json:"bins"`
	Status         BoxStatus  `json:"status"`
	CreatedAt      time.Time  `json:"created_at"`
	UpdatedAt      time.Time  `json:"updated_at"`
}

func viewBox(b Box, st BoxStatus) BoxView {
	return BoxView{ID: b.ID, Name: b.Name, Model: b.Model, OfflineCapable: b.Model.OfflineCapable(), LocationID: b.LocationID,
		Address: b.Address, Latitude: b.Latitude, Longitude: b.Longitude, Timezone: b.Timezone, Bins: b.Bins, Status: st,
		CreatedAt: b.CreatedAt.UTC(), UpdatedAt: b.UpdatedAt.UTC()}
}

// viewBoxes shows boxes with their status, read in one query.
func viewBoxes(ctx context.Context, bs ...Box) ([]BoxView, error) {
	ids := make([]uuid.UUID, len(bs))
	for i, b := range bs {
		ids[i] = b.ID
	}
	sts, err := statusOf(ctx, ids)
	if err != nil {
		return nil, err
	}
	views := make([]BoxView, len(bs))
	for i, b := range bs {
		views[i] = viewBox(b, sts[b.ID])
	}
	return views, nil
}

// BoxViews shows boxes the caller already read (ListBoxes, GetBox) with
// their status, in one query: the web dashboard shows the same view as the
// API. It takes boxes rather than ids so that the location check stays
// with the reads that loaded them.
func (s *Service) BoxViews(ctx context.Context, bs ...Box) ([]BoxView, error) {
	if _, err := staff(ctx); err != nil {
		return nil, err
	}
	return viewBoxes(ctx, bs...)
}

// BoxDetail is one box with what each of its bins holds.
type BoxDetail struct {
	BoxView
	BinContents []Bin `json:"bin_contents"`
}

// KeyView is a key as the API shows it: BoxID and Bin are its home, and
// Whereabouts where it is now.
type KeyView struct {
	ID          uuid.UUID   `json:"id"`
	Name        string      `json:"name"`
	FobSerial   string      `json:"fob_serial"`
	BoxID       uuid.UUID   `json:"box_id"`
	Bin         int         `json:"bin"`
	Whereabouts Whereabouts `json:"whereabouts"`
	CreatedAt   time.Time   `json:"created_at"`
	UpdatedAt   time.Time   `json:"updated_at"`
}

func viewKey(k Key, now time.Time) KeyView {
	return KeyView{ID: k.ID, Name: k.Name, FobSerial: k.FobSerial, BoxID: k.HomeBoxID, Bin: k.HomeBin,
		Whereabouts: k.WhereaboutsAt(now), CreatedAt: k.CreatedAt.UTC(), UpdatedAt: k.UpdatedAt.UTC()}
}

// filterID reads an optional id from the query string.
func filterID(c *fiber.Ctx, name string, v *tenants.Validator) uuid.UUID {
	s := c.Query(name)
	if s == "" {
		return uuid.Nil
	}
	id, ok := parseRef(s)
	v.Check(ok, name, "must be an id")
	return id
}

// CreateLocation handles POST /locations.
func (h *Handlers) CreateLocation(c *fiber.Ctx) error {
	var in LocationInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	l, err := h.svc.CreateLocation(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(viewLocation(l))
}

// ListLocations handles GET /locations.
func (h *Handlers) ListLocations(c *fiber.Ctx) error {
	page, err := web.PageOf(c)
	if err != nil {
		return err
	}
	ls, err := h.svc.ListLocations(c.UserContext(), page.After, page.Limit)
	if err != nil {
		return err
	}
	views := make([]LocationView, len(ls))
	for i, l := range ls {
		views[i] = viewLocation(l)
	}
	return c.JSON(web.NewList(views, page.Limit, func(v LocationView) uuid.UUID { return v.ID }))
}

// GetLocation handles GET /locations/{id}.
func (h *Handlers) GetLocation(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "location")
	if err != nil {
		return err
	}
	l, err := h.svc.GetLocation(c.UserContext(), id)
	if err != nil {
		return err
	}
	return c.JSON(viewLocation(l))
}

// UpdateLocation handles PATCH /locations/{id}.
func (h *Handlers) UpdateLocation(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "location")
	if err != nil {
		return err
	}
	var in LocationPatch
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	l, err := h.svc.UpdateLocation(c.UserContext(), id, in)
	if err != nil {
		return err
	}
	return c.JSON(viewLocation(l))
}

// DeleteLocation handles DELETE /locations/{id}.
func (h *Handlers) DeleteLocation(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "location")
	if err != nil {
		return err
	}
	if err := h.svc.DeleteLocation(c.UserContext(), id); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// CreateBox handles POST /boxes.
func (h *Handlers) CreateBox(c *fiber.Ctx) error {
	var in BoxInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	b, err := h.svc.CreateBox(c.UserContext(), in)
	if err != nil {
		return err
	}
	views, err := viewBoxes(c.UserContext(), b)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(views[0])
}

// ListBoxes handles GET /boxes?location_id=.
func (h *Handlers) ListBoxes(c *fiber.Ctx) error {
	page, err := web.PageOf(c)
	if err != nil {
		return err
	}
	var v tenants.Validator
	f := BoxFilter{LocationID: filterID(c, "location_id", &v), After: page.After, Limit: page.Limit}
	if err := v.Err(); err != nil {
		return err
	}
	bs, err := h.svc.ListBoxes(c.UserContext(), f)
	if err != nil {
		return err
	}
	views, err := viewBoxes(c.UserContext(), bs...)
	if err != nil {
		return err
	}
	return c.JSON(web.NewList(views, page.Limit, func(v BoxView) uuid.UUID { return v.ID }))
}

// GetBox handles GET /boxes/{id}.
func (h *Handlers) GetBox(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "box")
	if err != nil {
		return err
	}
	b, bins, err := h.svc.GetBox(c.UserContext(), id)
	if err != nil {
		return err
	}
	views, err := viewBoxes(c.UserContext(), b)
	if err != nil {
		return err
	}
	return c.JSON(BoxDetail{BoxView: views[0], BinContents: bins})
}

// UpdateBox handles PATCH /boxes/{id}.
func (h *Handlers) UpdateBox(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "box")
	if err != nil {
		return err
	}
	var in BoxPatch
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	b, err := h.svc.UpdateBox(c.UserContext(), id, in)
	if err != nil {
		return err
	}
	views, err := viewBoxes(c.UserContext(), b)
	if err != nil {
		return err
	}
	return c.JSON(views[0])
}

// DeleteBox handles DELETE /boxes/{id}.
func (h *Handlers) DeleteBox(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "box")
	if err != nil {
		return err
	}
	if err := h.svc.DeleteBox(c.UserContext(), id); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// CreateKey handles POST /keys.
func (h *Handlers) CreateKey(c *fiber.Ctx) error {
	var in KeyInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	k, err := h.svc.CreateKey(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(viewKey(k, h.svc.now()))
}

// ListKeys handles GET /keys?box_id=&location_id=&state=.
func (h *Handlers) ListKeys(c *fiber.Ctx) error {
	page, err := web.PageOf(c)
	if err != nil {
		return err
	}
	var v tenants.Validator
	f := KeyFilter{BoxID: filterID(c, "box_id", &v), LocationID: filterID(c, "location_id", &v), State: State(c.Query("state")), After: page.After, Limit: page.Limit}
	switch f.State {
	case "", InBin, Out, Overdue, Missing:
	default:
		v.Add("state", "must be in_bin, out, overdue or missing")
	}
	if err := v.Err(); err != nil {
		return err
	}
	ks, err := h.svc.ListKeys(c.UserContext(), f)
	if err != nil {
		return err
	}
	now := h.svc.now()
	views := make([]KeyView, len(ks))
	for i, k := range ks {
		views[i] = viewKey(k, now)
	}
	return c.JSON(web.NewList(views, page.Limit, func(v KeyView) uuid.UUID { return v.ID }))
}

// GetKey handles GET /keys/{id}.
func (h *Handlers) GetKey(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "key")
	if err != nil {
		return err
	}
	k, err := h.svc.GetKey(c.UserContext(), id)
	if err != nil {
		return err
	}
	return c.JSON(viewKey(k, h.svc.now()))
}

// UpdateKey handles PATCH /keys/{id}.
func (h *Handlers) UpdateKey(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "key")
	if err != nil {
		return err
	}
	var in KeyPatch
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	k, err := h.svc.UpdateKey(c.UserContext(), id, in)
	if err != nil {
		return err
	}
	return c.JSON(viewKey(k, h.svc.now()))
}

// SetWhereabouts handles PUT /keys/{id}/whereabouts: staff correct
// where a key is.
func (h *Handlers) SetWhereabouts(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "key")
	if err != nil {
		return err
	}
	var in WhereaboutsInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	k, err := h.svc.SetWhereabouts(c.UserContext(), id, in)
	if err != nil {
		return err
	}
	return c.JSON(viewKey(k, h.svc.now()))
}

// DeleteKey handles DELETE /keys/{id}.
func (h *Handlers) DeleteKey(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "key")
	if err != nil {
		return err
	}
	if err := h.svc.DeleteKey(c.UserContext(), id); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// ExportKeys handles GET /keys/export: the key data sheet as a CSV
// attachment named after the day it was made.
func (h *Handlers) ExportKeys(c *fiber.Ctx) error {
	var buf bytes.Buffer
	if err := h.svc.ExportKeys(c.UserContext(), &buf); err != nil {
		return err
	}
	name := "keys-" + h.svc.now().UTC().Format("2006-01-02") + ".csv"
	c.Set(fiber.HeaderContentType, "text/csv; charset=utf-8")
	c.Set(fiber.HeaderContentDisposition, `attachment; filename="`+name+`"`)
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Send(buf.Bytes())
}

// FlagList is a box's open flags.
type FlagList struct {
	Items []Flag `json:"items"`
}

// ListFlags handles GET /boxes/{id}/flags: the box's unresolved
// inventory mismatches.
func (h *Handlers) ListFlags(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "box")
	if err != nil {
		return err
	}
	fs, err := h.svc.OpenFlags(c.UserContext(), id)
	if err != nil {
		return err
	}
	if fs == nil {
		fs = []Flag{}
	}
	return c.JSON(FlagList{Items: fs})
}

// ResolveFlagInput is the optional note of a resolution.
type ResolveFlagInput struct {
	Note string `json:"note"`
}

// ResolveFlag handles POST /boxes/{id}/flags/{flag_id}/resolve.
func (h *Handlers) ResolveFlag(c *fiber.Ctx) error {
	boxID, err := web.ID(c, "id", "box")
	if err != nil {
		return err
	}
	flagID, err := web.ID(c, "flag_id", "flag")
	if err != nil {
		return err
	}
	var in ResolveFlagInput
	if len(c.Body()) > 0 {
		if err := web.Bind(c, &in); err != nil {
			return err
		}
	}
	f, err := h.svc.ResolveFlag(c.UserContext(), boxID, flagID, in.Note)
	if err != nil {
		return err
	}
	return c.JSON(f)
}
