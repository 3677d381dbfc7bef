package rdb

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/redis/go-redis/v9"
)

// SweepGrace is the age under which index entries are never swept, so a
// submit or an import that writes the index entry beside the run's keys
// (in another slot) is never caught in between.
const SweepGrace = time.Minute

// SweepRunIndex checks up to n entries of the run index from rank start
// and removes those whose run is gone (no state and no log: expired by
// RunTTL, deleted by hand, or a submit that failed), unless submitted less
// than SweepGrace before now. It returns the rank to start the next page
// at (0 after the last page: a sweep walks the index page by page and
// wraps) and the removed run ids. Cost: O(n) per call.
func (d DB) SweepRunIndex(ctx context.Context, start, n int64, now time.Time) (next int64, removed []string, err error) {
	zs, err := d.C.ZRangeWithScores(ctx, d.K.Runs(), start, start+n-1).Result()
	if err != nil {
		return 0, nil, err
	}
	runs := make([]string, 0, len(zs))
	young := now.Add(-SweepGrace).UnixMilli()
	for _, z := range zs {
		if m, _ := z.Member.(string); m != "" && int64(z.Score) <= young {
			runs = append(runs, m)
		}
	}
	gone, err := d.runsGone(ctx, runs)
	if err != nil {
		return 0, nil, err
	}
	for i, run := range runs {
		if gone[i] {
			removed = append(removed, run)
		}
	}
	if len(removed) > 0 {
		ms := make([]any, len(removed))
		for i, r := range removed {
			ms[i] = r
		}
		if err := d.C.ZRem(ctx, d.K.Runs(), ms...).Err(); err != nil {
			return 0, nil, err
		}
	}
	return nextRank(start, n, int64(len(zs)), int64(len(removed))), removed, nil
}

// SweepDeadLetters checks up to n dead letters from rank start and forgets
// those whose run is gone (no state and no log), and the stale ones: their
// run succeeded, or their task ended otherwise than failed (see
// deadLettersStale), which a requeue's removal of the dead letter lost in
// a failover leaves behind (their details hash field too). It returns the
// next page's rank (0 after the last) and the removed members
// ("<run>|<task>"). A dead letter whose task failed again while the sweep
// removed it is put back (a safety net: a task the sweep finds ended does
// not fail again without a requeue). Cost: O(n) per call.
func (d DB) SweepDeadLetters(ctx context.Context, start, n int64) (next int64, removed []string, err error) {
	zs, err := d.C.ZRangeWithScores(ctx, d.K.DeadLetter(), start, start+n-1).Result()
	if err != nil {
		return 0, nil, err
	}
	ms := make([]string, len(zs))
	for i, z := range zs {
		ms[i], _ = z.Member.(string)
	}
	stale, err := d.deadLettersStale(ctx, ms)
	if err != nil {
		return 0, nil, err
	}
	var args []any
	var scores []float64
	for i, m := range ms {
		if stale[i] {
			removed = append(removed, m)
			args = append(args, m)
			scores = append(scores, zs[i].Score)
		}
	}
	if len(removed) == 0 {
		return nextRank(start, n, int64(len(ms)), 0), nil, nil
	}
	infos, err := d.C.HMGet(ctx, d.K.DeadLetterInfo(), removed...).Result()
	if err != nil {
		return 0, nil, err
	}
	pipe := d.C.TxPipeline() // one slot: {dlq}
	pipe.ZRem(ctx, d.K.DeadLetter(), args...)
	pipe.HDel(ctx, d.K.DeadLetterInfo(), removed...)
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, nil, err
	}
	// A task that failed for good again between the check and the
	// removal had its new dead letter refused (NX: the stale one was
	// there) and removed with it: put it back.
	again, err := d.deadLettersStale(ctx, removed)
	if err != nil {
		return 0, nil, err
	}
	back := d.C.TxPipeline()
	kept := removed[:0]
	for i, m := range removed {
		if again[i] {
			kept = append(kept, m)
			continue
		}
		back.ZAddNX(ctx, d.K.DeadLetter(), redis.Z{Score: scores[i], Member: m})
		if info, ok := infos[i].(string); ok {
			back.HSetNX(ctx, d.K.DeadLetterInfo(), m, info)
		}
	}
	if len(kept) < len(removed) {
		if _, err := back.Exec(ctx); err != nil {
			return 0, nil, err
		}
	}
	return nextRank(start, n, int64(len(ms)), int64(len(kept))), kept, nil
}

// deadLettersStale reports, for each dead-letter member ("<run>|<task>"),
// whether it is stale, for good: its run is gone (no state and no log),
// succeeded (no state, a log that ends with run_succeeded), or its task
// ended otherwise than failed (succeeded, skipped or cancelled: none of
// them can fail again without a requeue, which only a failed task takes).
// A task in any other state keeps its dead letter: a requeued task not
// yet ended, and one whose claims kept failing (a poison claim is
// dead-lettered while its record says dispatched). A member whose keys
// cannot be read as expected is not stale.
func (d DB) deadLettersStale(ctx context.Context, members []string) ([]bool, error) {
	out := make([]bool, len(members))
	if len(members) == 0 {
		return out, nil
	}
	recs := make([]*redis.SliceCmd, len(members))
	exists := make([]*redis.IntCmd, len(members))
	if _, err := d.C.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, m := range members {
			run, task, _ := strings.Cut(m, "|")
			recs[i] = p.HMGet(ctx, d.K.RunState(run), statehash.FieldRunStatus, task)
			// Both keys share the run's slot: one EXISTS (Cluster-safe).
			exists[i] = p.Exists(ctx, d.K.RunState(run), d.K.RunLog(run))
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) && !isReplyError(err) {
		return nil, err
	}
	for i, m := range members {
		if exists[i].Err() == nil && exists[i].Val() == 0 {
			out[i] = true // the run is gone
			continue
		}
		vals, err := recs[i].Result()
		if err != nil || len(vals) != 2 {
			continue
		}
		if status, _ := vals[0].(string); status == "" {
			// No state, a log: a run drops its state only when it
			// succeeded (every task did), which its log's end says.
			run, _, _ := strings.Cut(m, "|")
			end, err := d.LoggedEnd(ctx, run)
			if err != nil {
				return nil, err
			}
			out[i] = end == "succeeded"
			continue
		}
		rec, _ := vals[1].(string)
		if rec == "" {
			continue // no record: not a task the sweep can judge
		}
		if r, err := statehash.ParseRecord(rec); err == nil {
			switch r.Status {
			case events.TaskStatusSucceeded, events.TaskStatusSkipped, events.TaskStatusCancelled:
				out[i] = true
			}
		}
	}
	return out, nil
}

func nextRank(start, n, got, removed int64) int64 {
	if got < n {
		return 0 // last page: wrap
	}
	return start + got - removed
}

// runsGone reports, for each run, whether both its state hash and its log
// are gone (one pipeline).
func (d DB) runsGone(ctx context.Context, runs []string) ([]bool, error) {
	out := make([]bool, len(runs))
	if len(runs) == 0 {
		return out, nil
	}
	cmds := make([]*redis.IntCmd, len(runs))
	if _, err := d.C.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, run := range runs {
			// Both keys share the run's slot: one EXISTS (Cluster-safe).
			cmds[i] = p.Exists(ctx, d.K.RunState(run), d.K.RunLog(run))
		}
		return nil
	}); err != nil {
		return nil, err
	}
	for i := range runs {
		out[i] = cmds[i].Val() == 0
	}
	return out, nil
}
