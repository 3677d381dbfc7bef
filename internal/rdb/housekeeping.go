package rdb

import (
	"context"
	"strings"
	"time"

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
// those whose run is gone (no state and no log): their details hash field
// too. It returns the next page's rank (0 after the last) and the removed
// members ("<run>|<task>"). Cost: O(n) per call.
func (d DB) SweepDeadLetters(ctx context.Context, start, n int64) (next int64, removed []string, err error) {
	ms, err := d.C.ZRange(ctx, d.K.DeadLetter(), start, start+n-1).Result()
	if err != nil {
		return 0, nil, err
	}
	runs := make([]string, len(ms))
	for i, m := range ms {
		runs[i], _, _ = strings.Cut(m, "|")
	}
	gone, err := d.runsGone(ctx, runs)
	if err != nil {
		return 0, nil, err
	}
	var args []any
	for i, m := range ms {
		if gone[i] {
			removed = append(removed, m)
			args = append(args, m)
		}
	}
	if len(removed) > 0 {
		pipe := d.C.TxPipeline() // one slot: {dlq}
		pipe.ZRem(ctx, d.K.DeadLetter(), args...)
		pipe.HDel(ctx, d.K.DeadLetterInfo(), removed...)
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, nil, err
		}
	}
	return nextRank(start, n, int64(len(ms)), int64(len(removed))), removed, nil
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
