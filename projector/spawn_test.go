package projector_test

import (
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
)

// spawned is the tasks_added a running task writes with its success.
func spawned(by string, attempt int, epoch int64, w string, specs ...events.TaskSpec) events.Event {
	e := tasksAdded(specs...)
	e.Task, e.Attempt, e.Epoch, e.Worker = by, attempt, epoch, w
	return e
}

// dyn is a task spec with handler "h".
func dyn(id string, deps ...string) events.TaskSpec {
	return events.TaskSpec{ID: id, Handler: "h", Deps: deps}
}

// run folds evs (numbered) and then more, numbered after them.
type foldRun struct {
	t   *testing.T
	r   *projector.Run
	seq int
}

func newFoldRun(t *testing.T, evs ...events.Event) *foldRun {
	f := &foldRun{t: t, r: projector.NewRun("r")}
	f.apply(evs...)
	return f
}

func (f *foldRun) apply(evs ...events.Event) {
	f.t.Helper()
	for _, e := range evs {
		f.seq++
		e.Run, e.Seq, e.Version, e.ID = "r", strconv.Itoa(f.seq)+"-0", events.CurrentVersion, "ev"+strconv.Itoa(f.seq)
		if err := projector.Apply(f.r, e); err != nil {
			f.t.Fatalf("Apply %s %s: %v", e.Type, e.Task, err)
		}
	}
}

// run claims and succeeds task (attempt 1, epoch 1) after its dispatch.
func (f *foldRun) run(task string, extra ...events.Event) {
	f.t.Helper()
	f.apply(dispatched(task, 1), claimed(task, 1, 1, "w"))
	f.apply(extra...)
	f.apply(succeeded(task, 1, 1, "w", `1`))
}

func (f *foldRun) decisions() []string {
	return decisionsOf(projector.Decide(f.r, 0, testDelay))
}

func TestSinks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		specs []events.TaskSpec
		want  []string
	}{
		{"a flat map: every task", []events.TaskSpec{dyn("x0"), dyn("x1"), dyn("x2")}, []string{"x0", "x1", "x2"}},
		{"a chain: its last task", []events.TaskSpec{dyn("x"), dyn("y", "x"), dyn("z", "y")}, []string{"z"}},
		{"a diamond and a dependency outside the spawn", []events.TaskSpec{dyn("x", "a"), dyn("y", "x"), dyn("z", "x"), dyn("j", "y", "z")}, []string{"j"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, projector.Sinks(tt.specs)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestSpawn(t *testing.T) {
	t.Parallel()

	t.Run("the spawner's successor waits for every spawned task", func(t *testing.T) {
		t.Parallel()
		f := newFoldRun(t, submitted(dyn("a"), dyn("s", "a")))
		f.run("a", spawned("a", 1, 1, "w", dyn("x0"), dyn("x1"), dyn("x2", "x1")))
		if diff := cmp.Diff([]string{"x0", "x2"}, f.r.Task("s").Waits); diff != "" {
			t.Errorf("s waits (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"task_dispatched x0 1", "task_dispatched x1 1"}, f.decisions()); diff != "" {
			t.Errorf("decisions (-want +got):\n%s", diff)
		}
		f.run("x0")
		f.run("x1")
		if diff := cmp.Diff([]string{"task_dispatched x2 1"}, f.decisions()); diff != "" {
			t.Errorf("decisions before the last sink (-want +got):\n%s", diff)
		}
		f.run("x2")
		if diff := cmp.Diff([]string{"task_dispatched s 1"}, f.decisions()); diff != "" {
			t.Errorf("decisions once every sink succeeded (-want +got):\n%s", diff)
		}
	})

	t.Run("a spawned task that spawns extends the wait, as a loop's iterations do", func(t *testing.T) {
		t.Parallel()
		f := newFoldRun(t, submitted(dyn("poll"), dyn("s", "poll")))
		f.run("poll", spawned("poll", 1, 1, "w", dyn("poll:2")))
		f.run("poll:2", spawned("poll:2", 1, 1, "w", dyn("poll:3")))
		if diff := cmp.Diff([]string{"poll:2", "poll:3"}, f.r.Task("s").Waits); diff != "" {
			t.Errorf("s waits (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"task_dispatched poll:3 1"}, f.decisions()); diff != "" {
			t.Errorf("decisions (-want +got):\n%s", diff)
		}
		f.run("poll:3") // the condition holds: no further iteration
		if diff := cmp.Diff([]string{"task_dispatched s 1"}, f.decisions()); diff != "" {
			t.Errorf("decisions after the last iteration (-want +got):\n%s", diff)
		}
		f.run("s")
		if diff := cmp.Diff([]string{"run_succeeded  0"}, f.decisions()); diff != "" {
			t.Errorf("decisions at the end (-want +got):\n%s", diff)
		}
	})

	t.Run("a spawned task may depend on a task that succeeded, and waits for nothing more", func(t *testing.T) {
		t.Parallel()
		f := newFoldRun(t, submitted(dyn("a"), dyn("b"), dyn("s", "b")))
		f.run("a")
		f.run("b", spawned("b", 1, 1, "w", dyn("x", "a"), dyn("y", "x")))
		if w := f.r.Task("x").Waits; len(w) != 0 {
			t.Errorf("x waits %v, want none", w)
		}
		if diff := cmp.Diff([]string{"y"}, f.r.Task("s").Waits); diff != "" {
			t.Errorf("s waits (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"task_dispatched x 1"}, f.decisions()); diff != "" {
			t.Errorf("decisions (-want +got):\n%s", diff)
		}
	})

	t.Run("a failed sink skips the successor and a requeue of it revives the successor", func(t *testing.T) {
		t.Parallel()
		f := newFoldRun(t, submitted(dyn("a"), dyn("s", "a")))
		f.run("a", spawned("a", 1, 1, "w", dyn("x0"), dyn("x1")))
		f.run("x0")
		f.apply(dispatched("x1", 1), claimed("x1", 1, 1, "w"), failed("x1", 1, 1, "w", "boom", true))
		if diff := cmp.Diff([]string{"task_skipped s 0 (dependency x1 failed)"}, f.decisions()); diff != "" {
			t.Errorf("decisions after the failure (-want +got):\n%s", diff)
		}
		f.apply(skipped("s", "dependency x1 failed"))
		f.apply(events.Event{Type: events.TaskRequeued, Task: "x1", Attempt: 1}.WithBody(events.TaskRequeuedBody{Cause: "operator"}))
		if diff := cmp.Diff([]string{"task_requeued s 0", "task_dispatched x1 2"}, f.decisions()); diff != "" {
			t.Errorf("decisions after the requeue (-want +got):\n%s", diff)
		}
		f.apply(events.Event{Type: events.TaskRequeued, Task: "s"}.WithBody(events.TaskRequeuedBody{Cause: "dependency x1 requeued"}))
		if diff := cmp.Diff([]string{"task_dispatched x1 2"}, f.decisions()); diff != "" {
			t.Errorf("the requeued successor must wait for x1 again (-want +got):\n%s", diff)
		}
	})

	t.Run("under a tolerant join the spawned tasks are still strict", func(t *testing.T) {
		t.Parallel()
		s := dyn("s", "a", "b")
		s.Join = &events.Join{Policy: events.JoinBestEffort}
		f := newFoldRun(t, submitted(dyn("a"), dyn("b"), s))
		f.run("a", spawned("a", 1, 1, "w", dyn("x")))
		f.apply(dispatched("b", 1), claimed("b", 1, 1, "w"), failed("b", 1, 1, "w", "boom", true))
		if diff := cmp.Diff([]string{"task_dispatched x 1"}, f.decisions()); diff != "" {
			t.Errorf("s must wait for x although its join tolerates b's failure (-want +got):\n%s", diff)
		}
		f.apply(dispatched("x", 1), claimed("x", 1, 1, "w"), failed("x", 1, 1, "w", "boom", true))
		if diff := cmp.Diff([]string{"task_skipped s 0 (dependency x failed)"}, f.decisions()); diff != "" {
			t.Errorf("a failed spawned task skips s whatever its join (-want +got):\n%s", diff)
		}
	})

	t.Run("a tasks_added of no task adds tasks and no waits", func(t *testing.T) {
		t.Parallel()
		f := newFoldRun(t, submitted(dyn("a"), dyn("s", "a")))
		f.apply(tasksAdded(dyn("x")))
		f.run("a")
		if w := f.r.Task("s").Waits; len(w) != 0 {
			t.Errorf("s waits %v, want none", w)
		}
	})

	t.Run("the same spawn again changes nothing", func(t *testing.T) {
		t.Parallel()
		add := spawned("a", 1, 1, "w", dyn("x0"), dyn("x1"))
		f := newFoldRun(t, submitted(dyn("a"), dyn("s", "a")), dispatched("a", 1), claimed("a", 1, 1, "w"), add)
		before := snapshot(f.r)
		add.Seq = "" // a duplicate the fold cannot place
		if err := projector.Apply(f.r, add); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(before, snapshot(f.r)); diff != "" {
			t.Errorf("(-before +after):\n%s", diff)
		}
	})
}
