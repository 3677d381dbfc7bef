package rdb_test

import (
	"testing"
	"time"

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
	cur := b.cursor(t)
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
	if first.Cursor != cur {
		// The cursor moved: a second run would conflict anyway; the case
		// this test is about did not arise.
		t.Fatalf("cursor moved from %q to %q on a commit that was not caught up", cur, first.Cursor)
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
