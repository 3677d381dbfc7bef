package graflow_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker/builtin"
)

// TestHandoffScriptAgreesWithTheFold proves that the finish script's
// handoffs (a worker's success dispatches, in the same step, the
// dependents it made ready: rdb.Handoff) agree with the fold
// (projector.Apply and projector.Decide), over random DAGs with retries,
// tolerant groups, delayed starts, priorities and failures, long chains,
// and fan-outs and fan-ins around projector.MaxHandoffFanout, all run by
// one in-process engine:
//
//   - sound: every task_dispatched a worker wrote follows that worker's
//     task_succeeded of one of the task's dependencies (in the same
//     step: only that worker's successes and dispatches between them),
//     in a run that spawned nothing, at a point where
//     Decide on the fold of the log before it calls for exactly that
//     dispatch (attempt and body), and the fold applies it;
//   - complete within its domain: after a worker's success of a task
//     whose dependents are all handoffs (projector.Handoffs of the
//     submitted run), and that step's dispatches, the fold calls for no
//     dispatch of any of those dependents (the projector dispatches the
//     others);
//   - every run ends as its plan says and its history is sound
//     (replay.Analyze finds no problem);
//   - both the script and the projector dispatched dependents, so the
//     test cannot pass vacuously.
func TestHandoffScriptAgreesWithTheFold(t *testing.T) {
	t.Parallel()
	b := setup(t, 2)
	workers, projectorID := engineWriters()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()

	rng := rand.New(rand.NewPCG(0x4a2d0ff, 14))
	var plans []endPlan
	for i := range 50 {
		if i%2 == 0 {
			plans = append(plans, randomEndPlan(rng, fmt.Sprintf("handoff-%d", i), 2+rng.IntN(11)))
		} else {
			plans = append(plans, randomHandoffPlan(rng, fmt.Sprintf("handoff-%d", i), 2+rng.IntN(11)))
		}
	}
	for _, n := range []int{rdb.EndMaxTasks, rdb.EndMaxTasks + 1} {
		plans = append(plans, chainPlan(fmt.Sprintf("handoff-chain-%d", n), n))
	}
	// Fan-outs around projector.MaxHandoffFanout: a root with that many
	// dependents hands them on, one with more leaves them to the
	// projector; each fan-in (a reduce over all of them) is counted down.
	for _, n := range []int{projector.MaxHandoffFanout, projector.MaxHandoffFanout + 1, 3 * projector.MaxHandoffFanout} {
		plans = append(plans, fanPlan(fmt.Sprintf("handoff-fan-%d", n), n))
	}
	var byScript, byProjector int
	runs := runPlans(ctx, t, b, plans, nil, func(run string, evs []events.Event) {
		s, p := checkHandoffs(t, run, evs, workers, projectorID)
		byScript += s
		byProjector += p
	})
	t.Logf("%d runs in %v: dependents dispatched by the finish script %d, by the projector %d",
		len(runs), time.Since(start).Round(time.Millisecond), byScript, byProjector)
	if byScript == 0 || byProjector == 0 {
		t.Errorf("both must dispatch dependents (script %d, projector %d): neither may be 0", byScript, byProjector)
	}
}

// randomHandoffPlan builds a random DAG of n tasks, each depending on a
// few earlier ones: noops, flaky tasks that succeed within their retries,
// tasks with a delayed start, on another priority band, or with a
// best-effort join, and at times a task that fails for good (which may be
// a dependency: its dependents are skipped and the run fails).
func randomHandoffPlan(rng *rand.Rand, name string, n int) endPlan {
	wf := graflow.NewWorkflow(name)
	p := endPlan{name: name, wf: wf, tasks: n, want: "succeeded"}
	var pool []*graflow.Task
	for i := range n {
		var d []*graflow.Task
		for _, c := range pool {
			if len(d) < 3 && rng.IntN(10) < 4 {
				d = append(d, c)
			}
		}
		id := fmt.Sprintf("t%d", i)
		var tk *graflow.Task
		switch k := rng.IntN(20); {
		case k == 0:
			tk = failingEndTask(rng, wf, id, true)
			p.want = "failed"
		case k < 4:
			tk = wf.Task(id, builtin.Flaky).Args(map[string]any{"fail": 1, "value": i}).Retries(1)
		case k == 4:
			tk = wf.Task(id, builtin.Noop).StartAfter(20 * time.Millisecond)
		case k == 5:
			tk = wf.Task(id, builtin.Noop).Priority(1 + rng.IntN(5))
		case k == 6 && len(d) > 0:
			tk = wf.Task(id, builtin.Noop).Join(events.Join{Policy: events.JoinBestEffort})
		default:
			tk = wf.Task(id, builtin.Noop)
		}
		pool = append(pool, tk.After(d...))
	}
	return p
}

// fanPlan is a root, n noop tasks after it, and a reduce after them all.
func fanPlan(name string, n int) endPlan {
	wf := graflow.NewWorkflow(name)
	root := wf.Task("root", builtin.Noop)
	mids := make([]*graflow.Task, n)
	for i := range mids {
		mids[i] = wf.Task(fmt.Sprintf("m%d", i), builtin.Noop).After(root)
	}
	wf.Task("reduce", builtin.Noop).After(mids...)
	return endPlan{name: name, wf: wf, tasks: n + 2, want: "succeeded"}
}

// chainPlan is a chain of n noop tasks.
func chainPlan(name string, n int) endPlan {
	wf := graflow.NewWorkflow(name)
	var prev *graflow.Task
	for i := range n {
		tk := wf.Task(fmt.Sprintf("s%d", i), builtin.Noop)
		if prev != nil {
			tk.After(prev)
		}
		prev = tk
	}
	return endPlan{name: name, wf: wf, tasks: n, want: "succeeded"}
}

// checkHandoffs replays run's log with the fold and checks each dispatch
// a worker wrote, and each success the script had to hand on, against it
// (see TestHandoffScriptAgreesWithTheFold). It returns how many
// dependents (tasks with dependencies, first attempts) the workers and the
// projector dispatched.
func checkHandoffs(t *testing.T, run string, evs []events.Event, workers map[string]bool, projectorID string) (byScript, byProjector int) {
	t.Helper()
	r := projector.NewRun(run)
	var handoffs map[string][]projector.Handoff
	added := false
	for i, e := range evs {
		byWorker := e.Type == events.TaskDispatched && workers[e.Worker]
		switch {
		case e.Type == events.TasksAdded:
			added = true
		case byWorker:
			byScript++
			checkWorkerDispatch(t, run, r, evs, i, added)
		case e.Type == events.TaskDispatched && e.Worker == projectorID && e.Attempt == 1 && r.Task(e.Task) != nil && len(r.Task(e.Task).Spec.Deps) > 0:
			byProjector++
		}
		if err := projector.Apply(r, e); err != nil {
			t.Fatalf("%s: fold: %v", run, err)
		}
		if byWorker && r.Task(e.Task).Status != projector.TaskDispatched {
			t.Errorf("%s: the fold did not apply task_dispatched of %s (seq %s) by worker %s: the task is %s", run, e.Task, e.Seq, e.Worker, r.Task(e.Task).Status)
		}
		if e.Type == events.RunSubmitted {
			handoffs = projector.Handoffs(r, rdb.HandoffMaxTasks)
		}
		if e.Type != events.TaskSucceeded || !workers[e.Worker] || added || r.Status != projector.RunRunning || len(handoffs[e.Task]) == 0 {
			continue
		}
		// Complete: each dependent of e.Task that the fold calls to
		// dispatch right after the success is dispatched in the same step
		// (the worker's finish events that follow it).
		f := projector.NewRun(run)
		for _, x := range evs[:i+1] {
			if err := projector.Apply(f, x); err != nil {
				t.Fatalf("%s: fold: %v", run, err)
			}
		}
		for _, d := range projector.Decide(f, 0, nil) {
			if d.Type != events.TaskDispatched || !slices.ContainsFunc(handoffs[e.Task], func(h projector.Handoff) bool { return h.Task == d.Task }) {
				continue
			}
			found := false
			for j := i + 1; j < len(evs) && evs[j].Worker == e.Worker && inStep(evs[j].Type) && !found; j++ {
				found = evs[j].Type == events.TaskDispatched && evs[j].Task == d.Task
			}
			if !found {
				var log []string
				for _, x := range evs {
					log = append(log, fmt.Sprintf("%s %s %s a%d by %s", x.Seq, x.Type, x.Task, x.Attempt, x.Worker))
				}
				t.Errorf("%s: task_succeeded of %s (seq %s) by %s made %s ready, but its step did not dispatch it; log:\n%s", run, e.Task, e.Seq, e.Worker, d.Task, strings.Join(log, "\n"))
			}
		}
	}
	return byScript, byProjector
}

// inStep reports whether a worker writes events of type typ in a finish
// call (its outcomes and their handoffs), as opposed to its other calls.
func inStep(typ events.Type) bool {
	switch typ {
	case events.TaskSucceeded, events.TaskFailed, events.TaskTimedOut, events.TasksAdded, events.ResultRejected, events.TaskDispatched:
		return true
	}
	return false
}

// checkWorkerDispatch checks the task_dispatched evs[i], written by a
// worker, against the fold r of the events before it.
func checkWorkerDispatch(t *testing.T, run string, r *projector.Run, evs []events.Event, i int, added bool) {
	t.Helper()
	e := evs[i]
	if added || len(r.Tasks) > rdb.HandoffMaxTasks {
		t.Errorf("%s: task_dispatched of %s (seq %s) by worker %s in a run of %d tasks (spawned: %v): the script hands on only in runs of at most %d that spawned nothing",
			run, e.Task, e.Seq, e.Worker, len(r.Tasks), added, rdb.HandoffMaxTasks)
	}
	called := false
	for _, d := range projector.Decide(r, 0, nil) {
		if d.Type == events.TaskDispatched && d.Task == e.Task && d.Attempt == e.Attempt && string(d.Body) == string(e.Body) {
			called = true
		}
	}
	if !called {
		t.Errorf("%s: task_dispatched of %s attempt %d body %s (seq %s) by worker %s, which the fold does not call for", run, e.Task, e.Attempt, e.Body, e.Seq, e.Worker)
	}
	// The same step: back over this worker's dispatches to its success of
	// a dependency.
	tk := r.Task(e.Task)
	for k := i - 1; k >= 0; k-- {
		p := evs[k]
		if p.Worker != e.Worker || !inStep(p.Type) {
			break
		}
		if p.Type == events.TaskSucceeded && tk != nil && slices.Contains(tk.Spec.Deps, p.Task) {
			return
		}
	}
	var before []string
	for k := max(0, i-4); k < i; k++ {
		before = append(before, fmt.Sprintf("%s %s %s by %s", evs[k].Seq, evs[k].Type, evs[k].Task, evs[k].Worker))
	}
	t.Errorf("%s: task_dispatched of %s (seq %s) by worker %s does not follow that worker's success of one of its dependencies (before it: %v)", run, e.Task, e.Seq, e.Worker, before)
}
