package releases

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/web"
)

// Handlers serve the platform operator's calls (/api/v1/platform), the
// tenant's (/api/v1/firmware) and the box's (/box/v1/firmware).
type Handlers struct{ svc *Service }

// NewHandlers returns the handlers.
func NewHandlers(svc *Service) *Handlers { return &Handlers{svc: svc} }

// CreateRelease handles POST /api/v1/platform/firmware/releases.
func (h *Handlers) CreateRelease(c *fiber.Ctx) error {
	var in NewRelease
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	r, err := h.svc.CreateRelease(c.UserContext(), OperatorActor, in)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(r)
}

// ListReleases handles GET /api/v1/platform/firmware/releases.
func (h *Handlers) ListReleases(c *fiber.Ctx) error {
	page, err := web.PageOf(c)
	if err != nil {
		return err
	}
	rs, err := h.svc.ListReleases(c.UserContext(), c.Query("model"), page.After, page.Limit)
	if err != nil {
		return err
	}
	return c.JSON(web.NewList(rs, page.Limit, func(r ReleaseView) uuid.UUID { return r.ID }))
}

// GetRelease handles GET /api/v1/platform/firmware/releases/{id}.
func (h *Handlers) GetRelease(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "release")
	if err != nil {
		return err
	}
	r, err := h.svc.GetRelease(c.UserContext(), id)
	if err != nil {
		return err
	}
	return c.JSON(r)
}

// UploadArtifact handles PUT /api/v1/platform/firmware/releases/{id}/artifact:
// one chunk, application/octet-stream, placed by Content-Range
// ("bytes 0-1048575/7340032"); without Content-Range the body is the
// whole artifact.
func (h *Handlers) UploadArtifact(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "release")
	if err != nil {
		return err
	}
	if ct := c.Get(fiber.HeaderContentType); !strings.HasPrefix(ct, "application/octet-stream") {
		return &tenants.Error{Code: tenants.EInvalid, Message: "send the artifact as application/octet-stream",
			Fields: []tenants.FieldError{{Field: "Content-Type", Message: "must be application/octet-stream"}}}
	}
	body := c.Body()
	at, total := int64(0), int64(-1)
	if cr := c.Get(fiber.HeaderContentRange); cr != "" {
		first, last, size, ok := parseContentRange(cr)
		if !ok || last-first+1 != int64(len(body)) {
			return tenants.Invalid(tenants.FieldError{Field: "Content-Range", Message: "must be bytes FIRST-LAST/TOTAL matching the body's length"})
		}
		at, total = first, size
	}
	r, err := h.svc.Upload(c.UserContext(), id, at, total, bytes.NewReader(body), int64(len(body)))
	if err != nil {
		return err
	}
	return c.JSON(r)
}

func parseContentRange(s string) (first, last, total int64, ok bool) {
	rest, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	span, size, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(span, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err1, err2, err3 error
	first, err1 = strconv.ParseInt(a, 10, 64)
	last, err2 = strconv.ParseInt(b, 10, 64)
	total, err3 = strconv.ParseInt(size, 10, 64)
	ok = err1 == nil && err2 == nil && err3 == nil && first >= 0 && last >= first && total > last
	return first, last, total, ok
}

// Publish handles POST /api/v1/platform/firmware/releases/{id}/publish.
func (h *Handlers) Publish(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "release")
	if err != nil {
		return err
	}
	r, err := h.svc.Publish(c.UserContext(), id)
	if err != nil {
		return err
	}
	return c.JSON(r)
}

// CreateRollout handles POST /api/v1/platform/rollouts.
func (h *Handlers) CreateRollout(c *fiber.Ctx) error {
	var in NewRollout
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	r, err := h.svc.CreateRollout(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.Status(fiber.StatusCreated).JSON(r)
}

// Overview handles GET /api/v1/platform/rollouts.
func (h *Handlers) Overview(c *fiber.Ctx) error {
	list, err := h.svc.Overview(c.UserContext(), c.Query("state"))
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"items": list})
}

// OperatorRollout handles GET /api/v1/platform/rollouts/{id}.
func (h *Handlers) OperatorRollout(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "rollout")
	if err != nil {
		return err
	}
	d, err := h.svc.RolloutForOperator(c.UserContext(), id)
	if err != nil {
		return err
	}
	return c.JSON(d)
}

// OperatorRecord handles GET /api/v1/platform/rollouts/{id}/record.
func (h *Handlers) OperatorRecord(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "rollout")
	if err != nil {
		return err
	}
	d, err := h.svc.RolloutForOperator(c.UserContext(), id)
	if err != nil {
		return err
	}
	return sendRecord(c, d)
}

// ControlInput is the operator's optional reason.
type ControlInput struct {
	Reason string `json:"reason"`
}

// Control handles POST /api/v1/platform/rollouts/{id}/{pause,resume,abort}.
func (h *Handlers) Control(action string) fiber.Handler {
	return func(c *fiber.Ctx) error {
		id, err := web.ID(c, "id", "rollout")
		if err != nil {
			return err
		}
		var in ControlInput
		if len(c.Body()) > 0 {
			if err := web.Bind(c, &in); err != nil {
				return err
			}
		}
		r, err := h.svc.Control(c.UserContext(), id, action, in.Reason)
		if err != nil {
			return err
		}
		return c.JSON(r)
	}
}

// Rollouts handles GET /api/v1/firmware/rollouts.
func (h *Handlers) Rollouts(c *fiber.Ctx) error {
	page, err := web.PageOf(c)
	if err != nil {
		return err
	}
	rs, err := h.svc.Rollouts(c.UserContext(), page.After, page.Limit)
	if err != nil {
		return err
	}
	return c.JSON(web.NewList(rs, page.Limit, func(r RolloutView) uuid.UUID { return r.ID }))
}

// Rollout handles GET /api/v1/firmware/rollouts/{id}.
func (h *Handlers) Rollout(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "rollout")
	if err != nil {
		return err
	}
	d, err := h.svc.Rollout(c.UserContext(), id)
	if err != nil {
		return err
	}
	return c.JSON(d)
}

// Record handles GET /api/v1/firmware/rollouts/{id}/record.
func (h *Handlers) Record(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "rollout")
	if err != nil {
		return err
	}
	d, err := h.svc.Rollout(c.UserContext(), id)
	if err != nil {
		return err
	}
	return sendRecord(c, d)
}

func sendRecord(c *fiber.Ctx, d Detail) error {
	switch c.Query("format", "json") {
	case "json":
		return c.JSON(d)
	case "csv":
		c.Set(fiber.HeaderContentType, "text/csv; charset=utf-8")
		c.Set(fiber.HeaderContentDisposition, fmt.Sprintf(`attachment; filename="rollout-%s.csv"`, d.ID))
		return d.WriteCSV(c)
	}
	return tenants.Invalid(tenants.FieldError{Field: "format", Message: "must be json or csv"})
}

// Approve handles POST /api/v1/firmware/rollouts/{id}/approve.
func (h *Handlers) Approve(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "rollout")
	if err != nil {
		return err
	}
	r, err := h.svc.Approve(c.UserContext(), id)
	if err != nil {
		return err
	}
	return c.JSON(r)
}

// GetSettings handles GET /api/v1/firmware/settings.
func (h *Handlers) GetSettings(c *fiber.Ctx) error {
	st, err := h.svc.GetSettings(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(st)
}

// PutSettings handles PUT /api/v1/firmware/settings.
func (h *Handlers) PutSettings(c *fiber.Ctx) error {
	var in SettingsInput
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	st, err := h.svc.PutSettings(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.JSON(st)
}

// Check handles GET /box/v1/firmware?version=&security_version=.
func (h *Handlers) Check(c *fiber.Ctx) error {
	cur := Current{Version: c.Query("version")}
	if sv := c.Query("security_version"); sv != "" {
		n, err := strconv.Atoi(sv)
		if err != nil {
			return tenants.Invalid(tenants.FieldError{Field: "security_version", Message: "must be a number"})
		}
		cur.SecurityVersion = &n
	}
	out, err := h.svc.CheckUpdate(c.UserContext(), cur)
	if err != nil {
		return err
	}
	return c.JSON(out)
}

// Status handles POST /box/v1/firmware/status.
func (h *Handlers) Status(c *fiber.Ctx) error {
	var in Report
	if err := web.Bind(c, &in); err != nil {
		return err
	}
	out, err := h.svc.ReportStatus(c.UserContext(), in)
	if err != nil {
		return err
	}
	return c.JSON(out)
}

// Artifact handles GET /box/v1/firmware/{id}/artifact with HTTP Range
// (RFC 9110): one range "bytes=first-last", "bytes=first-" or
// "bytes=-suffix" is answered 206 with Content-Range; a range that starts
// past the end is 416 with "bytes */size"; a Range that cannot be parsed,
// or several ranges, or an If-Range that no longer matches, gets the whole
// artifact (200), as the RFC allows. The ETag is the artifact's SHA-256.
func (h *Handlers) Artifact(c *fiber.Ctx) error {
	id, err := web.ID(c, "id", "firmware")
	if err != nil {
		return err
	}
	obj, digest, err := h.svc.Artifact(c.UserContext(), id)
	if err != nil {
		return err
	}
	size := obj.Size()
	etag := `"` + digest + `"`
	c.Set(fiber.HeaderAcceptRanges, "bytes")
	c.Set(fiber.HeaderETag, etag)
	c.Set(fiber.HeaderCacheControl, "private, no-transform")
	c.Set(fiber.HeaderContentType, "application/octet-stream")
	first, n := int64(0), size
	status := fiber.StatusOK
	if rh := c.Get(fiber.HeaderRange); rh != "" && (c.Get(fiber.HeaderIfRange) == "" || c.Get(fiber.HeaderIfRange) == etag) {
		a, b, res := parseRange(rh, size)
		switch res {
		case rangeUnsatisfiable:
			obj.Close()
			c.Set(fiber.HeaderContentRange, fmt.Sprintf("bytes */%d", size))
			return c.Status(fiber.StatusRequestedRangeNotSatisfiable).SendString("")
		case rangeOK:
			first, n, status = a, b-a+1, fiber.StatusPartialContent
			c.Set(fiber.HeaderContentRange, fmt.Sprintf("bytes %d-%d/%d", a, b, size))
		}
	}
	c.Status(status)
	// The file is closed once the stream has been sent (fasthttp closes a
	// body stream that is an io.Closer); the tenant transaction has
	// committed by then, so no pooled connection waits on a slow box.
	return c.SendStream(&section{SectionReader: io.NewSectionReader(obj, first, n), c: obj}, int(n))
}

type section struct {
	*io.SectionReader
	c io.Closer
}

func (s *section) Close() error { return s.c.Close() }

type rangeResult int

const (
	rangeIgnored rangeResult = iota
	rangeOK
	rangeUnsatisfiable
)

// parseRange reads a single byte range of an entity of size bytes.
func parseRange(h string, size int64) (first, last int64, res rangeResult) {
	spec, ok := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, rangeIgnored
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, 0, rangeIgnored
	}
	if a == "" { // suffix: the last b bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n < 0 {
			return 0, 0, rangeIgnored
		}
		if n == 0 || size == 0 {
			return 0, 0, rangeUnsatisfiable
		}
		return max(size-n, 0), size - 1, rangeOK
	}
	first, err := strconv.ParseInt(a, 10, 64)
	if err != nil || first < 0 {
		return 0, 0, rangeIgnored
	}
	last = size - 1
	if b != "" {
		if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < first {
			return 0, 0, rangeIgnored
		}
		last = min(last, size-1)
	}
	if first >= size {
		return 0, 0, rangeUnsatisfiable
	}
	return first, last, rangeOK
}
