package graflow_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
)

// TestEndDecisionScriptAgreesWithTheFold proves that the finish script's
// end decision (a worker's success that leaves every task of a run of at
// most rdb.EndMaxTasks tasks succeeded appends run_succeeded itself) agrees
// with the fold (projector.Apply and projector.Decide), over random DAGs
// with retries, absorbed and unabsorbed failures, and runs just above and
// at the bound, all run by one in-process engine:
//
//   - sound: every run_succeeded a worker wrote directly follows that
//     worker's task_succeeded, in a run within the bound, at a point where
//     Decide on the fold of the log before it calls for exactly that
//     event, and the fold applies it;
//   - complete within its domain: after every task_succeeded that leaves
//     a running run within the bound (no tasks added) with every task
//     succeeded, the next event is that worker's run_succeeded (the
//     projector ends the others: absorbed failures, larger runs, failures);
//   - every run ends as its plan says and its history is sound
//     (replay.Analyze finds no problem);
//   - both deciders ended runs, so the test cannot pass vacuously.
func TestEndDecisionScriptAgreesWithTheFold(t *testing.T) {
	t.Parallel()
	b := setup(t, 2)
	workers, projectorID := engineWriters()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()

	warmRun := endPolicyRecorded(ctx, t, b)

	rng := rand.New(rand.NewPCG(0x1ae3b65, 32))
	plans := []endPlan{{name: "end-warmup", tasks: 2, want: "succeeded"}}
	for i := range 60 {
		plans = append(plans, randomEndPlan(rng, fmt.Sprintf("end-%d", i), 1+rng.IntN(12)))
	}
	for _, n := range []int{rdb.EndMaxTasks, rdb.EndMaxTasks + 1, rdb.EndMaxTasks + 2 + rng.IntN(7)} {
		plans = append(plans, wideEndPlan(rng, fmt.Sprintf("end-wide-%d", n), n))
	}
	var tally endTally
	runs := runPlans(ctx, t, b, plans, []string{warmRun}, func(run string, evs []events.Event) {
		checkEndDecisions(t, run, evs, workers, projectorID, &tally)
	})

	t.Logf("%d runs (%d retries) in %v: ended by the script %d; by the projector %d (succeeded with absorbed failures %d, succeeded above the bound %d, failed %d)",
		len(runs), tally.retries, time.Since(start).Round(time.Millisecond), tally.script, tally.absorbed+tally.large+tally.failed, tally.absorbed, tally.large, tally.failed)
	if tally.script == 0 || tally.absorbed == 0 || tally.large == 0 || tally.failed == 0 {
		t.Errorf("the runs must cover every way to end (script %d, absorbed %d, large %d, failed %d): none may be 0",
			tally.script, tally.absorbed, tally.large, tally.failed)
	}
}

// TestEndDecisionLeavesAQuarantinedRunAlone proves that the finish script
// ends only a running run: the last task of a one-task run (the script's
// domain) succeeds after the projector quarantined the run, and the run
// stays quarantined, with no run_succeeded in its log.
func TestEndDecisionLeavesAQuarantinedRunAlone(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock()
	startWorkerWith(t, b, "wgate", func(w *worker.Worker) {
		w.HandleFunc("gate", func(ctx context.Context, _ *worker.Task) (any, error) {
			select {
			case <-release:
				return "done", nil
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		})
	}, "gate")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	endPolicyRecorded(ctx, t, b)

	wf := graflow.NewWorkflow("end-quarantined")
	wf.Task("a", "gate").Pool("gate")
	run, err := b.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitForEvent(t, b.client, run, func(e events.Event) bool { return e.Type == events.TaskClaimed })
	// An entry the fold rejects (a task the run does not have): the
	// projector quarantines the run, and leaves a's record running.
	k := rdb.NewKeys(b.ns)
	bad := events.Event{ID: events.NewID(time.Now()), Type: events.TaskHeartbeat, Task: "no-such-task", Attempt: 1, Epoch: 1, Worker: "test", Time: time.Now()}
	if err := b.rdb.XAdd(ctx, &redis.XAddArgs{Stream: k.RunLog(run), Values: bad.Fields()}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.rdb.XAdd(ctx, &redis.XAddArgs{Stream: k.FeedFor(run), Values: []any{rdb.MsgRun, run}}).Err(); err != nil {
		t.Fatal(err)
	}
	if info, err := b.client.Wait(ctx, run); err != nil || !info.Quarantined() {
		t.Fatalf("wait for the quarantine: %+v, %v", info, err)
	}
	unblock()
	done := waitForEvent(t, b.client, run, func(e events.Event) bool { return e.Type == events.TaskSucceeded || e.Type == events.TaskFailed })
	if done.Type != events.TaskSucceeded || done.Worker != "wgate" {
		t.Fatalf("a ended with %s by %s, want task_succeeded by wgate", done.Type, done.Worker)
	}
	for _, e := range logEvents(t, b, run) {
		if e.Type == events.RunSucceeded {
			t.Errorf("run_succeeded (seq %s) by %s after the run was quarantined", e.Seq, e.Worker)
		}
	}
	if info, err := b.client.Status(ctx, run); err != nil || !info.Quarantined() {
		t.Errorf("status after a's success: %+v, %v; want quarantined", info, err)
	}
}

// runPlans submits plans (but the first, already submitted as runs
// first), waits for each run, checks it ends as planned, calls check with
// its log, and checks its history with replay.Analyze. It returns the runs.
func runPlans(ctx context.Context, t *testing.T, b bundle, plans []endPlan, first []string, check func(run string, evs []events.Event)) []string {
	t.Helper()
	runs := slices.Clone(first)
	for _, p := range plans[len(first):] {
		run, err := b.client.Submit(ctx, p.wf, nil)
		if err != nil {
			t.Fatalf("submit %s: %v", p.name, err)
		}
		runs = append(runs, run)
	}
	for k, run := range runs {
		p := plans[k]
		info, err := b.client.Wait(ctx, run)
		if err != nil {
			t.Fatalf("wait for %s (%s): %v", run, p.name, err)
		}
		if info.Status != p.want {
			t.Errorf("%s (%s, %d tasks): status %s, want %s", run, p.name, p.tasks, info.Status, p.want)
		}
		evs := logEvents(t, b, run)
		check(run, evs)
		a, err := replay.Analyze(run, evs)
		if err != nil {
			t.Fatalf("analyze %s (%s): %v", run, p.name, err)
		}
		for _, pr := range a.Problems {
			t.Errorf("%s (%s): %s", run, p.name, pr)
		}
		if string(a.Run.Status) != p.want {
			t.Errorf("%s (%s): replayed status %s, want %s", run, p.name, a.Run.Status, p.want)
		}
	}
	return runs
}

// engineWriters returns the writer ids of setup's engine: its workers'
// ids, and its projector's (projector.Config.ID's default).
func engineWriters() (workers map[string]bool, projectorID string) {
	host, _ := os.Hostname()
	return map[string]bool{"wa": true, "wb": true}, "projector-" + host + "-" + strconv.Itoa(os.Getpid())
}

// endPolicyRecorded waits until the projector has recorded the end policy,
// without which the finish script ends no run: it records it before it
// consumes its feed, so a run whose second task it dispatched proves it
// has. It returns that run, ended.
func endPolicyRecorded(ctx context.Context, t *testing.T, b bundle) string {
	t.Helper()
	wf := graflow.NewWorkflow("end-warmup")
	wf.Task("b", builtin.Noop).After(wf.Task("a", builtin.Noop))
	run, _ := b.submitAndWait(ctx, t, wf)
	return run
}

// endPlan is a workflow and how its run must end.
type endPlan struct {
	name  string
	wf    *graflow.Workflow
	tasks int
	want  string // the run's final status
}

// endTally counts runs by what ended them: the finish script, or the
// projector (a success with absorbed failures, a success above
// rdb.EndMaxTasks, a failure).
type endTally struct{ script, absorbed, large, failed, retries int }

// randomEndPlan builds a random DAG of n tasks, each depending on a few
// earlier ones: noops, flaky tasks that succeed within their retries, at
// times a tolerant group (BestEffort or AtLeast) with failing members and
// a join, and at times a task that fails for good. Failing tasks are no
// task's dependency except a group's join, so the run fails exactly when
// a task fails for good outside a group or an AtLeast join is out of
// reach.
func randomEndPlan(rng *rand.Rand, name string, n int) endPlan {
	wf := graflow.NewWorkflow(name)
	p := endPlan{name: name, wf: wf, tasks: n, want: "succeeded"}
	var pool []*graflow.Task // tasks that may be depended on
	deps := func() []*graflow.Task {
		var d []*graflow.Task
		for _, c := range pool {
			if len(d) < 3 && rng.IntN(10) < 3 {
				d = append(d, c)
			}
		}
		return d
	}
	group, bare := rng.IntN(3) == 0, rng.IntN(8) == 0
	for i := 0; i < n; {
		if group && n-i >= 3 && rng.IntN(2) == 0 {
			group = false
			m := 2 + rng.IntN(min(3, n-i-1)-1) // 2..3 members, then the join
			failing := 1 + rng.IntN(m-1)
			members := make([]*graflow.Task, m)
			for k := range members {
				members[k] = failingEndTask(rng, wf, fmt.Sprintf("g%d", k), k < failing).After(deps()...)
			}
			g := wf.Parallel(members...)
			if rng.IntN(2) == 0 {
				g.BestEffort()
			} else {
				need := 1 + rng.IntN(m)
				g.AtLeast(need)
				if need > m-failing {
					p.want = "failed"
				}
			}
			pool = append(pool, g.Then(wf.Task("join", builtin.Noop)))
			i += m + 1
			continue
		}
		id := fmt.Sprintf("t%d", i)
		i++
		if bare && rng.IntN(3) == 0 {
			bare = false
			failingEndTask(rng, wf, id, true).After(deps()...)
			p.want = "failed"
			continue // no task depends on it
		}
		var tk *graflow.Task
		if rng.IntN(5) == 0 {
			tk = wf.Task(id, builtin.Flaky).Args(map[string]any{"fail": 1 + rng.IntN(2), "value": i}).Retries(2)
		} else {
			tk = wf.Task(id, builtin.Noop)
		}
		pool = append(pool, tk.After(deps()...))
	}
	return p
}

// failingEndTask adds task id: a noop, or if fail a task that fails for
// good, at once (permanently) or after its one retry.
func failingEndTask(rng *rand.Rand, wf *graflow.Workflow, id string, fail bool) *graflow.Task {
	switch {
	case !fail:
		return wf.Task(id, builtin.Noop)
	case rng.IntN(2) == 0:
		return wf.Task(id, builtin.Fail).Args(map[string]any{"permanent": true})
	}
	return wf.Task(id, builtin.Fail).Retries(1)
}

// wideEndPlan builds n noop tasks, each after one random earlier task or a
// root: a run at or above rdb.EndMaxTasks that succeeds.
func wideEndPlan(rng *rand.Rand, name string, n int) endPlan {
	wf := graflow.NewWorkflow(name)
	var tasks []*graflow.Task
	for i := range n {
		tk := wf.Task(fmt.Sprintf("t%d", i), builtin.Noop)
		if i > 0 && rng.IntN(2) == 0 {
			tk.After(tasks[rng.IntN(i)])
		}
		tasks = append(tasks, tk)
	}
	return endPlan{name: name, wf: wf, tasks: n, want: "succeeded"}
}

// checkEndDecisions replays run's log with the fold and checks each end
// decision of the finish script against it (see
// TestEndDecisionScriptAgreesWithTheFold), and counts what ended the run.
func checkEndDecisions(t *testing.T, run string, evs []events.Event, workers map[string]bool, projectorID string, tally *endTally) {
	t.Helper()
	r := projector.NewRun(run)
	added := false
	for i, e := range evs {
		byWorker := e.Type == events.RunSucceeded && workers[e.Worker]
		switch {
		case e.Type == events.TasksAdded:
			added = true
		case e.Type == events.TaskRetryScheduled:
			tally.retries++
		case byWorker:
			if d := projector.Decide(r, 0, nil); len(d) != 1 || d[0].Type != events.RunSucceeded {
				t.Errorf("%s: run_succeeded (seq %s) by worker %s where the fold decides %v", run, e.Seq, e.Worker, endTypes(d))
			}
			if len(r.Tasks) > rdb.EndMaxTasks {
				t.Errorf("%s: run_succeeded (seq %s) by worker %s in a run of %d tasks: the script ends runs of at most %d", run, e.Seq, e.Worker, len(r.Tasks), rdb.EndMaxTasks)
			}
			if i == 0 || evs[i-1].Type != events.TaskSucceeded || evs[i-1].Worker != e.Worker {
				t.Errorf("%s: run_succeeded (seq %s) by worker %s does not follow that worker's task_succeeded", run, e.Seq, e.Worker)
			}
		case e.Type == events.RunSucceeded && e.Worker != projectorID:
			t.Errorf("%s: run_succeeded (seq %s) written by %q, neither a worker nor the projector %s", run, e.Seq, e.Worker, projectorID)
		}
		before := r.Status
		if err := projector.Apply(r, e); err != nil {
			t.Fatalf("%s: fold: %v", run, err)
		}
		if byWorker && r.Status != projector.RunSucceeded {
			t.Errorf("%s: the fold did not apply run_succeeded (seq %s) by worker %s: the run is %s", run, e.Seq, e.Worker, r.Status)
		}
		if e.Type == events.TaskSucceeded && !added && len(r.Tasks) <= rdb.EndMaxTasks && r.Status == projector.RunRunning && allSucceeded(r) {
			if i+1 == len(evs) || evs[i+1].Type != events.RunSucceeded || evs[i+1].Worker != e.Worker {
				next := "the end of the log"
				if i+1 < len(evs) {
					next = fmt.Sprintf("%s by %q", evs[i+1].Type, evs[i+1].Worker)
				}
				t.Errorf("%s: task_succeeded of %s (seq %s) by %s left all %d tasks succeeded, but %s follows it, not its worker's run_succeeded",
					run, e.Task, e.Seq, e.Worker, len(r.Tasks), next)
			}
		}
		if before != projector.RunRunning || r.Status == projector.RunRunning {
			continue
		}
		switch {
		case byWorker:
			tally.script++
		case r.Status == projector.RunFailed:
			tally.failed++
		case r.Status == projector.RunSucceeded && len(r.Tasks) > rdb.EndMaxTasks:
			tally.large++
		case r.Status == projector.RunSucceeded && !allSucceeded(r):
			tally.absorbed++
		default:
			t.Errorf("%s: the run ended %s by %s (seq %s), which neither the script's domain nor the projector's explains", run, r.Status, e.Worker, e.Seq)
		}
	}
}

// allSucceeded reports whether every task of r succeeded.
func allSucceeded(r *projector.Run) bool {
	for _, t := range r.Tasks {
		if t.Status != projector.TaskSucceeded {
			return false
		}
	}
	return true
}

// endTypes lists the types of decisions, for messages.
func endTypes(d []events.Event) []events.Type {
	out := make([]events.Type, len(d))
	for i, e := range d {
		out[i] = e.Type
	}
	return out
}
