package main

import (
	"context"
	"errors"
	"math"
	"strconv"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/web"
)

// problem is an RFC 9457 problem document.
type problem struct {
	Type      string               `json:"type"`
	Title     string               `json:"title"`
	Status    int                  `json:"status"`
	Detail    string               `json:"detail,omitempty"`
	Errors    []tenants.FieldError `json:"errors,omitempty"`
	RequestID string               `json:"request_id,omitempty"`
	// ConflictingBookingID names the booking in the way of a 409 (an
	// overlapping one-time booking of the same key).
	ConflictingBookingID string `json:"conflicting_booking_id,omitempty"`
}

// conflictNamer is a domain error that names the booking it conflicts with.
type conflictNamer interface{ ConflictingBookingID() uuid.UUID }

// problemTypes gives each error code a stable type URI, status and title.
// This is the one place where domain errors become HTTP.
var problemTypes = map[tenants.Code]struct {
	status int
	title  string
}{
	tenants.ENotFound:     {fiber.StatusNotFound, "Not found"},
	tenants.EConflict:     {fiber.StatusConflict, "Conflict"},
	tenants.EInvalid:      {fiber.StatusUnprocessableEntity, "Invalid request"},
	tenants.EForbidden:    {fiber.StatusForbidden, "Forbidden"},
	tenants.EUnauthorized: {fiber.StatusUnauthorized, "Unauthorized"},
	tenants.ERateLimited:  {fiber.StatusTooManyRequests, "Too many requests"},
	tenants.EUnavailable:  {fiber.StatusServiceUnavailable, "Service unavailable"},
	tenants.EInternal:     {fiber.StatusInternalServerError, "Internal error"},
}

func problemType(slug string) string { return "urn:keyrelay:problem:" + slug }

// errorHandler is Fiber's ErrorHandler: every error of every route ends here.
// Only 5xx are logged as errors; their detail never reaches the client.
func (a *App) errorHandler(c *fiber.Ctx, err error) error {
	p := problem{RequestID: requestID(c)}
	var de *tenants.Error
	var fe *fiber.Error
	switch {
	case errors.As(err, &de):
		pt := problemTypes[de.Code]
		p.Type, p.Title, p.Status, p.Detail, p.Errors = problemType(string(de.Code)), pt.title, pt.status, de.Message, de.Fields
		if web.IsMalformed(err) {
			p.Type, p.Title, p.Status = problemType("bad_request"), "Bad request", fiber.StatusBadRequest
		}
		var cn conflictNamer
		if errors.As(err, &cn) {
			p.ConflictingBookingID = cn.ConflictingBookingID().String()
		}
		if de.RetryAfter > 0 {
			c.Set(fiber.HeaderRetryAfter, strconv.Itoa(int(math.Ceil(de.RetryAfter.Seconds()))))
		}
	case errors.As(err, &fe):
		p.Status, p.Title, p.Type = fe.Code, fe.Message, problemType(slugOf(fe.Code))
		if fe.Code == fiber.StatusRequestEntityTooLarge {
			p.Detail = "the request body is larger than the limit of " + strconv.Itoa(a.cfg.BodyLimit) + " bytes"
		}
	case errors.Is(err, context.Canceled):
		p.Status, p.Title, p.Type = 499, "Client closed request", problemType("canceled")
	default:
		p.Status, p.Title, p.Type = fiber.StatusInternalServerError, "Internal error", problemType(string(tenants.EInternal))
	}
	if p.Status >= 500 {
		a.log.ErrorContext(c.UserContext(), "request failed", "request_id", p.RequestID, "method", c.Method(), "route", c.Route().Path, "status", p.Status, "err", err)
		if de == nil || de.Code == tenants.EInternal {
			p.Detail = "something went wrong on our side; quote the request id when reporting it"
		}
	}
	c.Status(p.Status)
	return c.JSON(p, "application/problem+json")
}

func slugOf(status int) string {
	switch status {
	case fiber.StatusNotFound:
		return string(tenants.ENotFound)
	case fiber.StatusMethodNotAllowed:
		return "method_not_allowed"
	case fiber.StatusRequestEntityTooLarge:
		return "body_too_large"
	case fiber.StatusTooManyRequests:
		return string(tenants.ERateLimited)
	case fiber.StatusBadRequest:
		return "bad_request"
	}
	if status >= 500 {
		return string(tenants.EInternal)
	}
	return "http_" + strconv.Itoa(status)
}
