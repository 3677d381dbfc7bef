// Package graflow is the public API of Graflow for Go: build workflows
// (DAGs of named tasks) and submit, wait for and inspect runs. Workers run
// the tasks (package worker); projectors move runs forward (package
// projector). Everything is coordinated through Redis Streams, and every
// change of state is an event in the run's log.
package graflow

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/graflow-go/graflow/events"
)

// Workflow is a DAG of tasks under construction. Builder methods record the
// first error (returned by Spec); they are not safe for concurrent use.
type Workflow struct {
	name  string
	tasks []*Task
	err   error
}

// NewWorkflow starts an empty workflow. The name is stored with every run.
func NewWorkflow(name string) *Workflow { return &Workflow{name: name} }

// Name returns the workflow's name.
func (w *Workflow) Name() string { return w.name }

// Task is one node of a Workflow.
type Task struct {
	wf   *Workflow
	spec events.TaskSpec
}

// Task adds a task with a unique id that runs the handler registered under
// handler on the workers.
func (w *Workflow) Task(id, handler string) *Task {
	t := &Task{wf: w, spec: events.TaskSpec{ID: id, Handler: handler}}
	w.tasks = append(w.tasks, t)
	return t
}

// ID returns the task's id.
func (t *Task) ID() string { return t.spec.ID }

// After makes t run only after every one of deps succeeded; t receives
// their results (Task.Upstream in the worker).
func (t *Task) After(deps ...*Task) *Task {
	for _, d := range deps {
		t.spec.Deps = append(t.spec.Deps, d.spec.ID)
	}
	return t
}

// Retries allows n retries after the first attempt (n+1 attempts in all).
func (t *Task) Retries(n int) *Task { t.spec.MaxAttempts = n + 1; return t }

// Timeout bounds one attempt; the handler's context is cancelled after d.
func (t *Task) Timeout(d time.Duration) *Task { t.spec.TimeoutMS = d.Milliseconds(); return t }

// StartAfter delays the task's start by d after it is ready (its
// dependencies met): its dispatch waits in the delayed set.
func (t *Task) StartAfter(d time.Duration) *Task { t.spec.StartAfterMS = d.Milliseconds(); return t }

// ResultTTL expires the task's stored result d after the task succeeded:
// dependent tasks that start later, and Client.Result, then get
// ErrResultExpired. The run's log keeps the task_succeeded event (and the
// result in it) for replay and audit; the run's own TTL is unchanged.
func (t *Task) ResultTTL(d time.Duration) *Task {
	t.spec.ResultTTLMS = d.Milliseconds()
	if d > 0 && t.spec.ResultTTLMS == 0 {
		t.spec.ResultTTLMS = 1 // under a millisecond: the shortest TTL, not none
	}
	return t
}

// Pool routes the task to workers serving pool (default "default").
func (t *Task) Pool(pool string) *Task { t.spec.Pool = pool; return t }

// Priority sets the band within the pool: 0 (default) to 9 (first).
func (t *Task) Priority(p int) *Task { t.spec.Priority = p; return t }

// Args sets the task's static arguments (JSON-encoded).
func (t *Task) Args(v any) *Task {
	b, err := json.Marshal(v)
	if err != nil && t.wf.err == nil {
		t.wf.err = fmt.Errorf("task %q: encode args: %w", t.spec.ID, err)
	}
	t.spec.Args = b
	return t
}

// Sequence chains tasks: each runs after the previous one (Graflow's
// a >> b >> c). It returns the last task.
func (w *Workflow) Sequence(tasks ...*Task) *Task {
	for i := 1; i < len(tasks); i++ {
		tasks[i].After(tasks[i-1])
	}
	if len(tasks) == 0 {
		return nil
	}
	return tasks[len(tasks)-1]
}

// Group is a set of tasks that run in parallel (Graflow's a | b | c).
type Group struct {
	tasks []*Task
	join  *events.Join // the successor's policy (nil: every member must succeed)
}

// Parallel groups tasks that run in parallel.
func (w *Workflow) Parallel(tasks ...*Task) *Group { return &Group{tasks: tasks} }

// Tasks returns the group's members.
func (g *Group) Tasks() []*Task { return g.tasks }

// After makes every member run after deps.
func (g *Group) After(deps ...*Task) *Group {
	for _, t := range g.tasks {
		t.After(deps...)
	}
	return g
}

// Then makes t run after the members (fan-in) and returns t: after every
// member succeeded, unless the group has a policy (BestEffort, AtLeast,
// Critical), which t then joins with.
func (g *Group) Then(t *Task) *Task {
	t.After(g.tasks...)
	if g.join != nil {
		j := *g.join
		t.spec.Join = &j
	}
	return t
}

// BestEffort lets the group's successor run once every member has ended,
// with whatever succeeded (worker.Task.FailedDeps names the others).
func (g *Group) BestEffort() *Group {
	g.join = &events.Join{Policy: events.JoinBestEffort}
	return g
}

// AtLeast lets the group's successor run once every member has ended if
// at least n of them succeeded; it is skipped as soon as n is out of
// reach.
func (g *Group) AtLeast(n int) *Group {
	g.join = &events.Join{Policy: events.JoinAtLeast, N: n}
	return g
}

// Critical lets the group's successor run once every member has ended if
// every one of critical succeeded (the others may fail); it is skipped as
// soon as a critical member fails.
func (g *Group) Critical(critical ...*Task) *Group {
	j := &events.Join{Policy: events.JoinCritical}
	for _, c := range critical {
		j.Critical = append(j.Critical, c.spec.ID)
	}
	g.join = j
	return g
}

// Join sets t's join policy over all its dependencies (see events.Join;
// Group.Then sets it from the group's policy).
func (t *Task) Join(j events.Join) *Task { t.spec.Join = &j; return t }

// FanOut adds n tasks "<prefix>-<i>" running handler after from, each with
// args built by args(i) (nil for none), and returns them as a group.
func (w *Workflow) FanOut(from *Task, prefix, handler string, n int, args func(i int) any) *Group {
	g := &Group{}
	for i := 0; i < n; i++ {
		t := w.Task(fmt.Sprintf("%s-%d", prefix, i), handler)
		if from != nil {
			t.After(from)
		}
		if args != nil {
			t.Args(args(i))
		}
		g.tasks = append(g.tasks, t)
	}
	return g
}

// MapReduce adds n mapper tasks after from and a reducer that receives
// every mapper's result, and returns the reducer.
func (w *Workflow) MapReduce(from *Task, prefix, mapper string, n int, args func(i int) any, reduceID, reducer string) *Task {
	return w.FanOut(from, prefix, mapper, n, args).Then(w.Task(reduceID, reducer))
}

// Spec returns the run definition for input (JSON-encoded; nil for none).
// It does not validate; Submit does.
func (w *Workflow) Spec(input any) (events.RunSubmittedBody, error) {
	if w.err != nil {
		return events.RunSubmittedBody{}, w.err
	}
	spec := events.RunSubmittedBody{Workflow: w.name, Tasks: make([]events.TaskSpec, len(w.tasks))}
	for i, t := range w.tasks {
		spec.Tasks[i] = t.spec
	}
	if input != nil {
		b, err := json.Marshal(input)
		if err != nil {
			return spec, fmt.Errorf("encode input: %w", err)
		}
		spec.Input = b
	}
	return spec, nil
}
