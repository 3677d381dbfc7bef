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

// Follow with UntilEnd goes on past a run's end that a later task_requeued
// reopened, to the end of the rerun (Wait's rule: a run has ended when its
// last terminal event is not followed by a task_requeued). It stopped at
// the first terminal event, the rerun's events undelivered (found by
// review).
func TestFollowUntilEndGoesOnPastAnEndThatARequeueReopened(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wf := graflow.NewWorkflow("follow-requeued")
	a := wf.Task("a", builtin.Flaky).Args(map[string]any{"fail": 1, "permanent": true, "value": 2})
	wf.Task("b", builtin.Sum).After(a)
	run, info := b.submitAndWait(ctx, t, wf)
	if info.Status != "failed" {
		t.Fatalf("run %s, want failed", info.Status)
	}
	if err := b.client.Requeue(ctx, run, "a"); err != nil {
		t.Fatal(err)
	}
	if info, err := b.client.Wait(ctx, run); err != nil || !info.Succeeded() {
		t.Fatalf("after the requeue: %v, %v; want the run succeeded", info, err)
	}
	evs := logEvents(t, b, run)
	ends, requeued := 0, false
	for _, e := range evs {
		switch e.Type {
		case events.RunFailed, events.RunSucceeded:
			ends++
		case events.TaskRequeued:
			requeued = true
		}
	}
	if ends != 2 || !requeued || evs[len(evs)-1].Type != events.RunSucceeded {
		t.Fatalf("log has %d ends, requeued %v, last %s; want run_failed, task_requeued, then run_succeeded last", ends, requeued, evs[len(evs)-1].Type)
	}

	fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
	defer fcancel()
	var got []events.Event
	err := b.client.Follow(fctx, run, graflow.FollowOptions{UntilEnd: true, Block: 100 * time.Millisecond}, func(e events.Event) error {
		got = append(got, e)
		return nil
	})
	if err != nil {
		t.Fatalf("Follow: %v", err)
	}
	if len(got) != len(evs) {
		t.Fatalf("Follow delivered %d events, last %s; want all %d, through the rerun's run_succeeded", len(got), got[len(got)-1].Type, len(evs))
	}
	for i := range evs {
		if got[i].Seq != evs[i].Seq || got[i].Type != evs[i].Type {
			t.Fatalf("event %d delivered %s %s, want %s %s", i, got[i].Seq, got[i].Type, evs[i].Seq, evs[i].Type)
		}
	}
}
