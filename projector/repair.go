package projector

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
)

// ErrNotRunning is returned by Repair for a run that is not running.
var ErrNotRunning = errors.New("run is not running")

// Repair re-dispatches run's tasks whose queue message may be gone, from
// the fold of its log: dispatched tasks not parked for a retry get a fresh
// message, running tasks whose worker is no longer registered are handed
// back first (epoch bumped, so a late result is rejected). A live claim is
// never touched; duplicates are dropped at claim. It points the feed at the
// run and returns the re-dispatched task ids. ErrNotRunning (wrapped) for
// a run that is not running. Safe to call at any time, from any process.
// partitions is the namespace's partition count (0: the default).
func Repair(ctx context.Context, c redis.UniversalClient, namespace string, partitions int, run string, now time.Time) ([]string, error) {
	db := rdb.NewP(c, namespace, partitions)
	evs, err := db.ReadLog(ctx, run, "-", "+", DefaultReadCount, 0)
	if err != nil {
		return nil, err
	}
	r := NewRun(run)
	r.noResults = true
	for _, e := range evs {
		if err := Apply(r, e); err != nil {
			return nil, err
		}
	}
	if r.Status != RunRunning {
		return nil, fmt.Errorf("repair %s: %w (%s)", run, ErrNotRunning, r.Status)
	}
	tasks := make([]rdb.RepairTask, 0, len(r.Tasks))
	for _, t := range r.Tasks {
		if t.Status == TaskDispatched || t.Status == TaskRunning {
			tasks = append(tasks, rdb.RepairTask{ID: t.Spec.ID, Status: t.Status, Owner: t.Owner,
				Attempt: t.Attempt, Epoch: t.Epoch, Pool: t.Spec.Pool, Priority: t.Spec.Priority})
		}
	}
	return db.Repair(ctx, run, tasks, now)
}

// repairPage bounds the runs one automatic repair pass looks at.
const repairPage = 200

// repairCursor is where the automatic repair walk of the run index is.
type repairCursor struct {
	walking bool
	next    int64
}

// autoRepair runs the repair the workers asked for when XAUTOCLAIM told
// them that pending queue entries were deleted (those entries carry no
// fields, so their runs are found from the index): each pass repairs up to
// repairPage running runs, until the whole index has been walked. The
// caller holds the namespace's repair lock.
func (p *Projector) autoRepair(ctx context.Context, cur *repairCursor) {
	if !cur.walking {
		asked, err := p.db.RepairRequested(ctx, true)
		if err != nil || !asked {
			return
		}
		cur.walking, cur.next = true, 0
		p.log.Warn().Msg("queue entries were deleted while pending: repairing the running runs from their logs")
	}
	runs, next, err := p.db.RunningRuns(ctx, cur.next, repairPage)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn().Err(err).Msg("repair: list running runs")
		}
		return
	}
	for _, run := range runs {
		ids, err := Repair(ctx, p.db.C, p.db.K.Namespace(), p.db.K.Partitions(), run, p.cfg.Clock.Now())
		switch {
		case errors.Is(err, ErrNotRunning):
		case err != nil:
			if ctx.Err() == nil {
				p.log.Warn().Err(err).Str("run", run).Msg("repair run")
			}
		case len(ids) > 0:
			p.log.Info().Str("run", run).Strs("tasks", ids).Msg("repair: re-dispatched tasks whose queue message may be gone")
		}
	}
	cur.next = next
	cur.walking = next != 0
}
