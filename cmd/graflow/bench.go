//go:build unix

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/graflow-go/graflow/cmd/graflow/internal/bench"
	"github.com/graflow-go/graflow/internal/redisurl"
	"github.com/spf13/pflag"
)

func init() {
	register(&command{name: "bench", summary: "measure throughput, latency and cost per task against the raw Redis ceiling", setup: runBench,
		long: `Measures the engine against the raw Redis ceiling on this machine. Without
--redis it starts a private redis-server child WITHOUT AOF or RDB snapshots
(persistence is an operations choice); $REDIS_URL is not used, so a
benchmark never floods a shared Redis by accident. Each workload runs in a
fresh namespace (deleted afterwards) with its own worker and projector
processes of this binary. Stdout gets one JSON object per line.`})
}

func runBench(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	d := bench.DefaultSizes()
	var sz bench.Sizes
	workloads := fs.String("workload", "all", "comma-separated workloads: all, "+strings.Join(bench.All, ", "))
	runs := fs.Int("runs", 1, "repeat each workload N times; each run is reported, then the median")
	conc := fs.Int("concurrency", bench.DefaultConcurrency, "tasks run at once by each worker process")
	submitters := fs.Int("submitters", bench.DefaultSubmitters, "goroutines submitting runs (and the ceiling's producers and consumers)")
	fs.IntVar(&sz.CeilingBatched, "ceiling-batched", d.CeilingBatched, "entries of the batched ceiling (100 XADD per pipeline)")
	fs.IntVar(&sz.CeilingUnbatched, "ceiling-unbatched", d.CeilingUnbatched, "entries of the unbatched ceiling (1 XADD per round trip)")
	fs.IntVar(&sz.FloorRuns, "floor-runs", d.FloorRuns, "single-task runs of the floor workload (the least Redis work the invariants allow, no engine)")
	fs.IntVar(&sz.IndependentRuns, "independent-runs", d.IndependentRuns, "single-task runs of the independent workload")
	fs.IntVar(&sz.FanoutTasks, "fanout-tasks", d.FanoutTasks, "parallel tasks of the fan-out run (plus one reduce task)")
	fs.IntVar(&sz.DynamicTasks, "dynamic-tasks", d.DynamicTasks, "tasks one task of the dynamic run spawns at run time (plus the spawner and one reduce task)")
	fs.IntVar(&sz.ChainRuns, "chain-runs", d.ChainRuns, "3-step runs of the chain workload")
	fs.IntVar(&sz.LatencyRuns, "latency-runs", d.LatencyRuns, "runs of the latency workload, one at a time")
	fs.IntVar(&sz.ReplayEvents, "replay-events", d.ReplayEvents, "events of the synthetic history the replay workload folds")
	jsonOnly := fs.Bool("json-only", false, "print only the JSON lines (no progress, no summary)")
	writeDoc := fs.String("write-doc", "", "write the medians into this Markdown file between its generated-section markers (e.g. docs/performance.md)")
	smoke := fs.Bool("smoke", false, "tiny sizes: proves the harness works in a few seconds; the numbers mean nothing")
	timeout := fs.Duration("timeout", bench.DefaultTimeout, "time limit of each workload run")
	masters := fs.Int("cluster-masters", 0, "start a private local Redis Cluster of N masters (no replicas) instead of one redis-server; use with --partitions (a multiple of N spreads the work evenly)")
	redisCPUs := fs.Float64("redis-cpus", 0, "cap each redis-server the bench starts at this many cores with a cgroup (Linux, root), so that Redis, not this machine's cores, is the bottleneck: how scale-out over masters is measured on a small machine")
	profDir := fs.String("cpuprofile-dir", "", "write a CPU profile of every worker and projector process, and of the bench itself (bench.pprof), into this directory (go tool pprof)")
	return func(ctx context.Context, args []string) error {
		if fs.NArg() > 0 {
			return usagef("bench takes no arguments (got %q)", fs.Args())
		}
		explicit := map[string]bool{}
		fs.Visit(func(f *pflag.Flag) { explicit[f.Name] = true })
		list, err := bench.ParseWorkloads(*workloads)
		if err != nil {
			return withCode(ExitUsage, err)
		}
		if *smoke {
			s := bench.SmokeSizes()
			for name, v := range map[string]*int{
				"ceiling-batched": &sz.CeilingBatched, "ceiling-unbatched": &sz.CeilingUnbatched,
				"floor-runs": &sz.FloorRuns, "independent-runs": &sz.IndependentRuns, "fanout-tasks": &sz.FanoutTasks, "dynamic-tasks": &sz.DynamicTasks, "chain-runs": &sz.ChainRuns,
				"latency-runs": &sz.LatencyRuns, "replay-events": &sz.ReplayEvents,
			} {
				if !explicit[name] {
					*v = 0
				}
			}
			sz = mergeSizes(sz, s)
			if !explicit["timeout"] {
				*timeout = 2 * time.Minute
			}
		}
		if m.Exe == "" {
			return fmt.Errorf("cannot start worker processes: the path of the graflow binary is unknown")
		}
		if c.partitions < 0 {
			return withCode(ExitUsage, fmt.Errorf("--partitions %d: want 1 or more", c.partitions))
		}
		if *masters < 0 || *redisCPUs < 0 {
			return withCode(ExitUsage, fmt.Errorf("--cluster-masters %d, --redis-cpus %v: want 0 or more", *masters, *redisCPUs))
		}
		for f, v := range map[string]string{"sentinel-master": c.sentinel, "tls-ca": c.tls.ca, "tls-cert": c.tls.cert, "tls-key": c.tls.key} {
			if v != "" { // from the command line or the environment
				return usagef("bench: --%s is not supported: the bench hands --redis alone to the processes it starts (use a redis:// or redis+cluster:// URL)", f)
			}
		}
		if explicit["redis"] && (*masters > 0 || *redisCPUs > 0) {
			return withCode(ExitUsage, fmt.Errorf("--cluster-masters and --redis-cpus apply to a Redis the bench starts, not to --redis"))
		}
		cfg := bench.Config{
			ClusterMasters: *masters, RedisCPUs: *redisCPUs,
			Exe: m.Exe, NamespacePrefix: c.namespace + "-bench", Workloads: list, Runs: *runs, Sizes: sz,
			Concurrency: *conc, Submitters: *submitters, Timeout: *timeout, Out: m.Stdout, Log: m.Stderr,
			ProfileDir: *profDir, Partitions: c.partitions,
		}
		if *profDir != "" {
			if err := os.MkdirAll(*profDir, 0o755); err != nil {
				return fmt.Errorf("--cpuprofile-dir: %w", err)
			}
			// The bench's own process (submitters, waiters) too: its CPU
			// per task is reported beside the engine's.
			stop, err := cpuProfile(filepath.Join(*profDir, "bench.pprof"))
			if err != nil {
				return err
			}
			defer stop()
		}
		if explicit["redis"] {
			if cfg.RedisURL, err = benchRedisURL(c.redisURL); err != nil {
				return withCode(ExitUsage, err)
			}
		}
		if *jsonOnly {
			cfg.Log = io.Discard
		}
		rep, err := bench.Run(ctx, cfg)
		if err != nil {
			return err
		}
		if !*jsonOnly {
			fmt.Fprintln(m.Stderr, "bench: medians")
			bench.Table(m.Stderr, rep)
		}
		if *writeDoc != "" {
			cmdline := "graflow bench " + strings.Join(args, " ")
			if err := bench.WriteDoc(*writeDoc, rep, strings.TrimSpace(cmdline), time.Now()); err != nil {
				return fmt.Errorf("write %s: %w", *writeDoc, err)
			}
			if !*jsonOnly {
				fmt.Fprintf(m.Stderr, "bench: wrote the results into %s\n", *writeDoc)
			}
		}
		return nil
	}
}

// mergeSizes fills a's zero fields from b.
func mergeSizes(a, b bench.Sizes) bench.Sizes {
	for _, f := range []struct{ dst, src *int }{
		{&a.CeilingBatched, &b.CeilingBatched}, {&a.CeilingUnbatched, &b.CeilingUnbatched},
		{&a.FloorRuns, &b.FloorRuns}, {&a.IndependentRuns, &b.IndependentRuns}, {&a.FanoutTasks, &b.FanoutTasks}, {&a.DynamicTasks, &b.DynamicTasks}, {&a.ChainRuns, &b.ChainRuns},
		{&a.LatencyRuns, &b.LatencyRuns}, {&a.ReplayEvents, &b.ReplayEvents},
	} {
		if *f.dst <= 0 {
			*f.dst = *f.src
		}
	}
	return a
}

// benchRedisURL is --redis as the bench takes it: one node, host:port or a
// redis://, rediss:// or redis+cluster:// URL, which it parses itself and
// passes on to its worker and projector processes.
func benchRedisURL(raw string) (string, error) {
	u := withScheme(raw)
	switch {
	case isNodeList(u):
		return "", fmt.Errorf("bench: --redis %q: give one node (a redis+cluster:// URL for a cluster), not a list", redisurl.Redact(u))
	case redisurl.IsSentinel(u):
		return "", fmt.Errorf("bench: --redis %q: redis+sentinel:// is not supported; give the master's redis:// URL", redisurl.Redact(u))
	}
	return u, nil
}
