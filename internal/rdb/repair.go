package rdb

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/redis/go-redis/v9"
)

// RepairTask is what a repair needs to know of one task of a running run,
// from the fold of its log.
type RepairTask struct {
	ID, Owner string
	Status    events.TaskStatus
	Attempt   int
	Epoch     int64
	Pool      string
	Priority  int
}

// Repair re-dispatches a running run's tasks whose queue message is gone
// (deleted from a queue stream while pending by an XTRIM/XDEL, acked by
// hand, or lost by a failover): every dispatched task that is not parked
// in the delayed set and has no live message in its queue stream (see
// QueueIndex) gets a fresh message, and every running task whose owner is
// no longer registered, or whose owner holds no queue entry of it (pending
// for the owner and still in the stream), is handed back (release: epoch
// bumped, so a late result of the old claim is rejected) and gets one too.
// A claim whose entry its owner holds is never touched, and a duplicate
// message is dropped at claim. It points the feed at the run and returns
// the re-dispatched task ids. The messages carry traceparent ("": none).
//
// ix is what the queues held (nil: Repair reads them itself). A walk over
// many runs passes one index to a page of runs; a message queued after the
// index read its stream is not in it, so its task gets a duplicate, which
// is dropped at claim, and one deleted by hand after it is seen missing at
// the next read. Reads come first: a read that fails writes nothing.
//
// A live owner is not enough: an entry deleted while pending cannot be
// reclaimed, so its task would stay running once its owner dies, and the
// repair a reclaimer requests on finding such an entry may run before the
// owner's registry record expires.
func (d DB) Repair(ctx context.Context, run string, tasks []RepairTask, now time.Time, traceparent string, ix *QueueIndex) ([]string, error) {
	if ix == nil {
		ix = NewQueueIndex(run)
	}
	live, err := d.liveWorkers(ctx)
	if err != nil {
		return nil, err
	}
	parked, err := d.C.ZRange(ctx, d.K.DelayedFor(run), 0, -1).Result()
	if err != nil {
		return nil, err
	}
	isParked := map[string]bool{}
	for _, p := range parked {
		if x, err := ParseDispatch(p); err == nil && x.Run == run {
			isParked[x.Task+"|"+strconv.Itoa(x.Attempt)] = true
		}
	}
	held := map[[2]string]map[string]bool{} // (owner, stream) → task|attempt of the entries held
	holds := func(t RepairTask) (bool, error) {
		q := [2]string{t.Owner, d.K.QueueFor(run, t.Pool, t.Priority)}
		h, ok := held[q]
		if !ok {
			var err error
			if h, err = d.entriesHeld(ctx, q[1], q[0], run); err != nil {
				return false, err
			}
			held[q] = h
		}
		return h[t.ID+"|"+strconv.Itoa(t.Attempt)], nil
	}
	// The reads first: a read that fails leaves nothing half done.
	handBack, fresh := map[string]bool{}, map[string]bool{}
	for _, t := range tasks {
		switch {
		case t.Status == events.TaskStatusDispatched && !isParked[t.ID+"|"+strconv.Itoa(t.Attempt)]:
			queued, err := d.Queued(ctx, ix, d.K.QueueFor(run, t.Pool, t.Priority), run, t.ID, t.Attempt)
			if err != nil {
				return nil, err
			}
			fresh[t.ID] = !queued
		case t.Status == events.TaskStatusRunning:
			claimed := false
			if live[t.Owner] {
				if claimed, err = holds(t); err != nil {
					return nil, err
				}
			}
			handBack[t.ID] = !claimed
		}
	}
	var out []string
	pipe := d.C.Pipeline()
	for _, t := range tasks {
		x := Dispatch{Pool: t.Pool, Priority: t.Priority, Run: run, Task: t.ID, Attempt: t.Attempt, Trace: traceparent}
		if handBack[t.ID] {
			// Handed back and queued in one step: apart, a repair cut
			// off between them left the task dispatched with no message.
			err := d.ReleaseAndDispatch(ctx, t.Owner, t.Epoch, events.NewID(now), now.UnixMilli(), x)
			if err == nil {
				out = append(out, t.ID)
				continue
			}
			if !errors.Is(err, ErrStaleClaim) {
				_, _ = pipe.Exec(ctx) // the fresh messages so far, as out says
				return out, err
			}
			// It moved on since the log was read: a fresh message as
			// for a dispatched task (a duplicate is dropped at claim).
		} else if !fresh[t.ID] {
			continue
		}
		d.XAddDispatch(ctx, pipe, x)
		out = append(out, t.ID)
	}
	d.PointFeed(ctx, pipe, run)
	_, err = pipe.Exec(ctx)
	return out, err
}

// entriesHeld returns the tasks of run (as "task|attempt") whose queue
// entries on stream are pending for consumer and still in the stream: two
// round trips per page of 512 pending entries.
func (d DB) entriesHeld(ctx context.Context, stream, consumer, run string) (map[string]bool, error) {
	out := map[string]bool{}
	for start := "-"; ; {
		p, err := d.C.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: GroupWorkers, Start: start, End: "+",
			Count: heldPage, Consumer: consumer}).Result()
		if IsNoGroup(err) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read the entries %s holds on %s: %w", consumer, stream, err)
		}
		pipe := d.C.Pipeline()
		entries := make([]*redis.XMessageSliceCmd, len(p))
		for i, e := range p {
			entries[i] = pipe.XRangeN(ctx, stream, e.ID, e.ID, 1)
		}
		if len(p) > 0 {
			if _, err := pipe.Exec(ctx); err != nil {
				return nil, fmt.Errorf("read the entries %s holds on %s: %w", consumer, stream, err)
			}
		}
		for _, c := range entries {
			for _, m := range c.Val() { // none: deleted while pending
				if m.Values["r"] == run {
					out[fmt.Sprint(m.Values["k"])+"|"+fmt.Sprint(m.Values["a"])] = true
				}
			}
		}
		if len(p) < heldPage {
			return out, nil
		}
		start = "(" + p[len(p)-1].ID
	}
}

// heldPage is the page of pending entries entriesHeld reads at a time.
const heldPage = 512

// liveWorkers returns the ids of the registered workers whose registry
// hash exists.
func (d DB) liveWorkers(ctx context.Context) (map[string]bool, error) {
	ids, err := d.C.SMembers(ctx, d.K.Workers()).Result()
	if err != nil {
		return nil, err
	}
	pipe := d.C.Pipeline()
	cmds := make([]*redis.IntCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.Exists(ctx, d.K.Worker(id))
	}
	if len(ids) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, err
		}
	}
	live := map[string]bool{}
	for i, id := range ids {
		live[id] = cmds[i].Val() == 1
	}
	return live, nil
}

// RunningRuns returns up to n ids of the run index from rank start whose
// state is running, and the rank to start the next page at (0 after the
// last page).
func (d DB) RunningRuns(ctx context.Context, start, n int64) (runs []string, next int64, err error) {
	ids, err := d.C.ZRange(ctx, d.K.Runs(), start, start+n-1).Result()
	if err != nil {
		return nil, 0, err
	}
	pipe := d.C.Pipeline()
	cmds := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGet(ctx, d.K.RunState(id), FieldRunStatus)
	}
	if len(ids) > 0 {
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, 0, err
		}
	}
	for i, id := range ids {
		if cmds[i].Val() == string(events.RunStatusRunning) {
			runs = append(runs, id)
		}
	}
	if int64(len(ids)) < n {
		return runs, 0, nil
	}
	return runs, start + n, nil
}

// RequestRepair records that a repair of every running run is wanted (see
// Repair) in the namespace's request; the reclaim script records the
// requests it makes in its partition's. Each request bumps the request's
// generation, so that one made while a repair walks is not cleared by
// that walk's end.
func (d DB) RequestRepair(ctx context.Context) error {
	return d.C.Incr(ctx, d.K.RepairRequested()).Err()
}

// RepairRequests are the repair requests found: request key → generation.
// Empty: none.
type RepairRequests map[string]int64

// RepairRequest returns the repair requests waiting for a walk of every
// running run (Keys.RepairRequests).
func (d DB) RepairRequest(ctx context.Context) (RepairRequests, error) {
	keys := d.K.RepairRequests()
	cmds := make([]*redis.StringCmd, len(keys))
	_, err := d.C.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = pipe.Get(ctx, k)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	reqs := RepairRequests{}
	for i, c := range cmds {
		gen, err := c.Int64()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read repair request %s: %w", keys[i], err)
		}
		reqs[keys[i]] = gen
	}
	return reqs, nil
}

// repairDoneScript clears a repair request if it is still of the
// generation a walk answered (a newer request keeps it).
//
// KEYS: 1 the request
// ARGV: 1 the generation the walk answered
// Reply: 1 cleared, 0 a newer request (or none)
var repairDoneScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// RepairDone clears the repair requests a walk answered, once it repaired
// every running run, but those renewed meanwhile.
func (d DB) RepairDone(ctx context.Context, reqs RepairRequests) error {
	for key, gen := range reqs {
		if err := repairDoneScript.Run(ctx, d.C, []string{key}, gen).Err(); err != nil {
			return err
		}
	}
	return nil
}
