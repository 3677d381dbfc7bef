package projector_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
)

func joined(id string, j events.Join, deps ...string) events.TaskSpec {
	s := spec(id, deps...)
	s.Join = &j
	return s
}

// best_effort: the successor runs once every member ended, whatever
// succeeded; the member's failure is absorbed and the run succeeds.
func TestJoinBestEffort(t *testing.T) {
	t.Parallel()
	d := newDriver(t, spec("a"), spec("b"), spec("c"), joined("j", events.Join{Policy: events.JoinBestEffort}, "a", "b", "c"))
	d.expect("at submit", []string{"task_dispatched a 1", "task_dispatched b 1", "task_dispatched c 1"}, d.commit(0))
	d.claim("a")
	d.fail("a", "boom", true)
	d.expect("a failed, b and c open: j waits", nil, d.decide(0))
	d.claim("b")
	d.succeed("b")
	d.claim("c")
	d.fail("c", "boom", true)
	d.expect("every member ended", []string{"task_dispatched j 1"}, d.commit(0))
	d.claim("j")
	d.succeed("j")
	d.expect("j absorbed a's and c's failures", []string{"run_succeeded  0"}, d.commit(0))
	if d.r.Status != projector.RunSucceeded || d.r.FailedTask != "" {
		t.Fatalf("run %s failed task %q", d.r.Status, d.r.FailedTask)
	}
}

// at_least: skipped as soon as N is out of reach; the run fails then.
func TestJoinAtLeast(t *testing.T) {
	t.Parallel()
	d := newDriver(t, spec("a"), spec("b"), spec("c"), joined("j", events.Join{Policy: events.JoinAtLeast, N: 2}, "a", "b", "c"))
	d.commit(0)
	d.claim("a")
	d.fail("a", "boom", true)
	d.expect("one failed, 2 of 3 still possible", nil, d.decide(0))
	d.claim("b")
	d.fail("b", "boom", true)
	d.expect("2 of 3 out of reach: j is skipped at once", []string{"task_skipped j 0 (dependency b failed)"}, d.commit(0))
	d.claim("c")
	d.succeed("c")
	d.expect("then the run fails", []string{"run_failed  0 (a: boom)"}, d.commit(0))
	if d.r.Status != projector.RunFailed || d.r.FailedTask != "a" {
		t.Fatalf("run %s failed task %q, want failed, a", d.r.Status, d.r.FailedTask)
	}

	d = newDriver(t, spec("a"), spec("b"), spec("c"), joined("j", events.Join{Policy: events.JoinAtLeast, N: 2}, "a", "b", "c"))
	d.commit(0)
	for _, id := range []string{"a", "b", "c"} {
		d.claim(id)
	}
	d.succeed("a")
	d.succeed("b")
	d.expect("2 succeeded, c still running: j waits for every member", nil, d.decide(0))
	d.fail("c", "boom", true)
	d.expect("then it runs", []string{"task_dispatched j 1"}, d.commit(0))
}

// critical: only the critical members must succeed.
func TestJoinCritical(t *testing.T) {
	t.Parallel()
	d := newDriver(t, spec("a"), spec("b"), joined("j", events.Join{Policy: events.JoinCritical, Critical: []string{"a"}}, "a", "b"))
	d.commit(0)
	d.claim("b")
	d.fail("b", "optional broke", true)
	d.claim("a")
	d.succeed("a")
	d.expect("the critical member succeeded", []string{"task_dispatched j 1"}, d.commit(0))
	d.claim("j")
	d.succeed("j")
	d.expect("b's failure absorbed", []string{"run_succeeded  0"}, d.commit(0))

	d = newDriver(t, spec("a"), spec("b"), joined("j", events.Join{Policy: events.JoinCritical, Critical: []string{"a"}}, "a", "b"))
	d.commit(0)
	d.claim("a")
	d.fail("a", "critical broke", true)
	d.expect("a critical member failed: skipped at once", []string{"task_skipped j 0 (dependency a failed)"}, d.commit(0))
}

// A strict successor of a member that a best_effort join absorbed still
// sees the member as failed: only the tolerant join absorbs it, and a
// failure with any strict successor fails the run.
func TestJoinAbsorbsOnlyForTolerantSuccessors(t *testing.T) {
	t.Parallel()
	d := newDriver(t, spec("a"), spec("b"), joined("j", events.Join{Policy: events.JoinBestEffort}, "a", "b"), spec("s", "a"))
	d.commit(0)
	d.claim("a")
	d.fail("a", "boom", true)
	d.claim("b")
	d.succeed("b")
	d.expect("j runs, s is skipped", []string{"task_skipped s 0 (dependency a failed)", "task_dispatched j 1"}, d.commit(0))
	d.claim("j")
	d.succeed("j")
	d.expect("a has a strict successor: the run fails", []string{"run_failed  0 (a: boom)"}, d.commit(0))
}

// Folding a wide fan-in stays linear: each success of a member of a
// strict join does not look at every dependency of the fan-in again (a
// 20,000-wide fan-out's projector spent 90% of its CPU there: 1,188
// tasks/s against 8,298 before joins). The fan-in's dependencies are
// looked at a bounded number of times, not once per member.
func TestFoldOfAWideFanInIsLinear(t *testing.T) {
	t.Parallel()
	const n = 2000
	specs := []events.TaskSpec{}
	var deps []string
	for i := range n {
		id := fmt.Sprintf("m%d", i)
		specs = append(specs, events.TaskSpec{ID: id, Handler: "h"})
		deps = append(deps, id)
	}
	specs = append(specs, events.TaskSpec{ID: "sum", Handler: "h", Deps: deps})
	r := projector.NewRun("wide")
	seq := 0
	apply := func(e events.Event) {
		t.Helper()
		seq++
		e.Run, e.Seq, e.ID, e.Version, e.Time = "wide", fmt.Sprintf("%d-0", seq), fmt.Sprintf("e%d", seq), events.CurrentVersion, time.UnixMilli(int64(seq))
		if err := projector.Apply(r, e); err != nil {
			t.Fatal(err)
		}
	}
	apply(events.Event{Type: events.RunSubmitted}.WithBody(events.RunSubmittedBody{Workflow: "wide", Tasks: specs}))
	for _, d := range deps {
		apply(events.Event{Type: events.TaskDispatched, Task: d, Attempt: 1}.WithBody(events.TaskDispatchedBody{Pool: "default"}))
		apply(events.Event{Type: events.TaskClaimed, Task: d, Attempt: 1, Epoch: 1, Worker: "w"})
		apply(events.Event{Type: events.TaskSucceeded, Task: d, Attempt: 1, Epoch: 1, Worker: "w"}.WithBody(events.TaskSucceededBody{}))
	}
	if !r.Ready(r.Task("sum")) {
		t.Fatal("sum is not ready after every member succeeded")
	}
	if got := r.DepScans(); got > 4*n {
		t.Errorf("the fold looked at %d dependencies for a %d-wide fan-in, want at most %d (linear)", got, n, 4*n)
	}
}

// TestFoldOfAWideTolerantFanInIsLinear: a best_effort, at_least or
// critical fan-in re-checked every dependency each time one of them ended,
// so its fold was O(n²) too (4,002,000 dependency looks for 2,000 members).
// Every policy, with successes only and with every other member failing.
func TestFoldOfAWideTolerantFanInIsLinear(t *testing.T) {
	t.Parallel()
	const n = 2000
	for _, tc := range []struct {
		name     string
		join     events.Join
		failOdd  bool
		ready    bool // the successor may run at the end
		deadLate bool // ...or is to be skipped
	}{
		{"best_effort, all succeed", events.Join{Policy: events.JoinBestEffort}, false, true, false},
		{"best_effort, half fail", events.Join{Policy: events.JoinBestEffort}, true, true, false},
		{"at_least n/2, all succeed", events.Join{Policy: events.JoinAtLeast, N: n / 2}, false, true, false},
		{"at_least n/2, half fail", events.Join{Policy: events.JoinAtLeast, N: n / 2}, true, true, false},
		{"at_least n/2+1, half fail", events.Join{Policy: events.JoinAtLeast, N: n/2 + 1}, true, false, true},
		{"critical m0, all succeed", events.Join{Policy: events.JoinCritical, Critical: []string{"m0"}}, false, true, false},
		{"critical m0, half fail", events.Join{Policy: events.JoinCritical, Critical: []string{"m0"}}, true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			specs := []events.TaskSpec{}
			var deps []string
			for i := range n {
				id := fmt.Sprintf("m%d", i)
				specs = append(specs, events.TaskSpec{ID: id, Handler: "h", MaxAttempts: 1})
				deps = append(deps, id)
			}
			join := tc.join
			specs = append(specs, events.TaskSpec{ID: "sum", Handler: "h", Deps: deps, Join: &join})
			r := projector.NewRun("wide")
			seq := 0
			apply := func(e events.Event) {
				t.Helper()
				seq++
				e.Run, e.Seq, e.ID, e.Version, e.Time = "wide", fmt.Sprintf("%d-0", seq), fmt.Sprintf("e%d", seq), events.CurrentVersion, time.UnixMilli(int64(seq))
				if err := projector.Apply(r, e); err != nil {
					t.Fatal(err)
				}
			}
			apply(events.Event{Type: events.RunSubmitted}.WithBody(events.RunSubmittedBody{Workflow: "wide", Tasks: specs}))
			for i, d := range deps {
				apply(events.Event{Type: events.TaskDispatched, Task: d, Attempt: 1}.WithBody(events.TaskDispatchedBody{Pool: "default"}))
				apply(events.Event{Type: events.TaskClaimed, Task: d, Attempt: 1, Epoch: 1, Worker: "w"})
				if tc.failOdd && i%2 == 1 {
					apply(events.Event{Type: events.TaskFailed, Task: d, Attempt: 1, Epoch: 1, Worker: "w"}.WithBody(events.TaskFailedBody{Error: "no", Final: true}))
				} else {
					apply(events.Event{Type: events.TaskSucceeded, Task: d, Attempt: 1, Epoch: 1, Worker: "w"}.WithBody(events.TaskSucceededBody{}))
				}
			}
			folded := r.DepScans()
			sum := r.Task("sum")
			if got := r.Ready(sum); got != tc.ready {
				t.Errorf("Ready(sum) = %v, want %v", got, tc.ready)
			}
			if got := r.Dead(sum); got != tc.deadLate {
				t.Errorf("Dead(sum) = %v, want %v", got, tc.deadLate)
			}
			var want []string
			if tc.ready {
				want = []string{"task_dispatched sum"}
			} else {
				want = []string{"task_skipped sum"}
			}
			var got []string
			for _, d := range projector.Decide(r, 0, nil) {
				got = append(got, string(d.Type)+" "+d.Task)
			}
			if !slices.Equal(got, want) {
				t.Errorf("decisions %v, want %v", got, want)
			}
			if folded > 4*n {
				t.Errorf("the fold looked at %d dependencies for a %d-wide %s fan-in, want at most %d (linear)", folded, n, tc.join.Policy, 4*n)
			}
		})
	}
}
