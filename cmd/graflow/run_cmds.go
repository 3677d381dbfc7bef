package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"github.com/graflow-go/graflow/events"
	"github.com/spf13/pflag"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
)

func init() {
	register(&command{name: "worker", summary: "run a worker with the built-in handlers", setup: runWorker})
	register(&command{name: "projector", summary: "run a projector (folds runs, unlocks tasks)", setup: runProjector})
	register(&command{name: "submit", summary: "submit a run from a JSON/YAML spec file (- for stdin); prints the run id", setup: runSubmit})
	register(&command{name: "wait", summary: "block until a run ends; exit 0 if it succeeded, 1 if it failed, 5 quarantined, 6 cancelled", setup: runWait})
	register(&command{name: "cancel", summary: "cancel a running run (--reason TEXT): queued tasks never run, running handlers are told", setup: runCancel})
	register(&command{name: "status", summary: "show a run's tasks and progress", setup: runStatus})
}

func runWorker(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	id := fs.String("id", "", "worker id (default <host>-<pid>)")
	pools := fs.String("pools", worker.DefaultPool, "comma-separated pools to serve")
	conc := fs.Int("concurrency", worker.DefaultConcurrency, "tasks run at once")
	lease := fs.Duration("lease", worker.DefaultLease, "claim lease; heartbeats renew it every lease/3")
	drain := fs.Duration("drain-timeout", worker.DefaultDrainTimeout, "on SIGTERM, how long in-flight tasks may finish before they are handed back")
	reclaim := fs.Duration("reclaim-interval", 0, "how often expired leases are reclaimed (default lease/3)")
	poison := fs.Int("poison-limit", worker.DefaultPoisonLimit, "deliveries without an outcome before a task is failed as poison")
	hbEvery := fs.Duration("heartbeat-event-every", worker.DefaultHeartbeatEventEvery, "at most one task_heartbeat event per task per this interval")
	maxDynamic := fs.Int("max-dynamic-tasks", worker.DefaultMaxDynamicTasks, "tasks handlers may spawn into one run, all spawns together")
	maxIter := fs.Int("max-iterations", worker.DefaultMaxIterations, "iterations of a loop (Task.Continue), the first task included")
	prof := fs.String("cpuprofile", "", "write a CPU profile (go tool pprof) to this file until the worker exits")
	unsafe := unsafeWorkerFlags(fs) // graflowtest builds only
	metricsAddr := metricsFlag(fs)
	return func(ctx context.Context, args []string) error {
		r, ms, stop, err := c.startService(ctx, m, *prof, *metricsAddr, splitList(*pools))
		if err != nil {
			return err
		}
		defer stop()
		w, err := worker.New(unsafe(worker.Config{
			Redis: r, Namespace: c.namespace, NamespacePartitions: c.partitions, ID: *id, Pools: splitList(*pools), Concurrency: *conc,
			Lease: *lease, DrainTimeout: *drain, ReclaimInterval: *reclaim, PoisonLimit: *poison,
			HeartbeatEventEvery: *hbEvery, MaxDynamicTasks: *maxDynamic, MaxIterations: *maxIter, Logger: c.logger(m.Stderr), Metrics: ms.worker(),
		}))
		if err != nil {
			return withCode(ExitUsage, err)
		}
		builtin.Register(w)
		return w.Run(ctx)
	}
}

func runProjector(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	id := fs.String("id", "", "projector id (default projector-<host>-<pid>); keep it stable across restarts")
	retryInitial := fs.Duration("retry-initial", projector.DefaultRetryInitial, "delay before the first retry (exponential backoff with jitter)")
	retryMax := fs.Duration("retry-max", projector.DefaultRetryMax, "cap on the delay between retries")
	feedIdle := fs.Duration("feed-reclaim-idle", projector.DefaultFeedReclaim, "take over feed entries of dead projectors after this long")
	runTTL := fs.Duration("run-ttl", 0, "finished runs expire this long after they end (0 keeps them; see graflow gc)")
	batch := fs.Int("batch-size", projector.DefaultBatchSize, "most decision events one commit appends (a bigger dispatch is split into several commits)")
	compact := fs.Int("compact-log", rdb.DefaultCompactLog, "the commit that ends a run compacts its log if it holds at most this many events (0: the default; -1: never)")
	prof := fs.String("cpuprofile", "", "write a CPU profile (go tool pprof) to this file until the projector exits")
	metricsAddr := metricsFlag(fs)
	return func(ctx context.Context, args []string) error {
		r, ms, stop, err := c.startService(ctx, m, *prof, *metricsAddr, nil)
		if err != nil {
			return err
		}
		defer stop()
		p, err := projector.New(projector.Config{Redis: r, Namespace: c.namespace, NamespacePartitions: c.partitions, ID: *id, Logger: c.logger(m.Stderr),
			RetryInitial: *retryInitial, RetryMax: *retryMax, FeedReclaimIdle: *feedIdle, RunTTL: *runTTL, CompactLog: *compact, BatchSize: *batch,
			Metrics: ms.projector()})
		if err != nil {
			return withCode(ExitUsage, err)
		}
		c.logger(m.Stderr).Info().Str("namespace", c.namespace).Msg("projector started")
		return p.Run(ctx)
	}
}

func runSubmit(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	runID := fs.String("run-id", "", "idempotency: reuse this run id (a second submit returns it)")
	wait := fs.Bool("wait", false, "wait for the run to end (exit code as for \"graflow wait\")")
	startAt := fs.String("start-at", "", "submit for later: the run's first tasks start at this RFC 3339 time (2026-12-24T08:00:00Z)")
	startIn := fs.Duration("start-in", 0, "submit for later: the run's first tasks start after this long (90m)")
	input := fs.String("input", "", "the run's input as JSON (replaces the spec file's input)")
	inputFile := fs.String("input-file", "", "read the run's input (JSON) from this file, - for standard input")
	var o waitOptions
	fs.BoolVar(&o.json, "json", false, "print {\"run\": ID, ...} as JSON (with --wait: the final state)")
	fs.BoolVar(&o.follow, "follow", false, "with --wait: print each task's progress as it happens")
	return func(ctx context.Context, args []string) error {
		if fs.NArg() != 1 {
			return usagef("submit takes one spec file (or - for stdin)")
		}
		if *inputFile == "-" && fs.Arg(0) == "-" {
			return usagef("the spec and --input-file cannot both be standard input")
		}
		spec, err := specFile(m, fs.Arg(0))
		if err != nil {
			return err
		}
		if *input != "" || *inputFile != "" {
			in, err := jsonFlag(m, "--input", *input, *inputFile, maxSpecFile)
			if err != nil {
				return withCode(ExitUsage, err)
			}
			spec.Input = in
		}
		var opts []graflow.SubmitOption
		switch {
		case *startAt != "" && *startIn != 0:
			return usagef("submit takes --start-at or --start-in, not both")
		case *startIn > 0:
			opts = append(opts, graflow.StartIn(*startIn))
		case *startAt != "":
			at, err := time.Parse(time.RFC3339, *startAt)
			if err != nil {
				return usagef("--start-at %q: want an RFC 3339 time such as 2026-12-24T08:00:00Z", *startAt)
			}
			opts = append(opts, graflow.StartAt(at))
		}
		if *runID != "" {
			opts = append(opts, graflow.WithRunID(*runID))
		}
		cl, r, err := c.client(ctx)
		if err != nil {
			return err
		}
		defer r.Close()
		run, err := cl.SubmitSpec(ctx, spec, opts...)
		if err != nil {
			if errors.Is(err, scheduler.ErrInvalidWorkflow) {
				return withCode(ExitUsage, err)
			}
			return err
		}
		warnUnserved(ctx, m, cl, spec)
		switch {
		case o.json && !*wait:
			if err := printJSON(m.Stdout, submitted{Run: run, Workflow: spec.Workflow, Tasks: len(spec.Tasks), Namespace: c.namespace}); err != nil {
				return err
			}
		case !o.json:
			fmt.Fprintln(m.Stdout, run)
		}
		if *wait {
			return waitFor(ctx, m, cl, run, o)
		}
		return nil
	}
}

// submitted is what "graflow submit --json" prints.
type submitted struct {
	Run       string `json:"run"`
	Workflow  string `json:"workflow"`
	Tasks     int    `json:"tasks"`
	Namespace string `json:"namespace"`
}

// warnUnserved warns, once, on stderr when nothing will run the submitted
// run: a pool of its tasks has no live worker, or no projector is
// registered. A failure to look is not reported (the run is submitted).
func warnUnserved(ctx context.Context, m *Main, cl *graflow.Client, spec events.RunSubmittedBody) {
	if ps, err := cl.Projectors(ctx); err == nil && !slices.ContainsFunc(ps, func(p graflow.ProjectorInfo) bool { return !p.Expired }) {
		fmt.Fprintln(m.Stderr, "graflow: warning: no projector is registered in this namespace: the run will not progress until one runs (graflow projector, or graflow dev)")
	}
	ws, err := cl.Workers(ctx)
	if err != nil {
		return
	}
	served := map[string]bool{}
	for _, w := range ws {
		if !w.Expired {
			for _, p := range w.Pools {
				served[p] = true
			}
		}
	}
	var missing []string
	for _, t := range spec.Tasks {
		pool := cmp.Or(t.Pool, worker.DefaultPool)
		if !served[pool] && !slices.Contains(missing, pool) {
			missing = append(missing, pool)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(m.Stderr, "graflow: warning: no live worker serves pool %s: its tasks wait until one does (graflow worker --pools %s)\n",
			strings.Join(missing, ", "), strings.Join(missing, ","))
	}
}

func runWait(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	var o waitOptions
	fs.DurationVar(&o.timeout, "timeout", 0, "give up after this long (exit 4); 0 waits forever")
	fs.BoolVar(&o.json, "json", false, "print the final state as JSON")
	fs.BoolVar(&o.follow, "follow", false, "print each task's progress as it happens (the live display of graflow dev's demo; on stderr with --json)")
	return func(ctx context.Context, args []string) error {
		if fs.NArg() != 1 {
			return usagef("wait takes one run id")
		}
		cl, r, err := c.client(ctx)
		if err != nil {
			return err
		}
		defer r.Close()
		return waitFor(ctx, m, cl, fs.Arg(0), o)
	}
}

// followRun prints run's progress (the follower of "graflow dev"'s demo)
// until it ends or ctx does: on stdout, or on stderr when stdout gets JSON.
func followRun(ctx context.Context, m *Main, cl *graflow.Client, run string, asJSON bool) error {
	if _, err := cl.Status(ctx, run); err != nil {
		if errors.Is(err, graflow.ErrRunNotFound) {
			return withCode(ExitError, err)
		}
		return err
	}
	w := m.Stdout
	if asJSON {
		w = m.Stderr
	}
	f := newFollower(run, func(format string, args ...any) { fmt.Fprintf(w, format, args...) })
	return cl.Follow(ctx, run, graflow.FollowOptions{UntilEnd: true}, f.apply)
}

// waitOptions are the flags of "graflow wait" (and submit --wait).
type waitOptions struct {
	timeout time.Duration
	json    bool
	follow  bool
}

func waitFor(ctx context.Context, m *Main, cl *graflow.Client, run string, o waitOptions) error {
	wctx := ctx
	if o.timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	var err error
	if o.follow {
		err = followRun(wctx, m, cl, run, o.json)
	}
	var info *graflow.RunInfo
	if err == nil {
		info, err = cl.Wait(wctx, run)
	}
	if in, ok := interruption(ctx); ok {
		// Never exit 0 on Ctrl-C or SIGTERM: the run did not end.
		return withCode(in.code(), fmt.Errorf("%w while waiting for run %s: it goes on (graflow wait %s)", in, run, run))
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return withCode(ExitTimeout, fmt.Errorf("run %s still running after %s", run, o.timeout))
	}
	if err != nil {
		return err
	}
	if o.json {
		if err := printJSON(m.Stdout, info); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(m.Stdout, "run %s %s (%d tasks, %d events)\n", run, info.Status, len(info.Tasks), info.Events)
	}
	if info.Quarantined() {
		return withCode(ExitQuarantined, fmt.Errorf("run %s quarantined: %s (graflow status %s shows the bad entries)", run, info.Quarantine, run))
	}
	if info.Cancelled() {
		msg := fmt.Sprintf("run %s cancelled", run)
		if info.Cause != "" {
			msg += ": " + info.Cause
		}
		return withCode(ExitCancelled, errors.New(msg))
	}
	if !info.Succeeded() {
		msg := fmt.Sprintf("run %s %s", run, info.Status)
		if info.FailedTask != "" {
			msg += fmt.Sprintf(": task %s: %s", info.FailedTask, info.Cause)
		}
		return withCode(ExitFailed, errors.New(msg))
	}
	return nil
}

func runCancel(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	reason := fs.String("reason", "", "why (recorded in run_cancelled and shown by status and wait)")
	return func(ctx context.Context, args []string) error {
		if fs.NArg() != 1 {
			return usagef("cancel takes one run id")
		}
		cl, r, err := c.client(ctx)
		if err != nil {
			return err
		}
		defer r.Close()
		run := fs.Arg(0)
		if err := cl.Cancel(ctx, run, *reason); err != nil {
			if errors.Is(err, graflow.ErrRunFinished) || errors.Is(err, graflow.ErrRunNotFound) {
				return withCode(ExitError, err)
			}
			return err
		}
		fmt.Fprintf(m.Stdout, "run %s cancelled\n", run)
		return nil
	}
}

func runStatus(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print JSON")
	channel := fs.Bool("channel", false, "print the run's channel (each key and its JSON value) instead of its tasks")
	return func(ctx context.Context, args []string) error {
		if fs.NArg() != 1 {
			return usagef("status takes one run id")
		}
		cl, r, err := c.client(ctx)
		if err != nil {
			return err
		}
		defer r.Close()
		if *channel {
			return printChannel(ctx, m, cl, fs.Arg(0), c.json)
		}
		info, err := cl.Status(ctx, fs.Arg(0))
		if err != nil {
			if errors.Is(err, graflow.ErrRunNotFound) {
				return withCode(ExitError, err)
			}
			return err
		}
		if c.json {
			return printJSON(m.Stdout, info)
		}
		fmt.Fprintf(m.Stdout, "run %s  workflow %s  status %s  events %d\n", info.ID, info.Workflow, info.Status, info.Events)
		if info.FailedTask != "" {
			fmt.Fprintf(m.Stdout, "failed task %s: %s\n", info.FailedTask, info.Cause)
		}
		if info.Cancelled() && info.Cause != "" {
			fmt.Fprintf(m.Stdout, "cancelled: %s\n", info.Cause)
		}
		if info.Quarantine != "" {
			fmt.Fprintf(m.Stdout, "quarantined: %s\n", info.Quarantine)
		}
		for _, b := range info.BadEntries {
			fmt.Fprintf(m.Stdout, "bad log entry %s: %s\n", b.Seq, b.Error)
		}
		fmt.Fprintf(m.Stdout, "progress: %s\n\n", progressLine(info))
		tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TASK\tHANDLER\tSTATUS\tATTEMPT\tEPOCH\tOWNER\tDEPS\tRESULT/ERROR")
		for _, t := range info.Tasks {
			detail := string(t.Result)
			if t.ResultExpired {
				detail = "(result expired " + t.ResultExpiresAt.Format(time.RFC3339) + ")"
			}
			if t.Error != "" {
				detail = t.Error
			}
			if len(detail) > 60 {
				detail = detail[:57] + "..."
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", t.ID, t.Handler, t.Status, t.Attempt, t.Epoch, t.Owner, strings.Join(t.Deps, ","), detail)
		}
		return tw.Flush()
	}
}

// progressLine summarises task states: "3/5 succeeded, 1 running, 1 pending".
func progressLine(info *graflow.RunInfo) string {
	order := []projector.TaskStatus{projector.TaskSucceeded, projector.TaskRunning, projector.TaskDispatched,
		projector.TaskPending, projector.TaskAwaitingRetry, projector.TaskFailed, projector.TaskSkipped, projector.TaskCancelled}
	parts := []string{fmt.Sprintf("%d/%d succeeded", info.Counts[string(projector.TaskSucceeded)], len(info.Tasks))}
	for _, s := range order[1:] {
		if n := info.Counts[string(s)]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, s))
		}
	}
	return strings.Join(parts, ", ")
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
