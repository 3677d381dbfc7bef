//go:build unix

package bench

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/proc"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redisurl"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
)

// waitPause follows every wake-up of a waiter blocked on a run's log. It
// bounds the harness' reads of a busy log to about 20 a second; it costs
// no accuracy, because the end of a run is taken from the stream id of its
// run_succeeded entry (the Redis clock), not from when the waiter saw it.
const waitPause = 50 * time.Millisecond

// inProcessBlock bounds the blocking reads of in-process components, and
// so how long stopping them takes (the defaults are 2s). It changes only
// how often an idle component wakes up.
const inProcessBlock = 250 * time.Millisecond

// stack is the engine under test in one fresh namespace: a projector and
// workers, as processes of the graflow binary or inside this process.
type stack struct {
	h  *harness
	ns string
	db rdb.DB                // through rc
	m  rdb.DB                // through the harness' measuring client
	rc redis.UniversalClient // submits and the ceiling's producers and consumers
	// clients of the in-process components
	clients []redis.UniversalClient
	client  *graflow.Client

	procs     []*proc.Proc
	workerPID []int
	projPID   int
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	stopOnce  sync.Once

	workerMode, projectorMode string
}

// stackOptions choose how the engine runs.
type stackOptions struct {
	workers int
	// inProcessWorker runs the (single) worker in this process with extra
	// handlers registered by it.
	inProcessWorker func(w *worker.Worker)
	// inProcess runs the projector and the workers in this process even
	// when the harness has a binary for processes.
	inProcess bool
	// block is the blocking-read time of in-process components (default
	// inProcessBlock).
	block time.Duration
	// hook, if set, is added to the Redis client of each component:
	// "submit" (the stack's client), "projector", "worker".
	hook func(component string) redis.Hook
	// lease of in-process workers (0: the default); the trace sets a long
	// one so that no heartbeat falls into a traced run.
	lease    time.Duration
	noEngine bool // just the namespace and clients (the ceiling)
}

// newClient returns a client to url with pool connections (per node on a
// cluster): a cluster client for a redis+cluster:// URL.
func newClient(url string, pool int) (redis.UniversalClient, error) {
	if redisurl.IsCluster(url) {
		o, err := redisurl.ClusterOptions(url)
		if err != nil {
			return nil, err
		}
		o.PoolSize = pool
		return redis.NewClusterClient(o), nil
	}
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("invalid Redis URL: %w", err)
	}
	o.PoolSize = pool
	return redis.NewClient(o), nil
}

func (h *harness) startStack(ctx context.Context, ns string, o stackOptions) (_ *stack, err error) {
	pool := 4*h.cfg.Submitters + 2*h.cfg.Concurrency
	rc, err := newClient(h.url, pool)
	if err != nil {
		return nil, err
	}
	p := h.cfg.Partitions
	s := &stack{h: h, ns: ns, db: rdb.NewP(rc, ns, p), rc: rc}
	s.m = rdb.NewP(h.mc, ns, p)
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	if o.hook != nil {
		s.rc.AddHook(o.hook("submit"))
	}
	// Each in-process component gets its own client, as a process would.
	client := func(component string) redis.UniversalClient {
		c, _ := newClient(h.url, pool) // parsed above
		if o.hook != nil {
			c.AddHook(o.hook(component))
		}
		s.clients = append(s.clients, c)
		return c
	}
	if o.block <= 0 {
		o.block = inProcessBlock
	}
	if s.client, err = graflow.NewClient(graflow.Config{Redis: s.rc, Namespace: ns, NamespacePartitions: p}); err != nil {
		return nil, err
	}
	if o.noEngine {
		return s, nil
	}
	inCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	processes := h.cfg.Exe != "" && !o.inProcess
	if processes {
		s.projectorMode = "process"
		p, err := proc.Start("projector", h.cfg.Exe, append([]string{"projector", "--redis", h.url, "--namespace", ns, "--partitions", strconv.Itoa(p),
			"--id", "bench-projector", "--log-level", "warn"}, h.profileArgs(ns, "projector")...), nil, filepath.Join(h.dir, ns+"-projector.log"))
		if err != nil {
			return nil, err
		}
		s.procs = append(s.procs, p)
		s.projPID = p.PID()
	} else {
		s.projectorMode = "in-process"
		p, err := projector.New(projector.Config{Redis: client("projector"), Namespace: ns, NamespacePartitions: p, ID: "bench-projector", FeedBlock: o.block,
			FeedReclaimIdle: 2 * max(o.lease, projector.DefaultFeedReclaim)})
		if err != nil {
			return nil, err
		}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); _ = p.Run(inCtx) }()
	}
	for i := range o.workers {
		id := "bench-w" + strconv.Itoa(i)
		if processes && o.inProcessWorker == nil {
			s.workerMode = "process"
			p, err := proc.Start(id, h.cfg.Exe, append([]string{"worker", "--redis", h.url, "--namespace", ns, "--partitions", strconv.Itoa(p), "--id", id,
				"--concurrency", strconv.Itoa(h.cfg.Concurrency), "--log-level", "warn"}, h.profileArgs(ns, id)...), nil,
				filepath.Join(h.dir, ns+"-"+id+".log"))
			if err != nil {
				return nil, err
			}
			s.procs = append(s.procs, p)
			s.workerPID = append(s.workerPID, p.PID())
			continue
		}
		s.workerMode = "in-process"
		w, err := worker.New(worker.Config{Redis: client("worker"), Namespace: ns, NamespacePartitions: p, ID: id, Concurrency: h.cfg.Concurrency, FetchBlock: o.block, Lease: o.lease})
		if err != nil {
			return nil, err
		}
		builtin.Register(w)
		if o.inProcessWorker != nil {
			o.inProcessWorker(w)
		}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); _ = w.Run(inCtx) }()
	}
	wctx, cancelWarm := context.WithTimeout(ctx, 60*time.Second)
	defer cancelWarm()
	if err := s.waitRegistered(wctx, o.workers); err != nil {
		return nil, err
	}
	// Warm up: one run through the whole path proves that the projector is
	// up too (and loads the scripts) before anything is measured.
	wf := graflow.NewWorkflow("bench-warmup")
	for i := range o.workers {
		wf.Task("t"+strconv.Itoa(i), builtin.Noop)
	}
	run, err := s.client.Submit(wctx, wf, nil, graflow.WithRunID("warmup"))
	if err != nil {
		return nil, fmt.Errorf("warm-up submit: %w", err)
	}
	if _, _, err := s.waitRun(wctx, run); err != nil {
		return nil, fmt.Errorf("warm-up run: %w%s", err, s.exited())
	}
	// Open the submitters' connections now, so that their buffers are not
	// counted as memory of the measured tasks.
	var pings sync.WaitGroup
	for range h.cfg.Submitters {
		pings.Add(1)
		go func() { defer pings.Done(); _ = s.db.Ping(wctx) }()
	}
	pings.Wait()
	return s, nil
}

// waitRegistered waits until n workers are in the namespace's registry
// (a worker registers once its groups and scripts are ready, just before it
// starts fetching). Start-up only, never inside a measurement: a short
// check every 10 ms is the simplest wait for another process' start.
func (s *stack) waitRegistered(ctx context.Context, n int) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		got, err := s.m.LiveWorkers(ctx)
		if err == nil && got >= int64(n) {
			return nil
		}
		if d := s.exited(); d != "" {
			return fmt.Errorf("engine did not start%s", d)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("workers did not register (%d of %d): %w%s", got, n, ctx.Err(), s.exited())
		case <-t.C:
		}
	}
}

// exited describes engine processes that exited (for error messages).
func (s *stack) exited() string {
	var dead []string
	for _, p := range s.procs {
		if p.Exited() {
			dead = append(dead, fmt.Sprintf("%s exited with code %d", p.Name, p.ExitCode()))
		}
	}
	if len(dead) == 0 {
		return ""
	}
	return " (" + strings.Join(dead, "; ") + "; logs in " + s.h.dir + ")"
}

// take samples the meters of this stack.
func (s *stack) take(ctx context.Context) (sample, error) {
	return s.h.take(ctx, s.workerPID, s.projPID)
}

// serverTime is Redis' clock now.
func (s *stack) serverTime(ctx context.Context) (time.Time, error) {
	return s.m.ServerTime(ctx)
}

// stop stops the engine and closes the clients. It is idempotent. Engine
// processes are killed: the measurement is over and their namespace is
// deleted next, so there is nothing to drain (a graceful stop would wait
// out their blocking reads). When they write CPU profiles they get SIGTERM
// (and the time to write them) instead.
func (s *stack) stop() {
	s.stopOnce.Do(func() {
		for _, p := range s.procs {
			if s.h.cfg.ProfileDir != "" {
				p.Stop(time.Minute)
				continue
			}
			p.Kill()
		}
		if s.cancel != nil {
			s.cancel()
		}
		// Closing the in-process components' clients ends their blocking
		// reads at once (a cancelled context does not).
		for _, c := range s.clients {
			_ = c.Close()
		}
		s.wg.Wait()
		_ = s.rc.Close()
	})
}

// done stops the engine and deletes the namespace.
func (s *stack) done(ctx context.Context) error {
	s.stop()
	return s.cleanup(ctx)
}

// cost fills r's cost fields; CPU of in-process components is this
// process' CPU (getrusage), which then includes the harness.
func (s *stack) cost(r *Result, a, b sample, tasks int) {
	cost(r, a, b, tasks)
	r.Worker, r.Projector = s.workerMode, s.projectorMode
	if s.workerMode == "in-process" {
		r.WorkerCPUMSPerTask = r.BenchCPUMSPerTask
	}
	if s.projectorMode == "in-process" {
		r.ProjectorCPUMSPerTask = r.BenchCPUMSPerTask
	}
}

// cleanup deletes every key of the namespace.
func (s *stack) cleanup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	// DEL, not UNLINK: freed before the next run starts.
	return s.m.DeleteNamespace(ctx)
}

// errRunFailed is returned when a benchmark run does not succeed.
var errRunFailed = errors.New("run did not succeed")

func terminal(t events.Type) bool {
	return t == events.RunSucceeded || t == events.RunFailed || t == events.RunCancelled || t == events.RunQuarantined
}

// waitRun blocks on run's log (XREAD BLOCK; see waitPause) until its run
// ends, and returns the end entry's stream id and type.
func (s *stack) waitRun(ctx context.Context, run string) (string, events.Type, error) {
	last := "0"
	for {
		if err := ctx.Err(); err != nil {
			return "", "", fmt.Errorf("wait for run %s: %w", run, err)
		}
		res, err := s.m.FollowLog(ctx, run, last, 10000, 2*time.Second)
		if err != nil {
			return "", "", fmt.Errorf("wait for run %s: %w", run, err)
		}
		for _, e := range res {
			last = e.Seq
			if terminal(e.Type) {
				return e.Seq, e.Type, nil
			}
		}
		if len(res) > 0 {
			t := time.NewTimer(waitPause)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
		}
	}
}

// settle waits until every run has ended, having first waited for last
// (the run submitted last, which is about the last to end), and returns
// the latest end on the Redis clock. The check is one pipelined XREVRANGE
// COUNT 1 per run, once; runs that had not ended are waited for one by one.
func (s *stack) settle(ctx context.Context, runs []string, last string) (time.Time, error) {
	var end int64
	note := func(id string, t events.Type, run string) error {
		if t != events.RunSucceeded {
			return fmt.Errorf("%w: run %s ended with %s", errRunFailed, run, t)
		}
		if ms := seqMS(id); ms > end {
			end = ms
		}
		return nil
	}
	id, t, err := s.waitRun(ctx, last)
	if err != nil {
		return time.Time{}, err
	}
	if err := note(id, t, last); err != nil {
		return time.Time{}, err
	}
	pending := runs
	for len(pending) > 0 {
		var open []string
		for i := 0; i < len(pending); i += 1000 {
			batch := pending[i:min(i+1000, len(pending))]
			ends, err := s.m.LastEntries(ctx, batch)
			if err != nil {
				return time.Time{}, fmt.Errorf("check runs: %w", err)
			}
			for j, e := range ends {
				if terminal(e.Type) {
					if err := note(e.Seq, e.Type, batch[j]); err != nil {
						return time.Time{}, err
					}
					continue
				}
				open = append(open, batch[j])
			}
		}
		if len(open) == 0 {
			break
		}
		id, t, err := s.waitRun(ctx, open[0])
		if err != nil {
			return time.Time{}, err
		}
		if err := note(id, t, open[0]); err != nil {
			return time.Time{}, err
		}
		pending = open[1:]
	}
	return time.UnixMilli(end), nil
}

// seqMS is the millisecond part of a stream id.
func seqMS(id string) int64 {
	ms, _, _ := strings.Cut(id, "-")
	n, _ := strconv.ParseInt(ms, 10, 64)
	return n
}

// events counts the entries of runs' logs.
func (s *stack) countEvents(ctx context.Context, runs []string) (int64, error) {
	var total int64
	for i := 0; i < len(runs); i += 1000 {
		batch := runs[i:min(i+1000, len(runs))]
		n, err := s.m.CountEvents(ctx, batch)
		if err != nil {
			return 0, fmt.Errorf("count events: %w", err)
		}
		total += n
	}
	return total, nil
}

// submitAll submits spec under each run id from Submitters goroutines and
// returns the id whose submit returned last.
func (s *stack) submitAll(ctx context.Context, spec events.RunSubmittedBody, runs []string) (string, error) {
	var (
		mu   sync.Mutex
		next int
		last string
		errs []error
		wg   sync.WaitGroup
	)
	for range min(s.h.cfg.Submitters, len(runs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next >= len(runs) || len(errs) > 0 {
					mu.Unlock()
					return
				}
				run := runs[next]
				next++
				mu.Unlock()
				_, err := s.client.SubmitSpec(ctx, spec, graflow.WithRunID(run))
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("submit %s: %w", run, err))
				} else {
					last = run
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return last, errors.Join(errs...)
}

func runIDs(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%06d", prefix, i)
	}
	return out
}

// profileArgs are the flags that make an engine process write its CPU
// profile into Config.ProfileDir.
func (h *harness) profileArgs(ns, component string) []string {
	if h.cfg.ProfileDir == "" {
		return nil
	}
	return []string{"--cpuprofile", filepath.Join(h.cfg.ProfileDir, ns+"-"+component+".pprof")}
}
