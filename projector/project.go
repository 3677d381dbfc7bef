package projector

import (
	"context"
	"errors"
	"fmt"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/crashpoint"
	"github.com/graflow-go/graflow/internal/rdb"
)

// Project folds run's events after its cursor and commits the decisions
// they call for (with their dispatches), until the run is caught up. It is
// idempotent and safe to call concurrently with other projectors.
func (p *Projector) Project(ctx context.Context, run string) error {
	c := p.entry(run)
	c.mu.Lock()
	defer c.mu.Unlock()
	conflicts, recordConflicts := 0, 0
	next := stepReadOn
	for {
		if c.run == nil {
			if err := p.load(ctx, run, c); err != nil {
				return err
			}
			next = stepDecide
		}
		if next == stepReadOn {
			// Fold to the end of the log before deciding: a page short of
			// it may not reach decisions already committed (ours, after a
			// commit that was not caught up, or those of the head a run
			// was loaded at), which would then be made again.
			for {
				n, err := p.readInto(ctx, run, c.run)
				if err != nil {
					c.run = nil
					return err
				}
				if n < p.cfg.ReadCount {
					break
				}
			}
		}
		if c.run.Status == RunUnknown {
			return nil // no such run (feed pointer for a deleted run)
		}
		if c.run.Status == RunQuarantined {
			p.forget(run) // set aside for good
			return nil
		}
		decisions, commit := p.prepare(c)
		sctx, span := p.traceCommit(ctx, c, decisions, &commit)
		res, step, err := p.commitStep(sctx, run, c, decisions, commit)
		endCommit(span, res, err)
		if err != nil {
			return err
		}
		if res.Conflict {
			conflicts++
			p.log.Debug().Str("run", run).Int("conflicts", conflicts).Str("why", res.Why).Msg("commit refused; folding on")
			if res.HeadMoved() {
				recordConflicts = 0
			} else if recordConflicts++; recordConflicts > maxRecordConflicts {
				// The run was reloaded from its log each time and a task
				// record still disagrees with the fold: the state hash was
				// changed outside the engine.
				c.run = nil
				return fmt.Errorf("project run %s: %w: %s", run, ErrStateDiverged, res.Why)
			}
			if conflicts > maxConflicts {
				c.run = nil
				return fmt.Errorf("project run %s: %d %w (last: %s)", run, conflicts, errConflictStorm, res.Why)
			}
		}
		if step == stepDone {
			return nil
		}
		next = step
	}
}

// maxConflicts bounds the commit conflicts in a row one Project call
// takes before it gives up with an error (and its caller retries later).
const maxConflicts = 100

// maxRecordConflicts bounds the commits in a row refused because a task
// record disagrees with the fold of a freshly loaded log.
const maxRecordConflicts = 3

// ErrStateDiverged is returned (wrapped) when a run's state hash holds a
// task record that the fold of its log cannot explain, commit after
// commit: something outside the engine changed it. The projector
// quarantines such a run.
var ErrStateDiverged = errors.New("the run's state disagrees with its log")

// step says how Project goes on after a commit.
type step int

const (
	stepDone   step = iota // caught up and nothing more to decide
	stepReadOn             // the log moved on: fold the new entries, then decide
	stepDecide             // caught up with more to decide: decide again from the cache
)

// commitStep commits c's prepared decisions and carries on as far as the
// reply allows: on a conflict it takes the current head and keeps its
// cached fold (the log only grows, so the fold is still a prefix of it;
// what the other commit appended is read next), except when a task's
// record disagreed with the fold, which reloads the run; after a commit
// (which enqueued its dispatches itself), caught up, it applies the
// decisions to the cache.
func (p *Projector) commitStep(ctx context.Context, run string, c *cached, decisions []events.Event, commit rdb.Commit) (rdb.CommitResult, step, error) {
	res, err := p.commit(ctx, run, commit)
	if err != nil {
		c.run = nil
		return res, stepDone, err
	}
	if res.Conflict {
		c.head = res.Head
		if res.Stale() {
			c.run = nil // the records or the log disagree with our fold: start afresh
		}
		return res, stepReadOn, nil
	}
	crashpoint.Hit(crashpoint.ProjectorAfterCommit)
	if res.Parked > 0 {
		p.wake()
	}
	if !res.CaughtUp {
		c.head = res.Head
		return res, stepReadOn, nil
	}
	more, err := p.settle(run, c, decisions, res)
	if err != nil {
		return res, stepDone, err
	}
	if more {
		return res, stepDecide, nil
	}
	return res, stepDone, nil
}

// settle applies a caught-up commit's decisions to c's cached run and
// reports whether the run calls for more decisions. A finished run leaves
// the cache (its TTL, when configured, was set by the commit that ended it).
func (p *Projector) settle(run string, c *cached, decisions []events.Event, res rdb.CommitResult) (bool, error) {
	for i, d := range decisions {
		d.Seq = res.Seqs[i]
		if err := Apply(c.run, d); err != nil {
			c.run = nil
			return false, err
		}
	}
	c.head = res.Head
	// Caught up: @dirty is cleared. If the decisions call for nothing
	// more, the run is done for now (no confirming commit needed).
	if len(decisions) == 0 || len(Decide(c.run, 1, p.retryDelay)) == 0 {
		if c.run.Status.Terminal() || len(c.run.Tasks) <= rdb.EndMaxTasks {
			// A small run's end may be written by a finish that never
			// points a projector at it: kept, it would hold a cache slot
			// until an arbitrary eviction (of a large run's fold, maybe,
			// which is costly to reload). Its log is short to fold again.
			p.forget(run)
		}
		return false, nil
	}
	return true, nil
}
