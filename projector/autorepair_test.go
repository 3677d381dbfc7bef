package projector_test

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/redis/go-redis/v9"
)

// lostMessages submits n one-task runs (ids r000…), deletes every queued
// message (an XTRIM by hand, a failover) and asks for a repair, as a
// reclaimer does when XAUTOCLAIM reports deleted pending entries.
func (b liveBundle) lostMessages(t *testing.T, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		run, _, err := b.sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "w", Tasks: []events.TaskSpec{spec("t")}},
			scheduler.SubmitOptions{RunID: fmt.Sprintf("r%03d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, run)
	}
	if err := b.rdb.XTrimMaxLen(b.ctx, b.db.K.Queue(0, events.DefaultPool, 0), 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.db.RequestRepair(b.ctx); err != nil {
		t.Fatal(err)
	}
	return ids
}

// queued is the number of messages in the default pool's queue.
func (b liveBundle) queued(t *testing.T) int64 {
	t.Helper()
	n, err := b.rdb.XLen(b.ctx, b.db.K.Queue(0, events.DefaultPool, 0)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The automatic repair cleared its request as its walk began, with the
// walk's position in the memory of one projector: when that projector
// stopped after a pass (200 runs), no other one walked the rest (found by
// an audit).
func TestARepairWalkCutShortIsFinishedByAnotherProjector(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	const runs = 201
	ids := b.lostMessages(t, runs)
	var first, second projector.RepairCursor
	b.projector(t, "pa").AutoRepairPass(b.ctx, &first) // 200 runs, then pa stops
	pb := b.projector(t, "pb")
	for range 3 {
		pb.AutoRepairPass(b.ctx, &second)
	}
	if n := b.queued(t); n < runs {
		rec, _ := b.db.TaskRecord(b.ctx, ids[runs-1], "t")
		t.Errorf("%d messages queued for %d dispatched tasks; run %s's task is %s with none", n, runs, ids[runs-1], rec.Status)
	}
	if gen, err := b.db.RepairRequest(b.ctx); err != nil || len(gen) != 0 {
		t.Errorf("repair request after a whole walk: %v, %v; want cleared", gen, err)
	}
}

// A run whose repair failed for a moment was skipped, and the request was
// gone: nobody repaired it (found by an audit).
func TestARunWhoseRepairFailsForAMomentIsRepairedByTheNextWalk(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	run := b.lostMessages(t, 1)[0]
	c := redistest.Client(t)
	hook := &redistest.FailOnce{Err: fmt.Errorf("injected: %w", syscall.ECONNRESET), Match: func(args []any) bool {
		return len(args) > 1 && fmt.Sprint(args[0]) == "xrange" && args[1] == b.db.K.RunLog(run)
	}}
	c.AddHook(hook)
	p, err := projector.New(projector.Config{Redis: c, Namespace: b.db.K.Namespace(), ID: "p"})
	if err != nil {
		t.Fatal(err)
	}
	var cur projector.RepairCursor
	for range 3 {
		p.AutoRepairPass(b.ctx, &cur)
	}
	if !hook.Failed() {
		t.Fatal("setup: the repair's read of the run's log did not fail")
	}
	if n := b.queued(t); n != 1 {
		rec, _ := b.db.TaskRecord(b.ctx, run, "t")
		t.Errorf("after a repair that failed for a moment: %d messages queued, task t %s", n, rec.Status)
	}
}

// A request made while a walk is under way is not cleared by its end:
// the runs it is about may be behind the walk's position.
func TestARepairRequestMadeDuringAWalkOutlivesIt(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	b.lostMessages(t, 201)
	p := b.projector(t, "p")
	var cur projector.RepairCursor
	p.AutoRepairPass(b.ctx, &cur) // the first 200
	if err := b.db.RequestRepair(b.ctx); err != nil {
		t.Fatal(err)
	}
	p.AutoRepairPass(b.ctx, &cur) // the last one: the walk ends
	if gen, err := b.db.RepairRequest(b.ctx); err != nil || len(gen) == 0 {
		t.Fatalf("repair request after a walk that began before it: %v, %v; want it kept", gen, err)
	}
	p.AutoRepairPass(b.ctx, &cur) // a walk answering it
	p.AutoRepairPass(b.ctx, &cur)
	if gen, err := b.db.RepairRequest(b.ctx); err != nil || len(gen) != 0 {
		t.Errorf("repair request after a walk that answered it: %v, %v; want cleared", gen, err)
	}
}

// A feed entry deleted while pending for a projector that died left its run
// dirty with no pointer (whoever finds @dirty set points the feed no more):
// the feed's reclaim ignored the deleted ids XAUTOCLAIM reported, and the
// run waited for good. The reclaim now requests the repair, which points
// the feed at every running run.
func TestARunWhosePendingFeedEntryIsDeletedIsProjected(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	run, _, err := b.sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "w", Tasks: []events.TaskSpec{spec("a")}},
		scheduler.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	feed := b.db.K.FeedFor(run)
	if err := b.db.EnsureGroup(b.ctx, feed, rdb.GroupProjectors); err != nil {
		t.Fatal(err)
	}
	// A writer marks the run dirty and points the feed at it (its submit
	// needed no projector: it dispatched the root itself).
	if err := b.rdb.HSet(b.ctx, b.db.K.RunState(run), "@dirty", "1").Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.rdb.XAdd(b.ctx, &redis.XAddArgs{Stream: feed, Values: []any{"r", run}}).Err(); err != nil {
		t.Fatal(err)
	}
	// A projector reads the run's pointer and dies; the entry is deleted.
	read, err := b.rdb.XReadGroup(b.ctx, &redis.XReadGroupArgs{Group: rdb.GroupProjectors, Consumer: "dead", Streams: []string{feed, ">"},
		Block: -1}).Result()
	if err != nil || len(read) != 1 || len(read[0].Messages) != 1 {
		t.Fatalf("read the feed: %v %v", read, err)
	}
	if err := b.rdb.XDel(b.ctx, feed, read[0].Messages[0].ID).Err(); err != nil {
		t.Fatal(err)
	}
	p, err := projector.New(projector.Config{Redis: b.rdb, Namespace: b.db.K.Namespace(), ID: "live", FeedBlock: 100 * time.Millisecond,
		FeedReclaimIdle: 300 * time.Millisecond, RetryInitial: time.Millisecond, RetryMax: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.start(t, p)()
	// The projector folds the run: its cursor reaches the log's last entry.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		last, err := b.rdb.XRevRangeN(b.ctx, b.db.K.RunLog(run), "+", "-", 1).Result()
		if err != nil || len(last) != 1 {
			t.Fatalf("log: %v %v", last, err)
		}
		state, err := b.rdb.HMGet(b.ctx, b.db.K.RunState(run), "@cursor", "@dirty").Result()
		if err != nil {
			t.Fatal(err)
		}
		if state[0] == last[0].ID && state[1] == nil {
			return
		}
		select {
		case <-tick.C:
		case <-b.ctx.Done():
			t.Fatalf("run %s never projected after its pending feed entry was deleted: @cursor %v, @dirty %v, last entry %s",
				run, state[0], state[1], last[0].ID)
		}
	}
}
