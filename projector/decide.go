package projector

import (
	"slices"
	"time"

	"github.com/graflow-go/graflow/events"
)

// RetryDelayFunc returns the delay before attempt (2, 3, ...) of task. The
// live projector uses exponential backoff with jitter; tests pass a
// deterministic function.
type RetryDelayFunc func(spec events.TaskSpec, attempt int) time.Duration

// Decide returns the decision events that the state of r calls for, at most
// limit of them (limit <= 0 means no limit): task_skipped for pending tasks
// behind a failure, task_requeued for skipped tasks behind a requeued one,
// task_dispatched for ready tasks, task_retry_scheduled for
// failed attempts with attempts left, and run_succeeded / run_failed once
// every task is terminal. It does not change r; the caller appends the
// events to the log and folds them with Apply. Decide is pure: the returned
// events have no ID, Seq or Time (a retry's DueMS is left to the caller).
//
// Decisions are monotone: no event that a worker can append between Decide
// and the commit of its decisions invalidates them.
func Decide(r *Run, limit int, delay RetryDelayFunc) []events.Event {
	if r.Status != RunRunning {
		return nil
	}
	var out []events.Event
	full := func() bool { return limit > 0 && len(out) >= limit }
	seen := map[int]bool{}
	skipping := map[string]bool{}   // decided skipped in this batch: dead
	unskipping := map[string]bool{} // decided requeued in this batch: pending
	for _, q := range r.skip.items[r.skip.head:] {
		if full() {
			return out
		}
		t := r.Tasks[q.task]
		// Re-check: a requeue may have revived the dependency since.
		if t.Status != TaskPending || seen[q.task] {
			continue
		}
		if _, dead := r.joinState(t, skipping, unskipping); !dead {
			continue
		}
		seen[q.task] = true
		skipping[t.Spec.ID] = true
		out = append(out, events.Event{Run: r.ID, Type: events.TaskSkipped, Task: t.Spec.ID}.
			WithBody(events.TaskSkippedBody{Cause: q.cause}))
	}
	for _, q := range r.unskip.items[r.unskip.head:] {
		if full() {
			return out
		}
		t := r.Tasks[q.task]
		if t.Status != TaskSkipped || seen[q.task] {
			continue
		}
		if _, dead := r.joinState(t, skipping, unskipping); dead {
			continue
		}
		seen[q.task] = true
		unskipping[t.Spec.ID] = true
		out = append(out, events.Event{Run: r.ID, Type: events.TaskRequeued, Task: t.Spec.ID, Attempt: t.Attempt}.
			WithBody(events.TaskRequeuedBody{Cause: q.cause}))
	}
	for _, q := range r.ready.items[r.ready.head:] {
		if full() {
			return out
		}
		t := r.Tasks[q.task]
		if t.Status != TaskPending || seen[q.task] {
			continue
		}
		if ready, _ := r.joinState(t, skipping, unskipping); !ready {
			continue
		}
		seen[q.task] = true
		out = append(out, events.Event{Run: r.ID, Type: events.TaskDispatched, Task: t.Spec.ID, Attempt: t.Attempt + 1}.
			WithBody(events.TaskDispatchedBody{Pool: t.Spec.Pool, Priority: t.Spec.Priority, DelayMS: t.Spec.StartAfterMS}))
	}
	for _, q := range r.retry.items[r.retry.head:] {
		if full() {
			return out
		}
		t := r.Tasks[q.task]
		if t.Status != TaskAwaitingRetry || seen[q.task] {
			continue
		}
		seen[q.task] = true
		var d time.Duration
		if delay != nil {
			d = delay(t.Spec, t.Attempt+1)
		}
		out = append(out, events.Event{Run: r.ID, Type: events.TaskRetryScheduled, Task: t.Spec.ID, Attempt: t.Attempt + 1}.
			WithBody(events.TaskRetryScheduledBody{DelayMS: d.Milliseconds()}))
	}
	if len(out) == 0 && r.open == 0 {
		if u := r.unabsorbed(); u == nil {
			out = append(out, events.Event{Run: r.ID, Type: events.RunSucceeded})
		} else {
			task, cause := r.failure(u)
			out = append(out, events.Event{Run: r.ID, Type: events.RunFailed}.
				WithBody(events.RunFailedBody{Task: task, Cause: cause}))
		}
	}
	return out
}

// depsAlive reports whether none of t's dependencies (and Waits) failed, was skipped
// or cancelled, or is being skipped in the batch at hand.
func (r *Run) depsAlive(t *Task, skipping map[string]bool) bool {
	deps := t.allDeps()
	r.depScans += len(deps)
	for _, d := range deps {
		if skipping[d] {
			return false
		}
		switch r.Tasks[r.index[d]].Status {
		case TaskFailed, TaskSkipped, TaskCancelled:
			return false
		}
	}
	return true
}

// Handoff is a task that a success may dispatch in the same step as the
// success itself (the worker's finish script): a dependent with a strict
// join and no delayed start, counted: every one of its dependencies hands
// on, so each of their successes counts it down, and it is ready when the
// count of its Deps dependencies reaches zero. Its dispatch is the one
// Decide would make (attempt one more than its pending record's, the body
// Pool and Priority).
type Handoff struct {
	Task     string
	Pool     string
	Priority int
	Deps     int
}

// MaxHandoffFanout bounds the dependents one success hands on: a task
// with more (a wide fan-out's root) leaves them to the projector, which
// dispatches in bounded batches.
const MaxHandoffFanout = 31

// Handoffs returns, for a new run (folded from submitted alone: no
// spawns), the tasks whose success the finish hands on itself, each with
// its dependents. A task hands on when it has between 1 and
// MaxHandoffFanout dependents and each is counted; a dependent is counted
// when its join is strict, it has no delayed start, and each of its
// dependencies hands on (the largest such sets: a dependent whose count
// some success would not lower is never counted). The success of a task
// that hands on then calls for no decision but the dispatch of each
// dependent it counts down to zero, which the finish makes, so it need not
// wake a projector.
func Handoffs(r *Run, maxTasks int) map[string][]Handoff {
	if len(r.Tasks) < 2 || len(r.Tasks) > maxTasks {
		return nil
	}
	dependents := map[string][]*Task{}
	for _, t := range r.Tasks {
		for _, d := range t.Spec.Deps {
			dependents[d] = append(dependents[d], t)
		}
	}
	hands := map[string]bool{}
	for d, ts := range dependents {
		hands[d] = len(ts) <= MaxHandoffFanout
	}
	counted := map[string]bool{}
	for _, t := range r.Tasks {
		counted[t.Spec.ID] = len(t.Spec.Deps) > 0 && t.Spec.Join.Strict() && t.Spec.StartAfterMS <= 0 && len(t.Waits) == 0
	}
	for changed := true; changed; {
		changed = false
		for d, ts := range dependents {
			if hands[d] && slices.ContainsFunc(ts, func(t *Task) bool { return !counted[t.Spec.ID] }) {
				hands[d], changed = false, true
			}
		}
		for _, t := range r.Tasks {
			if counted[t.Spec.ID] && slices.ContainsFunc(t.Spec.Deps, func(d string) bool { return !hands[d] }) {
				counted[t.Spec.ID], changed = false, true
			}
		}
	}
	var next map[string][]Handoff
	for d, ts := range dependents {
		if !hands[d] {
			continue
		}
		if next == nil {
			next = map[string][]Handoff{}
		}
		for _, t := range ts {
			next[d] = append(next[d], Handoff{Task: t.Spec.ID, Pool: t.Spec.Pool, Priority: t.Spec.Priority, Deps: len(t.Spec.Deps)})
		}
	}
	return next
}

// Plan is what a new run calls for at once (see InitialPlan).
type Plan struct {
	// Decisions are the root tasks' dispatches, More says the run calls
	// for further decisions (see InitialPlan).
	Decisions []events.Event
	More      bool
	// Handoffs are the successes the finish hands on itself (Handoffs).
	Handoffs map[string][]Handoff
}

// InitialPlan returns what a new run calls for at once, folded from its
// run_submitted event alone: its root tasks' dispatches, at most limit of
// them (More: the run calls for further decisions, more roots than
// limit), and its Handoffs for runs of at most maxHandoff tasks. The
// submitter commits the dispatches in the script that creates the run
// (its queue shares the run's slot), which saves the projector's first
// commit; they are exactly the decisions a projector would make, and the
// fold checks them like any other. Pure: the events have no ID, Seq or
// Time.
func InitialPlan(submitted events.Event, limit, maxHandoff int) (Plan, error) {
	r := NewRun(submitted.Run)
	r.noResults = true
	if err := Apply(r, submitted); err != nil {
		return Plan{}, err
	}
	p := Plan{Handoffs: Handoffs(r, maxHandoff)}
	var err error
	p.Decisions, p.More, err = initialDecisions(r, limit)
	return p, err
}

// initialDecisions are InitialPlan's dispatches, for r folded from
// run_submitted alone.
func initialDecisions(r *Run, limit int) (decisions []events.Event, more bool, err error) {
	decisions = Decide(r, limit, nil)
	for _, d := range decisions {
		var b events.TaskDispatchedBody
		if d.Type != events.TaskDispatched || d.DecodeBody(&b) != nil || b.DelayMS > 0 {
			// Only immediate dispatches are made at submit; anything else
			// (a delayed start: its due time is the committer's clock's)
			// is left to the projector.
			return nil, true, nil
		}
		if err := Apply(r, d); err != nil {
			return nil, false, err
		}
	}
	return decisions, len(Decide(r, 1, nil)) > 0, nil
}
