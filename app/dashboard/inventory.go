package dashboard

import (
	"cmp"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/commands"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/bookings"
	"github.com/keyrelay/keyrelay/tenants/inventory"
)

// keyRow is a key with the names of its home box and of where it is.
type keyRow struct {
	inventory.Key
	Where   inventory.Whereabouts
	Home    inventory.Box
	NowAt   string // the box the key is in, when in a bin
	Overdue bool
}

func (d *Dashboard) keyList(c *fiber.Ctx) error { return d.keyPage(c, nil, nil) }

func (d *Dashboard) keyPage(c *fiber.Ctx, err error, in map[string]string) error {
	keys, boxes, lerr := d.keyChoices(c)
	if lerr != nil {
		return d.fail(c, lerr, "", "", nil)
	}
	now := d.now()
	rows := make([]keyRow, len(keys))
	for i, k := range keys {
		r := keyRow{Key: k, Where: k.WhereaboutsAt(now), Home: boxes[k.HomeBoxID]}
		if r.Where.BoxID != nil {
			r.NowAt = boxes[*r.Where.BoxID].Name
		}
		rows[i] = r
	}
	data := map[string]any{"Keys": rows, "Boxes": boxes, "In": in}
	if err != nil {
		return d.fail(c, err, "keys", "Keys", data)
	}
	return d.render(c, "keys", "Keys", data)
}

func (d *Dashboard) keyCreate(c *fiber.Ctx) error {
	in := formMap(c, "name", "fob_serial", "box_id", "bin")
	bin, _ := strconv.Atoi(in["bin"])
	k, err := d.Inventory.CreateKey(c.UserContext(), inventory.KeyInput{Name: in["name"], FobSerial: in["fob_serial"], BoxID: in["box_id"], Bin: bin})
	if err != nil {
		return d.keyPage(c, err, in)
	}
	return done(c, "/keys", "Key "+k.Name+" added")
}

func (d *Dashboard) keyVisitors(c *fiber.Ctx) error {
	id, err := pathID(c, "key")
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	ctx := c.UserContext()
	k, err := d.Inventory.GetKey(ctx, id)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	vs, err := d.Bookings.Visitors(ctx, id, uuid.Nil, 200)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	return d.render(c, "key_visitors", "Visitors of "+k.Name, map[string]any{"Key": k, "Visitors": vs})
}

// keyEditData is a key's edit page: the key, the boxes it may live in,
// where it is now and the accesses that may hold it (for a correction).
func (d *Dashboard) keyEditData(c *fiber.Ctx) (map[string]any, error) {
	id, err := pathID(c, "key")
	if err != nil {
		return nil, err
	}
	ctx := c.UserContext()
	k, err := d.Inventory.GetKey(ctx, id)
	if err != nil {
		return nil, err
	}
	boxes, err := d.boxesByID(c)
	if err != nil {
		return nil, err
	}
	accesses, err := d.Bookings.Visitors(ctx, id, uuid.Nil, 200)
	if err != nil {
		return nil, err
	}
	in := map[string]string{"name": k.Name, "fob_serial": k.FobSerial, "box_id": k.HomeBoxID.String(), "bin": strconv.Itoa(k.HomeBin)}
	where := k.WhereaboutsAt(d.now())
	// The correction form starts from where the records have the key (a
	// key not in a bin: its home bin).
	w := map[string]string{"state": string(k.State), "box_id": k.HomeBoxID.String(), "bin": strconv.Itoa(k.HomeBin)}
	nowAt := ""
	if k.BoxID != nil && k.Bin != nil {
		w["box_id"], w["bin"] = k.BoxID.String(), strconv.Itoa(*k.Bin)
		nowAt = boxes[*k.BoxID].Name
	}
	// An access that has ended still holds a key it took; it stays a choice.
	heldBy := ""
	if k.OutAccessID != nil {
		heldBy = k.OutAccessID.String()
		w["access_id"] = heldBy
		if slices.ContainsFunc(accesses, func(v bookings.View) bool { return v.ID == *k.OutAccessID }) {
			heldBy = ""
		}
	}
	return map[string]any{"Key": k, "Boxes": boxes, "In": in, "Where": where, "NowAt": nowAt, "Accesses": accesses, "HeldBy": heldBy, "W": w}, nil
}

func (d *Dashboard) keyEdit(c *fiber.Ctx) error {
	data, err := d.keyEditData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	return d.render(c, "key_edit", "Edit key", data)
}

func (d *Dashboard) keyUpdate(c *fiber.Ctx) error {
	data, err := d.keyEditData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	k := data["Key"].(inventory.Key)
	in := formMap(c, "name", "fob_serial", "box_id", "bin")
	data["In"] = in
	bin, aerr := strconv.Atoi(in["bin"])
	if aerr != nil {
		return d.fail(c, tenants.Invalid(tenants.FieldError{Field: "bin", Message: "must be a bin number"}), "key_edit", "Edit key", data)
	}
	if _, err := d.Inventory.UpdateKey(c.UserContext(), k.ID, inventory.KeyPatch{Name: ptr(in["name"]), FobSerial: ptr(in["fob_serial"]), BoxID: ptr(in["box_id"]), Bin: &bin}); err != nil {
		return d.fail(c, err, "key_edit", "Edit key", data)
	}
	return done(c, "/keys", "Key "+strings.TrimSpace(in["name"])+" saved")
}

// keyWhereabouts corrects where a key is (audited by the service, which
// also resolves the key's open flags).
func (d *Dashboard) keyWhereabouts(c *fiber.Ctx) error {
	data, err := d.keyEditData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	k := data["Key"].(inventory.Key)
	w := map[string]string{}
	for _, name := range []string{"state", "box_id", "bin", "access_id", "note"} {
		w[name] = c.FormValue("where_" + name)
	}
	data["W"] = w
	in := inventory.WhereaboutsInput{State: inventory.State(w["state"]), Note: w["note"]}
	switch in.State {
	case inventory.InBin:
		bin, aerr := strconv.Atoi(strings.TrimSpace(w["bin"]))
		if aerr != nil {
			return d.fail(c, tenants.Invalid(tenants.FieldError{Field: "where_bin", Message: "must be a bin number"}), "key_edit", "Edit key", data)
		}
		in.BoxID, in.Bin = ptr(w["box_id"]), &bin
	case inventory.Out:
		in.AccessID = optional(w["access_id"])
	}
	if _, err := d.Inventory.SetWhereabouts(c.UserContext(), k.ID, in); err != nil {
		return d.fail(c, whereFields(err), "key_edit", "Edit key", data)
	}
	return done(c, "/keys", k.Name+": where it is now saved")
}

// whereFields names a correction's field errors apart from the key's home
// fields, which share the page (and the names box_id and bin).
func whereFields(err error) error {
	var de *tenants.Error
	if !errors.As(err, &de) || len(de.Fields) == 0 {
		return err
	}
	renamed := *de
	renamed.Fields = make([]tenants.FieldError, len(de.Fields))
	for i, f := range de.Fields {
		renamed.Fields[i] = tenants.FieldError{Field: "where_" + f.Field, Message: f.Message}
	}
	return &renamed
}

// keyDelete archives a key once the confirmation is ticked; a key with
// live bookings is refused by the service with the reason.
func (d *Dashboard) keyDelete(c *fiber.Ctx) error {
	data, err := d.keyEditData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	k := data["Key"].(inventory.Key)
	if c.FormValue("confirm") == "" {
		err = tenants.Invalid(tenants.FieldError{Field: "confirm", Message: "tick the box to confirm that the key is deleted"})
	} else {
		err = d.Inventory.DeleteKey(c.UserContext(), k.ID)
	}
	if err != nil {
		return d.fail(c, err, "key_edit", "Edit key", data)
	}
	return done(c, "/keys", "Key "+k.Name+" deleted")
}

// boxList shows the boxes with their status (online, since, firmware,
// power, battery, open flags), the API's view of them.
func (d *Dashboard) boxList(c *fiber.Ctx) error { return d.boxPage(c, nil, nil) }

func (d *Dashboard) boxPage(c *fiber.Ctx, err error, in map[string]string) error {
	ctx := c.UserContext()
	bs, lerr := d.Inventory.ListBoxes(ctx, inventory.BoxFilter{Limit: 200})
	if lerr != nil {
		return d.fail(c, lerr, "", "", nil)
	}
	views, lerr := d.Inventory.BoxViews(ctx, bs...)
	if lerr != nil {
		return d.fail(c, lerr, "", "", nil)
	}
	locs, lerr := d.Inventory.ListLocations(ctx, uuid.Nil, 200)
	if lerr != nil {
		return d.fail(c, lerr, "", "", nil)
	}
	// Keyed by the id's text: a box's location is a *uuid.UUID, which the
	// template prints but cannot use as a uuid.UUID map key.
	locNames := map[string]string{}
	for _, l := range locs {
		locNames[l.ID.String()] = l.Name
	}
	data := map[string]any{"Boxes": views, "Locations": locs, "LocationNames": locNames, "In": in,
		"Models": []inventory.Model{inventory.MS5, inventory.MS4, inventory.MS3}}
	if err != nil {
		return d.fail(c, err, "boxes", "Boxes", data)
	}
	return d.render(c, "boxes", "Boxes", data)
}

func (d *Dashboard) boxCreate(c *fiber.Ctx) error {
	in := formMap(c, "name", "model", "location_id", "address", "timezone", "bins")
	bins, _ := strconv.Atoi(in["bins"])
	b, err := d.Inventory.CreateBox(c.UserContext(), inventory.BoxInput{Name: in["name"], Model: inventory.Model(in["model"]),
		LocationID: optional(in["location_id"]), Address: in["address"], Timezone: strings.TrimSpace(in["timezone"]), Bins: bins})
	if err != nil {
		return d.boxPage(c, err, in)
	}
	return done(c, "/boxes/"+b.ID.String(), "Box "+b.Name+" added")
}

// boxDetailData is a box's page: its status, bins, open flags, offline
// bundle and journal sync, and (for admins) the edit form's values.
func (d *Dashboard) boxDetailData(c *fiber.Ctx) (map[string]any, error) {
	id, err := pathID(c, "box")
	if err != nil {
		return nil, err
	}
	ctx := c.UserContext()
	b, bins, err := d.Inventory.GetBox(ctx, id)
	if err != nil {
		return nil, err
	}
	views, err := d.Inventory.BoxViews(ctx, b)
	if err != nil {
		return nil, err
	}
	flags, err := d.Inventory.OpenFlags(ctx, id)
	if err != nil {
		return nil, err
	}
	data := map[string]any{"Box": inventory.BoxDetail{BoxView: views[0], BinContents: bins}, "Flags": flags}
	if b.Model.OfflineCapable() {
		bundle, err := d.Bundles.StatusOf(ctx, id)
		if err != nil {
			return nil, err
		}
		sync, err := d.Sync.StateOf(ctx, id)
		if err != nil {
			return nil, err
		}
		data["Bundle"], data["Sync"] = bundle, sync
	}
	locs, err := d.Inventory.ListLocations(ctx, uuid.Nil, 200)
	if err != nil {
		return nil, err
	}
	in := map[string]string{"name": b.Name, "address": b.Address, "timezone": b.Timezone, "bins": strconv.Itoa(b.Bins)}
	if b.LocationID != nil {
		in["location_id"] = b.LocationID.String()
	}
	data["Locations"], data["In"] = locs, in
	return data, nil
}

func (d *Dashboard) boxDetail(c *fiber.Ctx) error {
	data, err := d.boxDetailData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	return d.render(c, "box", "Box", data)
}

// boxUpdate saves the admin's edit form: name, location, address, time
// zone and number of bins (the service refuses fewer bins than are used).
func (d *Dashboard) boxUpdate(c *fiber.Ctx) error {
	data, err := d.boxDetailData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	b := data["Box"].(inventory.BoxDetail)
	in := formMap(c, "name", "location_id", "address", "timezone", "bins")
	data["In"], data["Section"] = in, "edit"
	bins, aerr := strconv.Atoi(in["bins"])
	if aerr != nil {
		return d.fail(c, tenants.Invalid(tenants.FieldError{Field: "bins", Message: "must be a number"}), "box", "Box", data)
	}
	tz := strings.TrimSpace(in["timezone"])
	patch := inventory.BoxPatch{Name: ptr(in["name"]), Address: ptr(in["address"]), Timezone: &tz, Bins: &bins, LocationID: inventory.Null[string]()}
	if in["location_id"] != "" {
		patch.LocationID = inventory.Some(in["location_id"])
	}
	if _, err := d.Inventory.UpdateBox(c.UserContext(), b.ID, patch); err != nil {
		return d.fail(c, err, "box", "Box", data)
	}
	return done(c, "/boxes/"+b.ID.String(), "Box saved")
}

// boxDelete archives a box once confirmed; a box that still is the home
// of keys, or holds another box's key, is refused with the reason.
func (d *Dashboard) boxDelete(c *fiber.Ctx) error {
	data, err := d.boxDetailData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	b := data["Box"].(inventory.BoxDetail)
	data["Section"] = "delete"
	if c.FormValue("confirm") == "" {
		err = tenants.Invalid(tenants.FieldError{Field: "confirm", Message: "tick the box to confirm that the box is deleted"})
	} else {
		err = d.Inventory.DeleteBox(c.UserContext(), b.ID)
	}
	if err != nil {
		return d.fail(c, err, "box", "Box", data)
	}
	return done(c, "/boxes", "Box "+b.Name+" deleted")
}

// boxToken issues a provisioning token and shows it once, in this answer.
func (d *Dashboard) boxToken(c *fiber.Ctx) error {
	id, err := pathID(c, "box")
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	tok, err := d.Devices.IssueToken(c.UserContext(), id)
	data, derr := d.boxDetailData(c)
	if derr != nil {
		return d.fail(c, derr, "", "", nil)
	}
	if err != nil {
		return d.fail(c, err, "box", "Box", data)
	}
	data["Token"] = tok
	return d.render(c, "box", "Box", data)
}

// flagResolve acknowledges an inventory mismatch (audited, with the note).
func (d *Dashboard) flagResolve(c *fiber.Ctx) error {
	boxID, err := pathID(c, "box")
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	flagID, perr := uuid.Parse(c.Params("flag"))
	if perr != nil {
		return d.fail(c, tenants.NotFound("flag"), "", "", nil)
	}
	if _, err := d.Inventory.ResolveFlag(c.UserContext(), boxID, flagID, c.FormValue("note")); err != nil {
		data, derr := d.boxDetailData(c)
		if derr != nil {
			return d.fail(c, err, "", "", nil)
		}
		return d.fail(c, err, "box", "Box", data)
	}
	return done(c, "/boxes/"+boxID.String(), "Flag resolved")
}

// offlineCodes is the printable backup-code sheet, on a page of its own
// with nothing else of the dashboard (the print button is app.js's). Its
// download is audited by the service; the page is never cached.
func (d *Dashboard) offlineCodes(c *fiber.Ctx) error {
	id, err := pathID(c, "box")
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	ctx := c.UserContext()
	sh, err := d.Offline.Sheet(ctx, id, "print")
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	b, _, err := d.Inventory.GetBox(ctx, id)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	return d.render(c, "offline_codes", "Offline backup codes", map[string]any{"Sheet": sh, "Timezone": b.Timezone, "Bare": true})
}

func (d *Dashboard) binReleaseConfirm(c *fiber.Ctx) error {
	data, err := d.boxDetailData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	bin, err := strconv.Atoi(c.Params("n"))
	b := data["Box"].(inventory.BoxDetail)
	if err != nil || bin < 1 || bin > b.Bins {
		return d.fail(c, tenants.NotFound("bin"), "", "", nil)
	}
	data["Bin"] = bin
	return d.render(c, "bin_release", "Release a bin", data)
}

// binRelease opens a bin from afar once confirmed, through the same
// service call as the API (caller, box, bin checked; audited with the
// reason).
func (d *Dashboard) binRelease(c *fiber.Ctx) error {
	reason := strings.TrimSpace(c.FormValue("reason"))
	bin, aerr := strconv.Atoi(c.Params("n"))
	id, err := pathID(c, "box")
	switch {
	case err != nil:
	case aerr != nil || bin < 1:
		err = tenants.NotFound("bin")
	case c.FormValue("confirm") == "":
		err = tenants.Invalid(tenants.FieldError{Field: "confirm", Message: "tick the box to confirm that the bin may open"})
	}
	var out commands.Released
	if err == nil {
		out, err = d.Commands.Release(c.UserContext(), id, bin, reason)
	}
	if err != nil {
		data, derr := d.boxDetailData(c)
		if derr != nil || statusOf(err) == fiber.StatusNotFound {
			return d.fail(c, err, "", "", nil)
		}
		data["Bin"] = bin
		return d.fail(c, err, "bin_release", "Release a bin", data)
	}
	return done(c, "/boxes/"+id.String(), "Bin "+strconv.Itoa(out.Bin)+" will open when the box picks up the command")
}

func (d *Dashboard) locationList(c *fiber.Ctx) error { return d.locationPage(c, nil, nil) }

func (d *Dashboard) locationPage(c *fiber.Ctx, err error, in map[string]string) error {
	locs, lerr := d.Inventory.ListLocations(c.UserContext(), uuid.Nil, 200)
	if lerr != nil {
		return d.fail(c, lerr, "", "", nil)
	}
	data := map[string]any{"Locations": locs, "In": in}
	if in != nil {
		data["Editing"] = in["id"]
	}
	if err != nil {
		return d.fail(c, err, "locations", "Locations", data)
	}
	return d.render(c, "locations", "Locations", data)
}

func (d *Dashboard) locationCreate(c *fiber.Ctx) error {
	in := formMap(c, "name", "address")
	l, err := d.Inventory.CreateLocation(c.UserContext(), inventory.LocationInput{Name: in["name"], Address: in["address"]})
	if err != nil {
		return d.locationPage(c, err, in)
	}
	return done(c, "/locations", "Location "+l.Name+" added")
}

// locationUpdate renames a location (and changes its address).
func (d *Dashboard) locationUpdate(c *fiber.Ctx) error {
	in := formMap(c, "name", "address")
	in["id"] = c.Params("id")
	id, err := pathID(c, "location")
	if err == nil {
		_, err = d.Inventory.UpdateLocation(c.UserContext(), id, inventory.LocationPatch{Name: ptr(in["name"]), Address: ptr(in["address"])})
	}
	if err != nil {
		return d.locationPage(c, err, in)
	}
	return done(c, "/locations", "Location "+strings.TrimSpace(in["name"])+" saved")
}

// locationDelete removes a location. The service refuses while boxes are
// in it or users are limited to it (409), and says which: the page shows
// that sentence with what to do.
func (d *Dashboard) locationDelete(c *fiber.Ctx) error {
	in := map[string]string{"id": c.Params("id"), "delete": "1"}
	id, err := pathID(c, "location")
	switch {
	case err != nil:
	case c.FormValue("confirm") == "":
		err = tenants.Invalid(tenants.FieldError{Field: "confirm", Message: "tick the box to confirm that the location is deleted"})
	default:
		err = d.Inventory.DeleteLocation(c.UserContext(), id)
	}
	if err != nil {
		return d.locationPage(c, err, in)
	}
	return done(c, "/locations", "Location deleted")
}

func ptr(s string) *string { return &s }

// sheetRow is a line of the key data sheet.
type sheetRow struct {
	Name, FobSerial, Box, Location string
	Bin                            int
	boxID                          uuid.UUID
}

// sheetPage is the page size the sheets read their lists with: a sheet
// lists everything the caller sees, page after page.
const sheetPage = 500

// everything reads all pages of a list, newest first.
func everything[T any](list func(after uuid.UUID) ([]T, error), id func(T) uuid.UUID) ([]T, error) {
	var all []T
	after := uuid.Nil
	for {
		page, err := list(after)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if len(page) < sheetPage {
			return all, nil
		}
		after = id(page[len(page)-1])
	}
}

// keySheet is the key data sheet as a page to print (the CSV is
// GET /api/v1/keys/export): every live key the caller sees, with its fob
// serial, home box and bin and the box's location, in the export's order
// (location, box, bin). Fobs are anonymous; with the offline backup codes
// the sheet lets a business find its keys when everything is down. Print
// CSS leaves the dashboard's menus off the paper.
func (d *Dashboard) keySheet(c *fiber.Ctx) error {
	ctx := c.UserContext()
	keys, err := everything(func(after uuid.UUID) ([]inventory.Key, error) {
		return d.Inventory.ListKeys(ctx, inventory.KeyFilter{After: after, Limit: sheetPage})
	}, func(k inventory.Key) uuid.UUID { return k.ID })
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	boxes, err := everything(func(after uuid.UUID) ([]inventory.Box, error) {
		return d.Inventory.ListBoxes(ctx, inventory.BoxFilter{After: after, Limit: sheetPage})
	}, func(b inventory.Box) uuid.UUID { return b.ID })
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	locs, err := everything(func(after uuid.UUID) ([]inventory.Location, error) {
		return d.Inventory.ListLocations(ctx, after, sheetPage)
	}, func(l inventory.Location) uuid.UUID { return l.ID })
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	boxByID := make(map[uuid.UUID]inventory.Box, len(boxes))
	for _, b := range boxes {
		boxByID[b.ID] = b
	}
	locName := make(map[uuid.UUID]string, len(locs))
	for _, l := range locs {
		locName[l.ID] = l.Name
	}
	rows := make([]sheetRow, 0, len(keys))
	for _, k := range keys {
		b := boxByID[k.HomeBoxID]
		r := sheetRow{Name: k.Name, FobSerial: k.FobSerial, Box: b.Name, Bin: k.HomeBin, boxID: k.HomeBoxID}
		if b.LocationID != nil {
			r.Location = locName[*b.LocationID]
		}
		rows = append(rows, r)
	}
	slices.SortStableFunc(rows, func(a, b sheetRow) int {
		return cmp.Or(cmp.Compare(a.Location, b.Location), cmp.Compare(a.Box, b.Box),
			cmp.Compare(a.boxID.String(), b.boxID.String()), cmp.Compare(a.Bin, b.Bin))
	})
	return d.render(c, "key_sheet", "Key data sheet", map[string]any{"Rows": rows, "GeneratedAt": d.now()})
}
