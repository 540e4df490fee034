// Package tenants holds what every tenant-owned domain shares: the error
// vocabulary, the caller (Principal) and the tenant-scoped transaction in
// which every query of a request runs. The domains themselves live in the
// subpackages (accounts, outbox, …).
package tenants

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Code is the small, closed set of failure kinds the HTTP layer maps to
// statuses in exactly one place (app/errors.go).
type Code string

const (
	ENotFound     Code = "not_found"
	EConflict     Code = "conflict"
	EInvalid      Code = "invalid"
	EForbidden    Code = "forbidden"
	EUnauthorized Code = "unauthorized"
	ERateLimited  Code = "rate_limited"
	EUnavailable  Code = "unavailable"
	EInternal     Code = "internal"
)

// FieldError names one invalid input field.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// Error is a domain error: a code, a message that is safe to show to the
// caller, and optionally the field errors, a retry delay and the cause.
type Error struct {
	Code       Code
	Message    string
	Fields     []FieldError
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf builds a domain error with a formatted, caller-safe message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// NotFound says that a thing does not exist in the caller's tenant. It
// deliberately says nothing about other tenants.
func NotFound(what string) *Error {
	return &Error{Code: ENotFound, Message: what + " not found"}
}

// Invalid reports validation failures; each field is listed.
func Invalid(fields ...FieldError) *Error {
	parts := make([]string, len(fields))
	for i, f := range fields {
		parts[i] = f.Field + " " + f.Message
	}
	return &Error{Code: EInvalid, Message: strings.Join(parts, "; "), Fields: fields}
}

// RateLimited asks the caller to wait.
func RateLimited(msg string, after time.Duration) *Error {
	return &Error{Code: ERateLimited, Message: msg, RetryAfter: after}
}

// ErrorCode returns the code of the first domain error in err's chain, or
// EInternal for anything else.
func ErrorCode(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EInternal
}

// Validator collects field errors so a request reports all of them at once.
type Validator struct{ fields []FieldError }

// Check records msg for field when ok is false.
func (v *Validator) Check(ok bool, field, msg string) {
	if !ok {
		v.fields = append(v.fields, FieldError{Field: field, Message: msg})
	}
}

// Add records a field error unconditionally.
func (v *Validator) Add(field, msg string) { v.Check(false, field, msg) }

// Err returns nil when every check passed.
func (v *Validator) Err() error {
	if len(v.fields) == 0 {
		return nil
	}
	return Invalid(v.fields...)
}
