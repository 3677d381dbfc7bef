package graflow_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/graflow-go/graflow/worker/builtin"
)

// Submitting with one's own run id is idempotent, also once the run has
// succeeded and keeps only its log: the same submit again (a retry after
// a lost reply, a cron tick fired twice) returns the run, and another
// workflow under that id is refused with the run's real workflow. Found
// by review: the end deletes the state hash, whose @workflow the submit
// read, so the retry got ErrRunExists "run order-42 is a \"\" run".
func TestResubmitOfASucceededRunReturnsIt(t *testing.T) {
	b := setup(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wf := graflow.NewWorkflow("etl")
	wf.Task("a", builtin.Echo).Args(map[string]any{"value": 1})
	run, err := b.client.Submit(ctx, wf, nil, graflow.WithRunID("order-42"))
	if err != nil {
		t.Fatal(err)
	}
	if info, err := b.client.Wait(ctx, run); err != nil || !info.Succeeded() {
		t.Fatalf("wait: %v %+v", err, info)
	}
	again, err := b.client.Submit(ctx, wf, nil, graflow.WithRunID("order-42"))
	if err != nil || again != run {
		t.Fatalf("the same submit of a succeeded run: run %q, err %v; want %q and no error", again, err, run)
	}
	other := graflow.NewWorkflow("billing")
	other.Task("a", builtin.Echo).Args(map[string]any{"value": 1})
	_, err = b.client.Submit(ctx, other, nil, graflow.WithRunID("order-42"))
	if !errors.Is(err, scheduler.ErrRunExists) || !strings.Contains(err.Error(), `"etl"`) {
		t.Fatalf("another workflow under a succeeded run's id: %v; want ErrRunExists naming \"etl\"", err)
	}
}
