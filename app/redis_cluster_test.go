package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/keyrelay/keyrelay/firmware/commands"
	"github.com/keyrelay/keyrelay/tenants/outbox"
)

// needBinaries skips a test whose Redis binaries are missing, except in CI
// (where .ci/run installs them), where that is a failure.
func needBinaries(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed (apt-get install redis-server redis-tools redis-sentinel)", n)
			}
			t.Skipf("%s is not installed; apt-get install redis-server redis-tools redis-sentinel to run this test", n)
		}
	}
}

// freePort finds a loopback port nobody listens on.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// redisProc is one redis-server (or redis-sentinel) this test started.
type redisProc struct {
	addr string
	cmd  *exec.Cmd
	log  string
	once sync.Once
}

// stop kills the process and reaps it; safe to call twice.
func (p *redisProc) stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	})
}

// startRedis runs bin with args on port (added as --port), its files in
// dir, until the test ends (killed even when the test fails), and waits
// until it answers PING.
func startRedis(t *testing.T, bin, dir string, port int, args ...string) *redisProc {
	t.Helper()
	p := &redisProc{addr: "127.0.0.1:" + strconv.Itoa(port), log: filepath.Join(dir, fmt.Sprintf("%s-%d.log", bin, port))}
	out, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir, p.cmd.Stdout, p.cmd.Stderr = dir, out, out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			if b, err := os.ReadFile(p.log); err == nil {
				t.Logf("%s on %s:\n%s", bin, p.addr, lastLines(b, 30))
			}
		}
	})
	c := redis.NewClient(&redis.Options{Addr: p.addr, MaxRetries: -1})
	defer c.Close()
	waitFor(t, bin+" on "+p.addr, 10*time.Second, func() bool { return c.Ping(context.Background()).Err() == nil })
	return p
}

func lastLines(b []byte, n int) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, []byte("\n"))
}

// serverArgs are the flags every test Redis gets: loopback only, nothing
// on disk but what the test directory holds.
func serverArgs(port int, extra ...string) []string {
	return append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"}, extra...)
}

// startCluster starts a Redis Cluster of three masters on loopback and
// returns their addresses once every slot is served.
func startCluster(t *testing.T) []string {
	t.Helper()
	nodes := startClusterNodes(t, 0)
	addrs := make([]string, len(nodes))
	for i, n := range nodes {
		addrs[i] = n.addr
	}
	return addrs
}

// startClusterNodes starts a Redis Cluster of three masters with replicas
// replicas each on loopback and returns its nodes once every slot is served
// and every replica is in sync with its master.
func startClusterNodes(t *testing.T, replicas int) []*redisProc {
	t.Helper()
	dir := t.TempDir()
	var nodes []*redisProc
	var addrs []string
	for range 3 * (1 + replicas) {
		port := freePort(t)
		// The bus port is chosen too: port+10000, the default, may be taken.
		p := startRedis(t, "redis-server", dir, port, serverArgs(port, "--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(freePort(t)),
			"--cluster-config-file", fmt.Sprintf("nodes-%d.conf", port), "--cluster-node-timeout", "2000")...)
		nodes = append(nodes, p)
		addrs = append(addrs, p.addr)
	}
	create := exec.Command("redis-cli", append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")...)
	if out, err := create.CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		waitFor(t, "cluster_state:ok on "+a, 20*time.Second, func() bool {
			info, err := c.ClusterInfo(context.Background()).Result()
			return err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, fmt.Sprintf("cluster_known_nodes:%d", len(addrs)))
		})
		waitFor(t, "replication in sync on "+a, 20*time.Second, func() bool {
			info, err := c.Info(context.Background(), "replication").Result()
			return err == nil && (strings.Contains(info, "role:master") || strings.Contains(info, "master_link_status:up"))
		})
		c.Close()
	}
	return nodes
}

// TestRedisCluster runs keyrelay on a real three-master Redis Cluster:
// delivery through asynq, the brute-force guard, the per-address limiter,
// idempotent replays and box commands to a long poll all work, and no
// command was refused for keys spanning slots.
func TestRedisCluster(t *testing.T) {
	needBinaries(t, "redis-server", "redis-cli")
	addrs := startCluster(t)
	var logs syncBuffer
	url := "redis-cluster://" + strings.Join(addrs, ",")
	s := startServerLogging(t, &logs, withWorkers, func(c *Config) { c.RedisURL = url; c.AuthRateLimit = "40-M" })
	if _, ok := s.app.redis.(*redis.ClusterClient); !ok {
		t.Fatalf("the app's client is %T, want a cluster client", s.app.redis)
	}
	f := s.signup(t)

	t.Run("LoginCodeDelivered", func(t *testing.T) {
		c := s.client()
		r := c.expect(t, 202, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": f.Password})
		challenge := r.JSON(t)["challenge_id"].(string)
		code := s.lastCode(t, challenge)
		to := ""
		for _, row := range s.outboxOf(t, f.ID) {
			if row.Kind == "login_code" {
				to = row.Recipient
				break
			}
		}
		waitFor(t, "the login code in the dev mailbox", 20*time.Second, func() bool {
			for _, m := range s.mailbox(t, to) {
				if strings.Contains(m.Body, code) {
					return true
				}
			}
			return false
		})
		c.expect(t, 200, "POST", "/api/v1/auth/login/verify", map[string]any{"challenge_id": challenge, "code": code})
	})

	t.Run("MessagesDeliveredOnce", func(t *testing.T) {
		// Enough tenants that their batches land on every master.
		var msgs []struct{ tenant, id uuid.UUID }
		for range 4 {
			tf := s.signup(t)
			var batch []outbox.Message
			for range 5 {
				m := note
				m.Recipient = "cluster-" + uuid.NewString()[:8] + "@example.com"
				batch = append(batch, m)
			}
			for _, id := range s.queueMessages(t, tf.ID, batch) {
				msgs = append(msgs, struct{ tenant, id uuid.UUID }{tf.ID, id})
			}
		}
		for _, m := range msgs {
			row := s.waitStatus(t, m.tenant, m.id, outbox.Delivered)
			if n := len(s.mailbox(t, row.Recipient)); n != 1 {
				t.Fatalf("%s received %d copies, want 1", row.Recipient, n)
			}
		}
	})

	t.Run("GuardLimitHolds", func(t *testing.T) {
		// Three free failures, then a lockout: the fourth wrong password is
		// let through and locks, the fifth is refused.
		c := s.client()
		var last response
		for range 5 {
			last = c.do(t, "POST", "/api/v1/auth/login", map[string]any{"email": f.Email, "password": "wrong-password-1"})
		}
		if last.Status != http.StatusTooManyRequests || last.Header.Get("Retry-After") == "" {
			t.Fatalf("after 5 wrong passwords: %d %s", last.Status, last.Body)
		}
	})

	t.Run("IdempotentReplay", func(t *testing.T) {
		idem := uuid.NewString()
		body := map[string]any{"name": "Front desk " + idem[:6]}
		first := f.Owner.expect(t, 201, "POST", "/api/v1/locations", body, "Idempotency-Key", idem)
		again := f.Owner.expect(t, 201, "POST", "/api/v1/locations", body, "Idempotency-Key", idem)
		if !bytes.Equal(first.Body, again.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("not replayed: %s / %s", first.Body, again.Body)
		}
	})

	t.Run("BoxCommandReachesLongPoll", func(t *testing.T) {
		boxID := insertBox(t, f.ID, "MS5")
		b := s.provisionBox(t, f, boxID)
		start := time.Now()
		waiting := poll(b, 20)
		time.Sleep(200 * time.Millisecond) // let the poll subscribe first
		rel := f.Owner.expect(t, 202, "POST", "/api/v1/boxes/"+boxID.String()+"/bins/2/release", map[string]any{"reason": "cluster test"}).JSON(t)
		var l commands.List
		select {
		case l = <-waiting:
		case <-time.After(30 * time.Second):
			t.Fatal("the poll never answered")
		}
		if len(l.Commands) != 1 || l.Commands[0].ID.String() != rel["command_id"] {
			t.Fatalf("poll got %+v, want command %v", l.Commands, rel["command_id"])
		}
		// Woken by the pub/sub message, not by the end of its 20 s wait.
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("the poll answered after %v: the wake-up did not cross the cluster", d)
		}
	})

	t.Run("KeysSpreadOverMasters", func(t *testing.T) {
		for _, a := range addrs {
			c := redis.NewClient(&redis.Options{Addr: a})
			n, err := c.DBSize(context.Background()).Result()
			c.Close()
			if err != nil || n == 0 {
				t.Errorf("master %s holds %d keys (%v): the data is not sharded", a, n, err)
			}
		}
	})

	t.Run("PerAddressLimiter", func(t *testing.T) { // last: it uses up the address's sign-in calls
		c := s.client()
		got := 0
		for range 60 {
			r := c.do(t, "POST", "/api/v1/auth/password/forgot", map[string]any{"email": "nobody@example.com"})
			if r.Status == http.StatusTooManyRequests {
				got = r.Status
				break
			}
		}
		if got != http.StatusTooManyRequests {
			t.Fatal("the per-address limit never refused")
		}
	})

	for _, bad := range []string{"CROSSSLOT", "non local key", "MOVED", "CLUSTERDOWN"} {
		if strings.Contains(logs.String(), bad) {
			t.Errorf("the logs report %s:\n%s", bad, lastLines([]byte(logs.String()), 20))
		}
	}
}

// clusterNode is one node as CLUSTER NODES lists it.
type clusterNode struct {
	id, addr, master string // master: the id of a replica's master
	replica          bool
}

// clusterNodes reads the cluster's nodes from the node at addr.
func clusterNodes(t *testing.T, addr string) []clusterNode {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	out, err := c.ClusterNodes(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	var nodes []clusterNode
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		nodes = append(nodes, clusterNode{id: f[0], addr: addr, master: f[3], replica: strings.Contains(f[2], "slave")})
	}
	return nodes
}

// slotNodes returns the master that owns key's slot and its replica.
func slotNodes(t *testing.T, seed, key string) (master, replica string) {
	t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{seed}})
	defer cc.Close()
	m, err := cc.MasterForKey(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	master = m.Options().Addr
	nodes := clusterNodes(t, master)
	var id string
	for _, n := range nodes {
		if n.addr == master {
			id = n.id
		}
	}
	for _, n := range nodes {
		if n.replica && n.master == id {
			return master, n.addr
		}
	}
	t.Fatalf("master %s of %s has no replica: %+v", master, key, nodes)
	return "", ""
}

// onReplica reports whether the replica at addr holds key (READONLY: a
// cluster replica serves reads of its master's slots only when asked).
func onReplica(t *testing.T, addr, key string) bool {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, OnConnect: func(ctx context.Context, cn *redis.Conn) error {
		return cn.ReadOnly(ctx).Err()
	}})
	defer c.Close()
	n, err := c.Exists(context.Background(), key).Result()
	if err != nil {
		t.Fatalf("EXISTS %s on %s: %v", key, addr, err)
	}
	return n == 1
}

// TestRedisClusterReplicas runs keyrelay on a real Redis Cluster of three
// masters with a replica each and wait_replicas=1: an enqueue returns only
// once the replica of the master owning the queue's slot holds the task
// (it is there the moment the enqueue returns, and an enqueue whose
// replica is stalled fails instead of being confirmed), and killing the
// master of the delivery queue mid-delivery loses no message and sends
// none twice, while the cluster promotes its replica.
func TestRedisClusterReplicas(t *testing.T) {
	needBinaries(t, "redis-server", "redis-cli")
	nodes := startClusterNodes(t, 1)
	procs := map[string]*redisProc{}
	var seeds []string
	for _, n := range nodes {
		procs[n.addr] = n
		seeds = append(seeds, n.addr)
	}
	const waitTimeout = 300 * time.Millisecond
	var logs syncBuffer
	s := startServerLogging(t, &logs, withWorkers, func(c *Config) {
		c.RedisURL = "redis-cluster://" + strings.Join(seeds, ",") + "?wait_replicas=1&wait_timeout=" + waitTimeout.String()
	})
	f := s.signup(t)
	ctx := context.Background()
	// Queues no worker takes, so their tasks stay where they were written.
	enqueue := func(queue string) (*asynq.TaskInfo, error) {
		return s.app.queue.EnqueueContext(ctx, asynq.NewTask("test:replicated", []byte("x")), asynq.Queue(queue))
	}

	t.Run("TaskOnTheSlotsReplicaWhenEnqueued", func(t *testing.T) {
		masters := map[string]bool{}
		for i := range 8 {
			queue := fmt.Sprintf("waitcheck%d", i)
			info, err := enqueue(queue)
			if err != nil {
				t.Fatalf("enqueue on %s: %v", queue, err)
			}
			key := "asynq:{" + queue + "}:t:" + info.ID
			master, replica := slotNodes(t, seeds[0], key)
			masters[master] = true
			if !onReplica(t, replica, key) {
				t.Fatalf("task %s: the enqueue returned before %s, the replica of %s, held it", key, replica, master)
			}
		}
		if len(masters) < 2 {
			t.Fatalf("the queues all landed on %v; pick names that spread", masters)
		}
	})

	t.Run("StalledReplicaFailsTheEnqueue", func(t *testing.T) {
		const queue = "waitstall"
		_, replica := slotNodes(t, seeds[0], "asynq:{"+queue+"}:pending")
		p := procs[replica]
		// Stopped for less than the cluster's node timeout (2 s), so that
		// no one fails it over meanwhile.
		if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		_, err := enqueue(queue)
		took := time.Since(began)
		if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		if err == nil || !strings.Contains(err.Error(), errNotReplicated.Error()) {
			t.Fatalf("an enqueue whose replica is stopped: %v, want %q", err, errNotReplicated)
		}
		if took < waitTimeout {
			t.Fatalf("the enqueue failed after %v, before wait_timeout (%v)", took, waitTimeout)
		}
		waitFor(t, "an enqueue to succeed with the replica back", 10*time.Second, func() bool {
			_, err := enqueue(queue)
			return err == nil
		})
	})

	t.Run("MasterKilledMidDelivery", func(t *testing.T) {
		master, replica := slotNodes(t, seeds[0], "asynq:{default}:pending") // where deliveries are queued
		// asynq's workers run on a cluster client of their own, which kept
		// dialling the dead master for most of a minute before it read the
		// new slot map (measured: deliveries done 50-58 s after the writes,
		// with or without wait_replicas): hence two minutes.
		deliveredOnceThrough(t, s, f, 2*time.Minute, func() {
			procs[master].stop()
			c := redis.NewClient(&redis.Options{Addr: replica})
			defer c.Close()
			waitFor(t, "the cluster to promote "+replica, 30*time.Second, func() bool {
				role, err := c.Do(ctx, "ROLE").Slice()
				if err != nil || len(role) == 0 || role[0] != "master" {
					return false
				}
				info, err := c.ClusterInfo(ctx).Result()
				return err == nil && strings.Contains(info, "cluster_state:ok")
			})
			t.Logf("killed master %s; the cluster promoted %s", master, replica)
		})
	})

	for _, bad := range []string{"CROSSSLOT", "non local key"} {
		if strings.Contains(logs.String(), bad) {
			t.Errorf("the logs report %s:\n%s", bad, lastLines([]byte(logs.String()), 20))
		}
	}
}
