package projector_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/scheduler"
)

// submitOn submits specs under a run id that falls on the feed partition
// of other (so both runs are projected by the same consumer loop).
func (b liveBundle) submitOn(t *testing.T, other string, specs ...events.TaskSpec) string {
	t.Helper()
	for i := 0; ; i++ {
		id := fmt.Sprintf("%s-%d", t.Name()[:8], i)
		if b.db.K.FeedFor(id) != b.db.K.FeedFor(other) {
			continue
		}
		run, _, err := b.sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "live", Tasks: specs}, scheduler.SubmitOptions{RunID: id})
		if err != nil {
			t.Fatal(err)
		}
		return run
	}
}

// stuckRun submits (bare: the scheduler refuses it, since its submit would
// dispatch a onto the broken key) a run whose one task is in a pool whose
// queue key holds a string, so a projector's commit meets the key and the
// run cannot be projected.
func (b liveBundle) stuckRun(t *testing.T, id string) string {
	t.Helper()
	if err := b.rdb.Set(b.ctx, b.db.K.Queue(0, "broken", 0), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	bad := spec("a")
	bad.Pool = "broken"
	return b.submitRaw(t, id, bad)
}

// within is b with its context bounded to d from now.
func (b liveBundle) within(t *testing.T, d time.Duration) liveBundle {
	ctx, cancel := context.WithTimeout(b.ctx, d)
	t.Cleanup(cancel)
	b.ctx = ctx
	return b
}

// Issue #10 defects 3 and 5: a run with a persistent error that is not a
// decode error (here WRONGTYPE on its pool's queue key) was retried
// forever inside the feed loop, wedging its partition. It is now retried a
// bounded number of times, then quarantined for good (run_quarantined in
// its log, @status quarantined, the namespace index), and the partition
// moves on.
func TestAStuckRunIsQuarantinedAndThePartitionMovesOn(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	first := b.stuckRun(t, "stuck-run")
	stop := b.start(t, b.projector(t, "p1"))
	defer stop()

	wait := b.within(t, 20*time.Second)
	wait.waitFor(t, first, events.RunQuarantined, "")
	st, err := b.rdb.HMGet(b.ctx, b.db.K.RunState(first), rdb.FieldRunStatus, rdb.FieldRunQuarantine).Result()
	if err != nil || st[0] != string(projector.RunQuarantined) || st[1] == nil {
		t.Errorf("state of the quarantined run: %v, %v", st, err)
	}
	if why, err := b.db.QuarantineReason(b.ctx, first); err != nil || why == "" {
		t.Errorf("quarantine index for %s: %q, %v", first, why, err)
	}
	// The same partition goes on with other runs.
	good := b.submitOn(t, first, spec("x"))
	wait.waitFor(t, good, events.TaskDispatched, "x")
	// And the fold agrees with the live state.
	final := fold(t, first, b.log(t, first))
	if final.Status != projector.RunQuarantined || !final.Status.Terminal() {
		t.Errorf("fold of the quarantined run: %s", final.Status)
	}
	// The commit that would have dispatched a (onto the broken queue
	// key) was refused whole: a is untouched, a task with no record.
	want := map[string]rdb.Record{}
	if r := projector.RecordOf(final.Task("a")); r != (rdb.Record{Status: projector.TaskPending}) {
		want["a"] = r
	}
	if diff := cmp.Diff(want, b.records(t, first)); diff != "" {
		t.Errorf("records (-fold +redis):\n%s", diff)
	}
}

// A run that cannot be projected whose quarantine fails for a reason that
// passes (Redis restarting at that moment) is set aside once Redis is
// back: its feed entry used to be acked with the rest of its batch after
// the one failed try, so the run stayed running and dirty with nothing to
// bring a projector back to it, neither projected nor set aside.
func TestARunWhoseQuarantineFailsForAMomentIsSetAside(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	run := b.stuckRun(t, "")
	// The quarantine script: EVALSHA with the run's state and log as its
	// only keys.
	hook := &redistest.FailOnce{Err: fmt.Errorf("read tcp: %w", syscall.ECONNRESET), Match: func(a []any) bool {
		return len(a) > 4 && (fmt.Sprint(a[0]) == "evalsha" || fmt.Sprint(a[0]) == "eval") && fmt.Sprint(a[2]) == "2" &&
			a[3] == b.db.K.RunState(run) && a[4] == b.db.K.RunLog(run)
	}}
	c := redistest.Client(t) // not a copy of b.rdb's Options: go-redis writes them while it connects
	c.AddHook(hook)
	p, err := projector.New(projector.Config{Redis: c, Namespace: b.db.K.Namespace(), ID: "p1",
		RetryInitial: time.Millisecond, RetryMax: time.Millisecond, FeedBlock: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := b.start(t, p)
	defer stop()
	b.within(t, 20*time.Second).waitFor(t, run, events.RunQuarantined, "")
	if !hook.Failed() {
		t.Fatal("the quarantine never failed: the test did not test anything")
	}
}
