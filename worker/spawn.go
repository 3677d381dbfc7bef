package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/scheduler"
)

// Dynamic tasks: a handler adds tasks to its own run (Task.Spawn), and
// they are committed with its success (docs/workflows.md, "Dynamic tasks").

// Defaults of the dynamic-task bounds (Config).
const (
	// DefaultMaxDynamicTasks bounds the tasks spawned into one run, all
	// spawns together (the same bound as a submitted run's tasks).
	DefaultMaxDynamicTasks = scheduler.DefaultMaxTasks
	// DefaultMaxIterations bounds a loop: a task and the iterations it
	// continues into (Task.Continue) are at most this many.
	DefaultMaxIterations = 100
)

// Errors of a spawn. An attempt whose spawn fails one of the checks fails
// for good (a retry would spawn the same), with the error in its
// task_failed.
var (
	// ErrInvalidSpawn: a spawned task is not valid (id, handler,
	// dependencies, options, args), or the spawn is over the run's bound.
	ErrInvalidSpawn = errors.New("invalid spawn")
	// ErrTooManyIterations: a loop would run more iterations than
	// Config.MaxIterations.
	ErrTooManyIterations = errors.New("too many loop iterations")
)

// NewTask is a task a handler adds to its run with Task.Spawn. Zero
// values mean the defaults of a workflow's task.
type NewTask struct {
	// ID is unique in the run: 1-200 of letters, digits and "_.:-". Leave
	// it empty for a loop's next iteration (Handler is the spawner's
	// handler), whose id is chosen for it (see Task.Continue).
	ID string
	// Handler is the registered handler name. A task spawned with its
	// spawner's handler is the loop's next iteration.
	Handler string
	// Args are the task's arguments, JSON-encoded (a json.RawMessage is
	// taken as is). The spawned task gets no result of its spawner: pass
	// what it needs here.
	Args any
	// Deps are ids of tasks it runs after: earlier tasks of the same spawn
	// (no cycle), or tasks of the run that succeeded and spawned nothing.
	// Not the spawner itself.
	Deps []string
	// Pool, Priority, Retries and Timeout are as in a workflow's task.
	Pool     string
	Priority int
	Retries  int
	Timeout  time.Duration
}

// spawnState is what an attempt's handler spawned. Guarded by Task.mu.
type spawnState struct {
	specs  []events.TaskSpec
	err    error // the first invalid spawn: the attempt fails with it
	closed bool  // the handler returned: no more spawns
}

// spawnLimits are the worker's bounds, copied into each Task (zero: the
// defaults, for a Task built by hand in a handler's test).
type spawnLimits struct {
	maxTasks, maxIterations int
}

func (l spawnLimits) orDefaults() spawnLimits {
	if l.maxTasks <= 0 {
		l.maxTasks = DefaultMaxDynamicTasks
	}
	if l.maxIterations <= 0 {
		l.maxIterations = DefaultMaxIterations
	}
	return l
}

// Spawn adds tasks to the task's run. They are committed atomically with
// this attempt's success: the finish that records the handler's result
// appends tasks_added right before task_succeeded, fenced like the result
// (if the claim was lost, neither is accepted). If the attempt fails,
// nothing spawned is kept; a retry spawns again.
//
// The tasks that depend on this task (its successors) also wait for the
// spawned tasks no other spawned task depends on (the spawn's sinks), and
// for what those spawn in turn; they read the spawned results with
// EachUpstream (or Spawned and BindUpstream).
//
// Spawn checks the tasks at once, with what was spawned before in this
// attempt, as a submit would (ids well-formed and unique, handler set, no
// cycle, options in range, args valid JSON within the payload bound) and
// against Config.MaxDynamicTasks and, for a loop iteration,
// Config.MaxIterations. An invalid spawn returns an error wrapping
// ErrInvalidSpawn (or ErrTooManyIterations) and fails the attempt for good,
// whatever the handler returns. The finish script checks what only Redis
// knows (ids new to the run, outside dependencies succeeded, the run's
// bound over all its spawns); a spawn refused there fails the attempt for
// good too. Safe for concurrent use within the handler.
func (t *Task) Spawn(tasks ...NewTask) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.spawn.closed {
		return fmt.Errorf("%w: task %s spawned after its handler returned", ErrInvalidSpawn, t.ID)
	}
	if t.spawn.err != nil {
		return t.spawn.err
	}
	t.limits = t.limits.orDefaults()
	all := slices.Clip(t.spawn.specs)
	for _, nt := range tasks {
		s, err := t.specOf(nt)
		if err != nil {
			t.spawn.err = err
			return err
		}
		all = append(all, s)
	}
	if err := t.validateSpawn(all); err != nil {
		t.spawn.err = err
		return err
	}
	t.spawn.specs = all
	return nil
}

// Continue spawns the next iteration of the loop this task belongs to: a
// task with the same handler, pool, priority, retries and timeout, args
// as given, run after this one succeeded. A task "x" is iteration 1 of
// loop x; its iterations are "x:2", "x:3", ... (Iteration). Past
// Config.MaxIterations it returns an error wrapping ErrTooManyIterations
// and the attempt fails for good. This task's successors wait for the
// loop's last iteration.
func (t *Task) Continue(args any) error {
	return t.Spawn(NewTask{Handler: t.Handler, Args: args, Pool: t.pool, Priority: t.priority,
		Retries: max(t.MaxAttempts-1, 0), Timeout: t.timeout})
}

// Iteration is the task's loop iteration: n for an id "<base>:<n>" (n >=
// 2), else 1.
func (t *Task) Iteration() int {
	_, n := iteration(t.ID)
	return n
}

// iteration splits a loop task's id into its loop's base id and
// iteration number.
func iteration(id string) (base string, n int) {
	if i := strings.LastIndexByte(id, ':'); i > 0 {
		if n, err := strconv.Atoi(id[i+1:]); err == nil && n >= 2 && strconv.Itoa(n) == id[i+1:] {
			return id[:i], n
		}
	}
	return id, 1
}

// specOf turns a NewTask into a task spec: the iteration's id, the args
// encoded, the options mapped.
func (t *Task) specOf(nt NewTask) (events.TaskSpec, error) {
	bad := func(format string, args ...any) (events.TaskSpec, error) {
		return events.TaskSpec{}, fmt.Errorf("%w by task %s: %s", ErrInvalidSpawn, t.ID, fmt.Sprintf(format, args...))
	}
	if nt.Handler != "" && nt.Handler == t.Handler {
		base, n := iteration(t.ID)
		next := base + ":" + strconv.Itoa(n+1)
		switch {
		case nt.ID == "":
			nt.ID = next
		case nt.ID != next:
			return bad("task %q runs %q, its spawner's handler: it is iteration %d of loop %s and its id is %q (leave ID empty)", nt.ID, nt.Handler, n+1, base, next)
		}
		if n+1 > t.limits.maxIterations {
			return events.TaskSpec{}, fmt.Errorf("%w: loop %s would run iteration %d; the limit is %d (worker Config.MaxIterations)", ErrTooManyIterations, base, n+1, t.limits.maxIterations)
		}
	}
	if nt.ID == "" {
		return bad("a task with handler %q has no ID", nt.Handler)
	}
	if nt.Retries < 0 || nt.Timeout < 0 {
		return bad("task %q: negative retries or timeout", nt.ID)
	}
	s := events.TaskSpec{ID: nt.ID, Handler: nt.Handler, Deps: nt.Deps, Pool: nt.Pool, Priority: nt.Priority,
		TimeoutMS: nt.Timeout.Milliseconds()}
	if nt.Retries > 0 {
		s.MaxAttempts = nt.Retries + 1
	}
	switch a := nt.Args.(type) {
	case nil:
	case json.RawMessage:
		s.Args = a
	default:
		b, err := json.Marshal(a)
		if err != nil {
			return bad("task %q: encode args: %v", nt.ID, err)
		}
		s.Args = b
	}
	return s, nil
}

// validateSpawn checks an attempt's whole spawn as a submit is checked
// (scheduler.Validate, with the dependencies outside the spawn set
// aside), and those outside dependencies: never the spawner.
func (t *Task) validateSpawn(specs []events.TaskSpec) error {
	if len(specs) > t.limits.maxTasks {
		return fmt.Errorf("%w by task %s: %d tasks; a run holds at most %d spawned tasks (worker Config.MaxDynamicTasks)", ErrInvalidSpawn, t.ID, len(specs), t.limits.maxTasks)
	}
	inner := make(map[string]bool, len(specs))
	for _, s := range specs {
		inner[s.ID] = true
	}
	local := make([]events.TaskSpec, len(specs))
	for i, s := range specs {
		local[i] = s
		local[i].Deps = nil
		for _, d := range s.Deps {
			switch {
			case inner[d]:
				local[i].Deps = append(local[i].Deps, d)
			case d == t.ID:
				return fmt.Errorf("%w by task %s: task %q depends on its spawner: spawned tasks run after it anyway; pass what they need in Args", ErrInvalidSpawn, t.ID, s.ID)
			}
		}
	}
	err := scheduler.Validate(events.RunSubmittedBody{Workflow: "spawn of " + t.ID, Tasks: local}, scheduler.ValidateOptions{MaxTasks: t.limits.maxTasks})
	if err != nil {
		return fmt.Errorf("%w by task %s: %w", ErrInvalidSpawn, t.ID, err)
	}
	return nil
}

// takeSpawn closes the attempt's spawn (the handler returned) and returns
// what the finish commits with a success: the spawn (its tasks_added
// event written at the finish's time at), or the error that fails the
// attempt for good instead.
func (t *Task) takeSpawn(at time.Time) (*rdb.Spawn, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.spawn.closed = true
	if t.spawn.err != nil {
		return nil, Permanent(t.spawn.err)
	}
	specs := t.spawn.specs
	if len(specs) == 0 {
		return nil, nil
	}
	inner := make(map[string]bool, len(specs))
	for _, s := range specs {
		inner[s.ID] = true
	}
	var external []string
	for _, s := range specs {
		for _, d := range s.Deps {
			if !inner[d] && !slices.Contains(external, d) {
				external = append(external, d)
			}
		}
	}
	sp, err := rdb.NewSpawn(events.NewID(at), specs, projector.Sinks(specs), external, t.limits.maxTasks)
	if err != nil {
		return nil, Permanent(fmt.Errorf("%w by task %s: %w", ErrInvalidSpawn, t.ID, err))
	}
	return sp, nil
}
