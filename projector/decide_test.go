package projector_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
)

// driver plays a run forward: it applies worker events and commits the
// projector's decisions, numbering entries as a log would.
type driver struct {
	t     *testing.T
	r     *projector.Run
	n     int
	epoch map[string]int64
}

func newDriver(t *testing.T, specs ...events.TaskSpec) *driver {
	d := &driver{t: t, r: projector.NewRun("r"), epoch: map[string]int64{}}
	d.apply(submitted(specs...))
	return d
}

func (d *driver) apply(evs ...events.Event) {
	d.t.Helper()
	for _, e := range evs {
		d.n++
		e.Run, e.Seq, e.ID = "r", fmt.Sprintf("%d-0", d.n), fmt.Sprintf("ev%d", d.n)
		if err := projector.Apply(d.r, e); err != nil {
			d.t.Fatalf("Apply %s %s: %v", e.Type, e.Task, err)
		}
	}
}

// decide returns what Decide calls for, without committing it.
func (d *driver) decide(limit int) []string {
	d.t.Helper()
	before := snapshot(d.r)
	out := decisionsOf(projector.Decide(d.r, limit, testDelay))
	if diff := cmp.Diff(before, snapshot(d.r)); diff != "" {
		d.t.Fatalf("Decide changed the run (-before +after):\n%s", diff)
	}
	return out
}

// commit decides and applies the decisions, returning them.
func (d *driver) commit(limit int) []string {
	d.t.Helper()
	ds := projector.Decide(d.r, limit, testDelay)
	d.apply(ds...)
	return decisionsOf(ds)
}

// claim claims the task's current attempt under the next epoch.
func (d *driver) claim(task string) {
	d.t.Helper()
	d.epoch[task]++
	d.apply(claimed(task, d.r.Task(task).Attempt, d.epoch[task], "w"))
}

func (d *driver) succeed(task string) {
	d.t.Helper()
	d.apply(succeeded(task, d.r.Task(task).Attempt, d.epoch[task], "w", `"`+task+`"`))
}

func (d *driver) fail(task, msg string, final bool) {
	d.t.Helper()
	d.apply(failed(task, d.r.Task(task).Attempt, d.epoch[task], "w", msg, final))
}

func (d *driver) expect(what string, want, got []string) {
	d.t.Helper()
	if diff := cmp.Diff(want, got); diff != "" {
		d.t.Fatalf("%s (-want +got):\n%s", what, diff)
	}
}

func spec(id string, deps ...string) events.TaskSpec {
	return events.TaskSpec{ID: id, Handler: "h", Deps: deps}
}

func TestDecideDiamond(t *testing.T) {
	t.Parallel()
	d := newDriver(t, spec("a"), spec("b", "a"), spec("c", "a"), spec("d", "b", "c"))
	d.expect("at submit", []string{"task_dispatched a 1"}, d.commit(0))
	d.expect("after dispatching a", nil, d.decide(0))
	d.claim("a")
	d.expect("while a runs", nil, d.decide(0))
	d.succeed("a")
	d.expect("after a", []string{"task_dispatched b 1", "task_dispatched c 1"}, d.commit(0))
	d.claim("b")
	d.claim("c")
	d.succeed("b")
	d.expect("after b only", nil, d.decide(0))
	d.succeed("c")
	d.expect("after b and c", []string{"task_dispatched d 1"}, d.commit(0))
	d.claim("d")
	d.expect("while d runs", nil, d.decide(0))
	d.succeed("d")
	d.expect("after d", []string{"run_succeeded  0"}, d.commit(0))
	if d.r.Status != projector.RunSucceeded {
		t.Fatalf("run %s", d.r.Status)
	}
	d.expect("after the run ended", nil, d.decide(0))
}

func TestDecideFanOut(t *testing.T) {
	t.Parallel()
	specs := []events.TaskSpec{spec("root")}
	for i := range 5 {
		s := spec(fmt.Sprintf("m%d", i), "root")
		s.Pool, s.Priority = "gpu", i
		specs = append(specs, s)
	}
	specs = append(specs, spec("sink", "m0", "m1", "m2", "m3", "m4"))

	t.Run("every ready task is dispatched at once with its pool and priority", func(t *testing.T) {
		t.Parallel()
		d := newDriver(t, specs...)
		d.commit(0)
		d.claim("root")
		d.succeed("root")
		ds := projector.Decide(d.r, 0, testDelay)
		var got []string
		for _, e := range ds {
			var b events.TaskDispatchedBody
			if err := e.DecodeBody(&b); err != nil {
				t.Fatal(err)
			}
			got = append(got, fmt.Sprintf("%s %s %d %s/%d", e.Type, e.Task, e.Attempt, b.Pool, b.Priority))
		}
		want := []string{
			"task_dispatched m0 1 gpu/0", "task_dispatched m1 1 gpu/1", "task_dispatched m2 1 gpu/2",
			"task_dispatched m3 1 gpu/3", "task_dispatched m4 1 gpu/4",
		}
		d.expect("fan-out", want, got)
		for _, e := range ds {
			if e.Run != "r" || e.ID != "" || e.Seq != "" || !e.Time.IsZero() || e.Worker != "" {
				t.Errorf("decision %s %s: Run %q ID %q Seq %q Time %v Worker %q; want only Run set", e.Type, e.Task, e.Run, e.ID, e.Seq, e.Time, e.Worker)
			}
		}
	})

	t.Run("a limit splits the dispatch into batches in order", func(t *testing.T) {
		t.Parallel()
		d := newDriver(t, specs...)
		d.commit(0)
		d.claim("root")
		d.succeed("root")
		d.expect("batch 1", []string{"task_dispatched m0 1", "task_dispatched m1 1"}, d.commit(2))
		d.expect("batch 2", []string{"task_dispatched m2 1", "task_dispatched m3 1"}, d.commit(2))
		d.expect("batch 3", []string{"task_dispatched m4 1"}, d.commit(2))
		d.expect("batch 4", nil, d.commit(2))
		for i := range 5 {
			id := fmt.Sprintf("m%d", i)
			d.claim(id)
			d.succeed(id)
			if i < 4 {
				d.expect("fan-in before every member succeeded", nil, d.decide(0))
			}
		}
		d.expect("fan-in", []string{"task_dispatched sink 1"}, d.commit(0))
	})
}

func TestDecideFailureWithoutRetries(t *testing.T) {
	t.Parallel()
	d := newDriver(t, spec("a"), spec("b", "a"), spec("c", "b"), spec("x"))
	d.expect("at submit", []string{"task_dispatched a 1", "task_dispatched x 1"}, d.commit(0))
	d.claim("a")
	d.claim("x")
	d.fail("a", "boom", false) // one attempt only: final although not permanent
	if got := d.r.Task("a").Status; got != projector.TaskFailed {
		t.Fatalf("a is %s", got)
	}
	d.expect("skip behind a", []string{"task_skipped b 0 (dependency a failed)"}, d.commit(0))
	d.expect("skip behind b", []string{"task_skipped c 0 (dependency b skipped)"}, d.commit(0))
	d.expect("while x runs", nil, d.decide(0))
	d.succeed("x")
	d.expect("every task terminal", []string{"run_failed  0 (a: boom)"}, d.commit(0))
	if d.r.Status != projector.RunFailed || d.r.FailedTask != "a" || d.r.Cause != "boom" {
		t.Fatalf("run %s failed task %q cause %q", d.r.Status, d.r.FailedTask, d.r.Cause)
	}
	d.expect("after the run ended", nil, d.decide(0))
}

func TestDecideFailureWithRetries(t *testing.T) {
	t.Parallel()
	a := spec("a")
	a.MaxAttempts = 3

	t.Run("retries until the attempts are used up, then fails the run", func(t *testing.T) {
		t.Parallel()
		d := newDriver(t, a, spec("b", "a"))
		d.commit(0)
		d.claim("a")
		d.fail("a", "try 1", false)
		d.expect("after attempt 1", []string{"task_retry_scheduled a 2 (delay 200ms)"}, d.commit(0))
		if got := stateOf(d.r.Task("a")); got.Status != projector.TaskDispatched || got.Attempt != 2 {
			t.Fatalf("a = %+v", got)
		}
		d.claim("a")
		d.fail("a", "try 2", false)
		d.expect("after attempt 2", []string{"task_retry_scheduled a 3 (delay 300ms)"}, d.commit(0))
		d.claim("a")
		d.fail("a", "try 3", false)
		d.expect("after attempt 3", []string{"task_skipped b 0 (dependency a failed)"}, d.commit(0))
		d.expect("end", []string{"run_failed  0 (a: try 3)"}, d.commit(0))
	})

	t.Run("a permanent failure is not retried", func(t *testing.T) {
		t.Parallel()
		d := newDriver(t, a, spec("b", "a"))
		d.commit(0)
		d.claim("a")
		d.fail("a", "bad input", true)
		d.expect("after a permanent failure", []string{"task_skipped b 0 (dependency a failed)"}, d.commit(0))
		d.expect("end", []string{"run_failed  0 (a: bad input)"}, d.commit(0))
	})

	t.Run("a retry that succeeds unlocks the successors", func(t *testing.T) {
		t.Parallel()
		d := newDriver(t, a, spec("b", "a"))
		d.commit(0)
		d.claim("a")
		d.fail("a", "flaky", false)
		d.commit(0)
		d.claim("a")
		d.succeed("a")
		d.expect("after the retry succeeded", []string{"task_dispatched b 1"}, d.commit(0))
		d.claim("b")
		d.succeed("b")
		d.expect("end", []string{"run_succeeded  0"}, d.commit(0))
	})

	t.Run("the retry delay function gets the next attempt", func(t *testing.T) {
		t.Parallel()
		d := newDriver(t, a)
		d.commit(0)
		d.claim("a")
		d.fail("a", "x", false)
		var got []int
		projector.Decide(d.r, 0, func(s events.TaskSpec, attempt int) time.Duration {
			if s.ID == "a" {
				got = append(got, attempt)
			}
			return 0
		})
		if diff := cmp.Diff([]int{2}, got); diff != "" {
			t.Errorf("attempts passed to the delay function (-want +got):\n%s", diff)
		}
		if ds := projector.Decide(d.r, 0, nil); len(ds) != 1 || ds[0].Type != events.TaskRetryScheduled {
			t.Errorf("Decide with a nil delay = %v", decisionsOf(ds))
		}
	})
}

// Every decision kind competes for the same limit, skips first.
func TestDecideLimitAcrossKinds(t *testing.T) {
	t.Parallel()
	a := spec("a")
	a.MaxAttempts = 2
	d := newDriver(t, a, spec("f"), spec("g", "f"), spec("r"))
	d.commit(0) // dispatch a, f, r
	d.claim("a")
	d.claim("f")
	d.fail("a", "again", false)
	d.fail("f", "dead", true)
	d.expect("limit 1", []string{"task_skipped g 0 (dependency f failed)"}, d.decide(1))
	d.expect("no limit", []string{"task_skipped g 0 (dependency f failed)", "task_retry_scheduled a 2 (delay 200ms)"}, d.decide(0))
}

// run_succeeded / run_failed come only once every task is terminal.
func TestDecideRunEndsOnlyWhenEveryTaskIsTerminal(t *testing.T) {
	t.Parallel()
	a := spec("a")
	a.MaxAttempts = 2
	steps := []struct {
		name string
		do   func(d *driver)
	}{
		{"pending behind a running task", func(d *driver) { d.commit(0); d.claim("a") }},
		{"dispatched", func(d *driver) { d.commit(0) }},
		{"running", func(d *driver) { d.commit(0); d.claim("a") }},
		{"awaiting a retry", func(d *driver) { d.commit(0); d.claim("a"); d.fail("a", "x", false) }},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			d := newDriver(t, a, spec("b", "a"))
			st.do(d)
			for range 3 {
				for _, s := range d.commit(0) {
					if s == "run_succeeded  0" || len(s) > 10 && s[:10] == "run_failed" {
						t.Fatalf("%s with open tasks: a %s b %s", s, d.r.Task("a").Status, d.r.Task("b").Status)
					}
				}
			}
		})
	}
}

func TestDecideOnARunThatIsNotRunning(t *testing.T) {
	t.Parallel()
	if ds := projector.Decide(projector.NewRun("r"), 0, testDelay); ds != nil {
		t.Errorf("Decide before run_submitted = %v", decisionsOf(ds))
	}
	d := newDriver(t, spec("a"))
	d.apply(events.Event{Type: events.RunCancelled})
	d.expect("cancelled run", nil, d.decide(0))
}

// task_requeued (graflow dlq requeue) reopens a failed run: the task gets
// its next attempt and the tasks skipped behind it are requeued.
func TestDecideRequeue(t *testing.T) {
	t.Parallel()
	d := newDriver(t, spec("a"), spec("b", "a"), spec("c", "b"))
	d.commit(0)
	d.claim("a")
	d.fail("a", "boom", true)
	d.commit(0)
	d.commit(0)
	d.expect("end", []string{"run_failed  0 (a: boom)"}, d.commit(0))
	d.apply(events.Event{Type: events.TaskRequeued, Task: "a", Attempt: 1}.WithBody(events.TaskRequeuedBody{Cause: "operator"}))
	if d.r.Status != projector.RunRunning || d.r.Task("a").Status != projector.TaskPending || d.r.FailedTask != "" {
		t.Fatalf("after requeue: run %s a %s failed task %q", d.r.Status, d.r.Task("a").Status, d.r.FailedTask)
	}
	d.expect("after requeue", []string{"task_requeued b 0", "task_dispatched a 2"}, d.commit(0))
	d.expect("behind b", []string{"task_requeued c 0"}, d.commit(0))
	d.claim("a")
	d.succeed("a")
	d.expect("after a", []string{"task_dispatched b 1"}, d.commit(0))
	d.claim("b")
	d.succeed("b")
	d.expect("after b", []string{"task_dispatched c 1"}, d.commit(0))
	d.claim("c")
	d.succeed("c")
	d.expect("end", []string{"run_succeeded  0"}, d.commit(0))
}

// A requeued task that fails again re-skips its dependents. A dependent
// that was being requeued at the same time (its requeue decided in the same
// batch as the re-skip in front of it) must end skipped too, or the run
// never ends: found by TestPropertyEveryRunEnds (seeds 116 and 305).
func TestDecideRequeuedTaskFailsAgain(t *testing.T) {
	t.Parallel()
	d := newDriver(t, spec("a"), spec("b", "a"), spec("c", "b"))
	d.commit(0)
	d.claim("a")
	d.fail("a", "boom", true)
	d.commit(0) // skip b
	d.commit(0) // skip c
	d.expect("end", []string{"run_failed  0 (a: boom)"}, d.commit(0))
	d.apply(events.Event{Type: events.TaskRequeued, Task: "a", Attempt: 1}.WithBody(events.TaskRequeuedBody{Cause: "operator"}))
	d.expect("after requeue", []string{"task_requeued b 0", "task_dispatched a 2"}, d.commit(0))
	d.claim("a")
	d.fail("a", "boom again", true) // before c's requeue was committed
	for i := 0; d.r.Status == projector.RunRunning; i++ {
		if i > 10 {
			t.Fatalf("the run never ends: a %s, b %s, c %s; Decide = %v",
				d.r.Task("a").Status, d.r.Task("b").Status, d.r.Task("c").Status, d.decide(0))
		}
		d.commit(0)
	}
	if d.r.Status != projector.RunFailed || d.r.Task("b").Status != projector.TaskSkipped || d.r.Task("c").Status != projector.TaskSkipped {
		t.Errorf("run %s, b %s, c %s; want failed, skipped, skipped", d.r.Status, d.r.Task("b").Status, d.r.Task("c").Status)
	}
}
