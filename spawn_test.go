package graflow_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
)

// spawnStack is a projector and two workers with the dynamic handlers of
// these tests (and the built-in ones).
func spawnStack(t *testing.T, cfg worker.Config) bundle {
	t.Helper()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	p, err := projector.New(projector.Config{Redis: rc, Namespace: ns, FeedBlock: 200 * time.Millisecond, RetryInitial: 10 * time.Millisecond, RetryMax: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = p.Run(ctx) })
	for _, id := range []string{"wa", "wb"} {
		c := cfg
		c.Redis, c.Namespace, c.ID, c.Concurrency, c.FetchBlock, c.DrainTimeout = rc, ns, id, 4, 200*time.Millisecond, time.Second
		w, err := worker.New(c)
		if err != nil {
			t.Fatal(err)
		}
		builtin.Register(w)
		registerSpawnHandlers(w)
		wg.Go(func() { _ = w.Run(ctx) })
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	c, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	return bundle{rdb: rc, ns: ns, client: c}
}

func registerSpawnHandlers(w *worker.Worker) {
	// split maps over a list known only at run time (its args here):
	// one "square" task per item.
	w.HandleFunc("split", func(ctx context.Context, t *worker.Task) (any, error) {
		var items []int
		if err := t.BindArgs(&items); err != nil {
			return nil, err
		}
		tasks := make([]worker.NewTask, len(items))
		for i, x := range items {
			tasks[i] = worker.NewTask{ID: fmt.Sprintf("item-%d", i), Handler: "square", Args: map[string]int{"x": x}}
		}
		return len(items), t.Spawn(tasks...)
	})
	worker.HandleTyped(w, "square", func(ctx context.Context, t *worker.Task, a struct{ X int }) (int, error) {
		return a.X * a.X, nil
	})
	// collect is the fan-in: every spawned result, by id.
	w.HandleFunc("collect", func(ctx context.Context, t *worker.Task) (any, error) {
		out := map[string]json.RawMessage{}
		err := t.EachUpstream(ctx, func(dep string, result json.RawMessage) error {
			out[dep] = result
			return nil
		})
		return out, err
	})
	// count continues while its counter is below its limit: a loop
	// with a condition.
	worker.HandleTyped(w, "count", func(ctx context.Context, t *worker.Task, a struct{ N, Until int }) (int, error) {
		if a.N >= a.Until {
			return a.N, nil
		}
		a.N++
		return a.N, t.Continue(a)
	})
	// flakyspawn spawns on every attempt but fails its first one.
	w.HandleFunc("flakyspawn", func(ctx context.Context, t *worker.Task) (any, error) {
		if err := t.Spawn(worker.NewTask{ID: "child", Handler: builtin.Echo, Args: map[string]int{"value": t.Attempt}}); err != nil {
			return nil, err
		}
		if t.Attempt == 1 {
			return nil, errors.New("the first attempt fails after spawning")
		}
		return t.Attempt, nil
	})
	// badspawn spawns a task whose id is already in the run.
	w.HandleFunc("badspawn", func(ctx context.Context, t *worker.Task) (any, error) {
		return nil, t.Spawn(worker.NewTask{ID: "after", Handler: builtin.Noop})
	})
	// ignorespawnerror spawns a task that depends on its spawner and
	// ignores Spawn's error.
	w.HandleFunc("ignorespawnerror", func(ctx context.Context, t *worker.Task) (any, error) {
		_ = t.Spawn(worker.NewTask{ID: "x", Handler: builtin.Noop, Deps: []string{t.ID}})
		return "ok", nil
	})
}

// runVerified submits wf, waits for its end and checks its history with
// replay verify.
func runVerified(t *testing.T, b bundle, wf *graflow.Workflow) (string, *graflow.RunInfo) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run, info := b.submitAndWait(ctx, t, wf)
	rep, err := b.client.Verify(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("run %s does not verify: %v", run, rep.Err())
	}
	return run, info
}

// A map over a list known only at run time: split spawns one task per
// item of its list, and collect, which depends on split alone,
// runs after every spawned task and reads all their results.
func TestSpawnMapWithFanIn(t *testing.T) {
	t.Parallel()
	b := spawnStack(t, worker.Config{})
	wf := graflow.NewWorkflow("map")
	items := []int{3, 1, 4, 1, 5, 9, 2, 6}
	split := wf.Task("split", "split").Args(items)
	wf.Task("collect", "collect").After(split)
	run, info := runVerified(t, b, wf)
	if !info.Succeeded() {
		t.Fatalf("run %s is %s: %s %s", run, info.Status, info.FailedTask, info.Cause)
	}
	want := map[string]json.RawMessage{"split": json.RawMessage("8")}
	for i, x := range items {
		want[fmt.Sprintf("item-%d", i)] = json.RawMessage(fmt.Sprint(x * x))
	}
	var got map[string]json.RawMessage
	if err := json.Unmarshal(info.Task("collect").Result, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("collect saw (-want +got):\n%s", diff)
	}
	if len(info.Tasks) != 2+len(items) {
		t.Errorf("the run holds %d tasks, want %d", len(info.Tasks), 2+len(items))
	}
}

// A continuation loop: count continues into count:2, count:3, ... until
// its condition holds; the task after it runs once, after the last
// iteration, and sees every iteration's result.
func TestSpawnLoopStopsAtItsCondition(t *testing.T) {
	t.Parallel()
	b := spawnStack(t, worker.Config{})
	wf := graflow.NewWorkflow("loop")
	c := wf.Task("count", "count").Args(map[string]int{"N": 0, "Until": 4})
	wf.Task("after", "collect").After(c)
	run, info := runVerified(t, b, wf)
	if !info.Succeeded() {
		t.Fatalf("run %s is %s: %s %s", run, info.Status, info.FailedTask, info.Cause)
	}
	var got map[string]int
	if err := json.Unmarshal(info.Task("after").Result, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"count": 1, "count:2": 2, "count:3": 3, "count:4": 4, "count:5": 4}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after saw (-want +got):\n%s", diff)
	}
}

// A loop that never meets its condition stops at Config.MaxIterations:
// the spawn of the iteration past it fails the task for good with
// ErrTooManyIterations' message, and the run fails.
func TestSpawnLoopHitsItsBound(t *testing.T) {
	t.Parallel()
	b := spawnStack(t, worker.Config{MaxIterations: 3})
	wf := graflow.NewWorkflow("loop-bound")
	c := wf.Task("count", "count").Args(map[string]int{"N": 0, "Until": 1000})
	wf.Task("after", "collect").After(c)
	_, info := runVerified(t, b, wf)
	if info.Status != "failed" || info.FailedTask != "count:3" || !strings.Contains(info.Cause, worker.ErrTooManyIterations.Error()) ||
		!strings.Contains(info.Cause, "loop count would run iteration 4; the limit is 3") {
		t.Fatalf("run %s, failed task %q, cause %q; want count:3 failed with the iteration bound", info.Status, info.FailedTask, info.Cause)
	}
	if st := info.Task("after").Status; st != "skipped" {
		t.Errorf("after is %s, want skipped", st)
	}
}

// A failed attempt keeps nothing it spawned: its retry spawns again, and
// only the retry's tasks_added is in the log.
func TestSpawnOfAFailedAttemptIsNotKept(t *testing.T) {
	t.Parallel()
	b := spawnStack(t, worker.Config{})
	wf := graflow.NewWorkflow("retry-spawn")
	wf.Task("p", "flakyspawn").Retries(1)
	run, info := runVerified(t, b, wf)
	if !info.Succeeded() || string(info.Task("child").Result) != "2" {
		t.Fatalf("run %s (%s); child %+v", info.Status, info.Cause, info.Task("child"))
	}
	adds := 0
	for _, e := range logEvents(t, b, run) {
		if e.Type == events.TasksAdded {
			adds++
			if e.Attempt != 2 {
				t.Errorf("tasks_added of attempt %d, want 2", e.Attempt)
			}
		}
	}
	if adds != 1 {
		t.Errorf("%d tasks_added, want 1", adds)
	}
}

// An invalid spawn fails its attempt for good, with a clear error: one
// the worker sees (a spawned task depending on its spawner, even when the
// handler ignores Spawn's error) and one only the finish script sees (an
// id already in the run). Nothing of either spawn is written.
func TestSpawnInvalidFailsTheAttempt(t *testing.T) {
	t.Parallel()
	b := spawnStack(t, worker.Config{})
	for _, tt := range []struct{ handler, want string }{
		{"ignorespawnerror", `invalid spawn by task p: task "x" depends on its spawner`},
		{"badspawn", "spawn refused: task after is already in the run"},
	} {
		wf := graflow.NewWorkflow("bad-" + tt.handler)
		p := wf.Task("p", tt.handler).Retries(2)
		wf.Task("after", builtin.Noop).After(p)
		run, info := runVerified(t, b, wf)
		if info.Status != "failed" || info.FailedTask != "p" || !strings.Contains(info.Cause, tt.want) {
			t.Errorf("%s: run %s, failed task %q, cause %q; want p failed: %q", tt.handler, info.Status, info.FailedTask, info.Cause, tt.want)
		}
		if n := len(info.Tasks); n != 2 || info.Task("p").Attempt != 1 {
			t.Errorf("%s: %d tasks, p at attempt %d; want 2 tasks and no retry", tt.handler, n, info.Task("p").Attempt)
		}
		for _, e := range logEvents(t, b, run) {
			if e.Type == events.TasksAdded {
				t.Errorf("%s: tasks_added in the log", tt.handler)
			}
		}
	}
}

// The spawned tasks' history verifies event by event: tasks_added comes
// from the claim holder right before its success, and the fan-in's
// dispatch follows every success it waited for (replay.Analyze).
func TestSpawnHistoryIsJustified(t *testing.T) {
	t.Parallel()
	b := spawnStack(t, worker.Config{})
	wf := graflow.NewWorkflow("justified")
	s := wf.Task("s", builtin.Spawn).Args(builtin.SpawnArgs{N: 20, Handler: builtin.Echo, Args: json.RawMessage(`{"value":2}`), FlakyEvery: 7})
	wf.Task("sum", builtin.Sum).After(s)
	run, info := runVerified(t, b, wf)
	if !info.Succeeded() || string(info.Task("sum").Result) != "38" { // 18 echo 2, 2 flaky 1
		t.Fatalf("run %s; sum = %s, want 38", info.Status, info.Task("sum").Result)
	}
	a, err := replay.Analyze(run, logEvents(t, b, run))
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Problems) != 0 {
		t.Fatalf("problems: %v", a.Problems)
	}
	if got := a.Run.Task("sum").Waits; len(got) != 20 {
		t.Errorf("sum waited for %d tasks, want 20", len(got))
	}
}

// examples/dynamic.yaml runs as its comment says.
func TestSpawnExampleFile(t *testing.T) {
	t.Parallel()
	b := spawnStack(t, worker.Config{})
	src, err := os.ReadFile("examples/dynamic.yaml")
	if err != nil {
		t.Fatal(err)
	}
	spec, err := scheduler.ParseSpec(src)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run, err := b.client.SubmitSpec(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	info, err := b.client.Wait(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Succeeded() || string(info.Task("total").Result) != "10" || string(info.Task("after").Result) != "13" {
		t.Fatalf("run %s: total %s, after %s; want 10 and 13", info.Status, info.Task("total").Result, info.Task("after").Result)
	}
}
