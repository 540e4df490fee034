package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keyrelay/keyrelay/plugins/sdk"
)

func TestClassOf(t *testing.T) {
	base := errors.New("boom")
	tests := []struct {
		name string
		err  error
		want sdk.Class
		is   []error
		not  []error
	}{
		{"Nil", nil, 0, nil, nil},
		{"Temporary", sdk.Temporary(base), sdk.ClassTemporary, []error{sdk.ErrTemporary, base}, []error{sdk.ErrPermanent, sdk.ErrRateLimited}},
		{"Permanent", sdk.Permanent(base), sdk.ClassPermanent, []error{sdk.ErrPermanent, base}, []error{sdk.ErrTemporary, sdk.ErrRateLimited}},
		{"RateLimitedIsTemporary", sdk.RateLimited(time.Second, base), sdk.ClassRateLimited, []error{sdk.ErrRateLimited, sdk.ErrTemporary}, []error{sdk.ErrPermanent}},
		{"WrappedKeepsClass", fmt.Errorf("sending: %w", sdk.Permanent(base)), sdk.ClassPermanent, []error{sdk.ErrPermanent}, nil},
		{"OutermostWins", sdk.Permanent(sdk.Temporary(base)), sdk.ClassPermanent, []error{sdk.ErrPermanent}, nil},
		{"UnclassifiedIsTemporary", base, sdk.ClassTemporary, nil, []error{sdk.ErrTemporary}},
		{"DeadlineIsTemporary", context.DeadlineExceeded, sdk.ClassTemporary, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := sdk.ClassOf(tc.err); got != tc.want {
				t.Errorf("ClassOf(%v) = %v, want %v", tc.err, got, tc.want)
			}
			for _, target := range tc.is {
				if !errors.Is(tc.err, target) {
					t.Errorf("errors.Is(%v, %v) = false", tc.err, target)
				}
			}
			for _, target := range tc.not {
				if errors.Is(tc.err, target) {
					t.Errorf("errors.Is(%v, %v) = true", tc.err, target)
				}
			}
		})
	}
}

func TestConstructorsKeepNil(t *testing.T) {
	if sdk.Temporary(nil) != nil || sdk.Permanent(nil) != nil || sdk.RateLimited(time.Second, nil) != nil {
		t.Fatal("a constructor turned a nil error into a failure")
	}
}

func TestRateLimitedRetryAfter(t *testing.T) {
	err := fmt.Errorf("gateway: %w", sdk.RateLimited(3*time.Second, errors.New("429")))
	var e *sdk.Error
	if !errors.As(err, &e) || e.RetryAfter != 3*time.Second {
		t.Fatalf("errors.As: %v, RetryAfter %v", err, e)
	}
	if got := sdk.RateLimited(-time.Second, errors.New("x")).(*sdk.Error).RetryAfter; got != 0 {
		t.Errorf("negative retry-after kept as %v", got)
	}
}
