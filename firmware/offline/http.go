package offline

import (
	"bytes"
	"encoding/csv"
	"html/template"
	"io"
	"strconv"

	"github.com/gofiber/fiber/v2"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/inventory"
	"github.com/keyrelay/keyrelay/tenants/web"
)

// Handlers serve the offline-code calls of /api/v1.
type Handlers struct{ svc *Service }

// NewHandlers returns the handlers.
func NewHandlers(svc *Service) *Handlers { return &Handlers{svc: svc} }

// Sheet handles GET /api/v1/boxes/{id}/offline-codes: the printable sheet
// as an HTML page (default) or a CSV file (?format=csv).
func (h *Handlers) Sheet(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "box")
	if err != nil {
		return err
	}
	format := c.Query("format", "html")
	if format != "html" && format != "csv" {
		return tenants.Invalid(tenants.FieldError{Field: "format", Message: "must be html or csv"})
	}
	sh, err := h.svc.Sheet(c.UserContext(), id, format)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	name := "offline-codes-" + sh.BoxID.String()[:8] + "-" + sh.GeneratedAt.Format("2006-01-02")
	if format == "csv" {
		if err := WriteCSV(&buf, sh); err != nil {
			return err
		}
		c.Set(fiber.HeaderContentType, "text/csv; charset=utf-8")
		c.Set(fiber.HeaderContentDisposition, `attachment; filename="`+name+`.csv"`)
	} else {
		if err := sheetPage.Execute(&buf, sh); err != nil {
			return err
		}
		c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
		c.Set(fiber.HeaderContentDisposition, `inline; filename="`+name+`.html"`)
		// The page holds codes that open bins: no script, no framing, no
		// outside resources.
		c.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Send(buf.Bytes())
}

// csvHeader is the first row of the CSV sheet.
var csvHeader = []string{"box", "location", "bin", "backup_code", "counter", "key_name", "fob_serial"}

// WriteCSV writes the sheet, one row per bin after the open-all code, with
// the key data sheet's cells made safe for spreadsheets the same way.
func WriteCSV(w io.Writer, sh Sheet) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return err
	}
	for _, r := range sh.Rows {
		bin := strconv.Itoa(r.Bin)
		if r.Bin == AllBins {
			bin = "all"
		}
		if err := cw.Write([]string{inventory.SafeCell(sh.BoxName), inventory.SafeCell(sh.Location), bin, r.Code,
			strconv.FormatUint(r.Counter, 10), inventory.SafeCell(r.KeyName), inventory.SafeCell(r.FobSerial)}); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

var sheetPage = template.Must(template.New("sheet").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Offline codes — {{.BoxName}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;color:#000}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #444;padding:.35rem .6rem;text-align:left}
td.code{font-family:ui-monospace,monospace;font-size:1.2rem;letter-spacing:.08em}
.note{font-size:.9rem}
@media print{body{margin:0}.note{page-break-inside:avoid}}
</style></head><body>
<h1>Offline backup codes: {{.BoxName}}</h1>
<p>{{if .Location}}Location: {{.Location}}. {{end}}Generated {{.GeneratedAt.Format "2006-01-02 15:04 MST"}}.</p>
<p class="note">Each code opens its bin (or, on the first line, every bin) once, when the box is offline and nothing else works. Type it on the box's keypad. Once used it is spent: after the box reconnects and syncs, a new sheet shows the next code. Keep this sheet locked away; its download is recorded in the audit log.</p>
<table><thead><tr><th>Bin</th><th>Backup code</th><th>Key</th><th>Fob serial</th></tr></thead><tbody>
{{range .Rows}}<tr><td>{{if eq .Bin 0}}All bins{{else}}{{.Bin}}{{end}}</td><td class="code">{{.Code}}</td><td>{{.KeyName}}</td><td>{{.FobSerial}}</td></tr>
{{end}}</tbody></table>
</body></html>
`))

// Derive handles POST /api/v1/bookings/{id}/offline-code.
func (h *Handlers) Derive(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "booking")
	if err != nil {
		return err
	}
	d, err := h.svc.Derive(c.UserContext(), id)
	if err != nil {
		return err
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Status(fiber.StatusCreated).JSON(d)
}
