package rdb_test

import (
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/oklog/ulid/v2"
)

// handoffRun submits a run of specs with the handoffs its submitter would
// record (projector.Handoffs), nothing dispatched, in a namespace whose
// partition holds the default end policy.
func handoffRun(t *testing.T, specs ...events.TaskSpec) scriptBundle {
	t.Helper()
	b := setupRun(t)
	b.run = "R" + ulid.Make().String()
	body := events.RunSubmittedBody{Workflow: "wf", Tasks: specs}
	ev := events.Event{ID: ulid.Make().String(), Run: b.run, Type: events.RunSubmitted, Time: time.UnixMilli(1000)}.WithBody(body)
	plan, err := projector.InitialPlan(ev, 0, rdb.HandoffMaxTasks)
	if err != nil {
		t.Fatal(err)
	}
	init := rdb.Initial{Handoffs: map[string][]rdb.Handoff{}}
	for task, hs := range plan.Handoffs {
		for _, h := range hs {
			init.Handoffs[task] = append(init.Handoffs[task], rdb.Handoff(h))
		}
	}
	args, err := rdb.SubmitArgs(ev, body)
	if err != nil {
		t.Fatal(err)
	}
	if created, _, err := rdb.ParseSubmit(b.run, ev, body, b.db.SubmitArgsCmd(b.ctx, b.c, b.run, args, init)); err != nil || !created {
		t.Fatalf("submit = %v, %v", created, err)
	}
	if err := b.db.SetEndPolicy(b.ctx, []int{b.db.K.Partition(b.run)}, *endPolicy); err != nil {
		t.Fatal(err)
	}
	return b
}

// sumRun is a handoffRun of x, y and sum (after both), with x and y
// dispatched and read by w1 (their message ids), and the run's feed
// pointers so far.
func sumRun(t *testing.T) (b scriptBundle, msgs map[string]string, feed int) {
	t.Helper()
	b = handoffRun(t, events.TaskSpec{ID: "x", Handler: "h"}, events.TaskSpec{ID: "y", Handler: "h"},
		events.TaskSpec{ID: "sum", Handler: "h", Deps: []string{"x", "y"}})
	msgs = b.dispatchQueued(t, "w1", "x", "y")
	return b, msgs, b.feedPoints(t)
}

// dispatchedBy returns the task_dispatched events of task in b's log.
func (b scriptBundle) dispatchedBy(t *testing.T, task string) []events.Event {
	t.Helper()
	var out []events.Event
	for _, e := range b.log(t) {
		if e.Type == events.TaskDispatched && e.Task == task {
			out = append(out, e)
		}
	}
	return out
}

// A success hands its dependent on (dispatches it in the same call) once
// every dependency succeeded, and wakes no projector for it.
func TestFinishHandsOnTheDependentItMadeReady(t *testing.T) {
	t.Parallel()
	b, msgs, feed := sumRun(t)
	b.finishOne(t, b.success(t, "x", "w1", msgs["x"]))
	if d := b.dispatchedBy(t, "sum"); len(d) != 0 {
		t.Fatalf("sum dispatched with y not succeeded: %+v", d)
	}
	b.finishOne(t, b.success(t, "y", "w1", msgs["y"]))
	d := b.dispatchedBy(t, "sum")
	if len(d) != 1 || d[0].Worker != "w1" || d[0].Attempt != 1 {
		t.Fatalf("dispatches of sum = %+v, want one by w1 at attempt 1", d)
	}
	if st := b.hash(t, b.db.K.RunState(b.run)); st["sum"] != "dispatched|1|0|" || st[rdb.FieldRunDirty] != "" {
		t.Errorf("sum's record %q, @dirty %q; want dispatched|1|0| and no @dirty", st["sum"], st[rdb.FieldRunDirty])
	}
	if got := b.feedPoints(t); got != feed {
		t.Errorf("feed pointers %d, want %d: no projector is woken", got, feed)
	}
}

// A spawn makes its spawner's dependents wait for what it spawned. A call
// whose first item is the success of one dependency of sum and whose
// second is the other dependency's success with a spawn must not hand sum
// on: the first item, read before the spawn, saw a run that had spawned
// nothing (the soak found it: sum dispatched before the spawned task ran).
func TestFinishHandsNothingOnInACallThatSpawns(t *testing.T) {
	t.Parallel()
	b, msgs, feed := sumRun(t)
	y := b.success(t, "y", "w1", msgs["y"])
	x := b.success(t, "x", "w1", msgs["x"])
	sp, err := rdb.NewSpawn(ulid.Make().String(), []events.TaskSpec{{ID: "s0", Handler: "h"}}, []string{"s0"}, nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	x.Spawn = sp
	for _, out := range b.finishCall(t, y, x) {
		if out.Err != nil {
			t.Fatal(out.Err)
		}
	}
	if d := b.dispatchedBy(t, "sum"); len(d) != 0 {
		t.Errorf("sum dispatched in the call that spawned s0, which it waits for: %+v", d)
	}
	if st := b.hash(t, b.db.K.RunState(b.run)); st[rdb.FieldRunDirty] != "1" || b.feedPoints(t) != feed+1 {
		t.Errorf("@dirty %q, feed pointers %d (before %d): a projector must be woken", st[rdb.FieldRunDirty], b.feedPoints(t), feed)
	}
}
