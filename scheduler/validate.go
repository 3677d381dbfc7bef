// Package scheduler validates workflow definitions and submits runs.
package scheduler

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
)

// Validation errors. A *ValidationError wraps one or more of them, so
// errors.Is(err, ErrCycle) works on what Submit returns.
var (
	ErrInvalidWorkflow   = errors.New("invalid workflow")
	ErrEmptyWorkflow     = errors.New("workflow has no tasks")
	ErrDuplicateTask     = errors.New("duplicate task id")
	ErrUnknownDependency = errors.New("unknown dependency")
	ErrCycle             = errors.New("dependency cycle")
	ErrInvalidTaskID     = errors.New("invalid task id")
	ErrMissingHandler    = errors.New("task has no handler")
	ErrUnknownHandler    = errors.New("unknown handler")
	ErrInvalidOption     = errors.New("invalid task option")
	ErrPayloadTooLarge   = errors.New("payload too large")
	ErrTooManyTasks      = errors.New("too many tasks")
	ErrInvalidPayload    = errors.New("payload is not valid JSON")
	ErrSpecTooLarge      = errors.New("workflow too large")
)

// Limits of a run definition (see docs/operations.md, "Limits").
const (
	// DefaultMaxPayloadBytes bounds a run's input and a task's args.
	DefaultMaxPayloadBytes = 1 << 20
	// DefaultMaxTasks bounds the tasks of one run.
	DefaultMaxTasks = 100_000
	// DefaultMaxSpecBytes bounds a run's whole definition as stored in its
	// run_submitted event (tasks, args, input, options): one stream entry
	// and one script call, well under Redis' 512 MB bulk limit so the
	// failure is this typed error, not one from inside Redis.
	DefaultMaxSpecBytes = 64 << 20
)

// ValidationError lists every problem found in a workflow. Nothing was
// written for it.
type ValidationError struct {
	Workflow string
	Problems []error
}

func (e *ValidationError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = p.Error()
	}
	return fmt.Sprintf("invalid workflow %q: %s", e.Workflow, strings.Join(msgs, "; "))
}

// Unwrap returns ErrInvalidWorkflow and every problem.
func (e *ValidationError) Unwrap() []error { return append([]error{ErrInvalidWorkflow}, e.Problems...) }

var idRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,200}$`)

// ValidateOptions tune Validate.
type ValidateOptions struct {
	// MaxPayloadBytes bounds the input and each task's args (default 1 MiB).
	MaxPayloadBytes int
	// MaxTasks bounds the tasks (default DefaultMaxTasks).
	MaxTasks int
	// MaxSpecBytes bounds the encoded definition (default
	// DefaultMaxSpecBytes).
	MaxSpecBytes int
	// Handlers, when not nil, is the set of known handler names: any other
	// handler is ErrUnknownHandler.
	Handlers map[string]bool
}

// Validate checks a run definition: at least one task; unique, well-formed
// ids; known dependencies; no cycle; handlers set (and known, if asked);
// pools and priorities in range; payloads within bounds. It reports every
// problem at once in a *ValidationError.
func Validate(spec events.RunSubmittedBody, opt ValidateOptions) error {
	if opt.MaxPayloadBytes <= 0 {
		opt.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if opt.MaxTasks <= 0 {
		opt.MaxTasks = DefaultMaxTasks
	}
	if opt.MaxSpecBytes <= 0 {
		opt.MaxSpecBytes = DefaultMaxSpecBytes
	}
	var probs []error
	add := func(base error, format string, args ...any) {
		probs = append(probs, fmt.Errorf("%w: %s", base, fmt.Sprintf(format, args...)))
	}
	if len(spec.Tasks) == 0 {
		add(ErrEmptyWorkflow, "add at least one task")
	}
	if len(spec.Input) > opt.MaxPayloadBytes {
		add(ErrPayloadTooLarge, "input is %d bytes, the limit is %d", len(spec.Input), opt.MaxPayloadBytes)
	} else if len(spec.Input) > 0 && !json.Valid(spec.Input) {
		add(ErrInvalidPayload, "the run's input")
	}
	if len(spec.Tasks) > opt.MaxTasks {
		add(ErrTooManyTasks, "%d tasks, the limit is %d", len(spec.Tasks), opt.MaxTasks)
	}
	if n := specSize(spec); n > opt.MaxSpecBytes {
		add(ErrSpecTooLarge, "the definition is about %d bytes encoded, the limit is %d", n, opt.MaxSpecBytes)
	}
	index := make(map[string]int, len(spec.Tasks))
	for i, t := range spec.Tasks {
		switch {
		case !idRE.MatchString(t.ID) || strings.HasPrefix(t.ID, "@"):
			add(ErrInvalidTaskID, "%q: use 1-200 letters, digits, '_', '.', ':', '-' (not starting with '@')", t.ID)
		case index[t.ID] > 0:
			add(ErrDuplicateTask, "%q is defined twice", t.ID)
		default:
			index[t.ID] = i + 1
		}
		if t.Handler == "" {
			add(ErrMissingHandler, "task %q", t.ID)
		} else if opt.Handlers != nil && !opt.Handlers[t.Handler] {
			add(ErrUnknownHandler, "task %q uses handler %q, which no worker registers", t.ID, t.Handler)
		}
		if t.Pool != "" && !idRE.MatchString(t.Pool) {
			add(ErrInvalidOption, "task %q: pool %q", t.ID, t.Pool)
		}
		if t.Priority < 0 || t.Priority > rdb.MaxPriority {
			add(ErrInvalidOption, "task %q: priority %d is outside 0..%d", t.ID, t.Priority, rdb.MaxPriority)
		}
		if t.MaxAttempts < 0 || t.TimeoutMS < 0 || t.StartAfterMS < 0 || t.ResultTTLMS < 0 {
			add(ErrInvalidOption, "task %q: negative attempts, timeout, start_after or result_ttl", t.ID)
		}
		if len(t.Args) > opt.MaxPayloadBytes {
			add(ErrPayloadTooLarge, "task %q: args are %d bytes, the limit is %d", t.ID, len(t.Args), opt.MaxPayloadBytes)
		} else if len(t.Args) > 0 && !json.Valid(t.Args) {
			add(ErrInvalidPayload, "task %q: args", t.ID)
		} else if t.Handler == WaitSignalHandler {
			if err := checkWaitSignalArgs(t.Args); err != nil {
				add(ErrInvalidOption, "task %q: %s: %v", t.ID, WaitSignalHandler, err)
			}
		}
	}
	brokenGraph := false
	for _, p := range probs {
		if errors.Is(p, ErrInvalidTaskID) || errors.Is(p, ErrDuplicateTask) {
			brokenGraph = true
		}
	}
	for _, t := range spec.Tasks {
		seen := map[string]bool{}
		for _, d := range t.Deps {
			switch {
			case index[d] == 0:
				add(ErrUnknownDependency, "task %q depends on %q, which is not in the workflow", t.ID, d)
				brokenGraph = true
			case d == t.ID:
				add(ErrCycle, "task %q depends on itself", t.ID)
			case seen[d]:
				add(ErrDuplicateTask, "task %q lists dependency %q twice", t.ID, d)
				brokenGraph = true
			}
			seen[d] = true
		}
		if j := t.Join; j != nil {
			switch j.Policy {
			case "", events.JoinAll, events.JoinBestEffort:
			case events.JoinAtLeast:
				if j.N < 1 || j.N > len(t.Deps) {
					add(ErrInvalidOption, "task %q: join at_least n=%d, want 1 to %d (its dependencies)", t.ID, j.N, len(t.Deps))
				}
			case events.JoinCritical:
				if len(j.Critical) == 0 {
					add(ErrInvalidOption, "task %q: join critical lists no critical dependency", t.ID)
				}
				for _, c := range j.Critical {
					if !seen[c] {
						add(ErrInvalidOption, "task %q: critical %q is not one of its dependencies", t.ID, c)
					}
				}
			default:
				add(ErrInvalidOption, "task %q: join policy %q (want all, best_effort, at_least or critical)", t.ID, j.Policy)
			}
			if j.Policy != events.JoinAtLeast && j.N != 0 {
				add(ErrInvalidOption, "task %q: join n is only for at_least", t.ID)
			}
			if j.Policy != events.JoinCritical && len(j.Critical) > 0 {
				add(ErrInvalidOption, "task %q: join critical list is only for the critical policy", t.ID)
			}
		}
	}
	// The cycle search needs every edge to name exactly one task.
	if !brokenGraph {
		if cyc := findCycle(spec.Tasks, index); cyc != nil {
			add(ErrCycle, "%s", strings.Join(cyc, " -> "))
		}
	}
	if len(probs) > 0 {
		return &ValidationError{Workflow: spec.Workflow, Problems: probs}
	}
	return nil
}

// findCycle returns one cycle as a path of task ids, or nil. Iterative DFS
// so a 100,000-task chain does not exhaust the stack.
func findCycle(tasks []events.TaskSpec, index map[string]int) []string {
	const (
		white = iota
		grey
		black
	)
	color := make([]int, len(tasks))
	parent := make([]int, len(tasks))
	type frame struct{ node, next int }
	for start := range tasks {
		if color[start] != white {
			continue
		}
		stack := []frame{{start, 0}}
		color[start], parent[start] = grey, -1
		for len(stack) > 0 {
			f := &stack[len(stack)-1]
			deps := tasks[f.node].Deps
			if f.next == len(deps) {
				color[f.node] = black
				stack = stack[:len(stack)-1]
				continue
			}
			d := index[deps[f.next]] - 1
			f.next++
			switch color[d] {
			case white:
				color[d], parent[d] = grey, f.node
				stack = append(stack, frame{d, 0})
			case grey:
				path := []string{tasks[d].ID}
				for n := f.node; n != d && n >= 0; n = parent[n] {
					path = append(path, tasks[n].ID)
				}
				path = append(path, tasks[d].ID)
				return path
			}
		}
	}
	return nil
}

// specSize is about the encoded size of spec in its run_submitted event:
// the payloads plus a generous 256 bytes a task for ids, handlers,
// dependencies and options (exact for the payloads, which dominate large
// definitions, without encoding the whole definition twice).
func specSize(spec events.RunSubmittedBody) int {
	n := len(spec.Workflow) + len(spec.Input) + 64
	for _, t := range spec.Tasks {
		n += 256 + len(t.ID) + len(t.Handler) + len(t.Pool) + len(t.Args)
		for _, d := range t.Deps {
			n += len(d) + 3
		}
	}
	return n
}

// WaitSignalHandler is the built-in handler that waits for a signal
// (worker/builtin.WaitSignal): its arguments are checked at submit, so a
// misspelt option or a bad name fails the submit, not the task later.
const WaitSignalHandler = "@wait_signal"

// checkWaitSignalArgs checks @wait_signal's arguments as the handler reads
// them: {"name": a valid signal name, "timeout": a positive duration or
// absent}, no other field.
func checkWaitSignalArgs(args json.RawMessage) error {
	var a struct {
		Name    string `json:"name"`
		Timeout string `json:"timeout"`
	}
	dec := json.NewDecoder(bytes.NewReader(args))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return fmt.Errorf(`args %s: %w (want {"name": "approve", "timeout": "72h"})`, args, err)
	}
	if err := rdb.CheckSignalName(a.Name); err != nil {
		return err
	}
	if a.Timeout != "" {
		if d, err := time.ParseDuration(a.Timeout); err != nil || d <= 0 {
			return fmt.Errorf("timeout %q: want a positive Go duration such as 72h, 30m or 90s", a.Timeout)
		}
	}
	return nil
}
