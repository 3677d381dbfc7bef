package builtin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/graflow-go/graflow/worker"
)

// WaitSignal is the handler of a task that waits for a signal: the
// human-in-the-loop step. Args {"name": "approve", "timeout": "72h"}
// (timeout optional, a Go duration counted from when the task was
// dispatched). Its result is the signal's payload; with no signal in
// time the task fails for good ("no signal approve within 72h"). The "@"
// marks it as the engine's own: no user handler is expected to take it.
const WaitSignal = "@wait_signal"

// WaitSignalArgs are the arguments of a WaitSignal task.
type WaitSignalArgs struct {
	// Name of the signal (Client.Signal, graflow signal RUN NAME).
	Name string `json:"name"`
	// Timeout is a Go duration ("72h", "30m"); empty waits for ever.
	Timeout string `json:"timeout,omitempty"`
}

// waitSignal waits for the signal its args name (worker.Task.WaitSignal)
// and returns its payload.
func waitSignal(ctx context.Context, t *worker.Task) (any, error) {
	var a WaitSignalArgs
	dec := json.NewDecoder(bytes.NewReader(t.Args))
	dec.DisallowUnknownFields() // a misspelt "timout" must not wait for ever
	if err := dec.Decode(&a); err != nil && len(bytes.TrimSpace(t.Args)) > 0 {
		return nil, worker.Permanent(fmt.Errorf(`%s: args %s: %w (want {"name": "approve", "timeout": "72h"})`, WaitSignal, t.Args, err))
	}
	if a.Name == "" {
		return nil, worker.Permanent(errors.New(WaitSignal + `: args need a signal name: {"name": "approve", "timeout": "72h"}`))
	}
	var timeout time.Duration
	if a.Timeout != "" {
		d, err := time.ParseDuration(a.Timeout)
		if err != nil || d <= 0 {
			return nil, worker.Permanent(fmt.Errorf("%s: timeout %q: want a positive Go duration such as 72h, 30m or 90s", WaitSignal, a.Timeout))
		}
		timeout = d
	}
	t.Progress("waiting for signal " + a.Name)
	s, err := t.WaitSignal(ctx, a.Name, worker.WaitSignalOptions{Timeout: timeout})
	if err != nil {
		return nil, err
	}
	return s.Payload, nil
}
