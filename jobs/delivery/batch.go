package delivery

import (
	"context"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/keyrelay/keyrelay/tenants"
	"github.com/keyrelay/keyrelay/tenants/outbox"
	"github.com/keyrelay/keyrelay/tenants/providers"
)

// Every delivery reads its message and route and writes its outcome: two
// transactions of four or five round trips each. At hundreds of messages
// a second those round trips, not the work, are the cost. The batcher groups
// the requests that arrive while a batch is running and serves them with
// one transaction per tenant. It never waits to fill a batch, so a lone
// login code goes straight through; under load batches form by themselves
// (group commit).
type batcher[R any] struct {
	reqs chan R
	run  func([]R)
	max  int
}

// batchTimeout bounds one batch's transaction; the requests in it are
// served together, so no single caller's cancellation may abort it.
const batchTimeout = 10 * time.Second

func newBatcher[R any](lanes, max int, run func([]R)) *batcher[R] {
	b := &batcher[R]{reqs: make(chan R, lanes*max), run: run, max: max}
	for i := 0; i < lanes; i++ {
		go b.loop()
	}
	return b
}

func (b *batcher[R]) loop() {
	for first := range b.reqs {
		batch := append(make([]R, 0, b.max), first)
	fill:
		for len(batch) < b.max {
			select {
			case r, ok := <-b.reqs:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		b.run(batch)
	}
}

func (b *batcher[R]) close() { close(b.reqs) }

// load is one message to read, with its tenant's routes.
type loaded struct {
	row    outbox.Row
	found  bool
	routes map[string]providers.Route
	err    error
}

type loadReq struct {
	ctx      context.Context
	tenantID uuid.UUID
	id       uuid.UUID
	reply    chan loaded
}

type recordReq struct {
	ctx      context.Context
	tenantID uuid.UUID
	id       uuid.UUID
	out      outbox.Outcome
	reply    chan error
}

// Store is the batched access delivery needs.
type Store struct {
	scope    *tenants.Scope
	msgs     Messages
	routes   Routes
	loads    *batcher[loadReq]
	records  *batcher[recordReq]
	stopOnce sync.Once
}

// NewStore starts the batchers; lanes is how many transactions may run at
// once for each of reading and writing.
func NewStore(scope *tenants.Scope, msgs Messages, routes Routes, lanes int) *Store {
	s := &Store{scope: scope, msgs: msgs, routes: routes}
	s.loads = newBatcher(lanes, 200, s.runLoads)
	s.records = newBatcher(lanes, 200, s.runRecords)
	return s
}

// Close stops the batchers; call it after the last delivery returned.
func (s *Store) Close() {
	s.stopOnce.Do(func() {
		s.loads.close()
		s.records.close()
	})
}

// Load returns a message and its tenant's routes.
func (s *Store) Load(ctx context.Context, tenantID, id uuid.UUID) (outbox.Row, bool, map[string]providers.Route, error) {
	r := loadReq{ctx: ctx, tenantID: tenantID, id: id, reply: make(chan loaded, 1)}
	s.loads.reqs <- r
	select {
	case l := <-r.reply:
		return l.row, l.found, l.routes, l.err
	case <-ctx.Done():
		return outbox.Row{}, false, nil, ctx.Err()
	}
}

// Record stores an outcome and returns once it is committed.
func (s *Store) Record(ctx context.Context, tenantID, id uuid.UUID, out outbox.Outcome) error {
	r := recordReq{ctx: ctx, tenantID: tenantID, id: id, out: out, reply: make(chan error, 1)}
	s.records.reqs <- r
	return <-r.reply
}

func byTenant[R any](batch []R, tenant func(R) uuid.UUID) map[uuid.UUID][]R {
	out := map[uuid.UUID][]R{}
	for _, r := range batch {
		out[tenant(r)] = append(out[tenant(r)], r)
	}
	return out
}

func (s *Store) runLoads(batch []loadReq) {
	for tenantID, reqs := range byTenant(batch, func(r loadReq) uuid.UUID { return r.tenantID }) {
		ids := make([]uuid.UUID, len(reqs))
		for i, r := range reqs {
			ids[i] = r.id
		}
		var rows []outbox.Row
		var routes map[string]providers.Route
		ctx, cancel := context.WithTimeout(context.WithoutCancel(reqs[0].ctx), batchTimeout)
		err := s.scope.Do(ctx, tenantID, func(ctx context.Context) error {
			var err error
			if rows, err = s.msgs.GetMany(ctx, ids); err != nil {
				return err
			}
			routes, err = s.routes.Routes(ctx)
			return err
		})
		cancel()
		byID := make(map[uuid.UUID]outbox.Row, len(rows))
		for _, row := range rows {
			byID[row.ID] = row
		}
		for _, r := range reqs {
			row, found := byID[r.id]
			r.reply <- loaded{row: row, found: found, routes: routes, err: err}
		}
	}
}

func (s *Store) runRecords(batch []recordReq) {
	for tenantID, reqs := range byTenant(batch, func(r recordReq) uuid.UUID { return r.tenantID }) {
		outs := make(map[uuid.UUID]outbox.Outcome, len(reqs))
		for _, r := range reqs {
			outs[r.id] = r.out
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(reqs[0].ctx), batchTimeout)
		err := s.scope.Do(ctx, tenantID, func(ctx context.Context) error {
			return s.msgs.RecordMany(ctx, outs)
		})
		cancel()
		for _, r := range reqs {
			r.reply <- err
		}
	}
}
