package projector_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
)

// Redis may lose writes it acknowledged (appendfsync everysec and a
// crash, an asynchronous replica promoted): a projector that survives it
// keeps a fold that holds entries the log no longer has. Its commits used
// to go through, never caught up (the log's tail is never the lost id it
// had folded to), so it spun on the run, holding it, and the first entry
// to arrive later let it "catch up" and clear @dirty without ever deciding
// what the log calls for: the run hung. The commit now refuses a fold
// ahead of the log, and the projector loads the run again.
func TestAProjectorWhoseFoldOutlivesLostWritesLoadsTheRunAgain(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	p := b.projector(t, "pA")
	// More tasks than a finish ends by itself (EndMaxTasks), so the
	// projector keeps the run's fold cached.
	specs := []events.TaskSpec{spec("a"), spec("b", "a")}
	for i := range 40 {
		specs = append(specs, spec(fmt.Sprintf("c%d", i)))
	}
	run := b.submitRaw(t, "", specs...)
	if err := p.Project(b.ctx, run); err != nil {
		t.Fatal(err)
	}
	b.run(t, run, "a", "w1", true)
	state, logKey := b.db.K.RunState(run), b.db.K.RunLog(run)
	snap, err := b.rdb.HGetAll(b.ctx, state).Result()
	if err != nil {
		t.Fatal(err)
	}
	tail, err := b.rdb.XRevRangeN(b.ctx, logKey, "+", "-", 1).Result()
	if err != nil || len(tail) != 1 {
		t.Fatal(tail, err)
	}
	if err := p.Project(b.ctx, run); err != nil { // dispatches b: cached
		t.Fatal(err)
	}
	// Redis loses that commit: its events and its state writes.
	lost, err := b.rdb.XRange(b.ctx, logKey, "("+tail[0].ID, "+").Result()
	if err != nil || len(lost) == 0 {
		t.Fatalf("the commit appended nothing to lose: %v", err)
	}
	for _, m := range lost {
		if err := b.rdb.XDel(b.ctx, logKey, m.ID).Err(); err != nil {
			t.Fatal(err)
		}
	}
	pipe := b.rdb.TxPipeline()
	pipe.Del(b.ctx, state)
	pipe.HSet(b.ctx, state, snap)
	if _, err := pipe.Exec(b.ctx); err != nil {
		t.Fatal(err)
	}

	// The same projector takes the run up again (the lost ack left its
	// feed entry live).
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	if err := p.Project(ctx, run); err != nil {
		t.Fatalf("Project after lost writes: %v (a fold ahead of the log never catches up)", err)
	}
	if r := b.records(t, run)["b"]; r.Status != projector.TaskDispatched {
		t.Errorf("b is %+v after the projection; want dispatched again (its dispatch was lost)", r)
	}
	dispatched := 0
	for _, e := range b.log(t, run) {
		if e.Type == events.TaskDispatched && e.Task == "b" {
			dispatched++
		}
	}
	if dispatched != 1 {
		t.Errorf("%d task_dispatched for b in the log; want 1", dispatched)
	}
}
