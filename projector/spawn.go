package projector

import (
	"slices"

	"github.com/graflow-go/graflow/events"
)

// Dynamic tasks (docs/workflows.md, "Dynamic tasks"): a handler adds tasks
// to its own run with its success, as a tasks_added event written by the
// spawning task (its Task field) right before its task_succeeded. The
// fold makes the spawner's successors wait for the spawned work:
//
//   - the sinks of a spawn are its tasks that no other task of the same
//     spawn depends on (Sinks);
//   - every task not yet succeeded that depends on the spawner (through
//     Spec.Deps or Waits) also waits for those sinks: they are appended to
//     its Waits. A sink that spawns in turn passes the wait on, so a
//     successor waits for the whole tree, and for a loop's last iteration.
//
// A spawned task may depend on earlier tasks of its spawn and on tasks
// that succeeded without spawning (the worker validates it, the finish
// script checks it, replay reports a log that breaks it). So a task's
// Waits are exactly the closure of what its dependencies spawned after
// it was added, which is what a worker reads back (rdb.ReadSpawned), and
// waits only ever point at tasks added later than the waiting task or
// earlier in its own spawn: no cycle can form.

// Sinks returns the ids of the tasks of one spawn that no other task of
// the spawn depends on, in the spawn's order: what the spawner's
// successors wait for.
func Sinks(specs []events.TaskSpec) []string {
	inner := make(map[string]bool, len(specs))
	for _, s := range specs {
		inner[s.ID] = false
	}
	for _, s := range specs {
		for _, d := range s.Deps {
			if _, ok := inner[d]; ok {
				inner[d] = true
			}
		}
	}
	out := make([]string, 0, len(specs))
	for _, s := range specs {
		if !inner[s.ID] {
			out = append(out, s.ID)
		}
	}
	return out
}

// allDeps returns what t waits for: its dependencies, then Waits.
func (t *Task) allDeps() []string {
	if len(t.Waits) == 0 {
		return t.Spec.Deps
	}
	return append(slices.Clip(t.Spec.Deps), t.Waits...)
}

// spawnerOf returns the index of the task that wrote a tasks_added event,
// or -1 for one written by no task of the run (it adds tasks, no waits).
func (r *Run) spawnerOf(e events.Event) int {
	if e.Type != events.TasksAdded || e.Task == "" {
		return -1
	}
	i, ok := r.index[e.Task]
	if !ok {
		return -1
	}
	return i
}

// recordSpawn records the spawn of tasks [base, base+n) by task p: p's
// sinks, and the waits of every task that depends on p and has not
// succeeded (tasks of the spawn itself excluded).
func (r *Run) recordSpawn(p, base, n int) {
	specs := make([]events.TaskSpec, n)
	for k := range n {
		specs[k] = r.Tasks[base+k].Spec
	}
	var sinks []int
	for _, id := range Sinks(specs) {
		sinks = append(sinks, r.index[id])
	}
	pt := r.Tasks[p]
	pt.sinks = append(pt.sinks, sinks...)
	for _, s := range pt.succ {
		if s >= base || r.Tasks[s].Status == TaskSucceeded {
			continue
		}
		for _, k := range sinks {
			r.wait(s, k)
		}
	}
}

// wait makes task i wait for task k as for a dependency.
func (r *Run) wait(i, k int) {
	t, kt := r.Tasks[i], r.Tasks[k]
	t.Waits = append(t.Waits, kt.Spec.ID)
	kt.succ = append(kt.succ, i)
	switch kt.Status {
	case TaskSucceeded:
	case TaskFailed, TaskSkipped, TaskCancelled:
		t.waiting++
		r.doom(i, "dependency "+kt.Spec.ID+" "+string(kt.Status))
	default:
		t.waiting++
	}
}

// waitsState reports whether every task t waits for (Waits) succeeded,
// and whether one of them failed, was skipped or cancelled (or is being
// skipped in the batch at hand, and not requeued in it): for a join
// policy, what the dependencies spawned counts as strict.
func (r *Run) waitsState(t *Task, skipping, unskipping map[string]bool) (succeeded, dead bool) {
	succeeded = true
	for _, w := range t.Waits {
		st := r.Tasks[r.index[w]].Status
		if skipping[w] {
			st = TaskSkipped
		} else if unskipping[w] {
			st = TaskPending
		}
		switch st {
		case TaskSucceeded:
		case TaskFailed, TaskSkipped, TaskCancelled:
			return false, true
		default:
			succeeded = false
		}
	}
	return succeeded, false
}
