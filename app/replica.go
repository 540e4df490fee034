package main

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/keyrelay/keyrelay/tenants"
)

// replicaReader runs read-mostly work (the booking list, the bundles'
// data) on a streaming replica of the database
// (KEYRELAY_DATABASE_REPLICA_URL), as the application role, in a READ ONLY
// transaction whose tenant is set exactly as tenants.Scope sets it
// (set_config('app.tenant_id', $1, true)): row-level security binds these
// reads as it binds every other.
//
// Read-your-writes. A replica replays the primary's WAL a little later.
// Before it reads, Read takes the primary's flushed WAL position
// (pg_current_wal_flush_lsn(), in the caller's transaction) and waits
// until the replica has replayed up to it (pg_last_wal_replay_lsn()), for
// at most Config.ReplicaMaxWait: whatever was committed before Read was
// called is then visible (a commit returns once its WAL is flushed; the
// flush position, unlike the insert position, is one a replica that has
// everything reaches exactly; only the relay's and the deliveries'
// asynchronous commits of outbox state could be missed, and nothing read
// here reads those), so a booking just created is in the list, and a
// bundle build holds every change it marks as covered. A replica further
// behind than that, or down, or cancelling the query for a conflict with
// recovery, is read around: fn runs on the primary, in the caller's
// transaction, as it would with no replica. Never stale, never an error
// of its own; keyrelay_db_replica_reads_total says where reads went.
//
// What fn reads must have been committed: the replica cannot see writes of
// the caller's transaction still open.
type replicaReader struct {
	db      *gorm.DB
	maxWait time.Duration
	log     *slog.Logger
	reads   *prometheus.CounterVec
	warned  atomic.Int64 // unix seconds of the last warning: one a minute
}

// Where a replica read ran.
const (
	readReplica            = "replica"             // on the replica
	readPrimaryLagging     = "primary_lagging"     // the replica did not catch up within ReplicaMaxWait
	readPrimaryUnavailable = "primary_unavailable" // the replica failed (down, refused, cancelled)
)

// errReplicaBehind: the replica had not replayed the primary's position
// within ReplicaMaxWait.
var errReplicaBehind = errors.New("replica: behind the primary")

// newReplicaReader opens the replica's pool (sized like the primary's). A
// replica that does not answer now is logged, not fatal: reads go to the
// primary until it does.
func newReplicaReader(ctx context.Context, cfg Config, tracer trace.Tracer, log *slog.Logger, m *Metrics) (*replicaReader, error) {
	db, err := gorm.Open(postgres.Open(cfg.DatabaseReplicaURL), &gorm.Config{
		Logger: logger.Discard, SkipDefaultTransaction: true, DisableAutomaticPing: true,
	})
	if err != nil {
		return nil, fmt.Errorf("KEYRELAY_DATABASE_REPLICA_URL: %w", err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, err
	}
	pool := cfg.DB.orDefault()
	sqlDB.SetMaxOpenConns(pool.MaxConns)
	sqlDB.SetMaxIdleConns(pool.MaxIdleConns)
	sqlDB.SetConnMaxIdleTime(pool.ConnMaxIdleTime)
	sqlDB.SetConnMaxLifetime(pool.ConnMaxLifetime)
	if cfg.tracing() {
		if err := traceDB(db, tracer); err != nil {
			sqlDB.Close()
			return nil, err
		}
	}
	r := &replicaReader{db: db, maxWait: cfg.ReplicaMaxWait, log: log,
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyrelay_db_replica_reads_total",
			Help: "Reads meant for the read replica (booking lists, bundle builds), by where they ran: replica, primary_lagging (the replica had not caught up within KEYRELAY_DATABASE_REPLICA_MAX_WAIT) or primary_unavailable (the replica failed).",
		}, []string{"result"})}
	for _, res := range []string{readReplica, readPrimaryLagging, readPrimaryUnavailable} {
		r.reads.WithLabelValues(res)
	}
	m.Registry.MustRegister(r.reads)
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var inRecovery bool
	if err := db.WithContext(pingCtx).Raw(`SELECT pg_is_in_recovery()`).Scan(&inRecovery).Error; err != nil {
		log.Warn("the read replica does not answer; booking lists and bundle builds read from the primary until it does",
			"replica", pgWhere(cfg.DatabaseReplicaURL), "err", rootCause(err))
	} else if !inRecovery {
		log.Warn("KEYRELAY_DATABASE_REPLICA_URL names a server that is not a standby: reads meant for a replica will load it",
			"replica", pgWhere(cfg.DatabaseReplicaURL))
	}
	return r, nil
}

// orNil is the reader as the domain packages take it: an untyped nil
// without a replica, so that their nil check holds.
func (r *replicaReader) orNil() interface {
	Read(ctx context.Context, fn func(ctx context.Context) error) error
} {
	if r == nil {
		return nil
	}
	return r
}

func (r *replicaReader) close() {
	if r == nil {
		return
	}
	if sqlDB, err := r.db.DB(); err == nil {
		sqlDB.Close()
	}
}

// Read runs fn on the replica, in a read-only transaction for the tenant of
// ctx's transaction, once the replica holds everything the primary had
// written when Read was called; or, failing that, on the primary in ctx.
// fn must only read, and may run twice (on the replica, then on the
// primary).
func (r *replicaReader) Read(ctx context.Context, fn func(ctx context.Context) error) error {
	tenantID, ok := tenants.TenantOf(ctx)
	if !ok {
		return errors.New("replica: no tenant transaction in context")
	}
	primary, err := tenants.Tx(ctx)
	if err != nil {
		return err
	}
	var lsn string
	if err := primary.Raw(`SELECT pg_current_wal_flush_lsn()::text`).Scan(&lsn).Error; err != nil {
		return fmt.Errorf("replica: the primary's WAL position: %w", err)
	}
	err = r.read(ctx, tenantID, lsn, fn)
	switch {
	case err == nil:
		r.reads.WithLabelValues(readReplica).Inc()
		return nil
	case ctx.Err() != nil:
		return err
	case errors.Is(err, errReplicaBehind):
		r.reads.WithLabelValues(readPrimaryLagging).Inc()
	case replicaFailed(err):
		r.reads.WithLabelValues(readPrimaryUnavailable).Inc()
		if now := time.Now().Unix(); r.warned.Load() < now-60 {
			r.warned.Store(now)
			r.log.Warn("the read replica failed; reading from the primary", "err", rootCause(err))
		}
	default:
		return err // fn's own answer (not found, invalid…)
	}
	return fn(ctx)
}

// read is Read on the replica only.
func (r *replicaReader) read(ctx context.Context, tenantID uuid.UUID, lsn string, fn func(ctx context.Context) error) error {
	tx := r.db.WithContext(ctx).Begin(&sql.TxOptions{ReadOnly: true})
	if tx.Error != nil {
		return tx.Error
	}
	// Read only: a rollback ends it as well as a commit would.
	defer tx.Rollback()
	var st struct {
		Tenant   string
		CaughtUp bool
	}
	// NOT pg_is_in_recovery(): a promoted replica, or the primary itself,
	// has all there is.
	if err := tx.Raw(`SELECT set_config('app.tenant_id', ?, true) AS tenant,
			(NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() >= ?::pg_lsn) AS caught_up`, tenantID.String(), lsn).
		Scan(&st).Error; err != nil {
		return err
	}
	// READ COMMITTED: every statement after the wait sees what the
	// replica has replayed by then.
	deadline := time.Now().Add(r.maxWait)
	for pause := time.Millisecond; !st.CaughtUp; pause = min(2*pause, 20*time.Millisecond) {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("%w: %s not replayed within %v", errReplicaBehind, lsn, r.maxWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(pause, left)):
		}
		if err := tx.Raw(`SELECT pg_last_wal_replay_lsn() >= ?::pg_lsn AS caught_up`, lsn).Scan(&st).Error; err != nil {
			return err
		}
	}
	return fn(tenants.WithTx(ctx, tenantID, tx))
}

// replicaFailed tells a replica that could not serve the read (down,
// restarting, full, cancelling for a conflict with recovery) from an
// answer of fn's own.
func replicaFailed(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		c := pgErr.Code
		// 40001: cancelled for a conflict with recovery; 08: connection;
		// 53: insufficient resources (too many connections); 57P:
		// shutting down, starting up.
		return c == "40001" || strings.HasPrefix(c, "08") || strings.HasPrefix(c, "53") || strings.HasPrefix(c, "57P")
	}
	var connErr *pgconn.ConnectError
	return errors.As(err, &connErr) || isConnError(err) || errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, pgconn.ErrConnClosed) || pgconn.SafeToRetry(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || pgconn.Timeout(err)
}
