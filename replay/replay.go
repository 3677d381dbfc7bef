// Package replay rebuilds runs from their logs and audits them. It is
// pure: every function takes a run's events (and, to compare, its live
// state as plain maps) and does no I/O. graflow.Client reads runs from
// Redis and calls these functions; it is the one way in for users.
//
// Everything here starts from a run's log, the source of truth, and folds
// it from the first event with projector.Apply: the very fold the live
// projector uses, never a copy of it. On top of the fold:
//
//   - Analyze (its Timeline): who ran what, when, for how long, with
//     retries, reclaims, rejected results and why each task became ready;
//   - Verify: the fold compared field by field with the live projection
//     (Live), plus the history invariants (no lost task, at most one
//     accepted result per attempt, monotonic epochs, every unlock
//     justified, run_succeeded only after every task succeeded);
//   - Export, ReadExport, PrepareImport and PlanResume: a run as JSON
//     lines, rebuilt elsewhere with identical state, and an unfinished
//     imported run put back to work.
package replay

import (
	"errors"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
)

// Errors. Use errors.Is. (A run that does not exist is
// graflow.ErrRunNotFound.)
var (
	// ErrRunExists: Import would overwrite a run that already exists (or
	// another writer created it while the import ran).
	ErrRunExists = errors.New("replay: run already exists")
	// ErrInvalidExport: an export file that cannot be imported (a line
	// that does not decode, events of several runs, a log that does not
	// fold). Nothing was written.
	ErrInvalidExport = errors.New("replay: invalid export")
	// ErrVerifyFailed: Verify found the live state or the history
	// inconsistent with the log (see *VerifyError for the problems).
	ErrVerifyFailed = errors.New("replay: verification failed")
)

// Fold folds evs, run's log from its first event, with projector.Apply,
// the projector's own fold. An event the fold rejects is an error.
func Fold(run string, evs []events.Event) (*projector.Run, error) {
	r := projector.NewRun(run)
	for _, e := range evs {
		if err := projector.Apply(r, e); err != nil {
			return nil, err
		}
	}
	return r, nil
}
