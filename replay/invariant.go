package replay

import (
	"fmt"
	"sort"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/graflow-go/graflow/projector"
)

// Verdict is what CheckInvariants found in a run's history.
type Verdict struct {
	Tasks int
	// Lost counts tasks that did not succeed although the run had to.
	Lost int
	// DuplicateAccepts counts accepted outcomes beyond the first per task
	// attempt (task_succeeded, or task_failed for the same attempt twice).
	DuplicateAccepts int
	// RejectedStale counts result_rejected events from an older epoch:
	// fencing at work.
	RejectedStale int
	// RejectedUnlogged counts result_rejected events of a claim the log
	// does not hold (an epoch above the log's, or the log's epoch under
	// another worker), accepted as lost writes (InvariantOptions).
	RejectedUnlogged int
	// Problems lists every violation, precisely.
	Problems []string
}

// OK reports whether every check held.
func (v Verdict) OK() bool { return len(v.Problems) == 0 }

// CheckInvariants checks a finished run's whole history against the
// engine's guarantees: every task succeeded exactly once as far as accepted
// results go, no task lost, claim epochs strictly increasing, every
// rejected result stale, and the live task records equal to the fold of
// the log (a task that failed for good counts only if every successor
// joined it tolerantly and succeeded), and the run succeeded, or was
// cancelled: then nothing was
// claimed or accepted after its run_cancelled, and every task it did not
// finish is cancelled. The chaos suite (graflow chaos) and the
// integration tests use it; it reads nothing itself, so the caller fetches
// the log and the run's state hash.
func CheckInvariants(evs []events.Event, live map[string]string) Verdict {
	return CheckInvariantsWith(evs, live, InvariantOptions{})
}

// InvariantOptions adjust CheckInvariants to the Redis a history came
// from.
type InvariantOptions struct {
	// LostWrites says that Redis may have lost acknowledged writes: a
	// failover (replication is asynchronous) or a restore from an older
	// copy. A claim acknowledged to a worker and then lost leaves that
	// worker's outcome rejected at an epoch the log never gave it (above
	// the log's epoch, or the log's epoch reissued to another worker):
	// fencing at work, the task runs again. With LostWrites such a
	// rejection is counted in RejectedUnlogged; without, it is a problem,
	// as no such claim exists when no acknowledged write is lost.
	LostWrites bool
}

// CheckInvariantsWith is CheckInvariants with options.
func CheckInvariantsWith(evs []events.Event, live map[string]string, opts InvariantOptions) Verdict {
	var v Verdict
	problem := func(format string, args ...any) { v.Problems = append(v.Problems, fmt.Sprintf(format, args...)) }
	epoch := map[string]int64{}
	owner := map[string]string{} // task → the worker of its latest claim
	accepted := map[string]int{} // task → accepted successes
	failedAttempt := map[string]bool{}
	run := projector.NewRun("")
	cancelled := "" // the seq of run_cancelled
	for _, e := range evs {
		if run.ID == "" {
			run.ID = e.Run
		}
		switch e.Type {
		case events.TaskClaimed, events.TaskReclaimed, events.TaskSucceeded, events.TaskFailed, events.TaskTimedOut, events.TaskDispatched, events.TaskRetryScheduled:
			if cancelled != "" {
				problem("task %s: %s (seq %s) after the run was cancelled (seq %s)", e.Task, e.Type, e.Seq, cancelled)
			}
		case events.RunCancelled:
			cancelled = e.Seq
		}
		switch e.Type {
		case events.TaskClaimed, events.TaskReclaimed:
			if e.Epoch <= epoch[e.Task] {
				problem("task %s: %s at epoch %d after epoch %d (epochs must increase; seq %s)", e.Task, e.Type, e.Epoch, epoch[e.Task], e.Seq)
			}
			epoch[e.Task], owner[e.Task] = e.Epoch, e.Worker
		case events.TaskSucceeded:
			accepted[e.Task]++
			if accepted[e.Task] > 1 {
				v.DuplicateAccepts++
				problem("task %s: result accepted %d times (seq %s, epoch %d)", e.Task, accepted[e.Task], e.Seq, e.Epoch)
			}
			if e.Epoch != epoch[e.Task] {
				problem("task %s: result accepted from epoch %d while the claim is at epoch %d (seq %s)", e.Task, e.Epoch, epoch[e.Task], e.Seq)
			}
		case events.TaskFailed, events.TaskTimedOut:
			key := fmt.Sprintf("%s#%d", e.Task, e.Attempt)
			if failedAttempt[key] {
				v.DuplicateAccepts++
				problem("task %s attempt %d: failure accepted twice (seq %s)", e.Task, e.Attempt, e.Seq)
			}
			failedAttempt[key] = true
			if e.Epoch != epoch[e.Task] {
				problem("task %s: failure accepted from epoch %d while the claim is at epoch %d (seq %s)", e.Task, e.Epoch, epoch[e.Task], e.Seq)
			}
		case events.ResultRejected:
			t := run.Task(e.Task)
			switch {
			case e.Epoch < epoch[e.Task] || (t != nil && t.Status.Terminal()):
				v.RejectedStale++
			case e.Epoch == epoch[e.Task] && e.Worker == owner[e.Task]:
				problem("task %s: result_rejected at epoch %d, which is the current claim's (seq %s): a valid result was refused", e.Task, e.Epoch, e.Seq)
			case opts.LostWrites:
				v.RejectedUnlogged++
			default:
				problem("task %s: result_rejected of %s at epoch %d, a claim not in the log (the log's is epoch %d of %q; seq %s): a claim acknowledged and then lost, which a Redis that loses no write cannot do",
					e.Task, e.Worker, e.Epoch, epoch[e.Task], owner[e.Task], e.Seq)
			}
		}
		if err := projector.Apply(run, e); err != nil {
			problem("fold: %v", err)
		}
	}
	v.Tasks = len(run.Tasks)
	if run.Status != projector.RunSucceeded && run.Status != projector.RunCancelled {
		problem("run %s is %s, want succeeded (or cancelled)", run.ID, run.Status)
	}
	// A succeeded run's end keeps only its log: no live records to compare
	// (Verify's CheckLogOnly checks nothing but rejections follows its end).
	logOnly := len(live) == 0 && run.Status == projector.RunSucceeded
	var lost []string
	for _, t := range run.Tasks {
		done := t.Status == projector.TaskSucceeded && accepted[t.Spec.ID] > 0 ||
			t.Status == projector.TaskFailed && run.Absorbed(t) // a tolerant join ran without it
		if run.Status == projector.RunCancelled {
			done = done || t.Status.Terminal() && t.Status != projector.TaskSucceeded
		}
		if !done {
			lost = append(lost, t.Spec.ID+"("+string(t.Status)+")")
		}
		if logOnly {
			continue
		}
		want := projector.RecordOf(t)
		got, err := statehash.ParseRecord(live[t.Spec.ID])
		if err != nil {
			problem("task %s: live record: %v", t.Spec.ID, err)
			continue
		}
		if got != want {
			problem("task %s: live record %q differs from the replayed %q", t.Spec.ID, got.String(), want.String())
		}
	}
	v.Lost = len(lost)
	if len(lost) > 0 {
		sort.Strings(lost)
		if len(lost) > 10 {
			lost = append(lost[:10], "...")
		}
		problem("%d tasks lost: %v", v.Lost, lost)
	}
	if got := live[statehash.FieldRunStatus]; got != string(run.Status) && !logOnly {
		problem("run status: live %q, replayed %q", got, run.Status)
	}
	return v
}

// Add folds another run's verdict w into v, naming the run in its
// problems. It is not safe for concurrent use on one v.
func (v *Verdict) Add(run string, w Verdict) {
	v.Tasks += w.Tasks
	v.Lost += w.Lost
	v.DuplicateAccepts += w.DuplicateAccepts
	v.RejectedStale += w.RejectedStale
	v.RejectedUnlogged += w.RejectedUnlogged
	for _, p := range w.Problems {
		v.Problems = append(v.Problems, "run "+run+": "+p)
	}
}
