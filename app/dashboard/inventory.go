package dashboard

import (
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/firmware/commands"
	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/inventory"
	"github.com/keyrelay/keyrelay/tenants/web"
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

// boxList reads the boxes through the API's own view, which carries each
// box's status (online, since, firmware, power, battery, open flags).
func (d *Dashboard) boxList(c *fiber.Ctx) error { return d.boxPage(c, nil, nil) }

func (d *Dashboard) boxPage(c *fiber.Ctx, err error, in map[string]string) error {
	var list web.List[inventory.BoxView]
	if lerr := bodyJSON(c, d.BoxViews.ListBoxes, nil, &list); lerr != nil {
		return d.fail(c, lerr, "", "", nil)
	}
	locs, lerr := d.Inventory.ListLocations(c.UserContext(), uuid.Nil, 200)
	if lerr != nil {
		return d.fail(c, lerr, "", "", nil)
	}
	locNames := map[uuid.UUID]string{}
	for _, l := range locs {
		locNames[l.ID] = l.Name
	}
	data := map[string]any{"Boxes": list.Items, "Locations": locs, "LocationNames": locNames, "In": in,
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

func (d *Dashboard) boxDetailData(c *fiber.Ctx) (map[string]any, error) {
	if _, err := pathID(c, "box"); err != nil {
		return nil, err
	}
	var b inventory.BoxDetail
	if err := bodyJSON(c, d.BoxViews.GetBox, nil, &b); err != nil {
		return nil, err
	}
	return map[string]any{"Box": b}, nil
}

func (d *Dashboard) boxDetail(c *fiber.Ctx) error {
	data, err := d.boxDetailData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	return d.render(c, "box", "Box", data)
}

// boxToken issues a provisioning token and shows it once; it is answered
// as a fragment to htmx and as the whole page otherwise.
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

// binRelease opens a bin from afar through the commands API handler, which
// checks the caller, the box and the bin, sends the command and audits it
// with the reason.
func (d *Dashboard) binRelease(c *fiber.Ctx) error {
	reason := strings.TrimSpace(c.FormValue("reason"))
	if c.FormValue("confirm") == "" {
		err := tenants.Invalid(tenants.FieldError{Field: "confirm", Message: "tick the box to confirm that the bin may open"})
		data, derr := d.boxDetailData(c)
		if derr != nil {
			return d.fail(c, derr, "", "", nil)
		}
		data["Bin"], _ = strconv.Atoi(c.Params("n"))
		return d.fail(c, err, "bin_release", "Release a bin", data)
	}
	var out commands.Released
	if err := bodyJSON(c, d.Commands.Release, commands.ReleaseInput{Reason: reason}, &out); err != nil {
		data, derr := d.boxDetailData(c)
		if derr != nil {
			return d.fail(c, err, "", "", nil)
		}
		data["Bin"], _ = strconv.Atoi(c.Params("n"))
		return d.fail(c, err, "bin_release", "Release a bin", data)
	}
	return done(c, "/boxes/"+c.Params("id"), "Bin "+strconv.Itoa(out.Bin)+" will open when the box picks up the command")
}

func (d *Dashboard) locationList(c *fiber.Ctx) error { return d.locationPage(c, nil, nil) }

func (d *Dashboard) locationPage(c *fiber.Ctx, err error, in map[string]string) error {
	locs, lerr := d.Inventory.ListLocations(c.UserContext(), uuid.Nil, 200)
	if lerr != nil {
		return d.fail(c, lerr, "", "", nil)
	}
	data := map[string]any{"Locations": locs, "In": in}
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
