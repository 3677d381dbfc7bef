package replay_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
)

// readGolden reads one recorded history.
func readGolden(t *testing.T, name string) []events.Event {
	t.Helper()
	f, err := os.Open(filepath.Join(goldenDir, name+".jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	evs, err := replay.ReadExport(f)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// TestVerifyIsPure verifies a recorded history against the live hashes an
// import would write for it, and against tampered copies, with no Redis.
func TestVerifyIsPure(t *testing.T) {
	t.Parallel()
	// imported returns the live projection an import of evs writes.
	imported := func(t *testing.T, evs []events.Event) replay.Live {
		im, err := replay.PrepareImport(evs, replay.ImportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		last := evs[len(evs)-1].Seq
		h, err := im.Hashes(last)
		if err != nil {
			t.Fatal(err)
		}
		return replay.Live{State: h.State, Results: h.Results, DAG: h.DAG, LastSeq: last}
	}
	setup := func(t *testing.T) ([]events.Event, replay.Live) {
		evs := readGolden(t, "fanout")
		return evs, imported(t, evs)
	}

	t.Run("the hashes an import writes verify clean", func(t *testing.T) {
		evs, live := setup(t)
		rep, want := replay.Verify(evs[0].Run, "ns", live, evs, nil)
		if !rep.OK() {
			t.Fatalf("problems: %v", rep.Problems)
		}
		if want != nil {
			t.Errorf("a finished run asks for dispatches %v", want)
		}
	})

	t.Run("a task record changed without an event is named", func(t *testing.T) {
		evs, live := setup(t)
		r, err := replay.Fold(evs[0].Run, evs)
		if err != nil {
			t.Fatal(err)
		}
		task := r.Tasks[0].Spec.ID
		live.State[task] = "running|9|9|ghost"
		rep, _ := replay.Verify(evs[0].Run, "ns", live, evs, nil)
		if len(rep.Problems) != 1 || rep.Problems[0].Check != replay.CheckState || rep.Problems[0].Task != task {
			t.Errorf("problems %v, want one state problem of task %s", rep.Problems, task)
		}
	})

	t.Run("a task count at submit other than the log's is named, a missing one is not", func(t *testing.T) {
		// A finish ends a small run once @ok reaches @tasks + @spawned:
		// an @tasks set below the run's real count would let it end the
		// run before every task succeeded.
		evs, live := setup(t)
		want := live.State[statehash.FieldRunTasks]
		live.State[statehash.FieldRunTasks] = "1"
		rep, _ := replay.Verify(evs[0].Run, "ns", live, evs, nil)
		if len(rep.Problems) != 1 || rep.Problems[0].Field != statehash.FieldRunTasks || rep.Problems[0].Replayed != want {
			t.Errorf("problems %v, want one of %s (replayed %s)", rep.Problems, statehash.FieldRunTasks, want)
		}
		delete(live.State, statehash.FieldRunTasks) // the finish then leaves the end to a projector
		if rep, _ := replay.Verify(evs[0].Run, "ns", live, evs, nil); !rep.OK() {
			t.Errorf("problems without @tasks: %v", rep.Problems)
		}
	})

	t.Run("entries that do not decode are each reported", func(t *testing.T) {
		evs, live := setup(t)
		bad := []replay.Undecodable{{Seq: "1-1", Err: events.ErrMalformed}, {Seq: "2-1", Err: events.ErrUnknownType}}
		rep, _ := replay.Verify(evs[0].Run, "ns", live, evs, bad)
		if len(rep.Problems) != 2 || rep.Problems[0].Seq != "1-1" || rep.Problems[1].Seq != "2-1" {
			t.Errorf("problems %v, want the two bad entries", rep.Problems)
		}
	})

	t.Run("a success that calls for a decision needs @dirty, one handed on in its finish does not", func(t *testing.T) {
		evs := readGolden(t, "sequence")
		// Cut the history after the first success that makes a task
		// ready (the fold calls for its dispatch), with the projection's
		// cursor before it and no @dirty.
		cut := -1
		r := projector.NewRun(evs[0].Run)
		var next []events.Event
		for i, e := range evs {
			if err := projector.Apply(r, e); err != nil {
				t.Fatal(err)
			}
			if e.Type == events.TaskSucceeded {
				if d := projector.Decide(r, 0, nil); len(d) > 0 && d[0].Type == events.TaskDispatched {
					cut, next = i+1, d
					break
				}
			}
		}
		if cut < 0 {
			t.Fatal("no success in the golden history makes a task ready")
		}
		head := evs[:cut]
		live := imported(t, head)
		live.State["@cursor"] = head[cut-2].Seq
		delete(live.State, "@dirty")
		rep, _ := replay.Verify(head[0].Run, "ns", live, head, nil)
		if len(rep.Problems) != 1 || rep.Problems[0].Check != replay.CheckProjection {
			t.Fatalf("problems %v, want one projection problem: nothing wakes a projector for the success", rep.Problems)
		}
		// The finish dispatched the task itself, in the same step.
		d := next[0]
		d.Seq, d.ID, d.Worker, d.Time, d.Version = head[cut-1].Seq+"1", events.NewID(head[cut-1].Time), head[cut-1].Worker, head[cut-1].Time, events.CurrentVersion
		handed := append(slices.Clone(head), d)
		live = imported(t, handed)
		live.State["@cursor"] = head[cut-2].Seq
		delete(live.State, "@dirty")
		rep, _ = replay.Verify(head[0].Run, "ns", live, handed, nil)
		for _, p := range rep.Problems {
			if p.Check == replay.CheckProjection {
				t.Errorf("projection problem %v after a success handed on in its finish", p)
			}
		}
	})

	t.Run("a running run asks where its dispatched tasks are, and reports the lost ones", func(t *testing.T) {
		evs, _ := setup(t)
		// Cut the history after the first dispatch.
		cut := 0
		for i, e := range evs {
			if e.Type == events.TaskDispatched {
				cut = i + 1
				break
			}
		}
		evs = evs[:cut]
		live := imported(t, evs)
		live.State["@dirty"] = "1"
		rep, want := replay.Verify(evs[0].Run, "ns", live, evs, nil)
		if !rep.OK() || len(want) != 1 || want[0].Task != evs[cut-1].Task {
			t.Fatalf("report %v, want %v; want a clean report and the dispatch of %s", rep.Problems, want, evs[cut-1].Task)
		}
		rep.AddLost(want, func(pool string, prio int) string { return "q:" + pool })
		if len(rep.Problems) != 1 || rep.Problems[0].Check != replay.CheckQueue {
			t.Errorf("problems %v, want one queue problem", rep.Problems)
		}
		plan, err := replay.PlanResume(evs[0].Run, evs, live.State)
		if err != nil || plan.Run.Status != projector.RunRunning || len(plan.Want) != 1 {
			t.Fatalf("PlanResume = %+v, %v", plan, err)
		}
	})
}
