package builtin

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/graflow-go/graflow/worker"
)

// Channel handler names: they read and write the run's channel (see
// worker.Channel), so that spec files and tests can use it. Each also
// takes "after_ms": n, a delay before it acts. The delay, and the write
// of a writing handler after it, ignore the task's context on purpose:
// they stand for work that never checks its context, whose late write
// the claim check refuses when the claim was lost meanwhile.
const (
	ChannelSet    = "channel.set"    // args {"key": k, "value": v}: sets k to v, returns v
	ChannelAppend = "channel.append" // args {"key": k, "value": v}: appends v to the array at k, returns v
	ChannelIncr   = "channel.incr"   // args {"key": k, "by": n}: adds n (default 1) to k, returns the new value
	ChannelWait   = "channel.wait"   // args {"key": k}: waits until k has a value, returns it
)

// channelArgs are the channel handlers' arguments.
type channelArgs struct {
	Key   string          `json:"key"`
	Value json.RawMessage `json:"value,omitempty"`
	By    *int64          `json:"by,omitempty"`
	// AfterMS delays the handler (not interrupted by its context).
	AfterMS int64 `json:"after_ms,omitempty"`
}

// registerChannel adds the channel handlers to w.
func registerChannel(w *worker.Worker) {
	w.HandleFunc(ChannelSet, channelHandler(func(ctx context.Context, ch *worker.Channel, a channelArgs) (any, error) {
		return a.Value, ch.Set(ctx, a.Key, a.Value)
	}, true))
	w.HandleFunc(ChannelAppend, channelHandler(func(ctx context.Context, ch *worker.Channel, a channelArgs) (any, error) {
		return a.Value, ch.Append(ctx, a.Key, a.Value)
	}, true))
	w.HandleFunc(ChannelIncr, channelHandler(func(ctx context.Context, ch *worker.Channel, a channelArgs) (any, error) {
		by := int64(1)
		if a.By != nil {
			by = *a.By
		}
		return ch.Incr(ctx, a.Key, by)
	}, true))
	w.HandleFunc(ChannelWait, channelHandler(func(ctx context.Context, ch *worker.Channel, a channelArgs) (any, error) {
		return ch.Wait(ctx, a.Key)
	}, false))
}

// channelHandler decodes the arguments (a key is required; a missing
// value is JSON null) and runs fn on the task's channel (after after_ms;
// then a write ignores the context too).
func channelHandler(fn func(context.Context, *worker.Channel, channelArgs) (any, error), writes bool) func(context.Context, *worker.Task) (any, error) {
	return func(ctx context.Context, t *worker.Task) (any, error) {
		var a channelArgs
		if err := t.BindArgs(&a); err != nil {
			return nil, err
		}
		if a.Key == "" {
			return nil, worker.Permanent(errors.New(`channel handlers need args {"key": ...}`))
		}
		if len(a.Value) == 0 {
			a.Value = json.RawMessage("null")
		}
		if a.AfterMS > 0 {
			<-time.After(time.Duration(a.AfterMS) * time.Millisecond)
			if writes {
				ctx = context.WithoutCancel(ctx)
			}
		}
		return fn(ctx, t.Channel(), a)
	}
}
