package rdb_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/redis/go-redis/v9"
)

func adminSetup(t *testing.T) (context.Context, rdb.DB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx, rdb.New(redistest.Client(t), redistest.Namespace(t))
}

func entry(id, typ string) rdb.LogEntry {
	e := events.Event{ID: id, Run: "r", Type: events.Type(typ), Version: events.CurrentVersion, Time: time.UnixMilli(1)}
	return rdb.LogEntry{Fields: e.Fields()}
}

func TestImportAppendChecksTheLogFirst(t *testing.T) {
	t.Parallel()
	ctx, d := adminSetup(t)
	t.Run("an append at the expected length writes every entry", func(t *testing.T) {
		last, err := d.ImportAppend(ctx, "r", 0, []rdb.LogEntry{entry("e1", "run_submitted"), entry("e2", "task_dispatched")})
		if err != nil || last == "" {
			t.Fatalf("ImportAppend = %q, %v", last, err)
		}
		if n := d.C.XLen(ctx, d.K.RunLog("r")).Val(); n != 2 {
			t.Fatalf("log length %d, want 2", n)
		}
	})
	t.Run("an append at another length conflicts and writes nothing", func(t *testing.T) {
		_, err := d.ImportAppend(ctx, "r", 1, []rdb.LogEntry{entry("e3", "task_claimed")})
		if !errors.Is(err, rdb.ErrImportConflict) {
			t.Fatalf("ImportAppend at a stale length: %v, want ErrImportConflict", err)
		}
		if n := d.C.XLen(ctx, d.K.RunLog("r")).Val(); n != 2 {
			t.Fatalf("log length %d, want 2", n)
		}
	})
	t.Run("the state is written once; a second write conflicts and changes nothing", func(t *testing.T) {
		h := rdb.ImportHashes{State: map[string]string{rdb.FieldRunStatus: "running"}, DAG: map[string]string{"a": "{}"},
			Results: map[string]string{rdb.FieldRunInput: "null"}}
		if err := d.ImportState(ctx, "r", h); err != nil {
			t.Fatal(err)
		}
		h.State[rdb.FieldRunStatus] = "failed"
		if err := d.ImportState(ctx, "r", h); !errors.Is(err, rdb.ErrImportConflict) {
			t.Fatalf("second ImportState: %v, want ErrImportConflict", err)
		}
		if st := d.C.HGet(ctx, d.K.RunState("r"), rdb.FieldRunStatus).Val(); st != "running" {
			t.Errorf("@status %q, want running", st)
		}
		if d.C.Exists(ctx, d.K.RunChannel("r")).Val() != 0 {
			t.Error("an empty channel hash was created")
		}
	})
	t.Run("an append once the state exists conflicts", func(t *testing.T) {
		if _, err := d.ImportAppend(ctx, "r", 2, []rdb.LogEntry{entry("e3", "task_claimed")}); !errors.Is(err, rdb.ErrImportConflict) {
			t.Fatalf("ImportAppend after the state: %v, want ErrImportConflict", err)
		}
	})
	t.Run("ImportConflict finds an import interrupted before its index", func(t *testing.T) {
		c, err := d.ImportConflict(ctx, "r", []string{"e1", "e2"}, []string{"", ""})
		if err != nil || c != (rdb.ImportCheck{Done: 2, StateWritten: true}) {
			t.Errorf("ImportConflict = %+v, %v; want the whole log there with its state", c, err)
		}
	})
	t.Run("ImportConflict names the state of a run with other events or indexed", func(t *testing.T) {
		if c, err := d.ImportConflict(ctx, "r", []string{"e1", "e2", "e3"}, []string{"", "", ""}); err != nil || c.Why != "it has live state" {
			t.Errorf("ImportConflict of a longer export = %+v, %v", c, err)
		}
		if err := d.Reindex(ctx, "r", 1); err != nil {
			t.Fatal(err)
		}
		if c, err := d.ImportConflict(ctx, "r", []string{"e1", "e2"}, []string{"", ""}); err != nil || c.Why != "it has live state" {
			t.Errorf("ImportConflict of an indexed run = %+v, %v", c, err)
		}
	})
}

// An import of a succeeded run writes its log and its channel hash, no
// state (a succeeded run keeps none): an importer that died after the
// channel, before the index, left both, which the same import completes.
func TestImportConflictOfASucceededRunWithAChannel(t *testing.T) {
	t.Parallel()
	ctx, d := adminSetup(t)
	ids, seqs := []string{"e1", "e2", "e3"}, []string{"", "", ""}
	if _, err := d.ImportAppend(ctx, "r", 0, []rdb.LogEntry{entry("e1", "run_submitted"), entry("e2", "task_dispatched")}); err != nil {
		t.Fatal(err)
	}
	if err := d.C.HSet(ctx, d.K.RunChannel("r"), "k", "v").Err(); err != nil {
		t.Fatal(err)
	}
	if c, err := d.ImportConflict(ctx, "r", ids, seqs); err != nil || c.Why != "key "+d.K.RunChannel("r")+" exists" {
		t.Errorf("a channel beside a part of the log: ImportConflict = %+v, %v; want the channel in the way", c, err)
	}
	if _, err := d.ImportAppend(ctx, "r", 2, []rdb.LogEntry{entry("e3", "run_succeeded")}); err != nil {
		t.Fatal(err)
	}
	if c, err := d.ImportConflict(ctx, "r", ids, seqs); err != nil || c != (rdb.ImportCheck{Done: 3}) {
		t.Errorf("the whole log of a succeeded run and its channel: ImportConflict = %+v, %v; want it completed", c, err)
	}
	if err := d.Reindex(ctx, "r", 1); err != nil {
		t.Fatal(err)
	}
	if c, err := d.ImportConflict(ctx, "r", ids, seqs); err != nil || c.Why == "" {
		t.Errorf("indexed: ImportConflict = %+v, %v; want it in the way", c, err)
	}
}

func TestResumeLeavesATaskThatMovedOnAlone(t *testing.T) {
	t.Parallel()
	ctx, d := adminSetup(t)
	d.C.HSet(ctx, d.K.RunState("r"), "a", "running|1|2|w1", "b", "dispatched|1|0|")
	reclaim := events.Event{ID: "ev", Run: "r", Type: events.TaskReclaimed, Version: events.CurrentVersion, Task: "a", Attempt: 1, Epoch: 3, Time: time.UnixMilli(5)}
	done, err := d.Resume(ctx, "r", []rdb.ResumeItem{
		{Task: "a", Record: "running|1|2|w1", NewRecord: "dispatched|1|3|", Event: &reclaim,
			Dispatch: rdb.Dispatch{Pool: "default", Run: "r", Task: "a", Attempt: 1, EventID: "x1"}},
		{Task: "b", Record: "running|1|1|w2", // it moved on since it was read
			Dispatch: rdb.Dispatch{Pool: "default", Run: "r", Task: "b", Attempt: 1, EventID: "x2"}},
	}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 2 || !done[0] || done[1] {
		t.Fatalf("done = %v, want [true false]", done)
	}
	st := d.C.HGetAll(ctx, d.K.RunState("r")).Val()
	if st["a"] != "dispatched|1|3|" || st["b"] != "dispatched|1|0|" || st[rdb.FieldRunDirty] != "1" {
		t.Errorf("state = %v", st)
	}
	if q := d.C.XRange(ctx, d.K.QueueFor("r", "default", 0), "-", "+").Val(); len(q) != 1 || q[0].Values[rdb.MsgTask] != "a" {
		t.Errorf("queue = %v, want the dispatch of a only", q)
	}
	log, err := d.ReadLog(ctx, "r", "-", "+", 10, 0)
	if err != nil || len(log) != 1 || log[0].Type != events.TaskReclaimed || log[0].Epoch != 3 {
		t.Errorf("log = %+v, %v; want one task_reclaimed at epoch 3", log, err)
	}
	// The script that made the run dirty pointed the feed at it, in the
	// same step: with @dirty set and no pointer (the pointer a command of
	// its own, cut off) no projector would look at the run, and no later
	// finish would point one (each finds the run dirty already).
	if f := d.C.XRange(ctx, d.K.FeedFor("r"), "-", "+").Val(); len(f) != 1 || f[0].Values["r"] != "r" {
		t.Errorf("feed = %v, want one pointer at r", f)
	}
}

// splitFault runs a pipeline's commands as a Redis Cluster client does
// when the node of some of them is failing over: those whose key matches
// fail, the others run.
type splitFault struct{ match string }

func (h splitFault) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h splitFault) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h splitFault) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var rest []redis.Cmder
		var err error
		for _, c := range cmds {
			if k, ok := c.Args()[1].(string); ok && strings.Contains(k, h.match) {
				err = errors.New("CLUSTERDOWN (injected)")
				c.SetErr(err)
				continue
			}
			rest = append(rest, c)
		}
		if len(rest) > 0 {
			if e := next(ctx, rest); e != nil {
				err = e
			}
		}
		return err
	}
}

// The feed is pointed at a run whose outcome was dead-lettered only once
// its dead letter is written: a projector pointed first could fail the
// run before the dead letter existed, and a requeue in between left the
// dead letter behind for a run that then succeeded (chaos --cluster seed
// 81: on a cluster one pipeline's commands go to their nodes at once, and
// the dead letters' node was failing over while the feed's was not).
// Redeliver likewise.
func TestDeadLettersComeBeforeTheFeedPointer(t *testing.T) {
	t.Parallel()
	ctx, d := adminSetup(t)
	opt := *d.C.(*redis.Client).Options()
	hooked := redis.NewClient(&opt)
	t.Cleanup(func() { _ = hooked.Close() })
	hooked.AddHook(splitFault{match: "{dlq}"})
	h := rdb.New(hooked, d.K.Namespace())
	item := rdb.DeadLetterItem{Run: "r", Task: "a", TimeMS: 1, Info: rdb.DeadLetterDetails{Attempt: 1, Error: "boom"}}
	if err := h.RecordDeadLetters(ctx, "w", []rdb.DeadLetterItem{item}, []rdb.PointAck{{Run: "r"}}); err == nil {
		t.Fatal("RecordDeadLetters with the dead letters' node down: no error")
	}
	if _, err := h.Redeliver(ctx, "r", &item, "w", d.K.QueueFor("r", "default", 0), "1-0", 0); err == nil {
		t.Fatal("Redeliver with the dead letters' node down: no error")
	}
	if n := d.C.XLen(ctx, d.K.FeedFor("r")).Val(); n != 0 {
		t.Errorf("the feed holds %d pointers at r, whose dead letter was not written: want none", n)
	}
}

// A repair hands a dead worker's task back and queues its fresh message in
// one script: sent apart, a repair cut off between them (the queue's node
// failing over, the connection lost) left the task dispatched with no
// message for anyone to claim, and the projector's automatic repair does
// not come back to it.
func TestRepairReleasesAndRedispatchesInOneStep(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	cr := b.claim(t, "a", "dead-worker", 1, false)
	opt := *b.c.Options()
	hooked := redis.NewClient(&opt)
	t.Cleanup(func() { _ = hooked.Close() })
	hooked.AddHook(splitFault{match: ":q:"}) // queue writes in pipelines fail
	h := rdb.New(hooked, b.db.K.Namespace())
	_, _ = h.Repair(b.ctx, b.run, []rdb.RepairTask{{ID: "a", Owner: "dead-worker", Status: events.TaskStatusRunning,
		Attempt: 1, Epoch: cr.Epoch, Pool: "default"}}, time.Now(), "", nil)
	rec := b.hash(t, b.db.K.RunState(b.run))["a"]
	msgs := b.c.XRange(b.ctx, b.db.K.QueueFor(b.run, "default", 0), "-", "+").Val()
	if rec != "running|1|1|dead-worker" && len(msgs) == 0 {
		t.Errorf("a is %q with no queue message: released, never dispatched", rec)
	}
}

// A repair gave every dispatched task a fresh message, live or not: one
// deleted entry doubled the whole backlog of queued tasks (chaos counted
// up to 870 re-dispatches a seed). It now queues only the tasks with no
// live message: none in the stream, or one that was acked and stays until
// a trim; an undelivered message or one pending for a consumer is live.
func TestRepairQueuesOnlyDispatchedTasksWithNoLiveMessage(t *testing.T) {
	t.Parallel()
	for _, byID := range []int{256, 0} { // the pending list read id by id, or whole
		t.Run(fmt.Sprintf("pending_by_id_%d", byID), func(t *testing.T) {
			t.Parallel()
			repairOnlyTheLost(t, byID)
		})
	}
}

func repairOnlyTheLost(t *testing.T, byID int) {
	b := endRun(t, nil, parallel(5)...)
	msgs := b.dispatchQueued(t, "w1", "t00", "t01", "t02", "t03", "t04") // each pending for w1, unclaimed
	q := b.endQueue()
	if err := b.c.XAck(b.ctx, q, rdb.GroupWorkers, msgs["t01"], msgs["t03"], msgs["t04"]).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.c.XDel(b.ctx, q, msgs["t02"]).Err(); err != nil {
		t.Fatal(err)
	}
	// t03 queued again (undelivered); t04 only at another attempt.
	for _, x := range []rdb.Dispatch{{Pool: "default", Run: b.run, Task: "t03", Attempt: 1}, {Pool: "default", Run: b.run, Task: "t04", Attempt: 2}} {
		if err := b.db.XAddDispatch(b.ctx, b.c, x).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var tasks []rdb.RepairTask
	for _, id := range []string{"t00", "t01", "t02", "t03", "t04"} {
		tasks = append(tasks, rdb.RepairTask{ID: id, Status: events.TaskStatusDispatched, Attempt: 1, Pool: "default"})
	}
	// A walk's index: the stream is read once, at the first question,
	// and what was read stands (the fresh messages are not in it: a second
	// repair with it duplicates them, which the claim drops).
	ix := rdb.NewQueueIndex("")
	ix.SetPendingByID(byID)
	want := []string{"t01", "t02", "t04"}
	for i := range 2 {
		before := b.c.XLen(b.ctx, q).Val()
		ids, err := b.db.Repair(b.ctx, b.run, tasks, time.Now(), "", ix)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids, want) {
			t.Errorf("repair %d re-dispatched %v, want %v (t00 pending for its reader, t03 undelivered)", i, ids, want)
		}
		if n := b.c.XLen(b.ctx, q).Val() - before; n != 3 {
			t.Errorf("repair %d added %d queue messages, want 3", i, n)
		}
	}
	// Read afresh, the fresh messages are live: nothing to do.
	if ids, err := b.db.Repair(b.ctx, b.run, tasks, time.Now(), "", nil); err != nil || len(ids) != 0 {
		t.Errorf("a repair reading the queue afresh = %v, %v; want nothing re-dispatched", ids, err)
	}
}
