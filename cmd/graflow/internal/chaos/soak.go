//go:build unix

package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
)

// Sample is one soak measurement of the namespace.
type Sample struct {
	At    time.Duration // since the soak started
	Phase string        // "base" (before the first run), "load", "drain" (no more submits) or "end"
	// UsedMemory is Redis' used_memory (the whole server: the soak's own
	// Redis holds only its namespace).
	UsedMemory int64
	// Keys in the namespace (DBSIZE on the soak's own Redis).
	Keys int64
	// Consumers in the feed partitions' group and the default pool's queue
	// bands' group.
	FeedConsumers, QueueConsumers int64
	// RunIndex is the run index's size (ZCARD).
	RunIndex int64
	// InFlight, Done and Failed count the soak's runs.
	InFlight, Done, Failed int
}

// Consumers is the total consumer count.
func (s Sample) Consumers() int64 { return s.FeedConsumers + s.QueueConsumers }

// Line is the sample's one line.
func (s Sample) Line() string {
	return fmt.Sprintf("soak t=%5.0fs phase=%-5s used_memory=%d (%s) keys=%d consumers=%d (feed %d, queue %d) run_index=%d in_flight=%d done=%d failed=%d",
		s.At.Seconds(), s.Phase, s.UsedMemory, mib(s.UsedMemory), s.Keys, s.Consumers(), s.FeedConsumers, s.QueueConsumers, s.RunIndex, s.InFlight, s.Done, s.Failed)
}

func mib(b int64) string { return fmt.Sprintf("%.2fMiB", float64(b)/(1<<20)) }

// Trend compares one measure's mean over the first and the last third of
// the load samples taken after the warm-up (when expiring runs balance
// new ones), and its value at the end, after every run expired.
type Trend struct {
	Name              string
	Base, First, Last float64
	End               float64
	// Judged is false when the soak was too short to judge (fewer than six
	// samples after the warm-up).
	Judged bool
	// Flat: Last ≤ First×1.25 + Slack and End ≤ First×1.25 + Slack.
	Flat  bool
	Slack float64
}

// String prints the trend: "keys base=.. first=.. last=.. end=.. flat=..".
func (t Trend) String() string {
	flat := "n/a"
	if t.Judged {
		flat = strconv.FormatBool(t.Flat)
	}
	return fmt.Sprintf("%s base=%.0f first_third=%.0f last_third=%.0f end=%.0f flat=%s", t.Name, t.Base, t.First, t.Last, t.End, flat)
}

// SoakReport is the outcome of a soak.
type SoakReport struct {
	Report
	Duration time.Duration
	Warmup   time.Duration
	// Submitted runs; Checked: every run that ended was checked (Check and
	// replay verify) right after it ended, before its TTL; Failed: runs
	// whose check failed (their problems are in Verdict, the first few).
	Submitted, Checked, Failed int
	// Cancelled counts the runs cancelled mid-way (every seventh run is
	// cancelled after its first success, unless it ends first).
	Cancelled int
	Samples   []Sample
	Trends    []Trend
}

// OK reports whether every run passed its check and, when judged, every
// measure stayed flat.
func (r SoakReport) OK() bool {
	if r.Failed > 0 || r.Checked < r.Submitted {
		return false
	}
	for _, t := range r.Trends {
		if t.Judged && !t.Flat {
			return false
		}
	}
	return true
}

// Line is the soak's summary line.
func (r SoakReport) Line() string {
	return fmt.Sprintf("soak seed=%d duration=%s runs=%d checked=%d failed=%d cancelled=%d tasks=%d kills=%d pauses=%d projectors=%d projector_kills=%d projector_pauses=%d projector_stalls=%d redis_restarts=%d deleted_entries=%d shared_runs=%d handoffs=%d late_commits=%d traced=%d/%d trace_spans=%d lost=%d duplicate_accepts=%d elapsed=%s ok=%t",
		r.Seed, r.Duration, r.Submitted, r.Checked, r.Failed, r.Cancelled, r.Verdict.Tasks, r.Kills, r.Pauses, r.Projectors, r.ProjectorKills, r.ProjectorPauses, r.ProjectorStalls, r.RedisRestarts, r.DeletedEntries,
		r.History.SharedRuns, r.History.Handoffs, r.History.LateCommits, r.Traced, r.Sampled, r.TraceSpans, r.Verdict.Lost, r.Verdict.DuplicateAccepts, r.Elapsed.Round(time.Second), r.OK())
}

// maxProblems bounds the problems a soak keeps.
const maxProblems = 20

// Soak submits mixed workflows (chains, fan-outs with fan-ins, layered
// DAGs, flaky tasks with retries) for cfg.Duration, keeping cfg.InFlight
// runs going, under the same faults as Run (at a gentler rate), with the
// projectors' --run-ttl set to cfg.RunTTL. Every run is checked (Check and
// replay verify) as soon as it ends, before it expires. A sample line goes
// to cfg.Samples every cfg.SampleEvery; after the last run ended the soak
// samples on until every run has expired (RunTTL + 2 samples), then
// judges whether memory, keys and consumers stayed flat (see Trend). It
// returns an error only if the soak could not be carried out.
func Soak(ctx context.Context, cfg Config) (rep SoakReport, err error) {
	if cfg.Duration <= 0 {
		return rep, errors.New("chaos: Soak needs Config.Duration")
	}
	cfg = cfg.withDefaults()
	s, err := newStack(ctx, cfg, true)
	if err != nil {
		return rep, err
	}
	defer s.close()
	s.report = &rep.Report
	rep.Seed, rep.Dir, rep.Projectors, rep.Duration = cfg.Seed, s.cfg.Dir, cfg.Projectors, cfg.Duration
	rep.Warmup = cfg.RunTTL + 2*cfg.SampleEvery
	shapes := rand.New(rand.NewPCG(cfg.Seed+1, cfg.Seed^0x5851f42d4c957f2d))

	var cmu sync.Mutex // guards the counters and rep's verdict
	inFlight, done, failed := 0, 0, 0
	sample := func(phase string) {
		cmu.Lock()
		sm := Sample{At: time.Since(s.start), Phase: phase, InFlight: inFlight, Done: done, Failed: failed}
		cmu.Unlock()
		if err := s.measure(ctx, &sm); err != nil {
			fmt.Fprintf(cfg.Samples, "soak t=%5.0fs sample skipped: %v\n", sm.At.Seconds(), err)
			return
		}
		fmt.Fprintln(cfg.Samples, sm.Line())
		rep.Samples = append(rep.Samples, sm)
	}
	sample("base")

	var faults sync.WaitGroup
	faultCtx, stopFaults := context.WithCancel(ctx)
	defer stopFaults()
	faults.Add(2)
	go func() {
		defer faults.Done()
		s.inject(faultCtx, time.Second, 3*time.Second)
	}()
	go func() {
		defer faults.Done()
		s.stall(faultCtx)
	}()
	phase := "load"
	var pmu sync.Mutex
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(cfg.SampleEvery)
		defer t.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				pmu.Lock()
				p := phase
				pmu.Unlock()
				sample(p)
			}
		}
	}()

	deadline := time.Now().Add(cfg.Duration)
	sem := make(chan struct{}, cfg.InFlight)
	var runs sync.WaitGroup
	for n := 0; time.Now().Before(deadline) && ctx.Err() == nil; n++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		if !time.Now().Before(deadline) {
			<-sem
			break
		}
		id := fmt.Sprintf("soak-%d-%d", cfg.Seed, n)
		wf := soakWorkflow(shapes, n)
		cmu.Lock()
		inFlight++
		rep.Submitted++
		cmu.Unlock()
		runs.Add(1)
		go func() {
			defer runs.Done()
			defer func() { <-sem }()
			v, cancelled := s.soakRun(ctx, id, wf, n%7 == 3, sampleRun(n))
			cmu.Lock()
			defer cmu.Unlock()
			if cancelled {
				rep.Cancelled++
			}
			inFlight--
			done++
			rep.Checked++
			if !v.OK() {
				failed++
				rep.Failed++
			}
			problems := v.Problems
			v.Problems = nil
			rep.Verdict.Add(id, v)
			for _, p := range problems {
				if len(rep.Verdict.Problems) < maxProblems {
					rep.Verdict.Problems = append(rep.Verdict.Problems, "run "+id+": "+p)
				}
			}
			rep.Runs++
		}()
	}
	runs.Wait()
	if p := s.collector.problems(); len(p) > 0 { // spans it could not read: the trace checks may have missed some
		rep.Failed++
		rep.Verdict.Problems = append(rep.Verdict.Problems, p...)
	}
	s.logf("submitting stopped after %s; every run ended; stopping faults", cfg.Duration)
	stopFaults()
	faults.Wait()
	s.settle()
	pmu.Lock()
	phase = "drain"
	pmu.Unlock()
	// Every finished run expires within RunTTL of its end; two more
	// samples make sure the last ones are gone.
	wait(ctx, cfg.RunTTL+2*cfg.SampleEvery)
	close(stopSampling)
	<-sampled
	sample("end")
	rep.Elapsed = time.Since(s.start)
	rep.Trends = judge(rep.Samples, rep.Warmup)
	if s.tmpDir && rep.OK() {
		s.removeDir = true
	}
	return rep, ctx.Err()
}

// soakRun submits wf as run id (sampled or not), waits for it
// (cfg.Timeout) and checks it. With cancel, it cancels the run after its
// first success and reports whether the cancel landed (the run may end
// first).
func (s *stack) soakRun(ctx context.Context, id string, wf *graflow.Workflow, cancel, sampled bool) (Verdict, bool) {
	if err := s.submit(ctx, wf, nil, id, sampled); err != nil {
		return Verdict{Problems: []string{fmt.Sprintf("submit: %v", err)}}, false
	}
	cancelled := false
	if cancel {
		switch err := s.cancel(ctx, id, 1); {
		case err == nil:
			cancelled = true
		case !errors.Is(err, graflow.ErrRunFinished):
			return Verdict{Problems: []string{fmt.Sprintf("cancel: %v", err)}}, false
		}
	}
	wctx, stop := context.WithTimeout(ctx, s.cfg.Timeout)
	defer stop()
	var waitErr error
	if err := retryRedis(wctx, func() error {
		_, err := s.client.Wait(wctx, id)
		return err
	}); err != nil {
		waitErr = fmt.Errorf("did not end within %s: %w", s.cfg.Timeout, err)
	}
	// The processes still run: spans of the run may be in their batches.
	v, _, err := s.check(ctx, id, false)
	if err != nil {
		v.Problems = append(v.Problems, fmt.Sprintf("check: %v", err))
	}
	if waitErr != nil {
		v.Problems = append([]string{waitErr.Error()}, v.Problems...)
	}
	return v, cancelled
}

// soakWorkflow builds the n-th soak workflow from rng: a chain, a fan-out
// with its fan-in, a layered DAG, or a dynamic run (a spawned fan-out of
// 5-204 tasks and a loop, and a leaf whose result expires within 500 ms);
// a few tasks are flaky (they fail once and retry).
func soakWorkflow(rng *rand.Rand, n int) *graflow.Workflow {
	wf := graflow.NewWorkflow("soak")
	task := func(id string) *graflow.Task {
		if rng.IntN(20) == 0 {
			return wf.Task(id, builtin.Flaky).Args(map[string]any{"fail": 1, "value": 1}).Retries(2)
		}
		return wf.Task(id, builtin.Sleep).Args(map[string]any{"ms": 1 + rng.IntN(40), "value": 1})
	}
	switch n % 4 {
	case 3: // dynamic: a fan-out decided at run time, a loop, and a result TTL
		root := task("root")
		wf.Task("ttl", builtin.Echo).Args(map[string]any{"value": 1}).After(root).ResultTTL(time.Duration(1+rng.IntN(500)) * time.Millisecond)
		spawn := wf.Task("spawn", builtin.Spawn).After(root).Retries(2).Args(builtin.SpawnArgs{
			N: 5 + rng.IntN(200), Handler: builtin.Sleep, Args: json.RawMessage(`{"ms":5,"value":1}`), FlakyEvery: 30, Value: json.RawMessage(`0`)})
		loop := wf.Task("loop", builtin.Loop).After(root).Args(builtin.LoopArgs{Times: 1 + rng.IntN(5), Value: json.RawMessage(`1`)})
		wf.Task("sum", builtin.Sum).After(spawn, loop)
	case 0: // chain
		prev := task("c0")
		for i := 1; i < 3+rng.IntN(18); i++ {
			prev = task("c" + strconv.Itoa(i)).After(prev)
		}
	case 1: // fan-out, fan-in
		root := task("root")
		width := 10 + rng.IntN(590) // some above the projector's 256-decision commits
		members := make([]*graflow.Task, width)
		for i := range members {
			members[i] = task("f" + strconv.Itoa(i)).After(root)
		}
		wf.Parallel(members...).Then(wf.Task("sum", builtin.Sum))
	default: // layers, each task after a few of the layer before
		var prev []*graflow.Task
		for l := range 2 + rng.IntN(3) {
			layer := make([]*graflow.Task, 3+rng.IntN(28))
			for i := range layer {
				t := task(fmt.Sprintf("l%d-%d", l, i))
				if len(prev) > 0 {
					for _, j := range rng.Perm(len(prev))[:min(len(prev), 1+rng.IntN(3))] {
						t.After(prev[j])
					}
				}
				layer[i] = t
			}
			prev = layer
		}
		wf.Parallel(prev...).Then(wf.Task("sum", builtin.Sum))
	}
	return wf
}

// measure fills sm's Redis measures.
func (s *stack) measure(ctx context.Context, sm *Sample) error {
	mctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var err error
	if sm.UsedMemory, err = s.db.MemoryUsed(mctx); err != nil {
		return err
	}
	if s.srv != nil {
		// Our own redis-server: the namespace is the whole database.
		if sm.Keys, err = s.db.DatabaseKeys(mctx); err != nil {
			return err
		}
	} else if sm.Keys, err = s.db.NamespaceKeys(mctx); err != nil {
		return err
	}
	if sm.FeedConsumers, err = s.db.FeedConsumers(mctx); err != nil {
		return err
	}
	if sm.QueueConsumers, err = s.db.QueueConsumers(mctx, worker.DefaultPool); err != nil {
		return err
	}
	sm.RunIndex, err = s.db.IndexedRuns(mctx)
	return err
}

// judge computes the trends of used memory, keys and consumers.
func judge(samples []Sample, warmup time.Duration) []Trend {
	var base, end *Sample
	var load []Sample
	for i := range samples {
		switch sm := &samples[i]; {
		case sm.Phase == "base":
			base = sm
		case sm.Phase == "end":
			end = sm
		case sm.Phase == "load" && sm.At >= warmup:
			load = append(load, *sm)
		}
	}
	measures := []struct {
		name  string
		slack float64
		get   func(Sample) float64
	}{
		{"used_memory", 1 << 20, func(s Sample) float64 { return float64(s.UsedMemory) }},
		{"keys", 20, func(s Sample) float64 { return float64(s.Keys) }},
		{"consumers", 2, func(s Sample) float64 { return float64(s.Consumers()) }},
	}
	var out []Trend
	for _, m := range measures {
		t := Trend{Name: m.name, Slack: m.slack}
		if base != nil {
			t.Base = m.get(*base)
		}
		if end != nil {
			t.End = m.get(*end)
		}
		if len(load) >= 6 && end != nil {
			third := len(load) / 3
			t.First, t.Last = mean(load[:third], m.get), mean(load[len(load)-third:], m.get)
			bound := t.First*1.25 + t.Slack
			t.Judged, t.Flat = true, t.Last <= bound && t.End <= bound
		} else if len(load) > 0 {
			t.First, t.Last = m.get(load[0]), m.get(load[len(load)-1])
		}
		out = append(out, t)
	}
	return out
}

func mean(ss []Sample, get func(Sample) float64) float64 {
	var sum float64
	for _, s := range ss {
		sum += get(s)
	}
	return sum / float64(len(ss))
}
