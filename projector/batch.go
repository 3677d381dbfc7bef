package projector

import (
	"context"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/crashpoint"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
)

// pass is one run's share of a batched projection pass.
type pass struct {
	run       string
	c         *cached
	read      *redis.XMessageSliceCmd // the log after the cursor
	head      *redis.SliceCmd         // set when the run was not cached
	decisions []events.Event
	commit    rdb.Commit
	commitCmd *redis.Cmd
	res       rdb.CommitResult
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
	pipe := p.cfg.Redis.Pipeline()
	for _, x := range ps {
		start := "-"
		if x.c.run == nil {
			x.head = p.db.HeadCmd(ctx, pipe, x.run)
		} else if x.c.run.LastSeq != "" {
			start = "(" + x.c.run.LastSeq
		}
		x.read = pipe.XRangeN(ctx, p.db.K.RunLog(x.run), start, "+", int64(p.cfg.ReadCount))
	}
	_, _ = pipe.Exec(ctx) // errors are read per command
	live := ps[:0:0]
	for _, x := range ps {
		if err := x.read.Err(); err != nil {
			giveUp(x, true)
			continue
		}
		if x.head != nil {
			head, err := rdb.ParseHead(x.head)
			if err != nil {
				giveUp(x, true)
				continue
			}
			r := NewRun(x.run)
			r.noResults = true // as in load
			x.c.run, x.c.head = r, head
			if rdb.HeadStatus(x.head) == string(RunQuarantined) {
				r.Status = RunQuarantined // set aside for good: skip it
				continue
			}
		}
		msgs := x.read.Val()
		if _, err := p.fold(x.run, x.c.run, msgs); err != nil || len(msgs) == p.cfg.ReadCount {
			// A long log is read on by Project (to its end, before it
			// decides); a run loaded here with a long log is loaded
			// again there, its head read before its whole log.
			giveUp(x, err != nil || x.head != nil)
			continue
		}
		if x.c.run.Status == RunUnknown || x.c.run.Status == RunQuarantined {
			continue // no such run (feed pointer for a deleted run), or set aside
		}
		x.decisions, x.commit = p.prepare(x.c)
		live = append(live, x)
	}
	if len(live) == 0 {
		return rest
	}

	// 2. Commit every run's decisions (each a compare-and-set on its own
	// cursor, in its own slot).
	err := p.db.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, x := range live {
			x.commitCmd = p.db.CommitCmd(ctx, pipe, x.run, x.commit)
		}
		return nil
	})
	if err != nil && ctx.Err() != nil {
		for _, x := range live {
			giveUp(x, true)
		}
		return rest
	}
	committed := live[:0:0]
	for _, x := range live {
		res, err := rdb.ParseCommit(x.run, x.commitCmd)
		if err != nil {
			giveUp(x, true)
			continue
		}
		if res.Conflict {
			// Another commit moved the head: Project folds on from the
			// cache (the log only grows) under the new head; a task record
			// that disagrees with the fold reloads the run.
			x.c.head = res.Head
			giveUp(x, !res.HeadMoved())
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
