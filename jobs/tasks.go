// Package jobs names the background tasks that cross the queue, so the
// side that enqueues (the relay) and the side that handles (delivery) agree
// on one type name and payload without importing each other.
package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"
)

// TypeDeliver is the asynq task type that sends one outbox message: a
// scheduled one, or the retry of one that failed in a batch.
const TypeDeliver = "message:deliver"

// TypeDeliverBatch sends several messages of one tenant and priority. One
// task per message cost more in the queue than the sending itself.
const TypeDeliverBatch = "message:deliver-batch"

// MaxBatch is the most messages one batch task carries: enough to spread
// the queue's and the transactions' cost, few enough that one slow batch
// does not hold many messages back.
const MaxBatch = 50

// Queues and their weights: security codes go ahead of everything, reminders
// last. Weights are shares of the workers, not strict priorities, so a flood
// of codes cannot starve reminders forever.
var Queues = map[string]int{"critical": 6, "default": 3, "low": 1}

// Ref names one revision of a message.
type Ref struct {
	ID uuid.UUID `json:"id"`
	// Rev is the message's schedule revision when it was queued: a message
	// moved since then has a higher one, and this task is stale for it.
	Rev int `json:"rev,omitempty"`
}

// Deliver is the payload of a TypeDeliver task. The task id names the
// message, so the queue refuses a duplicate.
type Deliver struct {
	TenantID  uuid.UUID `json:"tenant_id"`
	MessageID uuid.UUID `json:"message_id"`
	Rev       int       `json:"rev,omitempty"`
	// Attempts already made before this task (in a batch), so the backoff
	// goes on growing from there.
	Attempts int `json:"attempts,omitempty"`
}

// TaskID names the task of one revision of a message, so the queue refuses
// a duplicate of it but takes the task of a moved message. A retry has a
// name of its own: the relay may still hold the message's first task.
func (d Deliver) TaskID() string {
	id := d.MessageID.String()
	if d.Rev != 0 {
		id += ":" + strconv.Itoa(d.Rev)
	}
	if d.Attempts > 0 {
		id += ":retry"
	}
	return id
}

// Encode returns the task payload.
func (d Deliver) Encode() []byte {
	b, _ := json.Marshal(d)
	return b
}

// DecodeDeliver parses a task payload.
func DecodeDeliver(b []byte) (Deliver, error) {
	var d Deliver
	if err := json.Unmarshal(b, &d); err != nil {
		return d, fmt.Errorf("jobs: deliver payload: %w", err)
	}
	if d.TenantID == uuid.Nil || d.MessageID == uuid.Nil {
		return d, fmt.Errorf("jobs: deliver payload without tenant or message id")
	}
	return d, nil
}

// DeliverBatch is the payload of a TypeDeliverBatch task.
type DeliverBatch struct {
	TenantID uuid.UUID `json:"tenant_id"`
	Messages []Ref     `json:"messages"`
}

// TaskID is derived from the batch's content, so relaying the same rows
// twice in the same grouping is refused by the queue. A different grouping
// of the same messages gets another id: the worker's claim on each message,
// not the task id, keeps those from being sent twice.
func (b DeliverBatch) TaskID() string {
	refs := slices.Clone(b.Messages)
	slices.SortFunc(refs, func(x, y Ref) int { return slices.Compare(x.ID[:], y.ID[:]) })
	h := sha256.New()
	h.Write(b.TenantID[:])
	for _, r := range refs {
		h.Write(r.ID[:])
		h.Write([]byte(strconv.Itoa(r.Rev) + ";"))
	}
	return "batch:" + hex.EncodeToString(h.Sum(nil)[:16])
}

// Encode returns the task payload.
func (b DeliverBatch) Encode() []byte {
	out, _ := json.Marshal(b)
	return out
}

// DecodeDeliverBatch parses a task payload.
func DecodeDeliverBatch(p []byte) (DeliverBatch, error) {
	var b DeliverBatch
	if err := json.Unmarshal(p, &b); err != nil {
		return b, fmt.Errorf("jobs: deliver batch payload: %w", err)
	}
	if b.TenantID == uuid.Nil || len(b.Messages) == 0 {
		return b, fmt.Errorf("jobs: deliver batch payload without tenant or messages")
	}
	for _, r := range b.Messages {
		if r.ID == uuid.Nil {
			return b, fmt.Errorf("jobs: deliver batch payload with an empty message id")
		}
	}
	return b, nil
}

// Every runs fn at once and then every interval until ctx ends: the loop of
// the periodic sweeps (janitor, retention, overdue keys, box health,
// rollouts). fn reports its own failures; the next tick is the retry.
func Every(ctx context.Context, interval time.Duration, fn func(ctx context.Context)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		fn(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
