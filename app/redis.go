package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
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
// for one, go in sentinel_username / sentinel_password. wait_replicas
// (default 1 under Sentinel, 0 turns it off) and wait_timeout (500ms) make
// every enqueue wait until that many replicas hold it: see queueClient. For Cluster the
// hosts are seed nodes (port 6379 when left out); the client learns the
// rest of the cluster from them, and a cluster has only database 0.
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
	waitReplicas     int           // Sentinel: replicas that must hold an enqueued task
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
			if mode != redisSentinel {
				return redisTarget{}, badRedisURL("wait_replicas is for Sentinel URLs")
			}
			if t.waitReplicas, err = strconv.Atoi(v); err != nil || t.waitReplicas < 0 {
				return redisTarget{}, badRedisURL("wait_replicas %q: want 0 or more", v)
			}
		case "wait_timeout":
			if mode != redisSentinel {
				return redisTarget{}, badRedisURL("wait_timeout is for Sentinel URLs")
			}
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
func (t redisTarget) client() redis.UniversalClient {
	switch t.mode {
	case redisSentinel:
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: t.masterName, SentinelAddrs: t.addrs,
			SentinelUsername: t.sentinelUsername, SentinelPassword: t.sentinelPassword,
			Username: t.username, Password: t.password, DB: t.db,
			DialTimeout: t.dialTimeout, ReadTimeout: t.readTimeout, WriteTimeout: t.writeTimeout,
			PoolSize: t.poolSize, TLSConfig: t.tlsConfig(),
		})
	case redisCluster:
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: t.addrs, Username: t.username, Password: t.password,
			DialTimeout: t.dialTimeout, ReadTimeout: t.readTimeout, WriteTimeout: t.writeTimeout,
			PoolSize: t.poolSize, TLSConfig: t.tlsConfig(),
		})
	default:
		return redis.NewClient(t.single)
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
// Under Sentinel, with wait_replicas > 0, it enqueues through the shared
// client and follows each enqueue script with WAIT on the same connection:
// the enqueue succeeds only once that many replicas hold the task. Without
// it a failover loses tasks: Redis replicates asynchronously, and between a
// replica's promotion and the clients' switch the old master still accepts
// enqueues that its demotion then discards — the relay has already marked
// those rows relayed, so their messages would never go out
// (TestRedisSentinelFailover lost a batch in about one run in three before
// this). A failed WAIT fails the enqueue; the row stays pending and the
// next pass enqueues it on the new master (the task id, or the message's
// claim, keeps it from going out twice). The price: with fewer replicas
// up than wait_replicas, nothing is enqueued — messages wait in the
// outbox, visibly (outbox lag), rather than vanish.
func (t redisTarget) queueClient(shared redis.UniversalClient) *asynq.Client {
	if c, ok := shared.(*redis.Client); ok && t.mode == redisSentinel && t.waitReplicas > 0 {
		return asynq.NewClientFromRedisClient(replicatedScripts{Client: c, replicas: t.waitReplicas, timeout: t.waitTimeout})
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
	return r.wait(ctx, cn, cn.EvalSha(ctx, sha, keys, args...))
}

func (r replicatedScripts) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	cn := r.Client.Conn()
	defer cn.Close()
	return r.wait(ctx, cn, cn.Eval(ctx, script, keys, args...))
}

func (r replicatedScripts) wait(ctx context.Context, cn *redis.Conn, cmd *redis.Cmd) *redis.Cmd {
	if cmd.Err() != nil {
		return cmd // NOSCRIPT included: Script.Run retries with Eval, which waits
	}
	n, err := cn.Wait(ctx, r.replicas, r.timeout).Result()
	if err == nil && n < int64(r.replicas) {
		err = fmt.Errorf("%w: %d of %d within %v", errNotReplicated, n, r.replicas, r.timeout)
	}
	if err != nil {
		cmd.SetErr(err)
	}
	return cmd
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
