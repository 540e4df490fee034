package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// redisTarget is the Redis deployment KEYRELAY_REDIS_URL names. Three forms
// (each also with TLS: rediss, rediss-sentinel, rediss-cluster):
//
//	redis://[[user]:password@]host:port[/db][?dial_timeout=…&…]   one node (go-redis ParseURL's options)
//	redis-sentinel://[[user]:password@]host:port[,host:port…]/<master-name>[?db=N&sentinel_password=…]
//	redis-cluster://[[user]:password@]host:port[,host:port…][?…]
//
// For Sentinel the hosts are the sentinels (port 26379 when left out) and
// the credentials are the data nodes'; the sentinels' own, when they ask
// for one, go in sentinel_username / sentinel_password. For Cluster the
// hosts are seed nodes (port 6379 when left out); the client learns the
// rest of the cluster from them, and a cluster has only database 0.
//
// wait_replicas and wait_timeout (500ms) make every enqueue wait until
// that many replicas of the node that took it hold it: see queueClient.
// Under Sentinel wait_replicas is 1 unless set (0 turns it off); on a
// Cluster it is 0 unless set, since a cluster may have no replicas at all:
// a cluster with a replica per master wants wait_replicas=1.
//
// Every consumer (the guard, the limiters, idempotency, the box-command
// hub, the outbox wake-up, box nonces, health) shares the one
// redis.UniversalClient built from it; asynq, which owns its connections,
// gets the matching asynq.RedisConnOpt.
type redisTarget struct {
	mode   redisMode
	single *redis.Options // mode single: everything go-redis's ParseURL understands

	addrs            []string
	masterName       string
	username         string
	password         string
	sentinelUsername string
	sentinelPassword string
	db               int
	tls              bool
	dialTimeout      time.Duration
	readTimeout      time.Duration
	writeTimeout     time.Duration
	poolSize         int
	waitReplicas     int           // replicas that must hold an enqueued task (Sentinel, Cluster)
	waitTimeout      time.Duration // …within this long, or the enqueue fails
}

type redisMode string

const (
	redisSingle   redisMode = "single"
	redisSentinel redisMode = "sentinel"
	redisCluster  redisMode = "cluster"
)

// errRedisURL is the cause of every malformed KEYRELAY_REDIS_URL. Messages
// never quote the URL: it may hold a password.
var errRedisURL = errors.New("invalid Redis URL")

func badRedisURL(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errRedisURL, fmt.Sprintf(format, args...))
}

// parseRedisURL reads KEYRELAY_REDIS_URL.
func parseRedisURL(raw string) (redisTarget, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return redisTarget{}, badRedisURL("want redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster:// or rediss-cluster://")
	}
	switch scheme {
	case "redis", "rediss", "unix":
		opts, err := redis.ParseURL(raw)
		if err != nil {
			return redisTarget{}, badRedisURL("%s", redactURLError(err))
		}
		return redisTarget{mode: redisSingle, single: opts}, nil
	case "redis-sentinel", "rediss-sentinel":
		return parseMultiHost(redisSentinel, strings.HasPrefix(scheme, "rediss"), rest)
	case "redis-cluster", "rediss-cluster":
		return parseMultiHost(redisCluster, strings.HasPrefix(scheme, "rediss"), rest)
	default:
		return redisTarget{}, badRedisURL("unknown scheme %q; want redis, rediss, redis-sentinel, rediss-sentinel, redis-cluster or rediss-cluster", scheme)
	}
}

// redactURLError keeps go-redis's complaint without the URL it quotes.
func redactURLError(err error) string {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err.Error()
	}
	return err.Error()
}

// parseMultiHost reads the part after the scheme of a sentinel or cluster
// URL by hand: url.Parse refuses a comma-separated host list with IPv6
// addresses in it.
func parseMultiHost(mode redisMode, useTLS bool, rest string) (redisTarget, error) {
	t := redisTarget{mode: mode, tls: useTLS, waitTimeout: 500 * time.Millisecond}
	if mode == redisSentinel {
		t.waitReplicas = 1
	}
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	path, rawQuery, _ := strings.Cut(tail, "?")
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		user, pass, hasPass := strings.Cut(authority[:i], ":")
		var err error
		if t.username, err = url.PathUnescape(user); err != nil {
			return redisTarget{}, badRedisURL("user name: bad escape")
		}
		if hasPass {
			if t.password, err = url.PathUnescape(pass); err != nil {
				return redisTarget{}, badRedisURL("password: bad escape")
			}
		}
		authority = authority[i+1:]
	}
	defaultPort := "6379"
	if mode == redisSentinel {
		defaultPort = "26379"
	}
	for _, h := range strings.Split(authority, ",") {
		if h == "" {
			return redisTarget{}, badRedisURL("empty host in the %s host list", mode)
		}
		host, port, err := net.SplitHostPort(h)
		if err != nil {
			// No port: the mode's default.
			host, port = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), defaultPort
			if strings.ContainsAny(host, "[]") {
				return redisTarget{}, badRedisURL("host %q", h)
			}
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" {
			return redisTarget{}, badRedisURL("host %q: want host:port", h)
		}
		t.addrs = append(t.addrs, net.JoinHostPort(host, port))
	}

	path = strings.TrimPrefix(path, "/")
	switch mode {
	case redisSentinel:
		name, err := url.PathUnescape(path)
		if err != nil || name == "" || strings.Contains(name, "/") {
			return redisTarget{}, badRedisURL("a Sentinel URL names its master: redis-sentinel://host:26379,host:26379/<master-name>")
		}
		t.masterName = name
	case redisCluster:
		if path != "" && path != "0" {
			return redisTarget{}, badRedisURL("Redis Cluster has only database 0; leave the path out")
		}
	}

	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return redisTarget{}, badRedisURL("query: %s", err)
	}
	for key, vals := range q {
		if len(vals) != 1 {
			return redisTarget{}, badRedisURL("option %s given %d times", key, len(vals))
		}
		v := vals[0]
		switch key {
		case "db":
			if mode != redisSentinel {
				return redisTarget{}, badRedisURL("Redis Cluster has only database 0; drop db")
			}
			if t.db, err = strconv.Atoi(v); err != nil || t.db < 0 {
				return redisTarget{}, badRedisURL("db %q: want a database number", v)
			}
		case "sentinel_username", "sentinel_password":
			if mode != redisSentinel {
				return redisTarget{}, badRedisURL("%s is for Sentinel URLs", key)
			}
			if key == "sentinel_username" {
				t.sentinelUsername = v
			} else {
				t.sentinelPassword = v
			}
		case "dial_timeout", "read_timeout", "write_timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return redisTarget{}, badRedisURL("%s %q: want a duration such as 2s", key, v)
			}
			switch key {
			case "dial_timeout":
				t.dialTimeout = d
			case "read_timeout":
				t.readTimeout = d
			default:
				t.writeTimeout = d
			}
		case "wait_replicas":
			if t.waitReplicas, err = strconv.Atoi(v); err != nil || t.waitReplicas < 0 {
				return redisTarget{}, badRedisURL("wait_replicas %q: want 0 or more", v)
			}
		case "wait_timeout":
			if t.waitTimeout, err = time.ParseDuration(v); err != nil || t.waitTimeout < time.Millisecond {
				return redisTarget{}, badRedisURL("wait_timeout %q: want a duration such as 500ms", v)
			}
		case "pool_size":
			if t.poolSize, err = strconv.Atoi(v); err != nil || t.poolSize < 1 {
				return redisTarget{}, badRedisURL("pool_size %q: want a positive number", v)
			}
		default:
			return redisTarget{}, badRedisURL("unknown option %q (known: db, sentinel_username, sentinel_password, wait_replicas, wait_timeout, dial_timeout, read_timeout, write_timeout, pool_size)", key)
		}
	}
	return t, nil
}

// tlsConfig leaves ServerName empty on purpose: crypto/tls then checks
// each node's certificate against the address dialled, which is right for
// a list of hosts.
func (t redisTarget) tlsConfig() *tls.Config {
	if !t.tls {
		return nil
	}
	return &tls.Config{MinVersion: tls.VersionTLS12}
}

// client builds the shared client: a plain one, a Sentinel-aware one that
// follows the master through failovers, or a cluster one that routes each
// key to its slot's master.
//
// The client speaks RESP2 (Protocol 2) unless a single-node URL asks for
// protocol=3: nothing here uses a RESP3 feature, and a RESP3 client looks
// for pending push notifications on the socket before every command, one
// system call more per command on the hottest paths (a box's pickup makes
// two; deploy/bench).
func (t redisTarget) client() redis.UniversalClient {
	switch t.mode {
	case redisSentinel:
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: t.masterName, SentinelAddrs: t.addrs,
			SentinelUsername: t.sentinelUsername, SentinelPassword: t.sentinelPassword,
			Username: t.username, Password: t.password, DB: t.db,
			DialTimeout: t.dialTimeout, ReadTimeout: t.readTimeout, WriteTimeout: t.writeTimeout,
			PoolSize: t.poolSize, TLSConfig: t.tlsConfig(), Protocol: 2,
		})
	case redisCluster:
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: t.addrs, Username: t.username, Password: t.password,
			DialTimeout: t.dialTimeout, ReadTimeout: t.readTimeout, WriteTimeout: t.writeTimeout,
			PoolSize: t.poolSize, TLSConfig: t.tlsConfig(), Protocol: 2,
		})
	default:
		o := *t.single
		if o.Protocol == 0 {
			o.Protocol = 2
		}
		return redis.NewClient(&o)
	}
}

// queueOpt is the same deployment as asynq names it.
func (t redisTarget) queueOpt() asynq.RedisConnOpt {
	switch t.mode {
	case redisSentinel:
		return asynq.RedisFailoverClientOpt{
			MasterName: t.masterName, SentinelAddrs: t.addrs,
			SentinelUsername: t.sentinelUsername, SentinelPassword: t.sentinelPassword,
			Username: t.username, Password: t.password, DB: t.db,
			DialTimeout: t.dialTimeout, ReadTimeout: t.readTimeout, WriteTimeout: t.writeTimeout,
			PoolSize: t.poolSize, TLSConfig: t.tlsConfig(),
		}
	case redisCluster:
		return asynq.RedisClusterClientOpt{
			Addrs: t.addrs, Username: t.username, Password: t.password,
			DialTimeout: t.dialTimeout, ReadTimeout: t.readTimeout, WriteTimeout: t.writeTimeout,
			TLSConfig: t.tlsConfig(),
		}
	default:
		o := t.single
		return asynq.RedisClientOpt{
			Network: o.Network, Addr: o.Addr, Username: o.Username, Password: o.Password, DB: o.DB,
			DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
			PoolSize: o.PoolSize, TLSConfig: o.TLSConfig,
		}
	}
}

// queueClient is the asynq client that enqueues tasks (the outbox relay,
// delivery retries, bundle rebuilds).
//
// With wait_replicas > 0 it enqueues through the shared client and follows
// each enqueue script with WAIT on the same connection: the enqueue
// succeeds only once that many replicas of the node that ran it hold the
// task. Without it a failover loses tasks: Redis replicates
// asynchronously, and between a replica's promotion and the clients'
// switch the old master still accepts enqueues that its demotion then
// discards, or dies with writes its replica never got — the relay has
// already marked those rows relayed, so their messages would never go out
// (TestRedisSentinelFailover lost a batch in about one run in three before
// this). A failed WAIT fails the enqueue; the row stays pending and the
// next pass enqueues it on the new master (the task id, or the message's
// claim, keeps it from going out twice). The price: with fewer replicas
// up than wait_replicas, nothing is confirmed — messages wait in the
// outbox, visibly (outbox lag), rather than vanish. WAIT is best effort
// (redis.io/commands/wait: Sentinel and Cluster promote the replica with
// the most data, which is one that acknowledged), not consensus.
//
// Under Sentinel the shared client is one connection pool to the master
// (replicatedScripts). On a Cluster each script runs on the master of its
// first key's slot — asynq's keys share one hash tag per queue — on one
// connection taken from that master's pool (ClusterClient.MasterForKey),
// and WAIT follows there (clusterReplicatedScripts).
func (t redisTarget) queueClient(shared redis.UniversalClient) *asynq.Client {
	if t.waitReplicas > 0 {
		switch c := shared.(type) {
		case *redis.Client:
			if t.mode == redisSentinel {
				return asynq.NewClientFromRedisClient(replicatedScripts{Client: c, replicas: t.waitReplicas, timeout: t.waitTimeout})
			}
		case *redis.ClusterClient:
			return asynq.NewClientFromRedisClient(clusterReplicatedScripts{ClusterClient: c, replicas: t.waitReplicas, timeout: t.waitTimeout})
		}
	}
	return asynq.NewClient(t.queueOpt())
}

// errNotReplicated fails an enqueue that too few replicas acknowledged.
var errNotReplicated = errors.New("redis: not acknowledged by enough replicas")

// replicatedScripts runs scripts (asynq's enqueues are scripts) and then
// WAITs for replicas on the same connection, as WAIT only covers the
// writes of the connection it runs on.
type replicatedScripts struct {
	*redis.Client
	replicas int
	timeout  time.Duration
}

func (r replicatedScripts) EvalSha(ctx context.Context, sha string, keys []string, args ...any) *redis.Cmd {
	cn := r.Client.Conn()
	defer cn.Close()
	return waitReplicas(ctx, cn, cn.EvalSha(ctx, sha, keys, args...), r.replicas, r.timeout)
}

func (r replicatedScripts) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	cn := r.Client.Conn()
	defer cn.Close()
	return waitReplicas(ctx, cn, cn.Eval(ctx, script, keys, args...), r.replicas, r.timeout)
}

// waitReplicas WAITs on cn, after cmd ran there, until replicas replicas
// hold its writes, and fails cmd if fewer do within timeout.
func waitReplicas(ctx context.Context, cn *redis.Conn, cmd *redis.Cmd, replicas int, timeout time.Duration) *redis.Cmd {
	if cmd.Err() != nil {
		return cmd // NOSCRIPT included: Script.Run retries with Eval, which waits
	}
	n, err := cn.Wait(ctx, replicas, timeout).Result()
	if err == nil && n < int64(replicas) {
		err = fmt.Errorf("%w: %d of %d within %v", errNotReplicated, n, replicas, timeout)
	}
	if err != nil {
		cmd.SetErr(err)
	}
	return cmd
}

// clusterReplicatedScripts is replicatedScripts on a Redis Cluster: the
// script runs on the master that owns its first key's slot, through a
// connection of that node's own pool, and WAIT follows on that
// connection. The cluster client's redirect handling is bypassed, so a
// script that meets a moved slot (a failover, a resharding) or a node
// that is gone makes the client reload the slot map and tries again, a
// few times, before the enqueue fails (and the relay's next pass retries).
type clusterReplicatedScripts struct {
	*redis.ClusterClient
	replicas int
	timeout  time.Duration
}

func (r clusterReplicatedScripts) EvalSha(ctx context.Context, sha string, keys []string, args ...any) *redis.Cmd {
	return r.onMaster(ctx, keys, func(cn *redis.Conn) *redis.Cmd { return cn.EvalSha(ctx, sha, keys, args...) })
}

func (r clusterReplicatedScripts) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return r.onMaster(ctx, keys, func(cn *redis.Conn) *redis.Cmd { return cn.Eval(ctx, script, keys, args...) })
}

// clusterAttempts bounds the tries of one script across slot-map reloads.
const clusterAttempts = 3

func (r clusterReplicatedScripts) onMaster(ctx context.Context, keys []string, eval func(cn *redis.Conn) *redis.Cmd) *redis.Cmd {
	if len(keys) == 0 {
		cmd := redis.NewCmd(ctx)
		cmd.SetErr(errors.New("redis: a script without keys has no slot, so no master to wait on"))
		return cmd
	}
	for attempt := 1; ; attempt++ {
		master, err := r.MasterForKey(ctx, keys[0])
		if err != nil {
			cmd := redis.NewCmd(ctx)
			cmd.SetErr(err)
			return cmd
		}
		cn := master.Conn()
		cmd := eval(cn)
		if err := cmd.Err(); err != nil && attempt < clusterAttempts && slotElsewhere(err) {
			cn.Close()
			r.ReloadState(ctx) // lazy: the next MasterForKey sees the new map once it is read
			select {
			case <-ctx.Done():
				return cmd
			case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
			}
			continue
		}
		cmd = waitReplicas(ctx, cn, cmd, r.replicas, r.timeout)
		cn.Close()
		return cmd
	}
}

// slotElsewhere tells an error after which the slot map may be stale: the
// slot moved, the cluster is failing over, or the node is gone.
func slotElsewhere(err error) bool {
	if _, ok := redis.IsMovedError(err); ok {
		return true
	}
	if _, ok := redis.IsAskError(err); ok {
		return true
	}
	var op *net.OpError
	return redis.IsClusterDownError(err) || redis.IsTryAgainError(err) || redis.IsReadOnlyError(err) || redis.IsLoadingError(err) ||
		errors.As(err, &op) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// where says which deployment, without credentials, for error messages.
func (t redisTarget) where() string {
	switch t.mode {
	case redisSentinel:
		return fmt.Sprintf("master %q via Sentinel %s", t.masterName, strings.Join(t.addrs, ","))
	case redisCluster:
		return "Redis Cluster " + strings.Join(t.addrs, ",")
	default:
		return t.single.Addr
	}
}
