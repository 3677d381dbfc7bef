package worker

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/scheduler"
)

func spawner(id string) *Task {
	return &Task{ID: id, Handler: "poll", MaxAttempts: 3, timeout: time.Second, pool: "gpu", priority: 4,
		limits: spawnLimits{maxTasks: 5, maxIterations: 3}}
}

func TestSpawnChecksTasksAsASubmit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		calls [][]NewTask // Spawn calls, in order
		want  error       // of the last call
		in    string      // in its message
	}{
		{"an id missing", [][]NewTask{{{Handler: "h"}}}, ErrInvalidSpawn, `a task with handler "h" has no ID`},
		{"a malformed id", [][]NewTask{{{ID: "a b", Handler: "h"}}}, scheduler.ErrInvalidTaskID, `"a b"`},
		{"the same id in two calls", [][]NewTask{{{ID: "x", Handler: "h"}}, {{ID: "x", Handler: "h"}}}, scheduler.ErrDuplicateTask, `"x" is defined twice`},
		{"a cycle in the spawn", [][]NewTask{{{ID: "x", Handler: "h", Deps: []string{"y"}}, {ID: "y", Handler: "h", Deps: []string{"x"}}}}, scheduler.ErrCycle, "x -> y -> x"},
		{"a dependency on the spawner", [][]NewTask{{{ID: "x", Handler: "h", Deps: []string{"s"}}}}, ErrInvalidSpawn, `task "x" depends on its spawner`},
		{"args that are not JSON", [][]NewTask{{{ID: "x", Handler: "h", Args: json.RawMessage(`{`)}}}, scheduler.ErrInvalidPayload, `task "x": args`},
		{"args that do not encode", [][]NewTask{{{ID: "x", Handler: "h", Args: make(chan int)}}}, ErrInvalidSpawn, "encode args"},
		{"a priority out of range", [][]NewTask{{{ID: "x", Handler: "h", Priority: 10}}}, scheduler.ErrInvalidOption, "priority 10"},
		{"more tasks than the run's bound", [][]NewTask{{{ID: "a", Handler: "h"}, {ID: "b", Handler: "h"}, {ID: "c", Handler: "h"}}, {{ID: "d", Handler: "h"}, {ID: "e", Handler: "h"}, {ID: "f", Handler: "h"}}}, ErrInvalidSpawn, "6 tasks; a run holds at most 5 spawned tasks"},
		{"an iteration with another id", [][]NewTask{{{ID: "other", Handler: "poll"}}}, ErrInvalidSpawn, `it is iteration 2 of loop s and its id is "s:2"`},
		{"an error sticks", [][]NewTask{{{Handler: "h"}}, {{ID: "ok", Handler: "h"}}}, ErrInvalidSpawn, "has no ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			task := spawner("s")
			var err error
			for _, c := range tt.calls {
				err = task.Spawn(c...)
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.in) {
				t.Fatalf("Spawn = %v, want %v containing %q", err, tt.want, tt.in)
			}
			if !errors.Is(err, ErrInvalidSpawn) {
				t.Errorf("Spawn = %v, want it to wrap ErrInvalidSpawn", err)
			}
			// The attempt fails for good whatever the handler returns.
			sp, err := task.takeSpawn(time.Now())
			if sp != nil || !errors.Is(err, ErrPermanent) || !errors.Is(err, tt.want) {
				t.Errorf("takeSpawn = %v, %v; want a permanent %v", sp, err, tt.want)
			}
		})
	}
}

func TestSpawnEncodesTasks(t *testing.T) {
	t.Parallel()
	task := spawner("s")
	if err := task.Spawn(
		NewTask{ID: "x", Handler: "h", Args: map[string]int{"i": 1}, Retries: 2, Timeout: 1500 * time.Millisecond, Pool: "p", Priority: 2},
		NewTask{ID: "y", Handler: "h", Deps: []string{"x", "done"}, Args: json.RawMessage(`[1]`)},
		NewTask{ID: "z", Handler: "h"},
	); err != nil {
		t.Fatal(err)
	}
	sp, err := task.takeSpawn(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	want := []events.TaskSpec{
		{ID: "x", Handler: "h", Args: json.RawMessage(`{"i":1}`), MaxAttempts: 3, TimeoutMS: 1500, Pool: "p", Priority: 2},
		{ID: "y", Handler: "h", Deps: []string{"x", "done"}, Args: json.RawMessage(`[1]`)},
		{ID: "z", Handler: "h"},
	}
	if diff := cmp.Diff(want, sp.Tasks); diff != "" {
		t.Errorf("specs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"y", "z"}, sp.Sinks); diff != "" {
		t.Errorf("sinks (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"done"}, sp.External); diff != "" {
		t.Errorf("external (-want +got):\n%s", diff)
	}
	if sp.Limit != 5 {
		t.Errorf("limit %d, want 5", sp.Limit)
	}
	if err := task.Spawn(NewTask{ID: "late", Handler: "h"}); !errors.Is(err, ErrInvalidSpawn) {
		t.Errorf("Spawn after the handler returned = %v, want ErrInvalidSpawn", err)
	}
}

func TestContinueNamesTheNextIteration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id   string
		iter int
		next string
		err  error
	}{
		{"s", 1, "s:2", nil},
		{"s:2", 2, "s:3", nil},
		{"s:3", 3, "", ErrTooManyIterations}, // the bound is 3
		{"a:b", 1, "a:b:2", nil},
		{"job:1", 1, "job:1:2", nil}, // ":1" is not an iteration
		{"job:07", 1, "job:07:2", nil},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			t.Parallel()
			task := spawner(tt.id)
			if got := task.Iteration(); got != tt.iter {
				t.Errorf("Iteration() = %d, want %d", got, tt.iter)
			}
			err := task.Continue(map[string]int{"n": 1})
			if tt.err != nil {
				if !errors.Is(err, tt.err) || !strings.Contains(err.Error(), "loop s would run iteration 4; the limit is 3") {
					t.Fatalf("Continue = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sp, err := task.takeSpawn(time.Now())
			if err != nil {
				t.Fatal(err)
			}
			want := []events.TaskSpec{{ID: tt.next, Handler: "poll", Args: json.RawMessage(`{"n":1}`), MaxAttempts: 3, TimeoutMS: 1000, Pool: "gpu", Priority: 4}}
			if diff := cmp.Diff(want, sp.Tasks); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
