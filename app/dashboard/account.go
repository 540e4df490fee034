package dashboard

import (
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
	data := map[string]any{"Me": me}
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

func (d *Dashboard) userCreate(c *fiber.Ctx) error {
	in := formMap(c, "name", "email", "phone", "role")
	var locs []uuid.UUID
	for _, s := range c.Request().PostArgs().PeekMulti("location_ids") {
		if id, err := uuid.Parse(string(s)); err == nil {
			locs = append(locs, id)
		}
	}
	u, err := d.Accounts.CreateUser(c.UserContext(), accounts.NewUserInput{Name: in["name"], Email: in["email"], Phone: optional(in["phone"]), Role: tenants.Role(in["role"]), LocationIDs: locs})
	if err != nil {
		return d.userPage(c, err, in)
	}
	return done(c, "/users", u.Name+" is invited: they get an email to choose a password")
}

// messageList is what went out, to whom, with its status. The outbox and
// audit reads do not check roles themselves (their API routes do), so the
// pages do.
func (d *Dashboard) messageList(c *fiber.Ctx) error {
	ctx := c.UserContext()
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return d.fail(c, err, "", "", nil)
	}
	f := outbox.Filter{Status: outbox.Status(c.Query("status")), Channel: outbox.Channel(c.Query("channel")), Limit: 100}
	rows, err := d.Outbox.Messages(ctx, f)
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	return d.render(c, "messages", "Messages", map[string]any{"Messages": rows, "Filter": f})
}

func (d *Dashboard) auditList(c *fiber.Ctx) error {
	ctx := c.UserContext()
	if _, err := tenants.Require(ctx, tenants.RoleAdmin); err != nil {
		return d.fail(c, err, "", "", nil)
	}
	evs, err := audit.List(ctx, audit.Filter{Action: c.Query("action"), Limit: 100})
	if err != nil {
		return d.fail(c, err, "", "", nil)
	}
	return d.render(c, "audit", "Audit", map[string]any{"Events": evs, "Action": c.Query("action")})
}
