package rdb_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// A client may run a commit script twice: its own retry, or go-redis's
// MaxRetries after a lost reply. When the first run was not caught up (a
// worker appended meanwhile) the cursor stays where it was, so the
// compare-and-set alone would let the second run append the decisions
// again. The commit nonce refuses it.
func TestCommitRunTwiceAppendsItsDecisionsOnce(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	cur := b.head(t)
	folded := b.last(t)
	// A worker's event lands after the projector's read: the commit below
	// cannot be caught up, and leaves the cursor at folded.
	if err := b.c.XAdd(b.ctx, &redis.XAddArgs{Stream: b.db.K.RunLog(b.run), Values: (&events.Event{
		ID: ulid.Make().String(), Type: events.TaskHeartbeat, Task: "a", Attempt: 1, Epoch: 1, Worker: "w", Time: time.UnixMilli(2000),
	}).Fields()}).Err(); err != nil {
		t.Fatal(err)
	}
	skip := events.Event{ID: ulid.Make().String(), Type: events.TaskSkipped, Task: "b"}.WithBody(events.TaskSkippedBody{Cause: "test"})
	c := rdb.Commit{Expected: cur, FoldedTo: folded, Writer: "p", TimeMS: 3000, Events: []events.Event{skip},
		Records: map[string]string{"b": rdb.Record{Status: "skipped"}.String()}}
	first, err := b.db.Commit(b.ctx, b.run, c)
	if err != nil || first.Conflict || first.CaughtUp {
		t.Fatalf("first commit = %+v, %v; want applied, not caught up", first, err)
	}
	if first.Head.Cursor != cur.Cursor {
		// The cursor moved: a second run would conflict anyway; the case
		// this test is about did not arise.
		t.Fatalf("cursor moved from %q to %q on a commit that was not caught up", cur.Cursor, first.Head.Cursor)
	}
	if first.Head.Commit == cur.Commit {
		t.Fatalf("commit token %q did not change on a commit that appended decisions", cur.Commit)
	}
	second, err := b.db.Commit(b.ctx, b.run, c)
	if err != nil || !second.Conflict {
		t.Fatalf("the same commit again = %+v, %v; want a conflict", second, err)
	}
	msgs, err := b.c.XRange(b.ctx, b.db.K.RunLog(b.run), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range msgs {
		if m.Values[events.FieldID] == skip.ID {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("the decision is %d times in the log, want once", n)
	}
}

// A commit larger than Lua's unpack limit (a projector configured with a
// big BatchSize) writes every record and enqueues every dispatch: queued
// in order on the run's partition's queue, or parked when due later.
func TestCommitLargerThanUnpackLimit(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	const n = 4500
	c := rdb.Commit{Expected: b.head(t), FoldedTo: b.last(t), Writer: "p", TimeMS: 3000, Records: map[string]string{}}
	var queued []string
	for i := range n {
		task := "t" + strconv.Itoa(i)
		c.Records[task] = rdb.Record{Status: "dispatched", Attempt: 1}.String()
		x := rdb.Dispatch{Pool: "default", Run: b.run, Task: task, Attempt: 1}
		if i%10 == 9 {
			x.DueMS = 60_000 // parked
		} else {
			queued = append(queued, task)
		}
		c.Dispatches = append(c.Dispatches, x)
	}
	res, err := b.db.Commit(b.ctx, b.run, c)
	if err != nil || res.Conflict || !res.CaughtUp {
		t.Fatalf("commit = %+v, %v; want applied and caught up", res, err)
	}
	if res.Parked != n/10 {
		t.Errorf("parked %d, want %d", res.Parked, n/10)
	}
	msgs, err := b.c.XRange(b.ctx, b.db.K.QueueFor(b.run, "default", 0), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range msgs {
		if m.Values[rdb.MsgRun] != b.run || m.Values[rdb.MsgAttempt] != "1" {
			t.Fatalf("queue message %v, want run %s attempt 1", m.Values, b.run)
		}
		got = append(got, m.Values[rdb.MsgTask].(string))
	}
	if diff := cmp.Diff(queued, got); diff != "" {
		t.Errorf("queued tasks (-want +got):\n%s", diff)
	}
	if z, err := b.c.ZCard(b.ctx, b.db.K.DelayedFor(b.run)).Result(); err != nil || z != n/10 {
		t.Errorf("delayed set holds %d, %v; want %d", z, err, n/10)
	}
	st, err := b.c.HGetAll(b.ctx, b.db.K.RunState(b.run)).Result()
	if err != nil {
		t.Fatal(err)
	}
	for task, rec := range c.Records {
		if st[task] != rec {
			t.Fatalf("record of %s = %q, want %q", task, st[task], rec)
		}
	}
	if st[rdb.FieldRunCursor] != res.Head.Cursor {
		t.Errorf("cursor %q, want %q", st[rdb.FieldRunCursor], res.Head.Cursor)
	}
}

// The commit that ends a run gives every key of the run its TTL in the same
// step, also when it is not caught up (an event landed after the fold), and
// a requeue that reopens the run removes them again.
func TestRunEndingCommitSetsTheTTLAndRequeueRemovesIt(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	cur, folded := b.head(t), b.last(t)
	// A late heartbeat lands after the projector's read: not caught up.
	if err := b.c.XAdd(b.ctx, &redis.XAddArgs{Stream: b.db.K.RunLog(b.run), Values: (&events.Event{
		ID: ulid.Make().String(), Type: events.TaskHeartbeat, Task: "a", Attempt: 1, Epoch: 1, Worker: "w", Time: time.UnixMilli(2000),
	}).Fields()}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.c.HSet(b.ctx, b.db.K.RunChannel(b.run), "k", "v").Err(); err != nil {
		t.Fatal(err)
	}
	end := events.Event{ID: ulid.Make().String(), Type: events.RunFailed}.WithBody(events.RunFailedBody{Task: "a", Cause: "test"})
	res, err := b.db.Commit(b.ctx, b.run, rdb.Commit{Expected: cur, FoldedTo: folded, Writer: "p", TimeMS: 3000,
		Events: []events.Event{end}, Records: map[string]string{rdb.FieldRunStatus: "failed", "a": rdb.Record{Status: "failed", Attempt: 1, Epoch: 1, Owner: "w"}.String()},
		TTL: time.Hour})
	if err != nil || res.Conflict || res.CaughtUp {
		t.Fatalf("commit = %+v, %v; want applied, not caught up", res, err)
	}
	keys := []string{b.db.K.RunState(b.run), b.db.K.RunLog(b.run), b.db.K.RunChannel(b.run)}
	for _, k := range keys {
		if ttl, err := b.c.PTTL(b.ctx, k).Result(); err != nil || ttl <= 0 || ttl > time.Hour {
			t.Errorf("%s: TTL %v, %v after the run-ending commit; want (0, 1h]", k, ttl, err)
		}
	}
	if err := b.db.Requeue(b.ctx, b.run, "a", "op", ulid.Make().String(), 4000, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if ttl, err := b.c.PTTL(b.ctx, k).Result(); err != nil || ttl != -1 {
			t.Errorf("%s: TTL %v, %v after a requeue reopened the run; want none (-1)", k, ttl, err)
		}
	}
}

// A commit behind the log leaves @dirty as it is. It used to set it, with
// no feed pointer: a finish that followed found the run dirty and pointed
// no feed, so if the projector that committed died before it read on,
// holding no feed entry for the run, nothing woke a projector again (chaos
// seed 852: a projector resumed after its feed entry was reclaimed and
// handled elsewhere committed behind the log, was killed, and 1,205 tasks
// of the run were never dispatched).
func TestAFinishAfterACommitBehindTheLogOfACleanRunWakesAProjector(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	feed := b.db.K.FeedFor(b.run)
	pointers := func() []string {
		t.Helper()
		msgs, err := b.c.XRange(b.ctx, feed, "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		var runs []string
		for _, m := range msgs {
			runs = append(runs, m.Values[rdb.MsgRun].(string))
		}
		return runs
	}
	// Caught up and clean, every pointer handled.
	if err := b.c.Del(b.ctx, feed).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.c.HDel(b.ctx, b.db.K.RunState(b.run), rdb.FieldRunDirty).Err(); err != nil {
		t.Fatal(err)
	}
	head, folded := b.head(t), b.last(t)
	// A claim (which wakes no projector) lands after the projector's read.
	cr := b.claim(t, "a", "w1", 1, false)
	res, err := b.db.Commit(b.ctx, b.run, rdb.Commit{Expected: head, FoldedTo: folded, Writer: "p", TimeMS: 3000,
		Events: []events.Event{{ID: ulid.Make().String(), Type: events.TaskHeartbeat, Task: "a", Attempt: 1, Epoch: cr.Epoch}}})
	if err != nil || res.Conflict || res.CaughtUp {
		t.Fatalf("commit = %+v, %v; want applied, not caught up", res, err)
	}
	if st := b.hash(t, b.db.K.RunState(b.run)); st[rdb.FieldRunDirty] != "" {
		t.Errorf("@dirty = %q after a commit behind the log of a clean run; want it left unset", st[rdb.FieldRunDirty])
	}
	if p := pointers(); len(p) != 0 {
		t.Errorf("feed pointers %v after a commit behind the log: what landed wakes no projector", p)
	}
	// The projector dies here. A's failure calls for a projector (its
	// retry): the finish must find the run clean, so that the feed is
	// pointed at it (by the finish, or, for an outcome with no message id
	// like this one, by its caller after the dead letter).
	newly, err := b.finish("a", "w1", 1, cr.Epoch, false)
	if err != nil {
		t.Fatal(err)
	}
	if st := b.hash(t, b.db.K.RunState(b.run)); !newly || st[rdb.FieldRunDirty] != "1" {
		t.Fatalf("the finish found the run dirty already (newly dirty %v, @dirty %q): no feed pointer follows it, "+
			"and the run is dirty with nothing to wake a projector", newly, st[rdb.FieldRunDirty])
	}
}
