package replay

import (
	"context"
	"errors"
	"fmt"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// resumeBatch bounds the tasks repaired per transaction.
const resumeBatch = 256

// resumeRetries bounds the transactions retried when the run changes under
// Resume (workers finishing other tasks of the run).
const resumeRetries = 20

// ReclaimReasonResumed is the reason of the task_reclaimed events Resume
// writes.
const ReclaimReasonResumed = "resumed: queue message lost"

// ResumeResult says what Resume did.
type ResumeResult struct {
	Run    string `json:"run"`
	Status string `json:"status"`
	// Reclaimed: running tasks whose queue message was gone. Each got a
	// task_reclaimed (epoch bumped, so a late result of the old claim is
	// fenced) and was re-dispatched.
	Reclaimed []ResumedTask `json:"reclaimed"`
	// Redispatched: dispatched tasks whose dispatch was nowhere; they were
	// put on their queue again.
	Redispatched []ResumedTask `json:"redispatched"`
	// Queued counts the dispatched or running tasks whose dispatch was
	// found, left alone.
	Queued int `json:"queued"`
	// Skipped: tasks whose live record differs from the fold ("graflow
	// replay verify" reports them); Resume does not touch them.
	Skipped []string `json:"skipped,omitempty"`
}

// ResumedTask is a task Resume re-dispatched.
type ResumedTask struct {
	Task    string `json:"task"`
	Attempt int    `json:"attempt"`
	// Epoch is the task's epoch after Resume; From and FromEpoch the
	// claim it took away (reclaims only).
	Epoch     int64  `json:"epoch"`
	From      string `json:"from,omitempty"`
	FromEpoch int64  `json:"from_epoch,omitempty"`
}

// Resume puts an unfinished run back to work where its queue messages are
// gone, typically after Import (queue messages are not part of an export):
//
//   - a dispatched task whose dispatch is in neither the run's outbox, the
//     delayed set nor its queue stream is dispatched again (a retry keeps
//     its due time);
//   - a running task whose queue message is gone (so no reclaimer can
//     find it) gets a task_reclaimed event that bumps its epoch, fencing
//     whatever its old claim might still send, and is dispatched again;
//   - tasks ready or awaiting a retry are left to the projector, which
//     Resume points at the run.
//
// Each repair is a transaction on the run's slot (WATCH on the state hash,
// then the event, the record and the outbox entry together, like a
// projector commit); the outbox is then relayed to the queues exactly as
// the projector relays it (projector.Relay). A task that moves on while
// Resume works is left alone. Resume is idempotent: a second call finds the
// dispatches and does nothing. A duplicate dispatch is harmless anyway (the
// claim script drops it).
func (c *Client) Resume(ctx context.Context, run string) (*ResumeResult, error) {
	s, err := c.snapshot(ctx, run)
	if err != nil {
		return nil, err
	}
	if s.last == "" {
		return nil, fmt.Errorf("%w: %s in namespace %q", ErrRunNotFound, run, c.cfg.Namespace)
	}
	evs, err := c.readLog(ctx, run, "-", s.last)
	if err != nil {
		return nil, err
	}
	a, err := Analyze(run, evs)
	if err != nil {
		return nil, err
	}
	r := a.Run
	res := &ResumeResult{Run: run, Status: string(r.Status), Reclaimed: []ResumedTask{}, Redispatched: []ResumedTask{}}
	if r.Status != projector.RunRunning {
		return res, c.reindex(ctx, run, evs[0])
	}
	if s.state[rdb.FieldRunStatus] != string(r.Status) {
		return nil, fmt.Errorf("run %s: live @status %q differs from the fold %q: run \"graflow replay verify %s\" first", run, s.state[rdb.FieldRunStatus], r.Status, run)
	}

	var want []wanted
	for _, t := range r.Tasks {
		if t.Status != projector.TaskDispatched && t.Status != projector.TaskRunning {
			continue
		}
		rec := s.state[t.Spec.ID]
		if rec != projector.RecordOf(t).String() {
			res.Skipped = append(res.Skipped, t.Spec.ID)
			continue
		}
		want = append(want, wanted{task: t.Spec.ID, attempt: t.Attempt, pool: t.Spec.Pool, priority: t.Spec.Priority, record: rec})
	}
	found, err := c.locate(ctx, run, want)
	if err != nil {
		return nil, err
	}
	lost, err := c.stillLost(ctx, run, want, found)
	if err != nil {
		return nil, err
	}
	res.Queued = len(want) - len(lost)

	due := map[string]int64{}
	for _, tt := range a.Timeline.Tasks {
		if n := len(tt.Attempts); n > 0 && !tt.Attempts[n-1].DueAt.IsZero() {
			due[tt.ID] = tt.Attempts[n-1].DueAt.UnixMilli()
		}
	}
	for i := 0; i < len(lost); i += resumeBatch {
		batch := lost[i:min(i+resumeBatch, len(lost))]
		if err := c.repair(ctx, run, r, batch, due, res); err != nil {
			return res, err
		}
	}
	return res, c.reindex(ctx, run, evs[0])
}

// reindex makes sure the run is in the run index and points the feed at
// it (repairing an import interrupted after its state was written).
func (c *Client) reindex(ctx context.Context, run string, submitted events.Event) error {
	pipe := c.cfg.Redis.Pipeline()
	pipe.ZAddNX(ctx, c.db.K.Runs(), redis.Z{Score: float64(submitted.Time.UnixMilli()), Member: run})
	c.db.PointFeed(ctx, pipe, run)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("index run %s: %w", run, err)
	}
	return nil
}

// repair re-dispatches one batch of lost tasks in one transaction.
func (c *Client) repair(ctx context.Context, run string, r *projector.Run, batch []wanted, due map[string]int64, res *ResumeResult) error {
	k := c.db.K
	for try := 0; try < resumeRetries; try++ {
		var reclaimed, redispatched []ResumedTask
		err := c.cfg.Redis.Watch(ctx, func(tx *redis.Tx) error {
			fields := make([]string, len(batch))
			for i, w := range batch {
				fields[i] = w.task
			}
			vals, err := tx.HMGet(ctx, k.RunState(run), fields...).Result()
			if err != nil {
				return err
			}
			now := c.cfg.Now()
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				for i, w := range batch {
					if cur, _ := vals[i].(string); cur != w.record {
						continue // moved on since the search
					}
					t := r.Task(w.task)
					rt := ResumedTask{Task: w.task, Attempt: t.Attempt, Epoch: t.Epoch}
					if t.Status == projector.TaskRunning {
						rt.From, rt.FromEpoch, rt.Epoch = t.Owner, t.Epoch, t.Epoch+1
						e := events.Event{ID: ulid.Make().String(), Run: run, Type: events.TaskReclaimed, Version: events.CurrentVersion,
							Task: w.task, Attempt: t.Attempt, Epoch: rt.Epoch, Worker: c.cfg.ID, Time: now}.
							WithBody(events.TaskReclaimedBody{From: t.Owner, Reason: ReclaimReasonResumed})
						p.XAdd(ctx, &redis.XAddArgs{Stream: k.RunLog(run), Values: e.Fields()})
						next := *t
						next.Status, next.Epoch, next.Owner = projector.TaskDispatched, rt.Epoch, ""
						p.HSet(ctx, k.RunState(run), w.task, projector.RecordOf(&next).String())
						reclaimed = append(reclaimed, rt)
					} else {
						redispatched = append(redispatched, rt)
					}
					d := rdb.Dispatch{Pool: t.Spec.Pool, Priority: t.Spec.Priority, Run: run, Task: w.task, Attempt: t.Attempt,
						EventID: ulid.Make().String()}
					if ms := due[w.task]; ms > now.UnixMilli() {
						d.DueMS = ms
					}
					if d.DueMS > 0 {
						p.ZAdd(ctx, k.DelayedFor(run), redis.Z{Score: float64(d.DueMS), Member: d.String()})
					} else {
						c.db.XAddDispatch(ctx, p, d)
					}
				}
				p.HSet(ctx, k.RunState(run), rdb.FieldRunDirty, "1")
				return nil
			})
			return err
		}, k.RunState(run))
		if errors.Is(err, redis.TxFailedErr) {
			continue // the state hash changed (another task finished): re-check
		}
		if err != nil {
			return fmt.Errorf("resume run %s: %w", run, err)
		}
		res.Reclaimed = append(res.Reclaimed, reclaimed...)
		res.Redispatched = append(res.Redispatched, redispatched...)
		return nil
	}
	return fmt.Errorf("%w: resume run %s: the run kept changing (%d attempts)", ErrConcurrentChange, run, resumeRetries)
}
