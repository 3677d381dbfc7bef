package projector

import (
	"context"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/crashpoint"
	"github.com/graflow-go/graflow/internal/rdb"
	"go.opentelemetry.io/otel/trace"
)

// pass is one run's share of a batched projection pass.
type pass struct {
	run       string
	c         *cached
	read      rdb.RunRead // the log after the cursor (and the head of a run not cached)
	decisions []events.Event
	commit    rdb.Commit
	res       rdb.CommitResult
	span      trace.Span // the commit's graflow.project span
}

// projectBatch is the common case of Project for many runs at once: each
// stage (read the log after the cursor, commit) is one pipeline for every
// run of the batch instead of a round trip per run. Each run's steps are
// exactly Project's, in the same order; only the round trips are shared.
// A run that needs anything else (a conflict, a long log, more decisions
// than one commit holds, an error, a run another goroutine holds) is
// returned, untouched past its last completed step, for Project to finish.
func (p *Projector) projectBatch(ctx context.Context, runs []string) (rest []string) {
	var ps []*pass
	for _, run := range runs {
		c := p.entry(run)
		if !c.mu.TryLock() {
			rest = append(rest, run)
			continue
		}
		ps = append(ps, &pass{run: run, c: c})
	}
	defer func() {
		for _, x := range ps {
			x.c.mu.Unlock()
		}
	}()
	if len(ps) == 0 {
		return rest
	}
	// giveUp hands x to Project; reload says its cached state is not
	// trusted any more.
	giveUp := func(x *pass, reload bool) {
		if reload {
			x.c.run = nil
		}
		rest = append(rest, x.run)
	}

	// 1. Read every run's new events (a run not cached: its head and the
	// first page of its log, head first, as load does).
	reads := make([]rdb.RunRead, len(ps))
	for i, x := range ps {
		reads[i] = rdb.RunRead{Run: x.run, Head: x.c.run == nil}
		if x.c.run != nil {
			reads[i].After = x.c.run.LastSeq
		}
	}
	p.db.ReadRuns(ctx, reads, p.cfg.ReadCount)
	live := ps[:0:0]
	for i, x := range ps {
		x.read = reads[i]
		if x.read.Err != nil {
			giveUp(x, true)
			continue
		}
		if x.read.Head {
			r := NewRun(x.run)
			r.noResults = true // as in load
			x.c.run, x.c.head = r, x.read.HeadVal
			if x.read.Status == string(RunQuarantined) {
				r.Status = RunQuarantined // set aside for good: skip it
				continue
			}
		}
		msgs := x.read.Msgs
		if _, err := p.fold(x.run, x.c.run, msgs); err != nil || len(msgs) == p.cfg.ReadCount {
			// A long log is read on by Project (to its end, before it
			// decides); a run loaded here with a long log is loaded
			// again there, its head read before its whole log.
			giveUp(x, err != nil || x.read.Head)
			continue
		}
		if x.c.run.Status == RunUnknown || x.c.run.Status == RunQuarantined {
			continue // no such run (feed pointer for a deleted run), or set aside
		}
		x.decisions, x.commit = p.prepare(x.c)
		_, x.span = p.traceCommit(ctx, x.c, x.decisions, &x.commit)
		live = append(live, x)
	}
	if len(live) == 0 {
		return rest
	}

	// 2. Commit every run's decisions (each a compare-and-set on its own
	// cursor, in its own slot).
	ids := make([]string, len(live))
	commits := make([]rdb.Commit, len(live))
	for i, x := range live {
		ids[i], commits[i] = x.run, x.commit
	}
	results, errs, err := p.commits(ctx, ids, commits)
	if err != nil {
		for _, x := range live {
			endCommit(x.span, rdb.CommitResult{}, err)
			giveUp(x, true)
		}
		return rest
	}
	committed := live[:0:0]
	for i, x := range live {
		res, err := results[i], errs[i]
		endCommit(x.span, res, err)
		if err != nil {
			giveUp(x, true)
			continue
		}
		if res.Conflict {
			// Another commit moved the head: Project folds on from the
			// cache (the log only grows) under the new head; a task record
			// that disagrees with the fold, or a log that lost entries the
			// fold holds, reloads the run.
			x.c.head = res.Head
			giveUp(x, res.Stale())
			continue
		}
		x.res = res
		committed = append(committed, x)
	}
	if len(committed) == 0 {
		return rest
	}
	crashpoint.Hit(crashpoint.ProjectorAfterCommit)

	// 3. Settle: apply the decisions to the cached state, as Project does.
	parked := false
	for _, x := range committed {
		parked = parked || x.res.Parked > 0
		if !x.res.CaughtUp {
			x.c.head = x.res.Head // events arrived meanwhile: Project reads on
			giveUp(x, false)
			continue
		}
		if more, err := p.settle(x.run, x.c, x.decisions, x.res); err != nil || more {
			giveUp(x, false)
		}
	}
	if parked {
		p.wake()
	}
	return rest
}
