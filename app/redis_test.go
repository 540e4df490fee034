package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

func TestParseRedisURL(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		for _, tc := range []struct {
			url   string
			check func(t *testing.T, rt redisTarget)
		}{
			{"redis://127.0.0.1:6379/5", func(t *testing.T, rt redisTarget) {
				if rt.mode != redisSingle || rt.single.Addr != "127.0.0.1:6379" || rt.single.DB != 5 {
					t.Fatalf("got %+v", rt)
				}
				c, ok := rt.client().(*redis.Client)
				if !ok {
					t.Fatalf("client %T, want *redis.Client", rt.client())
				}
				if c.Options().Protocol != 2 {
					t.Errorf("protocol %d, want RESP2 unless the URL asks", c.Options().Protocol)
				}
				if o, ok := rt.queueOpt().(asynq.RedisClientOpt); !ok || o.Addr != "127.0.0.1:6379" || o.DB != 5 {
					t.Fatalf("queue %+v", rt.queueOpt())
				}
			}},
			{"rediss://:s3cret@cache.example:6380/0?dial_timeout=3s", func(t *testing.T, rt redisTarget) {
				o := rt.queueOpt().(asynq.RedisClientOpt)
				if o.Password != "s3cret" || o.TLSConfig == nil || o.DialTimeout != 3*time.Second {
					t.Fatalf("queue %+v", o)
				}
			}},
			{"redis-sentinel://:pw@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster?db=3&sentinel_password=sp&read_timeout=2s", func(t *testing.T, rt redisTarget) {
				want := []string{"10.0.0.1:26379", "10.0.0.2:26379", "[::1]:26380"}
				if rt.mode != redisSentinel || rt.masterName != "mymaster" || rt.db != 3 || rt.password != "pw" || rt.sentinelPassword != "sp" || strings.Join(rt.addrs, " ") != strings.Join(want, " ") {
					t.Fatalf("got %+v", rt)
				}
				o, ok := rt.queueOpt().(asynq.RedisFailoverClientOpt)
				if !ok || o.MasterName != "mymaster" || o.DB != 3 || o.Password != "pw" || o.SentinelPassword != "sp" || len(o.SentinelAddrs) != 3 || o.ReadTimeout != 2*time.Second || o.TLSConfig != nil {
					t.Fatalf("queue %+v", rt.queueOpt())
				}
				if strings.Contains(rt.where(), "pw") || !strings.Contains(rt.where(), "mymaster") {
					t.Fatalf("where = %q", rt.where())
				}
				if _, ok := rt.client().(*redis.Client); !ok { // go-redis's failover client is a *redis.Client
					t.Fatalf("client %T", rt.client())
				}
			}},
			{"redis-sentinel://127.0.0.1:26379/m?wait_replicas=0", func(t *testing.T, rt redisTarget) {
				if rt.waitReplicas != 0 {
					t.Fatalf("waitReplicas = %d", rt.waitReplicas)
				}
			}},
			{"redis-sentinel://127.0.0.1:26379/m?wait_replicas=2&wait_timeout=1s", func(t *testing.T, rt redisTarget) {
				if rt.waitReplicas != 2 || rt.waitTimeout != time.Second {
					t.Fatalf("got %+v", rt)
				}
			}},
			{"rediss-sentinel://sentinel.example/my%20master", func(t *testing.T, rt redisTarget) {
				if rt.waitReplicas != 1 || rt.waitTimeout != 500*time.Millisecond {
					t.Fatalf("Sentinel defaults: wait for %d replicas within %v, want 1 within 500ms", rt.waitReplicas, rt.waitTimeout)
				}
				o := rt.queueOpt().(asynq.RedisFailoverClientOpt)
				if o.MasterName != "my master" || o.SentinelAddrs[0] != "sentinel.example:26379" || o.TLSConfig == nil {
					t.Fatalf("queue %+v", o)
				}
			}},
			{"redis-cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2:7001,10.0.0.3", func(t *testing.T, rt redisTarget) {
				if rt.mode != redisCluster || rt.username != "u" || rt.password != "p@ss" || rt.addrs[2] != "10.0.0.3:6379" {
					t.Fatalf("got %+v", rt)
				}
				if _, ok := rt.client().(*redis.ClusterClient); !ok {
					t.Fatalf("client %T, want *redis.ClusterClient", rt.client())
				}
				o, ok := rt.queueOpt().(asynq.RedisClusterClientOpt)
				if !ok || len(o.Addrs) != 3 || o.Password != "p@ss" || o.TLSConfig != nil {
					t.Fatalf("queue %+v", rt.queueOpt())
				}
				if rt.waitReplicas != 0 {
					t.Fatalf("Cluster default: wait for %d replicas, want 0 (a cluster may have none)", rt.waitReplicas)
				}
			}},
			{"redis-cluster://127.0.0.1:7000?wait_replicas=1&wait_timeout=250ms", func(t *testing.T, rt redisTarget) {
				if rt.waitReplicas != 1 || rt.waitTimeout != 250*time.Millisecond {
					t.Fatalf("got %+v", rt)
				}
			}},
			{"rediss-cluster://10.0.0.1:7000/", func(t *testing.T, rt redisTarget) {
				if o := rt.queueOpt().(asynq.RedisClusterClientOpt); o.TLSConfig == nil || o.TLSConfig.ServerName != "" {
					t.Fatalf("queue %+v: want TLS checked against each node's address", o)
				}
			}},
		} {
			t.Run(tc.url, func(t *testing.T) {
				rt, err := parseRedisURL(tc.url)
				if err != nil {
					t.Fatal(err)
				}
				tc.check(t, rt)
			})
		}
	})
	t.Run("Err", func(t *testing.T) {
		for _, tc := range []struct{ url, want string }{
			{"127.0.0.1:6379", "want redis://"},
			{"http://127.0.0.1", "unknown scheme"},
			{"redis://:hunter2@127.0.0.1:6379/0?nope=1", "nope"},
			{"redis-sentinel://127.0.0.1:26379", "names its master"},
			{"redis-sentinel://127.0.0.1:26379/", "names its master"},
			{"redis-sentinel://:hunter2@127.0.0.1:26379,/m", "empty host"},
			{"redis-sentinel://127.0.0.1:99999/m", "want host:port"},
			{"redis-sentinel://127.0.0.1:26379/m?db=x", "db"},
			{"redis-sentinel://127.0.0.1:26379/m?verbose=1", "unknown option"},
			{"redis-cluster://127.0.0.1:7000/2", "only database 0"},
			{"redis-cluster://127.0.0.1:7000?db=1", "only database 0"},
			{"redis-cluster://127.0.0.1:7000?sentinel_password=x", "for Sentinel"},
			{"redis-cluster://127.0.0.1:7000?pool_size=0", "pool_size"},
			{"redis-cluster://127.0.0.1:7000?wait_replicas=one", "wait_replicas"},
			{"redis-sentinel://127.0.0.1:26379/m?wait_replicas=-1", "wait_replicas"},
			{"redis-sentinel://127.0.0.1:26379/m?wait_timeout=0s", "wait_timeout"},
			{"redis-cluster://127.0.0.1:7000?read_timeout=soon", "read_timeout"},
		} {
			t.Run(tc.url, func(t *testing.T) {
				_, err := parseRedisURL(tc.url)
				if !errors.Is(err, errRedisURL) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want %q", err, tc.want)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("the error shows the password: %v", err)
				}
			})
		}
	})
}

// TestRedisProtocol: RESP2 by default; a single-node URL may ask for
// RESP3, and the client then speaks it to the real server.
func TestRedisProtocol(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want int
	}{
		{fmt.Sprintf("redis://127.0.0.1:6379/%d", testRedisDB), 2},
		{fmt.Sprintf("redis://127.0.0.1:6379/%d?protocol=3", testRedisDB), 3},
	} {
		rt, err := parseRedisURL(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		c := rt.client().(*redis.Client)
		if c.Options().Protocol != tc.want {
			t.Errorf("%s: protocol %d, want %d", tc.url, c.Options().Protocol, tc.want)
		}
		hello, err := c.Do(context.Background(), "HELLO").Result()
		if err != nil {
			t.Fatal(err)
		}
		// HELLO answers a map under RESP3 and a flat list under RESP2.
		_, isMap := hello.(map[any]any)
		if isMap != (tc.want == 3) {
			t.Errorf("%s: HELLO answered %T", tc.url, hello)
		}
		c.Close()
	}
}

// TestReplicatedScripts: a script (an enqueue) that no replica
// acknowledged in time fails, so the relay keeps its rows pending; with no
// replicas asked for it succeeds. The local Redis has no replica.
func TestReplicatedScripts(t *testing.T) {
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", DB: testRedisDB})
	defer c.Close()
	key := "keyrelay:test:replicated:" + uuid.NewString()
	defer c.Del(ctx, key)
	script := redis.NewScript(`return redis.call('incr', KEYS[1])`)

	err := script.Run(ctx, replicatedScripts{Client: c, replicas: 1, timeout: 50 * time.Millisecond}, []string{key}).Err()
	if !errors.Is(err, errNotReplicated) {
		t.Fatalf("err = %v, want errNotReplicated", err)
	}
	n, err := script.Run(ctx, replicatedScripts{Client: c, replicas: 0, timeout: 50 * time.Millisecond}, []string{key}).Int()
	if err != nil || n != 2 {
		t.Fatalf("without replicas: %d %v, want 2 (the first run's write stands: WAIT cannot undo it)", n, err)
	}
}
