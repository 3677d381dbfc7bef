package rdb_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// The finish that accepts a small run's last success ends the run itself
// (finishScript, FinishArgs.EndID): these tests drive runs as a projector
// and workers would (dispatches queued by commits, messages read by the
// workers' group, claims, finishes that ack them).

// endPolicy is the end policy a projector records with its defaults:
// logs of up to 1,000 events compacted, runs kept an hour.
var endPolicy = &rdb.EndPolicy{CompactLog: rdb.DefaultCompactLog, TTL: time.Hour}

// endRun submits a run of specs (nothing dispatched) in a fresh namespace
// whose partition holds policy, as a projector's start records it; nil
// records none (no projector has started since the upgrade).
func endRun(t *testing.T, policy *rdb.EndPolicy, specs ...events.TaskSpec) scriptBundle {
	t.Helper()
	b := setupRun(t).submitRun(t, specs)
	if policy != nil {
		if err := b.db.SetEndPolicy(b.ctx, []int{b.db.K.Partition(b.run)}, *policy); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// parallel is n tasks with no dependencies, t00, t01, ...
func parallel(n int) []events.TaskSpec {
	specs := make([]events.TaskSpec, n)
	for i := range specs {
		specs[i] = events.TaskSpec{ID: fmt.Sprintf("t%02d", i), Handler: "h"}
	}
	return specs
}

// endQueue is the queue the run's dispatches go to.
func (b scriptBundle) endQueue() string { return b.db.K.QueueFor(b.run, "default", 0) }

// dispatchQueued commits the dispatch of tasks' first attempts onto the
// run's queue, as a projector would, and reads their messages as consumer:
// it returns each task's message id.
func (b scriptBundle) dispatchQueued(t *testing.T, consumer string, tasks ...string) map[string]string {
	t.Helper()
	q := b.endQueue()
	if err := b.db.EnsureGroup(b.ctx, q, rdb.GroupWorkers); err != nil {
		t.Fatal(err)
	}
	c := rdb.Commit{Expected: b.head(t), FoldedTo: b.last(t), Writer: "p1", TimeMS: 2000, Records: map[string]string{}}
	for _, task := range tasks {
		c.Events = append(c.Events, events.Event{ID: ulid.Make().String(), Type: events.TaskDispatched, Task: task, Attempt: 1}.
			WithBody(events.TaskDispatchedBody{Pool: "default"}))
		c.Records[task] = "dispatched|1|0|"
		c.Dispatches = append(c.Dispatches, rdb.Dispatch{Pool: "default", Run: b.run, Task: task, Attempt: 1})
	}
	if res, err := b.db.Commit(b.ctx, b.run, c); err != nil || res.Conflict {
		t.Fatalf("dispatch commit = %+v, %v", res, err)
	}
	ids := map[string]string{}
	for len(ids) < len(tasks) {
		res, err := b.c.XReadGroup(b.ctx, &redis.XReadGroupArgs{Group: rdb.GroupWorkers, Consumer: consumer,
			Streams: []string{q, ">"}, Count: 1000, Block: -1}).Result()
		if err != nil {
			t.Fatalf("read the dispatches of %v (%d found): %v", tasks, len(ids), err)
		}
		for _, m := range res[0].Messages {
			if m.Values[rdb.MsgRun] == b.run {
				ids[m.Values[rdb.MsgTask].(string)] = m.ID
			}
		}
	}
	return ids
}

// success claims task's first attempt for worker (who read its message
// msg as consumer worker) and returns the success the worker reports,
// with an end id as the worker sets it.
func (b scriptBundle) success(t *testing.T, task, worker, msg string) rdb.FinishArgs {
	t.Helper()
	cr := b.claim(t, task, worker, 1, false)
	if cr.Outcome != rdb.ClaimOK {
		t.Fatalf("claim of %s = %+v", task, cr)
	}
	a := rdb.FinishArgs{Run: b.run, Task: task, Worker: worker, Attempt: 1, Epoch: cr.Epoch,
		EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 4000,
		Type: events.TaskSucceeded, Status: events.TaskStatusSucceeded, Result: []byte(`{"by":"` + worker + `"}`),
		Stream: b.endQueue(), MessageID: msg, Consumer: worker, EndID: ulid.Make().String()}
	a.Body = events.Event{}.WithBody(events.TaskSucceededBody{Result: a.Result}).Body
	return a
}

// finishCall runs one finish call for as (outcomes of b's run, one
// consumer) and returns its outcomes.
func (b scriptBundle) finishCall(t *testing.T, as ...rdb.FinishArgs) []rdb.FinishOutcome {
	t.Helper()
	outs, err := rdb.ParseFinishes(as, b.db.FinishesCmd(b.ctx, b.c, as))
	if err != nil {
		t.Fatalf("finish: %v", err)
	}
	return outs
}

// finishOne runs the finish of a alone, which must be accepted.
func (b scriptBundle) finishOne(t *testing.T, a rdb.FinishArgs) rdb.FinishOutcome {
	t.Helper()
	out := b.finishCall(t, a)[0]
	if out.Err != nil {
		t.Fatalf("finish of %s: %v", a.Task, out.Err)
	}
	return out
}

// feedPoints counts the entries of the run's partition feed naming it.
func (b scriptBundle) feedPoints(t *testing.T) int {
	t.Helper()
	msgs, err := b.c.XRange(b.ctx, b.db.K.FeedFor(b.run), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range msgs {
		if m.Values[rdb.MsgRun] == b.run {
			n++
		}
	}
	return n
}

// ends returns the run_succeeded events of the run's log.
func (b scriptBundle) ends(t *testing.T) []events.Event {
	t.Helper()
	var out []events.Event
	for _, e := range b.log(t) {
		if e.Type == events.RunSucceeded {
			out = append(out, e)
		}
	}
	return out
}

// checkLeftToProjector checks that the run was not ended: no
// run_succeeded, still running, dirty, and its feed pointed at it since
// feedBefore (its projector decides).
func (b scriptBundle) checkLeftToProjector(t *testing.T, feedBefore int) {
	t.Helper()
	if ends := b.ends(t); len(ends) != 0 {
		t.Errorf("the log holds %d run_succeeded, want none", len(ends))
	}
	st := b.hash(t, b.db.K.RunState(b.run))
	if st[rdb.FieldRunStatus] != "running" || st[rdb.FieldRunDirty] != "1" {
		t.Errorf("@status %q, @dirty %q; want running and dirty", st[rdb.FieldRunStatus], st[rdb.FieldRunDirty])
	}
	if n := b.feedPoints(t); n <= feedBefore {
		t.Errorf("the feed names the run %d times, as before the finishes: want it pointed for the projector", n)
	}
}

// checkEnded checks that the finish of a ended the run as the projector's
// end commit would: run_succeeded last in the log with a's end id and
// worker, the state, dag and results hashes deleted (a succeeded run keeps
// only its log), RunStatus succeeded from the log, the feed not pointed
// since feedBefore; and that the fold of the log, and replay verify of the
// (absent) live hashes against it, agree.
func (b scriptBundle) checkEnded(t *testing.T, a rdb.FinishArgs, feedBefore int) {
	t.Helper()
	log := b.log(t)
	if ends := b.ends(t); len(ends) != 1 {
		t.Fatalf("the log holds %d run_succeeded, want one", len(ends))
	}
	end := log[len(log)-1]
	if end.Type != events.RunSucceeded || end.ID != a.EndID || end.Worker != a.Worker || end.Task != "" {
		t.Errorf("last event %s id %s by %q (task %q); want run_succeeded id %s by %s", end.Type, end.ID, end.Worker, end.Task, a.EndID, a.Worker)
	}
	if prev := log[len(log)-2]; prev.Type != events.TaskSucceeded || prev.Task != a.Task || prev.ID != a.EventID {
		t.Errorf("event before the end: %s of %s id %s; want the success of %s", prev.Type, prev.Task, prev.ID, a.Task)
	}
	st := b.hash(t, b.db.K.RunState(b.run))
	if n, err := b.c.Exists(b.ctx, b.db.K.RunState(b.run)).Result(); err != nil || n != 0 {
		t.Errorf("the state hash (with the tasks' metadata and results) left after the end (%d, %v): the run keeps only its log", n, err)
	}
	if s, err := b.db.RunStatus(b.ctx, b.run); err != nil || s != "succeeded" {
		t.Errorf("RunStatus = %q, %v after the end; want succeeded (from the log)", s, err)
	}
	if n := b.feedPoints(t); n != feedBefore {
		t.Errorf("the feed names the run %d times, %d before the end: an ended run needs no projector", n, feedBefore)
	}

	an, err := replay.Analyze(b.run, log)
	if err != nil {
		t.Fatal(err)
	}
	if an.Run.Status != projector.RunSucceeded || len(an.Problems) != 0 {
		t.Errorf("the fold of the log: %s, problems %v; want succeeded, none", an.Run.Status, an.Problems)
	}
	if d := projector.Decide(an.Run, 0, nil); len(d) != 0 {
		t.Errorf("the projector would still decide %v", d)
	}
	live := replay.Live{State: st, Results: b.results(t), DAG: b.dag(t), LastSeq: end.Seq}
	rep, _ := replay.Verify(b.run, b.db.K.Namespace(), live, log, nil)
	if err := rep.Err(); err != nil || rep.Status != "succeeded" {
		t.Errorf("replay verify: status %s, %v", rep.Status, err)
	}
}

// runKeys are the keys an end gives the policy's TTL (a succeeded run
// keeps only these).
func (b scriptBundle) runKeys() []string {
	return []string{b.db.K.RunLog(b.run), b.db.K.RunChannel(b.run)}
}

// A one-task run's success ends the run in its finish: the outcome says
// so, the end is the projector's (see checkEnded), its message is acked,
// and the policy's TTL and compaction apply to the run's keys.
func TestFinishEndsASingleTaskRun(t *testing.T) {
	t.Parallel()
	b := endRun(t, endPolicy, events.TaskSpec{ID: "solo", Handler: "h"})
	a := b.success(t, "solo", "w1", b.dispatchQueued(t, "w1", "solo")["solo"])
	if err := b.c.HSet(b.ctx, b.db.K.RunChannel(b.run), "k", "v").Err(); err != nil { // as a handler's channel write
		t.Fatal(err)
	}
	feed := b.feedPoints(t)
	out := b.finishOne(t, a)
	if !out.Ended || out.Acked != 1 {
		t.Errorf("outcome %+v; want ended, message acked", out)
	}
	b.checkEnded(t, a, feed)
	for _, k := range b.runKeys() {
		if ttl, err := b.c.PTTL(b.ctx, k).Result(); err != nil || ttl <= 0 || ttl > time.Hour {
			t.Errorf("%s: TTL %v, %v; want the policy's (0, 1h]", k, ttl, err)
		}
	}
	if n, err := b.c.MemoryUsage(b.ctx, b.db.K.RunLog(b.run), 0).Result(); err != nil || n >= 4096 {
		t.Errorf("MEMORY USAGE of the ended run's log = %d, %v; want it compacted below the 4 KiB preallocated node", n, err)
	}
	if n, _ := b.c.Exists(b.ctx, b.db.K.RunLogCompact(b.run)).Result(); n != 0 {
		t.Error("the compaction's scratch key is left behind")
	}
	if p, err := b.c.XPending(b.ctx, b.endQueue(), rdb.GroupWorkers).Result(); err != nil || p.Count != 0 {
		t.Errorf("pending messages %+v, %v: want the attempt's message acked", p, err)
	}
}

// Before any projector has recorded the end policy in the partition, a
// finish ends no run: the success only marks the run dirty and points the
// feed, and the projector ends it.
func TestFinishWithoutEndPolicyLeavesTheEndToTheProjector(t *testing.T) {
	t.Parallel()
	b := endRun(t, nil, events.TaskSpec{ID: "solo", Handler: "h"})
	a := b.success(t, "solo", "w1", b.dispatchQueued(t, "w1", "solo")["solo"])
	feed := b.feedPoints(t)
	if out := b.finishOne(t, a); out.Ended || !out.Dirty {
		t.Errorf("outcome %+v; want newly dirty, not ended", out)
	}
	b.checkLeftToProjector(t, feed)
	if ttl, err := b.c.PTTL(b.ctx, b.db.K.RunState(b.run)).Result(); err != nil || ttl != -1 {
		t.Errorf("state TTL %v, %v; want none (-1)", ttl, err)
	}
}

// A success while another task has not succeeded does not end the run;
// the other's success, the run's last, does, with its worker as the end's.
func TestFinishEndsTheRunOnlyWithItsLastSuccess(t *testing.T) {
	t.Parallel()
	b := endRun(t, endPolicy, events.TaskSpec{ID: "a", Handler: "h"}, events.TaskSpec{ID: "b", Handler: "h"})
	ma, mb := b.dispatchQueued(t, "w1", "a")["a"], b.dispatchQueued(t, "w2", "b")["b"]
	first, last := b.success(t, "a", "w1", ma), b.success(t, "b", "w2", mb) // both running
	feed := b.feedPoints(t)
	if out := b.finishOne(t, first); out.Ended {
		t.Fatalf("a's success, b running: outcome %+v, want not ended", out)
	}
	b.checkLeftToProjector(t, feed)
	feed = b.feedPoints(t)
	if out := b.finishOne(t, last); !out.Ended {
		t.Errorf("b's success, the last: outcome %+v, want ended", out)
	}
	b.checkEnded(t, last, feed)
}

// One call with the successes of both tasks of a run ends it: the end
// check counts the call's own successes, whose records the call has not
// written yet (a call that ends the run writes no records: the end
// deletes them).
func TestFinishEndsTheRunWithTheLastTwoSuccessesInOneCall(t *testing.T) {
	t.Parallel()
	b := endRun(t, endPolicy, events.TaskSpec{ID: "a", Handler: "h"}, events.TaskSpec{ID: "b", Handler: "h"})
	msgs := b.dispatchQueued(t, "w1", "a", "b")
	first, last := b.success(t, "a", "w1", msgs["a"]), b.success(t, "b", "w1", msgs["b"])
	feed := b.feedPoints(t)
	outs := b.finishCall(t, first, last)
	for i, out := range outs {
		if out.Err != nil || !out.Ended {
			t.Fatalf("item %d of the call: outcome %+v, want accepted and ended", i, out)
		}
	}
	// The end follows the call's last success and carries the call's
	// first end id.
	want := last
	want.EndID = first.EndID
	b.checkEnded(t, want, feed)
}

// An ack that fails (the queue's group is gone: NOGROUP) fails the finish
// call after its items were appended, as Redis rolls nothing back. The
// call's records and results are written before the ack, so the log and the
// state agree: the outcome is recorded, and the call sent again is the
// retry of an accepted outcome, with no second event.
func TestFinishWhoseAckFailsLeavesItsRecordsWithItsEvents(t *testing.T) {
	t.Parallel()
	b := endRun(t, endPolicy, events.TaskSpec{ID: "a", Handler: "h"}, events.TaskSpec{ID: "b", Handler: "h"})
	msgs := b.dispatchQueued(t, "w1", "a")
	a := b.success(t, "a", "w1", msgs["a"])
	if err := b.c.XGroupDestroy(b.ctx, b.endQueue(), rdb.GroupWorkers).Err(); err != nil {
		t.Fatal(err)
	}
	for try := 1; try <= 2; try++ {
		if _, err := rdb.ParseFinishes([]rdb.FinishArgs{a}, b.db.FinishesCmd(b.ctx, b.c, []rdb.FinishArgs{a})); err == nil {
			t.Fatalf("call %d: finish acked into a missing group without an error", try)
		}
		if rec := b.hash(t, b.db.K.RunState(b.run))["a"]; rec != "succeeded|1|1|w1" {
			t.Errorf("call %d: a's record %q after its task_succeeded was appended, want succeeded|1|1|w1", try, rec)
		}
		n := 0
		for _, e := range b.log(t) {
			if e.Type == events.TaskSucceeded && e.Task == "a" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("call %d: %d task_succeeded of a in the log, want 1", try, n)
		}
	}
	if res := b.results(t)["a"]; res == "" {
		t.Error("a's result is not in the results hash")
	}
}

// The end's bound on the run's size: the last success of a run of
// EndMaxTasks tasks ends it; in a run of one more task no success does
// (the finish reads no more records), and the feed is pointed for the
// projector.
func TestFinishEndsOnlyRunsOfAtMostEndMaxTasks(t *testing.T) {
	t.Parallel()
	for _, n := range []int{rdb.EndMaxTasks, rdb.EndMaxTasks + 1} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			specs := parallel(n)
			b := endRun(t, endPolicy, specs...)
			var ids []string
			for _, s := range specs {
				ids = append(ids, s.ID)
			}
			msgs := b.dispatchQueued(t, "w", ids...)
			feed, feedLast := b.feedPoints(t), 0
			var a rdb.FinishArgs
			for i, task := range ids {
				a = b.success(t, task, "w", msgs[task])
				feedLast = b.feedPoints(t)
				out := b.finishOne(t, a)
				if want := i == n-1 && n <= rdb.EndMaxTasks; out.Ended != want {
					t.Fatalf("success %d of %d: ended %v, want %v", i+1, n, out.Ended, want)
				}
			}
			if n <= rdb.EndMaxTasks {
				b.checkEnded(t, a, feedLast)
			} else {
				b.checkLeftToProjector(t, feed)
			}
		})
	}
}

// The same finish again after it ended the run (a retry after a lost
// reply) is the already accepted outcome: no error, and nothing written:
// no second run_succeeded, the state as the end left it.
func TestFinishRetriedAfterTheEndAppendsNoSecondEnd(t *testing.T) {
	t.Parallel()
	b := endRun(t, endPolicy, events.TaskSpec{ID: "solo", Handler: "h"})
	a := b.success(t, "solo", "w1", b.dispatchQueued(t, "w1", "solo")["solo"])
	if out := b.finishOne(t, a); !out.Ended {
		t.Fatalf("outcome %+v, want ended", out)
	}
	n, state := len(b.log(t)), b.hash(t, b.db.K.RunState(b.run))
	if out := b.finishOne(t, a); out.Ended {
		t.Errorf("the retried finish: outcome %+v, want not ended again", out)
	}
	if got := len(b.log(t)); got != n {
		t.Errorf("the retried finish appended %d events", got-n)
	}
	if diff := cmp.Diff(state, b.hash(t, b.db.K.RunState(b.run))); diff != "" {
		t.Errorf("the retried finish changed the state (-before +after):\n%s", diff)
	}
}

// A run that is not running is not ended by a success. A cancelled run's
// worker is fenced (its success is stale); a quarantined run's claim
// holds, and its success is accepted, but the run stays quarantined.
func TestFinishDoesNotEndARunThatIsNotRunning(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status string
		stop   func(t *testing.T, b scriptBundle)
		stale  bool
	}{
		{"cancelled", "cancelled", func(t *testing.T, b scriptBundle) {
			res, err := b.db.CancelRun(b.ctx, b.run, "client-1", "test", 5000, func() string { return ulid.Make().String() })
			if err != nil || res.Outcome != "cancelled" {
				t.Fatalf("cancel = %+v, %v", res, err)
			}
		}, true},
		{"quarantined", "quarantined", func(t *testing.T, b scriptBundle) {
			ev := events.Event{ID: ulid.Make().String(), Type: events.RunQuarantined, Worker: "p1", Time: time.UnixMilli(5000)}.
				WithBody(events.RunQuarantinedBody{Reason: "test"})
			if done, ierr, err := b.db.Quarantine(b.ctx, b.run, ev, "test"); err != nil || ierr != nil || !done {
				t.Fatalf("quarantine = %v, %v, %v", done, ierr, err)
			}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := endRun(t, endPolicy, events.TaskSpec{ID: "solo", Handler: "h"})
			a := b.success(t, "solo", "w1", b.dispatchQueued(t, "w1", "solo")["solo"])
			tt.stop(t, b)
			out := b.finishCall(t, a)[0]
			if stale := errors.Is(out.Err, rdb.ErrStaleClaim); stale != tt.stale || out.Ended || (!stale && out.Err != nil) {
				t.Errorf("outcome %+v; want stale %v, not ended", out, tt.stale)
			}
			if ends := b.ends(t); len(ends) != 0 {
				t.Errorf("the log holds %d run_succeeded, want none", len(ends))
			}
			if st := b.hash(t, b.db.K.RunState(b.run)); st[rdb.FieldRunStatus] != tt.status {
				t.Errorf("@status %q, want %s", st[rdb.FieldRunStatus], tt.status)
			}
		})
	}
}

// Only a success the call accepts ends a run: a zombie's stale success,
// with an end id, arriving when every task has succeeded but the run
// still waits for its projector (which recorded its policy only since),
// is rejected and ends nothing.
func TestFinishStaleSuccessDoesNotEndTheRun(t *testing.T) {
	t.Parallel()
	b := endRun(t, nil, events.TaskSpec{ID: "solo", Handler: "h"})
	msg := b.dispatchQueued(t, "w1", "solo")["solo"]
	zombie := b.success(t, "solo", "w1", msg) // epoch 1
	if cr := b.claim(t, "solo", "w2", 1, true); cr.Outcome != rdb.ClaimOK || cr.Epoch != 3 {
		t.Fatalf("reclaim = %+v, want ok at epoch 3", cr)
	}
	holder := zombie
	holder.Worker, holder.Epoch, holder.MessageID = "w2", 3, ""
	holder.EventID, holder.RejectID, holder.EndID = ulid.Make().String(), ulid.Make().String(), ulid.Make().String()
	if out := b.finishOne(t, holder); out.Ended {
		t.Fatalf("the holder's success without a policy: outcome %+v, want not ended", out)
	}
	if err := b.db.SetEndPolicy(b.ctx, []int{b.db.K.Partition(b.run)}, *endPolicy); err != nil {
		t.Fatal(err)
	}
	out := b.finishCall(t, zombie)[0]
	if !errors.Is(out.Err, rdb.ErrStaleClaim) || out.Ended {
		t.Errorf("the zombie's success: outcome %+v, want stale, not ended", out)
	}
	if ends := b.ends(t); len(ends) != 0 {
		t.Errorf("the log holds %d run_succeeded, want none", len(ends))
	}
	if st := b.hash(t, b.db.K.RunState(b.run)); st[rdb.FieldRunStatus] != "running" || st[rdb.FieldRunDirty] != "1" {
		t.Errorf("@status %q, @dirty %q; want running and dirty (its projector ends it)", st[rdb.FieldRunStatus], st[rdb.FieldRunDirty])
	}
}

// A success that spawns tasks does not end a one-task run: the spawned
// tasks are pending. The last spawned task's success ends it, and the
// fold and replay verify agree (the end comes after tasks_added).
func TestFinishWithASpawnDoesNotEndTheRun(t *testing.T) {
	t.Parallel()
	b := endRun(t, endPolicy, events.TaskSpec{ID: "a", Handler: "h"})
	a := b.success(t, "a", "w1", b.dispatchQueued(t, "w1", "a")["a"])
	sp, err := rdb.NewSpawn(ulid.Make().String(), twoSpawned, []string{"x1"}, nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	a.Spawn = sp
	feed := b.feedPoints(t)
	if out := b.finishOne(t, a); out.Ended {
		t.Fatalf("the spawning success: outcome %+v, want not ended", out)
	}
	b.checkLeftToProjector(t, feed)
	if n := len(b.dag(t)); n != 3 {
		t.Fatalf("the dag holds %d tasks, want a and the two spawned", n)
	}
	x0 := b.success(t, "x0", "w1", b.dispatchQueued(t, "w1", "x0")["x0"])
	if out := b.finishOne(t, x0); out.Ended {
		t.Fatalf("x0's success, x1 pending: outcome %+v, want not ended", out)
	}
	x1 := b.success(t, "x1", "w2", b.dispatchQueued(t, "w2", "x1")["x1"])
	feed = b.feedPoints(t)
	if out := b.finishOne(t, x1); !out.Ended {
		t.Errorf("x1's success, the last: outcome %+v, want ended", out)
	}
	b.checkEnded(t, x1, feed)
}

// A call ends the run only with an end id: with none on any item it
// leaves the end to the projector, even when its successes are the run's
// last; with one on a later item only, that one is the end's id, and every
// outcome of the call says the run ended.
func TestFinishEndsTheRunOnlyWithAnEndID(t *testing.T) {
	t.Parallel()
	for _, withID := range []bool{false, true} {
		t.Run(fmt.Sprintf("end id on the second item: %v", withID), func(t *testing.T) {
			t.Parallel()
			b := endRun(t, endPolicy, parallel(2)...)
			msgs := b.dispatchQueued(t, "w", "t00", "t01")
			first, second := b.success(t, "t00", "w", msgs["t00"]), b.success(t, "t01", "w", msgs["t01"])
			first.EndID = ""
			if !withID {
				second.EndID = ""
			}
			feed := b.feedPoints(t)
			outs := b.finishCall(t, first, second)
			for i, out := range outs {
				if out.Err != nil || out.Ended != withID {
					t.Errorf("outcome %d: %+v, want ended %v", i, out, withID)
				}
			}
			if withID {
				b.checkEnded(t, second, feed)
			} else {
				b.checkLeftToProjector(t, feed)
			}
		})
	}
}

// The end applies the recorded policy's parts independently: TTL 0 sets
// none (the keys keep no expiry); compaction 0, or a log longer than the
// bound, leaves the log as it is (its preallocated node still counted);
// the log holds every event either way.
func TestFinishEndAppliesThePolicy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                string
		policy              rdb.EndPolicy
		compacted, expiring bool
	}{
		{"no compaction, no TTL", rdb.EndPolicy{}, false, false},
		{"compaction, no TTL", rdb.EndPolicy{CompactLog: 1000}, true, false},
		{"TTL, no compaction", rdb.EndPolicy{TTL: time.Hour}, false, true},
		{"a log longer than the compaction bound", rdb.EndPolicy{CompactLog: 4}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := endRun(t, &tt.policy, events.TaskSpec{ID: "solo", Handler: "h"})
			a := b.success(t, "solo", "w1", b.dispatchQueued(t, "w1", "solo")["solo"])
			if err := b.c.HSet(b.ctx, b.db.K.RunChannel(b.run), "k", "v").Err(); err != nil {
				t.Fatal(err)
			}
			feed := b.feedPoints(t)
			if out := b.finishOne(t, a); !out.Ended {
				t.Fatalf("outcome %+v, want ended", out)
			}
			b.checkEnded(t, a, feed)
			for _, k := range b.runKeys() {
				ttl, err := b.c.PTTL(b.ctx, k).Result()
				if err != nil || (ttl > 0) != tt.expiring || (!tt.expiring && ttl != -1) {
					t.Errorf("%s: TTL %v, %v; want expiring %v", k, ttl, err, tt.expiring)
				}
			}
			n, err := b.c.MemoryUsage(b.ctx, b.db.K.RunLog(b.run), 0).Result()
			if err != nil || (n < 4096) != tt.compacted {
				t.Errorf("MEMORY USAGE of the log = %d, %v; want compacted (below the 4 KiB preallocated node) %v", n, err, tt.compacted)
			}
			var types []events.Type
			for _, e := range b.log(t) {
				types = append(types, e.Type)
			}
			want := []events.Type{events.RunSubmitted, events.TaskDispatched, events.TaskClaimed, events.TaskSucceeded, events.RunSucceeded}
			if diff := cmp.Diff(want, types); diff != "" {
				t.Errorf("log (-want +got):\n%s", diff)
			}
		})
	}
}

// The end check reads a run's records only once @ok (the successes finish
// calls accepted) reaches the run's task count: a run one of whose
// successes was recorded without counting (an imported run, a run from
// before @ok) is left to the projector, never ended on a short count.
func TestFinishWithAShortSuccessCountLeavesTheEndToTheProjector(t *testing.T) {
	t.Parallel()
	b := endRun(t, endPolicy, events.TaskSpec{ID: "a", Handler: "h"}, events.TaskSpec{ID: "b", Handler: "h"})
	ma, mb := b.dispatchQueued(t, "w1", "a")["a"], b.dispatchQueued(t, "w2", "b")["b"]
	first, last := b.success(t, "a", "w1", ma), b.success(t, "b", "w2", mb)
	feed := b.feedPoints(t)
	if out := b.finishOne(t, first); out.Ended {
		t.Fatalf("a's success, b running: outcome %+v, want not ended", out)
	}
	if ok, err := b.c.HGet(b.ctx, b.db.K.RunState(b.run), "@ok").Result(); err != nil || ok != "1" {
		t.Fatalf("@ok after a's success = %q, %v; want 1", ok, err)
	}
	if err := b.c.HDel(b.ctx, b.db.K.RunState(b.run), "@ok").Err(); err != nil {
		t.Fatal(err)
	}
	if out := b.finishOne(t, last); out.Ended {
		t.Fatalf("b's success with @ok short of the tasks: outcome %+v, want not ended", out)
	}
	b.checkLeftToProjector(t, feed)
}

// @ok only filters: a count that reached the run's tasks while one of
// them has not succeeded (here inflated by hand) never ends the run. The
// records decide, except in a call that accepted the success of every
// task of the run itself.
func TestFinishWithAnInflatedSuccessCountEndsNoRunEarly(t *testing.T) {
	t.Parallel()
	b := endRun(t, endPolicy, events.TaskSpec{ID: "a", Handler: "h"}, events.TaskSpec{ID: "b", Handler: "h"})
	ma := b.dispatchQueued(t, "w1", "a")["a"]
	b.dispatchQueued(t, "w2", "b") // b is claimed and stays running
	if err := b.c.HSet(b.ctx, b.db.K.RunState(b.run), "@ok", "1").Err(); err != nil {
		t.Fatal(err)
	}
	feed := b.feedPoints(t)
	if out := b.finishOne(t, b.success(t, "a", "w1", ma)); out.Err != nil || out.Ended {
		t.Fatalf("a's success with b running and @ok inflated: outcome %+v, want accepted, not ended", out)
	}
	b.checkLeftToProjector(t, feed)
}

// A finish whose keys include one it writes of the wrong type refuses the
// call with nothing written: no event appended, the record still running,
// nothing acked. Redis rolls nothing back, so every key the script writes
// after its first write is checked before it: the partition's expiry set
// (an expiring result), and the log itself with a spawn or an expiring
// result (whose writes come before the event). The key only the end check
// reads is TestFinishThatCannotReadItsEndLeavesItToTheProjector's.
func TestFinishWithAWrongTypedKeyWritesNothing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		key   func(b scriptBundle) string
		apply func(t *testing.T, a *rdb.FinishArgs)
	}{
		{"expiry set", func(b scriptBundle) string { return b.db.K.ExpiriesFor(b.run) }, func(t *testing.T, a *rdb.FinishArgs) {
			a.ResultExpiresMS = 99_000
		}},
		{"log, expiring result", func(b scriptBundle) string { return b.db.K.RunLog(b.run) }, func(t *testing.T, a *rdb.FinishArgs) {
			a.ResultExpiresMS = 99_000
		}},
		{"log, spawn", func(b scriptBundle) string { return b.db.K.RunLog(b.run) }, func(t *testing.T, a *rdb.FinishArgs) {
			sp, err := rdb.NewSpawn(ulid.Make().String(), twoSpawned, []string{"x1"}, nil, 100)
			if err != nil {
				t.Fatal(err)
			}
			a.Spawn = sp
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := endRun(t, endPolicy, events.TaskSpec{ID: "solo", Handler: "h"})
			a := b.success(t, "solo", "w1", b.dispatchQueued(t, "w1", "solo")["solo"])
			if tc.apply != nil {
				tc.apply(t, &a)
			}
			logLen := b.c.XLen(b.ctx, b.db.K.RunLog(b.run)).Val()
			state := b.hash(t, b.db.K.RunState(b.run))
			dag := b.dag(t)
			feed := b.feedPoints(t)
			key := tc.key(b)
			if err := b.c.Del(b.ctx, key).Err(); err != nil {
				t.Fatal(err)
			}
			if err := b.c.Set(b.ctx, key, "not a hash or stream", 0).Err(); err != nil {
				t.Fatal(err)
			}
			_, err := rdb.ParseFinishes([]rdb.FinishArgs{a}, b.db.FinishesCmd(b.ctx, b.c, []rdb.FinishArgs{a}))
			if err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
				t.Fatalf("finish with %s of the wrong type: %v; want a WRONGTYPE error", tc.name, err)
			}
			if key != b.db.K.RunLog(b.run) {
				if n := b.c.XLen(b.ctx, b.db.K.RunLog(b.run)).Val(); n != logLen {
					t.Errorf("the log grew from %d to %d events: the refused call appended", logLen, n)
				}
			}
			if got := b.hash(t, b.db.K.RunState(b.run)); !cmp.Equal(got, state) {
				t.Errorf("the state hash changed: %s", cmp.Diff(state, got))
			}
			if got := b.dag(t); !cmp.Equal(got, dag) {
				t.Errorf("the tasks' metadata changed: %s", cmp.Diff(dag, got))
			}
			if key != b.db.K.ExpiriesFor(b.run) {
				if n, err := b.c.ZCard(b.ctx, b.db.K.ExpiriesFor(b.run)).Result(); err != nil || n != 0 {
					t.Errorf("the expiry set holds %d entries (%v), want none", n, err)
				}
			}
			if n := b.feedPoints(t); n != feed {
				t.Errorf("the feed names the run %d times, %d before", n, feed)
			}
			if p, err := b.c.XPending(b.ctx, b.endQueue(), rdb.GroupWorkers).Result(); err != nil || p.Count != 1 {
				t.Errorf("pending messages %+v, %v: want the attempt's message still pending", p, err)
			}
		})
	}
}

// The end check reads the end policy after the call's writes, and only
// for a run that may end there (its @ok reached its @tasks). Of the wrong
// type, it leaves the end to a projector: the success is recorded whole
// (event, record, ack) and the feed pointed, where the call used to fail
// midway or, checked first, refuse the success.
func TestFinishThatCannotReadItsEndLeavesItToTheProjector(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		key  func(b scriptBundle) string
	}{
		{"end policy", func(b scriptBundle) string { return b.db.K.EndPolicyFor(b.run) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := endRun(t, endPolicy, events.TaskSpec{ID: "solo", Handler: "h"})
			a := b.success(t, "solo", "w1", b.dispatchQueued(t, "w1", "solo")["solo"])
			feed := b.feedPoints(t)
			key := tc.key(b)
			if err := b.c.Del(b.ctx, key).Err(); err != nil {
				t.Fatal(err)
			}
			if err := b.c.Set(b.ctx, key, "not a hash", 0).Err(); err != nil {
				t.Fatal(err)
			}
			out := b.finishOne(t, a)
			if out.Err != nil || out.Ended {
				t.Fatalf("finish with %s of the wrong type: %+v; want accepted, not ended", tc.name, out)
			}
			b.checkLeftToProjector(t, feed)
			log := b.log(t)
			if last := log[len(log)-1]; last.Type != events.TaskSucceeded || last.ID != a.EventID {
				t.Errorf("last event %s %s, want the success %s", last.Type, last.ID, a.EventID)
			}
			if rec := b.hash(t, b.db.K.RunState(b.run))["solo"]; !strings.HasPrefix(rec, "succeeded|") {
				t.Errorf("solo's record %q, want succeeded", rec)
			}
			if p, err := b.c.XPending(b.ctx, b.endQueue(), rdb.GroupWorkers).Result(); err != nil || p.Count != 0 {
				t.Errorf("pending messages %+v, %v: want the attempt's message acked", p, err)
			}
		})
	}
}

// A finish sent again after a lost reply, once another worker's call has
// ended the run with more events than the resend looks back for its own,
// is still answered as accepted (its task's last event is its own success,
// same epoch and worker) and appends no result_rejected after the end.
func TestFinishResentAfterAnotherCallEndedTheRunIsAccepted(t *testing.T) {
	t.Parallel()
	b := endRun(t, endPolicy, parallel(8)...)
	tasks := make([]string, 8)
	for i := range tasks {
		tasks[i] = fmt.Sprintf("t%02d", i)
	}
	msgs := b.dispatchQueued(t, "w1", tasks[:1]...)
	first := b.success(t, "t00", "w1", msgs["t00"])
	b.finishOne(t, first) // its reply is lost: w1 sends it again below
	msgs = b.dispatchQueued(t, "w2", tasks[1:]...)
	var rest []rdb.FinishArgs
	for _, task := range tasks[1:] {
		rest = append(rest, b.success(t, task, "w2", msgs[task]))
	}
	for i, out := range b.finishCall(t, rest...) {
		if out.Err != nil || !out.Ended {
			t.Fatalf("w2's outcome %d: %+v, want accepted and the run ended", i, out)
		}
	}
	n := len(b.log(t))
	out := b.finishCall(t, first)[0]
	if out.Err != nil {
		t.Errorf("w1's finish sent again: %v; want it accepted (its success is in the log)", out.Err)
	}
	if log := b.log(t); len(log) != n {
		t.Errorf("the resend appended %d events (last %s); want none after the end", len(log)-n, log[len(log)-1].Type)
	}
}
