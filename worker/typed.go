package worker

import (
	"context"
	"fmt"
)

// TypedFunc is a handler whose arguments and result are Go values: Args
// is decoded from the task's JSON arguments, Result is encoded as the
// task's result.
type TypedFunc[Args, Result any] func(ctx context.Context, t *Task, args Args) (Result, error)

// HandleTyped registers fn under name, so handlers need no BindArgs or
// json calls of their own:
//
//	worker.HandleTyped(w, "resize", func(ctx context.Context, t *worker.Task, a ResizeArgs) (Image, error) { ... })
//
// Arguments that do not decode into Args fail the attempt for good (a
// Permanent error: a retry would get the same arguments), naming the task
// and the decode error. A task without arguments gets Args' zero value.
func HandleTyped[Args, Result any](w *Worker, name string, fn TypedFunc[Args, Result]) {
	w.Handle(name, HandlerFunc(func(ctx context.Context, t *Task) (any, error) {
		var args Args
		if err := t.BindArgs(&args); err != nil {
			return nil, fmt.Errorf("handler %s, task %s: %w", name, t.ID, err) // Permanent already
		}
		res, err := fn(ctx, t, args)
		if err != nil {
			return nil, err
		}
		return res, nil
	}))
}

// Upstream decodes the result of dependency dep into a T (BindUpstream,
// typed): it reads the result from Redis when the claim did not carry it.
func Upstream[T any](t *Task, dep string) (T, error) {
	var v T
	err := t.BindUpstream(dep, &v)
	return v, err
}

// Input decodes the run's input into a T (BindInput, typed).
func Input[T any](t *Task) (T, error) {
	var v T
	err := t.BindInput(&v)
	return v, err
}
