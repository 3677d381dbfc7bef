package projector_test

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
)

// TestRepairPlan: a repair re-dispatches exactly the running run's
// dispatched and running tasks, and refuses a run that is not running.
func TestRepairPlan(t *testing.T) {
	t.Parallel()
	spec := func(id string, deps ...string) events.TaskSpec {
		return events.TaskSpec{ID: id, Handler: "h", Deps: deps, Pool: "default"}
	}
	open := withSeqs("r", []events.Event{
		submitted(spec("a"), spec("b"), spec("c"), spec("d", "a", "b", "c")),
		dispatched("a", 1), dispatched("b", 1), dispatched("c", 1),
		claimed("a", 1, 1, "w1"), succeeded("a", 1, 1, "w1", "1"),
		claimed("b", 1, 1, "w2"),
	})
	plan, _, err := projector.RepairPlan("r", open)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		ID, Owner string
		Status    events.TaskStatus
		Epoch     int64
	}
	var got []row
	for _, task := range plan {
		got = append(got, row{task.Spec.ID, task.Owner, task.Status, task.Epoch})
	}
	want := []row{{"b", "w2", events.TaskStatusRunning, 1}, {"c", "", events.TaskStatusDispatched, 0}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("plan (-want +got):\n%s", diff)
	}

	for name, evs := range map[string][]events.Event{
		"no such run": nil,
		"succeeded": withSeqs("r", []events.Event{
			submitted(spec("a")), dispatched("a", 1), claimed("a", 1, 1, "w"), succeeded("a", 1, 1, "w", "1"),
			{Type: events.RunSucceeded},
		}),
	} {
		if _, _, err := projector.RepairPlan("r", evs); !errors.Is(err, projector.ErrNotRunning) {
			t.Errorf("%s: err = %v, want ErrNotRunning", name, err)
		}
	}
}
