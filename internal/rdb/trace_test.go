package rdb_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
)

const testTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// A queue message carries the dispatching span's traceparent (field t)
// only when there is one: an untraced dispatch writes the fields it always
// wrote. The trace goes along through the delayed set and a hand-back.
func TestQueueMessagesCarryATraceparentOnlyWhenSet(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	queue := b.db.K.QueueFor(b.run, "default", 0)
	// Each commit queues one dispatch now and parks one due later.
	commit := func(trace string) {
		t.Helper()
		res, err := b.db.Commit(b.ctx, b.run, rdb.Commit{Expected: b.head(t), FoldedTo: b.last(t), Writer: "p1", TimeMS: 2000, Trace: trace,
			Dispatches: []rdb.Dispatch{
				{Pool: "default", Run: b.run, Task: "a", Attempt: 1},
				{Pool: "default", Run: b.run, Task: "b", Attempt: 1, DueMS: 5000, EventID: "E" + trace},
			}})
		if err != nil || res.Conflict {
			t.Fatalf("commit = %+v, %v", res, err)
		}
	}
	fields := func(m redis.XMessage) map[string]any { return m.Values }
	commit("")
	commit(testTraceparent)
	msgs, err := b.c.XRange(b.ctx, queue, "-", "+").Result()
	if err != nil || len(msgs) != 2 {
		t.Fatalf("queue holds %d messages (%v), want 2", len(msgs), err)
	}
	if diff := cmp.Diff(map[string]any{"r": b.run, "k": "a", "a": "1"}, fields(msgs[0])); diff != "" {
		t.Errorf("untraced message (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]any{"r": b.run, "k": "a", "a": "1", "t": testTraceparent}, fields(msgs[1])); diff != "" {
		t.Errorf("traced message (-want +got):\n%s", diff)
	}

	// The parked dispatches move to the queue with their trace, or none.
	due, _, err := b.db.DueDispatches(b.ctx, b.db.K.Partition(b.run), 5000, 10)
	if err != nil || len(due) != 2 {
		t.Fatalf("due = %v, %v; want 2 members", due, err)
	}
	if moved, bad, stuck, err := b.db.MoveDue(b.ctx, b.db.K.Partition(b.run), due, 6000); err != nil || moved != 2 || len(bad) != 0 || len(stuck) != 0 {
		t.Fatalf("MoveDue = %d, %v, %v, %v", moved, bad, stuck, err)
	}
	msgs, err = b.c.XRange(b.ctx, queue, "-", "+").Result()
	if err != nil || len(msgs) != 4 {
		t.Fatalf("queue holds %d messages (%v), want 4", len(msgs), err)
	}
	traces := map[string]int{}
	for _, m := range msgs[2:] {
		if m.Values["k"] != "b" {
			t.Errorf("moved message %v", m.Values)
		}
		tp, _ := m.Values["t"].(string)
		traces[tp]++
	}
	if diff := cmp.Diff(map[string]int{"": 1, testTraceparent: 1}, traces); diff != "" {
		t.Errorf("moved messages' traceparents (-want +got):\n%s", diff)
	}

	// A hand-back's copy keeps the message's trace.
	if err := b.db.EnsureGroup(b.ctx, queue, rdb.GroupWorkers); err != nil {
		t.Fatal(err)
	}
	read, err := b.c.XReadGroup(b.ctx, &redis.XReadGroupArgs{Group: rdb.GroupWorkers, Consumer: "w", Streams: []string{queue, ">"}, Count: 1}).Result()
	if err != nil || len(read) != 1 || len(read[0].Messages) != 1 {
		t.Fatalf("read = %v, %v", read, err)
	}
	id := read[0].Messages[0].ID
	x := rdb.Dispatch{Pool: "default", Run: b.run, Task: "a", Attempt: 1, Trace: testTraceparent}
	if n, err := b.db.QueueMove(b.ctx, b.c, queue, "w", id, x).Int(); err != nil || n != 1 {
		t.Fatalf("QueueMove = %d, %v", n, err)
	}
	last, err := b.c.XRevRangeN(b.ctx, queue, "+", "-", 1).Result()
	if err != nil || len(last) != 1 || last[0].Values["t"] != testTraceparent {
		t.Fatalf("hand-back copy = %v, %v; want a message with t", last, err)
	}
}
