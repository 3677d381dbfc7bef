//go:build unix

// Package bench measures Graflow against the raw Redis ceiling on the same
// machine: throughput of independent runs, a 20,000-task fan-out, a
// 10,000-task dynamic fan-out (spawned at run time) and 3-step chains, submit-to-start latency, and the fold's replay speed, each
// with its cost per task (Redis commands and round trips, events, Redis
// memory, CPU of the worker, projector and Redis). "graflow bench" and
// "make bench" drive it; docs/performance.md holds the results.
//
// A "trace" workload records, per engine component, the commands one run
// costs on an idle engine: the cost model of the code as it is.
//
// Every workload runs in a fresh namespace and prints one JSON object per
// run (and one per median) to Config.Out; see Result for the fields. The
// harness talks to one standalone Redis (not a cluster).
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/graflow-go/graflow/internal/cpucap"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/rediscluster"
	"github.com/graflow-go/graflow/internal/redisserver"
	"github.com/redis/go-redis/v9"
)

// Workload names, in the order "all" runs them. The ceiling runs first so
// that the engine's workloads can be compared with it.
const (
	Ceiling     = "ceiling"
	Floor       = "floor"
	Independent = "independent"
	Fanout      = "fanout"
	Fanout3     = "fanout_3procs"
	Dynamic     = "dynamic"
	Chain       = "chain"
	Latency     = "latency"
	Replay      = "replay"
	Trace       = "trace"
)

// All lists every workload in run order.
var All = []string{Ceiling, Floor, Independent, Fanout, Fanout3, Dynamic, Chain, Latency, Replay, Trace}

// Ceiling modes.
const (
	ModeBatched   = "batched"
	ModeUnbatched = "unbatched"
	ModeFanout    = "fanout" // the floor of the fanout workload
)

// Sizes are the workloads' sizes.
type Sizes struct {
	// CeilingBatched and CeilingUnbatched are the entries of the raw Redis
	// ceiling, with and without producer pipelining.
	CeilingBatched   int
	CeilingUnbatched int
	// FloorRuns single-task runs through the floor scripts (no engine).
	FloorRuns int
	// IndependentRuns single-task runs.
	IndependentRuns int
	// FanoutTasks parallel tasks feeding one reduce task.
	FanoutTasks int
	// DynamicTasks spawned by one task at run time, feeding one reduce
	// task (the dynamic fan-out).
	DynamicTasks int
	// ChainRuns 3-step sequences.
	ChainRuns int
	// LatencyRuns single-task runs, one at a time.
	LatencyRuns int
	// ReplayEvents in the synthetic history that is folded.
	ReplayEvents int
}

// DefaultSizes are the sizes "graflow bench" uses.
func DefaultSizes() Sizes {
	return Sizes{
		CeilingBatched: 200_000, CeilingUnbatched: 50_000, FloorRuns: 20_000, IndependentRuns: 20_000, FanoutTasks: 20_000,
		DynamicTasks: 10_000, ChainRuns: 5_000, LatencyRuns: 1_000, ReplayEvents: 100_000,
	}
}

// SmokeSizes run every workload in a few seconds: they prove the harness
// works, and measure nothing worth quoting.
func SmokeSizes() Sizes {
	return Sizes{
		CeilingBatched: 4_000, CeilingUnbatched: 1_000, FloorRuns: 200, IndependentRuns: 200, FanoutTasks: 300,
		DynamicTasks: 300, ChainRuns: 100, LatencyRuns: 50, ReplayEvents: 10_000,
	}
}

// Defaults for Config's zero values.
const (
	DefaultRuns        = 1
	DefaultConcurrency = 16
	DefaultSubmitters  = 16
	DefaultTimeout     = 10 * time.Minute
)

// Config configures a benchmark. A zero field means its default.
type Config struct {
	// RedisURL benchmarks an existing Redis. Empty starts a private
	// redis-server child process without AOF or RDB snapshots.
	RedisURL string
	// Exe is the graflow binary whose "worker" and "projector" commands run
	// the engine's processes. Empty runs them in this process instead
	// (tests and profiles; the numbers then include the harness).
	Exe string
	// NamespacePrefix prefixes each workload's fresh namespace (default "bench").
	NamespacePrefix string
	// Workloads to run, in the order of All (default: all).
	Workloads []string
	// Runs repeats each workload (default 1); a median line follows the runs.
	Runs int
	// Sizes; zero fields take DefaultSizes.
	Sizes Sizes
	// Concurrency of each worker (default 16).
	Concurrency int
	// Submitters submit runs concurrently (default 16).
	Submitters int
	// Timeout bounds each workload run (default 10m).
	Timeout time.Duration
	// Out receives one JSON object per line. Required.
	Out io.Writer
	// Log receives progress lines; nil is quiet.
	Log io.Writer
	// Partitions of each workload's namespace (default 1). On a cluster
	// (a redis+cluster:// RedisURL) the partitions' slots are what spreads
	// the work over the masters; on one Redis more only add keys.
	Partitions int
	// ClusterMasters, when set (and RedisURL is empty), starts a private
	// local Redis Cluster of that many masters (no replicas, no
	// persistence) instead of one redis-server.
	ClusterMasters int
	// RedisCPUs, when set, caps each redis-server the bench starts at that
	// many cores with a cgroup (Linux, root): a way to make Redis the
	// bottleneck on a small machine, as each master of a real cluster has
	// its own machine, and so to measure what more masters add.
	RedisCPUs float64
	// ProfileDir, when set, makes every engine process write a CPU profile
	// there (<namespace>-<component>.pprof); the processes are then
	// stopped with SIGTERM instead of killed, so the profiles are complete.
	ProfileDir string
}

func (c Config) withDefaults() Config {
	if c.NamespacePrefix == "" {
		c.NamespacePrefix = "bench"
	}
	if len(c.Workloads) == 0 {
		c.Workloads = All
	}
	if c.Runs <= 0 {
		c.Runs = DefaultRuns
	}
	d := DefaultSizes()
	s := &c.Sizes
	for _, f := range []struct {
		v *int
		d int
	}{
		{&s.CeilingBatched, d.CeilingBatched}, {&s.CeilingUnbatched, d.CeilingUnbatched},
		{&s.FloorRuns, d.FloorRuns}, {&s.IndependentRuns, d.IndependentRuns}, {&s.FanoutTasks, d.FanoutTasks}, {&s.DynamicTasks, d.DynamicTasks}, {&s.ChainRuns, d.ChainRuns},
		{&s.LatencyRuns, d.LatencyRuns}, {&s.ReplayEvents, d.ReplayEvents},
	} {
		if *f.v <= 0 {
			*f.v = f.d
		}
	}
	if c.Partitions <= 0 {
		c.Partitions = rdb.DefaultPartitions
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Submitters <= 0 {
		c.Submitters = DefaultSubmitters
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return c
}

// ErrUnknownWorkload is returned (wrapped) for a workload name not in All.
var ErrUnknownWorkload = errors.New("unknown workload")

func (c Config) validate() error {
	var errs []error
	if c.Out == nil {
		errs = append(errs, errors.New("bench: Config.Out is required"))
	}
	for _, w := range c.Workloads {
		if !slices.Contains(All, w) {
			errs = append(errs, fmt.Errorf("bench: %w %q (choose from %s)", ErrUnknownWorkload, w, strings.Join(All, ", ")))
		}
	}
	return errors.Join(errs...)
}

// ParseWorkloads reads a comma-separated list ("all" or empty means All)
// and returns it in run order.
func ParseWorkloads(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "all" {
		return All, nil
	}
	want := map[string]bool{}
	for _, w := range strings.Split(s, ",") {
		w = strings.TrimSpace(w)
		if w == "" {
			continue
		}
		if !slices.Contains(All, w) {
			return nil, fmt.Errorf("%w %q (choose from all, %s)", ErrUnknownWorkload, w, strings.Join(All, ", "))
		}
		want[w] = true
	}
	var out []string
	for _, w := range All {
		if want[w] {
			out = append(out, w)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no workload given")
	}
	return out, nil
}

// Report is what a benchmark measured.
type Report struct {
	Env     Env
	Results []Result // every run, then the medians, as printed
}

// Medians returns the median lines.
func (r *Report) Medians() []Result {
	var out []Result
	for _, x := range r.Results {
		if x.Median {
			out = append(out, x)
		}
	}
	return out
}

// Median returns the median line of workload (and mode), or nil.
func (r *Report) Median(workload, mode string) *Result {
	for i := range r.Results {
		x := &r.Results[i]
		if x.Median && x.Workload == workload && x.Mode == mode {
			return x
		}
	}
	return nil
}

// CeilingSpread returns the lowest and highest batched ceiling over the
// runs and how many runs measured one.
func (r *Report) CeilingSpread() (lo, hi float64, n int) {
	for _, x := range r.Results {
		if x.Median || x.Workload != Ceiling || x.Mode != ModeBatched {
			continue
		}
		if n == 0 || x.TasksPerSec < lo {
			lo = x.TasksPerSec
		}
		hi = max(hi, x.TasksPerSec)
		n++
	}
	return lo, hi, n
}

// noisyCeiling is the spread of the batched ceiling over the runs (highest
// over lowest) past which the report says the machine's speed moved.
const noisyCeiling = 1.2

// CeilingWarning says, when the batched ceiling moved by more than
// noisyCeiling between runs, that this machine's Redis changed speed while
// it was measured (a shared VM's neighbours): each run's ratios are against
// its own ceiling, but runs far apart compare less well. "" otherwise.
func (r *Report) CeilingWarning() string {
	lo, hi, n := r.CeilingSpread()
	if n < 2 || lo <= 0 || hi/lo <= noisyCeiling {
		return ""
	}
	return fmt.Sprintf("the batched ceiling moved between runs, %s to %s entries/s (%.2f×): this machine's speed changed while it was measured; compare ratios within a run, or interleave the builds you compare", thousands(lo), thousands(hi), hi/lo)
}

// Run runs the configured workloads, printing each result as it is
// measured, and returns them all. It stops at the first workload that
// fails (a run that does not succeed, a process that exits, a timeout).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	h, err := newHarness(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer h.close()
	rep := &Report{Env: h.env}
	enc := json.NewEncoder(cfg.Out)
	emit := func(r Result) error {
		rep.Results = append(rep.Results, r)
		return enc.Encode(r)
	}
	for _, name := range cfg.Workloads {
		var runs []Result
		for i := 1; i <= cfg.Runs; i++ {
			load := loadAvg1()
			fmt.Fprintf(cfg.Log, "bench: %s run %d/%d %s, load average %.2f\n", name, i, cfg.Runs, h.describe(name), load)
			res, err := h.runWorkload(ctx, name, i)
			if err != nil {
				return rep, fmt.Errorf("%s run %d: %w", name, i, err)
			}
			for _, r := range res {
				r.LoadAvg1 = load
				h.finishResult(&r, rep)
				if err := emit(r); err != nil {
					return rep, err
				}
				runs = append(runs, r)
				fmt.Fprintf(cfg.Log, "bench:   %s\n", r.Summary())
			}
		}
		for _, m := range medians(runs) {
			h.finishResult(&m, rep)
			if err := emit(m); err != nil {
				return rep, err
			}
			if cfg.Runs > 1 {
				fmt.Fprintf(cfg.Log, "bench:   median of %d: %s\n", cfg.Runs, m.Summary())
			}
		}
	}
	return rep, nil
}

// harness is what every workload shares: the Redis under test, a client
// for measuring, and the environment description.
type harness struct {
	cfg  Config
	url  string
	srv  *redisserver.Server   // nil for an external Redis or a cluster
	cl   *rediscluster.Cluster // the private cluster (Config.ClusterMasters)
	caps []*cpucap.Cap         // Config.RedisCPUs' cgroups
	mc   redis.UniversalClient // measuring client (commands counted, then subtracted)
	mdb  rdb.DB                // reads through mc
	hook *counter
	env  Env
	dir  string // process logs
	ok   bool   // remove dir on close
}

func newHarness(ctx context.Context, cfg Config) (_ *harness, err error) {
	h := &harness{cfg: cfg, hook: newCounter()}
	defer func() {
		if err != nil {
			h.close()
		}
	}()
	if h.dir, err = os.MkdirTemp("", "graflow-bench-*"); err != nil {
		return nil, err
	}
	persistence := ""
	var pids []int
	switch {
	case cfg.RedisURL != "":
		h.url = cfg.RedisURL
	case cfg.ClusterMasters > 0:
		h.cl, err = rediscluster.Start(ctx, rediscluster.Config{Masters: cfg.ClusterMasters, Replicas: -1})
		if err != nil {
			return nil, fmt.Errorf("start a local Redis Cluster: %w", err)
		}
		h.url, pids = h.cl.URL(), h.cl.PIDs()
		persistence = PersistenceNone
		fmt.Fprintf(cfg.Log, "bench: started a local Redis Cluster of %s (no replicas) WITHOUT AOF or RDB snapshots\n", masters(cfg.ClusterMasters))
	default:
		h.srv, err = redisserver.Start(ctx, redisserver.Config{AOF: false})
		if err != nil {
			return nil, fmt.Errorf("start redis-server (or pass --redis URL): %w", err)
		}
		h.url, pids = h.srv.URL(), []int{h.srv.PID()}
		persistence = PersistenceNone
		fmt.Fprintf(cfg.Log, "bench: started redis-server at %s WITHOUT AOF or RDB snapshots: persistence is an operations choice (see docs/performance.md)\n", h.srv.Addr())
	}
	if cfg.RedisCPUs > 0 {
		if len(pids) == 0 {
			return nil, errors.New("a CPU cap applies to the redis-servers the bench starts, not to --redis")
		}
		for i, pid := range pids {
			c, err := cpucap.New(fmt.Sprintf("graflow-bench-%d-%d", os.Getpid(), i), cfg.RedisCPUs)
			if err != nil {
				return nil, err
			}
			h.caps = append(h.caps, c)
			if err := c.Add(pid); err != nil {
				return nil, err
			}
		}
		fmt.Fprintf(cfg.Log, "bench: each redis-server capped at %.2f cores\n", cfg.RedisCPUs)
	}
	if h.mc, err = newClient(h.url, 8); err != nil {
		return nil, err
	}
	h.mc.AddHook(h.hook)
	h.mdb = rdb.New(h.mc, "")
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := h.mdb.Ping(pctx); err != nil {
		return nil, fmt.Errorf("redis not reachable: %w", err)
	}
	h.env, err = probeEnv(ctx, h.mdb, persistence)
	if err != nil {
		return nil, err
	}
	if cfg.ClusterMasters > 0 {
		h.env.RedisTopology = "local cluster of " + masters(cfg.ClusterMasters)
	}
	if cfg.RedisCPUs > 0 {
		h.env.RedisTopology = strings.TrimPrefix(h.env.RedisTopology+fmt.Sprintf(", each redis-server capped at %.2f cores", cfg.RedisCPUs), ", ")
	}
	if cfg.Exe == "" {
		h.env.Engine = "in-process"
	} else {
		h.env.Engine = "processes"
	}
	fmt.Fprintf(cfg.Log, "bench: %s\n", h.env.Line())
	h.ok = true
	return h, nil
}

// masters is "1 master" or "N masters".
func masters(n int) string {
	if n == 1 {
		return "1 master"
	}
	return strconv.Itoa(n) + " masters"
}

func (h *harness) close() {
	if h.mc != nil {
		_ = h.mc.Close()
	}
	if h.srv != nil {
		_ = h.srv.Stop()
	}
	if h.cl != nil {
		_ = h.cl.Stop()
	}
	for _, c := range h.caps {
		_ = c.Close()
	}
	if h.dir != "" {
		if h.ok {
			_ = os.RemoveAll(h.dir)
		} else {
			fmt.Fprintf(h.cfg.Log, "bench: process logs kept in %s\n", h.dir)
		}
	}
}

// fail marks the harness failed: the process logs are kept.
func (h *harness) fail() { h.ok = false }

func (h *harness) namespace(workload string, run int) string {
	return fmt.Sprintf("%s-%s-%d-%s", h.cfg.NamespacePrefix, strings.ReplaceAll(workload, "_", "-"), run,
		strconv.FormatInt(time.Now().UnixNano()%(1<<40), 36))
}

func (h *harness) describe(name string) string {
	s, c := h.cfg.Sizes, h.cfg.Concurrency
	switch name {
	case Ceiling:
		return fmt.Sprintf("(%d producers, %d consumers; %d entries batched, %d unbatched)", h.cfg.Submitters, h.cfg.Submitters, s.CeilingBatched, s.CeilingUnbatched)
	case Floor:
		return fmt.Sprintf("(the least Redis work the invariants allow, no engine, %d lanes: %d single-task runs, %d fan-out tasks, %d 3-step runs)",
			h.cfg.Submitters, s.FloorRuns, s.FanoutTasks, s.ChainRuns)
	case Independent:
		return fmt.Sprintf("(%d single-task runs, 1 worker x %d)", s.IndependentRuns, c)
	case Fanout:
		return fmt.Sprintf("(%d parallel tasks + 1 reduce, 1 worker x %d)", s.FanoutTasks, c)
	case Fanout3:
		return fmt.Sprintf("(%d parallel tasks + 1 reduce, 3 workers x %d)", s.FanoutTasks, c)
	case Dynamic:
		return fmt.Sprintf("(1 task spawning %d tasks + 1 reduce, 1 worker x %d)", s.DynamicTasks, c)
	case Chain:
		return fmt.Sprintf("(%d runs of 3 steps, 1 worker x %d)", s.ChainRuns, c)
	case Latency:
		return fmt.Sprintf("(%d single-task runs one at a time)", s.LatencyRuns)
	case Replay:
		return fmt.Sprintf("(fold of a %d-event history)", s.ReplayEvents)
	case Trace:
		return "(one run at a time through an idle in-process engine, every component's commands recorded)"
	}
	return ""
}

func (h *harness) runWorkload(ctx context.Context, name string, run int) ([]Result, error) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	var res []Result
	var err error
	switch name {
	case Ceiling:
		res, err = h.ceiling(ctx, run)
	case Floor:
		res, err = h.floor(ctx, run)
	case Independent:
		res, err = h.independent(ctx, run)
	case Fanout:
		res, err = h.fanout(ctx, run, Fanout, 1)
	case Fanout3:
		res, err = h.fanout(ctx, run, Fanout3, 3)
	case Dynamic:
		res, err = h.dynamic(ctx, run)
	case Chain:
		res, err = h.chain(ctx, run)
	case Latency:
		res, err = h.latency(ctx, run)
	case Replay:
		res, err = h.replay(run)
	case Trace:
		res, err = h.trace(ctx, run)
	default:
		err = fmt.Errorf("%w %q", ErrUnknownWorkload, name)
	}
	if err != nil {
		h.fail()
		if ctx.Err() != nil && !errors.Is(err, context.Canceled) {
			err = fmt.Errorf("%w (timeout %s)", err, h.cfg.Timeout)
		}
	}
	return res, err
}

// finishResult stamps the environment and the comparison with the batched
// ceiling measured earlier in this benchmark (if any).
func (h *harness) finishResult(r *Result, rep *Report) {
	r.RedisVersion, r.RedisPersistence, r.RedisTopology = h.env.RedisVersion, h.env.RedisPersistence, h.env.RedisTopology
	r.NProc, r.CPUModel, r.GoVersion = h.env.NProc, h.env.CPUModel, h.env.GoVersion
	if r.TasksPerSec > 0 && r.Workload != Ceiling {
		if c := rep.Median(Ceiling, ModeBatched); c != nil && c.TasksPerSec > 0 {
			r.VsBatchedCeiling = round(r.TasksPerSec/c.TasksPerSec, 4)
		}
	}
}
