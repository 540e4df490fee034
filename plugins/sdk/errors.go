package sdk

import (
	"context"
	"errors"
	"time"
)

// Class says what the caller should do about a failure.
type Class uint8

const (
	// ClassTemporary: try again later; the same message may well go through.
	ClassTemporary Class = iota + 1
	// ClassPermanent: do not retry; the message or the settings are wrong.
	ClassPermanent
	// ClassRateLimited: the provider asked to slow down, possibly saying for
	// how long. It is a kind of temporary failure.
	ClassRateLimited
)

func (c Class) String() string {
	switch c {
	case ClassTemporary:
		return "temporary"
	case ClassPermanent:
		return "permanent"
	case ClassRateLimited:
		return "rate limited"
	}
	return "unclassified"
}

// Sentinels to match classes with errors.Is. A rate-limited error matches
// both ErrRateLimited and ErrTemporary, so code that only knows "retry or
// not" needs one test.
var (
	ErrTemporary   = errors.New("temporary failure")
	ErrPermanent   = errors.New("permanent failure")
	ErrRateLimited = errors.New("rate limited")
)

// Failures the SDK itself detects.
var (
	// ErrUnsupportedChannel: the message's channel is not one the provider
	// declared. Permanent.
	ErrUnsupportedChannel = errors.New("channel not supported by provider")
	// ErrInvalidMessage: a message without id or recipient. Permanent.
	ErrInvalidMessage = errors.New("invalid message")
	// ErrReceiptsUnsupported: VerifyReceipt on a provider that does not
	// implement ReceiptVerifier. Permanent.
	ErrReceiptsUnsupported = errors.New("provider does not verify receipts")
	// ErrTransport: the call got no answer from the plugin: the connection
	// broke, the process is gone, or the deadline passed before a reply.
	// Temporary. The host takes it as a sign the plugin may be dead or wedged.
	ErrTransport = errors.New("plugin transport failure")
	// ErrProtocol: the plugin answered with something the protocol does not
	// allow (an unknown status, a failure without a class). Permanent: it is a
	// bug in the plugin, and retrying a message it may already have sent
	// could send it twice.
	ErrProtocol = errors.New("plugin protocol violation")
)

// Error is a classified failure. Providers build it with Temporary,
// Permanent or RateLimited; callers inspect it with errors.Is against the
// sentinels above, or errors.As to read RetryAfter.
type Error struct {
	Class Class
	// RetryAfter is the wait the provider asked for (ClassRateLimited only);
	// zero when it gave none.
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Class.String()
	}
	return e.Class.String() + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches the class sentinels.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrTemporary:
		return e.Class == ClassTemporary || e.Class == ClassRateLimited
	case ErrPermanent:
		return e.Class == ClassPermanent
	case ErrRateLimited:
		return e.Class == ClassRateLimited
	}
	return false
}

// Temporary marks err as worth retrying. It returns nil for a nil err.
func Temporary(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Class: ClassTemporary, Err: err}
}

// Permanent marks err as not worth retrying. It returns nil for a nil err.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Class: ClassPermanent, Err: err}
}

// RateLimited marks err as a request to slow down for retryAfter (zero when
// the provider did not say). It returns nil for a nil err.
func RateLimited(retryAfter time.Duration, err error) error {
	if err == nil {
		return nil
	}
	if retryAfter < 0 {
		retryAfter = 0
	}
	return &Error{Class: ClassRateLimited, RetryAfter: retryAfter, Err: err}
}

// ClassOf returns the class of err: the class of the outermost *Error in its
// chain; ClassTemporary for anything else, because an unknown failure is more
// often a passing one and the message id keeps a retry from sending twice;
// zero for nil.
func ClassOf(err error) Class {
	if err == nil {
		return 0
	}
	var e *Error
	if errors.As(err, &e) && e.Class >= ClassTemporary && e.Class <= ClassRateLimited {
		return e.Class
	}
	return ClassTemporary
}

// retryAfterOf returns the RetryAfter of the outermost *Error in err's chain.
func retryAfterOf(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// reasonOf is the text that crosses the wire: the cause without the class
// prefix, which travels separately.
func reasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Err != nil {
		return e.Err.Error()
	}
	return err.Error()
}

// wireCodes name the SDK's own failures on the wire, so that errors.Is
// works for them on the host side too.
var wireCodes = []struct {
	code string
	err  error
}{
	{"unsupported_channel", ErrUnsupportedChannel},
	{"invalid_message", ErrInvalidMessage},
	{"receipts_unsupported", ErrReceiptsUnsupported},
	{"protocol", ErrProtocol},
}

func codeOf(err error) string {
	for _, c := range wireCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return ""
}

func errOfCode(code string) error {
	for _, c := range wireCodes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}

// remoteError stands for a provider's error on the host side: the error value
// cannot cross the process boundary, only its text, class and SDK code. Its
// causes keep errors.Is working for the SDK's sentinels and for
// context.DeadlineExceeded when the provider ran out of time.
type remoteError struct {
	msg    string
	causes []error
}

func (e *remoteError) Error() string   { return e.msg }
func (e *remoteError) Unwrap() []error { return e.causes }

// contextCause returns the context error err stems from, if any.
func contextCause(err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return context.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return context.Canceled
	}
	return nil
}
