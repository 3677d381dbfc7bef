package graflow_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/worker/builtin"
)

// Follow with UntilEnd returns at once for a run that ended at or before
// From (a consumer resuming after it handled the end), and returns the
// context's error when the context ends first: it waited for the context
// in the first case and returned nil in the second, so a caller could not
// tell the run's end from its own timeout (found by review). A run that
// does not exist yet is waited for (TestInspect follows a run before its
// submit).
func TestFollowUntilEndKnowsAnEndedOrMissingRun(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wf := graflow.NewWorkflow("follow")
	wf.Task("one", builtin.Echo).Args(map[string]any{"value": 1})
	run, info := b.submitAndWait(ctx, t, wf)
	if !info.Succeeded() {
		t.Fatalf("run %s", info.Status)
	}
	evs := logEvents(t, b, run)
	last := evs[len(evs)-1]
	if last.Type != events.RunSucceeded {
		t.Fatalf("last event %s, want run_succeeded", last.Type)
	}
	follow := func(run, from string) (int, error) {
		t.Helper()
		fctx, fcancel := context.WithTimeout(ctx, 3*time.Second)
		defer fcancel()
		n := 0
		err := b.client.Follow(fctx, run, graflow.FollowOptions{From: from, UntilEnd: true, Block: 100 * time.Millisecond}, func(events.Event) error {
			n++
			return nil
		})
		if fctx.Err() != nil && ctx.Err() == nil {
			t.Errorf("Follow(%s, from %q) waited for its context (returned %v)", run, from, err)
		}
		return n, err
	}
	if n, err := follow(run, ""); err != nil || n != len(evs) {
		t.Errorf("from the start: %d events, %v; want %d, nil", n, err, len(evs))
	}
	if n, err := follow(run, last.Seq); err != nil || n != 0 {
		t.Errorf("from its end: %d events, %v; want none, nil at once", n, err)
	}
	if n, err := follow(run, evs[len(evs)-2].Seq); err != nil || n != 1 {
		t.Errorf("from before its end: %d events, %v; want the end, nil", n, err)
	}

	// A run that does not end (nobody serves its pool) until the context
	// does: the context's error, not nil.
	wf = graflow.NewWorkflow("follow-forever")
	wf.Task("never", builtin.Echo).Pool("nobody")
	stuck, err := b.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	fctx, fcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer fcancel()
	err = b.client.Follow(fctx, stuck, graflow.FollowOptions{UntilEnd: true, Block: 100 * time.Millisecond}, func(events.Event) error { return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("following a run that does not end until the context's deadline: %v; want context.DeadlineExceeded", err)
	}
}
