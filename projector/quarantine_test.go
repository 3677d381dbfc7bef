package projector_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
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

// Issue #10 defects 3 and 5: a run with a persistent error that is not a
// decode error (here WRONGTYPE on its pool's queue key) was retried
// forever inside the feed loop, wedging its partition. It is now retried a
// bounded number of times, then quarantined for good (run_quarantined in
// its log, @status quarantined, the namespace index), and the partition
// moves on.
func TestAStuckRunIsQuarantinedAndThePartitionMovesOn(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	if err := b.rdb.Set(b.ctx, b.db.K.Queue(0, "broken", 0), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	bad := spec("a")
	bad.Pool = "broken"
	// Submitted bare (the scheduler refuses it: its submit would dispatch
	// a onto the broken key), so the projector's commit meets the key.
	first := b.submitRaw(t, "stuck-run", bad)
	stop := b.start(t, b.projector(t, "p1"))
	defer stop()

	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	wait := b
	wait.ctx = ctx
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
