package projector

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/retry"
	"github.com/graflow-go/graflow/internal/tracing"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// ErrNotRunning is returned by Repair for a run that is not running.
var ErrNotRunning = errors.New("run is not running")

// RepairPlan folds a run's log (evs, in order) and returns the tasks a
// repair may re-dispatch: those dispatched or running (a repair gives a
// dispatched task not parked for a retry a fresh message when its queue
// holds no live one, and hands a running task back first when its worker
// is no longer registered or holds no queue entry of it: rdb.Repair
// decides which). It
// returns ErrNotRunning (wrapped) for a run that is not running, and the
// run's trace context (run_submitted's traceparent, "" untraced): the
// repair's dispatches stay in the run's trace. Pure: the Redis side is the
// caller's (Client.Repair, and the projector's automatic repair).
func RepairPlan(run string, evs []events.Event) (tasks []*Task, traceparent string, err error) {
	r := NewRun(run)
	r.noResults = true
	for _, e := range evs {
		if err := Apply(r, e); err != nil {
			return nil, "", err
		}
	}
	if r.Status != RunRunning {
		return nil, "", fmt.Errorf("repair %s: %w (%s)", run, ErrNotRunning, r.Status)
	}
	for _, t := range r.Tasks {
		if t.Status == TaskDispatched || t.Status == TaskRunning {
			tasks = append(tasks, t)
		}
	}
	return tasks, r.Traceparent, nil
}

// Repair re-dispatches run's tasks whose queue message is gone, from the
// fold of its log (RepairPlan) and what the queues hold (ix: see
// rdb.QueueIndex; nil reads the run's queues), and points the feed at the
// run: the steps of Client.Repair and of a projector's automatic repair. Its
// dispatches carry the trace context of a graflow.repair span of tracer
// (attributes: attrs, and the tasks dispatched again) in the run's trace.
// It returns the re-dispatched task ids; ErrNotRunning (wrapped) for a run
// that is not running.
func Repair(ctx context.Context, db rdb.DB, tracer trace.Tracer, run string, now time.Time, ix *rdb.QueueIndex, attrs ...attribute.KeyValue) (ids []string, err error) {
	evs, err := db.ReadLog(ctx, run, "-", "+", DefaultReadCount, 0)
	if err != nil {
		return nil, err
	}
	plan, tp, err := RepairPlan(run, evs)
	if err != nil {
		return nil, err
	}
	ctx, span := tracer.Start(tracing.WithTraceparent(ctx, tp), tracing.SpanRepair,
		trace.WithAttributes(append(attrs, tracing.Run.String(run))...))
	defer func() {
		span.SetAttributes(tracing.Redispatched.Int(len(ids)))
		tracing.End(span, err)
	}()
	tasks := make([]rdb.RepairTask, 0, len(plan))
	for _, t := range plan {
		tasks = append(tasks, rdb.RepairTask{ID: t.Spec.ID, Status: t.Status, Owner: t.Owner,
			Attempt: t.Attempt, Epoch: t.Epoch, Pool: t.Spec.Pool, Priority: t.Spec.Priority})
	}
	return db.Repair(ctx, run, tasks, now, tracing.Traceparent(ctx), ix)
}

// RepairPage bounds the runs one automatic repair pass looks at, and the
// runs Client.RepairRuns repairs per read of the queues.
const RepairPage = 200

// repairCursor is where the automatic repair walk of the run index is.
type repairCursor struct {
	walking bool
	reqs    rdb.RepairRequests // the requests the walk answers
	next    int64
	retry   bool // a run's repair failed on a transient error: walk again
}

// autoRepair runs the repair asked for when XAUTOCLAIM reported pending
// queue or feed entries deleted, or a worker's heartbeat found its entry
// pending for nobody (deleted entries carry no fields, so their runs are
// found from the index): each pass repairs up to
// RepairPage running runs, until the whole index has been walked. The
// caller holds the namespace's repair lock. The request stays until a walk
// has repaired every running run: a projector that stops mid-walk leaves
// it for the next holder of the lock (which walks from the start: a repair
// is idempotent), a run whose repair failed on a transient error has the
// walk start over, and a request made during a walk outlives it.
func (p *Projector) autoRepair(ctx context.Context, cur *repairCursor) {
	if !cur.walking {
		reqs, err := p.db.RepairRequest(ctx)
		if err != nil || len(reqs) == 0 {
			if err != nil && ctx.Err() == nil {
				p.log.Warn().Err(err).Msg("repair: read the requests")
			}
			return
		}
		*cur = repairCursor{walking: true, reqs: reqs}
		p.log.Warn().Msg("queue entries were deleted while pending: repairing the running runs from their logs")
	}
	runs, next, err := p.db.RunningRuns(ctx, cur.next, RepairPage)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn().Err(err).Msg("repair: list running runs")
		}
		return
	}
	// One read of each queue stream per pass, not per run; a pass is
	// quick, so what it read stays close to what the queues hold.
	queues := rdb.NewQueueIndex("")
	for _, run := range runs {
		ids, err := Repair(ctx, p.db, p.tracer, run, p.cfg.Clock.Now(), queues, tracing.Projector.String(p.cfg.ID))
		switch {
		case errors.Is(err, ErrNotRunning):
		case err != nil:
			if ctx.Err() != nil {
				return // the walk is left unfinished: its request stays
			}
			again := retry.Transient(err)
			cur.retry = cur.retry || again
			p.log.Warn().Err(err).Str("run", run).Bool("again", again).Msg("repair run")
		case len(ids) > 0:
			p.log.Info().Str("run", run).Strs("tasks", ids).Msg("repair: re-dispatched tasks whose queue message may be gone")
		}
	}
	if cur.next = next; next != 0 {
		return
	}
	cur.walking = false
	if cur.retry {
		p.log.Warn().Msg("repair: some runs could not be repaired for a moment; walking the running runs again")
		return
	}
	if err := p.db.RepairDone(ctx, cur.reqs); err != nil && ctx.Err() == nil {
		p.log.Warn().Err(err).Msg("repair: clear the request; the next pass walks again")
	}
}
