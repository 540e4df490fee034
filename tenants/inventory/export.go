package inventory

import (
	"context"
	"encoding/csv"
	"io"
	"strconv"

	"github.com/keyrelay/keyrelay/tenants"
)

// sheetHeader is the first row of the key data sheet.
var sheetHeader = []string{"key_name", "fob_serial", "box", "bin", "location"}

// ExportKeys writes the key data sheet: one row per live key the caller
// sees, with its home box and bin and the box's location, ordered as a
// person walking the sites would read it (location, box, bin). With the
// offline backup codes it lets a business find its keys during an outage.
func (s *Service) ExportKeys(ctx context.Context, w io.Writer) error {
	p, err := staff(ctx)
	if err != nil {
		return err
	}
	tx, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	q := tx.Table("keys AS k").
		Select("k.name, k.fob_serial, b.name, k.home_bin, COALESCE(l.name, '')").
		Joins("JOIN boxes b ON b.tenant_id = k.tenant_id AND b.id = k.home_box_id").
		Joins("LEFT JOIN locations l ON l.tenant_id = b.tenant_id AND l.id = b.location_id").
		Where("k.deleted_at IS NULL").
		Order("l.name NULLS FIRST, b.name, b.id, k.home_bin")
	if p.Limited() {
		q = q.Where("b.location_id IN ?", p.Locations)
	}
	rows, err := q.Rows()
	if err != nil {
		return wrap("export keys", err)
	}
	defer rows.Close()
	cw := csv.NewWriter(w)
	if err := cw.Write(sheetHeader); err != nil {
		return wrap("write key sheet", err)
	}
	var name, fob, box, location string
	var bin int
	for rows.Next() {
		if err := rows.Scan(&name, &fob, &box, &bin, &location); err != nil {
			return wrap("export keys", err)
		}
		if err := cw.Write([]string{SafeCell(name), SafeCell(fob), SafeCell(box), strconv.Itoa(bin), SafeCell(location)}); err != nil {
			return wrap("write key sheet", err)
		}
	}
	if err := rows.Err(); err != nil {
		return wrap("export keys", err)
	}
	cw.Flush()
	return cw.Error()
}

// SafeCell keeps a spreadsheet from reading a cell as a formula: a cell
// starting with = + - @ tab or carriage return gets a leading apostrophe
// (OWASP, CSV injection). Quoting is left to encoding/csv.
func SafeCell(s string) string {
	if s == "" {
		return s
	}
	switch s[0] {
	case '=', '+', '-', '@', '\t', '\r':
		return "'" + s
	}
	return s
}
