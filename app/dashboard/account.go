package dashboard

import (
	"net/url"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/accounts"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// securityData is More → Security: the caller's own settings, and the
// tenant's key-exchange policy for admins.
func (d *Dashboard) securityData(c *fiber.Ctx) (map[string]any, error) {
	ctx := c.UserContext()
	me, err := d.Accounts.MySecurityOf(ctx)
	if err != nil {
		return nil, err
	}
	// Everyone sees whether the business uses PINs (the PIN form is only
	// shown then); admins see and change the policy itself.
	pol, err := d.Accounts.PolicyOf(ctx)
	if err != nil {
		return nil, err
	}
	data := map[string]any{"Me": me, "PINsUsed": pol.VisitorPickups == "pin", "PickupsBy": pol.VisitorPickups}
	if p, err := tenants.PrincipalFrom(ctx); err == nil && p.Role.AtLeast(tenants.RoleAdmin) {
		pol, err := d.Accounts.GetPolicy(ctx)
		if err != nil {
			return nil, err
		}
		data["Policy"] = pol
	}
	return data, nil
}

func (d *Dashboard) securityPage(c *fiber.Ctx) error {
	data, err := d.securityData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	return d.render(c, "security", "Security", data)
}

// securityForm runs one of the Security page's forms; section names the
// form whose error is shown.
func (d *Dashboard) securityForm(c *fiber.Ctx, section string, act func() (map[string]any, error), msg string) error {
	extra, err := act()
	if err != nil {
		data, derr := d.securityData(c)
		if derr != nil {
			return d.fail(c, err, "", "", nil)
		}
		data["Section"] = section
		return d.fail(c, err, "security", "Security", data)
	}
	if extra != nil {
		data, derr := d.securityData(c)
		if derr != nil {
			return d.fail(c, derr, "", "", nil)
		}
		for k, v := range extra {
			data[k] = v
		}
		return d.render(c, "security", "Security", data)
	}
	return done(c, "/security", msg)
}

func (d *Dashboard) changePassword(c *fiber.Ctx) error {
	return d.securityForm(c, "password", func() (map[string]any, error) {
		return nil, d.Accounts.ChangePassword(c.UserContext(), c.FormValue("current_password"), c.FormValue("new_password"))
	}, "Your password is changed")
}

func (d *Dashboard) setLogin2FA(c *fiber.Ctx) error {
	on := c.FormValue("login_2fa") != ""
	msg := "Login 2FA is on"
	if !on {
		msg = "Login 2FA is off"
	}
	return d.securityForm(c, "login_2fa", func() (map[string]any, error) {
		_, err := d.Accounts.UpdateMySecurity(c.UserContext(), accounts.SecurityInput{CurrentPassword: c.FormValue("current_password"), Login2FA: &on})
		return nil, err
	}, msg)
}

func (d *Dashboard) startTOTP(c *fiber.Ctx) error {
	return d.securityForm(c, "totp", func() (map[string]any, error) {
		e, err := d.Accounts.StartTOTP(c.UserContext(), c.FormValue("current_password"))
		if err != nil {
			return nil, err
		}
		return map[string]any{"Enrolment": e}, nil
	}, "")
}

func (d *Dashboard) confirmTOTP(c *fiber.Ctx) error {
	return d.securityForm(c, "totp_confirm", func() (map[string]any, error) {
		codes, err := d.Accounts.ConfirmTOTP(c.UserContext(), c.FormValue("code"))
		if err != nil {
			return nil, err
		}
		return map[string]any{"RecoveryCodes": codes}, nil
	}, "")
}

// removeTOTP goes back to sign-in codes by SMS (or email), with the
// current password.
func (d *Dashboard) removeTOTP(c *fiber.Ctx) error {
	return d.securityForm(c, "totp_remove", func() (map[string]any, error) {
		return nil, d.Accounts.DisableTOTP(c.UserContext(), c.FormValue("current_password"))
	}, "The authenticator app is removed: sign-in codes are sent to you again")
}

func (d *Dashboard) setPolicy(c *fiber.Ctx) error {
	owner2FA := c.FormValue("owner_pickups_2fa") != ""
	visitors := c.FormValue("visitor_pickups")
	return d.securityForm(c, "policy", func() (map[string]any, error) {
		_, err := d.Accounts.SetPolicy(c.UserContext(), accounts.PolicyInput{OwnerPickups2FA: &owner2FA, VisitorPickups: &visitors})
		return nil, err
	}, "Key-exchange settings saved")
}

func (d *Dashboard) setPIN(c *fiber.Ctx) error {
	return d.securityForm(c, "pin", func() (map[string]any, error) {
		return nil, d.Accounts.SetPIN(c.UserContext(), c.FormValue("pin"))
	}, "Your PIN is set")
}

func (d *Dashboard) apiKeyList(c *fiber.Ctx) error { return d.apiKeyPage(c, nil, nil) }

func (d *Dashboard) apiKeyPage(c *fiber.Ctx, err error, extra map[string]any) error {
	ks, lerr := d.Accounts.ListAPIKeys(c.UserContext())
	if lerr != nil {
		return d.fail(c, lerr, "", "", nil)
	}
	data := map[string]any{"Keys": ks, "Roles": []tenants.Role{tenants.RoleStaff, tenants.RoleAdmin}}
	for k, v := range extra {
		data[k] = v
	}
	if err != nil {
		return d.fail(c, err, "api_keys", "API keys", data)
	}
	return d.render(c, "api_keys", "API keys", data)
}

func (d *Dashboard) apiKeyCreate(c *fiber.Ctx) error {
	k, tok, err := d.Accounts.CreateAPIKey(c.UserContext(), accounts.NewAPIKeyInput{Name: c.FormValue("name"), Role: tenants.Role(c.FormValue("role"))})
	if err != nil {
		return d.apiKeyPage(c, err, nil)
	}
	// Shown once, in this answer (not through a redirect that would put it
	// in a URL).
	return d.apiKeyPage(c, nil, map[string]any{"NewKey": tok, "NewKeyName": k.Name})
}

func (d *Dashboard) apiKeyRevoke(c *fiber.Ctx) error {
	id, err := pathID(c, "API key")
	if err == nil {
		err = d.Accounts.RevokeAPIKey(c.UserContext(), id)
	}
	if err != nil {
		return d.apiKeyPage(c, err, nil)
	}
	return done(c, "/api-keys", "API key revoked")
}

func (d *Dashboard) userList(c *fiber.Ctx) error { return d.userPage(c, nil, nil) }

func (d *Dashboard) userPage(c *fiber.Ctx, err error, in map[string]string) error {
	ctx := c.UserContext()
	us, lerr := d.Accounts.ListUsers(ctx, uuid.Nil, 200)
	if lerr != nil {
		return d.fail(c, lerr, "", "", nil)
	}
	locs, lerr := d.Inventory.ListLocations(ctx, uuid.Nil, 200)
	if lerr != nil {
		return d.fail(c, lerr, "", "", nil)
	}
	names := map[uuid.UUID]string{}
	for _, l := range locs {
		names[l.ID] = l.Name
	}
	data := map[string]any{"Users": us, "Locations": locs, "LocationNames": names, "In": in,
		"Roles": []tenants.Role{tenants.RoleStaff, tenants.RoleAdmin, tenants.RoleOwner}}
	if err != nil {
		return d.fail(c, err, "users", "Users", data)
	}
	return d.render(c, "users", "Users", data)
}

// formLocations reads the ticked locations of a user form; an id that
// does not parse is kept as the nil id, which the service refuses as a
// location that does not exist rather than dropping it silently.
func formLocations(c *fiber.Ctx) []uuid.UUID {
	locs := []uuid.UUID{}
	for _, s := range c.Request().PostArgs().PeekMulti("location_ids") {
		id, _ := uuid.Parse(string(s))
		locs = append(locs, id)
	}
	return locs
}

func (d *Dashboard) userCreate(c *fiber.Ctx) error {
	in := formMap(c, "name", "email", "phone", "role")
	locs := formLocations(c)
	u, err := d.Accounts.CreateUser(c.UserContext(), accounts.NewUserInput{Name: in["name"], Email: in["email"], Phone: optional(in["phone"]), Role: tenants.Role(in["role"]), LocationIDs: locs})
	if err != nil {
		return d.userPage(c, err, in)
	}
	return done(c, "/users", u.Name+" is invited: they get an email to choose a password")
}

// userEditData is a user's edit page; the roles offered are those the
// caller may give (only an owner makes owners), the service checks again.
func (d *Dashboard) userEditData(c *fiber.Ctx) (map[string]any, error) {
	id, err := pathID(c, "user")
	if err != nil {
		return nil, err
	}
	ctx := c.UserContext()
	u, err := d.Accounts.GetUser(ctx, id)
	if err != nil {
		return nil, err
	}
	p, err := tenants.Require(ctx, tenants.RoleAdmin)
	if err != nil {
		return nil, err
	}
	locs, err := d.Inventory.ListLocations(ctx, uuid.Nil, 200)
	if err != nil {
		return nil, err
	}
	roles := []tenants.Role{tenants.RoleStaff, tenants.RoleAdmin}
	if p.Role == tenants.RoleOwner {
		roles = append(roles, tenants.RoleOwner)
	}
	chosen := map[uuid.UUID]bool{}
	for _, l := range u.LocationIDs {
		chosen[l] = true
	}
	return map[string]any{"User": u, "Self": u.ID == p.UserID, "Roles": roles, "Locations": locs, "Chosen": chosen,
		"In": map[string]string{"name": u.Name, "phone": deref(u.Phone), "role": string(u.Role)}}, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func (d *Dashboard) userEdit(c *fiber.Ctx) error {
	data, err := d.userEditData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	return d.render(c, "user_edit", "Edit user", data)
}

// userUpdate sends only what changed, so that the audit log says what
// the admin did and the role rules (not your own role, only owners touch
// owners, one owner left) apply to real changes only.
func (d *Dashboard) userUpdate(c *fiber.Ctx) error {
	data, err := d.userEditData(c)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	u := data["User"].(accounts.User)
	in := formMap(c, "name", "phone", "role", "disabled")
	locs := formLocations(c)
	chosen := map[uuid.UUID]bool{}
	for _, l := range locs {
		chosen[l] = true
	}
	data["In"], data["Chosen"] = in, chosen
	var patch accounts.UserPatch
	if in["name"] != u.Name {
		patch.Name = ptr(in["name"])
	}
	if phone := strings.TrimSpace(in["phone"]); phone != deref(u.Phone) {
		patch.Phone = &phone
	}
	if role := tenants.Role(in["role"]); role != u.Role {
		patch.Role = &role
	}
	if disabled := in["disabled"] != ""; disabled != (u.DisabledAt != nil) {
		patch.Disabled = &disabled
	}
	// Ticked locations go with a role change, so that promoting a limited
	// user with the limit still ticked is refused by the service's rule
	// rather than lifting the limit unseen.
	if !sameLocations(locs, u.LocationIDs) || patch.Role != nil && len(locs) > 0 {
		patch.LocationIDs = &locs
	}
	if _, err := d.Accounts.UpdateUser(c.UserContext(), u.ID, patch); err != nil {
		return d.fail(c, err, "user_edit", "Edit user", data)
	}
	return done(c, "/users", strings.TrimSpace(in["name"])+" saved")
}

func sameLocations(a, b []uuid.UUID) bool {
	if len(a) != len(b) {
		return false
	}
	in := map[uuid.UUID]bool{}
	for _, id := range b {
		in[id] = true
	}
	for _, id := range a {
		if !in[id] {
			return false
		}
	}
	return true
}

// messageList is what went out, to whom, with its status. The outbox and
// audit reads do not check roles themselves (their API routes do), so the
// pages do.
func (d *Dashboard) messageList(c *fiber.Ctx) error {
	ctx := c.UserContext()
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return d.fail(c, err, "", "", nil)
	}
	f := outbox.Filter{Status: outbox.Status(c.Query("status")), Channel: outbox.Channel(c.Query("channel")), Limit: pageSize}
	f.After = cursor(c)
	rows, err := d.Outbox.Messages(ctx, f)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	filters := []string{"status", string(f.Status), "channel", string(f.Channel)}
	data := map[string]any{"Messages": rows, "Filter": f, "First": f.After == uuid.Nil, "Newest": newestLink("/messages", filters...)}
	if len(rows) == pageSize {
		data["Next"] = olderLink("/messages", rows[len(rows)-1].ID, filters...)
	}
	return d.render(c, "messages", "Messages", data)
}

func (d *Dashboard) auditList(c *fiber.Ctx) error {
	ctx := c.UserContext()
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return d.fail(c, err, "", "", nil)
	}
	after := cursor(c)
	evs, err := audit.List(ctx, audit.Filter{Action: c.Query("action"), After: after, Limit: pageSize})
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	data := map[string]any{"Events": evs, "Action": c.Query("action"), "First": after == uuid.Nil, "Newest": newestLink("/audit", "action", c.Query("action"))}
	if len(evs) == pageSize {
		data["Next"] = olderLink("/audit", evs[len(evs)-1].ID, "action", c.Query("action"))
	}
	return d.render(c, "audit", "Audit", data)
}

// cursor reads a list page's ?cursor= (the id of the last row of the page
// before); anything else starts from the newest.
func cursor(c *fiber.Ctx) uuid.UUID {
	id, _ := uuid.Parse(c.Query("cursor"))
	return id
}

// olderLink is the "Older" link of a list: its filters, and the cursor
// after the page's last row.
func olderLink(path string, last uuid.UUID, filters ...string) string {
	return listLink(path, url.Values{"cursor": {last.String()}}, filters)
}

// newestLink is the "Newest" link of a list's older pages: its filters,
// no cursor.
func newestLink(path string, filters ...string) string {
	return listLink(path, url.Values{}, filters)
}

func listLink(path string, q url.Values, filters []string) string {
	for i := 0; i+1 < len(filters); i += 2 {
		if filters[i+1] != "" {
			q.Set(filters[i], filters[i+1])
		}
	}
	if len(q) == 0 {
		return path
	}
	return path + "?" + q.Encode()
}
