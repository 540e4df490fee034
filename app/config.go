package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Config is everything keyrelay reads from its environment. It is built once
// in main and passed down; nothing else reads the environment.
type Config struct {
	Env            string // development | production
	DatabaseURL    string // owner: creates the database, migrates
	AppDatabaseURL string // application role: bound by row-level security
	RedisURL       string // one node, Sentinel or Cluster: see redis.go
	Listen         string
	BaseURL        string
	SecretKey      []byte
	OperatorToken  string
	PluginsDir     string
	StateDir       string // development secrets live here (git-ignored)

	// DatabaseReplicaURL, when set, is a streaming replica of the
	// application's database, reached as the application role
	// (KEYRELAY_DATABASE_REPLICA_URL). The booking list and the bundle build
	// read from it (replica.go); everything else uses AppDatabaseURL.
	DatabaseReplicaURL string
	// ReplicaMaxWait is how long a read waits for the replica to replay
	// the primary's latest writes before it reads from the primary instead
	// (KEYRELAY_DATABASE_REPLICA_MAX_WAIT, default 500ms).
	ReplicaMaxWait time.Duration
	// DB is the size of each PostgreSQL pool of this process (the primary's
	// and, when set, the replica's): see deploy/README.md, "Connection budget".
	DB DBPool

	SessionTTL      time.Duration
	SessionIdle     time.Duration
	BodyLimit       int
	ShutdownTimeout time.Duration
	// IdempotencyLease: how long a request holding an Idempotency-Key
	// blocks its retries if its replica dies mid-request.
	IdempotencyLease time.Duration
	AuthRateLimit    string   // ulule/limiter format, per client IP on sign-in calls
	TrustedProxies   []string // addresses or CIDRs whose X-Forwarded-For is believed

	LimitPrefix     string // Redis key prefix of the brute-force counters
	SMSPerPhoneHour int64  // login codes one phone may receive an hour
	SMSPerPhoneDay  int64

	Workers           bool   // serve runs the background workers in-process
	WorkerConcurrency int    // deliveries at once per process
	DefaultProviders  string // JSON: the platform's provider per channel
	HashConcurrency   int    // argon2id hashes running at once (19 MiB each)

	// BoxOfflineAfter: a box whose heartbeats stop for this long is marked
	// offline.
	BoxOfflineAfter time.Duration
	// BoxOfflineAlertAfter: a box offline this long is reported to its
	// tenant, once per incident.
	BoxOfflineAlertAfter time.Duration

	// RootPublicKey is the platform's ed25519 root key that boxes pin at
	// provisioning. Its private half stays offline (development: generated
	// under the state directory).
	RootPublicKey ed25519.PublicKey
	// RootPrivateKey is set in development only, so the demo and the tests
	// can certify signing keys without an offline ceremony.
	RootPrivateKey ed25519.PrivateKey

	// KeysDir holds the online signing keys (bundles, firmware), sealed
	// under SecretKey; default <StateDir>/keys.
	KeysDir string
	// BundleHorizon is how far ahead an offline bundle grants accesses.
	BundleHorizon time.Duration

	// FirmwareDir stores firmware artifacts (KEYRELAY_FIRMWARE_DIR, default
	// <StateDir>/firmware).
	FirmwareDir string
	// FirmwareMaxSize bounds a firmware artifact (KEYRELAY_FIRMWARE_MAX_SIZE, bytes).
	FirmwareMaxSize int64
	// RolloutTick is how often the workers move firmware rollouts on.
	RolloutTick time.Duration

	// RetainMessageBodies: a finished message's content and recipient are
	// purged this long after it was created (KEYRELAY_RETAIN_MESSAGE_BODIES,
	// default 30d); its delivery record stays.
	RetainMessageBodies time.Duration
	// RetainVisitors: a visitor's contact details leave a booking this long
	// after it ended (KEYRELAY_RETAIN_VISITORS, default 180d).
	RetainVisitors time.Duration

	// MetricsListen, when set, serves /metrics without credentials on a
	// second address, meant for a private network (KEYRELAY_METRICS_LISTEN).
	// /metrics on the main address always needs the operator credential.
	MetricsListen string
	// MetricsPprof adds Go's profiler (/debug/pprof/) to the metrics
	// address (KEYRELAY_METRICS_PPROF=true): a CPU profile of a replica
	// under real load, without a rebuild. Off by default: a profile shows
	// the code's shape and costs CPU while it is taken.
	MetricsPprof bool
	// OTLPEndpoint turns tracing on: spans go to this OTLP/HTTP collector
	// URL, e.g. http://127.0.0.1:4318 (KEYRELAY_OTLP_ENDPOINT). Empty: off.
	OTLPEndpoint string
	// TraceSampleRatio is the share of new traces kept (KEYRELAY_TRACE_SAMPLE_RATIO,
	// 0 to 1, default 1); a request that arrives with a trace follows its
	// caller's decision.
	TraceSampleRatio float64
	// traceExporter replaces the OTLP exporter (tests: an in-memory one).
	traceExporter sdktrace.SpanExporter
}

// DBPool sizes one process's pool of connections to PostgreSQL.
type DBPool struct {
	// MaxConns bounds open connections (KEYRELAY_DB_MAX_CONNS, default 20).
	// Requests, in-process deliveries and sweeps that find the pool full
	// wait for a connection.
	MaxConns int
	// MaxIdleConns is how many connections stay open unused
	// (KEYRELAY_DB_MAX_IDLE_CONNS, default MaxConns, at most MaxConns).
	MaxIdleConns int
	// ConnMaxIdleTime closes a connection unused this long
	// (KEYRELAY_DB_CONN_MAX_IDLE_TIME, default 5m; 0: never).
	ConnMaxIdleTime time.Duration
	// ConnMaxLifetime replaces a connection this old, so that a pool
	// spreads again over PgBouncer instances or follows a moved DNS name
	// after a failover (KEYRELAY_DB_CONN_MAX_LIFETIME, default 30m; 0: never).
	ConnMaxLifetime time.Duration
}

// defaultDBPool is the pool of a process whose environment says nothing.
var defaultDBPool = DBPool{MaxConns: 20, MaxIdleConns: 20, ConnMaxIdleTime: 5 * time.Minute, ConnMaxLifetime: 30 * time.Minute}

// orDefault is p, or the default pool for a zero DBPool (a Config built
// without LoadConfig).
func (p DBPool) orDefault() DBPool {
	if p.MaxConns <= 0 {
		return defaultDBPool
	}
	return p
}

// tracing reports whether spans are recorded (an OTLP endpoint, or a test's
// exporter).
func (c Config) tracing() bool { return c.OTLPEndpoint != "" || c.traceExporter != nil }

// Production reports whether development defaults are forbidden.
func (c Config) Production() bool { return c.Env == "production" }

const (
	defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/keyrelay?sslmode=disable"
	defaultRedisURL    = "redis://127.0.0.1:6379/0"
	defaultListen      = "127.0.0.1:8080"
	defaultBaseURL     = "http://localhost:8080"
)

// LoadConfig reads the KEYRELAY_* variables through getenv. In development
// it fills in working local defaults (creating a secret key and operator
// token once under the state directory); in production it refuses to start
// with any of them and names every missing or unsafe setting.
func LoadConfig(getenv func(string) string) (Config, error) {
	get := func(name, def string) string {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			return v
		}
		return def
	}
	c := Config{
		Env:             get("KEYRELAY_ENV", "development"),
		DatabaseURL:     get("KEYRELAY_DATABASE_URL", defaultDatabaseURL),
		RedisURL:        get("KEYRELAY_REDIS_URL", defaultRedisURL),
		Listen:          get("KEYRELAY_LISTEN", defaultListen),
		BaseURL:         strings.TrimRight(get("KEYRELAY_BASE_URL", defaultBaseURL), "/"),
		OperatorToken:   getenv("KEYRELAY_OPERATOR_TOKEN"),
		PluginsDir:      getenv("KEYRELAY_PLUGINS_DIR"),
		StateDir:        get("KEYRELAY_STATE_DIR", ".keyrelay"),
		AuthRateLimit:   get("KEYRELAY_AUTH_RATE_LIMIT", "60-M"),
		BodyLimit:       1 << 20,
		ShutdownTimeout: 30 * time.Second,

		IdempotencyLease: defaultIdempotencyLease,
	}
	if v := getenv("KEYRELAY_TRUSTED_PROXIES"); v != "" {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				c.TrustedProxies = append(c.TrustedProxies, p)
			}
		}
	}
	c.Workers = get("KEYRELAY_WORKERS", "inprocess") != "separate"
	c.LimitPrefix = get("KEYRELAY_LIMIT_PREFIX", "keyrelay:guard")
	c.SMSPerPhoneHour, c.SMSPerPhoneDay = 3, 10
	c.DefaultProviders = getenv("KEYRELAY_DEFAULT_PROVIDERS")
	if c.Env != "development" && c.Env != "production" {
		return c, fmt.Errorf("KEYRELAY_ENV must be development or production, not %q", c.Env)
	}
	var problems []string
	var err error
	if c.SessionTTL, err = duration(get("KEYRELAY_SESSION_TTL", "12h")); err != nil {
		problems = append(problems, "KEYRELAY_SESSION_TTL: "+err.Error())
	}
	if c.SessionIdle, err = duration(get("KEYRELAY_SESSION_IDLE", "30m")); err != nil {
		problems = append(problems, "KEYRELAY_SESSION_IDLE: "+err.Error())
	}
	if c.BoxOfflineAfter, err = duration(get("KEYRELAY_BOX_OFFLINE_AFTER", "5m")); err != nil {
		problems = append(problems, "KEYRELAY_BOX_OFFLINE_AFTER: "+err.Error())
	}
	if c.BoxOfflineAlertAfter, err = duration(get("KEYRELAY_BOX_OFFLINE_ALERT_AFTER", "30m")); err != nil {
		problems = append(problems, "KEYRELAY_BOX_OFFLINE_ALERT_AFTER: "+err.Error())
	}
	if c.BundleHorizon, err = duration(get("KEYRELAY_BUNDLE_HORIZON", "72h")); err != nil {
		problems = append(problems, "KEYRELAY_BUNDLE_HORIZON: "+err.Error())
	}
	c.KeysDir = getenv("KEYRELAY_KEYS_DIR")
	c.FirmwareDir = get("KEYRELAY_FIRMWARE_DIR", filepath.Join(c.StateDir, "firmware"))
	if c.FirmwareMaxSize, err = strconv.ParseInt(get("KEYRELAY_FIRMWARE_MAX_SIZE", "268435456"), 10, 64); err != nil || c.FirmwareMaxSize < 1 {
		problems = append(problems, "KEYRELAY_FIRMWARE_MAX_SIZE: must be a positive number of bytes")
	}
	if c.RolloutTick, err = duration(get("KEYRELAY_ROLLOUT_TICK", "15s")); err != nil {
		problems = append(problems, "KEYRELAY_ROLLOUT_TICK: "+err.Error())
	}
	c.MetricsListen = getenv("KEYRELAY_METRICS_LISTEN")
	if c.MetricsPprof, err = strconv.ParseBool(get("KEYRELAY_METRICS_PPROF", "false")); err != nil {
		problems = append(problems, "KEYRELAY_METRICS_PPROF: must be true or false")
	} else if c.MetricsPprof && c.MetricsListen == "" {
		problems = append(problems, "KEYRELAY_METRICS_PPROF: needs KEYRELAY_METRICS_LISTEN (the profiler is served only there)")
	}
	c.OTLPEndpoint = getenv("KEYRELAY_OTLP_ENDPOINT")
	if u, err := url.Parse(c.OTLPEndpoint); c.OTLPEndpoint != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
		problems = append(problems, "KEYRELAY_OTLP_ENDPOINT: must be an http(s) URL of an OTLP/HTTP collector, e.g. http://127.0.0.1:4318")
	}
	if c.TraceSampleRatio, err = strconv.ParseFloat(get("KEYRELAY_TRACE_SAMPLE_RATIO", "1"), 64); err != nil || c.TraceSampleRatio < 0 || c.TraceSampleRatio > 1 {
		problems = append(problems, "KEYRELAY_TRACE_SAMPLE_RATIO: must be a number from 0 to 1")
	}
	if c.RetainMessageBodies, err = retentionPeriod(get("KEYRELAY_RETAIN_MESSAGE_BODIES", "30d")); err != nil {
		problems = append(problems, "KEYRELAY_RETAIN_MESSAGE_BODIES: "+err.Error())
	}
	if c.RetainVisitors, err = retentionPeriod(get("KEYRELAY_RETAIN_VISITORS", "180d")); err != nil {
		problems = append(problems, "KEYRELAY_RETAIN_VISITORS: "+err.Error())
	}
	if c.HashConcurrency, err = strconv.Atoi(get("KEYRELAY_HASH_CONCURRENCY", "4")); err != nil || c.HashConcurrency < 1 {
		problems = append(problems, "KEYRELAY_HASH_CONCURRENCY: must be a positive number")
	}
	if c.WorkerConcurrency, err = strconv.Atoi(get("KEYRELAY_WORKER_CONCURRENCY", "20")); err != nil || c.WorkerConcurrency < 1 {
		problems = append(problems, "KEYRELAY_WORKER_CONCURRENCY: must be a positive number")
	}
	c.DB, problems = loadDBPool(get, problems)
	c.DatabaseReplicaURL = getenv("KEYRELAY_DATABASE_REPLICA_URL")
	if c.DatabaseReplicaURL != "" {
		if _, err := pgx.ParseConfig(c.DatabaseReplicaURL); err != nil {
			problems = append(problems, "KEYRELAY_DATABASE_REPLICA_URL: must be a PostgreSQL URL such as postgres://keyrelay_app@replica:5432/keyrelay")
		}
	}
	if c.ReplicaMaxWait, err = time.ParseDuration(get("KEYRELAY_DATABASE_REPLICA_MAX_WAIT", "500ms")); err != nil || c.ReplicaMaxWait < 0 || c.ReplicaMaxWait > time.Minute {
		problems = append(problems, "KEYRELAY_DATABASE_REPLICA_MAX_WAIT: must be a duration from 0 to 1m, such as 500ms")
	}
	c.AppDatabaseURL = get("KEYRELAY_APP_DATABASE_URL", "")
	if c.AppDatabaseURL == "" {
		c.AppDatabaseURL, err = withUser(c.DatabaseURL, "keyrelay_app")
		if err != nil {
			problems = append(problems, "KEYRELAY_DATABASE_URL: "+err.Error())
		}
	}
	if u, err := url.Parse(c.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		problems = append(problems, "KEYRELAY_BASE_URL: must be an absolute http(s) URL")
	}

	secret := getenv("KEYRELAY_SECRET_KEY")
	if c.Production() {
		if secret == "" {
			problems = append(problems, "KEYRELAY_SECRET_KEY is required in production (32 random bytes, base64: openssl rand -base64 32)")
		}
		if c.OperatorToken == "" {
			problems = append(problems, "KEYRELAY_OPERATOR_TOKEN is required in production")
		} else if len(c.OperatorToken) < 32 {
			problems = append(problems, "KEYRELAY_OPERATOR_TOKEN must be at least 32 characters")
		}
		if !strings.HasPrefix(c.BaseURL, "https://") {
			problems = append(problems, "KEYRELAY_BASE_URL must be https:// in production (links in emails and secure cookies depend on it)")
		}
		if c.PluginsDir == "" {
			problems = append(problems, "KEYRELAY_PLUGINS_DIR is required in production (built provider plugins with their manifests)")
		}
		if c.DefaultProviders == "" || strings.Contains(c.DefaultProviders, `"devmailbox"`) {
			problems = append(problems, "KEYRELAY_DEFAULT_PROVIDERS must name real providers in production (the development mailbox delivers nothing)")
		}
	} else {
		if secret == "" {
			if secret, err = devSecret(c.StateDir, "secret-key", 32); err != nil {
				problems = append(problems, "KEYRELAY_SECRET_KEY: "+err.Error())
			}
		}
		if c.OperatorToken == "" {
			if c.OperatorToken, err = devSecret(c.StateDir, "operator-token", 32); err != nil {
				problems = append(problems, "KEYRELAY_OPERATOR_TOKEN: "+err.Error())
			}
		}
	}
	if root := getenv("KEYRELAY_ROOT_PUBLIC_KEY"); root != "" {
		pub, err := base64.StdEncoding.DecodeString(root)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			problems = append(problems, "KEYRELAY_ROOT_PUBLIC_KEY must be an ed25519 public key (32 bytes, base64)")
		}
		c.RootPublicKey = pub
	} else if c.Production() {
		problems = append(problems, "KEYRELAY_ROOT_PUBLIC_KEY is required in production (the platform root key boxes pin; its private half stays offline)")
	} else if seed, err := devSecret(c.StateDir, "root-key", ed25519.SeedSize); err != nil {
		problems = append(problems, "KEYRELAY_ROOT_PUBLIC_KEY: "+err.Error())
	} else if raw, err := base64.StdEncoding.DecodeString(seed); err != nil || len(raw) != ed25519.SeedSize {
		problems = append(problems, "the development root key under "+c.StateDir+" is damaged: delete it to make a new one")
	} else {
		c.RootPrivateKey = ed25519.NewKeyFromSeed(raw)
		c.RootPublicKey = c.RootPrivateKey.Public().(ed25519.PublicKey)
	}
	if secret != "" {
		key, err := base64.StdEncoding.DecodeString(secret)
		if err != nil || len(key) != 32 {
			problems = append(problems, "KEYRELAY_SECRET_KEY must be 32 bytes, base64-encoded")
		}
		c.SecretKey = key
	}
	if len(problems) > 0 {
		return c, errors.New("configuration: " + strings.Join(problems, "; "))
	}
	return c, nil
}

// maxDBConns bounds KEYRELAY_DB_MAX_CONNS: far above what one process can
// use, low enough that a typo (20000 for 20) is caught before PostgreSQL
// refuses connections.
const maxDBConns = 1000

// loadDBPool reads the KEYRELAY_DB_* pool settings.
func loadDBPool(get func(name, def string) string, problems []string) (DBPool, []string) {
	p := defaultDBPool
	n, err := strconv.Atoi(get("KEYRELAY_DB_MAX_CONNS", strconv.Itoa(p.MaxConns)))
	if err != nil || n < 1 || n > maxDBConns {
		problems = append(problems, fmt.Sprintf("KEYRELAY_DB_MAX_CONNS: must be a number from 1 to %d (connections per process and pool)", maxDBConns))
		n = p.MaxConns
	}
	p.MaxConns = n
	if n, err = strconv.Atoi(get("KEYRELAY_DB_MAX_IDLE_CONNS", strconv.Itoa(p.MaxConns))); err != nil || n < 0 || n > p.MaxConns {
		problems = append(problems, fmt.Sprintf("KEYRELAY_DB_MAX_IDLE_CONNS: must be a number from 0 to KEYRELAY_DB_MAX_CONNS (%d)", p.MaxConns))
	}
	p.MaxIdleConns = n
	if p.ConnMaxIdleTime, err = durationOrZero(get("KEYRELAY_DB_CONN_MAX_IDLE_TIME", "5m")); err != nil {
		problems = append(problems, "KEYRELAY_DB_CONN_MAX_IDLE_TIME: "+err.Error())
	}
	if p.ConnMaxLifetime, err = durationOrZero(get("KEYRELAY_DB_CONN_MAX_LIFETIME", "30m")); err != nil {
		problems = append(problems, "KEYRELAY_DB_CONN_MAX_LIFETIME: "+err.Error())
	}
	return p, problems
}

// durationOrZero is a positive duration, or 0 for never.
func durationOrZero(s string) (time.Duration, error) {
	if s == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second {
		return 0, fmt.Errorf("must be a duration of at least 1s such as 30m, or 0 for never")
	}
	return d, nil
}

func duration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("must be a positive duration such as 30m")
	}
	return d, nil
}

// retentionPeriod reads a retention period: days ("30d") or a Go duration
// ("720h"), at least an hour.
func retentionPeriod(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		if d, err := strconv.Atoi(n); err == nil && d >= 1 && d <= 36500 {
			return time.Duration(d) * 24 * time.Hour, nil
		}
		return 0, fmt.Errorf("must be a number of days such as 30d")
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Hour {
		return 0, fmt.Errorf("must be a number of days such as 30d, or a duration of at least 1h")
	}
	return d, nil
}

func withUser(rawURL, user string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("not a URL")
	}
	u.User = url.User(user)
	return u.String(), nil
}

// devSecret returns a random value kept in dir/name, creating it once, so a
// development install keeps its secrets across restarts without any setup.
func devSecret(dir, name string, n int) (string, error) {
	path := filepath.Join(dir, name)
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	v := base64.StdEncoding.EncodeToString(buf)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		// Another process created it first; use theirs.
		b, err := os.ReadFile(path)
		return strings.TrimSpace(string(b)), err
	}
	if err != nil {
		return "", fmt.Errorf("create %s: %w", path, err)
	}
	defer f.Close()
	if _, err := f.WriteString(v + "\n"); err != nil {
		return "", err
	}
	return v, nil
}
