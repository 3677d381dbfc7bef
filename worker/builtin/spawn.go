package builtin

import (
	"context"
	"encoding/json"
	"strconv"

	"github.com/graflow-go/graflow/worker"
)

// Handler names of the built-in dynamic handlers (see Register).
const (
	// Spawn = "spawn": args {"n": n, "handler": h, "args": a, "prefix": p,
	// "flaky_every": k, "ms": ms, "value": v} sleeps ms, then adds n tasks
	// "<prefix><i>" (prefix default "<task id>-") running h (default
	// "noop") with args a, every k-th of them (k > 0) running "flaky"
	// instead (fails its first attempt, 2 retries, returns 1); returns v.
	// Its successors wait for the n tasks (a dynamic fan-out; "sum" after
	// it adds their results).
	Spawn = "spawn"
	// Loop = "loop": args {"times": n, "value": v} continues into its next
	// iteration (worker.Task.Continue) until iteration n, which returns v;
	// earlier iterations return their iteration number.
	Loop = "loop"
)

// SpawnArgs are the arguments of "spawn".
type SpawnArgs struct {
	N          int             `json:"n"`
	Handler    string          `json:"handler,omitempty"`
	Args       json.RawMessage `json:"args,omitempty"`
	Prefix     string          `json:"prefix,omitempty"`
	FlakyEvery int             `json:"flaky_every,omitempty"`
	MS         int64           `json:"ms,omitempty"`
	Value      json.RawMessage `json:"value,omitempty"`
}

func spawn(ctx context.Context, t *worker.Task) (any, error) {
	var a SpawnArgs
	if err := t.BindArgs(&a); err != nil {
		return nil, err
	}
	if err := pause(ctx, a.MS); err != nil {
		return nil, err
	}
	if a.Handler == "" {
		a.Handler = Noop
	}
	if a.Prefix == "" {
		a.Prefix = t.ID + "-"
	}
	tasks := make([]worker.NewTask, a.N)
	for i := range tasks {
		tasks[i] = worker.NewTask{ID: a.Prefix + strconv.Itoa(i), Handler: a.Handler, Args: a.Args}
		if a.FlakyEvery > 0 && i%a.FlakyEvery == a.FlakyEvery-1 {
			tasks[i].Handler, tasks[i].Args, tasks[i].Retries = Flaky, json.RawMessage(`{"fail":1,"value":1}`), 2
		}
	}
	if err := t.Spawn(tasks...); err != nil {
		return nil, err
	}
	return a.Value, nil
}

// LoopArgs are the arguments of "loop".
type LoopArgs struct {
	Times int             `json:"times"`
	Value json.RawMessage `json:"value,omitempty"`
}

func loop(_ context.Context, t *worker.Task) (any, error) {
	var a LoopArgs
	if err := t.BindArgs(&a); err != nil {
		return nil, err
	}
	if t.Iteration() >= a.Times {
		return a.Value, nil
	}
	if err := t.Continue(a); err != nil {
		return nil, err
	}
	return t.Iteration(), nil
}
