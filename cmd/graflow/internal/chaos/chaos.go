//go:build unix

// Package chaos runs workflows across worker and projector processes while
// injecting faults from a seed — SIGKILLed and SIGSTOPped workers, killed
// and SIGSTOPped projectors (several on one feed, so two of them touch one
// run at once and a feed reclaim takes a projection over mid-way), a
// restarted Redis — and then checks every run's whole event history
// (replay.CheckInvariants and replay verify). "graflow chaos" and "make chaos" drive it; Soak runs
// the same faults for a duration over a stream of mixed workflows.
package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/retry"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
)

// Verdict is what the checks found in the runs' histories.
type Verdict = replay.Verdict

// Config configures one chaos run (or soak). A zero field means its
// default.
type Config struct {
	// Exe is the graflow binary that runs the workers and the projectors.
	Exe  string
	Seed uint64
	// Tasks in the main workflow (default 1000).
	Tasks int
	// Wide is the width of the second run's fan-out (default 3000;
	// negative: no second run). Its dispatch takes a projector many
	// commits, and the seed SIGSTOPs that projector in the middle of them
	// for longer than the feed reclaim, so another projector takes the
	// projection over and the stopped one commits late when it resumes.
	Wide int
	// NoCancel skips the cancelled run: by default a third run (the main
	// DAG's shape, Tasks/4 tasks) is cancelled once a random number of its
	// tasks (10 to half of them) succeeded, under the same faults; its history must show that nothing
	// ran after the cancel and that every worker still running one of its
	// tasks was fenced.
	NoCancel bool
	// NoRequeue skips the requeued run: by default a fourth run (a chain
	// of three whose middle task fails for good on its first attempt)
	// fails, and its failed task is requeued from the dead-letter set
	// under the same faults; it must then succeed, with the tasks skipped
	// behind it run, and leave no dead letter.
	NoRequeue bool
	// Small runs (default 24; negative: none) of one to three tasks are
	// submitted one by one while the faults go on: single tasks, chains
	// and pairs, some flaky. A small run's last success ends it in the
	// worker's finish script (rdb.EndMaxTasks), not in a projector's
	// commit; a run that retries or fails is ended by a projector.
	Small int
	// Workers processes (default 4), each with Concurrency (default 8).
	Workers     int
	Concurrency int
	// Projectors on the same feed (default 3), each with its own --id.
	Projectors int
	// Partitions of the namespace (0: the default, 1): with more, runs,
	// their queues and feeds spread over partitions, and every worker
	// and projector serves them all.
	Partitions int
	// Lease of the workers (default 2s; reclaim every Lease/4).
	Lease time.Duration
	// FeedReclaimIdle of the projectors (default 2s): a SIGSTOPped
	// projector's feed entries are taken over after this long.
	FeedReclaimIdle time.Duration
	// Dir holds Redis' AOF and the processes' logs (default: a temp dir,
	// removed after a verified run).
	Dir string
	// RedisURL uses an existing Redis instead of starting one; Redis
	// restarts are then skipped.
	RedisURL string
	// Cluster starts a local Redis Cluster (3 masters, 3 replicas, AOF
	// with appendfsync always) instead of one Redis; the Redis fault is
	// then a failover: a master SIGKILLed, its replica promoted, the node
	// restarted as a replica. Use it with Partitions of 4 or more so the
	// runs spread over the masters.
	Cluster bool
	// BreakFencing runs the workers with fencing off (test-only): the
	// checker must then report duplicate accepts.
	BreakFencing bool
	// Timeout bounds the runs (default 2m). A run still going then is a
	// failed check (its history is checked as it stands), not an error.
	Timeout time.Duration
	// Out receives one progress line per fault; nil is quiet.
	Out io.Writer

	// Soak settings (see Soak).
	//
	// Duration of the soak's submitting phase (required by Soak).
	Duration time.Duration
	// RunTTL of the soak's projectors (default 30s): finished runs expire.
	RunTTL time.Duration
	// SampleEvery: one sample line this often (default 10s).
	SampleEvery time.Duration
	// InFlight: runs the soak keeps going at once (default 6).
	InFlight int
	// Samples receives the soak's sample lines; nil is quiet.
	Samples io.Writer
}

// Report is the outcome of a chaos run.
type Report struct {
	Seed    uint64
	Verdict Verdict
	// Runs checked.
	Runs            int
	Kills           int
	Pauses          int
	Projectors      int
	ProjectorKills  int
	ProjectorPauses int
	// ProjectorStalls counts short SIGSTOPs (5-100 ms) of projectors.
	ProjectorStalls int
	RedisRestarts   int
	// Failovers counts masters SIGKILLed and replaced by their replica
	// (Config.Cluster).
	Failovers int
	// DeletedEntries counts the queue entries deleted while a worker held
	// them (XDEL, as an operator's XTRIM might).
	DeletedEntries int
	// Takeovers counts the wide run's projections SIGSTOPped mid-way.
	Takeovers int
	// Cancelled counts the runs cancelled mid-way (0 when the cancelled
	// run had finished before its cancel) and CancelledTasks the tasks
	// their cancels ended, CancelledRunning those of them that were
	// running (their workers fenced).
	Cancelled        int
	CancelledTasks   int
	CancelledRunning int
	// Resumes and Repairs count the Client.Resume and Client.Repair calls
	// made on the main run at random moments under the faults (both are
	// safe at any time); Redispatched the tasks they dispatched again.
	Resumes, Repairs, Redispatched int
	// Requeued counts the failed runs whose task was requeued from the
	// dead-letter set and that then succeeded. DeadLettersSwept counts
	// their dead letters a failover left behind (the requeue's removal
	// lost with the master's unreplicated writes) that the projectors'
	// sweep then removed.
	Requeued         int
	DeadLettersSwept int
	// ChannelWrites counts the channel keys checked against their last
	// channel_written.
	ChannelWrites int
	// ResultTTLs counts the succeeded tasks with a result TTL whose stored
	// result was read back (Client.Result), ResultsExpired those of them
	// past their TTL (read back expired).
	ResultTTLs     int
	ResultsExpired int
	History        Touches
	// Spawned counts the tasks the runs' handlers added (dynamic tasks).
	Spawned int
	// Small counts the small runs checked, FinishEnds the runs whose
	// run_succeeded a worker's finish wrote (not a projector's commit),
	// FinishDispatches the task_dispatched a worker's finish wrote (a
	// success handing on its dependents: rdb.Handoff).
	Small, FinishEnds, FinishDispatches int
	// LogOnly counts the succeeded runs checked: each must keep only its
	// log (its end deleted its state hash, metadata and results with it).
	LogOnly int
	// Sampled counts the runs submitted sampled (the others are submitted
	// under an unsampled parent), Traced those of them whose trace held:
	// run_submitted carries their submit's trace context and every engine
	// span that names them, from the client, the projectors and the
	// workers, is of their trace (tracing.go). TraceSpans counts those
	// spans.
	Sampled, Traced int
	TraceSpans      int
	Events          int
	Elapsed         time.Duration
	Dir             string
}

// Line is the one-line summary "chaos seed=S tasks=N kills=K ...".
func (r Report) Line() string {
	return fmt.Sprintf("chaos seed=%d runs=%d small=%d finish_ends=%d finish_dispatches=%d log_only=%d tasks=%d spawned=%d kills=%d pauses=%d projectors=%d projector_kills=%d projector_pauses=%d projector_stalls=%d takeovers=%d cancelled=%d/%d/%d requeued=%d dead_letters_swept=%d resumes=%d repairs=%d redispatched=%d channel_keys=%d result_ttls=%d/%d redis_restarts=%d failovers=%d deleted_entries=%d shared_runs=%d handoffs=%d late_commits=%d traced=%d/%d trace_spans=%d lost=%d duplicate_accepts=%d rejected_stale=%d rejected_unlogged=%d events=%d elapsed=%s verified=%t",
		r.Seed, r.Runs, r.Small, r.FinishEnds, r.FinishDispatches, r.LogOnly, r.Verdict.Tasks, r.Spawned, r.Kills, r.Pauses, r.Projectors, r.ProjectorKills, r.ProjectorPauses, r.ProjectorStalls, r.Takeovers, r.Cancelled, r.CancelledTasks, r.CancelledRunning, r.Requeued, r.DeadLettersSwept, r.Resumes, r.Repairs, r.Redispatched, r.ChannelWrites, r.ResultTTLs, r.ResultsExpired, r.RedisRestarts, r.Failovers, r.DeletedEntries,
		r.History.SharedRuns, r.History.Handoffs, r.History.LateCommits, r.Traced, r.Sampled, r.TraceSpans, r.Verdict.Lost,
		r.Verdict.DuplicateAccepts, r.Verdict.RejectedStale, r.Verdict.RejectedUnlogged, r.Events, r.Elapsed.Round(100*time.Millisecond), r.Verdict.OK())
}

func (c Config) withDefaults() Config {
	if c.Tasks <= 0 {
		c.Tasks = 1000
	}
	if c.Wide == 0 {
		c.Wide = 3000
	}
	if c.Small == 0 {
		c.Small = 24
	}
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 8
	}
	if c.Projectors <= 0 {
		c.Projectors = 3
	}
	if c.Lease <= 0 {
		c.Lease = 2 * time.Second
	}
	if c.FeedReclaimIdle <= 0 {
		c.FeedReclaimIdle = 2 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Minute
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.RunTTL <= 0 {
		c.RunTTL = 30 * time.Second
	}
	if c.SampleEvery <= 0 {
		c.SampleEvery = 10 * time.Second
	}
	if c.InFlight <= 0 {
		c.InFlight = 6
	}
	if c.Samples == nil {
		c.Samples = io.Discard
	}
	return c
}

// Run performs one chaos run: the main workflow and (unless Wide < 0) a
// wide fan-out run at once, under the seed's faults. It returns an error
// only if the run could not be carried out; a failed check, a run that
// did not end included, is in the Report's Verdict.
func Run(ctx context.Context, cfg Config) (rep Report, err error) {
	cfg = cfg.withDefaults()
	s, err := newStack(ctx, cfg, false)
	if err != nil {
		return rep, err
	}
	defer s.close()
	rep.Seed, rep.Dir, rep.Projectors = cfg.Seed, s.cfg.Dir, cfg.Projectors
	s.report = &rep

	runs := []*submitted{{id: "chaos-" + strconv.FormatUint(cfg.Seed, 10)}}
	wfs := []*graflow.Workflow{s.workflow("chaos", cfg.Tasks)}
	if cfg.Wide > 0 {
		runs = append(runs, &submitted{id: "chaos-" + strconv.FormatUint(cfg.Seed, 10) + "-wide"})
		wfs = append(wfs, s.wideWorkflow())
	}
	// The cancelled run is submitted unsampled: its spans must stay
	// unexported in every process.
	var cancelRun *submitted
	var cancelAfter int // successes
	if !cfg.NoCancel {
		cancelRun = &submitted{id: "chaos-" + strconv.FormatUint(cfg.Seed, 10) + "-cancel"}
		runs = append(runs, cancelRun)
		wfs = append(wfs, s.workflow("chaos-cancel", max(cfg.Tasks/4, 40)))
		cancelAfter = 10 + s.rng.IntN(max(cfg.Tasks/8-10, 1))
	}
	for i, r := range runs {
		if err := s.submit(ctx, wfs[i], map[string]any{"seed": cfg.Seed}, r.id, r != cancelRun); err != nil {
			return rep, fmt.Errorf("submit %s: %w", r.id, err)
		}
	}
	// The requeued run is awaited by its requeue (it ends twice), not
	// with the others.
	var requeueRun *submitted
	if !cfg.NoRequeue {
		requeueRun = &submitted{id: "chaos-" + strconv.FormatUint(cfg.Seed, 10) + "-requeue"}
		if err := s.submit(ctx, requeueWorkflow(), nil, requeueRun.id, false); err != nil {
			return rep, fmt.Errorf("submit %s: %w", requeueRun.id, err)
		}
	}
	s.logf("submitted run %s (%d tasks) and a %d-wide fan-out; %d workers x %d, lease %s, %d projectors, feed reclaim %s",
		runs[0].id, cfg.Tasks, max(cfg.Wide, 0), cfg.Workers, cfg.Concurrency, cfg.Lease, cfg.Projectors, cfg.FeedReclaimIdle)

	runCtx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var faults sync.WaitGroup
	faultCtx, stopFaults := context.WithCancel(runCtx)
	faults.Add(1)
	go func() {
		defer faults.Done()
		s.inject(faultCtx, 300*time.Millisecond, 1200*time.Millisecond)
	}()
	faults.Add(1)
	go func() {
		defer faults.Done()
		s.stall(faultCtx)
	}()
	if cfg.Wide > 0 {
		faults.Add(1)
		go func() {
			defer faults.Done()
			s.takeover(faultCtx, runs[1].id)
		}()
	}
	cancelled := make(chan error, 1) // the cancel's outcome
	if cancelRun != nil {
		faults.Add(1)
		go func() {
			defer faults.Done()
			cancelled <- s.cancel(runCtx, cancelRun.id, cancelAfter)
		}()
	}
	marks := make(chan []string, 1) // the band marks' problems
	faults.Add(1)
	go func() {
		defer faults.Done()
		marks <- s.watchMarks(faultCtx)
	}()
	// The signal the main and cancelled runs' g1-1 waits for, sent at a
	// random moment while the faults go on (signalRun).
	signalled := map[*submitted]chan []string{}
	for _, r := range []*submitted{runs[0], cancelRun} {
		if r == nil {
			continue
		}
		ch := make(chan []string, 1)
		signalled[r] = ch
		delay := time.Duration(200+s.rng.IntN(2800)) * time.Millisecond
		faults.Add(1)
		go func() {
			defer faults.Done()
			ch <- s.signalRun(runCtx, r.id, delay)
		}()
	}
	repaired := make(chan []string, 1) // the repairs' problems
	faults.Add(1)
	go func() {
		defer faults.Done()
		repaired <- s.repairs(faultCtx, runs[0].id, rand.New(rand.NewPCG(cfg.Seed, 0xad41)))
	}()
	if requeueRun != nil {
		faults.Add(1)
		go func() {
			defer faults.Done()
			s.requeue(runCtx, requeueRun)
		}()
	}
	// The small runs, one every 50-300 ms while the faults go on.
	var small []*submitted
	var smallMu sync.Mutex
	var waits sync.WaitGroup
	waits.Add(1)
	go func() {
		defer waits.Done()
		// A generator of their own: the faults' schedule (s.rng, another
		// goroutine's) stays the seed's.
		rng := rand.New(rand.NewPCG(cfg.Seed, 0x5a11))
		for i := range max(cfg.Small, 0) {
			if !wait(runCtx, time.Duration(50+rng.IntN(250))*time.Millisecond) {
				return
			}
			r := &submitted{id: fmt.Sprintf("chaos-%d-small-%d", cfg.Seed, i)}
			if r.err = s.submit(runCtx, smallWorkflow(rng, i), nil, r.id, sampleRun(i)); r.err != nil {
				s.logf("submit %s: %v", r.id, r.err)
				return
			}
			smallMu.Lock()
			small = append(small, r)
			smallMu.Unlock()
			waits.Add(1)
			go func() {
				defer waits.Done()
				s.await(runCtx, r)
			}()
		}
	}()
	for _, r := range runs {
		waits.Add(1)
		go func() {
			defer waits.Done()
			s.await(runCtx, r)
		}()
	}
	waits.Wait()
	stopFaults()
	faults.Wait()
	s.settle()
	for _, r := range runs {
		if r.err != nil {
			s.logf("run %s did not end: %v", r.id, r.err)
		} else {
			s.logf("run %s %s", r.id, r.info.Status)
		}
	}
	s.logf("%d small runs submitted", len(small))
	s.logf("stopping workers and projectors")
	s.stopAll()
	runs = append(runs, small...)
	if requeueRun != nil {
		runs = append(runs, requeueRun)
	}
	rep.Small = len(small)

	for _, r := range runs {
		v, n, err := s.check(ctx, r.id, true)
		if err != nil {
			return rep, err
		}
		if r.err != nil {
			v.Problems = append([]string{fmt.Sprintf("run %s did not end within %s: %v", r.id, cfg.Timeout, r.err)}, v.Problems...)
		}
		if r == cancelRun && r.err == nil {
			v.Problems = append(v.Problems, s.checkCancelled(ctx, r.id, r.info, <-cancelled)...)
		}
		if r == runs[0] {
			v.Problems = append(v.Problems, <-repaired...)
		}
		if ch, ok := signalled[r]; ok {
			v.Problems = append(v.Problems, <-ch...)
			if r.err == nil && r != cancelRun {
				v.Problems = append(v.Problems, s.checkSignalled(ctx, r.id)...)
			}
		}
		if r == requeueRun && r.err == nil {
			v.Problems = append(v.Problems, s.checkRequeued(ctx, r)...)
		}
		rep.Runs++
		rep.Events += n
		rep.Verdict.Add(r.id, v)
	}
	if rep.Small >= 10 && rep.FinishEnds == 0 {
		// Most small runs end without a retry, in a finish: none doing so
		// means the path this schedule exercises was not taken.
		rep.Verdict.Add("(small)", Verdict{Problems: []string{fmt.Sprintf("none of %d small runs was ended by a worker's finish", rep.Small)}})
	}
	if rep.Small >= 10 && rep.FinishDispatches == 0 {
		// The small runs' chains hand their next steps on in the finish.
		rep.Verdict.Add("(small)", Verdict{Problems: []string{fmt.Sprintf("no task of %d small runs was dispatched by a worker's finish", rep.Small)}})
	}
	if p := s.collector.problems(); len(p) > 0 {
		rep.Verdict.Add("(all)", Verdict{Problems: p})
	}
	if p := <-marks; len(p) > 0 {
		rep.Verdict.Add("(queues)", Verdict{Problems: p})
	}
	rep.Elapsed = time.Since(s.start)
	if s.tmpDir && rep.Verdict.OK() && !cfg.BreakFencing {
		s.removeDir = true
	}
	return rep, nil
}

// watchMarks samples, every 20 ms until ctx ends, whether a band above 0
// of the default pool holds a message not yet delivered while the pool's
// band mark is unset (rdb.UnmarkedBands): a fetch would pass it by until
// a worker idles. It returns one problem per band and partition seen so.
func (s *stack) watchMarks(ctx context.Context) []string {
	seen := map[string]bool{}
	var out []string
	for wait(ctx, 20*time.Millisecond) {
		for part := range max(s.cfg.Partitions, 1) {
			bands, err := s.db.UnmarkedBands(ctx, part, worker.DefaultPool)
			if err != nil {
				continue // Redis restarts under the faults
			}
			for _, b := range bands {
				if k := fmt.Sprintf("%d/%d", part, b); !seen[k] {
					seen[k] = true
					out = append(out, fmt.Sprintf("band %d of partition %d held undelivered messages with the pool's band mark unset", b, part))
				}
			}
		}
	}
	return out
}

// submitted is a run chaos submitted, and how it ended.
type submitted struct {
	id   string
	info *graflow.RunInfo
	err  error
	// requeuedAt is when its requeue was first sent (the requeued run).
	requeuedAt time.Time
}

// await waits for r to end (retrying Redis errors: Redis restarts under
// the faults) and records how it ended.
func (s *stack) await(ctx context.Context, r *submitted) {
	r.err = retryRedis(ctx, func() error {
		var err error
		r.info, err = s.client.Wait(ctx, r.id)
		return err
	})
}

// settle waits for the pending SIGCONTs, then a second after the last:
// a zombie that resumes after its run ended commits what it had prepared
// before the run is checked.
func (s *stack) settle() {
	s.pauseWait.Wait()
	s.mu.Lock()
	d := time.Until(s.lastCont.Add(time.Second))
	s.mu.Unlock()
	if d > 0 {
		s.logf("waiting %s for the resumed processes' late writes", d.Round(time.Millisecond))
		wait(s.life, d)
	}
}

// check runs replay.CheckInvariants and replay verify over run's history,
// holds it to its trace (checkTrace; complete: the processes have stopped
// and flushed their spans) and adds what the history shows of the
// projectors (Touches) to the report. It returns the verdict and the
// number of events.
func (s *stack) check(ctx context.Context, run string, complete bool) (Verdict, int, error) {
	// Bounded: a Redis that is down for good is an error, not a hang.
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	evs, live, err := s.history(ctx, run)
	if err != nil {
		return Verdict{}, 0, err
	}
	// A failover may lose acknowledged writes (replication is
	// asynchronous): a claim lost so leaves its worker's outcome rejected
	// at an epoch the log never gave it. Without failovers (one Redis,
	// appendfsync always) no write is lost and that is a problem.
	s.mu.Lock()
	lossy := s.report.Failovers > 0
	s.mu.Unlock()
	v := replay.CheckInvariantsWith(evs, live, replay.InvariantOptions{LostWrites: lossy})
	// And the audit tool's own verdict on the same run (graflow replay
	// verify): the live projection, results and DAG against the log.
	rc, err := graflow.NewClient(graflow.Config{Redis: s.rc, Namespace: s.ns, NamespacePartitions: s.cfg.Partitions})
	if err != nil {
		return v, len(evs), err
	}
	var vr *replay.Report
	if err := retryRedis(ctx, func() error {
		var err error
		vr, err = rc.Verify(ctx, run)
		return err
	}); err != nil {
		return v, len(evs), fmt.Errorf("replay verify %s: %w", run, err)
	}
	for _, p := range vr.Problems {
		v.Problems = append(v.Problems, "replay verify: "+p.String())
	}
	// A succeeded run keeps only its log: the step that appended
	// run_succeeded deleted the rest (replay verify checked the log).
	if vr.Status == string(events.RunStatusSucceeded) {
		if len(live) > 0 {
			v.Problems = append(v.Problems, fmt.Sprintf("run %s succeeded but kept its state hash (%d fields)", run, len(live)))
		} else {
			s.mu.Lock()
			s.report.LogOnly++
			s.mu.Unlock()
		}
	}
	// The run's channel holds, for every key, the value of its last
	// channel_written (each write is one script: the value and its event
	// together, or neither).
	var channel map[string]json.RawMessage
	if err := retryRedis(ctx, func() error {
		var err error
		channel, err = rc.Channel(ctx, run)
		return err
	}); err != nil {
		return v, len(evs), fmt.Errorf("read the channel of %s: %w", run, err)
	}
	last := map[string]json.RawMessage{}
	for _, e := range evs {
		var b events.ChannelWrittenBody
		if e.Type == events.ChannelWritten && e.DecodeBody(&b) == nil {
			last[b.Key] = b.Value
		}
	}
	for k, want := range last {
		if got := channel[k]; !bytes.Equal(compactJSON(got), compactJSON(want)) {
			v.Problems = append(v.Problems, fmt.Sprintf("channel key %q is %s, its last channel_written says %s", k, got, want))
		}
	}
	if len(channel) != len(last) {
		v.Problems = append(v.Problems, fmt.Sprintf("channel has %d keys, the log wrote %d", len(channel), len(last)))
	}
	ttls, expired, problems := s.checkResultTTLs(ctx, rc, run, evs)
	v.Problems = append(v.Problems, problems...)
	sampled, traced, spans, problems := s.checkTrace(run, evs, complete)
	v.Problems = append(v.Problems, problems...)
	s.mu.Lock()
	if sampled {
		s.report.Sampled++
	}
	if traced {
		s.report.Traced++
	}
	s.report.TraceSpans += spans
	s.report.ChannelWrites += len(last)
	s.report.ResultTTLs += ttls
	s.report.ResultsExpired += expired
	s.mu.Unlock()
	s.mu.Lock()
	s.report.History.add(touches(evs, s.isProjector, s.projPauses))
	claimers := map[string]bool{}
	for _, e := range evs {
		if e.Type == events.TaskClaimed {
			claimers[e.Worker] = true
		}
		if e.Type == events.RunSucceeded && !s.isProjector(e.Worker) {
			s.report.FinishEnds++
		}
		if e.Type == events.TaskDispatched && claimers[e.Worker] && !s.isProjector(e.Worker) {
			s.report.FinishDispatches++
		}
	}
	for _, e := range evs {
		var b events.TasksAddedBody
		if e.Type == events.TasksAdded && e.DecodeBody(&b) == nil {
			s.report.Spawned += len(b.Tasks)
		}
	}
	s.mu.Unlock()
	return v, len(evs), nil
}

// checkResultTTLs reads back the stored result of every succeeded task
// of run with a result TTL: past the TTL (by the fold of evs) it must read
// expired, before it the value of the task's task_succeeded. It returns
// how many it read, how many of them were expired, and the problems.
func (s *stack) checkResultTTLs(ctx context.Context, rc *graflow.Client, run string, evs []events.Event) (n, expired int, problems []string) {
	a, err := replay.Analyze(run, evs)
	if err != nil {
		return 0, 0, []string{"result TTL check: " + err.Error()}
	}
	for _, t := range a.Run.Tasks {
		if t.Status != events.TaskStatusSucceeded || t.ResultExpiresMS == 0 {
			continue
		}
		var got json.RawMessage
		var gone bool
		before := time.Now()
		err := retryRedis(ctx, func() error {
			var err error
			got, err = rc.Result(ctx, run, t.Spec.ID)
			if gone = errors.Is(err, graflow.ErrResultExpired); gone {
				return nil
			}
			return err
		})
		after := time.Now()
		n++
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("task %s: read its result: %v", t.Spec.ID, err))
		case gone && t.ResultExpired(after):
			expired++
		case gone:
			problems = append(problems, fmt.Sprintf("task %s: result read as expired before its TTL", t.Spec.ID))
		case t.ResultExpired(before):
			problems = append(problems, fmt.Sprintf("task %s: result past its TTL read as %s, want ErrResultExpired", t.Spec.ID, got))
		case !bytes.Equal(compactJSON(got), compactJSON(t.Result)):
			problems = append(problems, fmt.Sprintf("task %s: result within its TTL read as %s, want %s", t.Spec.ID, got, t.Result))
		}
	}
	return n, expired, problems
}

// cancel cancels run once n of its tasks succeeded (following its log,
// retrying while Redis restarts). It returns nil once the run is
// cancelled, or the error (graflow.ErrRunFinished when the run ended
// first).
func (s *stack) cancel(ctx context.Context, run string, n int) error {
	from, seen := "", 0
	errEnough := errors.New("enough")
	err := retryRedis(ctx, func() error {
		err := s.client.Follow(ctx, run, graflow.FollowOptions{From: from, UntilEnd: true}, func(e events.Event) error {
			from = e.Seq
			if e.Type == events.TaskSucceeded {
				seen++
			}
			if seen >= n {
				return errEnough
			}
			return nil
		})
		if errors.Is(err, errEnough) || err == nil {
			return nil // n successes, or the run ended first (the cancel says so)
		}
		return err
	})
	if err != nil {
		return err
	}
	err = retryRedis(ctx, func() error {
		err := s.client.Cancel(ctx, run, "chaos")
		if errors.Is(err, graflow.ErrRunFinished) {
			return retry.Permanent(err)
		}
		return err
	})
	s.logf("cancel %s after %d successes: %v", run, seen, err)
	return err
}

// repairs runs the operator's two repairs, Client.Resume then
// Client.Repair, on run at three random moments (1-5 s apart) while the
// faults go on, retrying Redis errors; both are documented safe at any
// time, and the run's check holds them to it. It returns the calls'
// errors as problems; a run that ended first is no error.
func (s *stack) repairs(ctx context.Context, run string, rng *rand.Rand) (problems []string) {
	for range 3 {
		if !wait(ctx, time.Duration(1000+rng.IntN(4000))*time.Millisecond) {
			return problems
		}
		var res *replay.ResumeResult
		err := retryRedis(ctx, func() (err error) { res, err = s.client.Resume(ctx, run); return err })
		if err != nil {
			if ctx.Err() == nil {
				problems = append(problems, fmt.Sprintf("resume %s: %v", run, err))
			}
			return problems
		}
		s.mu.Lock()
		s.report.Resumes++
		s.report.Redispatched += len(res.Reclaimed) + len(res.Redispatched)
		s.mu.Unlock()
		var rep graflow.RepairReport
		err = retryRedis(ctx, func() (err error) { rep, err = s.client.Repair(ctx, run); return err })
		if err != nil {
			if ctx.Err() == nil {
				problems = append(problems, fmt.Sprintf("repair %s: %v", run, err))
			}
			return problems
		}
		s.mu.Lock()
		s.report.Repairs++
		s.report.Redispatched += len(rep.Redispatched)
		s.mu.Unlock()
		s.logf("resume %s: %d reclaimed, %d redispatched, %d queued; repair: %d redispatched", run,
			len(res.Reclaimed), len(res.Redispatched), res.Queued, len(rep.Redispatched))
	}
	return problems
}

// chaosSignal is the signal a task of each chaos DAG waits for.
const chaosSignal = "chaos-go"

// signalRun sends run the signal chaosSignal (payload 1) after delay, and
// once more with the same ID, as a sender retrying after a lost reply
// would: both must succeed, the second writing nothing. It retries Redis
// errors; a run that ended first (the cancelled one) is no error. It
// returns the problems.
func (s *stack) signalRun(ctx context.Context, run string, delay time.Duration) (problems []string) {
	if !wait(ctx, delay) {
		return []string{fmt.Sprintf("signal %s: the run's time was up before the signal was sent", run)}
	}
	opts := graflow.SignalOptions{ID: "chaos-" + run, By: "chaos"}
	for try := range 2 {
		err := retryRedis(ctx, func() error { return s.client.SignalWith(ctx, run, chaosSignal, 1, opts) })
		switch {
		case err == nil:
		case errors.Is(err, graflow.ErrRunFinished):
			return nil
		default:
			return []string{fmt.Sprintf("signal %s (send %d): %v", run, try+1, err)}
		}
	}
	s.logf("signal %s: %s sent (and sent again with its ID)", run, chaosSignal)
	return nil
}

// checkSignalled checks that run, which succeeded, took the signal once
// and that its waiting task returned the payload.
func (s *stack) checkSignalled(ctx context.Context, run string) (problems []string) {
	evs, err := s.client.Log(ctx, run)
	if err != nil {
		return []string{fmt.Sprintf("signal check of %s: %v", run, err)}
	}
	n := 0
	for _, e := range evs {
		if e.Type == events.SignalReceived {
			n++
		}
	}
	if n != 1 {
		problems = append(problems, fmt.Sprintf("run %s: %d signal_received events, want 1 (the second send carried the same ID)", run, n))
	}
	info, err := s.client.Status(ctx, run)
	if err != nil {
		return append(problems, fmt.Sprintf("signal check of %s: %v", run, err))
	}
	switch t := info.Task("g1-1"); {
	case t == nil:
		problems = append(problems, fmt.Sprintf("run %s: no task g1-1 waiting for %s", run, chaosSignal))
	case string(t.Result) != "1":
		problems = append(problems, fmt.Sprintf("run %s: the task waiting for %s has result %s, want its payload 1", run, chaosSignal, t.Result))
	}
	return problems
}

// requeueWorkflow is the requeued run: a chain a, b, c whose b fails its
// only attempt (no retries), so the run fails with c skipped; its requeue
// gives b a second attempt, which succeeds.
func requeueWorkflow() *graflow.Workflow {
	wf := graflow.NewWorkflow("chaos-requeue")
	a := wf.Task("a", builtin.Sleep).Args(map[string]any{"ms": 20, "value": 1})
	b := wf.Task(requeuedTask, builtin.Flaky).Args(map[string]any{"fail": 1, "value": 1}).After(a)
	wf.Task("c", builtin.Sum).After(b)
	return wf
}

// requeuedTask is the requeued run's task that fails for good.
const requeuedTask = "b"

// requeue waits for r to fail, requeues its failed task (retrying while
// Redis restarts: a requeue whose reply was lost finds the task requeued
// already, which its log shows) and waits for r to end again, recording
// how it ended in r.
func (s *stack) requeue(ctx context.Context, r *submitted) {
	s.await(ctx, r)
	if r.err != nil {
		return
	}
	if r.info.Status != string(projector.RunFailed) {
		r.err = fmt.Errorf("run %s ended %s before its requeue, want failed", r.id, r.info.Status)
		return
	}
	r.requeuedAt = time.Now()
	err := retryRedis(ctx, func() error {
		err := s.client.Requeue(ctx, r.id, requeuedTask)
		if !errors.Is(err, graflow.ErrNotRequeueable) {
			return err
		}
		evs, _, herr := s.history(ctx, r.id)
		if herr != nil {
			return herr
		}
		for _, e := range evs {
			if e.Type == events.TaskRequeued && e.Task == requeuedTask {
				return nil // an earlier try's, whose reply was lost
			}
		}
		return retry.Permanent(err)
	})
	s.logf("requeue %s/%s: %v", r.id, requeuedTask, err)
	if err != nil {
		r.err = fmt.Errorf("requeue %s/%s: %w", r.id, requeuedTask, err)
		return
	}
	s.await(ctx, r)
}

// checkRequeued checks the requeued run's second end: succeeded, its
// failed task requeued once, the task skipped behind it run, and no dead
// letter left for it.
func (s *stack) checkRequeued(ctx context.Context, r *submitted) []string {
	if !r.info.Succeeded() {
		return []string{fmt.Sprintf("run %s ended %s after its requeue, want succeeded", r.id, r.info.Status)}
	}
	evs, _, err := s.history(ctx, r.id)
	if err != nil {
		return []string{fmt.Sprintf("read run %s: %v", r.id, err)}
	}
	var problems []string
	requeues, cRan := 0, false
	for _, e := range evs {
		switch {
		case e.Type == events.TaskRequeued && e.Task == requeuedTask:
			requeues++ // (c's, the projector's unskip, is not counted)
		case e.Type == events.TaskSucceeded && e.Task == "c":
			cRan = true
		}
	}
	if requeues != 1 || !cRan {
		problems = append(problems, fmt.Sprintf("run %s: %d task_requeued of %s (want 1), c succeeded %t", r.id, requeues, requeuedTask, cRan))
	}
	left := func() ([]string, error) {
		var dls []graflow.DeadLetter
		if err := retryRedis(ctx, func() (err error) { dls, err = s.client.DeadLetters(ctx, 0); return err }); err != nil {
			return nil, err
		}
		var tasks []string
		for _, d := range dls {
			if d.Run == r.id {
				tasks = append(tasks, d.Task)
			}
		}
		return tasks, nil
	}
	tasks, err := left()
	if err != nil {
		return append(problems, fmt.Sprintf("read the dead letters: %v", err))
	}
	// Only a master killed after the requeue can have lost its removal
	// of the dead letter (replication is asynchronous; docs/
	// operations.md): the projectors' sweep must then remove it, as
	// stale (its run succeeded), within a few passes. Otherwise a dead
	// letter left is a problem at once.
	s.mu.Lock()
	lossy := s.lastMasterKill.After(r.requeuedAt) && !r.requeuedAt.IsZero()
	s.mu.Unlock()
	if len(tasks) > 0 && lossy {
		deadline := time.Now().Add(10 * s.cfg.FeedReclaimIdle)
		for len(tasks) > 0 && time.Now().Before(deadline) && wait(ctx, s.cfg.FeedReclaimIdle/3) {
			if tasks, err = left(); err != nil {
				return append(problems, fmt.Sprintf("read the dead letters: %v", err))
			}
		}
		if len(tasks) == 0 {
			s.mu.Lock()
			s.report.DeadLettersSwept++
			s.mu.Unlock()
		}
	}
	for _, task := range tasks {
		problems = append(problems, fmt.Sprintf("run %s succeeded after its requeue, but the dead letter of %s is left", r.id, task))
	}
	if len(problems) == 0 {
		s.report.Requeued++
	}
	return problems
}

// checkCancelled checks the cancelled run's end: cancelled, unless it had
// finished before the cancel; it counts the tasks the cancel ended.
func (s *stack) checkCancelled(ctx context.Context, run string, info *graflow.RunInfo, cancelErr error) []string {
	switch {
	case errors.Is(cancelErr, graflow.ErrRunFinished):
		s.logf("run %s finished (%s) before its cancel", run, info.Status)
		return nil
	case cancelErr != nil:
		return []string{fmt.Sprintf("cancel of run %s failed: %v", run, cancelErr)}
	case !info.Cancelled():
		return []string{fmt.Sprintf("run %s was cancelled but ended %s", run, info.Status)}
	}
	evs, _, err := s.history(ctx, run)
	if err != nil {
		return []string{fmt.Sprintf("read run %s: %v", run, err)}
	}
	s.report.Cancelled++
	for _, e := range evs {
		var b events.TaskCancelledBody
		if e.Type == events.TaskCancelled && e.DecodeBody(&b) == nil {
			s.report.CancelledTasks++
			if b.From == events.TaskStatusRunning {
				s.report.CancelledRunning++
			}
		}
	}
	return nil
}

// workflow builds the chaos DAG of n static tasks: a root, four parallel
// groups of sleep tasks (some flaky, with retries), a sum per group, a
// dynamic fan-out (a task that sleeps, then spawns 50 to 200 sleep tasks,
// some flaky, and the sum after it, which waits for them all) and a final
// sum. Group 0's members also write to the run's channel (one in five
// increments "count", one in fifty appends to "seen"); in group 1 one
// member waits on the channel key "ready" that a member of group 2 sets,
// and another for the signal chaosSignal, which the harness sends;
// group 3 is best effort: one of its members fails for good and its sum
// runs anyway (the run still succeeds); a few members of group 2 start
// 100-500 ms after they are ready (start_after: the delayed set); a few
// members of group 1 keep their results an hour (result TTL), and a leaf
// after the root keeps its result 50 ms.
func (s *stack) workflow(name string, tasks int) *graflow.Workflow {
	wf := graflow.NewWorkflow(name)
	root := wf.Task("root", builtin.Noop)
	const static = 9 // root, the four group sums, spawn, its sum, total, ttl-leaf
	per := (tasks - static) / 4
	var sums []*graflow.Task
	// A leaf whose result expires 50 ms after it succeeded, during the
	// run (nobody reads it): the projectors' movers delete it under the
	// faults, and the check reads it back expired.
	wf.Task("ttl-leaf", builtin.Echo).Args(map[string]any{"value": 1}).ResultTTL(50 * time.Millisecond).After(root)
	spawn := wf.Task("spawn", builtin.Spawn).After(root).Retries(2).Args(builtin.SpawnArgs{
		N: 50 + s.rng.IntN(151), MS: int64(100 + s.rng.IntN(400)), Handler: builtin.Sleep,
		Args: json.RawMessage(`{"ms":40,"value":1}`), FlakyEvery: 40, Value: json.RawMessage(`0`)})
	sums = append(sums, wf.Task("spawn-sum", builtin.Sum).After(spawn))
	for g := range 4 {
		n := per
		if g == 3 {
			n = tasks - static - 3*per
		}
		members := make([]*graflow.Task, 0, n)
		for i := range n {
			id := fmt.Sprintf("g%d-%d", g, i)
			var t *graflow.Task
			switch {
			case i%50 == 7:
				t = wf.Task(id, builtin.Flaky).Args(map[string]any{"fail": 1, "value": 1}).Retries(2)
			case g == 0 && i%5 == 1:
				t = wf.Task(id, builtin.ChannelIncr).Args(map[string]any{"key": "count"})
			case g == 0 && i%50 == 3:
				t = wf.Task(id, builtin.ChannelAppend).Args(map[string]any{"key": "seen", "value": id})
			case g == 1 && i == 0:
				t = wf.Task(id, builtin.ChannelWait).Args(map[string]any{"key": "ready"})
			case g == 1 && i == 1: // the harness sends it (signalRun)
				t = wf.Task(id, builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: chaosSignal})
			case g == 2 && i == n-1:
				t = wf.Task(id, builtin.ChannelSet).Args(map[string]any{"key": "ready", "value": 1})
			case g == 3 && i == 0:
				t = wf.Task(id, builtin.Fail).Args(map[string]any{"permanent": true, "message": "best effort"})
			case g == 1 && i%40 == 9: // kept an hour: sum-1 reads it as usual
				t = wf.Task(id, builtin.Sleep).Args(map[string]any{"ms": 20, "value": 1}).ResultTTL(time.Hour)
			case g == 2 && i%40 == 5:
				t = wf.Task(id, builtin.Sleep).Args(map[string]any{"ms": 20, "value": 1}).StartAfter(time.Duration(100+s.rng.IntN(400)) * time.Millisecond)
			default:
				t = wf.Task(id, builtin.Sleep).Args(map[string]any{"ms": 20 + s.rng.IntN(130), "value": 1})
			}
			if i%9 == 4 {
				// Bands above 0: their messages go through every writer
				// (dispatch, retry, release, repair, resume) marked.
				t = t.Priority(1 + (i/9)%9)
			}
			members = append(members, t.After(root))
		}
		group := wf.Parallel(members...)
		if g == 3 {
			group.BestEffort()
		}
		sums = append(sums, group.Then(wf.Task(fmt.Sprintf("sum-%d", g), builtin.Sum)))
	}
	wf.Task("total", builtin.Sum).After(sums...)
	return wf
}

// smallWorkflow builds the i-th small run: a single task, a 2- or 3-step
// chain, or a pair and its join; one in three has a flaky task (it fails
// once, then succeeds on its retry).
func smallWorkflow(rng *rand.Rand, i int) *graflow.Workflow {
	wf := graflow.NewWorkflow("chaos-small")
	task := func(id string, flaky bool) *graflow.Task {
		if flaky {
			return wf.Task(id, builtin.Flaky).Args(map[string]any{"fail": 1, "value": 1}).Retries(2)
		}
		return wf.Task(id, builtin.Sleep).Args(map[string]any{"ms": 5 + rng.IntN(60), "value": 1})
	}
	flaky := i%3 == 2
	switch i % 4 {
	case 0:
		task("one", flaky)
	case 1:
		task("b", flaky).After(task("a", false))
	case 2:
		task("c", false).After(task("b", flaky).After(task("a", false)))
	default:
		wf.Parallel(task("a", false), task("b", flaky)).Then(wf.Task("join", builtin.Sum))
	}
	return wf
}

// wideWorkflow builds the long fan-out: a root that sleeps while the main
// run gets going, then Wide tasks after it, some flaky: half of them one
// flat fan-out (dispatching it takes a projector Wide/2/BatchSize
// commits: the takeover fault stops that projector mid-way), then stages
// of 300-wide fan-outs, each after the join of the one before. Every
// stage starts on a quiet run with more decisions than one commit holds:
// the projector's first commit is caught up, and the claims of its first
// dispatches point another projector at the run while the first commits
// the rest: two projectors on one run, at every stage. A sum ends it.
func (s *stack) wideWorkflow() *graflow.Workflow {
	wf := graflow.NewWorkflow("chaos-wide")
	root := wf.Task(wideRoot, builtin.Sleep).Args(map[string]any{"ms": 500 + s.rng.IntN(1000)})
	n := 0
	task := func(id string) *graflow.Task {
		n++
		if n%100 == 42 {
			return wf.Task(id, builtin.Flaky).Args(map[string]any{"fail": 1, "value": 1}).Retries(2)
		}
		return wf.Task(id, builtin.Sleep).Args(map[string]any{"ms": 10 + n%41, "value": 1})
	}
	stage := func(name string, width int, after *graflow.Task) *graflow.Task {
		members := make([]*graflow.Task, width)
		for i := range members {
			members[i] = task(fmt.Sprintf("%s-%d", name, i)).After(after)
		}
		return wf.Parallel(members...).Then(wf.Task(name+"-join", builtin.Sum))
	}
	flat := s.cfg.Wide / 2
	join := stage("w", flat, root)
	for k := 0; k*wideStage < s.cfg.Wide-flat; k++ {
		join = stage(fmt.Sprintf("s%d", k), min(wideStage, s.cfg.Wide-flat-k*wideStage), join)
	}
	return wf
}

// wideStage is the width of the wide run's later stages: more than one
// commit's decisions (256 by default).
const wideStage = 300

// wideRoot is the wide run's first task: its success starts the fan-out.
const wideRoot = "wroot"

// takeover SIGSTOPs the projector that dispatches the wide run's fan-out
// as soon as its first dispatch is in the log (so mid-way through its
// commits) for longer than the feed reclaim: another projector takes the
// run over, and the stopped one resumes with its cached fold and commits
// late, a zombie projector.
func (s *stack) takeover(ctx context.Context, run string) {
	last := "0"
	rootDone := false
	dispatched := 0
	for ctx.Err() == nil {
		res, err := s.db.FollowLog(ctx, run, last, 1000, time.Second)
		if err != nil {
			if ctx.Err() == nil {
				wait(ctx, 50*time.Millisecond)
			}
			continue
		}
		for _, e := range res {
			last = e.Seq
			switch {
			case e.Type == events.TaskSucceeded && e.Task == wideRoot:
				rootDone = true
			case rootDone && e.Type == events.TaskDispatched:
				dispatched++
				if s.isProjector(e.Writer) && dispatched == 1 {
					if s.pauseProjectorID(e.Writer, fmt.Sprintf("mid-way through the %d-wide fan-out's dispatch of run %s", s.cfg.Wide, run)) {
						s.mu.Lock()
						s.report.Takeovers++
						s.mu.Unlock()
					}
					return
				}
			}
		}
	}
}

// history reads the run's events and live state hash.
func (s *stack) history(ctx context.Context, run string) ([]events.Event, map[string]string, error) {
	var evs []events.Event
	var live map[string]string
	err := retryRedis(ctx, func() error {
		var err error
		if evs, err = s.db.ReadLog(ctx, run, "-", "+", 10000, 0); err != nil {
			return err
		}
		live, err = s.db.RunState(ctx, run)
		return err
	})
	return evs, live, err
}

// retryRedis retries op while Redis is restarting (the engine's one rule
// for transient errors, internal/retry).
func retryRedis(ctx context.Context, op func() error) error {
	return retry.Do(ctx, retry.Policy{Initial: 50 * time.Millisecond, Max: time.Second}, op)
}

// compactJSON is raw without insignificant space (raw itself if it is not
// JSON).
func compactJSON(raw json.RawMessage) []byte {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return raw
	}
	return b.Bytes()
}

// wait sleeps d or until ctx ends; it reports whether d passed.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
