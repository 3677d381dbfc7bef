package rdb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// The projector's flow: reading the feed, reading runs' logs, committing.
// (The commit script and its wrapper are in scripts.go and rdb.go.)

// ReadGroup reads new (start ">") or own pending (start "0") entries of
// streams for consumer of group: at most count per stream, blocking up to
// block when block > 0 (block < 0: no BLOCK; 0 would block forever and is
// not allowed). No entries is nil, nil.
func (d DB) ReadGroup(ctx context.Context, group, consumer string, streams []string, start string, count int, block time.Duration) ([]redis.XStream, error) {
	if block == 0 {
		block = -1
	}
	args := make([]string, 0, 2*len(streams))
	args = append(args, streams...)
	for range streams {
		args = append(args, start)
	}
	res, err := d.C.XReadGroup(ctx, &redis.XReadGroupArgs{Group: group, Consumer: consumer, Streams: args, Count: int64(count), Block: block}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return res, err
}

// AckFeed acks and deletes feed entries ids of stream, and, with next,
// reads the next entries of next.Stream for next.Consumer (non-blocking),
// in one round trip. ackErr is the acks' error; readErr the read's (a
// NOGROUP read recreates the group). A read whose reply was lost may
// leave entries pending for the consumer.
func (d DB) AckFeed(ctx context.Context, stream string, ids []string, next *FeedRead) (msgs []redis.XMessage, ackErr, readErr error) {
	pipe := d.C.Pipeline()
	var acked []redis.Cmder
	if len(ids) > 0 {
		acked = append(acked, pipe.XAck(ctx, stream, GroupProjectors, ids...), pipe.XDel(ctx, stream, ids...))
	}
	var read *redis.XStreamSliceCmd
	if next != nil {
		read = pipe.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: GroupProjectors, Consumer: next.Consumer, Streams: []string{next.Stream, next.Start},
			Count: int64(next.Count), Block: -1,
		})
	}
	_, _ = pipe.Exec(ctx)
	var errs []error
	for _, c := range acked {
		errs = append(errs, c.Err())
	}
	if read != nil {
		res, err := read.Result()
		switch {
		case err == nil && len(res) > 0:
			msgs = res[0].Messages
		case err != nil && !errors.Is(err, redis.Nil):
			if IsNoGroup(err) {
				_ = d.EnsureGroup(ctx, next.Stream, GroupProjectors)
			}
			readErr = fmt.Errorf("read feed: %w", err)
		}
	}
	return msgs, errors.Join(errs...), readErr
}

// FeedRead asks AckFeed to read on.
type FeedRead struct {
	Stream, Start, Consumer string
	Count                   int
}

// IsNoGroup reports a NOGROUP error: the stream or its group is gone.
func IsNoGroup(err error) bool {
	return err != nil && len(err.Error()) >= 7 && err.Error()[:7] == "NOGROUP"
}

// AutoClaim takes over up to count entries of stream pending longer than
// minIdle (XAUTOCLAIM from start), for consumer of group. deleted lists
// the ids that were pending but are gone from the stream.
func (d DB) AutoClaim(ctx context.Context, stream, group, consumer string, minIdle time.Duration, start string, count int) (msgs []redis.XMessage, next string, deleted []string, err error) {
	return d.C.XAutoClaimWithDeleted(ctx, &redis.XAutoClaimArgs{
		Stream: stream, Group: group, Consumer: consumer, MinIdle: minIdle, Start: start, Count: int64(count),
	}).Result()
}

// LoadRun reads run's head and the first count entries of its log in one
// round trip (the head first: a commit in between makes the caller's
// commit conflict). status is the run's @status.
func (d DB) LoadRun(ctx context.Context, run string, count int) (head Head, status string, msgs []redis.XMessage, err error) {
	pipe := d.C.Pipeline()
	hget := d.HeadCmd(ctx, pipe, run)
	first := pipe.XRangeN(ctx, d.K.RunLog(run), "-", "+", int64(count))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return Head{}, "", nil, fmt.Errorf("load run %s: %w", run, err)
	}
	head, err = ParseHead(hget)
	if err != nil {
		return Head{}, "", nil, fmt.Errorf("load run %s: %w", run, err)
	}
	return head, HeadStatus(hget), first.Val(), nil
}

// LogPageAfter reads up to count entries of run's log after id after ("":
// from the start).
func (d DB) LogPageAfter(ctx context.Context, run, after string, count int) ([]redis.XMessage, error) {
	start := "-"
	if after != "" {
		start = "(" + after
	}
	msgs, err := d.C.XRangeN(ctx, d.K.RunLog(run), start, "+", int64(count)).Result()
	if err != nil {
		return nil, fmt.Errorf("read log of run %s: %w", run, err)
	}
	return msgs, nil
}

// RunRead is one run's share of ReadRuns: its log after After, and its
// head too when Head is set (a run not cached).
type RunRead struct {
	Run, After string
	Head       bool
	// Results.
	HeadVal Head
	Status  string
	Msgs    []redis.XMessage
	Err     error
}

// ReadRuns reads several runs' logs (and heads) in one round trip, up to
// count entries each; each RunRead gets its own result or error.
func (d DB) ReadRuns(ctx context.Context, rs []RunRead, count int) {
	pipe := d.C.Pipeline()
	heads := make([]*redis.SliceCmd, len(rs))
	reads := make([]*redis.XMessageSliceCmd, len(rs))
	for i, r := range rs {
		start := "-"
		if r.Head {
			heads[i] = d.HeadCmd(ctx, pipe, r.Run)
		} else if r.After != "" {
			start = "(" + r.After
		}
		reads[i] = pipe.XRangeN(ctx, d.K.RunLog(r.Run), start, "+", int64(count))
	}
	_, _ = pipe.Exec(ctx) // errors are read per command
	for i := range rs {
		r := &rs[i]
		if r.Msgs, r.Err = reads[i].Result(); r.Err != nil {
			continue
		}
		if heads[i] != nil {
			r.HeadVal, r.Err = ParseHead(heads[i])
			r.Status = HeadStatus(heads[i])
		}
	}
}

// Commits runs the commit script for several runs in one round trip (see
// Pipelined: a NOSCRIPT loads the scripts and sends them again).
// results[i] and errs[i] are runs[i]'s; err is set when ctx ended.
func (d DB) Commits(ctx context.Context, runs []string, cs []Commit) (results []CommitResult, errs []error, err error) {
	cmds := make([]*redis.Cmd, len(runs))
	err = d.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, run := range runs {
			cmds[i] = d.CommitCmd(ctx, pipe, run, cs[i])
		}
		return nil
	})
	if err != nil && ctx.Err() != nil {
		return nil, nil, err
	}
	results, errs = make([]CommitResult, len(runs)), make([]error, len(runs))
	for i, run := range runs {
		results[i], errs[i] = ParseCommit(run, cmds[i])
	}
	return results, errs, nil
}

// BeatNow writes a registry record now (see Beat).
func (r Registry) BeatNow(ctx context.Context, c redis.UniversalClient, id string, fields map[string]any, now time.Time, ttl time.Duration) error {
	pipe := c.Pipeline() // different slots: no MULTI
	r.Beat(ctx, pipe, id, fields, now, ttl)
	_, err := pipe.Exec(ctx)
	return err
}
