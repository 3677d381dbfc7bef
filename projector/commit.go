package projector

import (
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
)

// prepare decides what c's folded run calls for (at most BatchSize
// decisions) and builds the commit that appends them with a compare-and-set
// on c's cursor.
func (p *Projector) prepare(c *cached) ([]events.Event, rdb.Commit) {
	decisions := Decide(c.run, p.cfg.BatchSize, p.retryDelay)
	now := p.cfg.Clock.Now()
	records := map[string]string{}
	expect := map[string]string{}
	var dispatches []rdb.Dispatch
	for i := range decisions {
		d := &decisions[i]
		d.ID, d.Time, d.Worker, d.Version = events.NewID(now), now, p.cfg.ID, events.CurrentVersion
		// A delay counts from the event that called for it (the
		// task's failure for a retry; for a delayed start, the event
		// that made the task ready: its entry into the run, its last
		// dependency's success), not from this commit, which may come
		// late (a projector that lagged or was down). Never later than
		// the commit's own clock would make it: an event written by a
		// clock ahead of this one delays nothing further.
		t := c.run.Task(d.Task)
		if d.Type == events.TaskRetryScheduled {
			var b events.TaskRetryScheduledBody
			_ = d.DecodeBody(&b)
			var from int64
			if t != nil {
				from = t.failedMS
			}
			b.DueMS = dueAfter(now, from, b.DelayMS)
			*d = d.WithBody(b)
		}
		if d.Type == events.TaskDispatched {
			var b events.TaskDispatchedBody
			if _ = d.DecodeBody(&b); b.DelayMS > 0 { // a delayed start
				var from int64
				if t != nil {
					from = t.readyMS
				}
				b.DueMS = dueAfter(now, from, b.DelayMS)
				*d = d.WithBody(b)
			}
		}
		if t != nil {
			// The record this decision was taken on (decisions change
			// their tasks only in the cached fold's successor state).
			expect[d.Task] = RecordOf(t).String()
		}
		rec, disp := p.effect(c.run, *d)
		for f, v := range rec {
			records[f] = v
		}
		if disp != nil {
			dispatches = append(dispatches, *disp)
		}
	}
	commit := rdb.Commit{
		Expected: c.head, FoldedTo: c.run.LastSeq, Writer: p.cfg.ID, TimeMS: now.UnixMilli(),
		Events: decisions, Records: records, Expect: expect, Dispatches: dispatches,
	}
	ends := c.run.Status == RunCancelled // ended by the cancel script, which sets no TTL
	for _, d := range decisions {
		ends = ends || d.Type == events.RunSucceeded || d.Type == events.RunFailed
	}
	if ends {
		commit.CompactLog, commit.TTL = max(p.cfg.CompactLog, 0), p.cfg.RunTTL
	}
	return decisions, commit
}

// effect computes what a decision writes besides its event: task records,
// run fields, and the dispatch the commit enqueues.
func (p *Projector) effect(r *Run, d events.Event) (map[string]string, *rdb.Dispatch) {
	switch d.Type {
	case events.RunSucceeded:
		return map[string]string{rdb.FieldRunStatus: string(RunSucceeded)}, nil
	case events.RunFailed:
		return map[string]string{rdb.FieldRunStatus: string(RunFailed)}, nil
	}
	t := r.Task(d.Task)
	if t == nil {
		return nil, nil
	}
	next := *t
	switch d.Type {
	case events.TaskSkipped:
		next.Status = TaskSkipped
	case events.TaskRequeued:
		next.Status, next.Owner = TaskPending, ""
	case events.TaskDispatched, events.TaskRetryScheduled:
		next.Status, next.Attempt = TaskDispatched, d.Attempt
	}
	rec := map[string]string{d.Task: RecordOf(&next).String()}
	if next.Status != TaskDispatched {
		return rec, nil
	}
	disp := &rdb.Dispatch{Pool: t.Spec.Pool, Priority: t.Spec.Priority, Run: r.ID, Task: d.Task, Attempt: d.Attempt, EventID: d.ID}
	switch d.Type {
	case events.TaskRetryScheduled:
		var b events.TaskRetryScheduledBody
		_ = d.DecodeBody(&b)
		disp.DueMS = b.DueMS
	case events.TaskDispatched:
		var b events.TaskDispatchedBody
		_ = d.DecodeBody(&b)
		disp.DueMS = b.DueMS
	}
	return rec, disp
}

// RecordOf is the lease record of a task as the Redis state hash stores it.
func RecordOf(t *Task) rdb.Record {
	return rdb.Record{Status: t.Status, Attempt: t.Attempt, Epoch: t.Epoch, Owner: t.Owner}
}

func (p *Projector) retryDelay(spec events.TaskSpec, attempt int) time.Duration {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.Multiplier = p.cfg.RetryInitial, p.cfg.RetryMax, p.cfg.RetryMultiplier
	b.RandomizationFactor, b.MaxElapsedTime = p.cfg.RetryJitter, 0
	b.Reset()
	d := b.NextBackOff()
	for i := 2; i < attempt; i++ {
		d = b.NextBackOff()
	}
	return d
}

// dueAfter is when a delay of delayMS counted from fromMS (Unix ms; 0:
// unknown) ends: from the earlier of fromMS and now.
func dueAfter(now time.Time, fromMS, delayMS int64) int64 {
	start := now.UnixMilli()
	if fromMS > 0 && fromMS < start {
		start = fromMS
	}
	return start + delayMS
}
