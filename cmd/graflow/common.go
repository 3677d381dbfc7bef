package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/logbridge"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redisurl"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/spf13/pflag"
)

// common holds the flags every command takes.
type common struct {
	redisURL  string
	sentinel  string
	namespace string
	// partitions is the namespace's partition count (0: the default).
	partitions int
	json       bool
	logLevel   string
	// logFormat is json or console ("": json unless stderr is a terminal).
	logFormat string
	tls       tlsFiles
	// getenv reads REDIS_PASSWORD.
	getenv func(string) string
}

// commonFlags binds the flags every command takes. Their environment
// variables are bound by bindEnv (REDIS_URL too for --redis).
func (m *Main) commonFlags(fs *pflag.FlagSet, c *common) {
	c.getenv = m.Getenv
	fs.SortFlags = false
	fs.StringVar(&c.redisURL, "redis", "redis://127.0.0.1:6379", "Redis: host:port, or a URL redis://[user:pass@]host:port[/db][?options] (rediss:// for TLS; options as go-redis' ParseURL: pool_size, dial_timeout, read_timeout, client_name, protocol...); comma-separate cluster nodes, or redis+cluster://host:port?addr=host2:port2, redis+sentinel://host:port?master_name=NAME; the password may come from $REDIS_PASSWORD")
	fs.StringVar(&c.namespace, "namespace", rdb.DefaultNamespace, "key prefix")
	fs.IntVar(&c.partitions, "partitions", 0, "the namespace's partition count, fixed when it is created (0: the default, 1)")
	fs.StringVar(&c.sentinel, "sentinel-master", "", "Redis Sentinel: the master's name (--redis then lists the sentinels)")
	fs.StringVar(&c.tls.ca, "tls-ca", "", "PEM file of the CA that signed Redis' certificate (turns TLS on)")
	fs.StringVar(&c.tls.cert, "tls-cert", "", "PEM client certificate for Redis (with --tls-key; turns TLS on)")
	fs.StringVar(&c.tls.key, "tls-key", "", "PEM key of --tls-cert")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn, error")
	fs.StringVar(&c.logFormat, "log-format", "", "json or console (default: json unless stderr is a terminal)")
}

// check rejects common flag values that are not valid (they were replaced
// by defaults once).
func (c *common) check() error {
	var errs []error
	if _, err := parseLevel(c.logLevel); err != nil {
		errs = append(errs, err)
	}
	switch c.logFormat {
	case "", logJSON, logConsole:
	default:
		errs = append(errs, fmt.Errorf("--log-format %q: want %s or %s", c.logFormat, logJSON, logConsole))
	}
	if (c.tls.cert == "") != (c.tls.key == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	return errors.Join(errs...)
}

// connect opens the Redis named by --redis and checks it answers.
func (c *common) connect(ctx context.Context) (redis.UniversalClient, error) {
	if err := rdb.CheckPartitions("--partitions", c.partitions); err != nil {
		return nil, withCode(ExitUsage, err)
	}
	if err := rdb.ValidNamespace(c.namespace); err != nil {
		return nil, withCode(ExitUsage, err)
	}
	client, err := c.newRedis()
	if err != nil {
		return nil, withCode(ExitUsage, err)
	}
	traceRedis(client)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := client.Ping(pctx).Err(); err != nil {
		_ = client.Close()
		return nil, connectError(redisurl.Redact(c.redisURL), tlsOn(client), err)
	}
	return client, nil
}

// newRedis builds the client --redis names. One URL (or host:port) is
// parsed whole by go-redis' ParseURL, so its query options (pool_size,
// dial_timeout, client_name, protocol...) are kept; a comma-separated list
// (cluster nodes) or --sentinel-master goes through universalOptions.
// --tls-* and $REDIS_PASSWORD are applied to either.
func (c *common) newRedis() (redis.UniversalClient, error) {
	if redisurl.Is(c.redisURL) { // redis+cluster://, redis+sentinel://
		return redisurl.New(c.redisURL)
	}
	raw := withScheme(c.redisURL)
	tlsConf, err := c.tls.config()
	if err != nil {
		return nil, err
	}
	if !isNodeList(raw) && c.sentinel == "" {
		opts, err := redis.ParseURL(raw)
		if err != nil {
			return nil, fmt.Errorf("invalid Redis URL %q: %w", redisurl.Redact(raw), err)
		}
		opts.TLSConfig = mergeTLS(opts.TLSConfig, tlsConf, opts.Addr)
		if opts.Password == "" {
			opts.Password = c.getenv("REDIS_PASSWORD")
		}
		return redis.NewClient(opts), nil
	}
	opts, err := universalOptions(raw)
	if err != nil {
		return nil, err
	}
	opts.MasterName = c.sentinel // UniversalClient: a failover client when set
	opts.TLSConfig = mergeTLS(opts.TLSConfig, tlsConf, opts.Addrs[0])
	if opts.Password == "" {
		opts.Password = c.getenv("REDIS_PASSWORD")
	}
	return redis.NewUniversalClient(opts), nil
}

// universalOptions parses one URL (standalone, TLS with rediss://) or a
// comma-separated list of cluster node URLs.
func universalOptions(raw string) (*redis.UniversalOptions, error) {
	urls := []string{raw}
	if isNodeList(raw) {
		urls = strings.Split(raw, ",")
	}
	first, err := redis.ParseURL(withScheme(strings.TrimSpace(urls[0])))
	if err != nil {
		return nil, fmt.Errorf("invalid Redis URL %q: %w", redisurl.Redact(raw), err)
	}
	u := &redis.UniversalOptions{
		Addrs: []string{first.Addr}, Username: first.Username, Password: first.Password,
		DB: first.DB, TLSConfig: first.TLSConfig,
	}
	for _, s := range urls[1:] {
		o, err := redis.ParseURL(withScheme(strings.TrimSpace(s)))
		if err != nil {
			return nil, fmt.Errorf("invalid Redis URL %q: %w", redisurl.Redact(s), err)
		}
		u.Addrs = append(u.Addrs, o.Addr)
	}
	return u, nil
}

// logger returns the zerolog.Logger the engine's packages take, writing
// through the command's slog.Logger (see internal/logbridge).
func (c *common) logger(w io.Writer) *zerolog.Logger {
	return logbridge.Zerolog(c.slog(w))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (c *common) client(ctx context.Context) (*graflow.Client, redis.UniversalClient, error) {
	r, err := c.connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	cl, err := graflow.NewClient(graflow.Config{Redis: r, Namespace: c.namespace, NamespacePartitions: c.partitions})
	if err != nil {
		_ = r.Close()
		return nil, nil, err
	}
	return cl, r, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// maxSpecFile bounds a spec read by "graflow submit" (a file or stdin):
// scheduler.DefaultMaxSpecBytes plus room for the YAML/JSON syntax around
// it. Larger input is refused before it is read whole.
const maxSpecFile = scheduler.DefaultMaxSpecBytes + scheduler.DefaultMaxSpecBytes/4

// readSpec reads at most maxSpecFile bytes from r, and fails if there is
// more.
func readSpec(r io.Reader, name string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxSpecFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > maxSpecFile {
		return nil, fmt.Errorf("%w: %s is more than %d bytes, the limit of a spec", scheduler.ErrSpecTooLarge, name, maxSpecFile)
	}
	return data, nil
}

// cpuProfile writes a CPU profile to path (nothing when path is empty)
// until the returned stop is called.
func cpuProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, withCode(ExitUsage, fmt.Errorf("--cpuprofile: %w", err))
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}

// tlsOn reports whether the client speaks TLS to Redis.
func tlsOn(c redis.UniversalClient) bool {
	switch c := c.(type) {
	case *redis.Client:
		return c.Options().TLSConfig != nil
	case *redis.ClusterClient:
		return c.Options().TLSConfig != nil
	}
	return false
}

// startService starts what a long-running command (worker, projector)
// needs before its engine: the CPU profile to prof (none when empty), the
// Redis client and the metrics server on metricsAddr (off when empty),
// observing pools. stop undoes them, in reverse.
func (c *common) startService(ctx context.Context, m *Main, prof, metricsAddr string, pools []string) (r redis.UniversalClient, ms *metricsServer, stop func(), err error) {
	stopProfile, err := cpuProfile(prof)
	if err != nil {
		return nil, nil, nil, err
	}
	if r, err = c.connect(ctx); err != nil {
		stopProfile()
		return nil, nil, nil, err
	}
	ms, err = startMetrics(graflow.Config{Redis: r, Namespace: c.namespace, NamespacePartitions: c.partitions}, metricsAddr, pools, c.logger(m.Stderr))
	if err != nil {
		_ = r.Close()
		stopProfile()
		return nil, nil, nil, err
	}
	return r, ms, func() { ms.stop(); _ = r.Close(); stopProfile() }, nil
}
