package bookings

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// AliasCode is a code a business gives a customer before it knows which key
// they will get (a hotel sends "your code is …" a week ahead and picks the
// room on arrival day). It opens nothing until a booking takes it as its
// code (POST /bookings with alias_code_id); it links to one live booking at
// a time, and is free again when that booking ends or is revoked.
//
// Retiring an alias frees its digits for other codes. An alias linked to a
// live booking cannot be retired (409): the booking's code would vanish
// under a visitor who may be standing at the box. Revoke the booking first.
type AliasCode struct {
	TenantID     uuid.UUID `gorm:"primaryKey"`
	ID           uuid.UUID `gorm:"primaryKey"`
	CodeID       uuid.UUID
	VisitorName  string
	VisitorPhone *string
	VisitorEmail *string
	NotifyVia    outbox.Channel
	BookingID    *uuid.UUID
	CreatedBy    string
	CreatedAt    time.Time
	SentAt       *time.Time
	RetiredAt    *time.Time
}

func (AliasCode) TableName() string { return "alias_codes" }

// AliasStatus is where an alias code stands.
type AliasStatus string

const (
	AliasFree    AliasStatus = "free"    // may be linked to a booking
	AliasLinked  AliasStatus = "linked"  // the code of a live booking
	AliasRetired AliasStatus = "retired" // gone; its digits may be reused
)

// aliasRow is an alias code with the live booking it is linked to, if any,
// and that booking's location.
type aliasRow struct {
	AliasCode      `gorm:"embedded"`
	LiveBookingID  *uuid.UUID
	LiveLocationID *uuid.UUID
}

func (a aliasRow) status() AliasStatus {
	switch {
	case a.RetiredAt != nil:
		return AliasRetired
	case a.LiveBookingID != nil:
		return AliasLinked
	default:
		return AliasFree
	}
}

// visibleTo reports whether p may see a: an alias linked to a live booking
// of another location is that booking's code, so a limited staff user must
// not read it.
func (a aliasRow) visibleTo(p tenants.Principal) bool {
	return a.LiveBookingID == nil || p.Sees(a.LiveLocationID)
}

const selectAliases = `SELECT a.*, bk.id AS live_booking_id, bx.location_id AS live_location_id
	FROM alias_codes a
	LEFT JOIN bookings bk ON bk.tenant_id = a.tenant_id AND bk.id = a.booking_id AND ` + liveSQL + `
	LEFT JOIN keys k ON k.tenant_id = bk.tenant_id AND k.id = bk.key_id
	LEFT JOIN boxes bx ON bx.tenant_id = k.tenant_id AND bx.id = k.home_box_id`

// loadAlias returns alias id when p sees it; forUpdate locks the alias row
// until the transaction ends (linking and retiring take turns).
func (s *Service) loadAlias(ctx context.Context, p tenants.Principal, id uuid.UUID, forUpdate bool) (aliasRow, bool, error) {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return aliasRow{}, false, err
	}
	if forUpdate {
		// The lock is taken on its own, and the alias read after it by a
		// new statement: a locking read that waited for a concurrent link
		// would re-check only the alias row, not the booking it joined, and
		// see the alias free although it was just taken.
		if err := tx.Exec("SELECT 1 FROM alias_codes WHERE id = ? FOR UPDATE", id).Error; err != nil {
			return aliasRow{}, false, wrap("lock alias code", err)
		}
	}
	var rs []aliasRow
	if err := tx.Raw(selectAliases+" WHERE a.id = @id", map[string]any{"id": id, "now": s.now()}).Scan(&rs).Error; err != nil {
		return aliasRow{}, false, wrap("load alias code", err)
	}
	if len(rs) == 0 || !rs[0].visibleTo(p) {
		return aliasRow{}, false, nil
	}
	return rs[0], true, nil
}

// lockAliasForLink returns alias id, locked, when a new booking may take it.
func (s *Service) lockAliasForLink(ctx context.Context, p tenants.Principal, id uuid.UUID) (AliasCode, error) {
	a, ok, err := s.loadAlias(ctx, p, id, true)
	switch {
	case err != nil:
		return AliasCode{}, err
	case !ok:
		return AliasCode{}, tenants.Invalid(tenants.FieldError{Field: "alias_code_id", Message: "names no alias code of this tenant"})
	case a.RetiredAt != nil:
		return AliasCode{}, tenants.Errorf(tenants.EConflict, "the alias code was retired")
	case a.LiveBookingID != nil:
		return AliasCode{}, tenants.Errorf(tenants.EConflict, "the alias code is the code of live booking %s; an alias links to one live booking at a time", *a.LiveBookingID)
	}
	return a.AliasCode, nil
}

func linkAlias(ctx context.Context, aliasID, bookingID uuid.UUID) error {
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	if err := tx.Model(&AliasCode{}).Where("id = ?", aliasID).Update("booking_id", bookingID).Error; err != nil {
		return wrap("link alias code", err)
	}
	return nil
}

// NewAliasInput creates an alias code: Code chosen by the business (digits,
// see minAliasDigits), or drawn when empty; Send mails or texts it to the
// visitor at once.
type NewAliasInput struct {
	Code      *string        `json:"code"`
	Visitor   *Visitor       `json:"visitor"`
	NotifyVia outbox.Channel `json:"notify_via"`
	Send      bool           `json:"send"`
}

// CreateAlias stores a new alias code; 409 when the chosen code is live
// already (as a booking's code or another alias).
func (s *Service) CreateAlias(ctx context.Context, in NewAliasInput) (AliasView, error) {
	p, err := staff(ctx)
	if err != nil {
		return AliasView{}, err
	}
	var v tenants.Validator
	var visitor Visitor
	if in.Visitor == nil {
		v.Add("visitor", "is required: {name, phone, email}")
		checkChannel(&v, in.NotifyVia)
	} else {
		visitor = *in.Visitor
		visitor.validate(&v, in.NotifyVia)
	}
	chosen := in.Code != nil && strings.TrimSpace(*in.Code) != ""
	if chosen {
		*in.Code = strings.TrimSpace(*in.Code)
		if msg := checkChosenCode(*in.Code); msg != "" {
			v.Add("code", msg)
		}
	}
	if err := v.Err(); err != nil {
		return AliasView{}, err
	}
	var codeID uuid.UUID
	var code string
	if chosen {
		code = *in.Code
		codeID, err = s.claimCode(ctx, code)
	} else {
		codeID, code, err = s.drawCode(ctx)
	}
	if err != nil {
		return AliasView{}, err
	}
	now := s.now()
	a := AliasCode{TenantID: mustTenant(ctx), ID: newID(), CodeID: codeID, VisitorName: visitor.Name, VisitorPhone: visitor.Phone,
		VisitorEmail: visitor.Email, NotifyVia: in.NotifyVia, CreatedBy: p.Actor(), CreatedAt: now}
	if in.Send {
		a.SentAt = &now
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return AliasView{}, err
	}
	if err := tx.Create(&a).Error; err != nil {
		return AliasView{}, wrap("create alias code", err)
	}
	if in.Send {
		company, err := s.msgs.Company(ctx)
		if err != nil {
			return AliasView{}, err
		}
		_, err = s.msgs.Add(ctx, outbox.Message{Kind: kindAlias, Channel: a.NotifyVia, Recipient: recipient(a.VisitorPhone, a.VisitorEmail, a.NotifyVia),
			Data: map[string]string{"name": a.VisitorName, "company": company, "code": code}})
		if err != nil {
			return AliasView{}, wrap("queue alias code", err)
		}
	}
	err = audit.Record(ctx, p.Actor(), "alias_code.created", "alias_code:"+a.ID.String(),
		map[string]string{"chosen": fmt.Sprint(chosen), "sent": fmt.Sprint(in.Send), "notify_via": string(a.NotifyVia)})
	if err != nil {
		return AliasView{}, err
	}
	return aliasView(aliasRow{AliasCode: a}, code), nil
}

// GetAlias returns one alias code with its digits.
func (s *Service) GetAlias(ctx context.Context, id uuid.UUID) (AliasView, error) {
	p, err := staff(ctx)
	if err != nil {
		return AliasView{}, err
	}
	a, ok, err := s.loadAlias(ctx, p, id, false)
	if err != nil {
		return AliasView{}, err
	}
	if !ok {
		return AliasView{}, tenants.NotFound("alias code")
	}
	code, err := s.openCode(ctx, a.CodeID)
	if err != nil {
		return AliasView{}, err
	}
	return aliasView(a, code), nil
}

// ListAliases returns a page of the alias codes p sees, newest first,
// without their digits.
func (s *Service) ListAliases(ctx context.Context, after uuid.UUID, limit int) ([]AliasView, error) {
	p, err := staff(ctx)
	if err != nil {
		return nil, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	args := map[string]any{"now": s.now(), "limit": limit}
	where := []string{"true"}
	if after != uuid.Nil {
		where, args["after"] = append(where, "a.id < @after"), after
	}
	if p.Limited() {
		where, args["locations"] = append(where, "(bk.id IS NULL OR bx.location_id IN @locations)"), p.Locations
	}
	var rs []aliasRow
	q := selectAliases + " WHERE " + strings.Join(where, " AND ") + " ORDER BY a.id DESC LIMIT @limit"
	if err := tx.Raw(q, args).Scan(&rs).Error; err != nil {
		return nil, wrap("list alias codes", err)
	}
	views := make([]AliasView, len(rs))
	for i, a := range rs {
		views[i] = aliasView(a, "")
	}
	return views, nil
}

// RetireAlias retires an alias code and frees its digits. Retiring twice
// changes nothing; an alias that is a live booking's code is refused (409).
func (s *Service) RetireAlias(ctx context.Context, id uuid.UUID) error {
	p, err := staff(ctx)
	if err != nil {
		return err
	}
	a, ok, err := s.loadAlias(ctx, p, id, true)
	switch {
	case err != nil:
		return err
	case !ok:
		return tenants.NotFound("alias code")
	case a.RetiredAt != nil:
		return nil
	case a.LiveBookingID != nil:
		return tenants.Errorf(tenants.EConflict, "the alias code is the code of live booking %s: revoke the booking first", *a.LiveBookingID)
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	now := s.now()
	if err := tx.Model(&AliasCode{}).Where("id = ?", id).Update("retired_at", now).Error; err != nil {
		return wrap("retire alias code", err)
	}
	if err := tx.Model(&codeRow{}).Where("id = ? AND freed_at IS NULL", a.CodeID).Update("freed_at", now).Error; err != nil {
		return wrap("free alias code", err)
	}
	return audit.Record(ctx, p.Actor(), "alias_code.retired", "alias_code:"+id.String(), nil)
}
