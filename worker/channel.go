package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/retry"
)

// Limits of a run's channel (see docs/workflows.md, "Channels"): a key has
// 1 to ChannelMaxKeyBytes bytes of UTF-8, a value (after an Append too) at
// most ChannelMaxValueBytes bytes of JSON, and a run's channel at most
// ChannelMaxKeys keys.
const (
	ChannelMaxKeyBytes   = rdb.ChannelMaxKeyBytes
	ChannelMaxValueBytes = rdb.ChannelMaxValueBytes
	ChannelMaxKeys       = rdb.ChannelMaxKeys
)

// Errors of Channel's methods (use errors.Is).
var (
	// ErrStaleClaim: the task's claim was taken over (its lease expired
	// and another worker reclaimed it), the run was cancelled (the error
	// wraps ErrRunCancelled too), or the task already finished. The write
	// was refused and recorded as result_rejected; the handler's result
	// will be rejected too, and its context is cancelled at the next
	// heartbeat.
	ErrStaleClaim = rdb.ErrStaleClaim
	// ErrRunNotRunning: the run ended or was quarantined; nothing was
	// written, and Wait gives up.
	ErrRunNotRunning = rdb.ErrRunNotRunning
	// ErrChannelLimit: a key or value over the limits, or a new key past
	// ChannelMaxKeys. Nothing was written. The error is Permanent.
	ErrChannelLimit = rdb.ErrChannelLimit
	// ErrChannelType: an Append to a value that is not a JSON array, an
	// Incr of one that is not an integer or past int64. Nothing was
	// written. The error is Permanent.
	ErrChannelType = rdb.ErrChannelType
)

// errNoChannel is returned by the methods of the nil Channel of a Task
// the worker did not claim (built by hand).
var errNoChannel = errors.New("worker: Channel of a task the worker did not claim")

// Channel is a task's access to its run's channel: a key/value store of
// JSON values that every task of the run, on any worker, reads and writes
// (Task.Channel). Each write is one script on the run's slot that checks
// the task still holds its claim (a worker whose claim was reclaimed, a
// zombie, cannot write) and appends channel_written to the run's log with
// the key's new value, so replay, verify and export see every write. Last
// write wins; Append and Incr are atomic read-modify-writes. Values stay
// readable after the run (Client.Channel, "graflow status --channel")
// until the run expires or is collected.
//
// A task runs at least once: an attempt that is retried or reclaimed runs
// its writes again, and the earlier attempt's writes stay. Set is
// idempotent; Append and Incr are not (key them by task, or Set the
// outcome once).
//
// Safe for concurrent use; the writes of one task attempt go one at a
// time (one round trip each, so writes from many goroutines of a handler
// do not overlap: a handler that writes much batches its values into
// fewer keys). A nil *Channel (a Task the worker did not claim) returns
// an error from every method.
type Channel struct {
	w       *Worker
	run     string
	task    string
	attempt int
	epoch   int64
	// writing is held (a token in it) through a write and its retries:
	// the write script keeps the claim's last write to tell a retry from
	// a new write, so one write of a claim is in flight at a time. A write
	// waiting for it gives up when its context does.
	writing chan struct{}
}

// channelOf returns the channel of a task attempt the worker claimed at
// epoch.
func (w *Worker) channelOf(run, task string, attempt int, epoch int64) *Channel {
	return &Channel{w: w, run: run, task: task, attempt: attempt, epoch: epoch, writing: make(chan struct{}, 1)}
}

// Channel returns the channel of the task's run, writing as this task
// attempt; nil for a Task the worker did not claim.
func (t *Task) Channel() *Channel { return t.channel }

// Set sets key to v's JSON encoding (json.RawMessage is written as is).
// Errors: ErrStaleClaim (wrapping ErrRunCancelled when the run was
// cancelled), ErrRunNotRunning, ErrChannelLimit, and a Permanent error
// for a v that does not encode; Redis errors are returned as they come
// (a write is not retried: retry the task).
func (c *Channel) Set(ctx context.Context, key string, v any) error {
	raw, err := c.encode(key, v)
	if err != nil {
		return err
	}
	_, err = c.write(ctx, rdb.ChannelWrite{Op: rdb.ChannelOpSet, Key: key, Value: raw})
	return err
}

// Append appends v's JSON encoding to the JSON array at key (a key
// without a value becomes [v]). Errors as Set's, and ErrChannelType when
// the value is not an array.
func (c *Channel) Append(ctx context.Context, key string, v any) error {
	raw, err := c.encode(key, v)
	if err != nil {
		return err
	}
	_, err = c.write(ctx, rdb.ChannelWrite{Op: rdb.ChannelOpAppend, Key: key, Value: raw})
	return err
}

// Incr adds delta to the integer at key (a key without a value counts as
// 0) and returns the new value. Errors as Set's, and ErrChannelType when
// the value is not an integer or the sum overflows int64.
func (c *Channel) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	if c == nil {
		return 0, errNoChannel
	}
	res, err := c.write(ctx, rdb.ChannelWrite{Op: rdb.ChannelOpIncr, Key: key, Delta: delta})
	return res.Value, err
}

// Get decodes key's value into out and reports whether the key has one
// (out is untouched when it has none). A value that does not decode into
// out is a Permanent error.
func (c *Channel) Get(ctx context.Context, key string, out any) (bool, error) {
	if c == nil {
		return false, errNoChannel
	}
	var v string
	var ok bool
	err := c.w.redisRetry(ctx, func() (err error) {
		v, ok, err = c.w.db.ChannelGet(ctx, c.run, key)
		return err
	})
	if err != nil || !ok {
		return false, err
	}
	return true, bind(json.RawMessage(v), out, "channel key "+key)
}

// Keys returns the keys of the run's channel, sorted.
func (c *Channel) Keys(ctx context.Context) ([]string, error) {
	if c == nil {
		return nil, errNoChannel
	}
	var keys []string
	err := c.w.redisRetry(ctx, func() (err error) {
		keys, err = c.w.db.ChannelKeys(ctx, c.run)
		return err
	})
	return keys, err
}

// Wait returns key's value (JSON) as soon as the key has one: at once if
// it has, else when a task of the run writes it. It blocks on the run's
// log (XREAD BLOCK from the log's last entry, for a channel_written of
// key); it does not poll. It returns ctx's error when ctx ends first (the
// handler's context ends on the task's timeout, a lost claim or a
// cancelled run), and an error wrapping ErrRunNotRunning when the run
// ends or is set aside first. Give the task a timeout if the writer may
// never write.
func (c *Channel) Wait(ctx context.Context, key string) (json.RawMessage, error) {
	if c == nil {
		return nil, errNoChannel
	}
	// A transient error (Redis restarting, a master failing over) is
	// retried for as long as the wait may last: until ctx ends. Without
	// it one refused read failed the task for good.
	var v json.RawMessage
	err := retry.Do(ctx, retry.Policy{Initial: 20 * time.Millisecond, Max: 2 * time.Second}, func() (err error) {
		v, err = c.w.db.ChannelWait(ctx, c.run, key, c.w.cfg.FetchBlock)
		return err
	})
	return v, err
}

// ChannelGet returns key's value in ch decoded as a T, and whether the key
// has one (see Channel.Get).
func ChannelGet[T any](ctx context.Context, ch *Channel, key string) (T, bool, error) {
	var v T
	ok, err := ch.Get(ctx, key, &v)
	return v, ok, err
}

// ChannelWait waits for key's value in ch (see Channel.Wait) and returns
// it decoded as a T. A value that does not decode is a Permanent error.
func ChannelWait[T any](ctx context.Context, ch *Channel, key string) (T, error) {
	var v T
	raw, err := ch.Wait(ctx, key)
	if err != nil {
		return v, err
	}
	return v, bind(raw, &v, "channel key "+key)
}

func (c *Channel) encode(key string, v any) (json.RawMessage, error) {
	if c == nil {
		return nil, errNoChannel
	}
	raw, err := json.Marshal(v) // compact, and a RawMessage is checked
	if err != nil {
		return nil, Permanent(fmt.Errorf("channel key %s: encode the value: %w", key, err))
	}
	return raw, nil
}

// write runs one write as this claim.
func (c *Channel) write(ctx context.Context, w rdb.ChannelWrite) (rdb.ChannelWritten, error) {
	w.Run, w.Task, w.Worker, w.Attempt, w.Epoch = c.run, c.task, c.w.cfg.ID, c.attempt, c.epoch
	now := c.w.cfg.Clock.Now()
	w.EventID, w.RejectID, w.TimeMS = events.NewID(now), events.NewID(now), now.UnixMilli()
	// A refused connection (a master failing over) is retried with the
	// same event id: a write that took effect before its reply was lost is
	// found as the claim's last write and not applied twice.
	select {
	case c.writing <- struct{}{}:
		defer func() { <-c.writing }()
	case <-ctx.Done():
		return rdb.ChannelWritten{}, ctx.Err()
	}
	var res rdb.ChannelWritten
	err := c.w.redisRetry(ctx, func() (err error) {
		res, err = c.w.db.WriteChannel(ctx, w)
		return err
	})
	var stale *rdb.StaleError
	switch {
	case err == nil:
		return res, nil
	case errors.As(err, &stale) && stale.Status == string(events.TaskStatusCancelled):
		return res, fmt.Errorf("%w: %w", ErrRunCancelled, err)
	case errors.Is(err, ErrChannelLimit), errors.Is(err, ErrChannelType):
		return res, Permanent(err)
	}
	return res, err
}
