package accounts

import (
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/web"
)

// CookieName is the session cookie.
const CookieName = "keyrelay_session"

// Handlers serves the account calls of /api/v1. Handlers are thin: decode,
// call the service, encode.
type Handlers struct {
	svc *Service
	// secureCookie marks the session cookie Secure; set when the service is
	// reached over TLS (its base URL is https).
	secureCookie bool
}

// NewHandlers returns the account handlers.
func NewHandlers(svc *Service, secureCookie bool) *Handlers {
	return &Handlers{svc: svc, secureCookie: secureCookie}
}

// UserView is a user as the API shows it.
type UserView struct {
	ID       uuid.UUID    `json:"id"`
	Name     string       `json:"name"`
	Email    string       `json:"email"`
	Phone    *string      `json:"phone"`
	Role     tenants.Role `json:"role"`
	Disabled bool         `json:"disabled"`
	// LocationIDs are the locations the user is limited to; empty: all.
	LocationIDs []uuid.UUID `json:"location_ids"`
	CreatedAt   time.Time   `json:"created_at"`
}

func viewUser(u User) UserView {
	locs := u.LocationIDs
	if locs == nil {
		locs = []uuid.UUID{}
	}
	return UserView{ID: u.ID, Name: u.Name, Email: u.Email, Phone: u.Phone, Role: u.Role, Disabled: u.DisabledAt != nil, LocationIDs: locs, CreatedAt: u.CreatedAt.UTC()}
}

// Signup handles POST /signup.
func (h *Handlers) Signup(c *fiber.Ctx) error {
	var in SignupInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	t, u, err := h.svc.Signup(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(fiber.Map{"tenant_id": t.TenantID, "user_id": u.ID})
}

// Login handles POST /auth/login.
func (h *Handlers) Login(c *fiber.Ctx) error {
	var in LoginInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	in.UserAgent = c.Get(fiber.HeaderUserAgent)
	res, err := h.svc.Login(c.UserContext(), in)
	if err != nil {
		return err
	}
	if res.ChallengeID != "" {
		return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"challenge_id": res.ChallengeID, "channel": res.Channel})
	}
	return h.signedIn(c, res.Token, res.Session)
}

func (h *Handlers) signedIn(c *fiber.Ctx, tok string, sess Session) error {
	c.Cookie(&fiber.Cookie{Name: CookieName, Value: tok, Path: "/", Expires: sess.ExpiresAt, HTTPOnly: true, Secure: h.secureCookie, SameSite: fiber.CookieSameSiteLaxMode})
	return c.JSON(fiber.Map{"token": tok, "expires_at": sess.ExpiresAt.UTC()})
}

// VerifyLogin handles POST /auth/login/verify.
func (h *Handlers) VerifyLogin(c *fiber.Ctx) error {
	var in VerifyInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	in.UserAgent = c.Get(fiber.HeaderUserAgent)
	tok, sess, err := h.svc.VerifyLogin(c.UserContext(), in)
	if err != nil {
		return err
	}
	return h.signedIn(c, tok, sess)
}

type resendInput struct {
	ChallengeID string `json:"challenge_id"`
}

// ResendCode handles POST /auth/login/resend.
func (h *Handlers) ResendCode(c *fiber.Ctx) error {
	var in resendInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	if err := h.svc.ResendCode(c.UserContext(), in.ChallengeID); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusAccepted)
}

// GetMySecurity handles GET /me/security.
func (h *Handlers) GetMySecurity(c *fiber.Ctx) error {
	v, err := h.svc.MySecurityOf(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(v)
}

// PutMySecurity handles PUT /me/security.
func (h *Handlers) PutMySecurity(c *fiber.Ctx) error {
	var in SecurityInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	v, err := h.svc.UpdateMySecurity(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.JSON(v)
}

type passwordOnly struct {
	CurrentPassword string `json:"current_password"`
}

// StartTOTP handles POST /me/totp.
func (h *Handlers) StartTOTP(c *fiber.Ctx) error {
	var in passwordOnly
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	e, err := h.svc.StartTOTP(c.UserContext(), in.CurrentPassword)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(e)
}

type codeOnly struct {
	Code string `json:"code"`
}

// ConfirmTOTP handles POST /me/totp/confirm.
func (h *Handlers) ConfirmTOTP(c *fiber.Ctx) error {
	var in codeOnly
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	codes, err := h.svc.ConfirmTOTP(c.UserContext(), in.Code)
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"recovery_codes": codes})
}

// DisableTOTP handles DELETE /me/totp.
func (h *Handlers) DisableTOTP(c *fiber.Ctx) error {
	var in passwordOnly
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	if err := h.svc.DisableTOTP(c.UserContext(), in.CurrentPassword); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

type pinInput struct {
	PIN string `json:"pin"`
}

// SetPIN handles PUT /me/pin.
func (h *Handlers) SetPIN(c *fiber.Ctx) error {
	var in pinInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	if err := h.svc.SetPIN(c.UserContext(), in.PIN); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// GetPolicy handles GET /security.
func (h *Handlers) GetPolicy(c *fiber.Ctx) error {
	v, err := h.svc.GetPolicy(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(v)
}

// PutPolicy handles PUT /security.
func (h *Handlers) PutPolicy(c *fiber.Ctx) error {
	var in PolicyInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	v, err := h.svc.SetPolicy(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.JSON(v)
}

// Logout handles POST /auth/logout.
func (h *Handlers) Logout(c *fiber.Ctx) error {
	if err := h.svc.Logout(c.UserContext()); err != nil {
		return err
	}
	c.Cookie(&fiber.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1, Expires: time.Unix(0, 0), HTTPOnly: true, Secure: h.secureCookie, SameSite: fiber.CookieSameSiteLaxMode})
	return c.SendStatus(fiber.StatusNoContent)
}

type forgotInput struct {
	Email string `json:"email"`
}

// ForgotPassword handles POST /auth/password/forgot.
func (h *Handlers) ForgotPassword(c *fiber.Ctx) error {
	var in forgotInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	if err := h.svc.ForgotPassword(c.UserContext(), in.Email); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusAccepted)
}

type resetInput struct {
	Token       string `json:"token"`
	NewPassword string `json:"new_password"`
}

// ResetPassword handles POST /auth/password/reset.
func (h *Handlers) ResetPassword(c *fiber.Ctx) error {
	var in resetInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	if err := h.svc.ResetPassword(c.UserContext(), in.Token, in.NewPassword); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// Me handles GET /me.
func (h *Handlers) Me(c *fiber.Ctx) error {
	u, err := h.svc.Me(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(viewUser(u))
}

type changePasswordInput struct {
	CurrentPassword string `json:"current_password"`
	NewPassword     string `json:"new_password"`
}

// ChangePassword handles PUT /me/password.
func (h *Handlers) ChangePassword(c *fiber.Ctx) error {
	var in changePasswordInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	if err := h.svc.ChangePassword(c.UserContext(), in.CurrentPassword, in.NewPassword); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// ListUsers handles GET /users.
func (h *Handlers) ListUsers(c *fiber.Ctx) error {
	page, err := web.PageOf(c)
	if err != nil {
		return err
	}
	us, err := h.svc.ListUsers(c.UserContext(), page.After, page.Limit)
	if err != nil {
		return err
	}
	views := make([]UserView, len(us))
	for i, u := range us {
		views[i] = viewUser(u)
	}
	return c.JSON(web.NewList(views, page.Limit, func(v UserView) uuid.UUID { return v.ID }))
}

// CreateUser handles POST /users.
func (h *Handlers) CreateUser(c *fiber.Ctx) error {
	var in NewUserInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	u, err := h.svc.CreateUser(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(viewUser(u))
}

// GetUser handles GET /users/{id}.
func (h *Handlers) GetUser(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "user")
	if err != nil {
		return err
	}
	u, err := h.svc.GetUser(c.UserContext(), id)
	if err != nil {
		return err
	}
	return c.JSON(viewUser(u))
}

// UpdateUser handles PATCH /users/{id}.
func (h *Handlers) UpdateUser(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "user")
	if err != nil {
		return err
	}
	var in UserPatch
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	u, err := h.svc.UpdateUser(c.UserContext(), id, in)
	if err != nil {
		return err
	}
	return c.JSON(viewUser(u))
}

// CreateAPIKey handles POST /api-keys; the key is in the answer once.
func (h *Handlers) CreateAPIKey(c *fiber.Ctx) error {
	var in NewAPIKeyInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	k, tok, err := h.svc.CreateAPIKey(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(struct {
		APIKey
		Key string `json:"key"`
	}{utcKey(k), tok})
}

// ListAPIKeys handles GET /api-keys.
func (h *Handlers) ListAPIKeys(c *fiber.Ctx) error {
	ks, err := h.svc.ListAPIKeys(c.UserContext())
	if err != nil {
		return err
	}
	views := make([]APIKey, len(ks))
	for i, k := range ks {
		views[i] = utcKey(k)
	}
	return c.JSON(fiber.Map{"items": views})
}

// RevokeAPIKey handles DELETE /api-keys/{id}.
func (h *Handlers) RevokeAPIKey(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "API key")
	if err != nil {
		return err
	}
	if err := h.svc.RevokeAPIKey(c.UserContext(), id); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

func utcKey(k APIKey) APIKey {
	k.CreatedAt = k.CreatedAt.UTC()
	for _, t := range []**time.Time{&k.LastUsedAt, &k.RevokedAt} {
		if *t != nil {
			u := (*t).UTC()
			*t = &u
		}
	}
	return k
}
