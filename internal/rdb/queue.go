package rdb

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// The worker's flow: reading the queues, claims and outcomes in batches,
// heartbeats, reclaims. (The scripts and their single-call wrappers are in
// scripts.go and rdb.go.) Every batch here is one round trip; every script
// in it is safe to repeat, so a caller may retry an item alone.

// ClaimGroups runs one claim script call per group (claims of one run) in
// one round trip: results[g] and errs[g] are group g's.
func (d DB) ClaimGroups(ctx context.Context, groups [][]ClaimArgs) (results [][]ClaimResult, errs []error) {
	pipe := d.C.Pipeline()
	cmds := make([]*redis.Cmd, len(groups))
	for g, as := range groups {
		cmds[g] = d.ClaimsCmd(ctx, pipe, as)
	}
	_, _ = pipe.Exec(ctx)
	results, errs = make([][]ClaimResult, len(groups)), make([]error, len(groups))
	for g, as := range groups {
		results[g], errs[g] = ParseClaims(as, cmds[g])
	}
	return results, errs
}

// FinishGroups runs one finish script call per group (outcomes of one run
// whose messages are on one stream) in one round trip.
func (d DB) FinishGroups(ctx context.Context, groups [][]FinishArgs) (results [][]FinishOutcome, errs []error) {
	pipe := d.C.Pipeline()
	cmds := make([]*redis.Cmd, len(groups))
	for g, as := range groups {
		cmds[g] = d.FinishesCmd(ctx, pipe, as)
	}
	_, _ = pipe.Exec(ctx)
	results, errs = make([][]FinishOutcome, len(groups)), make([]error, len(groups))
	for g, as := range groups {
		results[g], errs[g] = ParseFinishes(as, cmds[g])
	}
	return results, errs
}

// DeadLetterItem is one task to dead-letter.
type DeadLetterItem struct {
	Run, Task string
	TimeMS    int64
	Info      DeadLetterDetails
}

// RecordDeadLetters records dead letters and then points the feed at runs,
// in one round trip (a set: recording one twice is harmless; the pointers
// follow the dead letters, so a projector that ends a run finds them).
func (d DB) RecordDeadLetters(ctx context.Context, items []DeadLetterItem, point []string) error {
	if len(items) == 0 && len(point) == 0 {
		return nil
	}
	pipe := d.C.Pipeline()
	for _, it := range items {
		d.DeadLetter(ctx, pipe, it.Run, it.Task, it.TimeMS, it.Info)
	}
	for _, run := range point {
		d.PointFeed(ctx, pipe, run)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// QueueAcks acks the message ids of each stream that are pending for
// consumer (owner-checked, see queueAckScript), one round trip.
func (d DB) QueueAcks(ctx context.Context, consumer string, ids map[string][]string) error {
	if len(ids) == 0 {
		return nil
	}
	pipe := d.C.Pipeline()
	for stream, list := range ids {
		d.QueueAck(ctx, pipe, stream, consumer, list...)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// Redeliver points the feed at run again and, for a task found failed on
// redelivery, records its dead letter (one round trip): what a reporter
// that died after recording its outcome may have left undone.
func (d DB) Redeliver(ctx context.Context, run string, dead *DeadLetterItem) error {
	pipe := d.C.Pipeline()
	d.PointFeed(ctx, pipe, run)
	if dead != nil {
		d.DeadLetter(ctx, pipe, dead.Run, dead.Task, dead.TimeMS, dead.Info)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// MoveItem is a pending message to give back to its pool (see QueueMove).
type MoveItem struct {
	Stream, ID string
	Dispatch   Dispatch
}

// QueueMoves gives messages pending for consumer back to their pools, one
// round trip.
func (d DB) QueueMoves(ctx context.Context, consumer string, items []MoveItem) error {
	if len(items) == 0 {
		return nil
	}
	pipe := d.C.Pipeline()
	for _, it := range items {
		d.QueueMove(ctx, pipe, it.Stream, consumer, it.ID, it.Dispatch)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// Deliveries reads each message's delivery count (XPENDING), one round
// trip; 0 for a message no longer pending.
func (d DB) Deliveries(ctx context.Context, stream string, ids []string) []int64 {
	out := make([]int64, len(ids))
	if len(ids) == 0 {
		return out
	}
	pipe := d.C.Pipeline()
	cmds := make([]*redis.XPendingExtCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: GroupWorkers, Start: id, End: id, Count: 1})
	}
	_, _ = pipe.Exec(ctx)
	for i, c := range cmds {
		if p, err := c.Result(); err == nil && len(p) == 1 {
			out[i] = p[0].RetryCount
		}
	}
	return out
}

// HeartbeatItem is one claim to heartbeat: the heartbeat script, then the
// owner-checked touch of its queue message.
type HeartbeatItem struct {
	Args          HeartbeatArgs
	Stream, MsgID string
}

// HeartbeatOutcome is one HeartbeatItem's reply: the heartbeat's error
// (ErrStaleClaim when the claim was lost) and the touch's result (1
// touched, 0 not pending, -1 pending for another consumer).
type HeartbeatOutcome struct {
	Err     error
	Touched int64
}

// Heartbeats sends the heartbeats of a worker's claims and its registry
// record in one round trip (a NOSCRIPT loads the scripts for next time).
func (d DB) Heartbeats(ctx context.Context, consumer string, items []HeartbeatItem, beat *Beat) []HeartbeatOutcome {
	pipe := d.C.Pipeline()
	hb := make([]*redis.Cmd, len(items))
	touches := make([]*redis.Cmd, len(items))
	for i, it := range items {
		hb[i] = d.Heartbeat(ctx, pipe, it.Args)
		touches[i] = d.QueueTouch(ctx, pipe, it.Stream, consumer, it.MsgID)
	}
	if beat != nil {
		beat.Registry.Beat(ctx, pipe, beat.ID, beat.Fields, beat.Now, beat.TTL)
	}
	if _, err := pipe.Exec(ctx); IsNoScript(err) {
		_ = d.LoadScripts(ctx)
	}
	out := make([]HeartbeatOutcome, len(items))
	for i := range items {
		out[i].Err = HeartbeatResult(hb[i])
		out[i].Touched, _ = touches[i].Int64()
	}
	return out
}

// Beat is one registry record to write (see Registry.Beat).
type Beat struct {
	Registry Registry
	ID       string
	Fields   map[string]any
	Now      time.Time
	TTL      time.Duration
}
