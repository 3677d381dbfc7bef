package replay_test

import (
	"strings"
	"testing"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/replay"
)

func (h *hist) spawn(task string, attempt int, epoch int64, w string, specs ...events.TaskSpec) *hist {
	return h.add(events.Event{Type: events.TasksAdded, Task: task, Attempt: attempt, Epoch: epoch, Worker: w}.
		WithBody(events.TasksAddedBody{Tasks: specs}))
}

// a → s; a spawns x0 and x1 (after x0): s waits for x1.
func spawnSpecs() []events.TaskSpec {
	return []events.TaskSpec{{ID: "a", Handler: "split"}, {ID: "s", Handler: "sum", Deps: []string{"a"}}}
}

var spawnedX = []events.TaskSpec{{ID: "x0", Handler: "h"}, {ID: "x1", Handler: "h", Deps: []string{"x0"}}}

func TestAnalyzeSpawns(t *testing.T) {
	t.Parallel()

	t.Run("a sound spawn has no problems and its fan-in is unlocked by the last spawned task", func(t *testing.T) {
		t.Parallel()
		h := new(hist).submit(spawnSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").
			spawn("a", 1, 1, "wa", spawnedX...).succeed("a", 1, 1, "wa").
			dispatch("x0", 1).claim("x0", 1, 1, "wb").succeed("x0", 1, 1, "wb").
			dispatch("x1", 1).claim("x1", 1, 1, "wb").succeed("x1", 1, 1, "wb").
			dispatch("s", 1).claim("s", 1, 1, "wa").succeed("s", 1, 1, "wa").end(events.RunSucceeded)
		a, err := replay.Analyze("r", h.evs)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Problems) != 0 {
			t.Fatalf("problems: %v", a.Problems)
		}
		s := a.Timeline.Tasks[1]
		if s.Ready == nil || s.Ready.By != "x1" {
			t.Fatalf("s became ready because %+v, want x1's success", s.Ready)
		}
	})

	for _, tc := range []struct {
		name string
		h    func() *hist
		task string
		want string // in Detail
	}{
		{
			name: "a spawn from a stale claim is caught",
			h: func() *hist {
				return new(hist).submit(spawnSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").
					reclaim("a", 1, 2, "wb", "wa").claim("a", 1, 3, "wb").spawn("a", 1, 1, "wa", spawnedX...).succeed("a", 1, 3, "wb")
			},
			task: "a", want: "a stale spawn was accepted",
		},
		{
			name: "a spawn of a task that is not running is caught",
			h: func() *hist {
				return new(hist).submit(spawnSpecs()...).dispatch("a", 1).spawn("a", 1, 0, "", spawnedX...)
			},
			task: "a", want: "while the task is dispatched",
		},
		{
			name: "a spawn not followed by its spawner's success is caught",
			h: func() *hist {
				return new(hist).submit(spawnSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").
					spawn("a", 1, 1, "wa", spawnedX...).fail("a", 1, 1, "wa", true)
			},
			task: "a", want: "is followed by task_failed",
		},
		{
			name: "a spawn that ends the log is caught",
			h: func() *hist {
				return new(hist).submit(spawnSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").spawn("a", 1, 1, "wa", spawnedX...)
			},
			task: "a", want: "is the log's last event",
		},
		{
			name: "a spawned task depending on its spawner is caught",
			h: func() *hist {
				return new(hist).submit(spawnSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").
					spawn("a", 1, 1, "wa", events.TaskSpec{ID: "x", Handler: "h", Deps: []string{"a"}}).succeed("a", 1, 1, "wa")
			},
			task: "a", want: "spawned task x depends on its spawner a",
		},
		{
			name: "a spawned task depending on a task that has not succeeded is caught",
			h: func() *hist {
				return new(hist).submit(spawnSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").
					spawn("a", 1, 1, "wa", events.TaskSpec{ID: "x", Handler: "h", Deps: []string{"s"}}).succeed("a", 1, 1, "wa")
			},
			task: "a", want: "spawned task x depends on s, which is pending",
		},
		{
			name: "a fan-in dispatched before a spawned task it waits for succeeded is caught",
			h: func() *hist {
				return new(hist).submit(spawnSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").
					spawn("a", 1, 1, "wa", spawnedX...).succeed("a", 1, 1, "wa").dispatch("s", 1)
			},
			task: "s", want: "spawned task x1 has no accepted task_succeeded",
		},
		{
			name: "tasks_added written by no task is caught",
			h: func() *hist {
				return new(hist).submit(spawnSpecs()...).spawn("", 0, 0, "", spawnedX...)
			},
			want: "tasks_added written by no task",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, err := replay.Analyze("r", tc.h().evs)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range a.Problems {
				if p.Task == tc.task && strings.Contains(p.Detail, tc.want) {
					return
				}
			}
			t.Fatalf("no problem for task %q with %q; got:\n%v", tc.task, tc.want, a.Problems)
		})
	}
}

// The spawn records and @spawned of the live state hash are checked
// against the log's spawns (a worker reads them to find what a task
// waited for); an import writes them.
func TestVerifySpawnRecords(t *testing.T) {
	t.Parallel()
	h := new(hist).submit(spawnSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").
		spawn("a", 1, 1, "wa", spawnedX...).succeed("a", 1, 1, "wa")
	im, err := replay.PrepareImport(h.evs, replay.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	last := h.evs[len(h.evs)-1].Seq
	hs, err := im.Hashes(last)
	if err != nil {
		t.Fatal(err)
	}
	if hs.State["@s:a"] != "x1" || hs.State["@spawned"] != "2" || hs.DAG["x1"] == "" {
		t.Fatalf("imported state %v, dag %v", hs.State, hs.DAG)
	}
	hs.State["@dirty"] = "1" // the projector has not applied the success yet
	live := replay.Live{State: hs.State, Results: hs.Results, DAG: hs.DAG, LastSeq: last}
	if rep, _ := replay.Verify("r", "ns", live, h.evs, nil); !rep.OK() {
		t.Fatalf("the imported hashes do not verify: %v", rep.Problems)
	}
	live.State["@s:a"] = "x0,x1"
	live.State["@s:x1"] = "y"
	delete(live.State, "@spawned")
	rep, _ := replay.Verify("r", "ns", live, h.evs, nil)
	var fields []string
	for _, p := range rep.Problems {
		fields = append(fields, p.Field)
	}
	if got := strings.Join(fields, " "); got != "@s:a @spawned @s:x1" {
		t.Fatalf("problems on fields %q, want @s:a @spawned @s:x1: %v", got, rep.Problems)
	}
}
