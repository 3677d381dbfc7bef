package graflow_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
)

// A best-effort group: one member fails for good, the successor runs with
// the others' results and sees which member failed; the run succeeds.
// AtLeast and Critical groups skip their successor (the run fails) when
// their bar cannot be met.
func TestGroupPolicies(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	failed := make(chan []string, 1)
	startWorkerWith(t, b, "wj", func(w *worker.Worker) {
		w.HandleFunc("report", func(ctx context.Context, task *worker.Task) (any, error) {
			failed <- task.FailedDeps()
			return len(task.Deps()) - len(task.FailedDeps()), nil
		})
	}, "joins")

	wf := graflow.NewWorkflow("best-effort")
	a := wf.Task("a", builtin.Echo).Args(map[string]any{"value": 1})
	bad := wf.Task("bad", builtin.Fail).Args(map[string]any{"permanent": true, "message": "flaky source"})
	c := wf.Task("c", builtin.Echo).Args(map[string]any{"value": 3})
	wf.Parallel(a, bad, c).BestEffort().Then(wf.Task("report", "report").Pool("joins"))
	_, info := b.submitAndWait(ctx, t, wf)
	if !info.Succeeded() || string(info.Task("report").Result) != "2" || info.Task("bad").Status != "failed" {
		t.Fatalf("best effort: run %s, report %s, bad %s", info.Status, info.Task("report").Result, info.Task("bad").Status)
	}
	if got := <-failed; !slices.Equal(got, []string{"bad"}) {
		t.Fatalf("FailedDeps = %v, want [bad]", got)
	}

	for name, group := range map[string]func(wf *graflow.Workflow, g *graflow.Group, a, bad *graflow.Task) *graflow.Group{
		"at-least": func(_ *graflow.Workflow, g *graflow.Group, _, _ *graflow.Task) *graflow.Group { return g.AtLeast(2) },
		"critical": func(_ *graflow.Workflow, g *graflow.Group, _, bad *graflow.Task) *graflow.Group {
			return g.Critical(bad)
		},
	} {
		wf := graflow.NewWorkflow(name)
		a := wf.Task("a", builtin.Echo).Args(map[string]any{"value": 1})
		bad := wf.Task("bad", builtin.Fail).Args(map[string]any{"permanent": true, "message": "down"})
		group(wf, wf.Parallel(a, bad), a, bad).Then(wf.Task("report", "report").Pool("joins"))
		_, info := b.submitAndWait(ctx, t, wf)
		if info.Status != "failed" || info.Task("report").Status != "skipped" || info.FailedTask != "bad" {
			t.Errorf("%s: run %s, report %s, failed task %q; want failed, skipped, bad", name, info.Status, info.Task("report").Status, info.FailedTask)
		}
	}

	// Invalid policies are refused at submit, nothing written.
	wf = graflow.NewWorkflow("invalid")
	x := wf.Task("x", builtin.Echo)
	wf.Parallel(x).AtLeast(2).Then(wf.Task("y", builtin.Echo))
	if _, err := b.client.Submit(ctx, wf, nil); err == nil || !errors.Is(err, scheduler.ErrInvalidWorkflow) {
		t.Fatalf("at_least 2 of 1: %v, want an invalid workflow", err)
	}
}
