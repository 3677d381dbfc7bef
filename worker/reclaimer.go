package worker

import (
	"context"

	"github.com/graflow-go/graflow/internal/rdb"
)

// reclaimLoop takes over messages whose lease expired (idle longer than
// Lease: their worker died or stopped heartbeating) every ReclaimInterval,
// and removes dead workers from the registry and their consumers from the
// queue streams.
func (w *Worker) reclaimLoop(ctx context.Context) {
	t := w.cfg.Clock.NewTicker(w.cfg.ReclaimInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
		}
		for _, pool := range w.cfg.Pools {
			for _, stream := range w.db.K.AllQueues(pool) {
				if err := w.reclaim(ctx, stream); err != nil && ctx.Err() == nil {
					w.log.Warn().Err(err).Str("stream", stream).Msg("reclaim")
				}
			}
		}
		if err := w.pruneRegistry(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn().Err(err).Msg("prune worker registry")
		}
		if err := w.pruneConsumers(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn().Err(err).Msg("prune dead consumers")
		}
	}
}

// reclaim walks one stream's pending entries with XAUTOCLAIM (cursor to
// 0-0), taking as many as it has free slots for, and runs them in reclaim
// mode: the claim script appends task_reclaimed and bumps the epoch, so the
// old owner's late result is rejected.
func (w *Worker) reclaim(ctx context.Context, stream string) error {
	start := "0-0"
	for {
		free := w.tryAcquire(reclaimBatch)
		if free == 0 && start == "0-0" {
			var err error
			if free, err = w.awaitSlotFor(ctx, stream); free == 0 {
				return err
			}
		}
		if free == 0 {
			return nil
		}
		msgs, next, deleted, err := w.db.Reclaim(ctx, stream, w.cfg.ID, w.cfg.Lease, start, free)
		if err != nil {
			w.release(free)
			return err
		}
		if len(deleted) > 0 {
			// Only an external XDEL/XTRIM (or writes lost in a failover)
			// deletes a pending entry (our trims and clean-ups remove acked
			// entries only). XAUTOCLAIM dropped them from the PEL; the tasks
			// are still dispatched/running in their runs' state. The entries
			// carry no fields, so their runs are unknown here: the reclaim
			// script requested a repair in the same step, and a projector
			// repairs every running run from its log.
			w.log.Error().Strs("ids", deleted).Str("stream", stream).
				Msg("pending queue entries were deleted from the stream; a projector re-dispatches their tasks from run state")
		}
		deliveries := w.deliveries(ctx, stream, msgs)
		for i, m := range msgs {
			msg := w.messages([]rdb.Stream{{Stream: stream, Messages: []rdb.Message{m}}}, nil, nil)[0]
			msg.reclaimed, msg.deliveries = true, deliveries[i]
			w.log.Info().Str("run", msg.run).Str("task", msg.task).Int64("deliveries", msg.deliveries).Msg("reclaiming task from an expired lease")
			w.start(msg) // takes one of the acquired slots
		}
		w.release(free - len(msgs))
		if next == "0-0" || next == "" || len(msgs) == 0 && next == start {
			return nil
		}
		start = next
	}
}

// deliveries reads each reclaimed message's delivery count (XPENDING).
func (w *Worker) deliveries(ctx context.Context, stream string, msgs []rdb.Message) []int64 {
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	return w.db.Deliveries(ctx, stream, ids)
}

// reclaimBatch bounds the messages one reclaim call takes over.
const reclaimBatch = 64

// awaitSlotFor waits, when every slot is busy and stream holds a message
// past its lease, for a slot (up to ReclaimInterval), then takes the free
// ones: the number taken. A worker that always has work would otherwise
// never reclaim a dead worker's task: its fetch loops, waiting for a slot,
// take each one freed ahead of the reclaimer's ticks. Waiting, the
// reclaimer takes its turn among them.
func (w *Worker) awaitSlotFor(ctx context.Context, stream string) (int, error) {
	due, err := w.db.PendingPast(ctx, stream, rdb.GroupWorkers, w.cfg.Lease)
	if err != nil || !due {
		return 0, err
	}
	select {
	case w.sem <- struct{}{}:
		return 1 + w.tryAcquire(reclaimBatch-1), nil
	case <-w.cfg.Clock.After(w.cfg.ReclaimInterval):
		return 0, nil
	case <-ctx.Done():
		return 0, nil
	}
}

// tryAcquire takes up to n free slots without blocking.
func (w *Worker) tryAcquire(n int) int {
	got := 0
	for got < n {
		select {
		case w.sem <- struct{}{}:
			got++
		default:
			return got
		}
	}
	return got
}

func (w *Worker) release(n int) {
	for i := 0; i < n; i++ {
		<-w.sem
	}
}

// pruneRegistry removes workers whose registry hash expired (they stopped
// heartbeating) from the workers set. One worker of the namespace does it
// per interval (a lock), and it reads only the expired ids (the expiry
// zset): a few commands per interval whatever the number of workers.
func (w *Worker) pruneRegistry(ctx context.Context) error {
	ok, err := w.db.TryLock(ctx, "workers-registry", w.cfg.ID, w.cfg.ReclaimInterval*9/10)
	if err != nil || !ok {
		return err
	}
	dead, err := w.db.PruneRegistry(ctx, w.db.WorkerRegistry(), w.cfg.Clock.Now(), pruneBatch)
	for _, id := range dead {
		w.log.Info().Str("dead_worker", id).Msg("removed a dead worker from the registry")
	}
	return err
}

// pruneBatch bounds the dead registry entries removed per interval.
const pruneBatch = 256

// consumerIdleLeases: a consumer idle this many leases, with nothing
// pending and no registry entry, belongs to a worker that is gone (a live
// worker reads every FetchBlock).
const consumerIdleLeases = 4

// pruneConsumers deletes the dead consumers of the worker's pools' band
// streams (every worker restart under a new id leaves one per band): no
// pending entries, idle longer than consumerIdleLeases leases, not in the
// registry. One worker per pool does it per lease (a lock).
func (w *Worker) pruneConsumers(ctx context.Context) error {
	for _, pool := range w.cfg.Pools {
		ok, err := w.db.TryLock(ctx, "consumers:q:"+pool, w.cfg.ID, w.cfg.Lease)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		for _, stream := range w.db.K.AllQueues(pool) {
			gone, err := w.db.PruneConsumers(ctx, stream, rdb.GroupWorkers, consumerIdleLeases*w.cfg.Lease, w.db.WorkerRegistry())
			if err != nil {
				return err
			}
			if len(gone) > 0 {
				w.log.Info().Str("stream", stream).Strs("consumers", gone).Msg("deleted the consumers of dead workers")
			}
		}
	}
	return nil
}
