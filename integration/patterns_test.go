package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/worker/builtin"
)

// sleepArgs returns the built-in sleep handler's args.
func sleepArgs(ms int, value any) map[string]any { return map[string]any{"ms": ms, "value": value} }

// TestPatterns runs each Graflow pattern on three worker processes and one
// projector process, and checks results and the order of the run's log.
func TestPatterns(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.projector("p-1")
	s.workers(3, 4)

	// run submits wf, waits for it, checks its log and returns both.
	run := func(t *testing.T, wf *graflow.Workflow, input any) (*graflow.RunInfo, *runLog) {
		t.Helper()
		ctx := withTimeout(t, 60*time.Second)
		start := time.Now()
		id, err := s.client.Submit(ctx, wf, input)
		if err != nil {
			t.Fatal(err)
		}
		info := s.wait(ctx, id)
		l := checkLog(t, s.readLog(ctx, id))
		for _, ti := range info.Tasks {
			if string(ti.Result) != string(l.results[ti.ID]) {
				t.Errorf("task %s: state result %s, log result %s", ti.ID, ti.Result, l.results[ti.ID])
			}
		}
		t.Logf("run %s: %d tasks, %d events, workers %v, %v", id, len(info.Tasks), info.Events, l.workers(), time.Since(start).Round(time.Millisecond))
		return info, l
	}
	spread := func(t *testing.T, l *runLog) {
		t.Helper()
		if w := l.workers(); len(w) < 2 {
			t.Errorf("every task ran on one worker process: %v", w)
		}
	}

	t.Run("a sequence runs each task after the previous one", func(t *testing.T) {
		t.Parallel()
		wf := graflow.NewWorkflow("sequence")
		wf.Sequence(
			wf.Task("a", builtin.Sleep).Args(sleepArgs(20, "A")),
			wf.Task("b", builtin.Sleep).Args(sleepArgs(20, "B")),
			wf.Task("c", builtin.Sleep).Args(sleepArgs(20, "C")),
		)
		info, _ := run(t, wf, nil)
		for id, want := range map[string]string{"a": `"A"`, "b": `"B"`, "c": `"C"`} {
			if got := string(info.Task(id).Result); got != want {
				t.Errorf("%s = %s, want %s", id, got, want)
			}
		}
	})

	t.Run("a parallel group fans in to its successor with every member's result", func(t *testing.T) {
		t.Parallel()
		wf := graflow.NewWorkflow("parallel")
		g := wf.Parallel(
			wf.Task("a", builtin.Sleep).Args(sleepArgs(50, 1)),
			wf.Task("b", builtin.Sleep).Args(sleepArgs(50, 10)),
			wf.Task("c", builtin.Sleep).Args(sleepArgs(50, 100)),
		)
		g.Then(wf.Task("d", builtin.Sum))
		info, _ := run(t, wf, nil)
		if got := number(t, info.Task("d").Result); got != 111 {
			t.Errorf("d = %v, want 111 (a+b+c)", got)
		}
	})

	t.Run("a fan-out runs every branch after the root on several workers", func(t *testing.T) {
		t.Parallel()
		const n = 8
		wf := graflow.NewWorkflow("fanout")
		root := wf.Task("root", builtin.Echo).Args(map[string]any{"value": "go"})
		wf.FanOut(root, "branch", builtin.Sleep, n, func(i int) any { return sleepArgs(100, i) })
		info, l := run(t, wf, nil)
		for i := 0; i < n; i++ {
			id := fmt.Sprintf("branch-%d", i)
			if got := string(info.Task(id).Result); got != strconv.Itoa(i) {
				t.Errorf("%s = %s, want %d", id, got, i)
			}
		}
		spread(t, l)
	})

	t.Run("map-reduce gives the reducer every mapper's result", func(t *testing.T) {
		t.Parallel()
		const n = 12
		wf := graflow.NewWorkflow("mapreduce")
		split := wf.Task("split", builtin.Noop)
		wf.MapReduce(split, "map", builtin.Sleep, n, func(i int) any { return sleepArgs(100, i+1) }, "reduce", builtin.Sum)
		info, l := run(t, wf, nil)
		if got, want := number(t, info.Task("reduce").Result), float64(n*(n+1)/2); got != want {
			t.Errorf("reduce = %v, want %v (sum of 1..%d)", got, want, n)
		}
		spread(t, l)
	})

	t.Run("a pipeline transforms the run input stage by stage", func(t *testing.T) {
		t.Parallel()
		const stages = 6
		wf := graflow.NewWorkflow("pipeline")
		tasks := []*graflow.Task{wf.Task("stage-0", builtin.Echo)} // returns the run input
		for i := 1; i < stages; i++ {
			tasks = append(tasks, wf.Task(fmt.Sprintf("stage-%d", i), builtin.Sum).Args(map[string]any{"add": i}))
		}
		wf.Sequence(tasks...)
		info, _ := run(t, wf, 5)
		want := 5.0
		for i := 0; i < stages; i++ {
			want += float64(i)
			if got := number(t, info.Task(fmt.Sprintf("stage-%d", i)).Result); got != want {
				t.Errorf("stage-%d = %v, want %v", i, got, want)
			}
		}
	})

	t.Run("a spec file submitted with graflow submit --wait runs to success", func(t *testing.T) {
		t.Parallel()
		ctx := withTimeout(t, 60*time.Second)
		file := filepath.Join(t.TempDir(), "wf.yaml")
		spec := "workflow: cli\ninput: 2\ntasks:\n" +
			"  - {id: in, handler: echo}\n" +
			"  - {id: x, handler: sum, deps: [in], args: {add: 1}}\n" +
			"  - {id: y, handler: sum, deps: [in], args: {add: 2}}\n" +
			"  - {id: out, handler: sum, deps: [x, y]}\n"
		if err := os.WriteFile(file, []byte(spec), 0o600); err != nil {
			t.Fatal(err)
		}
		stdout, stderr, code := s.cli(ctx, append(append([]string{"submit", "--wait"}, s.common()...), file)...)
		if code != 0 {
			t.Fatalf("graflow submit --wait: exit code %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
		}
		run := strings.TrimSpace(strings.SplitN(stdout, "\n", 2)[0])
		info, err := s.client.Status(ctx, run)
		if err != nil {
			t.Fatalf("status of %q (stdout %q): %v", run, stdout, err)
		}
		checkLog(t, s.readLog(ctx, run))
		if got := number(t, info.Task("out").Result); got != 7 {
			t.Errorf("out = %v, want 7 ((2+1)+(2+2))", got)
		}
	})
}

// TestConcurrentRunsAreIsolated submits two runs of one workflow at once,
// with different inputs: each run's results derive only from its own input.
func TestConcurrentRunsAreIsolated(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.projector("p-1")
	s.workers(3, 4)

	// src echoes the run input; part-i = src + i; total = Σ part-i + 0.5.
	const parts = 6
	wf := graflow.NewWorkflow("isolation")
	src := wf.Task("src", builtin.Echo)
	g := wf.FanOut(src, "part", builtin.Sum, parts, func(i int) any { return map[string]any{"add": i} })
	g.Then(wf.Task("total", builtin.Sum).Args(map[string]any{"add": 0.5}))

	ctx := withTimeout(t, 60*time.Second)
	inputs := []float64{1, 1000000}
	runs := make([]string, len(inputs))
	errs := make([]error, len(inputs))
	var wg sync.WaitGroup
	start := time.Now()
	for i, in := range inputs {
		wg.Go(func() { runs[i], errs[i] = s.client.Submit(ctx, wf, in) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, in := range inputs {
		info := s.wait(ctx, runs[i])
		checkLog(t, s.readLog(ctx, runs[i]))
		want := map[string]float64{"src": in, "total": 0.5}
		for p := 0; p < parts; p++ {
			want[fmt.Sprintf("part-%d", p)] = in + float64(p)
			want["total"] += in + float64(p)
		}
		for id, w := range want {
			if got := number(t, info.Task(id).Result); got != w {
				t.Errorf("run %s (input %v): %s = %v, want %v", runs[i], in, id, got, w)
			}
		}
	}
	t.Logf("two runs of %d tasks in %v", parts+2, time.Since(start).Round(time.Millisecond))
}

// TestLargeFanOut runs one root → 10,000 tasks → one reduce.
func TestLargeFanOut(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.projector("p-1")
	s.workers(3, 16)

	const n = 10000
	wf := graflow.NewWorkflow("fanout-10k")
	root := wf.Task("root", builtin.Noop)
	wf.MapReduce(root, "leaf", builtin.Echo, n, func(int) any { return map[string]any{"value": 1} }, "count", builtin.Sum)

	ctx := withTimeout(t, 3*time.Minute)
	start := time.Now()
	run, err := s.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.client.Wait(ctx, run)
	if err != nil {
		t.Fatalf("run %s: %v", run, err)
	}
	elapsed := time.Since(start)
	if !info.Succeeded() {
		t.Fatalf("run %s ended %s: %s %s", run, info.Status, info.FailedTask, info.Cause)
	}
	if got := number(t, info.Task("count").Result); got != n {
		t.Errorf("count = %v, want %d", got, n)
	}
	l := checkLog(t, s.readLog(context.Background(), run))
	t.Logf("%d tasks in %v: %d events (%.0f tasks/s), claims per worker %v",
		n+2, elapsed.Round(time.Millisecond), info.Events, float64(n+2)/elapsed.Seconds(), l.workers())
}
