// Package web holds the HTTP conventions every tenant domain's handlers
// share: strict JSON binding into per-call request structs, path ids, and
// cursor pagination. Errors are returned, never written here: app maps them
// to problem+json in one place.
package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
)

// Bind decodes the JSON body into dst, refusing unknown fields, trailing
// data and non-JSON content types (the last also stops cross-site form
// posts riding on the session cookie). dst must be a request struct that
// lists exactly the fields a caller may set — never a stored model.
func Bind(c *fiber.Ctx, dst any) error {
	ct := strings.ToLower(strings.TrimSpace(strings.SplitN(c.Get(fiber.HeaderContentType), ";", 2)[0]))
	if ct != fiber.MIMEApplicationJSON {
		return &tenants.Error{Code: tenants.EInvalid, Message: "the body must be JSON (Content-Type: application/json)", Err: errBadRequest}
	}
	dec := json.NewDecoder(bytes.NewReader(c.Body()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return &tenants.Error{Code: tenants.EInvalid, Message: describe(err), Err: errBadRequest}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &tenants.Error{Code: tenants.EInvalid, Message: "the body must hold a single JSON object", Err: errBadRequest}
	}
	return nil
}

// errBadRequest marks a body that could not be read at all (400), as opposed
// to one whose fields are invalid (422).
var errBadRequest = errors.New("malformed request")

// IsMalformed reports whether err is a body that could not be decoded.
func IsMalformed(err error) bool { return errors.Is(err, errBadRequest) }

func describe(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("the body is not valid JSON (at byte %d)", syn.Offset)
	case errors.As(err, &typ):
		return fmt.Sprintf("field %q must be a %s", typ.Field, typ.Type)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	case errors.Is(err, io.EOF):
		return "the body is empty"
	default:
		return "the body could not be read as JSON"
	}
}

// ID parses the path parameter name as a resource id. A malformed id is
// answered like an unknown one.
func ID(c *fiber.Ctx, name, what string) (uuid.UUID, error) {
	id, err := uuid.Parse(c.Params(name))
	if err != nil {
		return uuid.Nil, tenants.NotFound(what)
	}
	return id, nil
}

// Page is a request for one page of a list.
type Page struct {
	After uuid.UUID
	Limit int
}

// PageOf reads ?cursor= and ?limit=. Cursors are the last id of the previous
// page: ids are UUIDv7, so id order is creation order.
func PageOf(c *fiber.Ctx) (Page, error) {
	p := Page{Limit: 50}
	if s := c.Query("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 200 {
			return p, tenants.Invalid(tenants.FieldError{Field: "limit", Message: "must be a number from 1 to 200"})
		}
		p.Limit = n
	}
	if s := c.Query("cursor"); s != "" {
		id, err := uuid.Parse(s)
		if err != nil {
			return p, tenants.Invalid(tenants.FieldError{Field: "cursor", Message: "is not a cursor this API returned"})
		}
		p.After = id
	}
	return p, nil
}

// List is the envelope of every list response.
type List[T any] struct {
	Items      []T    `json:"items"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// NewList builds the envelope; a full page gets a cursor to the next one.
func NewList[T any](items []T, limit int, idOf func(T) uuid.UUID) List[T] {
	l := List[T]{Items: items}
	if l.Items == nil {
		l.Items = []T{}
	}
	if len(items) == limit && limit > 0 {
		l.NextCursor = idOf(items[len(items)-1]).String()
	}
	return l
}
