package worker

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
)

// register adds the worker to the registry: its whole record (see
// metrics).
func (w *Worker) register(ctx context.Context) error {
	b := w.metrics()
	return w.db.BeatRecord(ctx, *b)
}

// metrics is the registry refresh: the whole record (identity, pools,
// counters, last heartbeat), its TTL, the set membership and the expiry
// score. Every beat writes everything, so a record lost with Redis data
// (a failover, a restore) is back whole at the next beat.
func (w *Worker) metrics() *rdb.Beat {
	now := w.cfg.Clock.Now()
	host, _ := os.Hostname() // cheap, once per beat
	return &rdb.Beat{Registry: w.db.WorkerRegistry(), ID: w.cfg.ID, Now: now, TTL: w.registryTTL(), Fields: map[string]any{
		"id":              w.cfg.ID,
		"host":            host,
		"pid":             os.Getpid(),
		"pools":           strings.Join(w.cfg.Pools, ","),
		"concurrency":     w.cfg.Concurrency,
		"handlers":        strings.Join(w.Handlers(), ","),
		"started_at":      w.started.UnixMilli(),
		"lease_ms":        w.cfg.Lease.Milliseconds(),
		"tasks_processed": w.processed.Load(),
		"tasks_failed":    w.failed.Load(),
		"tasks_running":   w.running.Load(),
		"uptime_seconds":  int64(now.Sub(w.started).Seconds()),
		"last_heartbeat":  now.UnixMilli(),
	}}
}

func (w *Worker) registryTTL() time.Duration { return w.cfg.Lease + w.cfg.HeartbeatInterval }

func (w *Worker) deregister(ctx context.Context) {
	if err := w.db.DeregisterFrom(ctx, w.db.WorkerRegistry(), w.cfg.ID); err != nil {
		w.log.Warn().Err(err).Msg("deregister")
	}
}

// heartbeats renews the leases of in-flight tasks and the registry entry
// every HeartbeatInterval until ctx ends.
func (w *Worker) heartbeats(ctx context.Context) {
	t := w.cfg.Clock.NewTicker(w.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		w.obs().Alive("worker.heartbeat", 2*w.cfg.HeartbeatInterval)
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
			w.beat(ctx)
		}
	}
}

// beat sends one heartbeat for every in-flight task (one pipeline): the
// epoch-checked heartbeat script and the owner-checked idle reset of its
// queue message. A task whose claim is gone has its context cancelled.
func (w *Worker) beat(ctx context.Context) {
	w.mu.Lock()
	list := make([]*attempt, 0, len(w.inflight))
	for _, a := range w.inflight {
		if !a.lost {
			list = append(list, a)
		}
	}
	w.mu.Unlock()
	now := w.cfg.Clock.Now()
	items := make([]rdb.HeartbeatItem, len(list))
	for i, a := range list {
		note := a.task.takeProgress()
		app := now.Sub(a.lastEvent) >= w.cfg.HeartbeatEventEvery || note != a.lastNote
		var body []byte
		if note != "" {
			body, _ = json.Marshal(events.TaskHeartbeatBody{Progress: note})
		}
		if app {
			a.lastEvent, a.lastNote = now, note
		}
		items[i] = rdb.HeartbeatItem{Stream: a.stream, MsgID: a.msgID, Args: rdb.HeartbeatArgs{
			Run: a.task.Run, Task: a.task.ID, Worker: w.cfg.ID, Attempt: a.task.Attempt, Epoch: a.task.Epoch,
			EventID: events.NewID(now), RejectID: events.NewID(now), TimeMS: now.UnixMilli(), Body: body, Append: app,
		}}
	}
	outs := w.db.Heartbeats(ctx, w.cfg.ID, items, w.metrics())
	for i, a := range list {
		err := outs[i].Err
		var stale *rdb.StaleError
		if errors.As(err, &stale) && stale.Status == string(events.TaskStatusCancelled) && !w.cfg.noFencing {
			w.log.Info().Str("run", a.task.Run).Str("task", a.task.ID).Msg("run cancelled; cancelling the handler")
			a.lost = true
			a.cancel(ErrRunCancelled)
			continue
		}
		if errors.Is(err, rdb.ErrStaleClaim) && !w.cfg.noFencing {
			w.log.Warn().Str("run", a.task.Run).Str("task", a.task.ID).Err(err).Msg("lease lost; cancelling the handler")
			a.lost = true // one rejection is enough: no more heartbeats for it
			a.cancel(errLeaseLost)
			continue
		}
		if err != nil {
			w.log.Warn().Err(err).Str("task", a.task.ID).Msg("heartbeat")
			continue
		}
		if outs[i].Touched == 0 && outs[i].TouchErr == nil && !outs[i].Done && !w.cfg.noFencing {
			// The claim holds, but its entry is pending for nobody: acked
			// or dropped by hand (XACK, XGROUP SETID, the stream deleted).
			// No reclaimer will find it if this worker dies, so ask for
			// the repair that hands the task back (twice in a row: a finish
			// that landed between the heartbeat and the touch acks it too).
			a.unpended++
			if a.unpended == 2 {
				w.log.Error().Str("run", a.task.Run).Str("task", a.task.ID).Str("stream", a.stream).Str("msg", a.msgID).
					Msg("the queue entry of a running task is pending for nobody; requesting a repair, which hands the task back")
				if err := w.db.RequestRepair(ctx); err != nil {
					a.unpended-- // again at the next beat
					w.log.Warn().Err(err).Msg("request a repair")
				}
			}
		} else {
			a.unpended = 0
		}
		if outs[i].Touched == -2 && !a.deleted {
			// Its lease can no longer be renewed: the task goes on until
			// the next reclaim of any worker finds the entry deleted
			// (XAUTOCLAIM reports it whatever its idle time) and requests
			// the repair that hands the task back.
			w.log.Error().Str("run", a.task.Run).Str("task", a.task.ID).Str("stream", a.stream).Str("msg", a.msgID).
				Msg("the queue entry of a running task was deleted from its stream; a reclaimer finds it and the repair hands the task back, to run again unless it ends first")
			a.deleted = true
		}
		if outs[i].Touched == -1 && !w.cfg.noFencing {
			w.log.Warn().Str("run", a.task.Run).Str("task", a.task.ID).Msg("queue message taken by another consumer; cancelling the handler")
			a.lost = true
			a.cancel(errLeaseLost)
		}
	}
}

// Stats is a snapshot of the worker's counters.
type Stats struct {
	Processed, Failed, Running int64
}

// Stats returns the worker's counters. Safe for concurrent use.
func (w *Worker) Stats() Stats {
	return Stats{Processed: w.processed.Load(), Failed: w.failed.Load(), Running: w.running.Load()}
}
