package worker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/oklog/ulid/v2"
)

// A fetch-claimed message that waited in the buffer for a slot (over a
// third of the lease) has its claim checked again before the handler runs:
// the run may have been cancelled meanwhile (or the claim handed back).
// Starting from the fetch's claim as it was would run the handler of a
// cancelled run.
func TestABufferedFetchClaimIsCheckedAgainBeforeItRuns(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := scheduler.New(scheduler.Config{Redis: c, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	run, _, err := s.Submit(ctx, events.RunSubmittedBody{Workflow: "w", Tasks: []events.TaskSpec{{ID: "t", Handler: "h"}}}, scheduler.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{Redis: c, Namespace: ns, ID: "W"})
	if err != nil {
		t.Fatal(err)
	}
	w.workCtx, w.batch = ctx, newBatcher(ctx, w) // as Run sets them
	defer w.batch.stop()
	var ran atomic.Bool
	w.Handle("h", HandlerFunc(func(context.Context, *Task) (any, error) {
		ran.Store(true)
		return nil, nil
	}))
	for _, q := range w.db.K.AllQueues("default") {
		if err := w.db.EnsureGroup(ctx, q, rdb.GroupWorkers); err != nil {
			t.Fatal(err)
		}
	}
	res, claims, err := w.db.FetchClaim(ctx, 0, "default", "W", []string{ulid.Make().String()}, time.Now().UnixMilli())
	if err != nil || len(claims) != 1 {
		t.Fatalf("fetch as W: %v claims, %v", claims, err)
	}
	m := w.messages(res, claims, nil)[0]
	if m.pre == nil || m.pre.Outcome != rdb.ClaimOK {
		t.Fatalf("the fetch's claim = %+v, want ok", m.pre)
	}
	// While the message waits for a slot, the run is cancelled.
	if _, err := w.db.CancelRun(ctx, run, "client-test", "test", time.Now().UnixMilli(), func() string { return ulid.Make().String() }); err != nil {
		t.Fatal(err)
	}
	m.fetched = time.Now().Add(-w.cfg.Lease)
	w.process(ctx, m, func() {})
	if ran.Load() {
		t.Error("the handler of a run cancelled while its message waited in the buffer ran")
	}
}
