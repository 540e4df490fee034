package commands

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// Hub is one replica's end of the Redis channel: a single pattern
// subscription, fanned out in process to the polls this replica holds, so
// that a thousand waiting boxes cost one Redis connection, not a thousand.
type Hub struct {
	rdb    redis.UniversalClient
	prefix string
	log    *slog.Logger

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
	stopped chan struct{} // closed when Run returns: polls answer at once
}

// NewHub returns a hub publishing and listening under prefix.
func NewHub(rdb redis.UniversalClient, prefix string, log *slog.Logger) *Hub {
	return &Hub{rdb: rdb, prefix: prefix, log: log, waiters: map[string]map[chan struct{}]struct{}{}, stopped: make(chan struct{})}
}

func (h *Hub) channel(tenantID, boxID uuid.UUID) string {
	return h.prefix + "box-commands:" + tenantID.String() + ":" + boxID.String()
}

// Publish wakes whoever waits for the box's commands. A lost message only
// delays the box to the end of its poll: the command is in the database.
func (h *Hub) Publish(ctx context.Context, tenantID, boxID uuid.UUID) {
	if err := h.rdb.Publish(ctx, h.channel(tenantID, boxID), "1").Err(); err != nil {
		h.log.WarnContext(ctx, "commands: publish failed; the box finds the command at its next poll", "box_id", boxID, "err", err)
	}
}

// Subscribe registers interest in a box's commands. Call it before reading
// the pending commands, so a command stored in between still wakes the
// caller; cancel releases it.
func (h *Hub) Subscribe(tenantID, boxID uuid.UUID) (wake <-chan struct{}, cancel func()) {
	key := h.channel(tenantID, boxID)
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	if h.waiters[key] == nil {
		h.waiters[key] = map[chan struct{}]struct{}{}
	}
	h.waiters[key][ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.waiters[key], ch)
		if len(h.waiters[key]) == 0 {
			delete(h.waiters, key)
		}
		h.mu.Unlock()
	}
}

func (h *Hub) wake(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.waiters[key] {
		select {
		case ch <- struct{}{}:
		default: // already woken
		}
	}
}

// Stopped is closed once the hub has stopped (the server shuts down), so
// that waiting polls answer instead of holding the shutdown up.
func (h *Hub) Stopped() <-chan struct{} { return h.stopped }

// Run listens until ctx ends, resubscribing after Redis comes back.
//
// On Redis Cluster the pattern subscription lives on one node only (the
// master of the pattern's slot), which is enough: a classic PUBLISH is
// forwarded to every node of the cluster, so each subscriber hears it
// wherever it was published (app/redis_cluster_test.go proves it on a real
// cluster). Sharded pub/sub (SPUBLISH) would not reach it.
func (h *Hub) Run(ctx context.Context) {
	defer close(h.stopped)
	for ctx.Err() == nil {
		ps := h.rdb.PSubscribe(ctx, h.prefix+"box-commands:*")
		if _, err := ps.Receive(ctx); err != nil {
			ps.Close()
			if ctx.Err() == nil {
				h.log.Warn("commands: cannot subscribe; boxes fall back to their poll timeout", "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		h.listen(ctx, ps)
		ps.Close()
	}
}

func (h *Hub) listen(ctx context.Context, ps *redis.PubSub) {
	msgs := ps.Channel()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			if strings.HasPrefix(m.Channel, h.prefix+"box-commands:") {
				h.wake(m.Channel)
			}
		}
	}
}
