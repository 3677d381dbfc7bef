package rdb_test

import (
	"testing"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// Heartbeats reports, per claim, what its touch found: the worker asks for
// a repair only on "pending for nobody" (Touched 0, no TouchErr, not Done),
// so each of the other answers must stay distinguishable from it.
func TestHeartbeatsTellWhatEachTouchFound(t *testing.T) {
	t.Parallel()
	b := endRun(t, nil, parallel(4)...)
	msgs := b.dispatchQueued(t, "w1", "t00", "t01", "t02", "t03")
	q := b.endQueue()
	claims := map[string]rdb.FinishArgs{}
	for _, task := range []string{"t00", "t01", "t02", "t03"} {
		claims[task] = b.success(t, task, "w1", msgs[task])
	}
	// t01's entry acked by hand, t02 finished by its owner (the finish acks
	// its entry), t03's entry deleted while pending.
	if err := b.c.XAck(b.ctx, q, rdb.GroupWorkers, msgs["t01"]).Err(); err != nil {
		t.Fatal(err)
	}
	b.finishOne(t, claims["t02"])
	if err := b.c.XDel(b.ctx, q, msgs["t03"]).Err(); err != nil {
		t.Fatal(err)
	}
	// Two more claims of t00 whose queue entry cannot be read as one: a
	// key holding a string (the touch fails: WRONGTYPE), and a stream with
	// no consumer group (NOGROUP: pending for nobody).
	wrong, nogroup := q+":wrongtype", q+":nogroup"
	if err := b.c.Set(b.ctx, wrong, "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.c.XAdd(b.ctx, &redis.XAddArgs{Stream: nogroup, Values: []any{"k", "v"}}).Err(); err != nil {
		t.Fatal(err)
	}

	item := func(task, stream, msg string) rdb.HeartbeatItem {
		return rdb.HeartbeatItem{Stream: stream, MsgID: msg, Args: rdb.HeartbeatArgs{Run: b.run, Task: task, Worker: "w1",
			Attempt: 1, Epoch: claims[task].Epoch, EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 5000}}
	}
	items := []rdb.HeartbeatItem{
		item("t00", q, msgs["t00"]),
		item("t01", q, msgs["t01"]),
		item("t02", q, msgs["t02"]),
		item("t03", q, msgs["t03"]),
		item("t00", wrong, msgs["t00"]),
		item("t00", nogroup, msgs["t00"]),
	}
	if err := b.db.LoadScripts(b.ctx); err != nil { // as a worker does when it starts
		t.Fatal(err)
	}
	outs := b.db.Heartbeats(b.ctx, "w1", items, nil)
	type want struct {
		touched  int64
		touchErr bool
		done     bool
	}
	for i, w := range []want{
		{touched: 1},     // held
		{touched: 0},     // pending for nobody: acked by hand
		{done: true},     // the claim ended with its owner's outcome
		{touched: -2},    // deleted from the stream while pending
		{touchErr: true}, // the touch itself failed
		{touched: 0},     // no group: pending for nobody
	} {
		got := outs[i]
		if got.Err != nil || got.Touched != w.touched || (got.TouchErr != nil) != w.touchErr || got.Done != w.done {
			t.Errorf("item %d (%s on %s): %+v; want touched %d, touch error %v, done %v",
				i, items[i].Args.Task, items[i].Stream, got, w.touched, w.touchErr, w.done)
		}
	}
}
