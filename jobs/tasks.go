// Package jobs names the background tasks that cross the queue, so the
// side that enqueues (the relay) and the side that handles (delivery) agree
// on one type name and payload without importing each other.
package jobs

import (
	"encoding/json"
	"fmt"

	"github.com/google/uuid"
)

// TypeDeliver is the asynq task type that sends one outbox message.
const TypeDeliver = "message:deliver"

// Queues and their weights: security codes go ahead of everything, reminders
// last. Weights are shares of the workers, not strict priorities, so a flood
// of codes cannot starve reminders forever.
var Queues = map[string]int{"critical": 6, "default": 3, "low": 1}

// Deliver is the payload of a TypeDeliver task. The task id is the message
// id, so enqueueing the same message twice is refused by the queue.
type Deliver struct {
	TenantID  uuid.UUID `json:"tenant_id"`
	MessageID uuid.UUID `json:"message_id"`
	// Rev is the message's schedule revision when it was queued: a message
	// moved since then has a higher one, and this task is stale.
	Rev int `json:"rev,omitempty"`
}

// TaskID names the task of one revision of a message, so the queue refuses
// a duplicate of it but takes the task of a moved message.
func (d Deliver) TaskID() string {
	if d.Rev == 0 {
		return d.MessageID.String()
	}
	return fmt.Sprintf("%s:%d", d.MessageID, d.Rev)
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
