package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/spf13/pflag"
)

func init() {
	register(&command{name: "signal", summary: "deliver a signal to a running run (RUN NAME [--data JSON | --data-file F]): the task waiting for it (@wait_signal) takes the payload", setup: runSignal})
}

func runSignal(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	data := fs.String("data", "", "the payload, JSON (default null); it becomes the waiting task's result")
	file := fs.String("data-file", "", "read the payload (JSON) from this file, - for standard input")
	id := fs.String("id", "", "idempotency key: sending again with the same id writes nothing and succeeds (default: a fresh one)")
	by := fs.String("by", m.Getenv("USER"), "who sends it, recorded in the event (default $USER)")
	return func(ctx context.Context, args []string) error {
		if fs.NArg() != 2 {
			return usagef("signal takes a run id and a signal name: graflow signal RUN NAME [--data JSON | --data-file FILE]")
		}
		run, name := fs.Arg(0), fs.Arg(1)
		payload, err := signalPayload(m, *data, *file)
		if err != nil {
			return withCode(ExitUsage, err)
		}
		check := *id
		if check == "" {
			check = "-" // SignalWith makes one
		}
		if err := rdb.CheckSignal(name, check, payload); err != nil { // before connecting: nothing is sent
			return withCode(ExitUsage, err)
		}
		cl, r, err := c.client(ctx)
		if err != nil {
			return err
		}
		defer r.Close()
		err = cl.SignalWith(ctx, run, name, payload, graflow.SignalOptions{ID: *id, By: *by})
		switch {
		case errors.Is(err, graflow.ErrRunNotFound), errors.Is(err, graflow.ErrRunFinished), errors.Is(err, graflow.ErrSignalExists):
			return withCode(ExitError, err)
		case errors.Is(err, graflow.ErrInvalidSignal):
			return withCode(ExitUsage, err)
		case err != nil:
			return err
		}
		fmt.Fprintf(m.Stdout, "run %s: signal %s delivered\n", run, name)
		// A typo in the name waits for ever: say so. Only a hint, from the
		// run's @wait_signal tasks, whatever their status (the task may have
		// taken the signal already): a handler of the user's may ask for
		// any name (worker.Task.WaitSignal), and a task may be spawned
		// later.
		if names, err := signalWaits(ctx, cl, run); err == nil && len(names) > 0 && !slices.Contains(names, name) {
			fmt.Fprintf(m.Stderr, "graflow: warning: no @wait_signal task of run %s waits for signal %q (they wait for: %s); it is kept for a task that asks for it\n",
				run, name, strings.Join(names, ", "))
		}
		return nil
	}
}

// signalWaits returns the signal names the run's @wait_signal tasks wait
// for, sorted (from its log: run_submitted and tasks_added name each
// task's handler and args).
func signalWaits(ctx context.Context, cl *graflow.Client, run string) ([]string, error) {
	evs, err := cl.Log(ctx, run)
	if err != nil {
		return nil, err
	}
	var names []string
	add := func(specs []events.TaskSpec) {
		for _, sp := range specs {
			var a builtin.WaitSignalArgs
			if sp.Handler == builtin.WaitSignal && json.Unmarshal(sp.Args, &a) == nil && a.Name != "" && !slices.Contains(names, a.Name) {
				names = append(names, a.Name)
			}
		}
	}
	for _, e := range evs {
		switch e.Type {
		case events.RunSubmitted:
			var b events.RunSubmittedBody
			if e.DecodeBody(&b) == nil {
				add(b.Tasks)
			}
		case events.TasksAdded:
			var b events.TasksAddedBody
			if e.DecodeBody(&b) == nil {
				add(b.Tasks)
			}
		}
	}
	slices.Sort(names)
	return names, nil
}

// signalPayload returns the payload given by --data or --data-file
// (null when neither), checked to be JSON.
func signalPayload(m *Main, data, file string) (json.RawMessage, error) {
	return jsonFlag(m, "--data", data, file, rdb.MaxSignalBytes)
}

// jsonFlag reads the JSON value of flag name (inline data) or of its
// -file flag (a file, - for standard input), at most limit bytes; null
// when neither is given.
func jsonFlag(m *Main, name, data, file string, limit int) (json.RawMessage, error) {
	var raw []byte
	from := name
	switch {
	case data != "" && file != "":
		return nil, fmt.Errorf("give %s or %s-file, not both", name, name)
	case data != "":
		raw = []byte(data)
	case file != "":
		from = name + "-file " + file
		var r io.Reader = m.Stdin
		if file != "-" {
			f, err := os.Open(file)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			r = f
		}
		var err error
		if raw, err = io.ReadAll(io.LimitReader(r, int64(limit)+1)); err != nil {
			return nil, fmt.Errorf("read %s: %w", from, err)
		}
		if len(raw) > limit {
			return nil, fmt.Errorf("%s: the payload is over %d bytes", from, limit)
		}
	default:
		return json.RawMessage("null"), nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("%s is not valid JSON: %w", from, err)
	}
	return raw, nil
}
