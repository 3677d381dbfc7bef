package replay

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
)

// Analysis is a run's log replayed from its first event: the folded state,
// the timeline, and the history invariants that the log breaks.
type Analysis struct {
	// Run is the state folded by projector.Apply.
	Run *projector.Run
	// Timeline is the run's history, task by task.
	Timeline *Timeline
	// Problems lists the history invariants the log breaks (Check
	// CheckHistory or CheckLog); empty for a sound history.
	Problems []Problem

	// adds are the events that added tasks (see Specs).
	adds []events.Event
	// signals are the signal_received events.
	signals []events.Event
	// seen maps an event's identity to its seq, to tell an event missing
	// from the log from one present but not applied.
	seen map[eventKey]string
	// lastOf maps (type, task) to the seq of the last such event, and
	// (type, "") to the last of any task.
	lastOf map[eventKey]string
}

type eventKey struct {
	typ     events.Type
	task    string
	attempt int
	epoch   int64
}

// track is what Analyze keeps per task besides the fold's own state.
type track struct {
	tl         *TaskTimeline
	maxEpoch   int64 // highest epoch of any claim or reclaim seen
	succeeded  int   // accepted task_succeeded events
	succIndex  int   // index of the accepted task_succeeded, -1 if none
	succEvent  events.Event
	problem    int // index in Problems of this task's first problem, -1 if none
	suppressed int // later problems of the task not reported
}

type analyzer struct {
	a      *Analysis
	r      *projector.Run
	tl     *Timeline
	tracks map[string]*track
	order  []*track
	prev   string // seq of the previous event
	// disorder counts events whose seq does not increase; the first is
	// reported at Problems[disorderAt].
	disorder, disorderAt int
	// added is the tasks_added whose spawner's task_succeeded must come
	// next, if any; spawned holds the tasks that spawned.
	added   *events.Event
	spawned map[string]bool
}

// Analyze replays evs, the log of run in log order, from the first event:
// it folds them with projector.Apply, the fold of the live projector, and
// checks every event against the state folded before it:
//
//   - run_submitted comes first, once; seqs increase;
//   - task_dispatched only for a pending task whose dependencies, and the
//     spawned tasks it waits for (projector.Task's Waits), all have an
//     accepted task_succeeded earlier in the log (the last of those is
//     the reason the task became ready); task_retry_scheduled only after a
//     failed attempt with attempts left;
//   - tasks_added only from the worker and epoch holding a running task's
//     claim, immediately followed by that claim's task_succeeded, with
//     dependencies outside the spawn only on tasks that succeeded and
//     spawned nothing (not the spawner);
//   - task_claimed / task_reclaimed carry an epoch strictly above every
//     earlier epoch of the task; task_claimed only for a dispatched task;
//   - task_succeeded, task_failed, task_timed_out, task_heartbeat and
//     channel_written only from the worker and epoch holding the claim,
//     and at most one accepted task_succeeded per task;
//   - task_skipped only behind a failed/skipped/cancelled dependency (or
//     spawned task it waits for);
//   - run_cancelled only while the run is running; task_cancelled only
//     after it, for a task not terminal, with an epoch above every
//     earlier epoch of the task (its worker is fenced);
//   - signal_received only while the run is running;
//   - run_succeeded only after every task succeeded (or failed with every
//     successor joining it tolerantly, and succeeded), run_failed only when
//     every task is terminal and one failed;
//   - no task is lost: a dispatched task is terminal, or dispatched,
//     running or awaiting a retry under its last attempt; a terminal run
//     has no task left that is not terminal.
//
// After a task's first problem, its later events are not reported again
// (they are usually consequences); the first problem says how many.
//
// Analyze is pure. It returns an error (wrapping projector.ErrInvalidEvent)
// only when the fold itself rejects an event; history problems are in
// Analysis.Problems.
func Analyze(run string, evs []events.Event) (*Analysis, error) {
	r := projector.NewRun(run)
	z := &analyzer{
		a:      &Analysis{Run: r, seen: make(map[eventKey]string, len(evs)), lastOf: map[eventKey]string{}},
		r:      r,
		tl:     &Timeline{Run: run, Workers: map[string]int{}},
		tracks: map[string]*track{},
	}
	z.a.Timeline = z.tl
	for i := range evs {
		if err := z.event(i, evs[i]); err != nil {
			return nil, err
		}
		if evs[i].Type == events.SignalReceived {
			z.a.signals = append(z.a.signals, evs[i])
		}
	}
	z.finish()
	return z.a, nil
}

func (z *analyzer) problem(p Problem) {
	if p.Check == "" {
		p.Check = CheckHistory
	}
	if p.Task != "" {
		if t := z.tracks[p.Task]; t != nil {
			if t.problem >= 0 {
				t.suppressed++
				return
			}
			t.problem = len(z.a.Problems)
		}
	}
	z.a.Problems = append(z.a.Problems, p)
}

func (z *analyzer) eventProblem(e events.Event, format string, args ...any) {
	z.problem(Problem{Task: e.Task, Seq: e.Seq, Event: string(e.Type), Detail: fmt.Sprintf(format, args...)})
}

// event checks e against the state before it, folds it, and records it in
// the timeline.
func (z *analyzer) event(i int, e events.Event) error {
	r := z.r
	if e.Seq != "" {
		if z.prev != "" && projector.CompareSeq(e.Seq, z.prev) <= 0 {
			if z.disorder == 0 {
				z.disorderAt = len(z.a.Problems)
				z.problem(Problem{Check: CheckLog, Seq: e.Seq, Event: string(e.Type),
					Detail: fmt.Sprintf("seq %s does not follow %s: the log is out of order or holds a duplicate (the fold ignores such events)", e.Seq, z.prev)})
			}
			z.disorder++
		}
		if r.LastSeq != "" && projector.CompareSeq(e.Seq, r.LastSeq) <= 0 {
			return projector.Apply(r, e) // ignored by the fold: not checked either
		}
		z.prev = e.Seq
	}
	z.a.seen[eventKey{e.Type, e.Task, e.Attempt, e.Epoch}] = e.Seq
	z.a.lastOf[eventKey{typ: e.Type, task: e.Task}] = e.Seq
	z.a.lastOf[eventKey{typ: e.Type}] = e.Seq // of any task
	if e.Type != events.RunSubmitted && r.Status == projector.RunUnknown {
		z.problem(Problem{Check: CheckLog, Seq: e.Seq, Event: string(e.Type), Task: e.Task,
			Detail: "event before run_submitted: the run's first event is missing"})
	}

	var tr *track
	var pre projector.Task
	if t := r.Task(e.Task); t != nil && e.Task != "" {
		tr, pre = z.tracks[e.Task], *t
	}
	z.checkAddedThenSucceeded(e)
	switch e.Type {
	case events.TasksAdded:
		z.checkAdded(e)
	case events.RunSubmitted:
		if i != 0 || r.Status != projector.RunUnknown {
			z.eventProblem(e, "run_submitted is not the run's first event (the fold ignores it)")
		}
	case events.TaskDispatched:
		z.checkDispatch(e, tr, pre)
	case events.TaskRetryScheduled:
		if tr != nil {
			switch {
			case pre.Status != projector.TaskAwaitingRetry:
				z.eventProblem(e, "retry of %s attempt %d while the task is %s, not awaiting a retry", e.Task, e.Attempt, pre.Status)
			case e.Attempt != pre.Attempt+1:
				z.eventProblem(e, "retry as attempt %d after attempt %d", e.Attempt, pre.Attempt)
			case e.Attempt > pre.Spec.MaxAttempts:
				z.eventProblem(e, "retry as attempt %d exceeds max attempts %d", e.Attempt, pre.Spec.MaxAttempts)
			}
		}
	case events.TaskClaimed, events.TaskReclaimed:
		if tr != nil {
			ok := pre.Status == projector.TaskDispatched
			if e.Type == events.TaskReclaimed {
				ok = ok || pre.Status == projector.TaskRunning
			}
			switch {
			case e.Epoch <= tr.maxEpoch:
				z.eventProblem(e, "epoch %d of %s does not increase (epoch %d was already used): fencing is broken", e.Epoch, e.Task, tr.maxEpoch)
			case !ok && pre.Status == projector.TaskRunning:
				z.eventProblem(e, "%s claimed by %s at epoch %d while %s holds it at epoch %d without a task_reclaimed", e.Task, e.Worker, e.Epoch, pre.Owner, pre.Epoch)
			case !ok:
				z.eventProblem(e, "%s of %s while the task is %s", e.Type, e.Task, pre.Status)
			case e.Attempt != pre.Attempt:
				z.eventProblem(e, "%s for attempt %d while the task is at attempt %d", e.Type, e.Attempt, pre.Attempt)
			}
			tr.maxEpoch = max(tr.maxEpoch, e.Epoch)
		}
	case events.TaskSucceeded, events.TaskFailed, events.TaskTimedOut, events.TaskHeartbeat, events.ChannelWritten:
		if tr != nil {
			z.checkHolder(e, tr, pre)
		} else if e.Type == events.ChannelWritten {
			z.eventProblem(e, "channel_written by %q, which is no task of the run: only a task holding its claim writes the channel", e.Task)
		}
	case events.TaskSkipped:
		if tr != nil {
			z.checkSkip(e, pre)
		}
	case events.TaskRequeued:
		if tr != nil && pre.Status != projector.TaskFailed && pre.Status != projector.TaskSkipped {
			z.eventProblem(e, "task_requeued of %s while it is %s: only a failed or skipped task can be requeued", e.Task, pre.Status)
		}
	case events.TaskCancelled:
		switch {
		case tr == nil:
		case r.Status != projector.RunCancelled:
			z.eventProblem(e, "task_cancelled of %s while the run is %s: only a run's cancel cancels its tasks", e.Task, r.Status)
		case pre.Status.Terminal():
			z.eventProblem(e, "task_cancelled of %s while it is %s", e.Task, pre.Status)
		case e.Epoch <= tr.maxEpoch:
			z.eventProblem(e, "task_cancelled of %s at epoch %d does not move the epoch on (epoch %d was already used): its worker is not fenced", e.Task, e.Epoch, tr.maxEpoch)
		}
		if tr != nil {
			tr.maxEpoch = max(tr.maxEpoch, e.Epoch)
		}
	case events.RunCancelled:
		if r.Status != projector.RunRunning {
			z.eventProblem(e, "run_cancelled while the run is %s", r.Status)
		}
	case events.SignalReceived:
		if r.Status != projector.RunRunning {
			z.eventProblem(e, "signal_received while the run is %s: only a running run takes signals", r.Status)
		}
	case events.ResultRejected:
		if tr != nil && pre.Status == projector.TaskRunning && pre.Attempt == e.Attempt && pre.Epoch == e.Epoch && pre.Owner == e.Worker {
			z.eventProblem(e, "result_rejected although %s held the claim (attempt %d, epoch %d)", e.Worker, e.Attempt, e.Epoch)
		}
	case events.RunSucceeded:
		if r.Status == projector.RunRunning {
			for _, t := range r.Tasks {
				if t.Status != projector.TaskSucceeded && !(t.Status == projector.TaskFailed && r.Absorbed(t)) {
					z.problem(Problem{Seq: e.Seq, Event: string(e.Type), Task: t.Spec.ID, Missing: missingFor(t),
						Detail: fmt.Sprintf("run_succeeded while task %s is %s", t.Spec.ID, t.Status)})
					break
				}
			}
		}
	case events.RunFailed:
		if r.Status == projector.RunRunning {
			failed := false
			for _, t := range r.Tasks {
				if !t.Status.Terminal() {
					z.problem(Problem{Seq: e.Seq, Event: string(e.Type), Task: t.Spec.ID,
						Detail: fmt.Sprintf("run_failed while task %s is still %s", t.Spec.ID, t.Status)})
					failed = true
					break
				}
				failed = failed || t.Status == projector.TaskFailed
			}
			if !failed {
				z.eventProblem(e, "run_failed although no task failed")
			}
		}
	}

	if err := projector.Apply(r, e); err != nil {
		return err
	}
	z.record(i, e, tr, pre)
	return nil
}

// missingFor names the event a task's success needs.
func missingFor(t *projector.Task) string {
	switch t.Status {
	case projector.TaskRunning:
		return fmt.Sprintf("task_succeeded task=%s attempt=%d epoch=%d worker=%s", t.Spec.ID, t.Attempt, t.Epoch, t.Owner)
	}
	return ""
}

func (z *analyzer) checkDispatch(e events.Event, tr *track, pre projector.Task) {
	if tr == nil {
		return
	}
	switch {
	case pre.Status != projector.TaskPending:
		z.eventProblem(e, "second dispatch of %s (attempt %d) while the task is %s at attempt %d", e.Task, e.Attempt, pre.Status, pre.Attempt)
		return
	case e.Attempt != pre.Attempt+1:
		z.eventProblem(e, "dispatch of %s as attempt %d, want %d", e.Task, e.Attempt, pre.Attempt+1)
		return
	case !pre.Spec.Join.Strict():
		if !z.r.Ready(z.r.Task(e.Task)) {
			z.eventProblem(e, "task_dispatched of %s is not justified: its join policy (%s) is not met", e.Task, pre.Spec.Join.Policy)
		}
		return
	}
	for _, d := range upstreamOf(&pre) {
		dt := z.r.Task(d)
		if dt == nil || dt.Status == projector.TaskSucceeded {
			continue
		}
		what := "dependency"
		if !slices.Contains(pre.Spec.Deps, d) {
			what = "spawned task"
		}
		p := Problem{Task: e.Task, Seq: e.Seq, Event: string(e.Type),
			Detail: fmt.Sprintf("task_dispatched of %s is not justified: %s %s has no accepted task_succeeded before it (%s is %s at that point)", e.Task, what, d, d, dt.Status)}
		if dt.Status == projector.TaskRunning {
			p.Missing = fmt.Sprintf("task_succeeded task=%s attempt=%d epoch=%d worker=%s", d, dt.Attempt, dt.Epoch, dt.Owner)
		} else {
			p.Missing = "task_succeeded task=" + d
		}
		z.problem(p)
		return
	}
}

func (z *analyzer) checkHolder(e events.Event, tr *track, pre projector.Task) {
	what := strings.TrimPrefix(string(e.Type), "task_")
	switch {
	case e.Type == events.TaskSucceeded && pre.Status == projector.TaskSucceeded:
		z.eventProblem(e, "second task_succeeded of %s (attempt %d, epoch %d, worker %s): only one result may be accepted", e.Task, e.Attempt, e.Epoch, e.Worker)
	case pre.Status != projector.TaskRunning:
		z.eventProblem(e, "%s of %s from %s (attempt %d, epoch %d) while the task is %s: only the claim holder may report", what, e.Task, e.Worker, e.Attempt, e.Epoch, pre.Status)
	case e.Attempt != pre.Attempt || e.Epoch != pre.Epoch || e.Worker != pre.Owner:
		z.eventProblem(e, "%s of %s from %s (attempt %d, epoch %d) but the claim is held by %s (attempt %d, epoch %d): a stale report was accepted", what, e.Task, e.Worker, e.Attempt, e.Epoch, pre.Owner, pre.Attempt, pre.Epoch)
	}
}

func (z *analyzer) checkSkip(e events.Event, pre projector.Task) {
	if pre.Status != projector.TaskPending {
		z.eventProblem(e, "task_skipped of %s while it is %s", e.Task, pre.Status)
		return
	}
	if !pre.Spec.Join.Strict() {
		if !z.r.Dead(z.r.Task(e.Task)) {
			z.eventProblem(e, "task_skipped of %s although its join policy (%s) can still be met", e.Task, pre.Spec.Join.Policy)
		}
		return
	}
	for _, d := range upstreamOf(&pre) {
		if dt := z.r.Task(d); dt != nil {
			switch dt.Status {
			case projector.TaskFailed, projector.TaskSkipped, projector.TaskCancelled:
				return
			}
		}
	}
	z.eventProblem(e, "task_skipped of %s but none of its dependencies failed, was skipped or cancelled (nor a spawned task it waits for)", e.Task)
}

// record adds the folded event to the timeline.
func (z *analyzer) record(i int, e events.Event, tr *track, pre projector.Task) {
	r, tl := z.r, z.tl
	tl.Events = r.Events
	tl.LastSeq = r.LastSeq
	switch e.Type {
	case events.RunSubmitted, events.TasksAdded:
		if e.Type == events.RunSubmitted && tl.SubmittedAt.IsZero() {
			tl.SubmittedAt = e.Time
		}
		added := r.Tasks[len(z.order):]
		if len(added) == 0 {
			return // the fold ignored it (a second run_submitted)
		}
		z.a.adds = append(z.a.adds, e)
		tl.Tasks = slices.Grow(tl.Tasks, len(added))
		for _, t := range added {
			tt := TaskTimeline{ID: t.Spec.ID, Handler: t.Spec.Handler, Deps: t.Spec.Deps, Pool: t.Spec.Pool,
				Priority: t.Spec.Priority, MaxAttempts: t.Spec.MaxAttempts}
			if len(t.Spec.Deps) == 0 {
				tt.Ready = &Unlock{Reason: "no dependencies", EventID: e.ID, Seq: e.Seq, At: e.Time}
			}
			tl.Tasks = append(tl.Tasks, tt)
			k := &track{succIndex: -1, problem: -1}
			z.tracks[t.Spec.ID] = k
			z.order = append(z.order, k)
		}
		for j, k := range z.order { // tl.Tasks may have moved
			k.tl = &tl.Tasks[j]
		}
		return
	case events.RunSucceeded, events.RunFailed, events.RunCancelled, events.RunQuarantined:
		if r.Status.Terminal() && tl.EndedAt.IsZero() {
			tl.EndedAt = e.Time
		}
		return
	}
	if tr == nil {
		return
	}
	tt := tr.tl
	switch e.Type {
	case events.TaskDispatched, events.TaskRetryScheduled:
		at := &Attempt{Number: e.Attempt, Kind: "dispatch", DispatchedAt: e.Time, Outcome: "dispatched", Seq: e.Seq}
		if e.Type == events.TaskDispatched && pre.Attempt > 0 {
			at.Kind = "requeue"
		}
		if e.Type == events.TaskRetryScheduled {
			var b events.TaskRetryScheduledBody
			_ = e.DecodeBody(&b)
			at.Kind = "retry"
			if b.DueMS > 0 {
				at.DueAt = msTime(b.DueMS)
			}
			tt.Retries++
			tl.Retries++
		} else {
			var b events.TaskDispatchedBody
			if _ = e.DecodeBody(&b); b.DueMS > 0 { // a delayed start
				at.DueAt = msTime(b.DueMS)
			}
			if len(tt.Deps)+len(pre.Waits) > 0 && pre.Status == projector.TaskPending {
				tt.Ready = z.unlock(upstreamOf(&pre))
			}
		}
		tt.Attempts = append(tt.Attempts, *at)
	case events.TaskClaimed:
		at := tt.attempt(e.Attempt)
		at.Claims = append(at.Claims, Claim{Epoch: e.Epoch, Worker: e.Worker, At: e.Time, Seq: e.Seq})
		at.Worker, at.Epoch, at.ClaimedAt, at.Outcome = e.Worker, e.Epoch, e.Time, "running"
		tl.Workers[e.Worker]++
	case events.TaskReclaimed:
		var b events.TaskReclaimedBody
		_ = e.DecodeBody(&b)
		at := tt.attempt(e.Attempt)
		at.Reclaims = append(at.Reclaims, Reclaim{Epoch: e.Epoch, From: b.From, By: e.Worker, Deliveries: b.Deliveries,
			Reason: b.Reason, At: e.Time, Seq: e.Seq})
		at.Outcome = "dispatched"
		tt.Reclaims++
		tl.Reclaims++
	case events.TaskHeartbeat:
		tt.attempt(e.Attempt).Heartbeats++
	case events.ChannelWritten:
		tt.attempt(e.Attempt).ChannelWrites++
	case events.TaskSucceeded, events.TaskFailed, events.TaskTimedOut:
		t := r.Task(e.Task)
		if t.Status == pre.Status && t.Attempt == pre.Attempt {
			return // not applied (reported above)
		}
		at := tt.attempt(e.Attempt)
		at.FinishedAt = e.Time
		switch e.Type {
		case events.TaskSucceeded:
			at.Outcome = "succeeded"
			tr.succeeded++
			tr.succIndex, tr.succEvent = i, e
		default:
			var b events.TaskFailedBody
			_ = e.DecodeBody(&b)
			at.Outcome, at.Error, at.FailureKind = strings.TrimPrefix(string(e.Type), "task_"), b.Error, string(b.Kind)
		}
	case events.TaskSkipped:
		var b events.TaskSkippedBody
		_ = e.DecodeBody(&b)
		tt.SkipCause, tt.SkippedAt = b.Cause, e.Time
	case events.TaskRequeued:
		if t := r.Task(e.Task); t.Status == projector.TaskPending && pre.Status != projector.TaskPending {
			var b events.TaskRequeuedBody
			_ = e.DecodeBody(&b)
			tt.Requeues = append(tt.Requeues, Requeue{From: string(pre.Status), Cause: b.Cause, By: e.Worker, At: e.Time, Seq: e.Seq})
			tt.SkipCause, tt.SkippedAt = "", time.Time{}
			tl.Requeues++
			tl.EndedAt = time.Time{}
		}
	case events.TaskCancelled:
		if n := len(tt.Attempts); n > 0 && !tt.Attempts[n-1].done() {
			tt.Attempts[n-1].Outcome, tt.Attempts[n-1].FinishedAt = "cancelled", e.Time
		}
	case events.ResultRejected:
		var b events.ResultRejectedBody
		_ = e.DecodeBody(&b)
		tt.Rejected = append(tt.Rejected, Rejection{What: b.What, Reason: b.Reason, Worker: e.Worker, Attempt: e.Attempt,
			Epoch: e.Epoch, CurrentEpoch: b.CurrentEpoch, At: e.Time, Seq: e.Seq})
		tl.Rejected++
	}
}

// unlock names the dependency whose accepted success came last.
func (z *analyzer) unlock(deps []string) *Unlock {
	var best *track
	for _, d := range deps {
		if t := z.tracks[d]; t != nil && t.succIndex >= 0 && (best == nil || t.succIndex > best.succIndex) {
			best = t
		}
	}
	if best == nil {
		return nil
	}
	e := best.succEvent
	return &Unlock{By: best.tl.ID, Reason: "dependency " + best.tl.ID + " succeeded", EventID: e.ID, Seq: e.Seq, At: e.Time}
}

// finish runs the end-of-log checks and completes the timeline.
func (z *analyzer) finish() {
	r, tl := z.r, z.tl
	if z.added != nil {
		e := *z.added
		z.problem(Problem{Task: e.Task, Seq: e.Seq, Event: string(e.Type), Missing: fmt.Sprintf("task_succeeded task=%s attempt=%d epoch=%d worker=%s", e.Task, e.Attempt, e.Epoch, e.Worker),
			Detail: fmt.Sprintf("tasks_added by %s is the log's last event: its task_succeeded must follow it", e.Task)})
	}
	tl.Workflow, tl.Status, tl.FailedTask, tl.Cause = r.Workflow, string(r.Status), r.FailedTask, r.Cause
	if !tl.EndedAt.IsZero() && !tl.SubmittedAt.IsZero() {
		tl.DurationMS = ptr(tl.EndedAt.Sub(tl.SubmittedAt).Milliseconds())
	}
	for i, k := range z.order {
		t, tt := r.Tasks[i], k.tl
		tt.Status, tt.Attempt, tt.Epoch, tt.Owner = string(t.Status), t.Attempt, t.Epoch, t.Owner
		tt.Error, tt.Result = t.Error, t.Result
		for j := range tt.Attempts {
			tt.Attempts[j].durations()
		}
		// No task lost: a task that was dispatched is terminal or still
		// held (queued, running, or awaiting its retry) at its last attempt.
		last := 0
		if n := len(tt.Attempts); n > 0 {
			last = tt.Attempts[n-1].Number
		}
		switch {
		case r.Status.Terminal() && !t.Status.Terminal():
			z.problem(Problem{Task: t.Spec.ID, Field: "status", Replayed: string(t.Status), Missing: missingFor(t),
				Detail: fmt.Sprintf("task %s is %s but the run %s: a task was lost", t.Spec.ID, t.Status, r.Status)})
		case last > 0 && !t.Status.Terminal() && t.Attempt != last:
			z.problem(Problem{Task: t.Spec.ID, Field: "attempt", Replayed: fmt.Sprint(t.Attempt),
				Detail: fmt.Sprintf("task %s was dispatched as attempt %d but is %s at attempt %d: a task was lost", t.Spec.ID, last, t.Status, t.Attempt)})
		}
	}
	if z.disorder > 1 {
		z.a.Problems[z.disorderAt].Detail += fmt.Sprintf(" (%d such events in all)", z.disorder)
	}
	for _, k := range z.order {
		if k.suppressed > 0 && k.problem >= 0 {
			z.a.Problems[k.problem].Detail += fmt.Sprintf(" (%d later problem(s) of this task not reported)", k.suppressed)
		}
	}
}

// upstreamOf is what t waits for: its dependencies, then its Waits.
func upstreamOf(t *projector.Task) []string {
	if len(t.Waits) == 0 {
		return t.Spec.Deps
	}
	return append(slices.Clip(t.Spec.Deps), t.Waits...)
}

// checkAdded checks a tasks_added against the state before it: written
// by the claim holder of a running task (its spawner), whose spawned
// tasks depend outside the spawn only on tasks that succeeded and spawned
// nothing. The spawner's task_succeeded must come next.
func (z *analyzer) checkAdded(e events.Event) {
	t := z.r.Task(e.Task)
	switch {
	case e.Task == "":
		z.eventProblem(e, "tasks_added written by no task: tasks are only added by a running task, with its success")
		return
	case t == nil:
		z.eventProblem(e, "tasks_added by %s, which is not a task of the run", e.Task)
		return
	case t.Status != projector.TaskRunning:
		z.eventProblem(e, "tasks_added by %s (attempt %d, epoch %d, worker %s) while the task is %s: only the claim holder of a running task may spawn", e.Task, e.Attempt, e.Epoch, e.Worker, t.Status)
		return
	case e.Attempt != t.Attempt || e.Epoch != t.Epoch || e.Worker != t.Owner:
		z.eventProblem(e, "tasks_added by %s from %s (attempt %d, epoch %d) but the claim is held by %s (attempt %d, epoch %d): a stale spawn was accepted", e.Task, e.Worker, e.Attempt, e.Epoch, t.Owner, t.Attempt, t.Epoch)
		return
	}
	ev := e
	z.added = &ev
	var b events.TasksAddedBody
	if e.DecodeBody(&b) != nil {
		return // the fold reports it
	}
	inner := map[string]bool{}
	for _, s := range b.Tasks {
		inner[s.ID] = true
	}
	for _, s := range b.Tasks {
		for _, d := range s.Deps {
			if inner[d] {
				continue
			}
			dt := z.r.Task(d)
			switch {
			case d == e.Task:
				z.eventProblem(e, "spawned task %s depends on its spawner %s", s.ID, d)
			case dt == nil:
				// The fold rejects the event.
			case dt.Status != projector.TaskSucceeded:
				z.eventProblem(e, "spawned task %s depends on %s, which is %s: a spawned task may depend only on tasks of its spawn and on tasks that succeeded", s.ID, d, dt.Status)
			case z.spawned[d]:
				z.eventProblem(e, "spawned task %s depends on %s, which spawned tasks itself", s.ID, d)
			default:
				continue
			}
			return
		}
	}
}

// checkAddedThenSucceeded checks that the event after a tasks_added is
// its spawner's task_succeeded from the same claim, and records the
// spawn.
func (z *analyzer) checkAddedThenSucceeded(e events.Event) {
	a := z.added
	if a == nil {
		return
	}
	z.added = nil
	if e.Type != events.TaskSucceeded || e.Task != a.Task || e.Attempt != a.Attempt || e.Epoch != a.Epoch || e.Worker != a.Worker {
		z.problem(Problem{Task: a.Task, Seq: a.Seq, Event: string(a.Type), Missing: fmt.Sprintf("task_succeeded task=%s attempt=%d epoch=%d worker=%s", a.Task, a.Attempt, a.Epoch, a.Worker),
			Detail: fmt.Sprintf("tasks_added by %s is followed by %s of %q, not by its own task_succeeded: a spawn is written with its spawner's success", a.Task, e.Type, e.Task)})
		return
	}
	if z.spawned == nil {
		z.spawned = map[string]bool{}
	}
	z.spawned[a.Task] = true
}

// Specs returns the task specs exactly as submitted (run_submitted, then
// tasks_added, in log order), without the defaults the fold fills in; the
// dag hash holds rdb.MetaOf of these.
func (a *Analysis) Specs() []events.TaskSpec {
	var out []events.TaskSpec
	for _, e := range a.adds {
		if e.Type == events.RunSubmitted {
			var b events.RunSubmittedBody
			_ = e.DecodeBody(&b)
			out = append(out, b.Tasks...)
		} else {
			var b events.TasksAddedBody
			_ = e.DecodeBody(&b)
			out = append(out, b.Tasks...)
		}
	}
	return out
}

func ptr[T any](v T) *T { return &v }
