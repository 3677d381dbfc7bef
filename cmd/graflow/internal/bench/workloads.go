//go:build unix

package bench

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
)

func msOf(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 3) }

func perSec(n int, d time.Duration) float64 {
	if d <= 0 {
		d = time.Millisecond // below the Redis clock's resolution
	}
	return round(float64(n)/d.Seconds(), 1)
}

// throughput submits spec once per run id (Submitters at a time) to an
// engine of `workers` worker processes and measures first submit → last
// run_succeeded on the Redis clock. Each run holds spec's tasks and the
// spawned ones its handlers add.
func (h *harness) throughput(ctx context.Context, name string, run, workers int, spec events.RunSubmittedBody, spawned int, runs []string) (_ Result, err error) {
	s, err := h.startStack(ctx, h.namespace(name, run), stackOptions{workers: workers})
	if err != nil {
		return Result{}, err
	}
	defer func() { err = errors.Join(err, s.done(ctx)) }()
	a, err := s.take(ctx)
	if err != nil {
		return Result{}, err
	}
	start, err := s.serverTime(ctx)
	if err != nil {
		return Result{}, err
	}
	last, err := s.submitAll(ctx, spec, runs)
	if err != nil {
		return Result{}, err
	}
	end, err := s.settle(ctx, runs, last)
	if err != nil {
		return Result{}, fmt.Errorf("%w%s", err, s.exited())
	}
	b, err := s.take(ctx)
	if err != nil {
		return Result{}, err
	}
	evs, err := s.countEvents(ctx, runs)
	if err != nil {
		return Result{}, err
	}
	tasks := len(runs) * (len(spec.Tasks) + spawned)
	wall := end.Sub(start)
	r := Result{Workload: name, Run: run, Tasks: tasks, WorkflowRuns: len(runs), Events: int(evs),
		WorkerProcesses: workers, Concurrency: h.cfg.Concurrency,
		WallMS: msOf(wall), TasksPerSec: perSec(tasks, wall), RunsPerSec: perSec(len(runs), wall),
		EventsPerTask: perTask(float64(evs), tasks)}
	s.cost(&r, a, b, tasks)
	return r, nil
}

// independent: single-task runs (noop), all submitted up front.
func (h *harness) independent(ctx context.Context, run int) ([]Result, error) {
	wf := graflow.NewWorkflow("bench-independent")
	wf.Task("t", builtin.Noop)
	spec, err := wf.Spec(nil)
	if err != nil {
		return nil, err
	}
	r, err := h.throughput(ctx, Independent, run, 1, spec, 0, runIDs("i", h.cfg.Sizes.IndependentRuns))
	if err != nil {
		return nil, err
	}
	r.RunsPerSec = 0 // one task per run: the same figure
	return []Result{r}, nil
}

// fanout: one run of FanoutTasks parallel noop tasks feeding one sum task.
func (h *harness) fanout(ctx context.Context, run int, name string, workers int) ([]Result, error) {
	wf := graflow.NewWorkflow("bench-fanout")
	wf.FanOut(nil, "m", builtin.Noop, h.cfg.Sizes.FanoutTasks, nil).Then(wf.Task("reduce", builtin.Sum))
	spec, err := wf.Spec(nil)
	if err != nil {
		return nil, err
	}
	r, err := h.throughput(ctx, name, run, workers, spec, 0, []string{"fanout"})
	if err != nil {
		return nil, err
	}
	r.RunsPerSec = 0
	return []Result{r}, nil
}

// dynamic: one run whose first task spawns DynamicTasks noop tasks at run
// time (builtin "spawn"), feeding one sum task after it: the fan-out
// workload with its width decided by a handler.
func (h *harness) dynamic(ctx context.Context, run int) ([]Result, error) {
	wf := graflow.NewWorkflow("bench-dynamic")
	s := wf.Task("spawn", builtin.Spawn).Args(builtin.SpawnArgs{N: h.cfg.Sizes.DynamicTasks, Prefix: "m-"})
	wf.Task("reduce", builtin.Sum).After(s)
	spec, err := wf.Spec(nil)
	if err != nil {
		return nil, err
	}
	r, err := h.throughput(ctx, Dynamic, run, 1, spec, h.cfg.Sizes.DynamicTasks, []string{"dynamic"})
	if err != nil {
		return nil, err
	}
	r.RunsPerSec = 0
	return []Result{r}, nil
}

// chain: runs of a 3-step sequence (noop); tasks/s is steps/s.
func (h *harness) chain(ctx context.Context, run int) ([]Result, error) {
	wf := graflow.NewWorkflow("bench-chain")
	wf.Sequence(wf.Task("a", builtin.Noop), wf.Task("b", builtin.Noop), wf.Task("c", builtin.Noop))
	spec, err := wf.Spec(nil)
	if err != nil {
		return nil, err
	}
	r, err := h.throughput(ctx, Chain, run, 1, spec, 0, runIDs("c", h.cfg.Sizes.ChainRuns))
	if err != nil {
		return nil, err
	}
	return []Result{r}, nil
}

// latencyHandler is the handler name of the latency workload: a noop that
// records when it started.
const latencyHandler = "bench.mark"

// latency: single-task runs one at a time on an idle engine; the worker
// runs in this process so its handler can record its start time.
func (h *harness) latency(ctx context.Context, run int) (_ []Result, err error) {
	var mu sync.Mutex
	starts := map[string]time.Time{}
	mark := func(w *worker.Worker) {
		w.HandleFunc(latencyHandler, func(_ context.Context, t *worker.Task) (any, error) {
			now := time.Now()
			mu.Lock()
			if _, ok := starts[t.Run]; !ok {
				starts[t.Run] = now
			}
			mu.Unlock()
			return nil, nil
		})
	}
	s, err := h.startStack(ctx, h.namespace(Latency, run), stackOptions{workers: 1, inProcessWorker: mark})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, s.done(ctx)) }()
	wf := graflow.NewWorkflow("bench-latency")
	wf.Task("t", latencyHandler)
	spec, err := wf.Spec(nil)
	if err != nil {
		return nil, err
	}
	n := h.cfg.Sizes.LatencyRuns
	runs := runIDs("l", n)
	startLat := make([]float64, 0, n)
	doneLat := make([]float64, 0, n)
	a, err := s.take(ctx)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	for _, id := range runs {
		sub := time.Now()
		if _, err := s.client.SubmitSpec(ctx, spec, graflow.WithRunID(id)); err != nil {
			return nil, fmt.Errorf("submit %s: %w", id, err)
		}
		info, err := s.client.Wait(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("wait for %s: %w%s", id, err, s.exited())
		}
		done := time.Now()
		if !info.Succeeded() {
			return nil, fmt.Errorf("%w: run %s is %s", errRunFailed, id, info.Status)
		}
		mu.Lock()
		st, ok := starts[id]
		mu.Unlock()
		if !ok {
			return nil, fmt.Errorf("run %s succeeded but its handler did not record a start", id)
		}
		startLat = append(startLat, msOf(st.Sub(sub)))
		doneLat = append(doneLat, msOf(done.Sub(sub)))
	}
	wall := time.Since(t0)
	b, err := s.take(ctx)
	if err != nil {
		return nil, err
	}
	evs, err := s.countEvents(ctx, runs)
	if err != nil {
		return nil, err
	}
	sort.Float64s(startLat)
	sort.Float64s(doneLat)
	r := Result{Workload: Latency, Run: run, Tasks: n, WorkflowRuns: n, Events: int(evs), WorkerProcesses: 1,
		Concurrency: h.cfg.Concurrency, WallMS: msOf(wall),
		P50MS: percentile(startLat, 50), P90MS: percentile(startLat, 90), P99MS: percentile(startLat, 99),
		MaxMS:     startLat[len(startLat)-1],
		WaitP50MS: percentile(doneLat, 50), WaitP90MS: percentile(doneLat, 90), WaitP99MS: percentile(doneLat, 99),
		EventsPerTask: perTask(float64(evs), n)}
	s.cost(&r, a, b, n)
	return []Result{r}, nil
}

// replay folds a synthetic history with projector.Apply (no I/O), then
// decodes and folds it from stream fields as a replay from Redis would.
func (h *harness) replay(run int) ([]Result, error) {
	evs := SyntheticHistory(h.cfg.Sizes.ReplayEvents)
	fields := make([]map[string]any, len(evs))
	for i, e := range evs {
		f := e.Fields()
		m := make(map[string]any, len(f)/2)
		for j := 0; j+1 < len(f); j += 2 {
			m[f[j].(string)] = f[j+1]
		}
		fields[i] = m
	}
	tasks := (len(evs) - 2) / 4
	runtime.GC()
	c0, t0 := selfCPU(), time.Now()
	r := projector.NewRun(replayRun)
	for _, e := range evs {
		if err := projector.Apply(r, e); err != nil {
			return nil, fmt.Errorf("fold: %w", err)
		}
	}
	wall, cpu := time.Since(t0), selfCPU()-c0
	if r.Status != projector.RunSucceeded || r.Events != len(evs) {
		return nil, fmt.Errorf("fold of the synthetic history: status %s after %d of %d events, want succeeded", r.Status, r.Events, len(evs))
	}
	runtime.GC()
	t1 := time.Now()
	r2 := projector.NewRun(replayRun)
	for i, m := range fields {
		e, err := events.Decode(replayRun, evs[i].Seq, m)
		if err != nil {
			return nil, fmt.Errorf("decode: %w", err)
		}
		if err := projector.Apply(r2, e); err != nil {
			return nil, fmt.Errorf("fold: %w", err)
		}
	}
	wall2 := time.Since(t1)
	res := Result{Workload: Replay, Run: run, Tasks: tasks, WorkflowRuns: 1, Events: len(evs),
		WallMS: msOf(wall), EventsPerSec: perSec(len(evs), wall), DecodeEventsPerSec: perSec(len(evs), wall2),
		EventsPerTask: perTask(float64(len(evs)), tasks), Worker: "in-process",
		BenchCPUMSPerTask: perTask(float64(cpu)/float64(time.Millisecond), tasks)}
	return []Result{res}, nil
}

const replayRun = "bench-replay"

// SyntheticHistory builds a succeeded run's history of about n events in
// memory, as the engine writes it: run_submitted with n/4 independent noop
// tasks; per task task_dispatched (in commits of 256, as the projector
// batches them), task_claimed, task_heartbeat and task_succeeded; then
// run_succeeded. Seq and Time are set as if read back from the log.
func SyntheticHistory(n int) []events.Event {
	tasks := max(1, n/4)
	specs := make([]events.TaskSpec, tasks)
	for i := range specs {
		specs[i] = events.TaskSpec{ID: "t" + strconv.Itoa(i), Handler: builtin.Noop}
	}
	base := time.UnixMilli(1_700_000_000_000).UTC()
	out := make([]events.Event, 0, 4*tasks+2)
	add := func(e events.Event) {
		k := len(out)
		e.Run, e.Version = replayRun, events.CurrentVersion
		e.ID = fmt.Sprintf("01JBENCH%018d", k)
		e.Seq = "1700000000000-" + strconv.Itoa(k)
		e.Time = base.Add(time.Duration(k) * time.Microsecond)
		out = append(out, e)
	}
	add(events.Event{Type: events.RunSubmitted}.WithBody(events.RunSubmittedBody{Workflow: "bench-replay", Tasks: specs}))
	dispatched := events.Event{}.WithBody(events.TaskDispatchedBody{Pool: worker.DefaultPool}).Body
	beat := events.Event{}.WithBody(events.TaskHeartbeatBody{Progress: "half"}).Body
	result := events.Event{}.WithBody(events.TaskSucceededBody{Result: []byte("null")}).Body
	for lo := 0; lo < tasks; lo += 256 {
		hi := min(lo+256, tasks)
		for i := lo; i < hi; i++ {
			add(events.Event{Type: events.TaskDispatched, Task: specs[i].ID, Attempt: 1, Worker: "bench-projector", Body: dispatched})
		}
		for i := lo; i < hi; i++ {
			id := specs[i].ID
			add(events.Event{Type: events.TaskClaimed, Task: id, Attempt: 1, Epoch: 1, Worker: "bench-w0"})
			add(events.Event{Type: events.TaskHeartbeat, Task: id, Attempt: 1, Epoch: 1, Worker: "bench-w0", Body: beat})
			add(events.Event{Type: events.TaskSucceeded, Task: id, Attempt: 1, Epoch: 1, Worker: "bench-w0", Body: result})
		}
	}
	add(events.Event{Type: events.RunSucceeded, Worker: "bench-projector"})
	return out
}
