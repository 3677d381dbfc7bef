//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/graflow-go/graflow/internal/chaos"
)

func init() {
	register(&command{name: "chaos", summary: "run a 1,000-task workflow under injected faults and verify its history", run: runChaos})
}

func runChaos(ctx context.Context, m *Main, args []string) error {
	var c common
	fs := m.flags("chaos", &c)
	seeds := fs.String("seeds", "1", "comma-separated seeds, or a range like 1-5")
	tasks := fs.Int("tasks", 1000, "tasks in the workflow")
	workers := fs.Int("workers", 4, "worker processes")
	conc := fs.Int("concurrency", 8, "tasks per worker")
	lease := fs.Duration("lease", 2*time.Second, "worker lease (short, so reclaims happen quickly)")
	dir := fs.String("dir", "", "keep Redis' AOF and the process logs here (default: a temp dir, removed when verified)")
	timeout := fs.Duration("timeout", 4*time.Minute, "per-seed time limit")
	breakFencing := fs.Bool("break-fencing", false, "TEST-ONLY (a graflowtest build): run workers with fencing off; the checker must then report duplicates (exit 0 only if it does)")
	quiet := fs.Bool("quiet", false, "print only the summary line per seed")
	if err := parse(fs, args); err != nil {
		return err
	}
	list, err := parseSeeds(*seeds)
	if err != nil {
		return withCode(ExitUsage, err)
	}
	if *breakFencing && !testHooks {
		return usagef("--break-fencing needs a binary built with the test switches: make chaos-broken-fencing (go build -tags graflowtest)")
	}
	failed := 0
	for _, seed := range list {
		cfg := chaos.Config{Exe: m.Exe, Seed: seed, Tasks: *tasks, Workers: *workers, Concurrency: *conc, Lease: *lease,
			BreakFencing: *breakFencing, Timeout: *timeout}
		if *dir != "" {
			cfg.Dir = fmt.Sprintf("%s/seed-%d", *dir, seed)
		}
		if !*quiet {
			cfg.Out = m.Stderr
			fmt.Fprintf(m.Stderr, "chaos seed %d: starting Redis (AOF, appendfsync always), a projector and %d workers\n", seed, *workers)
		}
		rep, err := chaos.Run(ctx, cfg)
		if err != nil {
			return fmt.Errorf("chaos seed %d: %w", seed, err)
		}
		fmt.Fprintln(m.Stdout, rep.Line())
		ok := rep.Verdict.OK()
		if *breakFencing {
			ok = rep.Verdict.DuplicateAccepts > 0
			if ok {
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
			for _, p := range rep.Verdict.Problems {
				fmt.Fprintf(m.Stderr, "  problem: %s\n", p)
			}
			fmt.Fprintf(m.Stderr, "  logs and AOF kept in %s\n", rep.Dir)
		}
	}
	if failed > 0 {
		return withCode(ExitFailed, errors.Join(errQuiet, fmt.Errorf("%d of %d seeds failed", failed, len(list))))
	}
	return nil
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
