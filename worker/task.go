package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Handler runs tasks of one handler name. The returned value is the task's
// result (JSON-encoded, may be nil); an error fails the attempt, and the
// task is retried while it has attempts left unless the error is Permanent.
//
// ProcessTask must return when ctx is done: ctx is cancelled on the task's
// timeout, when its claim is lost (another worker reclaimed it), or when
// the worker's drain timeout ends.
type Handler interface {
	ProcessTask(ctx context.Context, t *Task) (any, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, t *Task) (any, error)

// ProcessTask calls f.
func (f HandlerFunc) ProcessTask(ctx context.Context, t *Task) (any, error) { return f(ctx, t) }

// Task is one claimed attempt of a task, as a handler sees it.
type Task struct {
	Run         string
	ID          string
	Handler     string
	Attempt     int
	MaxAttempts int
	Epoch       int64
	// Input is the run's input (JSON), shared by all tasks of the run.
	Input json.RawMessage
	// Args are the task's static arguments from the workflow (JSON).
	Args json.RawMessage
	// Upstream maps every dependency's id to its accepted result (JSON).
	Upstream map[string]json.RawMessage

	timeout  time.Duration
	mu       sync.Mutex
	progress string
}

// Progress records a progress note sent with the task's next heartbeat.
// Safe for concurrent use.
func (t *Task) Progress(note string) {
	t.mu.Lock()
	t.progress = note
	t.mu.Unlock()
}

func (t *Task) takeProgress() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.progress
}

// BindArgs decodes the task's arguments into v (no-op when there are none).
func (t *Task) BindArgs(v any) error { return bind(t.Args, v, "args") }

// BindInput decodes the run's input into v (no-op when there is none).
func (t *Task) BindInput(v any) error { return bind(t.Input, v, "input") }

// BindUpstream decodes dependency dep's result into v.
func (t *Task) BindUpstream(dep string, v any) error {
	raw, ok := t.Upstream[dep]
	if !ok {
		return fmt.Errorf("task %s has no dependency %q", t.ID, dep)
	}
	return bind(raw, v, "result of "+dep)
}

func bind(raw json.RawMessage, v any, what string) error {
	if len(raw) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return Permanent(fmt.Errorf("decode %s: %w", what, err))
	}
	return nil
}

// ErrPermanent marks errors that must not be retried.
var ErrPermanent = errors.New("permanent failure")

type permanentError struct{ err error }

func (e *permanentError) Error() string        { return e.err.Error() }
func (e *permanentError) Unwrap() []error      { return []error{e.err, ErrPermanent} }
func (e *permanentError) Is(target error) bool { return target == ErrPermanent }

// Permanent wraps err so that the task fails for good, without retries.
// errors.Is(Permanent(err), ErrPermanent) is true and the original error
// is still reachable with errors.Is / errors.As.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}
