package delivery

import (
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"

	"github.com/keyrelay/keyrelay/jobs"
	"github.com/keyrelay/keyrelay/plugins/sdk"
)

func TestRetryDelay(t *testing.T) {
	busy := sdk.Temporary(errors.New("busy"))
	retryTask := func(attempts int) *asynq.Task {
		d := jobs.Deliver{TenantID: uuid.New(), MessageID: uuid.New(), Attempts: attempts}
		return asynq.NewTask(jobs.TypeDeliver, d.Encode())
	}
	for _, tc := range []struct {
		name     string
		n        int
		err      error
		task     *asynq.Task
		min, max time.Duration
	}{
		{"FirstRetry", 0, busy, nil, 100 * time.Millisecond, 1100 * time.Millisecond},
		{"GrowsWithRetries", 3, busy, nil, 100 * time.Millisecond, 8100 * time.Millisecond},
		// A message that failed once in its batch: its task's first retry
		// is its third attempt.
		{"CountsAttemptsInTheBatch", 0, busy, retryTask(1), 100 * time.Millisecond, 2100 * time.Millisecond},
		{"Capped", 30, busy, nil, 100 * time.Millisecond, 10*time.Minute + 100*time.Millisecond},
		{"RetryAfter", 5, sdk.RateLimited(42*time.Second, errors.New("slow down")), nil, 42 * time.Second, 42 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var top time.Duration
			for i := 0; i < 200; i++ {
				d := RetryDelay(tc.n, tc.err, tc.task)
				if d < tc.min || d > tc.max {
					t.Fatalf("delay %v outside [%v, %v]", d, tc.min, tc.max)
				}
				top = max(top, d)
			}
			if tc.name == "CountsAttemptsInTheBatch" && top <= 1100*time.Millisecond {
				t.Errorf("the delay ignores the batch's attempt (max %v)", top)
			}
		})
	}
}
