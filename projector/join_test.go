package projector_test

import (
	"testing"

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
