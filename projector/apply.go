package projector

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/graflow-go/graflow/events"
)

// ErrInvalidEvent is returned (wrapped) by Apply for an event that cannot
// belong to the run: a task that does not exist, a body that does not decode.
// The projector quarantines a run whose log holds one.
var ErrInvalidEvent = errors.New("projector: invalid event")

// Apply folds one event into r. It is pure (no I/O, clock or randomness),
// deterministic and idempotent: an event whose Seq is not after r.LastSeq is
// ignored, and every transition checks the state it starts from, so applying
// the same event twice changes nothing.
func Apply(r *Run, e events.Event) error {
	if e.Seq != "" && r.LastSeq != "" && CompareSeq(e.Seq, r.LastSeq) <= 0 {
		return nil
	}
	if err := apply(r, e); err != nil {
		return err
	}
	if e.Seq != "" {
		r.LastSeq = e.Seq
		r.Events++
	}
	return nil
}

func invalid(e events.Event, format string, args ...any) error {
	return fmt.Errorf("%w: %s %s (seq %s): %s", ErrInvalidEvent, e.Type, e.Task, e.Seq, fmt.Sprintf(format, args...))
}

func apply(r *Run, e events.Event) error {
	r.at = eventMS(e)
	switch e.Type {
	case events.RunSubmitted:
		if r.Status != RunUnknown {
			return nil
		}
		var b events.RunSubmittedBody
		if err := e.DecodeBody(&b); err != nil {
			return invalid(e, "%v", err)
		}
		if err := r.addTasks(e, b.Tasks); err != nil {
			return err // nothing applied
		}
		r.Workflow, r.Input, r.Status, r.Traceparent = b.Workflow, b.Input, RunRunning, b.Traceparent
		return nil
	case events.TasksAdded:
		var b events.TasksAddedBody
		if err := e.DecodeBody(&b); err != nil {
			return invalid(e, "%v", err)
		}
		return r.addTasks(e, b.Tasks)
	// A run ends only once every task is terminal: a duplicate of an end
	// arriving after a requeue reopened the run changes nothing.
	case events.RunSucceeded:
		if r.Status == RunRunning && r.open == 0 && r.unabsorbed() == nil {
			// Failures absorbed by tolerant joins do not fail the run.
			r.Status, r.FailedTask, r.Cause = RunSucceeded, "", ""
		}
		return nil
	case events.RunFailed:
		if u := r.unabsorbed(); r.Status == RunRunning && r.open == 0 && u != nil {
			var b events.RunFailedBody
			if err := e.DecodeBody(&b); err != nil {
				return invalid(e, "%v", err)
			}
			// The failure is the fold's own (as Decide named it): a stale
			// run_failed re-delivered late cannot name another.
			r.Status = RunFailed
			r.FailedTask, r.Cause = r.failure(u)
		}
		return nil
	case events.RunCancelled:
		if r.Status == RunRunning {
			var b events.RunCancelledBody
			_ = e.DecodeBody(&b) // the reason is informative only
			r.Status, r.Cause = RunCancelled, b.Reason
		}
		return nil
	case events.RunQuarantined:
		// Whatever the run's state: the log may end in a run_quarantined
		// after entries the fold skipped. Task events after it still fold.
		if r.Status != RunUnknown && r.Status != RunQuarantined {
			var b events.RunQuarantinedBody
			_ = e.DecodeBody(&b) // the reason is informative only
			r.Status, r.Cause = RunQuarantined, b.Reason
		}
		return nil
	case events.ChannelWritten, events.ResultRejected:
		return nil
	case events.SignalReceived: // a message for a waiting handler, whose result carries it
		return nil
	}

	// Task events.
	i, ok := r.index[e.Task]
	if !ok {
		return invalid(e, "no such task in run %s", r.ID)
	}
	t := r.Tasks[i]
	switch e.Type {
	case events.TaskDispatched:
		if t.Status == TaskPending && (t.waiting == 0 || !t.Spec.Join.Strict() && r.Ready(t)) && e.Attempt > t.Attempt {
			t.Status, t.Attempt = TaskDispatched, e.Attempt
		}
	case events.TaskRetryScheduled:
		if t.Status == TaskAwaitingRetry && e.Attempt == t.Attempt+1 {
			t.Status, t.Attempt = TaskDispatched, e.Attempt
		}
	case events.TaskClaimed:
		if (t.Status == TaskDispatched || t.Status == TaskRunning) && e.Attempt == t.Attempt && e.Epoch > t.Epoch {
			t.Status, t.Epoch, t.Owner = TaskRunning, e.Epoch, e.Worker
		}
	case events.TaskReclaimed:
		if (t.Status == TaskDispatched || t.Status == TaskRunning) && e.Attempt == t.Attempt && e.Epoch > t.Epoch {
			t.Status, t.Epoch, t.Owner = TaskDispatched, e.Epoch, ""
		}
	case events.TaskHeartbeat:
	case events.TaskSucceeded:
		if t.Status != TaskRunning || e.Attempt != t.Attempt || e.Epoch != t.Epoch || e.Worker != t.Owner {
			return nil
		}
		var b events.TaskSucceededBody
		if err := e.DecodeBody(&b); err != nil {
			return invalid(e, "%v", err)
		}
		t.Status, t.Result, t.Error = TaskSucceeded, b.Result, ""
		if t.Spec.ResultTTLMS > 0 {
			t.ResultExpiresMS = e.Time.UnixMilli() + t.Spec.ResultTTLMS
		}
		if r.noResults {
			t.Result = nil
		}
		r.open--
		for _, s := range t.succ {
			r.Tasks[s].waiting--
			r.settled(s, "", i)
		}
	case events.TaskFailed, events.TaskTimedOut:
		if t.Status != TaskRunning || e.Attempt != t.Attempt || e.Epoch != t.Epoch || e.Worker != t.Owner {
			return nil
		}
		var b events.TaskFailedBody
		if err := e.DecodeBody(&b); err != nil {
			return invalid(e, "%v", err)
		}
		t.Error = b.Error
		if !b.Final && t.Attempt < t.Spec.MaxAttempts {
			t.Status, t.failedMS = TaskAwaitingRetry, r.at
			r.retry.push(queueEntry{task: i})
			break
		}
		t.Status = TaskFailed
		r.open--
		r.fails++
		if r.FailedTask == "" {
			r.FailedTask, r.Cause = t.Spec.ID, b.Error
		}
		r.skipDependents(t, "dependency "+t.Spec.ID+" failed")
	case events.TaskSkipped:
		// Only behind a dead dependency: a duplicate arriving after a
		// requeue revived the dependency changes nothing.
		if t.Status != TaskPending || !r.Dead(t) {
			return nil
		}
		t.Status = TaskSkipped
		r.open--
		if t.doomedMS > 0 {
			// What the skip settles (a tolerant join behind it is ready)
			// follows from the event that doomed the task, not from
			// the projector's decision to skip it, which may come late.
			r.at = t.doomedMS
		}
		r.skipDependents(t, "dependency "+t.Spec.ID+" skipped")
	case events.TaskRequeued:
		// A requeue revives a terminal task, so state alone cannot tell a
		// duplicate from a second requeue: remember the events applied.
		if t.Status != TaskFailed && t.Status != TaskSkipped || r.requeues[e.ID] {
			return nil
		}
		if r.requeues == nil {
			r.requeues = map[string]bool{}
		}
		r.requeues[e.ID] = true
		r.requeue(i)
	case events.TaskCancelled:
		// Written with run_cancelled, by the same script, for every task
		// not terminal; the epoch moves on, which fences a running
		// task's worker (its heartbeat and result are rejected).
		if t.Status.Terminal() || e.Epoch <= t.Epoch {
			return nil
		}
		t.Status, t.Owner, t.Epoch = TaskCancelled, "", e.Epoch
		r.invalidateTallies(t)
		r.open--
	default:
		return invalid(e, "unhandled event type")
	}
	r.trimQueues()
	return nil
}

// requeue reopens a failed or skipped task (and its run): the task is
// pending again, ready if its dependencies succeeded, and the tasks skipped
// behind it become candidates to be requeued too.
func (r *Run) requeue(i int) {
	t := r.Tasks[i]
	if t.Status == TaskFailed {
		r.fails--
	}
	t.Status, t.Owner = TaskPending, ""
	r.invalidateTallies(t)
	r.open++
	t.waiting = 0
	for _, d := range t.allDeps() {
		switch r.Tasks[r.index[d]].Status {
		case TaskSucceeded:
			continue
		case TaskFailed, TaskSkipped, TaskCancelled:
			// Requeued behind a dependency that is dead (again): it is
			// skipped again, or the run would never end.
			r.doom(i, "dependency "+d+" "+string(r.Tasks[r.index[d]].Status))
		}
		t.waiting++
	}
	if t.waiting == 0 {
		r.markReady(i)
	} else if !t.Spec.Join.Strict() {
		r.settled(i, "", -1) // a tolerant join may run behind dead dependencies
	}
	if r.Status == RunFailed {
		r.Status = RunRunning
	}
	if r.FailedTask == t.Spec.ID {
		r.FailedTask, r.Cause = "", ""
		for _, o := range r.Tasks {
			if o.Status == TaskFailed {
				r.FailedTask, r.Cause = o.Spec.ID, o.Error
				break
			}
		}
	}
	for _, s := range t.succ {
		if r.Tasks[s].Status == TaskSkipped {
			r.unskip.push(queueEntry{task: s, cause: "dependency " + t.Spec.ID + " requeued"})
		}
	}
}

func (r *Run) skipDependents(t *Task, cause string) {
	from := r.index[t.Spec.ID]
	for _, s := range t.succ {
		r.settled(s, cause, from)
	}
}

func (r *Run) trimQueues() {
	r.ready.trim(func(q queueEntry) bool { return r.Tasks[q.task].Status != TaskPending })
	r.retry.trim(func(q queueEntry) bool { return r.Tasks[q.task].Status != TaskAwaitingRetry })
	r.skip.trim(func(q queueEntry) bool { return r.Tasks[q.task].Status != TaskPending })
	r.unskip.trim(func(q queueEntry) bool { return r.Tasks[q.task].Status != TaskSkipped })
}

// addTasks appends task specs (already validated at submit time; a spec that
// is not valid here is an invalid event and nothing of it is applied). A
// tasks_added written by a task of the run is a spawn (spawn.go).
func (r *Run) addTasks(e events.Event, specs []events.TaskSpec) error {
	if len(specs) > 0 && r.hasAll(specs) {
		return nil // the same tasks_added again: a duplicate
	}
	seen := map[string]bool{}
	for _, s := range specs {
		if _, dup := r.index[s.ID]; dup || seen[s.ID] {
			return invalid(e, "duplicate task %q", s.ID)
		}
		seen[s.ID] = true
	}
	for _, s := range specs {
		for _, d := range s.Deps {
			if _, ok := r.index[d]; !ok && !seen[d] {
				return invalid(e, "task %q depends on unknown task %q", s.ID, d)
			}
		}
	}
	spawner := r.spawnerOf(e)
	base := len(r.Tasks)
	for k, s := range specs {
		if s.Pool == "" {
			s.Pool = events.DefaultPool
		}
		if s.MaxAttempts < 1 {
			s.MaxAttempts = 1
		}
		r.index[s.ID] = base + k
		r.Tasks = append(r.Tasks, &Task{Spec: s, Status: TaskPending})
	}
	r.open += len(specs)
	for k := range specs {
		t := r.Tasks[base+k]
		for _, d := range t.Spec.Deps {
			di := r.index[d]
			dt := r.Tasks[di]
			dt.succ = append(dt.succ, base+k)
			switch dt.Status {
			case TaskSucceeded:
			case TaskFailed, TaskSkipped, TaskCancelled:
				t.waiting++
				r.doom(base+k, "dependency "+d+" "+string(dt.Status))
			default:
				t.waiting++
			}
		}
		if t.waiting == 0 {
			r.markReady(base + k)
		} else if !t.Spec.Join.Strict() {
			r.settled(base+k, "", -1) // a tolerant join may run behind dead dependencies
		}
	}
	if spawner >= 0 {
		r.recordSpawn(spawner, base, len(specs))
	}
	return nil
}

// hasAll reports whether every spec is already in the run, identical.
func (r *Run) hasAll(specs []events.TaskSpec) bool {
	for _, s := range specs {
		i, ok := r.index[s.ID]
		if !ok {
			return false
		}
		t := r.Tasks[i].Spec
		if s.Pool == "" {
			s.Pool = events.DefaultPool
		}
		if s.MaxAttempts < 1 {
			s.MaxAttempts = 1
		}
		if t.Handler != s.Handler || t.Pool != s.Pool || t.Priority != s.Priority || t.MaxAttempts != s.MaxAttempts ||
			t.TimeoutMS != s.TimeoutMS || string(t.Args) != string(s.Args) || !equalStrings(t.Deps, s.Deps) {
			return false
		}
	}
	return true
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// CompareSeq orders two Redis stream ids ("ms-seq"): -1, 0 or +1.
// eventMS is when e took effect, as the delays it starts count it: the
// time of its log entry's id (Redis' clock when it was appended: one clock
// for every writer, however far a worker's clock is off), or its own Time
// if it has no entry yet. run_submitted's is its own Time, the
// submitter's clock, by which StartAt and StartIn were set.
func eventMS(e events.Event) int64 {
	if ms, _ := splitSeq(e.Seq); ms > 0 && e.Type != events.RunSubmitted {
		return int64(ms)
	}
	return e.Time.UnixMilli()
}

func CompareSeq(a, b string) int {
	am, as := splitSeq(a)
	bm, bs := splitSeq(b)
	switch {
	case am < bm:
		return -1
	case am > bm:
		return 1
	case as < bs:
		return -1
	case as > bs:
		return 1
	}
	return 0
}

func splitSeq(s string) (uint64, uint64) {
	ms, seq, _ := strings.Cut(s, "-")
	m, _ := strconv.ParseUint(ms, 10, 64)
	n, _ := strconv.ParseUint(seq, 10, 64)
	return m, n
}
