package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redisurl"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
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
}

// flags returns a FlagSet for command name with the common flags bound.
func (m *Main) flags(name string, c *common) *flag.FlagSet {
	fs := flag.NewFlagSet("graflow "+name, flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	def := m.Getenv("REDIS_URL")
	if def == "" {
		def = "redis://127.0.0.1:6379"
	}
	ns := m.Getenv("GRAFLOW_NAMESPACE")
	if ns == "" {
		ns = rdb.DefaultNamespace
	}
	fs.StringVar(&c.redisURL, "redis", def, "Redis URL: redis://, rediss:// (TLS), redis://user:pass@host:port/db; comma-separate cluster nodes, or redis+cluster://host:port?addr=host2:port2, redis+sentinel://host:port?master_name=NAME")
	fs.StringVar(&c.namespace, "namespace", ns, "key prefix")
	parts := 0
	if v := m.Getenv("GRAFLOW_PARTITIONS"); v != "" {
		var err error
		if parts, err = strconv.Atoi(v); err != nil {
			parts = -1 // rejected by connect
		}
	}
	fs.IntVar(&c.partitions, "partitions", parts, "the namespace's partition count, fixed when it is created (0: the default, 1; $GRAFLOW_PARTITIONS)")
	fs.StringVar(&c.sentinel, "sentinel-master", m.Getenv("GRAFLOW_SENTINEL_MASTER"), "Redis Sentinel: the master's name (--redis then lists the sentinels)")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn, error")
	return fs
}

// parse parses args, mapping flag errors to usage errors. Flags may come
// before or after positional arguments ("submit FILE --wait" works); after
// "--" everything is positional. Positionals are then fs.Args().
func parse(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return withCode(ExitOK, errors.Join(err, errQuiet))
			}
			return withCode(ExitUsage, errors.Join(err, errQuiet))
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	// Re-parse nothing but the positionals so fs.Args() returns them.
	return fs.Parse(append([]string{"--"}, pos...))
}

// connect opens the Redis named by --redis and checks it answers.
func (c *common) connect(ctx context.Context) (redis.UniversalClient, error) {
	if err := rdb.CheckPartitions("--partitions", c.partitions); err != nil {
		return nil, withCode(ExitUsage, err)
	}
	if err := rdb.ValidNamespace(c.namespace); err != nil {
		return nil, withCode(ExitUsage, err)
	}
	if redisurl.Is(c.redisURL) { // redis+cluster://, redis+sentinel://
		client, err := redisurl.New(c.redisURL)
		if err != nil {
			return nil, withCode(ExitUsage, err)
		}
		return c.ping(ctx, client)
	}
	opts, err := universalOptions(c.redisURL)
	if err != nil {
		return nil, withCode(ExitUsage, err)
	}
	opts.MasterName = c.sentinel // UniversalClient: a failover client when set
	return c.ping(ctx, redis.NewUniversalClient(opts))
}

// ping checks that client answers, and closes it if not.
func (c *common) ping(ctx context.Context, client redis.UniversalClient) (redis.UniversalClient, error) {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := client.Ping(pctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("redis not reachable at %s: %w: start Redis, set REDIS_URL, or run \"graflow dev\"", redact(c.redisURL), err)
	}
	return client, nil
}

// universalOptions parses one URL (standalone, TLS with rediss://) or a
// comma-separated list of cluster node URLs.
func universalOptions(raw string) (*redis.UniversalOptions, error) {
	urls := strings.Split(raw, ",")
	first, err := redis.ParseURL(strings.TrimSpace(urls[0]))
	if err != nil {
		return nil, fmt.Errorf("invalid Redis URL %q: %w", redact(raw), err)
	}
	u := &redis.UniversalOptions{
		Addrs: []string{first.Addr}, Username: first.Username, Password: first.Password,
		DB: first.DB, TLSConfig: first.TLSConfig,
	}
	for _, s := range urls[1:] {
		o, err := redis.ParseURL(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("invalid Redis URL %q: %w", redact(s), err)
		}
		u.Addrs = append(u.Addrs, o.Addr)
	}
	return u, nil
}

// redact hides a password in a URL for messages.
func redact(u string) string {
	at := strings.LastIndex(u, "@")
	scheme := strings.Index(u, "://")
	if at < 0 || scheme < 0 {
		return u
	}
	cred := u[scheme+3 : at]
	if i := strings.Index(cred, ":"); i >= 0 {
		return u[:scheme+3] + cred[:i] + ":***" + u[at:]
	}
	return u
}

func init() {
	// Millisecond timestamps in logs (the default is whole seconds).
	zerolog.TimeFieldFormat = zerolog.TimeFormatUnixMs
}

func (c *common) logger(w io.Writer) *zerolog.Logger {
	lvl, err := zerolog.ParseLevel(c.logLevel)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	l := zerolog.New(zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000", NoColor: !isTerminal(w)}).
		Level(lvl).With().Timestamp().Logger()
	return &l
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
