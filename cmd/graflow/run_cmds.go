package main

import (
	"context"
	"errors"
	"fmt"
	"os"
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
	register(&command{name: "worker", summary: "run a worker with the built-in handlers", run: runWorker})
	register(&command{name: "projector", summary: "run a projector (folds runs, unlocks tasks)", run: runProjector})
	register(&command{name: "submit", summary: "submit a run from a JSON/YAML spec file (- for stdin); prints the run id", run: runSubmit})
	register(&command{name: "wait", summary: "block until a run ends; exit 0 if it succeeded, 1 if it failed, 5 quarantined, 6 cancelled", run: runWait})
	register(&command{name: "cancel", summary: "cancel a running run (--reason TEXT): queued tasks never run, running handlers are told", run: runCancel})
	register(&command{name: "status", summary: "show a run's tasks and progress", run: runStatus})
}

func runWorker(ctx context.Context, m *Main, args []string) error {
	var c common
	fs := m.flags("worker", &c)
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
	if err := parse(fs, args); err != nil {
		return err
	}
	stopProfile, err := cpuProfile(*prof)
	if err != nil {
		return err
	}
	defer stopProfile()
	r, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer r.Close()
	ms, err := startMetrics(graflow.Config{Redis: r, Namespace: c.namespace, NamespacePartitions: c.partitions}, *metricsAddr, splitList(*pools), c.logger(m.Stderr))
	if err != nil {
		return err
	}
	defer ms.stop()
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

func runProjector(ctx context.Context, m *Main, args []string) error {
	var c common
	fs := m.flags("projector", &c)
	id := fs.String("id", "", "projector id (default projector-<host>-<pid>); keep it stable across restarts")
	retryInitial := fs.Duration("retry-initial", projector.DefaultRetryInitial, "delay before the first retry (exponential backoff with jitter)")
	retryMax := fs.Duration("retry-max", projector.DefaultRetryMax, "cap on the delay between retries")
	feedIdle := fs.Duration("feed-reclaim-idle", projector.DefaultFeedReclaim, "take over feed entries of dead projectors after this long")
	runTTL := fs.Duration("run-ttl", 0, "finished runs expire this long after they end (0 keeps them; see graflow gc)")
	batch := fs.Int("batch-size", projector.DefaultBatchSize, "most decision events one commit appends (a bigger dispatch is split into several commits)")
	compact := fs.Int("compact-log", rdb.DefaultCompactLog, "the commit that ends a run compacts its log if it holds at most this many events (0: the default; -1: never)")
	prof := fs.String("cpuprofile", "", "write a CPU profile (go tool pprof) to this file until the projector exits")
	metricsAddr := metricsFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	stopProfile, err := cpuProfile(*prof)
	if err != nil {
		return err
	}
	defer stopProfile()
	r, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer r.Close()
	ms, err := startMetrics(graflow.Config{Redis: r, Namespace: c.namespace, NamespacePartitions: c.partitions}, *metricsAddr, nil, c.logger(m.Stderr))
	if err != nil {
		return err
	}
	defer ms.stop()
	p, err := projector.New(projector.Config{Redis: r, Namespace: c.namespace, NamespacePartitions: c.partitions, ID: *id, Logger: c.logger(m.Stderr),
		RetryInitial: *retryInitial, RetryMax: *retryMax, FeedReclaimIdle: *feedIdle, RunTTL: *runTTL, CompactLog: *compact, BatchSize: *batch,
		Metrics: ms.projector()})
	if err != nil {
		return withCode(ExitUsage, err)
	}
	c.logger(m.Stderr).Info().Str("namespace", c.namespace).Msg("projector started")
	return p.Run(ctx)
}

func runSubmit(ctx context.Context, m *Main, args []string) error {
	var c common
	fs := m.flags("submit", &c)
	runID := fs.String("run-id", "", "idempotency: reuse this run id (a second submit returns it)")
	wait := fs.Bool("wait", false, "wait for the run to end (exit code as for \"graflow wait\")")
	startAt := fs.String("start-at", "", "submit for later: the run's first tasks start at this RFC 3339 time (2026-12-24T08:00:00Z)")
	startIn := fs.Duration("start-in", 0, "submit for later: the run's first tasks start after this long (90m)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("submit takes one spec file (or - for stdin)")
	}
	var data []byte
	var err error
	if fs.Arg(0) == "-" {
		data, err = readSpec(m.Stdin, "standard input")
	} else {
		var f *os.File
		if f, err = os.Open(fs.Arg(0)); err == nil {
			data, err = readSpec(f, fs.Arg(0))
			_ = f.Close()
		}
	}
	if err != nil {
		return withCode(ExitUsage, err)
	}
	spec, err := scheduler.ParseSpec(data)
	if err != nil {
		return withCode(ExitUsage, err)
	}
	cl, r, err := c.client(ctx)
	if err != nil {
		return err
	}
	defer r.Close()
	var opts []graflow.SubmitOption
	switch {
	case *startAt != "" && *startIn != 0:
		return usagef("submit takes --start-at or --start-in, not both")
	case *startIn < 0:
		return usagef("--start-in %s is negative", *startIn)
	case *startIn > 0:
		opts = append(opts, graflow.StartAt(time.Now().Add(*startIn)))
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
	run, err := cl.SubmitSpec(ctx, spec, opts...)
	if err != nil {
		if errors.Is(err, scheduler.ErrInvalidWorkflow) {
			return withCode(ExitUsage, err)
		}
		return err
	}
	fmt.Fprintln(m.Stdout, run)
	if *wait {
		return waitFor(ctx, m, cl, run, 0, false)
	}
	return nil
}

func runWait(ctx context.Context, m *Main, args []string) error {
	var c common
	fs := m.flags("wait", &c)
	timeout := fs.Duration("timeout", 0, "give up after this long (exit 4); 0 waits forever")
	fs.BoolVar(&c.json, "json", false, "print the final state as JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("wait takes one run id")
	}
	cl, r, err := c.client(ctx)
	if err != nil {
		return err
	}
	defer r.Close()
	return waitFor(ctx, m, cl, fs.Arg(0), *timeout, c.json)
}

func waitFor(ctx context.Context, m *Main, cl *graflow.Client, run string, timeout time.Duration, asJSON bool) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	info, err := cl.Wait(ctx, run)
	if errors.Is(err, context.DeadlineExceeded) {
		return withCode(ExitTimeout, fmt.Errorf("run %s still running after %s", run, timeout))
	}
	if err != nil {
		return err
	}
	if asJSON {
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

func runCancel(ctx context.Context, m *Main, args []string) error {
	var c common
	fs := m.flags("cancel", &c)
	reason := fs.String("reason", "", "why (recorded in run_cancelled and shown by status and wait)")
	if err := parse(fs, args); err != nil {
		return err
	}
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

func runStatus(ctx context.Context, m *Main, args []string) error {
	var c common
	fs := m.flags("status", &c)
	fs.BoolVar(&c.json, "json", false, "print JSON")
	channel := fs.Bool("channel", false, "print the run's channel (each key and its JSON value) instead of its tasks")
	if err := parse(fs, args); err != nil {
		return err
	}
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
