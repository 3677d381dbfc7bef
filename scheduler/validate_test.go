package scheduler_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/jonboulle/clockwork"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/redis/go-redis/v9"
)

func task(id, handler string, deps ...string) events.TaskSpec {
	return events.TaskSpec{ID: id, Handler: handler, Deps: deps}
}

func wf(tasks ...events.TaskSpec) events.RunSubmittedBody {
	return events.RunSubmittedBody{Workflow: "wf", Tasks: tasks}
}

func with(t events.TaskSpec, f func(*events.TaskSpec)) events.TaskSpec { f(&t); return t }

func TestValidateRejects(t *testing.T) {
	t.Parallel()
	big := json.RawMessage(`"` + strings.Repeat("x", 100) + `"`)
	tests := []struct {
		name string
		spec events.RunSubmittedBody
		opts scheduler.ValidateOptions
		want error
	}{
		{"a workflow without tasks", wf(), scheduler.ValidateOptions{}, scheduler.ErrEmptyWorkflow},
		{"a duplicate task id", wf(task("a", "h"), task("a", "h")), scheduler.ValidateOptions{}, scheduler.ErrDuplicateTask},
		{"a dependency listed twice", wf(task("a", "h"), task("b", "h", "a", "a")), scheduler.ValidateOptions{}, scheduler.ErrDuplicateTask},
		{"an unknown dependency", wf(task("a", "h", "nope")), scheduler.ValidateOptions{}, scheduler.ErrUnknownDependency},
		{"a task depending on itself", wf(task("a", "h", "a")), scheduler.ValidateOptions{}, scheduler.ErrCycle},
		{"a two-task cycle", wf(task("a", "h", "b"), task("b", "h", "a")), scheduler.ValidateOptions{}, scheduler.ErrCycle},
		{"a cycle behind a valid prefix", wf(task("s", "h"), task("a", "h", "s", "c"), task("b", "h", "a"), task("c", "h", "b")), scheduler.ValidateOptions{}, scheduler.ErrCycle},
		{"an empty task id", wf(task("", "h")), scheduler.ValidateOptions{}, scheduler.ErrInvalidTaskID},
		{"a task id starting with @", wf(task("@status", "h")), scheduler.ValidateOptions{}, scheduler.ErrInvalidTaskID},
		{"a task id with a space", wf(task("a b", "h")), scheduler.ValidateOptions{}, scheduler.ErrInvalidTaskID},
		{"a task id with a record separator", wf(task("a|b", "h")), scheduler.ValidateOptions{}, scheduler.ErrInvalidTaskID},
		{"a task id with a hash tag brace", wf(task("a{b}", "h")), scheduler.ValidateOptions{}, scheduler.ErrInvalidTaskID},
		{"a task id of 201 characters", wf(task(strings.Repeat("a", 201), "h")), scheduler.ValidateOptions{}, scheduler.ErrInvalidTaskID},
		{"a task without a handler", wf(task("a", "")), scheduler.ValidateOptions{}, scheduler.ErrMissingHandler},
		{"a handler no worker registers", wf(task("a", "etl.load")), scheduler.ValidateOptions{Handlers: map[string]bool{"etl.extract": true}}, scheduler.ErrUnknownHandler},
		{"a priority below 0", wf(with(task("a", "h"), func(s *events.TaskSpec) { s.Priority = -1 })), scheduler.ValidateOptions{}, scheduler.ErrInvalidOption},
		{"a priority above 9", wf(with(task("a", "h"), func(s *events.TaskSpec) { s.Priority = 10 })), scheduler.ValidateOptions{}, scheduler.ErrInvalidOption},
		{"a pool that cannot be a key", wf(with(task("a", "h"), func(s *events.TaskSpec) { s.Pool = "gpu pool" })), scheduler.ValidateOptions{}, scheduler.ErrInvalidOption},
		{"negative attempts", wf(with(task("a", "h"), func(s *events.TaskSpec) { s.MaxAttempts = -1 })), scheduler.ValidateOptions{}, scheduler.ErrInvalidOption},
		{"a negative timeout", wf(with(task("a", "h"), func(s *events.TaskSpec) { s.TimeoutMS = -1 })), scheduler.ValidateOptions{}, scheduler.ErrInvalidOption},
		{"a negative result TTL", wf(with(task("a", "h"), func(s *events.TaskSpec) { s.ResultTTLMS = -1 })), scheduler.ValidateOptions{}, scheduler.ErrInvalidOption},
		{"@wait_signal without a name", wf(with(task("a", "@wait_signal"), func(s *events.TaskSpec) { s.Args = json.RawMessage(`{"timeout":"1h"}`) })), scheduler.ValidateOptions{}, scheduler.ErrInvalidOption},
		{"@wait_signal with no args", wf(task("a", "@wait_signal")), scheduler.ValidateOptions{}, scheduler.ErrInvalidOption},
		{"@wait_signal with a misspelt option", wf(with(task("a", "@wait_signal"), func(s *events.TaskSpec) { s.Args = json.RawMessage(`{"name":"ok","timout":"1h"}`) })), scheduler.ValidateOptions{}, scheduler.ErrInvalidOption},
		{"@wait_signal with a bad name", wf(with(task("a", "@wait_signal"), func(s *events.TaskSpec) { s.Args = json.RawMessage(`{"name":"a b"}`) })), scheduler.ValidateOptions{}, scheduler.ErrInvalidOption},
		{"@wait_signal with a bad timeout", wf(with(task("a", "@wait_signal"), func(s *events.TaskSpec) { s.Args = json.RawMessage(`{"name":"ok","timeout":"-1h"}`) })), scheduler.ValidateOptions{}, scheduler.ErrInvalidOption},
		{"an input over the limit", events.RunSubmittedBody{Workflow: "wf", Tasks: []events.TaskSpec{task("a", "h")}, Input: big},
			scheduler.ValidateOptions{MaxPayloadBytes: 50}, scheduler.ErrPayloadTooLarge},
		{"args over the limit", wf(with(task("a", "h"), func(s *events.TaskSpec) { s.Args = big })), scheduler.ValidateOptions{MaxPayloadBytes: 50}, scheduler.ErrPayloadTooLarge},
		{"an input over the default limit", events.RunSubmittedBody{Workflow: "wf", Tasks: []events.TaskSpec{task("a", "h")},
			Input: json.RawMessage(`"` + strings.Repeat("x", scheduler.DefaultMaxPayloadBytes) + `"`)}, scheduler.ValidateOptions{}, scheduler.ErrPayloadTooLarge},
	}
	all := []error{scheduler.ErrEmptyWorkflow, scheduler.ErrDuplicateTask, scheduler.ErrUnknownDependency, scheduler.ErrCycle,
		scheduler.ErrInvalidTaskID, scheduler.ErrMissingHandler, scheduler.ErrUnknownHandler, scheduler.ErrInvalidOption, scheduler.ErrPayloadTooLarge}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := scheduler.Validate(tt.spec, tt.opts)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Validate = %v, want errors.Is %v", err, tt.want)
			}
			if !errors.Is(err, scheduler.ErrInvalidWorkflow) {
				t.Errorf("error %v does not wrap ErrInvalidWorkflow", err)
			}
			var ve *scheduler.ValidationError
			if !errors.As(err, &ve) || ve.Workflow != tt.spec.Workflow {
				t.Fatalf("error %T is not a *ValidationError for workflow %q", err, tt.spec.Workflow)
			}
			for _, other := range all {
				if !errors.Is(other, tt.want) && errors.Is(err, other) {
					t.Errorf("error %v also matches %v", err, other)
				}
			}
		})
	}
}

func TestValidateAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec events.RunSubmittedBody
		opts scheduler.ValidateOptions
	}{
		{"a single task", wf(task("a", "h")), scheduler.ValidateOptions{}},
		{"a diamond", wf(task("a", "h"), task("b", "h", "a"), task("c", "h", "a"), task("d", "h", "b", "c")), scheduler.ValidateOptions{}},
		{"dependencies declared after their dependents", wf(task("d", "h", "b", "c"), task("b", "h", "a"), task("c", "h", "a"), task("a", "h")), scheduler.ValidateOptions{}},
		{"every allowed id character", wf(task("Az09_.:-", "h")), scheduler.ValidateOptions{}},
		{"a 200-character id", wf(task(strings.Repeat("a", 200), "h")), scheduler.ValidateOptions{}},
		{"options at their bounds", wf(with(task("a", "h"), func(s *events.TaskSpec) {
			s.Priority, s.Pool, s.MaxAttempts, s.TimeoutMS = 9, "gpu-1", 10, 1
		})), scheduler.ValidateOptions{}},
		{"known handlers", wf(task("a", "x"), task("b", "y", "a")), scheduler.ValidateOptions{Handlers: map[string]bool{"x": true, "y": true}}},
		{"payloads at the limit", events.RunSubmittedBody{Workflow: "wf", Input: json.RawMessage(`"12345678"`),
			Tasks: []events.TaskSpec{with(task("a", "h"), func(s *events.TaskSpec) { s.Args = json.RawMessage(`"12345678"`) })}},
			scheduler.ValidateOptions{MaxPayloadBytes: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := scheduler.Validate(tt.spec, tt.opts); err != nil {
				t.Errorf("Validate = %v", err)
			}
		})
	}
}

func TestValidateReportsEveryProblemAtOnce(t *testing.T) {
	t.Parallel()
	spec := wf(task("a", "h"), task("a", "h"), task("b", "", "nope"), with(task("c", "h"), func(s *events.TaskSpec) { s.Priority = 12 }))
	err := scheduler.Validate(spec, scheduler.ValidateOptions{})
	var ve *scheduler.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Validate = %v", err)
	}
	for _, want := range []error{scheduler.ErrDuplicateTask, scheduler.ErrMissingHandler, scheduler.ErrUnknownDependency, scheduler.ErrInvalidOption} {
		if !errors.Is(err, want) {
			t.Errorf("error %v does not report %v", err, want)
		}
	}
	if len(ve.Problems) != 4 {
		t.Errorf("%d problems, want 4: %v", len(ve.Problems), ve.Problems)
	}
	msg := err.Error()
	for _, part := range []string{`invalid workflow "wf"`, `"a" is defined twice`, `task "b"`, `"nope"`, "priority 12"} {
		if !strings.Contains(msg, part) {
			t.Errorf("message %q does not mention %q", msg, part)
		}
	}
}

// A cycle among otherwise well-formed tasks is reported together with
// problems that do not affect the graph (a missing handler, an option).
func TestValidateReportsACycleAlongsideOtherProblems(t *testing.T) {
	t.Parallel()
	spec := wf(task("a", "", "b"), with(task("b", "h", "a"), func(s *events.TaskSpec) { s.Priority = 10 }))
	err := scheduler.Validate(spec, scheduler.ValidateOptions{})
	for _, want := range []error{scheduler.ErrMissingHandler, scheduler.ErrInvalidOption, scheduler.ErrCycle} {
		if !errors.Is(err, want) {
			t.Errorf("Validate = %v; does not report %v", err, want)
		}
	}
}

// cyclePath extracts the "x -> y -> ... -> x" path from a cycle error.
func cyclePath(t *testing.T, err error) []string {
	t.Helper()
	var ve *scheduler.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Validate = %v", err)
	}
	for _, p := range ve.Problems {
		if errors.Is(p, scheduler.ErrCycle) {
			_, path, ok := strings.Cut(p.Error(), ": ")
			if !ok {
				t.Fatalf("cycle message %q has no path", p)
			}
			return strings.Split(path, " -> ")
		}
	}
	t.Fatalf("no cycle among %v", ve.Problems)
	return nil
}

func TestValidateCyclePath(t *testing.T) {
	t.Parallel()
	tasks := []events.TaskSpec{task("start", "h"), task("a", "h", "start", "c"), task("b", "h", "a"), task("c", "h", "b"), task("end", "h", "c")}
	deps := map[string][]string{}
	for _, s := range tasks {
		deps[s.ID] = s.Deps
	}
	path := cyclePath(t, scheduler.Validate(wf(tasks...), scheduler.ValidateOptions{}))
	if len(path) != 4 || path[0] != path[len(path)-1] {
		t.Fatalf("cycle path %v: want 3 tasks and back to the first", path)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(path); i++ {
		seen[path[i]] = true
		// Each arrow points from a task to one that depends on it ("runs before").
		x, y := path[i], path[i+1]
		found := false
		for _, d := range deps[y] {
			found = found || d == x
		}
		if !found {
			t.Errorf("cycle path %v: %s does not depend on %s", path, y, x)
		}
	}
	if !seen["a"] || !seen["b"] || !seen["c"] {
		t.Errorf("cycle path %v does not name a, b and c", path)
	}
}

func TestValidateLongChains(t *testing.T) {
	t.Parallel()
	const n = 100000
	chain := func() []events.TaskSpec {
		tasks := make([]events.TaskSpec, n)
		for i := range tasks {
			tasks[i] = events.TaskSpec{ID: "t" + strconv.Itoa(i), Handler: "h"}
			if i > 0 {
				tasks[i].Deps = []string{"t" + strconv.Itoa(i-1)}
			}
		}
		return tasks
	}

	t.Run("a 100,000-task chain validates", func(t *testing.T) {
		t.Parallel()
		if err := scheduler.Validate(wf(chain()...), scheduler.ValidateOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a 100,000-task chain declared backwards validates", func(t *testing.T) {
		t.Parallel()
		tasks := chain()
		for i, j := 0, len(tasks)-1; i < j; i, j = i+1, j-1 {
			tasks[i], tasks[j] = tasks[j], tasks[i]
		}
		if err := scheduler.Validate(wf(tasks...), scheduler.ValidateOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a 100,000-task ring is a cycle through every task", func(t *testing.T) {
		t.Parallel()
		tasks := chain()
		tasks[0].Deps = []string{"t" + strconv.Itoa(n-1)}
		path := cyclePath(t, scheduler.Validate(wf(tasks...), scheduler.ValidateOptions{}))
		if len(path) != n+1 {
			t.Errorf("cycle path of %d tasks, want %d", len(path)-1, n)
		}
	})
}

// ---- Submit: bad input writes nothing; run ids are idempotent ----

func setupScheduler(t *testing.T) (*scheduler.Scheduler, *redis.Client, string) {
	t.Helper()
	c := redistest.Client(t)
	ns := redistest.Namespace(t)
	s, err := scheduler.New(scheduler.Config{Redis: c, Namespace: ns, Clock: clockwork.NewFakeClockAt(time.UnixMilli(1700000000000))})
	if err != nil {
		t.Fatal(err)
	}
	return s, c, ns
}

func keysOf(t *testing.T, c *redis.Client, ns string) []string {
	t.Helper()
	keys, err := c.Keys(context.Background(), ns+":*").Result()
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func TestSubmitInvalidWritesNothing(t *testing.T) {
	t.Parallel()
	s, c, ns := setupScheduler(t)
	ctx := context.Background()
	for name, tc := range map[string]struct {
		spec events.RunSubmittedBody
		opts scheduler.SubmitOptions
		want error
	}{
		"a cycle":            {wf(task("a", "h", "b"), task("b", "h", "a")), scheduler.SubmitOptions{}, scheduler.ErrCycle},
		"an unknown handler": {wf(task("a", "nope")), scheduler.SubmitOptions{Handlers: map[string]bool{"h": true}}, scheduler.ErrUnknownHandler},
		"a bad run id":       {wf(task("a", "h")), scheduler.SubmitOptions{RunID: "run {1}"}, scheduler.ErrInvalidRunID},
		"an empty run":       {wf(), scheduler.SubmitOptions{}, scheduler.ErrEmptyWorkflow},
	} {
		_, _, err := s.Submit(ctx, tc.spec, tc.opts)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Submit = %v, want %v", name, err, tc.want)
		}
	}
	if keys := keysOf(t, c, ns); len(keys) != 0 {
		t.Errorf("rejected submissions wrote %v", keys)
	}
}

func TestSubmitWithRunIDIsIdempotent(t *testing.T) {
	t.Parallel()
	s, c, ns := setupScheduler(t)
	ctx := context.Background()
	spec := wf(task("a", "h"), task("b", "h", "a"))
	run, created, err := s.Submit(ctx, spec, scheduler.SubmitOptions{RunID: "order-42"})
	if err != nil || !created || run != "order-42" {
		t.Fatalf("first Submit = %q %v %v", run, created, err)
	}
	run, created, err = s.Submit(ctx, spec, scheduler.SubmitOptions{RunID: "order-42"})
	if err != nil || created || run != "order-42" {
		t.Fatalf("second Submit = %q %v %v; want the same run, not created", run, created, err)
	}
	// run_submitted and the dispatch of the root a, once.
	if n, _ := c.XLen(ctx, rdb.NewKeys(ns).RunLog("order-42")).Result(); n != 2 {
		t.Errorf("log holds %d events after two submits, want 2", n)
	}
	other := spec
	other.Workflow = "other"
	if _, _, err := s.Submit(ctx, other, scheduler.SubmitOptions{RunID: "order-42"}); !errors.Is(err, scheduler.ErrRunExists) {
		t.Errorf("Submit of another workflow under the same id = %v, want ErrRunExists", err)
	}
	if n, _ := c.ZCard(ctx, rdb.NewKeys(ns).Runs()).Result(); n != 1 {
		t.Errorf("run index holds %d runs, want 1", n)
	}
}

func TestNewRequiresRedis(t *testing.T) {
	t.Parallel()
	_, err := scheduler.New(scheduler.Config{Namespace: "bad ns"})
	if err == nil || !strings.Contains(err.Error(), "Redis is required") || !strings.Contains(err.Error(), "invalid namespace") {
		t.Errorf("New = %v, want both problems", err)
	}
}

// Issue #10 defect 7: a definition too large for one script call failed
// inside Redis; it is refused with a typed error before anything is
// written.
func TestValidateBoundsTheWholeDefinition(t *testing.T) {
	t.Parallel()
	tasks := func(n, argBytes int) []events.TaskSpec {
		out := make([]events.TaskSpec, n)
		for i := range out {
			out[i] = events.TaskSpec{ID: fmt.Sprintf("t%d", i), Handler: "h"}
			if argBytes > 0 {
				out[i].Args = json.RawMessage(`"` + strings.Repeat("x", argBytes-2) + `"`)
			}
		}
		return out
	}
	for name, tc := range map[string]struct {
		spec events.RunSubmittedBody
		opt  scheduler.ValidateOptions
		want error
	}{
		"more tasks than MaxTasks":   {events.RunSubmittedBody{Workflow: "w", Tasks: tasks(11, 0)}, scheduler.ValidateOptions{MaxTasks: 10}, scheduler.ErrTooManyTasks},
		"payloads over MaxSpecBytes": {events.RunSubmittedBody{Workflow: "w", Tasks: tasks(40, 1000)}, scheduler.ValidateOptions{MaxSpecBytes: 32 << 10}, scheduler.ErrSpecTooLarge},
		"the default task limit":     {events.RunSubmittedBody{Workflow: "w", Tasks: tasks(scheduler.DefaultMaxTasks+1, 0)}, scheduler.ValidateOptions{}, scheduler.ErrTooManyTasks},
		"the default size limit":     {events.RunSubmittedBody{Workflow: "w", Tasks: tasks(70, 1<<20)}, scheduler.ValidateOptions{}, scheduler.ErrSpecTooLarge},
	} {
		err := scheduler.Validate(tc.spec, tc.opt)
		if !errors.Is(err, tc.want) || !errors.Is(err, scheduler.ErrInvalidWorkflow) {
			t.Errorf("%s: Validate = %v, want %v", name, err, tc.want)
		}
	}
	if err := scheduler.Validate(events.RunSubmittedBody{Workflow: "w", Tasks: tasks(20_000, 0)}, scheduler.ValidateOptions{}); err != nil {
		t.Errorf("a 20,000-task definition: %v", err)
	}
}
