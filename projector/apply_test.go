package projector_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
)

// Event builders for the table tests.

func submitted(specs ...events.TaskSpec) events.Event {
	return events.Event{Type: events.RunSubmitted}.WithBody(events.RunSubmittedBody{Workflow: "wf", Tasks: specs, Input: json.RawMessage(`{"in":1}`)})
}

func dispatched(task string, attempt int) events.Event {
	return events.Event{Type: events.TaskDispatched, Task: task, Attempt: attempt}.WithBody(events.TaskDispatchedBody{Pool: "default"})
}

func claimed(task string, attempt int, epoch int64, w string) events.Event {
	return events.Event{Type: events.TaskClaimed, Task: task, Attempt: attempt, Epoch: epoch, Worker: w}
}

func reclaimed(task string, attempt int, epoch int64, w string) events.Event {
	return events.Event{Type: events.TaskReclaimed, Task: task, Attempt: attempt, Epoch: epoch, Worker: w}.
		WithBody(events.TaskReclaimedBody{From: "old", Deliveries: 2})
}

func heartbeat(task string, attempt int, epoch int64, w string) events.Event {
	return events.Event{Type: events.TaskHeartbeat, Task: task, Attempt: attempt, Epoch: epoch, Worker: w}
}

func succeeded(task string, attempt int, epoch int64, w, result string) events.Event {
	return events.Event{Type: events.TaskSucceeded, Task: task, Attempt: attempt, Epoch: epoch, Worker: w}.
		WithBody(events.TaskSucceededBody{Result: json.RawMessage(result)})
}

func failed(task string, attempt int, epoch int64, w, msg string, final bool) events.Event {
	return events.Event{Type: events.TaskFailed, Task: task, Attempt: attempt, Epoch: epoch, Worker: w}.
		WithBody(events.TaskFailedBody{Error: msg, Kind: events.FailureError, Final: final})
}

func timedOut(task string, attempt int, epoch int64, w string, final bool) events.Event {
	return events.Event{Type: events.TaskTimedOut, Task: task, Attempt: attempt, Epoch: epoch, Worker: w}.
		WithBody(events.TaskFailedBody{Error: "timed out", Kind: events.FailureTimeout, Final: final})
}

func retryScheduled(task string, attempt int) events.Event {
	return events.Event{Type: events.TaskRetryScheduled, Task: task, Attempt: attempt}.
		WithBody(events.TaskRetryScheduledBody{DelayMS: 100})
}

func skipped(task, cause string) events.Event {
	return events.Event{Type: events.TaskSkipped, Task: task}.WithBody(events.TaskSkippedBody{Cause: cause})
}

func cancelled(task string, epoch int64) events.Event {
	return events.Event{Type: events.TaskCancelled, Task: task, Epoch: epoch}
}

func tasksAdded(specs ...events.TaskSpec) events.Event {
	return events.Event{Type: events.TasksAdded}.WithBody(events.TasksAddedBody{Tasks: specs})
}

// withSeqs numbers evs 1-0, 2-0, ... after the run id.
func withSeqs(run string, evs []events.Event) []events.Event {
	out := make([]events.Event, len(evs))
	for i, e := range evs {
		e.Run, e.Seq, e.Version, e.ID = run, fmt.Sprintf("%d-0", i+1), events.CurrentVersion, fmt.Sprintf("ev%d", i+1)
		out[i] = e
	}
	return out
}

// The fixture DAG: a (2 attempts) → b; c on its own (1 attempt).
var fixtureSpecs = []events.TaskSpec{
	{ID: "a", Handler: "h", MaxAttempts: 2},
	{ID: "b", Handler: "h", Deps: []string{"a"}},
	{ID: "c", Handler: "h", Pool: "gpu", Priority: 5},
}

type taskState struct {
	Status  projector.TaskStatus
	Attempt int
	Epoch   int64
	Owner   string
	Error   string
	Result  string
}

func stateOf(t *projector.Task) taskState {
	return taskState{Status: t.Status, Attempt: t.Attempt, Epoch: t.Epoch, Owner: t.Owner, Error: t.Error, Result: string(t.Result)}
}

func TestApplyTaskTransitions(t *testing.T) {
	t.Parallel()
	type ts = taskState
	tests := []struct {
		name    string
		history []events.Event // after run_submitted
		event   events.Event
		task    string
		want    ts
	}{
		{"dispatch makes a ready task dispatched", nil, dispatched("a", 1), "a", ts{Status: "dispatched", Attempt: 1}},
		{"dispatch of a task waiting for its dependencies is ignored", nil, dispatched("b", 1), "b", ts{Status: "pending"}},
		{"dispatch of an attempt not after the current one is ignored",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1")}, dispatched("a", 1), "a", ts{Status: "running", Attempt: 1, Epoch: 1, Owner: "w1"}},
		{"claim of the dispatched attempt runs it",
			[]events.Event{dispatched("a", 1)}, claimed("a", 1, 1, "w1"), "a", ts{Status: "running", Attempt: 1, Epoch: 1, Owner: "w1"}},
		{"claim of another attempt is ignored",
			[]events.Event{dispatched("a", 1)}, claimed("a", 2, 1, "w1"), "a", ts{Status: "dispatched", Attempt: 1}},
		{"claim with the current epoch is ignored",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 2, "w1")}, claimed("a", 1, 2, "w2"), "a", ts{Status: "running", Attempt: 1, Epoch: 2, Owner: "w1"}},
		{"claim with an older epoch is ignored",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 2, "w1")}, claimed("a", 1, 1, "w2"), "a", ts{Status: "running", Attempt: 1, Epoch: 2, Owner: "w1"}},
		{"claim with a higher epoch takes over a running task",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1")}, claimed("a", 1, 3, "w2"), "a", ts{Status: "running", Attempt: 1, Epoch: 3, Owner: "w2"}},
		{"claim of a pending task is ignored", nil, claimed("a", 1, 1, "w1"), "a", ts{Status: "pending"}},
		{"reclaim puts a running task back to dispatched under a new epoch",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1")}, reclaimed("a", 1, 2, "w2"), "a", ts{Status: "dispatched", Attempt: 1, Epoch: 2}},
		{"reclaim with a stale epoch is ignored",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 2, "w1")}, reclaimed("a", 1, 2, "w2"), "a", ts{Status: "running", Attempt: 1, Epoch: 2, Owner: "w1"}},
		{"heartbeat changes nothing",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1")}, heartbeat("a", 1, 1, "w1"), "a", ts{Status: "running", Attempt: 1, Epoch: 1, Owner: "w1"}},
		{"success of the current claim is accepted",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1")}, succeeded("a", 1, 1, "w1", `{"n":1}`), "a",
			ts{Status: "succeeded", Attempt: 1, Epoch: 1, Owner: "w1", Result: `{"n":1}`}},
		{"success after a failed attempt clears the error",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1"), failed("a", 1, 1, "w1", "boom", false), retryScheduled("a", 2), claimed("a", 2, 2, "w2")},
			succeeded("a", 2, 2, "w2", `1`), "a", ts{Status: "succeeded", Attempt: 2, Epoch: 2, Owner: "w2", Result: `1`}},
		{"success from a reclaimed claim is ignored",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1"), reclaimed("a", 1, 2, "w2"), claimed("a", 1, 3, "w2")},
			succeeded("a", 1, 1, "w1", `"stale"`), "a", ts{Status: "running", Attempt: 1, Epoch: 3, Owner: "w2"}},
		{"success of another attempt is ignored",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1")}, succeeded("a", 2, 1, "w1", `1`), "a", ts{Status: "running", Attempt: 1, Epoch: 1, Owner: "w1"}},
		{"success of a dispatched task is ignored",
			[]events.Event{dispatched("a", 1)}, succeeded("a", 1, 0, "w1", `1`), "a", ts{Status: "dispatched", Attempt: 1}},
		{"a second success is ignored",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1"), succeeded("a", 1, 1, "w1", `"first"`)},
			succeeded("a", 1, 1, "w1", `"second"`), "a", ts{Status: "succeeded", Attempt: 1, Epoch: 1, Owner: "w1", Result: `"first"`}},
		{"a retryable failure with attempts left awaits a retry",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1")}, failed("a", 1, 1, "w1", "boom", false), "a",
			ts{Status: "awaiting_retry", Attempt: 1, Epoch: 1, Owner: "w1", Error: "boom"}},
		{"a final failure fails the task even with attempts left",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1")}, failed("a", 1, 1, "w1", "bad input", true), "a",
			ts{Status: "failed", Attempt: 1, Epoch: 1, Owner: "w1", Error: "bad input"}},
		{"a retryable failure of the last attempt fails the task",
			[]events.Event{dispatched("c", 1), claimed("c", 1, 1, "w1")}, failed("c", 1, 1, "w1", "boom", false), "c",
			ts{Status: "failed", Attempt: 1, Epoch: 1, Owner: "w1", Error: "boom"}},
		{"a timeout with attempts left awaits a retry",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1")}, timedOut("a", 1, 1, "w1", false), "a",
			ts{Status: "awaiting_retry", Attempt: 1, Epoch: 1, Owner: "w1", Error: "timed out"}},
		{"a timeout of the last attempt fails the task",
			[]events.Event{dispatched("c", 1), claimed("c", 1, 1, "w1")}, timedOut("c", 1, 1, "w1", true), "c",
			ts{Status: "failed", Attempt: 1, Epoch: 1, Owner: "w1", Error: "timed out"}},
		{"a failure from a reclaimed claim is ignored",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1"), reclaimed("a", 1, 2, "w2")},
			failed("a", 1, 1, "w1", "late", true), "a", ts{Status: "dispatched", Attempt: 1, Epoch: 2}},
		{"retry scheduled dispatches the next attempt",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1"), failed("a", 1, 1, "w1", "boom", false)},
			retryScheduled("a", 2), "a", ts{Status: "dispatched", Attempt: 2, Epoch: 1, Owner: "w1", Error: "boom"}},
		{"retry of an attempt other than the next is ignored",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1"), failed("a", 1, 1, "w1", "boom", false)},
			retryScheduled("a", 3), "a", ts{Status: "awaiting_retry", Attempt: 1, Epoch: 1, Owner: "w1", Error: "boom"}},
		{"retry of a task not awaiting one is ignored",
			[]events.Event{dispatched("a", 1)}, retryScheduled("a", 2), "a", ts{Status: "dispatched", Attempt: 1}},
		{"skip of a pending task behind a failed dependency",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1"), failed("a", 1, 1, "w1", "boom", true)},
			skipped("b", "dependency a failed"), "b", ts{Status: "skipped"}},
		// A skip is only valid behind a dead dependency; one arriving while
		// every dependency is alive (a duplicate after a requeue revived
		// it) changes nothing.
		{"skip of a pending task whose dependencies are alive is ignored", nil, skipped("b", "dependency a failed"), "b", ts{Status: "pending"}},
		{"skip of a running task is ignored",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1")}, skipped("a", "x"), "a", ts{Status: "running", Attempt: 1, Epoch: 1, Owner: "w1"}},
		{"cancel of a running task drops its owner and moves the epoch on",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1")}, cancelled("a", 2), "a", ts{Status: "cancelled", Attempt: 1, Epoch: 2}},
		{"cancel that does not move the epoch on is ignored",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1")}, cancelled("a", 1), "a", ts{Status: "running", Attempt: 1, Epoch: 1, Owner: "w1"}},
		{"cancel of a succeeded task is ignored",
			[]events.Event{dispatched("a", 1), claimed("a", 1, 1, "w1"), succeeded("a", 1, 1, "w1", `1`)}, cancelled("a", 2), "a",
			ts{Status: "succeeded", Attempt: 1, Epoch: 1, Owner: "w1", Result: `1`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			evs := withSeqs("r", append(append([]events.Event{submitted(fixtureSpecs...)}, tt.history...), tt.event))
			r := fold(t, "r", evs[:len(evs)-1])
			before := snapshot(r)
			if err := projector.Apply(r, evs[len(evs)-1]); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if diff := cmp.Diff(tt.want, stateOf(r.Task(tt.task))); diff != "" {
				t.Errorf("task %s (-want +got):\n%s", tt.task, diff)
			}
			// The other tasks are untouched.
			after := snapshot(r)
			for i := range after.Tasks {
				if after.Tasks[i].Spec.ID != tt.task {
					if diff := cmp.Diff(before.Tasks[i], after.Tasks[i]); diff != "" {
						t.Errorf("task %s changed (-before +after):\n%s", after.Tasks[i].Spec.ID, diff)
					}
				}
			}
			if after.Events != before.Events+1 || after.LastSeq != evs[len(evs)-1].Seq {
				t.Errorf("Events %d→%d LastSeq %s, want one more event at %s", before.Events, after.Events, after.LastSeq, evs[len(evs)-1].Seq)
			}
			// Applying the same entry again changes nothing.
			if err := projector.Apply(r, evs[len(evs)-1]); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(after, snapshot(r)); diff != "" {
				t.Errorf("second Apply (-first +second):\n%s", diff)
			}
		})
	}
}

type runState struct {
	Status     projector.RunStatus
	Workflow   string
	Input      string
	FailedTask string
	Cause      string
	Tasks      int
}

func runStateOf(r *projector.Run) runState {
	return runState{Status: r.Status, Workflow: r.Workflow, Input: string(r.Input), FailedTask: r.FailedTask, Cause: r.Cause, Tasks: len(r.Tasks)}
}

func TestApplyRunTransitions(t *testing.T) {
	t.Parallel()
	type rs = runState
	running := rs{Status: "running", Workflow: "wf", Input: `{"in":1}`, Tasks: 3}
	failedRun := func(task, cause string) rs {
		s := running
		s.Status, s.FailedTask, s.Cause = "failed", task, cause
		return s
	}
	with := func(st projector.RunStatus) rs { s := running; s.Status = st; return s }
	runFailed := events.Event{Type: events.RunFailed}.WithBody(events.RunFailedBody{Task: "a", Cause: "boom"})
	// A run ends only once every task is terminal (the projector decides
	// the end then); these histories get the fixture's tasks there.
	allSucceeded := []events.Event{
		dispatched("a", 1), claimed("a", 1, 1, "w"), succeeded("a", 1, 1, "w", `1`),
		dispatched("b", 1), claimed("b", 1, 1, "w"), succeeded("b", 1, 1, "w", `2`),
		dispatched("c", 1), claimed("c", 1, 1, "w"), succeeded("c", 1, 1, "w", `3`),
	}
	aFailed := []events.Event{
		dispatched("a", 1), claimed("a", 1, 1, "w"), failed("a", 1, 1, "w", "boom", true), skipped("b", "dependency a failed"),
		dispatched("c", 1), claimed("c", 1, 1, "w"), succeeded("c", 1, 1, "w", `3`),
	}
	tests := []struct {
		name    string
		history []events.Event // after run_submitted
		event   events.Event
		want    rs
	}{
		{"run_succeeded ends the run", allSucceeded, events.Event{Type: events.RunSucceeded}, with("succeeded")},
		{"run_succeeded while tasks are open is ignored", nil, events.Event{Type: events.RunSucceeded}, running},
		{"run_succeeded after a failure is ignored", aFailed, events.Event{Type: events.RunSucceeded}, rs{Status: "running", Workflow: "wf", Input: `{"in":1}`, FailedTask: "a", Cause: "boom", Tasks: 3}},
		{"run_failed ends the run with its cause", aFailed, runFailed, failedRun("a", "boom")},
		{"run_failed while tasks are open is ignored", nil, runFailed, running},
		{"run_cancelled ends the run with its reason", nil, events.Event{Type: events.RunCancelled}.WithBody(events.RunCancelledBody{Reason: "x"}),
			func() rs { s := with("cancelled"); s.Cause = "x"; return s }()},
		{"run_failed after run_succeeded is ignored", append(append([]events.Event{}, allSucceeded...), events.Event{Type: events.RunSucceeded}), runFailed, with("succeeded")},
		{"run_succeeded after run_cancelled is ignored", []events.Event{{Type: events.RunCancelled}}, events.Event{Type: events.RunSucceeded}, with("cancelled")},
		{"a second run_submitted is ignored", nil,
			events.Event{Type: events.RunSubmitted}.WithBody(events.RunSubmittedBody{Workflow: "other", Tasks: []events.TaskSpec{{ID: "z", Handler: "h"}}}), running},
		// A failed task does not end the run by itself: the projector
		// decides run_failed once every task is terminal.
		{"a final failure records the first failed task and the run goes on",
			[]events.Event{dispatched("a", 1), dispatched("c", 1), claimed("a", 1, 1, "w"), claimed("c", 1, 1, "w"), failed("c", 1, 1, "w", "c broke", true)},
			failed("a", 1, 1, "w", "a broke", true), rs{Status: "running", Workflow: "wf", Input: `{"in":1}`, FailedTask: "c", Cause: "c broke", Tasks: 3}},
		{"channel_written changes no state", nil,
			events.Event{Type: events.ChannelWritten}.WithBody(events.ChannelWrittenBody{Key: "k", Value: json.RawMessage(`1`)}), running},
		{"result_rejected changes no state", []events.Event{dispatched("a", 1), claimed("a", 1, 2, "w2")},
			events.Event{Type: events.ResultRejected, Task: "a", Attempt: 1, Epoch: 1, Worker: "w1"}.
				WithBody(events.ResultRejectedBody{What: "result", Reason: "claim lost", CurrentEpoch: 2}), running},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			evs := withSeqs("r", append(append([]events.Event{submitted(fixtureSpecs...)}, tt.history...), tt.event))
			r := fold(t, "r", evs)
			got := runStateOf(r)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("run (-want +got):\n%s", diff)
			}
			if r.Events != len(evs) {
				t.Errorf("Events = %d, want %d", r.Events, len(evs))
			}
		})
	}
}

func TestApplyNewRunDefaults(t *testing.T) {
	t.Parallel()
	r := fold(t, "r", withSeqs("r", []events.Event{submitted(fixtureSpecs...)}))
	want := []taskSnap{
		{Spec: events.TaskSpec{ID: "a", Handler: "h", Pool: "default", MaxAttempts: 2}, Status: "pending"},
		{Spec: events.TaskSpec{ID: "b", Handler: "h", Deps: []string{"a"}, Pool: "default", MaxAttempts: 1}, Status: "pending"},
		{Spec: events.TaskSpec{ID: "c", Handler: "h", Pool: "gpu", Priority: 5, MaxAttempts: 1}, Status: "pending"},
	}
	s := snapshot(r)
	if diff := cmp.Diff(want, s.Tasks); diff != "" {
		t.Errorf("tasks (-want +got):\n%s", diff)
	}
	if r.ID != "r" || r.Status != projector.RunRunning || r.Open() != 3 || r.LastSeq != "1-0" || r.Events != 1 {
		t.Errorf("run = id %q status %q open %d last %q events %d", r.ID, r.Status, r.Open(), r.LastSeq, r.Events)
	}
	if r.Task("nope") != nil {
		t.Error("Task(nope) != nil")
	}
}

func TestApplyInvalidEvents(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		history []events.Event
		event   events.Event
	}{
		{"an event for a task not in the run", nil, dispatched("zz", 1)},
		{"a task_succeeded body that does not decode", []events.Event{dispatched("a", 1), claimed("a", 1, 1, "w")},
			events.Event{Type: events.TaskSucceeded, Task: "a", Attempt: 1, Epoch: 1, Worker: "w", Body: json.RawMessage(`{"result":`)}},
		{"a task_failed body of the wrong shape", []events.Event{dispatched("a", 1), claimed("a", 1, 1, "w")},
			events.Event{Type: events.TaskFailed, Task: "a", Attempt: 1, Epoch: 1, Worker: "w", Body: json.RawMessage(`{"final":"yes"}`)}},
		{"tasks_added with an id already in the run", nil, tasksAdded(events.TaskSpec{ID: "x", Handler: "h"}, events.TaskSpec{ID: "a", Handler: "h"})},
		{"tasks_added with the same id twice", nil, tasksAdded(events.TaskSpec{ID: "x", Handler: "h"}, events.TaskSpec{ID: "x", Handler: "h"})},
		{"tasks_added with an unknown dependency", nil, tasksAdded(events.TaskSpec{ID: "x", Handler: "h"}, events.TaskSpec{ID: "y", Handler: "h", Deps: []string{"nope"}})},
		{"an event of a type the fold does not know", nil, events.Event{Type: "task_exploded", Task: "a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			evs := withSeqs("r", append(append([]events.Event{submitted(fixtureSpecs...)}, tt.history...), tt.event))
			r := fold(t, "r", evs[:len(evs)-1])
			before := snapshot(r)
			err := projector.Apply(r, evs[len(evs)-1])
			if !errors.Is(err, projector.ErrInvalidEvent) {
				t.Fatalf("Apply error = %v, want ErrInvalidEvent", err)
			}
			if diff := cmp.Diff(before, snapshot(r)); diff != "" {
				t.Errorf("an invalid event changed the run (-before +after):\n%s", diff)
			}
		})
	}
}

// An invalid run_submitted (one the scheduler would have rejected) is an
// invalid event and, like every invalid event, changes nothing.
func TestApplyInvalidRunSubmittedChangesNothing(t *testing.T) {
	t.Parallel()
	for name, e := range map[string]events.Event{
		"duplicate task ids": submitted(events.TaskSpec{ID: "a", Handler: "h"}, events.TaskSpec{ID: "a", Handler: "h"}),
		"unknown dependency": submitted(events.TaskSpec{ID: "a", Handler: "h", Deps: []string{"zz"}}),
		"body not decodable": {Type: events.RunSubmitted, Body: json.RawMessage(`{"tasks":{}}`)},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := projector.NewRun("r")
			before := snapshot(r)
			e.Seq = "1-0"
			if err := projector.Apply(r, e); !errors.Is(err, projector.ErrInvalidEvent) {
				t.Fatalf("Apply error = %v, want ErrInvalidEvent", err)
			}
			if diff := cmp.Diff(before, snapshot(r)); diff != "" {
				t.Errorf("an invalid run_submitted changed the run (-before +after):\n%s", diff)
			}
		})
	}
}

func TestApplyIgnoresEntriesNotAfterLastSeq(t *testing.T) {
	t.Parallel()
	evs := withSeqs("r", []events.Event{submitted(fixtureSpecs...), dispatched("a", 1), dispatched("c", 1)})
	r := fold(t, "r", []events.Event{evs[0], evs[2]})
	before := snapshot(r)
	// evs[1] (seq 2-0) arrives after 3-0 was folded: it is not new.
	if err := projector.Apply(r, evs[1]); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, snapshot(r)); diff != "" {
		t.Errorf("an entry before LastSeq was applied (-before +after):\n%s", diff)
	}
	// Seqs compare numerically, not as strings.
	late := dispatched("a", 1)
	late.Seq = "10-0"
	if err := projector.Apply(r, late); err != nil {
		t.Fatal(err)
	}
	if got := r.Task("a").Status; got != projector.TaskDispatched {
		t.Errorf("entry 10-0 after 3-0 not applied: a is %s", got)
	}
}

func TestApplyTasksAdded(t *testing.T) {
	t.Parallel()

	t.Run("new tasks get defaults and wait for their dependencies", func(t *testing.T) {
		t.Parallel()
		r := fold(t, "r", withSeqs("r", []events.Event{
			submitted(fixtureSpecs...), dispatched("a", 1), claimed("a", 1, 1, "w"),
			tasksAdded(events.TaskSpec{ID: "x", Handler: "h", Deps: []string{"a"}}, events.TaskSpec{ID: "y", Handler: "h", Deps: []string{"x", "c"}}),
		}))
		if len(r.Tasks) != 5 || r.Open() != 5 {
			t.Fatalf("tasks %d open %d, want 5 5", len(r.Tasks), r.Open())
		}
		if diff := cmp.Diff(events.TaskSpec{ID: "x", Handler: "h", Deps: []string{"a"}, Pool: "default", MaxAttempts: 1}, r.Task("x").Spec); diff != "" {
			t.Errorf("x spec (-want +got):\n%s", diff)
		}
		if err := projector.Apply(r, succeeded("a", 1, 1, "w", `1`)); err != nil {
			t.Fatal(err)
		}
		got := decisionsOf(projector.Decide(r, 0, testDelay))
		want := []string{"task_dispatched c 1", "task_dispatched b 1", "task_dispatched x 1"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("decisions (-want +got):\n%s", diff)
		}
	})

	t.Run("new tasks behind a failed task are skipped", func(t *testing.T) {
		t.Parallel()
		r := fold(t, "r", withSeqs("r", []events.Event{
			submitted(fixtureSpecs...), dispatched("c", 1), claimed("c", 1, 1, "w"), failed("c", 1, 1, "w", "boom", true),
			tasksAdded(events.TaskSpec{ID: "x", Handler: "h", Deps: []string{"c"}}),
		}))
		got := decisionsOf(projector.Decide(r, 0, testDelay))
		want := []string{"task_skipped x 0 (dependency c failed)", "task_dispatched a 1"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("decisions (-want +got):\n%s", diff)
		}
	})
}

// A re-delivered event without a Seq is a duplicate the fold cannot
// recognise by position; Run.Events documents "duplicates excluded".
func TestApplyDuplicateWithoutSeqIsNotCounted(t *testing.T) {
	t.Parallel()
	evs := withSeqs("r", []events.Event{submitted(fixtureSpecs...), dispatched("a", 1)})
	r := fold(t, "r", evs)
	dup := evs[1]
	dup.Seq = ""
	if err := projector.Apply(r, dup); err != nil {
		t.Fatal(err)
	}
	if r.Events != 2 {
		t.Errorf("Events = %d after a seq-less duplicate, want 2", r.Events)
	}
}

// tasks_added re-delivered without a Seq must be a no-op like every other
// duplicate, not an invalid event that quarantines the run.
func TestApplyTasksAddedDuplicateWithoutSeqIsIgnored(t *testing.T) {
	t.Parallel()
	add := tasksAdded(events.TaskSpec{ID: "x", Handler: "h", Deps: []string{"a"}})
	evs := withSeqs("r", []events.Event{submitted(fixtureSpecs...), add})
	r := fold(t, "r", evs)
	before := snapshot(r)
	dup := evs[1]
	dup.Seq = ""
	if err := projector.Apply(r, dup); err != nil {
		t.Fatalf("Apply of a duplicate tasks_added: %v", err)
	}
	after := snapshot(r)
	after.Events = before.Events // counted separately above
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("(-before +after):\n%s", diff)
	}
}

func TestCompareSeq(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b string
		want int
	}{
		{"1-0", "1-0", 0},
		{"1-0", "1-1", -1},
		{"1-1", "1-0", 1},
		{"9-9", "10-0", -1},
		{"10-0", "9-99", 1},
		{"1700000000000-10", "1700000000000-9", 1},
		{"18446744073709551615-0", "18446744073709551614-99", 1},
		{"5", "5-0", 0},
	}
	for _, tt := range tests {
		if got := projector.CompareSeq(tt.a, tt.b); got != tt.want {
			t.Errorf("CompareSeq(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := projector.CompareSeq(tt.b, tt.a); got != -tt.want {
			t.Errorf("CompareSeq(%q, %q) = %d, want %d", tt.b, tt.a, got, -tt.want)
		}
	}
}

func TestRecordOf(t *testing.T) {
	t.Parallel()
	task := &projector.Task{Status: projector.TaskRunning, Attempt: 2, Epoch: 5, Owner: "w-1", Error: "x", Result: json.RawMessage(`1`)}
	want := rdb.Record{Status: "running", Attempt: 2, Epoch: 5, Owner: "w-1"}
	if diff := cmp.Diff(want, projector.RecordOf(task)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if got := projector.RecordOf(task).String(); got != "running|2|5|w-1" {
		t.Errorf("String() = %q", got)
	}
}

func TestStatusTerminal(t *testing.T) {
	t.Parallel()
	for st, want := range map[projector.TaskStatus]bool{
		projector.TaskPending: false, projector.TaskDispatched: false, projector.TaskRunning: false, projector.TaskAwaitingRetry: false,
		projector.TaskSucceeded: true, projector.TaskFailed: true, projector.TaskSkipped: true, projector.TaskCancelled: true,
	} {
		if st.Terminal() != want {
			t.Errorf("%s.Terminal() = %v", st, !want)
		}
	}
	for st, want := range map[projector.RunStatus]bool{
		projector.RunUnknown: false, projector.RunRunning: false, projector.RunSucceeded: true, projector.RunFailed: true, projector.RunCancelled: true,
	} {
		if st.Terminal() != want {
			t.Errorf("run %q.Terminal() = %v", st, !want)
		}
	}
}

// decisionsOf renders decisions as "type task attempt (cause)" strings.
func decisionsOf(ds []events.Event) []string {
	var out []string
	for _, d := range ds {
		s := fmt.Sprintf("%s %s %d", d.Type, d.Task, d.Attempt)
		switch d.Type {
		case events.TaskSkipped:
			var b events.TaskSkippedBody
			_ = d.DecodeBody(&b)
			s += " (" + b.Cause + ")"
		case events.RunFailed:
			var b events.RunFailedBody
			_ = d.DecodeBody(&b)
			s += " (" + b.Task + ": " + b.Cause + ")"
		case events.TaskRetryScheduled:
			var b events.TaskRetryScheduledBody
			_ = d.DecodeBody(&b)
			s += fmt.Sprintf(" (delay %v)", time.Duration(b.DelayMS)*time.Millisecond)
		}
		out = append(out, s)
	}
	return out
}
