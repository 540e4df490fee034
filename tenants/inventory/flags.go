package inventory

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/audit"
)

// Flag is an inventory mismatch a box reported (tenants/exchange raises
// them when a closed bin does not hold what the records say). It stays
// open until someone at the business has looked and resolves it.
type Flag struct {
	ID         uuid.UUID  `json:"id"`
	BoxID      uuid.UUID  `json:"box_id"`
	Bin        int        `json:"bin"`
	Kind       string     `json:"kind"` // wrong_bin, wrong_box, unknown_fob, missing_key
	KeyID      *uuid.UUID `json:"key_id"`
	FobSerial  *string    `json:"fob_serial"`
	Detail     string     `json:"detail"`
	CreatedAt  time.Time  `json:"created_at"`
	ResolvedAt *time.Time `json:"resolved_at"`
}

// TableName is the flags' table.
func (Flag) TableName() string { return "inventory_flags" }

func (f Flag) utc() Flag {
	f.CreatedAt = f.CreatedAt.UTC()
	f.ResolvedAt = utc(f.ResolvedAt)
	return f
}

// maxNote bounds a resolution note, as the other free-text reasons.
const maxNote = 500

const noteRule = "must be at most 500 characters of text"

// cleanNote trims a note left for the audit log and reports whether it is
// usable: at most 500 characters, line breaks allowed, other control
// characters not.
func cleanNote(note string) (string, bool) {
	note = strings.TrimSpace(note)
	return note, utf8.RuneCountInString(note) <= maxNote && utf8.ValidString(note) &&
		!strings.ContainsFunc(note, func(r rune) bool { return unicode.IsControl(r) && r != '\n' && r != '\r' })
}

// OpenFlags returns the unresolved flags of a box the caller sees, oldest
// first (the order the box found them in).
func (s *Service) OpenFlags(ctx context.Context, boxID uuid.UUID) ([]Flag, error) {
	p, err := staff(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := loadBox(ctx, p, boxID, ""); err != nil {
		return nil, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return nil, err
	}
	var fs []Flag
	if err := tx.Where("box_id = ? AND resolved_at IS NULL", boxID).Order("id").Limit(500).Find(&fs).Error; err != nil {
		return nil, wrap("list flags", err)
	}
	for i := range fs {
		fs[i] = fs[i].utc()
	}
	return fs, nil
}

// ResolveFlag marks a box's flag as looked at, with an optional note that
// goes to the audit log (the records were already corrected when the box
// reported: resolving acknowledges, it does not move keys; SetWhereabouts
// does, and resolves the key's flags itself). Staff and up,
// within their locations; a flag resolved already is a conflict, so that
// two people at the desk learn that someone else did it.
func (s *Service) ResolveFlag(ctx context.Context, boxID, flagID uuid.UUID, note string) (Flag, error) {
	p, err := staff(ctx)
	if err != nil {
		return Flag{}, err
	}
	note, ok := cleanNote(note)
	if !ok {
		return Flag{}, tenants.Invalid(tenants.FieldError{Field: "note", Message: noteRule})
	}
	if _, err := loadBox(ctx, p, boxID, ""); err != nil {
		return Flag{}, err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return Flag{}, err
	}
	var f Flag
	err = tx.Clauses(clause.Locking{Strength: "UPDATE"}).Where("id = ? AND box_id = ?", flagID, boxID).Take(&f).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return Flag{}, tenants.NotFound("flag")
	}
	if err != nil {
		return Flag{}, wrap("load flag", err)
	}
	if f.ResolvedAt != nil {
		return Flag{}, tenants.Errorf(tenants.EConflict, "this flag was resolved already, at %s", f.ResolvedAt.UTC().Format(time.RFC3339))
	}
	now := s.now()
	if err := tx.Model(&Flag{}).Where("id = ?", f.ID).Update("resolved_at", now).Error; err != nil {
		return Flag{}, wrap("resolve flag", err)
	}
	f.ResolvedAt = &now
	details := map[string]string{"flag": f.ID.String(), "kind": f.Kind, "bin": strconv.Itoa(f.Bin)}
	if note != "" {
		details["note"] = note
	}
	if err := audit.Record(ctx, p.Actor(), "inventory.flag_resolved", "box:"+boxID.String(), details); err != nil {
		return Flag{}, err
	}
	return f.utc(), nil
}
