package scheduler_test

import (
	"context"
	"errors"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/scheduler"
)

// Submit commits the run's first decisions itself (its roots' dispatches,
// queued in the run's partition), exactly those a projector would make;
// the feed is pointed at the run only when the fold calls for more.
func TestSubmitDispatchesTheRoots(t *testing.T) {
	t.Parallel()
	s, c, ns := setupScheduler(t)
	ctx := context.Background()
	k := rdb.NewKeys(ns)

	spec := wf(task("a", "h"), with(task("b", "h"), func(t *events.TaskSpec) { t.Pool = "gpu"; t.Priority = 3 }), task("c", "h", "a", "b"))
	run, _, err := s.Submit(ctx, spec, scheduler.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := c.XRange(ctx, k.RunLog(run), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	evs, err := rdb.DecodeLog(run, msgs)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range evs {
		got = append(got, string(e.Type)+" "+e.Task)
	}
	if diff := cmp.Diff([]string{"run_submitted ", "task_dispatched a", "task_dispatched b"}, got); diff != "" {
		t.Errorf("log (-want +got):\n%s", diff)
	}
	// The same decisions as the projector's fold makes.
	r := projector.NewRun(run)
	if err := projector.Apply(r, evs[0]); err != nil {
		t.Fatal(err)
	}
	for i, d := range projector.Decide(r, 0, nil) {
		if e := evs[1+i]; e.Type != d.Type || e.Task != d.Task || e.Attempt != d.Attempt || string(e.Body) != string(d.Body) {
			t.Errorf("decision %d: submit made %s %s #%d %s, the fold %s %s #%d %s", i, e.Type, e.Task, e.Attempt, e.Body, d.Type, d.Task, d.Attempt, d.Body)
		}
	}
	st, err := c.HGetAll(ctx, k.RunState(run)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if st["a"] != "dispatched|1|0|" || st["b"] != "dispatched|1|0|" || st["c"] != "" || st[rdb.FieldRunCursor] != msgs[2].ID ||
		st[rdb.FieldRunCommit] != evs[1].ID || st[rdb.FieldRunDirty] != "" || st[rdb.FieldRunStatus] != "running" {
		t.Errorf("state %v: want a and b dispatched, the head at the last decision, not dirty", st)
	}
	for _, q := range []struct {
		pool string
		prio int
		task string
	}{{"default", 0, "a"}, {"gpu", 3, "b"}} {
		m, err := c.XRange(ctx, k.QueueFor(run, q.pool, q.prio), "-", "+").Result()
		if err != nil || len(m) != 1 || m[0].Values[rdb.MsgTask] != q.task || m[0].Values[rdb.MsgRun] != run || m[0].Values[rdb.MsgAttempt] != "1" {
			t.Errorf("queue %s/%d: %v %v, want one message for %s", q.pool, q.prio, m, err, q.task)
		}
	}
	if n, _ := c.XLen(ctx, k.FeedFor(run)).Result(); n != 0 {
		t.Errorf("feed holds %d pointers, want none (nothing more to decide)", n)
	}

	// More roots than one commit holds: the rest is the projector's.
	var wide []events.TaskSpec
	for i := range projector.DefaultBatchSize + 5 {
		wide = append(wide, task("t"+strconv.Itoa(i), "h"))
	}
	run2, _, err := s.Submit(ctx, wf(wide...), scheduler.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := c.XLen(ctx, k.RunLog(run2)).Result(); n != 1+projector.DefaultBatchSize {
		t.Errorf("wide run: %d events, want run_submitted and %d dispatches", n, projector.DefaultBatchSize)
	}
	if d, _ := c.HGet(ctx, k.RunState(run2), rdb.FieldRunDirty).Result(); d != "1" {
		t.Error("wide run: not marked dirty")
	}
	if n, _ := c.XLen(ctx, k.FeedFor(run2)).Result(); n != 1 {
		t.Errorf("feed holds %d pointers, want one (for the wide run)", n)
	}
}

// A queue key that is not a stream fails the submit with WRONGTYPE before
// anything is written.
func TestSubmitOntoABrokenQueueWritesNothing(t *testing.T) {
	t.Parallel()
	s, c, ns := setupScheduler(t)
	ctx := context.Background()
	k := rdb.NewKeys(ns)
	if err := c.Set(ctx, k.Queue(0, "broken", 0), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	_, _, err := s.Submit(ctx, wf(with(task("a", "h"), func(t *events.TaskSpec) { t.Pool = "broken" })), scheduler.SubmitOptions{RunID: "r-broken"})
	if err == nil {
		t.Fatal("submit onto a broken queue key succeeded")
	}
	for _, key := range k.RunKeys("r-broken") {
		if n, _ := c.Exists(ctx, key).Result(); n != 0 {
			t.Errorf("%s was written by a failed submit", key)
		}
	}
}

// A submitter configured with another partition count than the
// namespace's is refused before it writes: its runs would land in
// partitions the namespace's workers do not serve.
func TestSubmitChecksTheNamespacesPartitions(t *testing.T) {
	t.Parallel()
	s, c, ns := setupScheduler(t)
	ctx := context.Background()
	if _, _, err := s.Submit(ctx, wf(task("a", "h")), scheduler.SubmitOptions{}); err != nil {
		t.Fatal(err)
	}
	other, err := scheduler.New(scheduler.Config{Redis: c, Namespace: ns, NamespacePartitions: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := other.Submit(ctx, wf(task("a", "h")), scheduler.SubmitOptions{RunID: "p3-run"}); !errors.Is(err, rdb.ErrLayout) {
		t.Fatalf("submit with 3 partitions into a 1-partition namespace = %v, want ErrLayout", err)
	}
	for _, k := range []rdb.Keys{rdb.NewKeys(ns), rdb.NewKeysP(ns, 3)} {
		if n, _ := c.Exists(ctx, k.RunKeys("p3-run")...).Result(); n != 0 {
			t.Errorf("the refused submit wrote %d keys of its run", n)
		}
	}
	if _, err := scheduler.New(scheduler.Config{Redis: c, Namespace: ns, NamespacePartitions: -1}); err == nil {
		t.Error("New accepted NamespacePartitions -1")
	}
}
