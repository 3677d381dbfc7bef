package replay

import (
	"fmt"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/graflow-go/graflow/projector"
)

// ReclaimReasonResumed is the reason of the task_reclaimed events a resume
// writes.
const ReclaimReasonResumed = "resumed: queue message lost"

// ResumeResult says what a resume did.
type ResumeResult struct {
	Run    string `json:"run"`
	Status string `json:"status"`
	// Reclaimed: running tasks whose queue message was gone. Each got a
	// task_reclaimed (epoch bumped, so a late result of the old claim is
	// fenced) and was re-dispatched.
	Reclaimed []ResumedTask `json:"reclaimed"`
	// Redispatched: dispatched tasks whose dispatch was nowhere; they were
	// put on their queue again.
	Redispatched []ResumedTask `json:"redispatched"`
	// Queued counts the dispatched or running tasks whose dispatch was
	// found, left alone.
	Queued int `json:"queued"`
	// Skipped: tasks whose live record differs from the fold ("graflow
	// replay verify" reports them); a resume does not touch them.
	Skipped []string `json:"skipped,omitempty"`
}

// ResumedTask is a task a resume re-dispatched.
type ResumedTask struct {
	Task    string `json:"task"`
	Attempt int    `json:"attempt"`
	// Epoch is the task's epoch after the resume; From and FromEpoch the
	// claim it took away (reclaims only).
	Epoch     int64  `json:"epoch"`
	From      string `json:"from,omitempty"`
	FromEpoch int64  `json:"from_epoch,omitempty"`
}

// ExpectedDispatch is a task attempt whose dispatch should be somewhere:
// the run's partition's delayed set or its pool's queue stream. Record is
// the task's live record, equal to the fold's.
type ExpectedDispatch struct {
	Task     string
	Attempt  int
	Pool     string
	Priority int
	Record   string
}

// ExpectedDispatches returns the dispatched or running tasks of r whose
// live record (in state, the state hash) equals the fold, and apart the
// ids of those whose record differs.
func ExpectedDispatches(r *projector.Run, state map[string]string) (want []ExpectedDispatch, differ []string) {
	for _, t := range r.Tasks {
		if t.Status != projector.TaskDispatched && t.Status != projector.TaskRunning {
			continue
		}
		rec := state[t.Spec.ID]
		if rec != projector.RecordOf(t).String() {
			differ = append(differ, t.Spec.ID)
			continue
		}
		want = append(want, ExpectedDispatch{Task: t.Spec.ID, Attempt: t.Attempt, Pool: t.Spec.Pool, Priority: t.Spec.Priority, Record: rec})
	}
	return want, differ
}

// Resume is the plan to put an unfinished run back to work where its queue
// messages are gone, typically after an import (queue messages are not
// part of an export):
//
//   - a dispatched task whose dispatch is in neither the delayed set nor
//     its queue stream is dispatched again (a retry keeps
//     its due time);
//   - a running task whose queue message is gone (so no reclaimer can
//     find it) gets a task_reclaimed event that bumps its epoch, fencing
//     whatever its old claim might still send, and is dispatched again;
//   - tasks ready or awaiting a retry are left to the projector.
//
// graflow.Client.Resume carries it out.
type Resume struct {
	// Result is filled as the plan is carried out (see Done).
	Result *ResumeResult
	// Run is the fold of the log; Submitted its first event.
	Run       *projector.Run
	Submitted events.Event
	// Want lists the tasks whose dispatch must be found (empty unless
	// the run is running).
	Want []ExpectedDispatch
	due  map[string]int64
}

// PlanResume folds evs, run's log up to the instant state (its live state
// hash) was read, and plans a resume. A run that is not running gets a
// plan with nothing to do. A live @status that differs from the fold is an
// error (verify first).
func PlanResume(run string, evs []events.Event, state map[string]string) (*Resume, error) {
	a, err := Analyze(run, evs)
	if err != nil {
		return nil, err
	}
	r := a.Run
	p := &Resume{Run: r, Submitted: evs[0], due: map[string]int64{},
		Result: &ResumeResult{Run: run, Status: string(r.Status), Reclaimed: []ResumedTask{}, Redispatched: []ResumedTask{}}}
	if r.Status != projector.RunRunning {
		return p, nil
	}
	if live := state[statehash.FieldRunStatus]; live != string(r.Status) {
		return nil, fmt.Errorf("run %s: live @status %q differs from the fold %q: run \"graflow replay verify %s\" first", run, live, r.Status, run)
	}
	p.Want, p.Result.Skipped = ExpectedDispatches(r, state)
	for _, tt := range a.Timeline.Tasks {
		if n := len(tt.Attempts); n > 0 && !tt.Attempts[n-1].DueAt.IsZero() {
			p.due[tt.ID] = tt.Attempts[n-1].DueAt.UnixMilli()
		}
	}
	return p, nil
}

// Redispatch is how one lost task is put back to work.
type Redispatch struct {
	Task ResumedTask
	// Reclaim is the task_reclaimed to append and Record the task's record
	// after it (a running task); both empty for a dispatched task.
	Reclaim *events.Event
	Record  string
	// DueMS is when the dispatch is due (a retry keeps its due time; 0:
	// now).
	DueMS int64
}

// Redispatch returns how to put w, a task of Want found nowhere, back to
// work at now; writer names the process and eventID is the new event's id.
func (p *Resume) Redispatch(w ExpectedDispatch, now time.Time, writer, eventID string) Redispatch {
	t := p.Run.Task(w.Task)
	rd := Redispatch{Task: ResumedTask{Task: w.Task, Attempt: t.Attempt, Epoch: t.Epoch}}
	if ms := p.due[w.Task]; ms > now.UnixMilli() {
		rd.DueMS = ms
	}
	if t.Status != projector.TaskRunning {
		return rd
	}
	rd.Task.From, rd.Task.FromEpoch, rd.Task.Epoch = t.Owner, t.Epoch, t.Epoch+1
	e := events.Event{ID: eventID, Run: p.Run.ID, Type: events.TaskReclaimed, Version: events.CurrentVersion,
		Task: w.Task, Attempt: t.Attempt, Epoch: rd.Task.Epoch, Worker: writer, Time: now}.
		WithBody(events.TaskReclaimedBody{From: t.Owner, Reason: ReclaimReasonResumed})
	rd.Reclaim = &e
	next := *t
	next.Status, next.Epoch, next.Owner = projector.TaskDispatched, rd.Task.Epoch, ""
	rd.Record = projector.RecordOf(&next).String()
	return rd
}

// Done records that rd was carried out.
func (p *Resume) Done(rd Redispatch) {
	if rd.Reclaim != nil {
		p.Result.Reclaimed = append(p.Result.Reclaimed, rd.Task)
	} else {
		p.Result.Redispatched = append(p.Result.Redispatched, rd.Task)
	}
}
