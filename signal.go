package graflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/oklog/ulid/v2"
)

// Errors of Signal. errors.Is works on the wrapped errors, which name the
// run and the signal.
var (
	// ErrSignalExists: the run already received a signal of this name
	// (with another id); nothing was written. A run takes one signal per
	// name: the first is the one its waiting tasks get.
	ErrSignalExists = errors.New("signal already received")
	// ErrInvalidSignal: a bad name or id, or a payload that is not JSON
	// or is over 1 MiB; nothing was sent.
	ErrInvalidSignal = rdb.ErrInvalidSignal
)

// SignalOptions tune SignalWith. The zero value is Signal's behaviour.
type SignalOptions struct {
	// ID makes the delivery idempotent: sending the signal again with
	// the same ID (a retry after a lost reply) writes nothing and returns
	// nil, even once the run has ended. 1-200 bytes; default a fresh
	// ULID per call, so a second call is ErrSignalExists.
	ID string
	// By names the sender in the event (free text, e.g. the approver's
	// user name): the run's log keeps who approved what.
	By string
}

// Signal delivers the signal name to run with payload (JSON-encoded; a
// json.RawMessage is sent as is): a task waiting for it (the built-in
// @wait_signal handler, or worker.Task.WaitSignal) returns the payload
// as its result, whether it started waiting before or after this call.
// It is one atomic step on the run's slot that appends signal_received
// and changes no task state.
//
// A run takes one signal per name: a second is ErrSignalExists (use
// SignalWith and an ID to make retries harmless). A run that has ended
// (succeeded, failed, cancelled or quarantined) is ErrRunFinished, an
// unknown one ErrRunNotFound, a bad name or payload ErrInvalidSignal
// (names are like task ids: 1-200 letters, digits and "_.:-", not
// starting with "@"); none of them writes anything. Safe for concurrent
// use.
func (c *Client) Signal(ctx context.Context, run, name string, payload any) error {
	return c.SignalWith(ctx, run, name, payload, SignalOptions{})
}

// SignalWith is Signal with options: an idempotency ID and the sender.
func (c *Client) SignalWith(ctx context.Context, run, name string, payload any, opts SignalOptions) error {
	raw, err := json.Marshal(payload) // a json.RawMessage is checked and compacted
	if err != nil {
		return fmt.Errorf("signal %s to run %s: %w: the payload does not encode: %w", name, run, ErrInvalidSignal, err)
	}
	if opts.ID == "" {
		opts.ID = ulid.Make().String()
	}
	body := events.SignalReceivedBody{Name: name, ID: opts.ID, By: opts.By, Payload: raw}
	if err := rdb.CheckSignal(body.Name, body.ID, body.Payload); err != nil {
		return fmt.Errorf("signal %s to run %s: %w", name, run, err)
	}
	now := c.clock.Now()
	res, err := c.db.Signal(ctx, run, c.id, now.UnixMilli(), events.NewID(now), body)
	switch {
	case errors.Is(err, rdb.ErrRunMissing):
		return c.notFound(run)
	case err != nil:
		return err
	}
	switch res.Outcome {
	case rdb.SignalExists:
		return fmt.Errorf("signal %s to run %s: %w (id %s): a run takes one signal per name", name, run, ErrSignalExists, res.ID)
	case rdb.SignalFinished:
		if res.Status == string(projector.RunSucceeded) {
			// A succeeded run keeps only its log: the signal it took
			// under this name, if any, is there (a retry is still a
			// duplicate, another id still ErrSignalExists).
			e, _, err := c.db.FindSignal(ctx, run, name, "", readCount, nil)
			if err != nil {
				return err
			}
			var b events.SignalReceivedBody
			if e != nil && e.DecodeBody(&b) == nil {
				if b.ID == opts.ID {
					return nil
				}
				return fmt.Errorf("signal %s to run %s: %w (id %s): a run takes one signal per name", name, run, ErrSignalExists, b.ID)
			}
		}
		return fmt.Errorf("signal %s to run %s: %w (%s)", name, run, ErrRunFinished, res.Status)
	}
	return nil
}
