package rdb_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

type scriptBundle struct {
	ctx context.Context
	c   *redis.Client
	db  rdb.DB
	run string
}

// setupRun creates a run with tasks a and b (after a) and commits the
// dispatch of a's first attempt, as a projector would.
func setupRun(t *testing.T) scriptBundle {
	t.Helper()
	c := redistest.Client(t)
	b := scriptBundle{c: c, db: rdb.New(c, redistest.Namespace(t)), run: "R" + ulid.Make().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	b.ctx = ctx
	body := events.RunSubmittedBody{Workflow: "wf", Tasks: []events.TaskSpec{
		{ID: "a", Handler: "h.a", MaxAttempts: 2, Args: json.RawMessage(`{"x":1}`)},
		{ID: "b", Handler: "h.b", Deps: []string{"a"}},
	}, Input: json.RawMessage(`{"in":true}`)}
	ev := events.Event{ID: ulid.Make().String(), Type: events.RunSubmitted, Time: time.UnixMilli(1000)}.WithBody(body)
	created, wf, err := b.db.Submit(ctx, b.run, ev, body)
	if err != nil || !created || wf != "wf" {
		t.Fatalf("Submit = %v %q %v", created, wf, err)
	}
	b.commit(t, b.last(t), events.Event{ID: ulid.Make().String(), Type: events.TaskDispatched, Task: "a", Attempt: 1}.
		WithBody(events.TaskDispatchedBody{Pool: "default"}), "a", "dispatched|1|0|")
	return b
}

// last returns the id of the log's last entry.
func (b scriptBundle) last(t *testing.T) string {
	t.Helper()
	msgs, err := b.c.XRevRangeN(b.ctx, b.db.K.RunLog(b.run), "+", "-", 1).Result()
	if err != nil || len(msgs) == 0 {
		t.Fatalf("read log tail: %v", err)
	}
	return msgs[0].ID
}

func (b scriptBundle) cursor(t *testing.T) string {
	t.Helper()
	cur, err := b.c.HGet(b.ctx, b.db.K.RunState(b.run), rdb.FieldRunCursor).Result()
	if errors.Is(err, redis.Nil) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return cur
}

// head reads the run's head (cursor and commit token).
func (b scriptBundle) head(t *testing.T) rdb.Head {
	t.Helper()
	h, err := rdb.ParseHead(b.db.HeadCmd(b.ctx, b.c, b.run))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func (b scriptBundle) commit(t *testing.T, foldedTo string, e events.Event, task, record string) rdb.CommitResult {
	t.Helper()
	res, err := b.db.Commit(b.ctx, b.run, rdb.Commit{Expected: b.head(t), FoldedTo: foldedTo, Writer: "p1", TimeMS: 2000,
		Events: []events.Event{e}, Records: map[string]string{task: record}})
	if err != nil || res.Conflict {
		t.Fatalf("Commit = %+v, %v", res, err)
	}
	return res
}

func (b scriptBundle) log(t *testing.T) []events.Event {
	t.Helper()
	msgs, err := b.c.XRange(b.ctx, b.db.K.RunLog(b.run), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []events.Event
	for _, m := range msgs {
		e, err := events.Decode(b.run, m.ID, m.Values)
		if err != nil {
			t.Fatalf("entry %s does not decode: %v", m.ID, err)
		}
		out = append(out, e)
	}
	return out
}

func (b scriptBundle) hash(t *testing.T, key string) map[string]string {
	t.Helper()
	h, err := b.c.HGetAll(b.ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func (b scriptBundle) claim(t *testing.T, task, worker string, attempt int, reclaim bool) rdb.ClaimResult {
	t.Helper()
	cr, err := b.db.Claim(b.ctx, rdb.ClaimArgs{Run: b.run, Task: task, Worker: worker, Attempt: attempt, EventID: ulid.Make().String(),
		TimeMS: 3000, Reclaim: reclaim, Deliveries: 2, ReclaimEventID: ulid.Make().String()})
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	return cr
}

func (b scriptBundle) finish(task, worker string, attempt int, epoch int64, ok bool) (bool, error) {
	a := rdb.FinishArgs{Run: b.run, Task: task, Worker: worker, Attempt: attempt, Epoch: epoch,
		EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 4000}
	if ok {
		a.Type, a.Status, a.Result = events.TaskSucceeded, "succeeded", []byte(`{"by":"`+worker+`"}`)
		a.Body = events.Event{}.WithBody(events.TaskSucceededBody{Result: a.Result}).Body
	} else {
		a.Type, a.Status = events.TaskFailed, "awaiting_retry"
		a.Body = events.Event{}.WithBody(events.TaskFailedBody{Error: "boom", Kind: events.FailureError}).Body
	}
	return b.db.Finish(b.ctx, a)
}

func (b scriptBundle) heartbeat(worker string, attempt int, epoch int64, appendEvent bool) error {
	cmd := b.db.Heartbeat(b.ctx, b.c, rdb.HeartbeatArgs{Run: b.run, Task: "a", Worker: worker, Attempt: attempt, Epoch: epoch,
		EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 5000,
		Body: []byte(`{"progress":"50%"}`), Append: appendEvent})
	return rdb.HeartbeatResult(cmd)
}

// Every event the scripts write decodes with events.Decode, and its stream
// fields are exactly what Event.Fields writes: same names, same order, same
// values.
func TestScriptEventsMatchTheGoCodec(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	cr := b.claim(t, "a", "w1", 1, false)
	if err := b.heartbeat("w1", 1, cr.Epoch, true); err != nil {
		t.Fatal(err)
	}
	cr = b.claim(t, "a", "w2", 1, true) // task_reclaimed + task_claimed
	if _, err := b.finish("a", "w1", 1, 1, true); !errors.Is(err, rdb.ErrStaleClaim) {
		t.Fatalf("stale finish = %v", err)
	}
	if err := b.db.Release(b.ctx, b.run, "a", "w2", 1, cr.Epoch, ulid.Make().String(), 6000); err != nil {
		t.Fatal(err)
	}
	cr = b.claim(t, "a", "w3", 1, false)
	final := rdb.FinishArgs{Run: b.run, Task: "a", Worker: "w3", Attempt: 1, Epoch: cr.Epoch, EventID: ulid.Make().String(),
		RejectID: ulid.Make().String(), TimeMS: 7000, Type: events.TaskFailed, Status: "failed",
		Body: events.Event{}.WithBody(events.TaskFailedBody{Error: "bad", Kind: events.FailureError, Final: true}).Body}
	if _, err := b.db.Finish(b.ctx, final); err != nil {
		t.Fatal(err)
	}
	if err := b.db.Requeue(b.ctx, b.run, "a", "operator", ulid.Make().String(), 8000,
		events.Event{}.WithBody(events.TaskRequeuedBody{Cause: "test"}).Body); err != nil {
		t.Fatal(err)
	}

	raw, err := b.c.Do(b.ctx, "XRANGE", b.db.K.RunLog(b.run), "-", "+").Slice()
	if err != nil {
		t.Fatal(err)
	}
	types := map[events.Type]bool{}
	for _, r := range raw {
		entry := r.([]any)
		id := entry[0].(string)
		flat := entry[1].([]any)
		values := map[string]any{}
		for i := 0; i < len(flat); i += 2 {
			values[flat[i].(string)] = flat[i+1]
		}
		e, err := events.Decode(b.run, id, values)
		if err != nil {
			t.Fatalf("entry %s: %v", id, err)
		}
		types[e.Type] = true
		if diff := cmp.Diff(e.Fields(), flat); diff != "" {
			t.Errorf("entry %s (%s): script fields differ from Event.Fields (-Fields +script):\n%s", id, e.Type, diff)
		}
		if e.Version != events.CurrentVersion {
			t.Errorf("entry %s (%s) has version %d", id, e.Type, e.Version)
		}
	}
	want := []events.Type{events.RunSubmitted, events.TaskDispatched, events.TaskClaimed, events.TaskHeartbeat,
		events.TaskReclaimed, events.ResultRejected, events.TaskFailed, events.TaskRequeued}
	for _, typ := range want {
		if !types[typ] {
			t.Errorf("no %s entry was written", typ)
		}
	}
}

func TestFinishFencing(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	if cr := b.claim(t, "a", "w1", 1, false); cr.Outcome != rdb.ClaimOK || cr.Epoch != 1 {
		t.Fatalf("claim = %+v", cr)
	}
	cr := b.claim(t, "a", "w2", 1, true)
	if cr.Outcome != rdb.ClaimOK || cr.Epoch != 3 {
		t.Fatalf("reclaim = %+v, want ok at epoch 3 (reclaimed 2, claimed 3)", cr)
	}
	log := b.log(t)
	rc, cl := log[len(log)-2], log[len(log)-1]
	var rb events.TaskReclaimedBody
	if err := rc.DecodeBody(&rb); err != nil {
		t.Fatal(err)
	}
	if rc.Type != events.TaskReclaimed || rc.Epoch != 2 || rc.Worker != "w2" || rb.From != "w1" || rb.Deliveries != 2 ||
		cl.Type != events.TaskClaimed || cl.Epoch != 3 || cl.Worker != "w2" {
		t.Fatalf("reclaim appended %s e%d %s %+v, %s e%d %s", rc.Type, rc.Epoch, rc.Worker, rb, cl.Type, cl.Epoch, cl.Worker)
	}

	stale := func(what string, call func() error, wantWhat string) {
		t.Helper()
		state, results := b.hash(t, b.db.K.RunState(b.run)), b.results(t)
		n := len(b.log(t))
		err := call()
		if !errors.Is(err, rdb.ErrStaleClaim) {
			t.Fatalf("%s: error = %v, want ErrStaleClaim", what, err)
		}
		var se *rdb.StaleError
		if !errors.As(err, &se) || se.Status != "running" || se.Epoch != "3" || se.Owner != "w2" {
			t.Errorf("%s: StaleError = %+v, want running at epoch 3 owned by w2", what, se)
		}
		if diff := cmp.Diff(state, b.hash(t, b.db.K.RunState(b.run))); diff != "" {
			t.Errorf("%s changed the state hash (-before +after):\n%s", what, diff)
		}
		if diff := cmp.Diff(results, b.results(t)); diff != "" {
			t.Errorf("%s changed the results (-before +after):\n%s", what, diff)
		}
		log := b.log(t)
		if wantWhat == "" {
			if len(log) != n {
				t.Errorf("%s appended %d events, want none", what, len(log)-n)
			}
			return
		}
		if len(log) != n+1 {
			t.Fatalf("%s appended %d events, want 1 result_rejected", what, len(log)-n)
		}
		e := log[n]
		var body events.ResultRejectedBody
		if err := e.DecodeBody(&body); err != nil {
			t.Fatal(err)
		}
		if e.Type != events.ResultRejected || e.Task != "a" || e.Attempt != 1 || e.Epoch != 1 || e.Worker != "w1" ||
			body.What != wantWhat || body.CurrentEpoch != 3 {
			t.Errorf("%s appended %s task %s a%d e%d %s %+v", what, e.Type, e.Task, e.Attempt, e.Epoch, e.Worker, body)
		}
	}
	stale("a stale success", func() error { _, err := b.finish("a", "w1", 1, 1, true); return err }, "result")
	stale("a stale failure", func() error { _, err := b.finish("a", "w1", 1, 1, false); return err }, "failure")
	stale("a stale heartbeat", func() error { return b.heartbeat("w1", 1, 1, true) }, "heartbeat")
	stale("a stale release", func() error {
		return b.db.Release(b.ctx, b.run, "a", "w1", 1, 1, ulid.Make().String(), 1)
	}, "")

	// The current owner's heartbeat is accepted; without Append it writes nothing.
	n := len(b.log(t))
	if err := b.heartbeat("w2", 1, 3, false); err != nil {
		t.Fatal(err)
	}
	if err := b.heartbeat("w2", 1, 3, true); err != nil {
		t.Fatal(err)
	}
	if log := b.log(t); len(log) != n+1 || log[n].Type != events.TaskHeartbeat {
		t.Fatalf("owner heartbeats appended %d events", len(log)-n)
	}

	// The owner's result is accepted once; the same report again is a no-op.
	if _, err := b.finish("a", "w2", 1, 3, true); err != nil {
		t.Fatal(err)
	}
	n = len(b.log(t))
	if _, err := b.finish("a", "w2", 1, 3, true); err != nil {
		t.Fatalf("a repeated identical finish = %v, want ok", err)
	}
	if got := len(b.log(t)); got != n {
		t.Errorf("a repeated identical finish appended %d events", got-n)
	}
	st := b.hash(t, b.db.K.RunState(b.run))
	if st["a"] != "succeeded|1|3|w2" || st[rdb.FieldRunDirty] != "1" {
		t.Errorf("state after success: a=%q @dirty=%q", st["a"], st[rdb.FieldRunDirty])
	}
	if got := b.results(t)["a"]; got != `{"by":"w2"}` {
		t.Errorf("stored result %q", got)
	}
	// A late report from the old owner after the success changes nothing.
	if _, err := b.finish("a", "w1", 1, 1, true); !errors.Is(err, rdb.ErrStaleClaim) {
		t.Errorf("late finish after success = %v", err)
	}
	if got := b.results(t)["a"]; got != `{"by":"w2"}` {
		t.Errorf("stored result after a late report %q", got)
	}
}

func TestClaimOutcomes(t *testing.T) {
	t.Parallel()
	b := setupRun(t)

	t.Run("a task that was never dispatched is stale", func(t *testing.T) {
		if cr := b.claim(t, "b", "w1", 1, false); cr.Outcome != rdb.ClaimStale {
			t.Errorf("outcome %+v", cr)
		}
	})
	t.Run("another attempt is stale", func(t *testing.T) {
		if cr := b.claim(t, "a", "w1", 2, false); cr.Outcome != rdb.ClaimStale {
			t.Errorf("outcome %+v", cr)
		}
	})
	t.Run("a missing run is missing", func(t *testing.T) {
		cr, err := b.db.Claim(b.ctx, rdb.ClaimArgs{Run: "nope", Task: "a", Worker: "w1", Attempt: 1, EventID: "x"})
		if err != nil || cr.Outcome != rdb.ClaimMissing {
			t.Errorf("outcome %+v %v", cr, err)
		}
	})
	t.Run("the dispatched attempt is claimed with what the handler needs", func(t *testing.T) {
		cr := b.claim(t, "a", "w1", 1, false)
		want := rdb.ClaimResult{Outcome: rdb.ClaimOK, Epoch: 1, Detail: "1",
			Meta:  rdb.TaskMeta{Handler: "h.a", MaxAttempts: 2, Args: json.RawMessage(`{"x":1}`)},
			Input: json.RawMessage(`{"in":true}`), Upstream: map[string]json.RawMessage{}}
		if diff := cmp.Diff(want, cr); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("a running task is busy unless reclaimed", func(t *testing.T) {
		n := len(b.log(t))
		if cr := b.claim(t, "a", "w2", 1, false); cr.Outcome != rdb.ClaimBusy || cr.Detail != "w1" {
			t.Errorf("outcome %+v", cr)
		}
		if got := len(b.log(t)); got != n {
			t.Errorf("a busy claim appended %d events", got-n)
		}
	})
	t.Run("a finished task is done", func(t *testing.T) {
		if _, err := b.finish("a", "w1", 1, 1, true); err != nil {
			t.Fatal(err)
		}
		if cr := b.claim(t, "a", "w2", 1, true); cr.Outcome != rdb.ClaimDone || cr.Detail != "succeeded" {
			t.Errorf("outcome %+v", cr)
		}
	})
	t.Run("a task of an ended run is done", func(t *testing.T) {
		b.commit(t, b.last(t), events.Event{ID: ulid.Make().String(), Type: events.TaskDispatched, Task: "b", Attempt: 1}.
			WithBody(events.TaskDispatchedBody{Pool: "default"}), "b", "dispatched|1|0|")
		if err := b.c.HSet(b.ctx, b.db.K.RunState(b.run), rdb.FieldRunStatus, "cancelled").Err(); err != nil {
			t.Fatal(err)
		}
		if cr := b.claim(t, "b", "w2", 1, false); cr.Outcome != rdb.ClaimDone || cr.Detail != "cancelled" {
			t.Errorf("outcome %+v", cr)
		}
	})
}

func TestClaimReturnsUpstreamResults(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	cr := b.claim(t, "a", "w1", 1, false)
	if _, err := b.finish("a", "w1", 1, cr.Epoch, true); err != nil {
		t.Fatal(err)
	}
	b.commit(t, b.last(t), events.Event{ID: ulid.Make().String(), Type: events.TaskDispatched, Task: "b", Attempt: 1}.
		WithBody(events.TaskDispatchedBody{Pool: "default"}), "b", "dispatched|1|0|")
	cr = b.claim(t, "b", "w1", 1, false)
	want := map[string]json.RawMessage{"a": json.RawMessage(`{"by":"w1"}`)}
	if diff := cmp.Diff(want, cr.Upstream); diff != "" {
		t.Errorf("upstream (-want +got):\n%s", diff)
	}
}

// queueWithGroup is the default pool's band-0 queue stream, with the
// workers' group, in a fresh namespace.
func queueWithGroup(t *testing.T) (c *redis.Client, db rdb.DB, ctx context.Context, q string) {
	t.Helper()
	c = redistest.Client(t)
	db = rdb.New(c, redistest.Namespace(t))
	ctx = context.Background()
	q = db.K.Queue(0, "default", 0)
	if err := db.EnsureGroup(ctx, q, rdb.GroupWorkers); err != nil {
		t.Fatal(err)
	}
	return c, db, ctx, q
}

func TestQueueAckAndTouchAreOwnerChecked(t *testing.T) {
	t.Parallel()
	c, db, ctx, q := queueWithGroup(t)
	if err := db.EnsureGroup(ctx, q, rdb.GroupWorkers); err != nil {
		t.Fatalf("EnsureGroup on an existing group: %v", err)
	}
	id, err := db.XAddDispatch(ctx, c, rdb.Dispatch{Pool: "default", Run: "R", Task: "a", Attempt: 1}).Text()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: rdb.GroupWorkers, Consumer: "owner", Streams: []string{q, ">"}, Count: 1}).Result(); err != nil {
		t.Fatal(err)
	}
	pending := func() []redis.XPendingExt {
		t.Helper()
		p, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: q, Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 10}).Result()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Age the entry so that a touch is visible as an idle reset.
	if err := c.Do(ctx, "XCLAIM", q, rdb.GroupWorkers, "owner", 0, id, "IDLE", 1000000, "JUSTID").Err(); err != nil {
		t.Fatal(err)
	}

	if n, err := db.QueueTouch(ctx, c, q, "zombie", id).Int64(); err != nil || n != -1 {
		t.Errorf("touch by a non-owner = %d, %v; want -1", n, err)
	}
	if p := pending(); len(p) != 1 || p[0].Consumer != "owner" || p[0].Idle < 1000*time.Second {
		t.Errorf("after a non-owner touch: %+v", p)
	}
	if res, err := db.QueueAck(ctx, c, q, "zombie", id).Int64Slice(); err != nil || len(res) != 1 || res[0] != -1 {
		n := res
		t.Errorf("ack by a non-owner = %v, %v; want [-1]", n, err)
	}
	if p := pending(); len(p) != 1 || p[0].Consumer != "owner" {
		t.Errorf("after a non-owner ack the entry is no longer pending for its owner: %+v", p)
	}
	if l, _ := c.XLen(ctx, q).Result(); l != 1 {
		t.Errorf("a non-owner ack deleted the entry: XLEN %d", l)
	}

	if n, err := db.QueueTouch(ctx, c, q, "owner", id).Int64(); err != nil || n != 1 {
		t.Errorf("touch by the owner = %d, %v; want 1", n, err)
	}
	if p := pending(); len(p) != 1 || p[0].Consumer != "owner" || p[0].Idle >= 1000*time.Second || p[0].RetryCount != 1 {
		t.Errorf("after the owner's touch: %+v (want idle reset, delivery count unchanged)", p)
	}
	if n, err := db.QueueAck(ctx, c, q, "owner", id).Int64Slice(); err != nil || len(n) != 1 || n[0] != 1 {
		t.Errorf("ack by the owner = %v, %v; want [1]", n, err)
	}
	if p := pending(); len(p) != 0 {
		t.Errorf("still pending after the owner's ack: %+v", p)
	}
	if l, _ := c.XLen(ctx, q).Result(); l != 1 {
		t.Errorf("the ack deleted the entry: XLEN %d; entries go by trimming (TestFetchTrimsOnlyAckedEntries)", l)
	}
	if n, err := db.QueueAck(ctx, c, q, "owner", id).Int64Slice(); err != nil || len(n) != 1 || n[0] != 0 {
		t.Errorf("second ack = %v, %v; want [0]", n, err)
	}
	if n, err := db.QueueTouch(ctx, c, q, "owner", id).Int64(); err != nil || n != 0 {
		t.Errorf("touch of an acked entry = %d, %v; want 0", n, err)
	}
}

func TestCommitCompareAndSet(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	dispatchB := func(expected rdb.Head, foldedTo string) (rdb.CommitResult, error) {
		return b.db.Commit(b.ctx, b.run, rdb.Commit{Expected: expected, FoldedTo: foldedTo, Writer: "p1", TimeMS: 1,
			Events:  []events.Event{{ID: ulid.Make().String(), Type: events.TaskDispatched, Task: "b", Attempt: 1}},
			Records: map[string]string{"b": "dispatched|1|0|"}, Dispatches: []rdb.Dispatch{{Pool: "default", Run: b.run, Task: "b", Attempt: 1}}})
	}
	queued := func() int64 {
		n, _ := b.c.XLen(b.ctx, b.db.K.QueueFor(b.run, "default", 0)).Result()
		return n
	}

	t.Run("a wrong expected cursor conflicts and writes nothing", func(t *testing.T) {
		n, state := len(b.log(t)), b.hash(t, b.db.K.RunState(b.run))
		res, err := dispatchB(rdb.Head{Cursor: "0-1", Commit: b.head(t).Commit}, b.last(t))
		if err != nil || !res.Conflict || res.Head != b.head(t) {
			t.Fatalf("Commit = %+v, %v; want a conflict reporting cursor %s", res, err, b.cursor(t))
		}
		if len(b.log(t)) != n {
			t.Error("a conflicting commit appended events")
		}
		if diff := cmp.Diff(state, b.hash(t, b.db.K.RunState(b.run))); diff != "" {
			t.Errorf("a conflicting commit changed the state (-before +after):\n%s", diff)
		}
		if queued() != 0 {
			t.Error("a conflicting commit queued a dispatch")
		}
	})

	t.Run("a commit behind the log keeps the cursor at what was folded", func(t *testing.T) {
		folded := b.last(t)
		b.claim(t, "a", "w1", 1, false) // appended after folded
		res, err := dispatchB(b.head(t), folded)
		if err != nil || res.Conflict || res.CaughtUp || res.Head.Cursor != folded || len(res.Seqs) != 1 || res.Parked != 0 {
			t.Fatalf("Commit = %+v, %v; want ok, not caught up, cursor %s", res, err, folded)
		}
		if queued() != 1 {
			t.Errorf("%d dispatches queued, want 1", queued())
		}
		// @dirty is left as it was (unset): what landed after the fold
		// (a claim) needs no projector, and a commit that set it would
		// keep the run's next finish from pointing the feed.
		st := b.hash(t, b.db.K.RunState(b.run))
		if st[rdb.FieldRunCursor] != folded || st[rdb.FieldRunDirty] != "" || st["b"] != "dispatched|1|0|" {
			t.Errorf("state: cursor %q dirty %q b %q", st[rdb.FieldRunCursor], st[rdb.FieldRunDirty], st["b"])
		}
	})

	t.Run("a caught-up commit moves the cursor past its decisions and clears dirty", func(t *testing.T) {
		res, err := b.db.Commit(b.ctx, b.run, rdb.Commit{Expected: b.head(t), FoldedTo: b.last(t), Writer: "p1", TimeMS: 1,
			Events: []events.Event{{ID: ulid.Make().String(), Type: events.TaskHeartbeat, Task: "a", Attempt: 1, Epoch: 1}}})
		if err != nil || res.Conflict || !res.CaughtUp || res.Head.Cursor != res.Seqs[0] || res.Head.Cursor != b.last(t) {
			t.Fatalf("Commit = %+v, %v", res, err)
		}
		if _, ok := b.hash(t, b.db.K.RunState(b.run))[rdb.FieldRunDirty]; ok {
			t.Error("@dirty still set after a caught-up commit")
		}
	})

	t.Run("decisions for an ended run conflict", func(t *testing.T) {
		if err := b.c.HSet(b.ctx, b.db.K.RunState(b.run), rdb.FieldRunStatus, "succeeded").Err(); err != nil {
			t.Fatal(err)
		}
		n := len(b.log(t))
		res, err := dispatchB(b.head(t), b.last(t))
		if err != nil || !res.Conflict {
			t.Fatalf("Commit = %+v, %v; want a conflict", res, err)
		}
		if len(b.log(t)) != n {
			t.Error("a commit for an ended run appended events")
		}
	})
}

// Two projectors that read the same head: the first commits decisions
// without catching up (a worker appended meanwhile), so the cursor stays
// where it was; the second must still be refused (issue #10: the cursor
// alone let it through, and it dispatched a claimed task again).
func TestCommitTokenRefusesASecondCommitOnTheSameCursor(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	head, folded := b.head(t), b.last(t)
	b.claim(t, "a", "w1", 1, false) // appended after folded: not caught up
	dispatch := func(task string) (rdb.CommitResult, error) {
		return b.db.Commit(b.ctx, b.run, rdb.Commit{Expected: head, FoldedTo: folded, Writer: "p", TimeMS: 1,
			Events:  []events.Event{{ID: ulid.Make().String(), Type: events.TaskDispatched, Task: task, Attempt: 1}},
			Records: map[string]string{task: "dispatched|1|0|"}, Expect: map[string]string{task: ""}})
	}
	first, err := dispatch("b")
	if err != nil || first.Conflict || first.CaughtUp || first.Head.Cursor != head.Cursor {
		t.Fatalf("first commit = %+v, %v; want applied, not caught up, cursor kept", first, err)
	}
	n, state := len(b.log(t)), b.hash(t, b.db.K.RunState(b.run))
	second, err := dispatch("b")
	if err != nil || !second.Conflict || second.Head != first.Head {
		t.Fatalf("second commit on the same head = %+v, %v; want a conflict reporting %+v", second, err, first.Head)
	}
	if len(b.log(t)) != n {
		t.Error("the refused commit appended events")
	}
	if diff := cmp.Diff(state, b.hash(t, b.db.K.RunState(b.run))); diff != "" {
		t.Errorf("the refused commit changed the state (-before +after):\n%s", diff)
	}
}

// A decision taken on a task record that is no longer there is refused,
// whatever the head says, and nothing is written.
func TestCommitRefusesADecisionOnAChangedRecord(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	b.commit(t, b.last(t), events.Event{ID: ulid.Make().String(), Type: events.TaskDispatched, Task: "b", Attempt: 1}, "b", "dispatched|1|0|")
	n, state := len(b.log(t)), b.hash(t, b.db.K.RunState(b.run))
	for name, expect := range map[string]map[string]string{
		"a pending record for a dispatched task": {"b": ""},
		"the long form of a pending record":      {"b": "pending|0|0|"},
		"another attempt":                        {"b": "dispatched|2|0|"},
	} {
		res, err := b.db.Commit(b.ctx, b.run, rdb.Commit{Expected: b.head(t), FoldedTo: b.last(t), Writer: "p", TimeMS: 1,
			Events:  []events.Event{{ID: ulid.Make().String(), Type: events.TaskDispatched, Task: "b", Attempt: 1}},
			Records: map[string]string{"b": "dispatched|1|0|"}, Expect: expect, Dispatches: []rdb.Dispatch{{Pool: "default", Run: b.run, Task: "b", Attempt: 1}}})
		if err != nil || !res.Conflict || res.HeadMoved() {
			t.Fatalf("%s: Commit = %+v, %v; want a record conflict", name, res, err)
		}
	}
	if len(b.log(t)) != n {
		t.Error("a refused commit appended events")
	}
	if diff := cmp.Diff(state, b.hash(t, b.db.K.RunState(b.run))); diff != "" {
		t.Errorf("a refused commit changed the state (-before +after):\n%s", diff)
	}
	if l, _ := b.c.XLen(b.ctx, b.db.K.QueueFor(b.run, "default", 0)).Result(); l != 0 {
		t.Error("a refused commit queued a dispatch")
	}
	res, err := b.db.Commit(b.ctx, b.run, rdb.Commit{Expected: b.head(t), FoldedTo: b.last(t), Writer: "p", TimeMS: 1,
		Events:  []events.Event{{ID: ulid.Make().String(), Type: events.TaskSkipped, Task: "c"}},
		Records: map[string]string{"c": "skipped|0|0|"}, Expect: map[string]string{"c": "pending|0|0|"}})
	if err != nil || res.Conflict {
		t.Fatalf("a decision on an untouched task (expected in its long form) = %+v, %v; want applied", res, err)
	}
}

func TestSubmitIsIdempotent(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	n := len(b.log(t))
	body := events.RunSubmittedBody{Workflow: "other", Tasks: []events.TaskSpec{{ID: "z", Handler: "h"}}}
	ev := events.Event{ID: ulid.Make().String(), Type: events.RunSubmitted}.WithBody(body)
	created, wf, err := b.db.Submit(b.ctx, b.run, ev, body)
	if err != nil || created || wf != "wf" {
		t.Fatalf("second Submit = %v %q %v; want not created, workflow wf", created, wf, err)
	}
	if len(b.log(t)) != n {
		t.Error("a second Submit appended to the log")
	}
	if dag := b.dag(t); len(dag) != 2 {
		t.Errorf("a second Submit changed the dag: %v", dag)
	}
}

func TestRequeueRefusesATaskThatHasNotFailed(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	n := len(b.log(t))
	for _, task := range []string{"a", "b", "nope"} {
		err := b.db.Requeue(b.ctx, b.run, task, "op", ulid.Make().String(), 1, nil)
		if !errors.Is(err, rdb.ErrNotRequeueable) {
			t.Errorf("Requeue(%s) = %v, want ErrNotRequeueable", task, err)
		}
	}
	if len(b.log(t)) != n {
		t.Error("a refused requeue appended to the log")
	}
}

func TestScriptsAreListedWithDistinctHashes(t *testing.T) {
	t.Parallel()
	seen := map[string]string{}
	for name, s := range rdb.Scripts() {
		if other, dup := seen[s.Hash()]; dup {
			t.Errorf("scripts %s and %s are identical", name, other)
		}
		seen[s.Hash()] = name
	}
	c := redistest.Client(t)
	if err := rdb.New(c, redistest.Namespace(t)).LoadScripts(context.Background()); err != nil {
		t.Fatalf("LoadScripts: %v", err)
	}
	for name, s := range rdb.Scripts() {
		ok, err := c.ScriptExists(context.Background(), s.Hash()).Result()
		if err != nil || len(ok) != 1 || !ok[0] {
			t.Errorf("script %s not loaded: %v %v", name, ok, err)
		}
	}
	if !rdb.IsNoScript(fmt.Errorf("NOSCRIPT No matching script")) || rdb.IsNoScript(errors.New("x")) || rdb.IsNoScript(nil) {
		t.Error("IsNoScript misclassifies")
	}
}

// A multi-id ack, in any order, acks exactly the caller's pending messages
// and reports each id: 1 acked, -1 another consumer's, 0 not pending. The
// caller's other pending messages in the same id range (more than the
// script's XPENDING COUNT) are left alone.
func TestQueueAckManyIDs(t *testing.T) {
	t.Parallel()
	c, db, ctx, q := queueWithGroup(t)
	read := func(consumer string, n int64) []string {
		t.Helper()
		var ids []string
		for i := int64(0); i < n; i++ {
			if err := db.XAddDispatch(ctx, c, rdb.Dispatch{Pool: "default", Run: "R", Task: "t", Attempt: 1}).Err(); err != nil {
				t.Fatal(err)
			}
		}
		res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: rdb.GroupWorkers, Consumer: consumer, Streams: []string{q, ">"}, Count: n}).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range res[0].Messages {
			ids = append(ids, m.ID)
		}
		return ids
	}
	mine := read("owner", 3)
	theirs := read("other", 2)
	keep := read("owner", 200) // ours, pending, not acked: inside the range
	last := read("owner", 1)
	gone := "1-1"
	ask := []string{last[0], theirs[1], mine[2], gone, mine[0], theirs[0], mine[1]}
	got, err := db.QueueAck(ctx, c, q, "owner", ask...).Int64Slice()
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{1, -1, 1, 0, 1, -1, 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ack %v = %v, want %v", ask, got, want)
	}
	p, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: q, Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 1000}).Result()
	if err != nil {
		t.Fatal(err)
	}
	pending := map[string]string{}
	for _, e := range p {
		pending[e.ID] = e.Consumer
	}
	for _, id := range append(append([]string{}, mine...), last...) {
		if _, ok := pending[id]; ok {
			t.Errorf("%s still pending after its owner's ack", id)
		}
	}
	for _, id := range theirs {
		if pending[id] != "other" {
			t.Errorf("another consumer's %s: pending for %q, want other", id, pending[id])
		}
	}
	for _, id := range keep {
		if pending[id] != "owner" {
			t.Fatalf("%s was not asked for but is no longer pending for its owner", id)
		}
	}
	if n, _ := c.XLen(ctx, q).Result(); n != int64(len(mine)+len(theirs)+len(keep)+len(last)) {
		t.Errorf("XLEN %d, want %d: an ack deletes nothing (entries go by trimming)", n, len(mine)+len(theirs)+len(keep)+len(last))
	}
}

// A hand-back whose queue stream was deleted by hand (so it has no
// consumer group) released the claim and queued the fresh message, then
// failed on the owner check of the caller's message (XPENDING: NOGROUP):
// the worker logged that nothing was written (found by a review).
func TestAHandBackOnADeletedStreamSucceedsWhole(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	cr := b.claim(t, "a", "w1", 1, false)
	q := b.db.K.QueueFor(b.run, "default", 0)
	if err := b.c.Del(b.ctx, q).Err(); err != nil {
		t.Fatal(err)
	}
	x := rdb.Dispatch{Pool: "default", Run: b.run, Task: "a", Attempt: 1}
	if err := b.db.HandBack(b.ctx, "w1", cr.Epoch, ulid.Make().String(), 6000, x, q, "1-0"); err != nil {
		t.Fatalf("hand-back on a deleted stream: %v", err)
	}
	rec, err := b.db.TaskRecord(b.ctx, b.run, "a")
	if err != nil || rec.Status != events.TaskStatusDispatched || rec.Epoch != cr.Epoch+1 {
		t.Errorf("record after the hand-back: %+v, %v; want dispatched at epoch %d", rec, err, cr.Epoch+1)
	}
	if n, err := b.c.XLen(b.ctx, q).Result(); err != nil || n != 1 {
		t.Errorf("queue length %d, %v; want the fresh message", n, err)
	}
}

// A touch of a pending entry deleted from its stream (an XDEL or XTRIM by
// hand) dropped it from the pending list, as XCLAIM does with a deleted
// entry, and reported it touched: its holder's death then left nothing for
// a reclaimer to find, and the task stayed running for a dead worker.
func TestATouchLeavesADeletedEntryPending(t *testing.T) {
	t.Parallel()
	c, db, ctx, q := queueWithGroup(t)
	id, err := db.XAddDispatch(ctx, c, rdb.Dispatch{Pool: "default", Run: "R", Task: "a", Attempt: 1}).Text()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: rdb.GroupWorkers, Consumer: "owner", Streams: []string{q, ">"}, Count: 1}).Result(); err != nil {
		t.Fatal(err)
	}
	if err := c.XDel(ctx, q, id).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := db.QueueTouch(ctx, c, q, "owner", id).Int64(); err != nil || n != -2 {
		t.Errorf("heartbeat touch of a deleted entry = %d, %v; want -2", n, err)
	}
	if n, d, err := db.TouchMessage(ctx, q, "owner", id); err != nil || n != -2 || d != 0 {
		t.Errorf("touch of a deleted entry = %d, %d deliveries, %v; want -2, 0", n, d, err)
	}
	p, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: q, Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 10}).Result()
	if err != nil || len(p) != 1 || p[0].ID != id || p[0].Consumer != "owner" {
		t.Fatalf("pending after the touches: %+v, %v; want the deleted entry still pending for its owner", p, err)
	}
	// What a reclaimer finds once the holder is gone: the deleted entry,
	// with a repair requested.
	_, _, deleted, err := db.Reclaim(ctx, q, "rescuer", 0, "0-0", 10)
	if err != nil || len(deleted) != 1 || deleted[0] != id {
		t.Fatalf("reclaim reported deleted %v, %v; want [%s]", deleted, err, id)
	}
	if reqs, err := db.RepairRequest(ctx); err != nil || len(reqs) != 1 {
		t.Errorf("repair requests after the reclaim: %v, %v; want one", reqs, err)
	}
}

// An ack with a delivery count leaves alone a message of the caller's
// delivered more often since (reclaimed away and back): -2, still pending.
// Touches (the lease's renewal) do not count as deliveries.
func TestAckMessageLeavesAMessageDeliveredAgain(t *testing.T) {
	t.Parallel()
	c, db, ctx, q := queueWithGroup(t)
	if err := db.XAddDispatch(ctx, c, rdb.Dispatch{Pool: "default", Run: "R", Task: "t", Attempt: 1}).Err(); err != nil {
		t.Fatal(err)
	}
	res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: rdb.GroupWorkers, Consumer: "W", Streams: []string{q, ">"}, Count: 1}).Result()
	if err != nil {
		t.Fatal(err)
	}
	id := res[0].Messages[0].ID
	for _, consumer := range []string{"B", "W"} {
		if err := c.XAutoClaim(ctx, &redis.XAutoClaimArgs{Stream: q, Group: rdb.GroupWorkers, Consumer: consumer, Start: "0-0", Count: 1}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if n, d, err := db.TouchMessage(ctx, q, "W", id); err != nil || n != 1 || d != 3 {
		t.Fatalf("touch = %d, %d deliveries, %v; want 1, 3", n, d, err)
	}
	if n, err := db.AckMessage(ctx, q, "W", id, 1); err != nil || n != -2 {
		t.Fatalf("ack of the first delivery's copy = %d, %v; want -2", n, err)
	}
	if p, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: q, Group: rdb.GroupWorkers, Start: id, End: id, Count: 1}).Result(); err != nil || len(p) != 1 || p[0].Consumer != "W" {
		t.Fatalf("after a stale copy's ack: pending %+v, %v; want it pending for W", p, err)
	}
	if n, err := db.AckMessage(ctx, q, "B", id, 0); err != nil || n != -1 {
		t.Errorf("B's ack = %d, %v; want -1", n, err)
	}
	if n, err := db.AckMessage(ctx, q, "W", id, 3); err != nil || n != 1 {
		t.Errorf("ack of the last delivery's copy = %d, %v; want 1", n, err)
	}
	if n, err := db.AckMessage(ctx, q, "W", id, 3); err != nil || n != 0 {
		t.Errorf("ack again = %d, %v; want 0", n, err)
	}
}

// The finish script reports "newly dirty" (the caller points the feed) only
// when it set @dirty: once per projection round, however many outcomes
// land in it; a retry after a lost reply reports it again.
func TestFinishReportsWhetherItMadeTheRunDirty(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	if _, ok := b.hash(t, b.db.K.RunState(b.run))[rdb.FieldRunDirty]; ok {
		t.Fatal("setup: @dirty set after a caught-up commit")
	}
	cr := b.claim(t, "a", "w", 1, false)
	dirty, err := b.finish("a", "w", 1, cr.Epoch, false) // fails, awaiting retry
	if err != nil || !dirty {
		t.Fatalf("first outcome on a clean run: dirty=%v, %v; want newly dirty", dirty, err)
	}
	if st := b.hash(t, b.db.K.RunState(b.run)); st[rdb.FieldRunDirty] != "1" || st["a"] != "awaiting_retry|1|1|w" {
		t.Errorf("state after the outcome: %v", st)
	}
	if dirty, err := b.finish("a", "w", 1, cr.Epoch, false); err != nil || !dirty {
		t.Errorf("the same outcome again (a retry after a lost reply): dirty=%v, %v; want reported dirty again", dirty, err)
	}
	// Another outcome before the projector ran: the run is already dirty.
	b.commit(t, b.last(t), events.Event{ID: ulid.Make().String(), Type: events.TaskRetryScheduled, Task: "a", Attempt: 2}.
		WithBody(events.TaskRetryScheduledBody{DelayMS: 1}), "a", "dispatched|2|1|w")
	if _, ok := b.hash(t, b.db.K.RunState(b.run))[rdb.FieldRunDirty]; ok {
		t.Fatal("@dirty still set after a caught-up commit")
	}
	cr = b.claim(t, "a", "w", 2, false)
	if err := b.heartbeat("w", 2, cr.Epoch, true); err != nil {
		t.Fatal(err)
	}
	if err := b.c.HSet(b.ctx, b.db.K.RunState(b.run), rdb.FieldRunDirty, "1").Err(); err != nil { // a requeue, say
		t.Fatal(err)
	}
	if dirty, err := b.finish("a", "w", 2, cr.Epoch, true); err != nil || dirty {
		t.Errorf("an outcome on a run already dirty: dirty=%v, %v; want not newly dirty", dirty, err)
	}
}

// A submit sent twice (its pipeline retried after a lost reply or a
// NOSCRIPT) still reports that it created the run; another submit of the
// same run id does not.
func TestSubmitSentTwiceStillReportsCreated(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	db := rdb.New(c, redistest.Namespace(t))
	ctx := context.Background()
	run := "R" + ulid.Make().String()
	body := events.RunSubmittedBody{Workflow: "wf", Tasks: []events.TaskSpec{{ID: "a", Handler: "h"}}}
	ev := events.Event{ID: ulid.Make().String(), Type: events.RunSubmitted, Time: time.UnixMilli(1000)}.WithBody(body)
	for i := range 2 {
		created, wf, err := db.Submit(ctx, run, ev, body)
		if err != nil || !created || wf != "wf" {
			t.Fatalf("send %d of the same submit = %v %q %v; want created", i+1, created, wf, err)
		}
	}
	other := events.Event{ID: ulid.Make().String(), Type: events.RunSubmitted, Time: time.UnixMilli(2000)}.WithBody(body)
	if created, wf, err := db.Submit(ctx, run, other, body); err != nil || created || wf != "wf" {
		t.Errorf("another submit of the run id = %v %q %v; want not created, workflow wf", created, wf, err)
	}
	if n, _ := c.XLen(ctx, db.K.RunLog(run)).Result(); n != 1 {
		t.Errorf("the log holds %d events, want the one run_submitted", n)
	}
}

// A reclaim whose reply was lost is sent again with the same arguments
// (go-redis' retry, or the worker's): it hands the claim back as is, with
// no second epoch bump and no reclaim of the task from itself. A reclaim
// of its own claim with new event ids (a restarted worker taking its old
// message over) still bumps the epoch, fencing the earlier claim.
func TestReclaimSentTwiceBumpsTheEpochOnce(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	if cr := b.claim(t, "a", "w1", 1, false); cr.Outcome != rdb.ClaimOK || cr.Epoch != 1 {
		t.Fatalf("claim = %+v", cr)
	}
	args := rdb.ClaimArgs{Run: b.run, Task: "a", Worker: "w2", Attempt: 1, EventID: ulid.Make().String(),
		TimeMS: 3000, Reclaim: true, Deliveries: 2, ReclaimEventID: ulid.Make().String()}
	first, err := b.db.Claim(b.ctx, args)
	if err != nil || first.Outcome != rdb.ClaimOK || first.Epoch != 3 {
		t.Fatalf("reclaim = %+v, %v; want ok at epoch 3", first, err)
	}
	n := len(b.log(t))
	again, err := b.db.Claim(b.ctx, args)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(first, again); diff != "" {
		t.Errorf("the same reclaim again (-first +again):\n%s", diff)
	}
	if got := len(b.log(t)); got != n {
		t.Errorf("the same reclaim again appended %d events", got-n)
	}
	if rec := b.hash(t, b.db.K.RunState(b.run))["a"]; rec != "running|1|3|w2" {
		t.Errorf("record after the retried reclaim: %q", rec)
	}

	// The same worker reclaiming its own claim anew: epoch 3 → 5.
	if cr := b.claim(t, "a", "w2", 1, true); cr.Outcome != rdb.ClaimOK || cr.Epoch != 5 {
		t.Errorf("a new reclaim of its own claim = %+v, want ok at epoch 5", cr)
	}
}

// The worker's fallback after a failed pipeline: a batched reclaim of many
// tasks of one run whose reply was lost is retried item by item. Each
// retry finds its claim among the log's recent entries (the batch appended
// two per item) and bumps nothing.
func TestBatchedReclaimRetriedItemByItem(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	const n = 100
	b.dispatchTasks(t, n, "running|1|1|w1") // dispatched, then claimed by w1
	as := make([]rdb.ClaimArgs, n)
	for i := range as {
		as[i] = rdb.ClaimArgs{Run: b.run, Task: "t" + strconv.Itoa(i), Worker: "w2", Attempt: 1, EventID: ulid.Make().String(),
			TimeMS: 3000, Reclaim: true, Deliveries: 2, ReclaimEventID: ulid.Make().String()}
	}
	first, err := rdb.ParseClaims(as, b.db.ClaimsCmd(b.ctx, b.c, as))
	if err != nil {
		t.Fatal(err)
	}
	before := len(b.log(t))
	for i, a := range as {
		again, err := b.db.Claim(b.ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		if first[i].Outcome != rdb.ClaimOK || again.Epoch != first[i].Epoch || again.Outcome != rdb.ClaimOK {
			t.Fatalf("item %d: batched %+v, retried alone %+v", i, first[i], again)
		}
	}
	if got := len(b.log(t)); got != before {
		t.Errorf("the retries appended %d events", got-before)
	}
}

// A heartbeat that raced its claim's failure, and the failure's finish
// sent again after a lost reply, can arrive after the task was requeued
// (its record then pending at the claim's attempt and epoch, with no
// owner). Both are the claim's own, ended: answered as such, with no
// result_rejected appended (chaos seed 348 found the heartbeat's, which
// the checker reads as a valid result refused at the current epoch).
func TestAHeartbeatOrFinishAfterARequeueOfItsClaimIsBenign(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	cr, failed := b.failForGood(t, "a", "w1")
	if err := b.db.Requeue(b.ctx, b.run, "a", "client", ulid.Make().String(), 4500, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	n := len(b.log(t))
	if err := b.heartbeat("w1", 1, cr.Epoch, false); err != nil {
		t.Errorf("the late heartbeat: %v; want it answered done", err)
	}
	if _, err := b.db.Finish(b.ctx, failed); err != nil {
		t.Errorf("the failure sent again: %v; want it answered accepted", err)
	}
	if log := b.log(t); len(log) != n {
		t.Errorf("they appended %d events (last %s); want none", len(log)-n, log[len(log)-1].Type)
	}
}

// failForGood claims task as worker and fails it for good (its first
// attempt, at 4000 ms): its claim, and the finish that failed it.
func (b scriptBundle) failForGood(t *testing.T, task, worker string) (rdb.ClaimResult, rdb.FinishArgs) {
	t.Helper()
	cr := b.claim(t, task, worker, 1, false)
	failed := rdb.FinishArgs{Run: b.run, Task: task, Worker: worker, Attempt: 1, Epoch: cr.Epoch,
		EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 4000, Type: events.TaskFailed, Status: "failed"}
	failed.Body = events.Event{}.WithBody(events.TaskFailedBody{Error: "boom", Kind: events.FailureError, Final: true}).Body
	if _, err := b.db.Finish(b.ctx, failed); err != nil {
		t.Fatal(err)
	}
	return cr, failed
}

// A requeue refused by its run's log (a key of another type) writes
// nothing: it set the task's record to pending and removed the run's TTLs
// before the append failed, leaving the task pending in a failed run that
// no projector would look at, and a requeue tried again refused as "not
// failed" (found by an audit).
func TestARequeueRefusedByItsLogWritesNothing(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	b.failForGood(t, "a", "w1")
	before := b.hash(t, b.db.K.RunState(b.run))
	logKey := b.db.K.RunLog(b.run)
	if err := b.c.Rename(b.ctx, logKey, logKey+":saved").Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.c.Set(b.ctx, logKey, "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.db.Requeue(b.ctx, b.run, "a", "client", ulid.Make().String(), 4500, []byte(`{}`)); err == nil {
		t.Fatal("a requeue onto a log of another type succeeded")
	}
	if after := b.hash(t, b.db.K.RunState(b.run)); !maps.Equal(before, after) {
		t.Errorf("the refused requeue changed the run's state:\nbefore %v\nafter  %v", before, after)
	}
}

// results is the run's results and input, dag its tasks' metadata: the
// views of its state hash (rdb.SplitState).
func (b scriptBundle) results(t *testing.T) map[string]string {
	t.Helper()
	_, r, _ := rdb.SplitState(b.hash(t, b.db.K.RunState(b.run)))
	return r
}

func (b scriptBundle) dag(t *testing.T) map[string]string {
	t.Helper()
	_, _, d := rdb.SplitState(b.hash(t, b.db.K.RunState(b.run)))
	return d
}
