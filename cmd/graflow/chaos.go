//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	"strconv"
	"time"

	"github.com/graflow-go/graflow/cmd/graflow/internal/chaos"
)

func init() {
	register(&command{name: "chaos", summary: "run workflows under injected faults (workers, projectors, Redis) and verify their histories; --duration soaks", setup: runChaos})
}

func runChaos(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	seeds := fs.String("seeds", "1", "comma-separated seeds, or a range like 1-5")
	tasks := fs.Int("tasks", 1000, "tasks in the main workflow")
	wide := fs.Int("wide", 3000, "width of the second run's fan-out, whose dispatching projector is SIGSTOPped mid-way (-1: no second run)")
	workers := fs.Int("workers", 4, "worker processes")
	projectors := fs.Int("projectors", 3, "projector processes on the same feed")
	feedIdle := fs.Duration("feed-reclaim-idle", 2*time.Second, "the projectors' feed reclaim (a SIGSTOPped projector's entries are taken over after this long)")
	conc := fs.Int("concurrency", 8, "tasks per worker")
	lease := fs.Duration("lease", 2*time.Second, "worker lease (short, so reclaims happen quickly)")
	dir := fs.String("dir", "", "keep Redis' AOF and the process logs here (default: a temp dir, removed when verified)")
	timeout := fs.Duration("timeout", 2*time.Minute, "per-seed time limit (a run still going then fails the seed)")
	duration := fs.Duration("duration", 0, "soak: keep submitting mixed workflows under faults this long (uses the first seed), sample Redis memory/keys/consumers, judge whether they stay flat")
	runTTL := fs.Duration("run-ttl", 30*time.Second, "soak: the projectors' --run-ttl (finished runs expire)")
	sampleEvery := fs.Duration("sample-every", 10*time.Second, "soak: one sample line this often")
	inFlight := fs.Int("in-flight", 6, "soak: runs kept going at once")
	breakFencing := fs.Bool("break-fencing", false, "TEST-ONLY (a graflowtest build): run workers with fencing off; the checker must then report duplicates (exit 0 only if it does)")
	quiet := fs.Bool("quiet", false, "print only the summary line per seed")
	cluster := fs.Bool("cluster", false, "start a local Redis Cluster (3 masters + 3 replicas) instead of one Redis; the Redis fault is then a failover (a master SIGKILLed); use --partitions 4 or more")
	return func(ctx context.Context, args []string) error {
		list, err := parseSeeds(*seeds)
		if err != nil {
			return withCode(ExitUsage, err)
		}
		if *breakFencing && !testHooks {
			return usagef("--break-fencing needs a binary built with the test switches: make chaos-broken-fencing (go build -tags graflowtest)")
		}
		base := chaos.Config{Exe: m.Exe, Tasks: *tasks, Wide: *wide, Workers: *workers, Concurrency: *conc, Projectors: *projectors, Partitions: c.partitions,
			Lease: *lease, FeedReclaimIdle: *feedIdle, BreakFencing: *breakFencing, Timeout: *timeout,
			Duration: *duration, RunTTL: *runTTL, SampleEvery: *sampleEvery, InFlight: *inFlight, Cluster: *cluster}
		if *cluster && *duration > 0 {
			return usagef("--cluster runs chaos seeds; the soak (--duration) does not run on a cluster yet")
		}
		if *duration > 0 {
			return runSoak(ctx, m, base, list[0], *dir, *quiet)
		}
		failed, caught := 0, 0 // caught: seeds whose checker caught duplicates (--break-fencing)
		for _, seed := range list {
			cfg := base
			cfg.Seed = seed
			if *dir != "" {
				cfg.Dir = fmt.Sprintf("%s/seed-%d", *dir, seed)
			}
			if !*quiet {
				cfg.Out = m.Stderr
				fmt.Fprintf(m.Stderr, "chaos seed %d: starting Redis (AOF, appendfsync always), %d projectors and %d workers\n", seed, *projectors, *workers)
			}
			rep, err := chaos.Run(ctx, cfg)
			if err != nil {
				return fmt.Errorf("chaos seed %d: %w", seed, err)
			}
			fmt.Fprintln(m.Stdout, rep.Line())
			ok := rep.Verdict.OK()
			if *breakFencing {
				// One seed catching duplicates proves the checker can
				// fail; a seed whose zombies had nothing in flight to
				// duplicate proves nothing either way (see caught below).
				ok = true
				if rep.Verdict.DuplicateAccepts > 0 {
					caught++
					fmt.Fprintf(m.Stdout, "chaos seed=%d break-fencing: the checker caught %d duplicate accepts, as it must\n", seed, rep.Verdict.DuplicateAccepts)
					for i, p := range rep.Verdict.Problems {
						if i == 6 {
							fmt.Fprintf(m.Stdout, "  ... %d problems in all\n", len(rep.Verdict.Problems))
							break
						}
						fmt.Fprintf(m.Stdout, "  caught: %s\n", p)
					}
				} else {
					fmt.Fprintf(m.Stdout, "chaos seed=%d break-fencing: NO duplicate caught (the zombies may have had no task in flight; try another seed)\n", seed)
				}
			}
			if !ok {
				failed++
				for i, p := range rep.Verdict.Problems {
					if i == 30 {
						fmt.Fprintf(m.Stderr, "  ... %d problems in all\n", len(rep.Verdict.Problems))
						break
					}
					fmt.Fprintf(m.Stderr, "  problem: %s\n", p)
				}
				fmt.Fprintf(m.Stderr, "  logs and AOF kept in %s\n", rep.Dir)
			}
		}
		if *breakFencing && caught == 0 {
			return withCode(ExitFailed, errors.Join(errQuiet, fmt.Errorf("break-fencing: no duplicate accept caught in %d seeds: the checker was not shown to fail", len(list))))
		}
		if failed > 0 {
			return withCode(ExitFailed, errors.Join(errQuiet, fmt.Errorf("%d of %d seeds failed", failed, len(list))))
		}
		return nil
	}
}

// parseSeeds reads "1,2,7" or "1-5".
func parseSeeds(s string) ([]uint64, error) {
	var out []uint64
	for _, part := range splitList(s) {
		lo, hi, isRange := cutDash(part)
		a, err := strconv.ParseUint(lo, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad seed %q", part)
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(hi, 10, 64); err != nil || b < a {
				return nil, fmt.Errorf("bad seed range %q", part)
			}
		}
		for x := a; x <= b; x++ {
			out = append(out, x)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no seeds")
	}
	return out, nil
}

func cutDash(s string) (string, string, bool) {
	for i := 1; i < len(s); i++ {
		if s[i] == '-' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// runSoak runs "graflow chaos --duration D": sample lines and the summary
// on stdout, the trends after it; exit 1 if a run failed its check or a
// judged measure grew.
func runSoak(ctx context.Context, m *Main, cfg chaos.Config, seed uint64, dir string, quiet bool) error {
	cfg.Seed = seed
	cfg.Samples = m.Stdout
	if dir != "" {
		cfg.Dir = fmt.Sprintf("%s/soak-%d", dir, seed)
	}
	if !quiet {
		cfg.Out = m.Stderr
	}
	fmt.Fprintf(m.Stdout, "soak seed=%d: %s of mixed workflows, %d in flight, %d projectors (--run-ttl %s), %d workers; a sample every %s\n",
		seed, cfg.Duration, cfg.InFlight, cfg.Projectors, cfg.RunTTL, cfg.Workers, cfg.SampleEvery)
	rep, err := chaos.Soak(ctx, cfg)
	if err != nil {
		return fmt.Errorf("soak seed %d: %w", seed, err)
	}
	fmt.Fprintln(m.Stdout, rep.Line())
	fmt.Fprintf(m.Stdout, "soak trends (load samples after the %s warm-up: first third against last third; end: after every run expired):\n", rep.Warmup)
	for _, t := range rep.Trends {
		fmt.Fprintf(m.Stdout, "  %s\n", t)
	}
	if !rep.OK() {
		for _, p := range rep.Verdict.Problems {
			fmt.Fprintf(m.Stderr, "  problem: %s\n", p)
		}
		for _, t := range rep.Trends {
			if t.Judged && !t.Flat {
				fmt.Fprintf(m.Stderr, "  problem: %s grew: %.0f in the first third, %.0f in the last, %.0f at the end (bound: first x1.25 + %.0f)\n", t.Name, t.First, t.Last, t.End, t.Slack)
			}
		}
		fmt.Fprintf(m.Stderr, "  logs and AOF kept in %s\n", rep.Dir)
		return withCode(ExitFailed, errors.Join(errQuiet, fmt.Errorf("soak seed %d failed", seed)))
	}
	return nil
}
