package projector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/graflow-go/graflow/internal/groupcommit"
	"github.com/graflow-go/graflow/internal/logbridge"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/retry"
	"github.com/graflow-go/graflow/internal/tracing"
	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/trace"
)

// Defaults for Config's zero values.
const (
	DefaultBatchSize      = 256
	DefaultReadCount      = 2048
	DefaultCacheSize      = 10000
	DefaultParallel       = 16
	DefaultFeedBlock      = 2 * time.Second
	DefaultRetryInitial   = 1 * time.Second
	DefaultRetryMax       = 5 * time.Minute
	DefaultRetryMultiple  = 2.0
	DefaultRetryJitter    = 0.2
	DefaultDelayedMaxWait = 30 * time.Second
	DefaultFeedReclaim    = 15 * time.Second
)

// Config configures a Projector. A zero field means its default.
type Config struct {
	// Redis is required.
	Redis redis.UniversalClient
	// Namespace is the key prefix (default "graflow").
	Namespace string
	// NamespacePartitions is the namespace's partition count (default
	// rdb.DefaultPartitions, 1): fixed per namespace and checked (see
	// docs/operations.md, "Key layout and partitions").
	NamespacePartitions int
	// ID names this projector in the feed's consumer group and in the
	// events it writes. Default: "projector-<host>-<pid>". Keep it stable
	// across restarts so the projector resumes its own pending feed entries.
	ID string
	// Partitions lists the feed partitions to consume (default: all).
	Partitions []int
	// BatchSize bounds the decision events of one commit (default 256), so
	// a 20,000-task dispatch is split into short scripts.
	BatchSize int
	// ReadCount bounds the log entries read per round trip (default 2048).
	ReadCount int
	// CacheSize bounds the runs whose folded state is kept in memory.
	CacheSize int
	// Parallel bounds the runs projected at once, each on its own, per
	// feed partition (default 16): those a batched pass leaves over (long
	// logs, conflicts, big dispatches).
	Parallel int
	// RunTTL, when set, makes a finished run's keys expire this long after
	// it ended, set by the commit that ends it (default 0: runs are kept;
	// "graflow gc" deletes old ones). A requeue reopening the run removes
	// it.
	RunTTL time.Duration
	// CompactLog: the commit that ends a run rewrites its log, if it holds
	// at most this many events, with memory sized to fit (Redis keeps a
	// stream's newest node preallocated, up to 4 KiB). Default
	// rdb.DefaultCompactLog; negative: never.
	//
	// Run records RunTTL and CompactLog as the end policy of its
	// partitions: a worker's finish that ends a small run (every task
	// succeeded; see rdb.EndMaxTasks) applies them as this projector's
	// commit would. Give all projectors of a namespace the same values.
	CompactLog int
	// FeedBlock is how long one XREADGROUP blocks (default 2s); it only
	// bounds how fast Run notices cancellation.
	FeedBlock time.Duration
	// FeedReclaimIdle: feed entries pending this long (their projector
	// died mid-run) are taken over (default 15s).
	FeedReclaimIdle time.Duration
	// RetryInitial, RetryMax, RetryMultiplier and RetryJitter shape the
	// exponential backoff between attempts (defaults 1s, 5m, 2, 0.2).
	RetryInitial    time.Duration
	RetryMax        time.Duration
	RetryMultiplier float64
	RetryJitter     float64
	// RunFailures: a run that fails to project this many times in a row
	// with an error that is not transient is quarantined (default
	// DefaultRunFailures). Transient errors (Redis unreachable) are
	// retried for as long as they last.
	RunFailures int
	// Logger; nil is quiet.
	Logger *zerolog.Logger
	// Slog, when Logger is nil, receives the logs instead (bridged: see
	// internal/logbridge).
	Slog *slog.Logger
	// Clock decides what time it is and when timers fire (default the real
	// clock; tests pass clockwork.NewFakeClock()).
	Clock clockwork.Clock
	// Metrics observes the projector (graflow.NewMetrics); nil observes
	// nothing.
	Metrics Observer
	// TracerProvider makes the projector's spans (graflow.project, one
	// per commit, a child of the run's submit); nil means
	// otel.GetTracerProvider(), a no-op unless the program set one.
	TracerProvider trace.TracerProvider
}

func (c Config) withDefaults() Config {
	if c.Namespace == "" {
		c.Namespace = rdb.DefaultNamespace
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = "projector-" + host + "-" + strconv.Itoa(os.Getpid())
	}
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.ReadCount <= 0 {
		c.ReadCount = DefaultReadCount
	}
	if c.CompactLog == 0 {
		c.CompactLog = rdb.DefaultCompactLog
	}
	if c.CacheSize <= 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.Parallel <= 0 {
		c.Parallel = DefaultParallel
	}
	if c.FeedBlock <= 0 {
		c.FeedBlock = DefaultFeedBlock
	}
	if c.FeedReclaimIdle <= 0 {
		c.FeedReclaimIdle = DefaultFeedReclaim
	}
	if c.RetryInitial <= 0 {
		c.RetryInitial = DefaultRetryInitial
	}
	if c.RetryMax <= 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.RetryMultiplier <= 0 {
		c.RetryMultiplier = DefaultRetryMultiple
	}
	if c.RetryJitter < 0 {
		c.RetryJitter = 0
	} else if c.RetryJitter == 0 {
		c.RetryJitter = DefaultRetryJitter
	}
	if c.RunFailures <= 0 {
		c.RunFailures = DefaultRunFailures
	}
	if c.Logger == nil {
		c.Logger = logbridge.Zerolog(c.Slog)
	}
	if c.Logger == nil {
		l := zerolog.Nop()
		c.Logger = &l
	}
	if c.Clock == nil {
		c.Clock = clockwork.NewRealClock()
	}
	return c
}

func (c Config) validate() error {
	errs := rdb.CheckConnection("projector", c.Redis != nil, c.Namespace)
	if err := rdb.CheckPartitions("projector", c.NamespacePartitions); err != nil {
		errs = append(errs, err)
	}
	n := rdb.NewKeysP(c.Namespace, c.NamespacePartitions).Partitions()
	for _, p := range c.Partitions {
		if p < 0 || p >= n {
			errs = append(errs, fmt.Errorf("projector: partition %d out of range 0..%d", p, n-1))
		}
	}
	return errors.Join(errs...)
}

// Projector consumes the feed, folds runs' new events and commits the
// decisions they call for. Any number may run; commits are compare-and-set
// on each run's cursor. Safe for concurrent use.
type Projector struct {
	cfg    Config
	db     rdb.DB
	log    zerolog.Logger
	tracer trace.Tracer

	mu    sync.Mutex
	cache map[string]*cached

	wakeDelayed chan struct{}
	// commitGroup sends the commits of concurrent Project calls in one
	// pipeline (observer.go).
	commitGroup *groupcommit.Group[commitReq, commitResp]
}

type cached struct {
	mu   sync.Mutex
	run  *Run
	head rdb.Head // the run's head that the next commit compares and sets
}

// New returns a Projector.
func New(cfg Config) (*Projector, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &Projector{
		cfg:         cfg,
		db:          rdb.NewP(cfg.Redis, cfg.Namespace, cfg.NamespacePartitions),
		log:         cfg.Logger.With().Str("projector", cfg.ID).Logger(),
		tracer:      tracing.Tracer(cfg.TracerProvider),
		cache:       map[string]*cached{},
		wakeDelayed: make(chan struct{}, 1),
	}
	p.commitGroup = groupcommit.New(maxCommitBatch, p.flushCommits)
	return p, nil
}

// Run consumes the feed partitions and moves due retries until ctx is
// cancelled; it returns nil then. Redis errors are retried with backoff.
// It returns an error wrapping rdb.ErrLayout at once if the namespace was
// written with another key layout or partition count.
func (p *Projector) Run(ctx context.Context) error {
	err := retryAll(ctx, p.log, "check key layout", func() error {
		err := p.db.CheckLayout(ctx)
		if errors.Is(err, rdb.ErrLayout) {
			return retry.Permanent(err)
		}
		return err
	})
	if errors.Is(err, rdb.ErrLayout) {
		return fmt.Errorf("projector %s: %w", p.cfg.ID, err)
	}
	if err != nil {
		return nil // ctx ended
	}
	parts := p.cfg.Partitions
	if len(parts) == 0 {
		for i := 0; i < p.db.K.Partitions(); i++ {
			parts = append(parts, i)
		}
	}
	// Record the end policy for the finishes that end small runs (a run
	// a finish ends gets this projector's compaction and TTL).
	policy := rdb.EndPolicy{CompactLog: p.cfg.CompactLog, TTL: p.cfg.RunTTL}
	if err := retryAll(ctx, p.log, "record the end policy", func() error { return p.db.SetEndPolicy(ctx, parts, policy) }); err != nil {
		return nil // ctx ended
	}
	var wg sync.WaitGroup
	for _, n := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.consume(ctx, n)
		}()
	}
	wg.Add(3)
	go func() {
		defer wg.Done()
		p.registryLoop(ctx, parts)
	}()
	go func() {
		defer wg.Done()
		p.moveDelayed(ctx, parts)
	}()
	go func() {
		defer wg.Done()
		p.reclaimFeed(ctx, parts)
	}()
	wg.Wait()
	return nil
}

// retryAll runs one of the feed loop's own calls (read the feed, ack it,
// create its group) until it succeeds or ctx ends, backing off and logging
// every failure, transient or not: the loop serves a whole partition, and
// an error that persists (NOPERM on the feed) must stay visible rather than
// stop the partition.
func retryAll(ctx context.Context, log zerolog.Logger, what string, op func() error) error {
	return retry.Do(ctx, retry.Policy{Tolerate: math.MaxInt, OnError: func(err error, d time.Duration) {
		log.Warn().Err(err).Stringer("retry_in", d).Msg(what)
	}}, op)
}
