// Package builtin holds the handlers that the stock `graflow worker`
// registers, used by the demo, the tests, chaos runs and benchmarks. Users
// build their own worker binary with their own handlers.
package builtin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/graflow-go/graflow/worker"
)

// Handler names. Stable strings stored in workflows.
const (
	Noop  = "noop"  // returns null
	Sleep = "sleep" // args {"ms": n, "value": v}: sleeps n ms, returns v
	Echo  = "echo"  // returns args.value, else the args, else the run input
	Flaky = "flaky" // args {"fail": n, "value": v, "permanent": b}: fails attempts 1..n, then returns v
	Sum   = "sum"   // returns args.add + the sum of all numeric upstream results
	Fail  = "fail"  // args {"permanent": bool, "message": s}: always fails
)

// Register adds every built-in handler to w.
func Register(w *worker.Worker) {
	w.HandleFunc(Noop, noop)
	// Typed (worker.HandleTyped): the arguments decode into Args, and
	// arguments that do not fail the task for good.
	worker.HandleTyped(w, Sleep, sleep)
	worker.HandleTyped(w, Echo, echo)
	worker.HandleTyped(w, Flaky, flaky)
	worker.HandleTyped(w, Sum, sum)
	worker.HandleTyped(w, Fail, fail)
	registerChannel(w) // channel.go
	w.HandleFunc(Spawn, spawn)
	w.HandleFunc(Loop, loop)
	w.HandleFunc(WaitSignal, waitSignal)
}

// Args is the union of the built-in handlers' arguments.
type Args struct {
	MS        int64           `json:"ms,omitempty"`
	Value     json.RawMessage `json:"value,omitempty"`
	Fail      int             `json:"fail,omitempty"`
	Add       float64         `json:"add,omitempty"`
	Permanent bool            `json:"permanent,omitempty"`
	Message   string          `json:"message,omitempty"`
}

func noop(context.Context, *worker.Task) (any, error) { return nil, nil }

func sleep(ctx context.Context, t *worker.Task, a Args) (any, error) {
	if err := pause(ctx, a.MS); err != nil {
		return nil, err
	}
	return a.Value, nil
}

// pause waits ms milliseconds, or until ctx ends (its cause).
func pause(ctx context.Context, ms int64) error {
	timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-timer.C:
		return nil
	}
}

func echo(_ context.Context, t *worker.Task, a Args) (any, error) {
	switch {
	case len(a.Value) > 0:
		return a.Value, nil
	case len(t.Args) > 0:
		return t.Args, nil
	}
	return t.Input, nil
}

func flaky(_ context.Context, t *worker.Task, a Args) (any, error) {
	if t.Attempt <= a.Fail {
		err := fmt.Errorf("flaky: attempt %d of %d planned failures", t.Attempt, a.Fail)
		if a.Permanent {
			return nil, worker.Permanent(err)
		}
		return nil, err
	}
	return a.Value, nil
}

func sum(ctx context.Context, t *worker.Task, a Args) (any, error) {
	// In the workflow's order: a deterministic float addition order, and
	// every result of a fan-in of any width, read page by page.
	total := a.Add
	err := t.EachUpstream(ctx, func(_ string, result json.RawMessage) error {
		total += number(result)
		return nil
	})
	return total, err
}

// number reads a JSON number, or sums an array of numbers; anything else is 0.
func number(raw json.RawMessage) float64 {
	var f float64
	if json.Unmarshal(raw, &f) == nil {
		return f
	}
	var fs []float64
	if json.Unmarshal(raw, &fs) == nil {
		for _, x := range fs {
			f += x
		}
	}
	return f
}

func fail(_ context.Context, t *worker.Task, a Args) (any, error) {
	msg := a.Message
	if msg == "" {
		msg = "fail: this task always fails"
	}
	if a.Permanent {
		return nil, worker.Permanent(errors.New(msg))
	}
	return nil, errors.New(msg)
}
