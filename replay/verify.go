package replay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/graflow-go/graflow/projector"
)

// Check names a family of verifications.
type Check string

// Checks run by Verify.
const (
	// CheckLog: the log decodes, starts with run_submitted, is in order,
	// folds, and had no entry deleted.
	CheckLog Check = "log"
	// CheckHistory: the invariants over the events (see Analyze).
	CheckHistory Check = "history"
	// CheckState: every task record and @status/@workflow of the live
	// state hash equal the fold.
	CheckState Check = "state"
	// CheckResults: the results (@r:<task>, @input) hold exactly the accepted results
	// and the run input.
	CheckResults Check = "results"
	// CheckDAG: the metadata (@g:<task>) holds every task's as submitted.
	CheckDAG Check = "dag"
	// CheckProjection: @cursor is inside the log, and events after it
	// that call for a decision are flagged by @dirty.
	CheckProjection Check = "projection"
	// CheckQueue: for a running run, every dispatched or running task has
	// its dispatch in the delayed set or its queue stream.
	CheckQueue Check = "queue"
	// CheckLogOnly, for a run without a state hash: the run
	// succeeded and nothing but rejections follows its run_succeeded (a
	// succeeded run's end keeps only its log; its state is the fold).
	CheckLogOnly Check = "log_only"
)

// Problem is one thing Verify or Analyze found wrong. Task, Field, Seq and
// Missing say precisely where.
type Problem struct {
	Check Check  `json:"check"`
	Task  string `json:"task,omitempty"`
	// Field is the state field (status, attempt, epoch, owner, @status,
	// @workflow, result, ...) that differs.
	Field string `json:"field,omitempty"`
	// Seq and Event identify the log entry concerned.
	Seq   string `json:"seq,omitempty"`
	Event string `json:"event,omitempty"`
	// Live and Replayed are the differing values.
	Live     string `json:"live,omitempty"`
	Replayed string `json:"replayed,omitempty"`
	// Missing names the event the log should hold to explain the state.
	Missing string `json:"missing,omitempty"`
	Detail  string `json:"detail"`
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(string(p.Check))
	if p.Task != "" {
		b.WriteString(": task " + p.Task)
	}
	if p.Field != "" {
		b.WriteString(": " + p.Field)
	}
	if p.Seq != "" {
		b.WriteString(" @" + p.Seq)
	}
	b.WriteString(": " + p.Detail)
	if p.Live != "" || p.Replayed != "" {
		fmt.Fprintf(&b, " (live %q, replayed %q)", p.Live, p.Replayed)
	}
	if p.Missing != "" {
		b.WriteString("; missing event: " + p.Missing)
	}
	return b.String()
}

// Report is the outcome of verifying one run.
type Report struct {
	Run       string `json:"run"`
	Namespace string `json:"namespace"`
	// Status is the folded run status; LiveStatus the state hash's.
	Status     string `json:"status"`
	LiveStatus string `json:"live_status"`
	Tasks      int    `json:"tasks"`
	Events     int    `json:"events"`
	LastSeq    string `json:"last_seq"`
	// Cursor is the projector's @cursor; Behind counts the events after it.
	Cursor string `json:"cursor"`
	Behind int    `json:"behind"`
	// Checks lists what was verified.
	Checks   []Check   `json:"checks"`
	Problems []Problem `json:"problems"`

	run *projector.Run // the fold, for AddLost
}

// OK reports whether every check passed.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// Err returns nil when every check passed, else a *VerifyError.
func (r *Report) Err() error {
	if r.OK() {
		return nil
	}
	return &VerifyError{Run: r.Run, Problems: r.Problems}
}

// VerifyError lists the problems of a run; it wraps ErrVerifyFailed.
type VerifyError struct {
	Run      string
	Problems []Problem
}

func (e *VerifyError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = "  " + p.String()
	}
	return fmt.Sprintf("run %s: %d problem(s):\n%s", e.Run, len(e.Problems), strings.Join(lines, "\n"))
}

func (e *VerifyError) Unwrap() error { return ErrVerifyFailed }

// Live is a run's live projection, read in one transaction: its state
// hash split into records and run fields, results and metadata
// (rdb.SplitState; field → value) and the id of its log's last
// entry at that instant. Added, Length and MaxDeleted are the log's
// counters (entries ever added, entries now, the last deleted id) when
// known (Added 0: unknown).
type Live struct {
	State, Results, DAG map[string]string
	LastSeq             string
	Added, Length       int64
	MaxDeleted          string
	// Now is when the hashes were read: a stored result may be gone
	// once its result TTL passed by then (zero: any time).
	Now time.Time
}

// Undecodable is a log entry that does not decode.
type Undecodable struct {
	Seq string
	Err error
}

// Verify rebuilds run's state from evs, its log's entries that decode
// (bad lists those that do not), and compares it, field by field, with
// live, the live projection, then checks the history invariants.
//
// It may run at any time, not only on a quiescent run: the worker scripts
// and the projector's commits change a task record in the same atomic step
// as they append its event, so the records must equal the fold of the log
// up to any point. The caller reads the live hashes and the log's last id
// in one transaction; Verify folds the log up to that id (the log is
// append-only, so entries after it are ignored).
//
// The report's problems name the run, task, field and, where the log lacks
// an event the live state implies, the missing event. For a running run it
// also returns the dispatches that must be somewhere (delayed set,
// queue): the caller looks for them and reports the lost ones with
// Report.AddLost.
func Verify(run, namespace string, live Live, evs []events.Event, bad []Undecodable) (*Report, []ExpectedDispatch) {
	rep := &Report{Run: run, Namespace: namespace, LiveStatus: live.State[statehash.FieldRunStatus],
		Cursor: live.State[statehash.FieldRunCursor], LastSeq: live.LastSeq, Problems: []Problem{}}
	rep.Checks = append(rep.Checks, CheckLog)
	if live.LastSeq == "" {
		rep.Problems = append(rep.Problems, Problem{Check: CheckLog, Missing: "run_submitted",
			Detail: "the run has live state but an empty log: every event is missing"})
		return rep, nil
	}
	if live.Added > live.Length {
		rep.Problems = append(rep.Problems, Problem{Check: CheckLog, Seq: live.MaxDeleted,
			Detail: fmt.Sprintf("%s deleted from the log (entries added %d, length %d, last deleted id %s): the log is not the whole history",
				plural(live.Added-live.Length, "entry", "entries"), live.Added, live.Length, live.MaxDeleted)})
	}
	if len(bad) > 0 {
		// Every entry that does not decode, not just the first.
		for _, b := range bad {
			detail := "entry does not decode: " + b.Err.Error()
			var de *events.DecodeError
			if errors.As(b.Err, &de) {
				detail = "entry does not decode: " + de.Err.Error()
			}
			rep.Problems = append(rep.Problems, Problem{Check: CheckLog, Seq: b.Seq, Detail: detail})
		}
		return rep, nil
	}
	evs = upTo(evs, live.LastSeq)
	a, err := Analyze(run, evs)
	if err != nil {
		p := Problem{Check: CheckLog, Detail: "the fold rejects an event: " + err.Error()}
		rep.Problems = append(rep.Problems, p)
		return rep, nil
	}
	r := a.Run
	rep.run = r
	rep.Status, rep.Tasks, rep.Events = string(r.Status), len(r.Tasks), r.Events
	rep.Checks = append(rep.Checks, CheckHistory)
	rep.Problems = append(rep.Problems, a.Problems...)

	if len(live.State) == 0 && len(live.Results) == 0 && len(live.DAG) == 0 {
		rep.Checks = append(rep.Checks, CheckLogOnly)
		rep.Problems = append(rep.Problems, checkLogOnly(r, evs)...)
		return rep, nil
	}
	rep.Checks = append(rep.Checks, CheckState, CheckResults, CheckDAG, CheckProjection)
	rep.Problems = append(rep.Problems, compareState(a, live)...)
	rep.Problems = append(rep.Problems, compareSpawns(a, live)...)
	rep.Problems = append(rep.Problems, compareTaskCount(a, live)...)
	rep.Problems = append(rep.Problems, compareSignals(a, live)...)
	rep.Problems = append(rep.Problems, compareResults(a, live)...)
	rep.Problems = append(rep.Problems, compareDAG(a, live)...)
	pp, behind := checkProjection(evs, live, r)
	rep.Behind = behind
	rep.Problems = append(rep.Problems, pp...)

	if r.Status != projector.RunRunning || live.State[statehash.FieldRunQuarantine] != "" {
		return rep, nil
	}
	rep.Checks = append(rep.Checks, CheckQueue)
	want, _ := ExpectedDispatches(r, live.State) // the others are state problems, reported already
	return rep, want
}

// checkLogOnly checks a run that has a log but no state, results or dag
// hash: only a succeeded run's end deletes them, and nothing but a
// rejection may follow its run_succeeded.
func checkLogOnly(r *projector.Run, evs []events.Event) []Problem {
	if r.Status != projector.RunSucceeded {
		return []Problem{{Check: CheckLogOnly, Field: statehash.FieldRunStatus,
			Detail: fmt.Sprintf("the run has a log but no state hash, and its fold is %s: only a succeeded run's end deletes it", r.Status)}}
	}
	var out []Problem
	for i := len(evs) - 1; i >= 0 && evs[i].Type != events.RunSucceeded; i-- {
		if evs[i].Type != events.ResultRejected {
			out = append(out, Problem{Check: CheckLogOnly, Seq: evs[i].Seq,
				Detail: fmt.Sprintf("%s after run_succeeded in a run whose state is gone: nothing but a rejection may follow a log-only run's end", evs[i].Type)})
		}
	}
	return out
}

// AddLost reports the dispatches of lost (returned by Verify) as lost;
// queue names the queue stream of a pool and priority band.
func (r *Report) AddLost(lost []ExpectedDispatch, queue func(pool string, priority int) string) {
	for _, w := range lost {
		t := r.run.Task(w.Task)
		p := Problem{Check: CheckQueue, Task: w.Task, Field: "dispatch"}
		if t.Status == projector.TaskRunning {
			p.Detail = fmt.Sprintf("task %s is running (attempt %d, epoch %d, owner %s) but its queue message is gone from %s: nothing would reclaim it; run \"graflow resume %s\"",
				w.Task, t.Attempt, t.Epoch, t.Owner, queue(w.Pool, w.Priority), r.Run)
		} else {
			p.Detail = fmt.Sprintf("task %s is dispatched (attempt %d) but its dispatch is in neither the delayed set nor %s: the task is lost; run \"graflow resume %s\"",
				w.Task, t.Attempt, queue(w.Pool, w.Priority), r.Run)
		}
		r.Problems = append(r.Problems, p)
	}
}

// upTo returns the events of evs up to seq (the log's last id at the
// snapshot; events appended since are not part of it).
func upTo(evs []events.Event, seq string) []events.Event {
	for i := len(evs); i > 0; i-- {
		if projector.CompareSeq(evs[i-1].Seq, seq) <= 0 {
			return evs[:i]
		}
	}
	return nil
}

func compareState(a *Analysis, s Live) []Problem {
	r := a.Run
	var out []Problem
	if live := s.State[statehash.FieldRunStatus]; live != string(r.Status) {
		p := Problem{Check: CheckState, Field: statehash.FieldRunStatus, Live: live, Replayed: string(r.Status),
			Detail: "run status differs from the fold of the log"}
		if live == string(projector.RunRunning) && r.Status == projector.RunFailed {
			if _, ok := a.lastOf[eventKey{typ: events.TaskRequeued}]; !ok {
				p.Missing = "task_requeued (the live run was reopened)"
			}
		}
		if live == string(projector.RunSucceeded) || live == string(projector.RunFailed) || live == string(projector.RunCancelled) {
			typ := events.Type("run_" + live)
			if seq, ok := a.seen[eventKey{typ: typ}]; ok {
				p.Detail += fmt.Sprintf(" (the log has %s at %s but the fold did not apply it)", typ, seq)
			} else {
				p.Missing = string(typ)
			}
		}
		out = append(out, p)
	}
	if live := s.State[statehash.FieldRunWorkflow]; live != r.Workflow {
		out = append(out, Problem{Check: CheckState, Field: statehash.FieldRunWorkflow, Live: live, Replayed: r.Workflow,
			Detail: "workflow name differs from run_submitted"})
	}
	if q := s.State[statehash.FieldRunQuarantine]; q != "" {
		out = append(out, Problem{Check: CheckState, Field: statehash.FieldRunQuarantine, Live: q,
			Detail: "the projector quarantined the run: its log holds an event it cannot fold"})
	}
	for _, t := range r.Tasks {
		want := projector.RecordOf(t)
		raw := s.State[t.Spec.ID]
		live, err := statehash.ParseRecord(raw)
		if err != nil {
			out = append(out, Problem{Check: CheckState, Task: t.Spec.ID, Field: "record", Live: raw, Replayed: want.String(),
				Detail: err.Error()})
			continue
		}
		if live == want {
			continue
		}
		missing, detail := inferMissing(a, t, live)
		var fields, lv, rv []string
		for _, f := range []struct {
			name       string
			live, want string
		}{
			{"status", string(live.Status), string(want.Status)},
			{"attempt", strconv.Itoa(live.Attempt), strconv.Itoa(want.Attempt)},
			{"epoch", strconv.FormatInt(live.Epoch, 10), strconv.FormatInt(want.Epoch, 10)},
			{"owner", live.Owner, want.Owner},
		} {
			if f.live != f.want {
				fields, lv, rv = append(fields, f.name), append(lv, f.live), append(rv, f.want)
			}
		}
		p := Problem{Check: CheckState, Task: t.Spec.ID, Field: strings.Join(fields, ","), Missing: missing, Detail: detail}
		if len(fields) == 1 {
			p.Live, p.Replayed = lv[0], rv[0]
		} else {
			p.Live, p.Replayed = live.String(), want.String()
		}
		out = append(out, p)
	}
	for _, k := range sortedKeys(s.State) {
		if !strings.HasPrefix(k, "@") && r.Task(k) == nil {
			out = append(out, Problem{Check: CheckState, Task: k, Field: "record", Live: s.State[k],
				Detail: "live record of a task the log never submitted"})
		}
	}
	return out
}

// inferMissing explains a live record that differs from the fold: the event
// that would have made the fold agree, unless the log holds it (then the
// fold refused it) or no event explains it (changed without an event).
func inferMissing(a *Analysis, t *projector.Task, live statehash.Record) (missing, detail string) {
	id := t.Spec.ID
	type cand struct {
		typ     events.Type
		attempt int
		epoch   int64
	}
	var cands []cand
	switch st := live.Status; {
	case st == projector.TaskSucceeded && t.Status != projector.TaskSucceeded:
		cands = []cand{{events.TaskSucceeded, live.Attempt, live.Epoch}}
	case (st == projector.TaskFailed || st == projector.TaskAwaitingRetry) && t.Status == projector.TaskRunning:
		cands = []cand{{events.TaskFailed, live.Attempt, live.Epoch}, {events.TaskTimedOut, live.Attempt, live.Epoch}}
	case st == projector.TaskRunning && (t.Status == projector.TaskDispatched || t.Status == projector.TaskRunning) && live.Epoch > t.Epoch:
		cands = []cand{{events.TaskClaimed, live.Attempt, live.Epoch}}
	case st == projector.TaskDispatched && t.Status == projector.TaskPending:
		cands = []cand{{events.TaskDispatched, live.Attempt, 0}}
	case st == projector.TaskDispatched && t.Status == projector.TaskAwaitingRetry:
		cands = []cand{{events.TaskRetryScheduled, live.Attempt, 0}}
	case st == projector.TaskDispatched && t.Status == projector.TaskRunning && live.Epoch > t.Epoch:
		cands = []cand{{events.TaskReclaimed, live.Attempt, live.Epoch}}
	case st == projector.TaskSkipped && t.Status == projector.TaskPending:
		cands = []cand{{events.TaskSkipped, 0, 0}}
	case st == projector.TaskPending && (t.Status == projector.TaskFailed || t.Status == projector.TaskSkipped):
		cands = []cand{{events.TaskRequeued, live.Attempt, live.Epoch}}
	}
	if len(cands) == 0 {
		return "", "live task record differs from the fold of the log, and no missing event explains it: the record was changed without an event (or corrupted)"
	}
	for _, c := range cands {
		if seq, ok := a.seen[eventKey{c.typ, id, c.attempt, c.epoch}]; ok {
			return "", fmt.Sprintf("live task record differs from the fold; the log has %s of %s at %s but the fold did not apply it (see the history problems)", c.typ, id, seq)
		}
	}
	c := cands[0]
	missing = fmt.Sprintf("%s task=%s", c.typ, id)
	if c.attempt > 0 {
		missing += fmt.Sprintf(" attempt=%d", c.attempt)
	}
	if c.epoch > 0 {
		missing += fmt.Sprintf(" epoch=%d", c.epoch)
	}
	if live.Owner != "" && c.typ != events.TaskDispatched && c.typ != events.TaskSkipped {
		missing += " worker=" + live.Owner
	}
	return missing, "live task record is ahead of the fold: the log lacks the event that changed it"
}

func compareResults(a *Analysis, s Live) []Problem {
	r := a.Run
	var out []Problem
	if live := s.Results[statehash.FieldRunInput]; !jsonEqual([]byte(live), r.Input) {
		out = append(out, Problem{Check: CheckResults, Field: statehash.FieldRunInput, Live: live, Replayed: string(r.Input),
			Detail: "run input differs from run_submitted"})
	}
	for _, t := range r.Tasks {
		live, ok := s.Results[t.Spec.ID]
		if t.Status == projector.TaskSucceeded && t.ResultExpiresMS > 0 {
			out = append(out, compareExpiry(t, s, ok)...)
			if !ok {
				continue
			}
		}
		switch {
		case t.Status == projector.TaskSucceeded && !ok:
			out = append(out, Problem{Check: CheckResults, Task: t.Spec.ID, Field: "result", Replayed: string(t.Result),
				Detail: "the accepted result is missing from the run's state (@r:)"})
		case t.Status == projector.TaskSucceeded && !jsonEqual([]byte(live), t.Result):
			out = append(out, Problem{Check: CheckResults, Task: t.Spec.ID, Field: "result", Live: live, Replayed: string(t.Result),
				Detail: "stored result differs from the accepted task_succeeded"})
		case t.Status != projector.TaskSucceeded && ok:
			p := Problem{Check: CheckResults, Task: t.Spec.ID, Field: "result", Live: live,
				Detail: fmt.Sprintf("a result is stored but the fold has the task %s, with no accepted task_succeeded", t.Status)}
			if seq, in := a.lastOf[eventKey{typ: events.TaskSucceeded, task: t.Spec.ID}]; in {
				p.Detail += fmt.Sprintf(" (the log has task_succeeded at %s but the fold did not apply it)", seq)
			} else {
				p.Missing = "task_succeeded task=" + t.Spec.ID
			}
			out = append(out, p)
		}
	}
	for _, k := range sortedKeys(s.Results) {
		if k != statehash.FieldRunInput && r.Task(k) == nil {
			out = append(out, Problem{Check: CheckResults, Task: k, Field: "result", Live: s.Results[k],
				Detail: "stored result of a task the log never submitted"})
		}
	}
	return out
}

func compareDAG(a *Analysis, s Live) []Problem {
	var out []Problem
	for _, spec := range a.Specs() {
		raw, ok := s.DAG[spec.ID]
		want := statehash.MetaOf(spec)
		if !ok {
			out = append(out, Problem{Check: CheckDAG, Task: spec.ID, Field: "meta", Detail: "task metadata missing from the run's state (@g:): workers cannot claim the task"})
			continue
		}
		var live statehash.TaskMeta
		if err := json.Unmarshal([]byte(raw), &live); err != nil {
			out = append(out, Problem{Check: CheckDAG, Task: spec.ID, Field: "meta", Live: raw, Detail: "task metadata does not decode: " + err.Error()})
			continue
		}
		if !metaEqual(live, want) {
			w, _ := json.Marshal(want)
			out = append(out, Problem{Check: CheckDAG, Task: spec.ID, Field: "meta", Live: raw, Replayed: string(w),
				Detail: "task metadata differs from the submitted spec"})
		}
	}
	return out
}

func metaEqual(a, b statehash.TaskMeta) bool {
	return a.Handler == b.Handler && slices.Equal(a.Deps, b.Deps) && max(a.MaxAttempts, 1) == max(b.MaxAttempts, 1) &&
		a.TimeoutMS == b.TimeoutMS && jsonEqual(a.Args, b.Args)
}

// checkProjection checks the projector's bookkeeping that must hold at any
// time: @cursor is a position inside the log, and if events that call for a
// decision (a submission, an outcome) follow it, @dirty is set, or nothing
// would wake a projector for the run. An outcome whose decisions are all in
// the log already (a success the worker's finish handed on, dispatching
// its dependents itself: the fold r of the whole log calls for nothing)
// needs no projector.
func checkProjection(evs []events.Event, s Live, r *projector.Run) ([]Problem, int) {
	cursor := s.State[statehash.FieldRunCursor]
	if cursor != "" && len(evs) > 0 && projector.CompareSeq(cursor, evs[len(evs)-1].Seq) > 0 {
		return []Problem{{Check: CheckProjection, Field: statehash.FieldRunCursor, Live: cursor, Replayed: evs[len(evs)-1].Seq,
			Detail: "@cursor is beyond the end of the log"}}, 0
	}
	behind, needs := 0, ""
	for i := len(evs) - 1; i >= 0; i-- {
		e := evs[i]
		if cursor != "" && projector.CompareSeq(e.Seq, cursor) <= 0 {
			break
		}
		behind++
		switch e.Type {
		case events.RunSubmitted, events.TaskSucceeded, events.TaskFailed, events.TaskTimedOut, events.TaskRequeued:
			needs = e.Seq
		}
	}
	if needs != "" && r != nil && len(projector.Decide(r, 1, nil)) == 0 {
		needs = ""
	}
	if needs != "" && s.State[statehash.FieldRunDirty] == "" && s.State[statehash.FieldRunQuarantine] == "" {
		return []Problem{{Check: CheckProjection, Field: statehash.FieldRunDirty, Seq: needs, Live: "", Replayed: "1",
			Detail: fmt.Sprintf("%d event(s) after @cursor %s call for the projector but the run is not marked dirty: no projector will be woken for it", behind, cursor)}}, behind
	}
	return nil, behind
}

func plural(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.FormatInt(n, 10) + " " + many
}

// jsonEqual compares two JSON documents by value; empty counts as null.
func jsonEqual(a, b []byte) bool {
	a, b = bytes.TrimSpace(a), bytes.TrimSpace(b)
	if len(a) == 0 {
		a = []byte("null")
	}
	if len(b) == 0 {
		b = []byte("null")
	}
	if bytes.Equal(a, b) {
		return true
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// NotIndexed is the report of a run in the run index that has neither
// log nor state.
func NotIndexed(run, namespace string) *Report {
	return &Report{Run: run, Namespace: namespace, Checks: []Check{CheckLog}, Problems: []Problem{{
		Check: CheckLog, Missing: "run_submitted", Detail: "the run is in the run index but has neither log nor state"}}}
}

// expirySlack is the clock difference between the projector that deletes
// an expired result and the process that verifies, tolerated.
const expirySlack = time.Second

// compareExpiry checks a succeeded task with a result TTL: the state
// records when its result expires, as the log implies (task_succeeded's
// time plus the TTL), and a stored result is gone only once that time
// passed (stored says whether the results hash still holds it).
func compareExpiry(t *projector.Task, s Live, stored bool) []Problem {
	f := statehash.ResultExpiryField(t.Spec.ID)
	want := strconv.FormatInt(t.ResultExpiresMS, 10)
	var out []Problem
	if live := s.State[f]; live != want {
		out = append(out, Problem{Check: CheckState, Task: t.Spec.ID, Field: f, Live: live, Replayed: want,
			Detail: "result expiry differs from task_succeeded's time plus the task's result TTL"})
	}
	if !stored && !s.Now.IsZero() && !t.ResultExpired(s.Now.Add(expirySlack)) {
		out = append(out, Problem{Check: CheckResults, Task: t.Spec.ID, Field: "result", Replayed: string(t.Result),
			Detail: fmt.Sprintf("the stored result is gone before its result TTL (expires %s)", time.UnixMilli(t.ResultExpiresMS).UTC().Format(time.RFC3339Nano))})
	}
	return out
}
