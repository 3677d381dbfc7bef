package rdb_test

import (
	"slices"
	"strconv"
	"testing"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// A success with a result TTL stores the result, records its expiry in
// the state hash and the partition's expiry set, in the same step;
// ExpireResults leaves it alone before the due time and deletes it at the
// due time, keeping the expiry field; then a dependent's claim and
// ReadUpstream get the expired mark (not an empty result), and ReadResult
// reports the expiry.
func TestResultTTLStoresThenExpires(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	b.claim(t, "a", "w1", 1, false) // epoch 1
	const due = 4000 + 250          // the finish's time plus a 250 ms TTL
	a := rdb.FinishArgs{Run: b.run, Task: "a", Worker: "w1", Attempt: 1, Epoch: 1,
		EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 4000, ResultExpiresMS: due,
		Type: events.TaskSucceeded, Status: "succeeded", Result: []byte(`{"v":1}`)}
	a.Body = events.Event{}.WithBody(events.TaskSucceededBody{Result: a.Result}).Body
	if _, err := b.db.Finish(b.ctx, a); err != nil {
		t.Fatal(err)
	}
	field := statehash.ResultExpiryField("a")
	if got := b.hash(t, b.db.K.RunState(b.run))[field]; got != strconv.Itoa(due) {
		t.Fatalf("state %s = %q, want %d", field, got, due)
	}
	part := b.db.K.Partition(b.run)
	if score, err := b.c.ZScore(b.ctx, b.db.K.Expiries(part), b.run+"|a").Result(); err != nil || score != due {
		t.Fatalf("expiry set score = %v, %v; want %d", score, err, due)
	}

	// Not due yet: nothing deleted, the next due time reported.
	n, next, _, err := b.db.ExpireResults(b.ctx, part, due-1, due+60000, 10)
	if err != nil || n != 0 || next != due {
		t.Fatalf("ExpireResults before due = %d, %d, %v; want 0, %d", n, next, err, due)
	}
	s, err := b.db.ReadResult(b.ctx, b.run, "a")
	if err != nil || string(s.Result) != `{"v":1}` || s.ExpiresMS != due || s.Expired(due-1) || !s.Expired(due) {
		t.Fatalf("ReadResult before due = %+v, %v", s, err)
	}
	up, err := b.db.ReadUpstream(b.ctx, b.run, []string{"a"}, 0)
	if err != nil || string(up["a"]) != `{"v":1}` {
		t.Fatalf("ReadUpstream before due = %v, %v", up, err)
	}

	// Due: deleted, the expiry field kept, the set emptied.
	n, next, _, err = b.db.ExpireResults(b.ctx, part, due, due+60000, 10)
	if err != nil || n != 1 || next != 0 {
		t.Fatalf("ExpireResults at due = %d, %d, %v; want 1, 0", n, next, err)
	}
	if _, ok := b.results(t)["a"]; ok {
		t.Fatal("the expired result is still stored")
	}
	if got := b.hash(t, b.db.K.RunState(b.run))[field]; got != strconv.Itoa(due) {
		t.Fatalf("state %s after expiry = %q, want it kept", field, got)
	}
	if n, _, _, err := b.db.ExpireResults(b.ctx, part, due+1000, due+60000, 10); err != nil || n != 0 {
		t.Fatalf("ExpireResults again = %d, %v; want 0", n, err)
	}
	s, err = b.db.ReadResult(b.ctx, b.run, "a")
	if err != nil || s.Result != nil || !s.Expired(due) || s.Record.Status != events.TaskStatusSucceeded {
		t.Fatalf("ReadResult after expiry = %+v, %v", s, err)
	}
	up, err = b.db.ReadUpstream(b.ctx, b.run, []string{"a"}, 0)
	if err != nil || !rdb.IsExpiredResult(up["a"]) {
		t.Fatalf("ReadUpstream after expiry = %q, %v; want the expired mark", up["a"], err)
	}

	// b, a's dependent, is claimed after the expiry: the claim carries
	// the mark for a.
	b.commit(t, b.last(t), events.Event{ID: ulid.Make().String(), Type: events.TaskDispatched, Task: "b", Attempt: 1}.
		WithBody(events.TaskDispatchedBody{Pool: "default"}), "b", "dispatched|1|0|")
	cr := b.claim(t, "b", "w1", 1, false)
	if cr.Outcome != rdb.ClaimOK || !rdb.IsExpiredResult(cr.Upstream["a"]) {
		t.Fatalf("claim of b = %+v; want a's result marked expired", cr)
	}
}

// A result stored again later (a store with a later expiry) moves its
// entry's score on: a mover that read the old due time deletes nothing.
func TestResultTTLLaterStoreWins(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	b.claim(t, "a", "w1", 1, false)
	a := rdb.FinishArgs{Run: b.run, Task: "a", Worker: "w1", Attempt: 1, Epoch: 1,
		EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 4000, ResultExpiresMS: 9000,
		Type: events.TaskSucceeded, Status: "succeeded", Result: []byte(`1`)}
	a.Body = events.Event{}.WithBody(events.TaskSucceededBody{Result: a.Result}).Body
	if _, err := b.db.Finish(b.ctx, a); err != nil {
		t.Fatal(err)
	}
	// The entry is due at 9000; ask at 9000 after the set moved it on
	// (as a later store would) to 20000.
	part := b.db.K.Partition(b.run)
	if err := b.c.ZAdd(b.ctx, b.db.K.Expiries(part), redis.Z{Score: 20000, Member: b.run + "|a"}).Err(); err != nil {
		t.Fatal(err)
	}
	if n, next, _, err := b.db.ExpireResults(b.ctx, part, 9000, 69000, 10); err != nil || n != 0 || next != 20000 {
		t.Fatalf("ExpireResults = %d, %d, %v; want 0, 20000", n, next, err)
	}
	if _, ok := b.results(t)["a"]; !ok {
		t.Fatal("a result not yet due was deleted")
	}
}

// ReadResult of a run that does not exist says so (no status), and of a
// task not succeeded gives its record and no result.
func TestReadResultOfMissingRunAndPendingTask(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	s, err := b.db.ReadResult(b.ctx, "no-such-run", "a")
	if err != nil || s.RunStatus != "" {
		t.Fatalf("ReadResult of a missing run = %+v, %v", s, err)
	}
	s, err = b.db.ReadResult(b.ctx, b.run, "b")
	if err != nil || s.RunStatus != "running" || s.Record.Status != events.TaskStatusPending || s.Result != nil {
		t.Fatalf("ReadResult of pending b = %+v, %v", s, err)
	}
}

// The movers check their targets before their first write: a queue or a
// results hash of the wrong type leaves the delayed dispatch or the expiry
// in its set (each was removed first, then the write failed: the dispatch
// was lost for good, the expiry forgotten). A dispatch whose queue holds
// another type, or an expiry whose state key does, is parked until later
// and reported, and the rest of the page moves (one such key failed the
// whole call, holding every due dispatch or expiry of its partition back:
// found by an audit).
func TestDelayedMoversWriteNothingToAWrongTypedTarget(t *testing.T) {
	t.Parallel()
	t.Run("delayed dispatch", func(t *testing.T) {
		t.Parallel()
		b := setupRun(t)
		part := b.db.K.Partition(b.run)
		x := rdb.Dispatch{Pool: "default", DueMS: 1000, Run: b.run, Task: "a", Attempt: 2, EventID: ulid.Make().String()}
		if err := b.c.ZAdd(b.ctx, b.db.K.Delayed(part), redis.Z{Score: 1000, Member: x.String()}).Err(); err != nil {
			t.Fatal(err)
		}
		q := b.db.K.Queue(part, "default", 0)
		if err := b.c.Del(b.ctx, q).Err(); err != nil {
			t.Fatal(err)
		}
		if err := b.c.Set(b.ctx, q, "not a stream", 0).Err(); err != nil {
			t.Fatal(err)
		}
		healthy := rdb.Dispatch{Pool: "other", DueMS: 1000, Run: b.run, Task: "b", Attempt: 1, EventID: ulid.Make().String()}
		if err := b.c.ZAdd(b.ctx, b.db.K.Delayed(part), redis.Z{Score: 1000, Member: healthy.String()}).Err(); err != nil {
			t.Fatal(err)
		}
		n, _, stuck, err := b.db.MoveDue(b.ctx, part, []string{x.String(), healthy.String()}, 9000)
		if err != nil || n != 1 {
			t.Fatalf("MoveDue of a dispatch onto a string and one onto a stream = %d, %v; want the second moved", n, err)
		}
		if len(stuck) != 1 || stuck[0] != (rdb.StuckDispatch{Member: x.String(), Queue: q}) {
			t.Errorf("stuck = %+v, want %s onto %s", stuck, x.String(), q)
		}
		if at, err := b.c.ZScore(b.ctx, b.db.K.Delayed(part), x.String()).Result(); err != nil || at != 9000 {
			t.Errorf("the stuck dispatch's due time is %v (%v): want it parked until 9000", at, err)
		}
		if l, err := b.c.XLen(b.ctx, b.db.K.Queue(part, "other", 0)).Result(); err != nil || l != 1 {
			t.Errorf("the other dispatch's queue holds %d (%v), want 1", l, err)
		}
		if err := b.c.Del(b.ctx, q).Err(); err != nil {
			t.Fatal(err)
		}
		if n, _, stuck, err := b.db.MoveDue(b.ctx, part, []string{x.String()}, 9000); err != nil || n != 1 || len(stuck) != 0 {
			t.Errorf("once its key is fixed, MoveDue = %d, %v, %v; want it moved", n, stuck, err)
		}
	})
	t.Run("result expiry", func(t *testing.T) {
		t.Parallel()
		b := setupRun(t)
		part := b.db.K.Partition(b.run)
		if err := b.c.ZAdd(b.ctx, b.db.K.Expiries(part), redis.Z{Score: 1000, Member: b.run + "|a"}).Err(); err != nil {
			t.Fatal(err)
		}
		res := b.db.K.RunState(b.run)
		if err := b.c.Del(b.ctx, res).Err(); err != nil {
			t.Fatal(err)
		}
		if err := b.c.Set(b.ctx, res, "not a hash", 0).Err(); err != nil {
			t.Fatal(err)
		}
		other := "R" + ulid.Make().String() // another run of the partition: its result expires
		if b.db.K.Partition(other) != part {
			t.Fatalf("setup: runs in partitions %d and %d", part, b.db.K.Partition(other))
		}
		if err := b.c.HSet(b.ctx, b.db.K.RunState(other), rdb.ResultField("a"), "1").Err(); err != nil {
			t.Fatal(err)
		}
		if err := b.c.ZAdd(b.ctx, b.db.K.Expiries(part), redis.Z{Score: 1500, Member: other + "|a"}).Err(); err != nil {
			t.Fatal(err)
		}
		n, _, stuck, err := b.db.ExpireResults(b.ctx, part, 2000, 9000, 10)
		if err != nil || n != 1 || !slices.Equal(stuck, []string{b.run + "|a"}) {
			t.Fatalf("ExpireResults of an expiry on a string and one on a hash = %d, %v, %v; want the second deleted, the first stuck", n, stuck, err)
		}
		if at, err := b.c.ZScore(b.ctx, b.db.K.Expiries(part), b.run+"|a").Result(); err != nil || at != 9000 {
			t.Errorf("the stuck expiry's due time is %v (%v): want it parked until 9000", at, err)
		}
	})
}
