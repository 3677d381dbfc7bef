package rdb

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/redis/go-redis/v9"
)

// The projector's flow: reading the feed (acks and XAUTOCLAIM included),
// reading runs' heads and logs, moving due dispatches from the delayed sets
// to their queues, and setting aside a run that cannot be folded. The
// commit is in project_commit.go.

// ReadGroup reads new (start ">") or own pending (start "0") entries of
// streams for consumer of group: at most count per stream, blocking up to
// block when block > 0 (block < 0: no BLOCK; 0 would block forever and is
// not allowed). No entries is nil, nil.
func (d DB) ReadGroup(ctx context.Context, group, consumer string, streams []string, start string, count int, block time.Duration) ([]Stream, error) {
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
func (d DB) AckFeed(ctx context.Context, stream string, ids []string, next *FeedRead) (msgs []Message, ackErr, readErr error) {
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

// PendingPast reports whether stream holds an entry of group pending
// longer than minIdle (XPENDING with IDLE, one entry). A stream or group
// that does not exist holds none.
func (d DB) PendingPast(ctx context.Context, stream, group string, minIdle time.Duration) (bool, error) {
	p, err := d.C.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: group, Idle: minIdle, Start: "-", End: "+", Count: 1}).Result()
	if IsNoGroup(err) {
		return false, nil
	}
	return len(p) > 0, err
}

// LoadRun reads run's head and the first count entries of its log in one
// round trip (the head first: a commit in between makes the caller's
// commit conflict). status is the run's @status.
func (d DB) LoadRun(ctx context.Context, run string, count int) (head Head, status string, msgs []Message, err error) {
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
func (d DB) LogPageAfter(ctx context.Context, run, after string, count int) ([]Message, error) {
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
	Msgs    []Message
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

// DueDispatches returns up to n members of partition part's delayed set
// due at nowMS, and the due time of the earliest one left (0: none).
func (d DB) DueDispatches(ctx context.Context, part int, nowMS int64, n int) (due []string, next int64, err error) {
	pipe := d.C.Pipeline()
	dueCmd := pipe.ZRangeArgs(ctx, redis.ZRangeArgs{
		Key: d.K.Delayed(part), Start: "-inf", Stop: strconv.FormatInt(nowMS, 10), ByScore: true, Count: int64(n),
	})
	first := pipe.ZRangeWithScores(ctx, d.K.Delayed(part), 0, 0)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, 0, err
	}
	if f := first.Val(); len(f) > 0 && int64(f[0].Score) > nowMS {
		next = int64(f[0].Score)
	}
	return dueCmd.Val(), next, nil
}

// delayedMoveScript moves due dispatches from a partition's delayed set to
// their queue streams: each member is removed first and queued only if
// this call removed it, so two movers never queue one dispatch twice. A
// member whose target holds another type than a stream (a key written by
// hand or another application) is not moved but parked until later (its
// score set to ARGV[2]) and reported: the others of the page move, and it
// moves once its key is fixed.
//
// KEYS: 1 the delayed set, then the target queue streams
// ARGV: 1 n, 2 when to look at a stuck member again (ms), then n x
// (member, target key index, run, task, attempt, traceparent or "")
// Reply: {moved, the stuck members' target keys and members, in pairs}
var delayedMoveScript = redis.NewScript(enqueueLua + `
local typeof = {}
local moved, stuck = 0, {}
for i = 0, tonumber(ARGV[1]) - 1 do
  local a = 3 + 6 * i
  local key = KEYS[tonumber(ARGV[a + 1])]
  local t = typeof[key]
  if not t then
    t = redis.call('TYPE', key)['ok']
    typeof[key] = t
  end
  if t ~= 'stream' and t ~= 'none' then
    -- Checked before the ZREM: a ZREM followed by a failed XADD would
    -- lose the dispatch.
    if redis.call('ZSCORE', KEYS[1], ARGV[a]) then -- not moved by another mover
      redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[a])
      stuck[#stuck + 1] = key
      stuck[#stuck + 1] = ARGV[a]
    end
  elseif redis.call('ZREM', KEYS[1], ARGV[a]) == 1 then
    enqueue(key, ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5])
    typeof[key] = 'stream'
    moved = moved + 1
  end
end
return {moved, unpack(stuck)}
`)

// StuckDispatch is a due dispatch the delayed mover could not queue: its
// queue key holds another type than a stream. It stays in the delayed set,
// due again at the time MoveDue was given.
type StuckDispatch struct {
	Member, Queue string
}

// MoveDue queues the delayed-set members of partition part (from
// DueDispatches) on their queue streams, each exactly once (see
// delayedMoveScript). Malformed members are removed and returned; members
// whose queue key holds another type are parked until retryMS and
// returned as stuck.
func (d DB) MoveDue(ctx context.Context, part int, members []string, retryMS int64) (moved int64, malformed []string, stuck []StuckDispatch, err error) {
	keys := []string{d.K.Delayed(part)}
	var targets keyIndex
	args := []any{0, retryMS}
	n := 0
	for _, m := range members {
		x, err := ParseDispatch(m)
		if err != nil {
			malformed = append(malformed, m)
			continue
		}
		args = append(args, m, targets.of(&keys, d.K.Queue(part, x.Pool, x.Priority)), x.Run, x.Task, strconv.Itoa(x.Attempt), x.Trace)
		n++
	}
	if len(malformed) > 0 {
		ms := make([]any, len(malformed))
		for i, m := range malformed {
			ms[i] = m
		}
		if err := d.C.ZRem(ctx, d.K.Delayed(part), ms...).Err(); err != nil {
			return 0, malformed, nil, err
		}
	}
	if n == 0 {
		return 0, malformed, nil, nil
	}
	args[0] = n
	reply, err := delayedMoveScript.Run(ctx, d.C, keys, args...).Slice()
	if err != nil {
		return 0, malformed, nil, err
	}
	if len(reply) == 0 {
		return 0, malformed, nil, fmt.Errorf("delayed_move: an empty reply")
	}
	moved, _ = reply[0].(int64)
	for i := 1; i+1 < len(reply); i += 2 {
		q, _ := reply[i].(string)
		m, _ := reply[i+1].(string)
		stuck = append(stuck, StuckDispatch{Member: m, Queue: q})
	}
	return moved, malformed, stuck, nil
}

// quarantineScript sets a running run aside for good: appends
// run_quarantined, sets @status to quarantined with the reason, and clears
// @dirty. A run that is not running is left as it is, but for its @dirty,
// cleared too: no projector will fold it again (its caller could not), and
// a dirty run is one garbage collection never takes.
//
// KEYS: 1 state, 2 log
// ARGV: 1 event id, 2 time ms, 3 writer, 4 body, 5 reason
// Reply: {"ok", seq} | {"not_running", status}
var quarantineScript = redis.NewScript(prelude + `
local st = redis.call('HGET', KEYS[1], '@status')
if st ~= 'running' then
  if st then redis.call('HDEL', KEYS[1], '@dirty') end
  return {'not_running', st or ''}
end
local seq = append(KEYS[2], ARGV[1], 'run_quarantined', '', 0, 0, ARGV[3], ARGV[4])
redis.call('HSET', KEYS[1], '@status', 'quarantined', '@quarantine', ARGV[5])
redis.call('HDEL', KEYS[1], '@dirty')
return {'ok', seq}
`)

// Quarantine sets a running run aside for good (see quarantineScript) and
// indexes it in the namespace's quarantine hash. The index is written first
// (so whoever sees run_quarantined in the log finds the index entry too),
// and even when the run's own keys cannot be written (a key of the wrong
// type, no permission). done is false when the run was not running
// (nothing was appended); its index entry is then removed unless the run
// was quarantined already. err is the script's: the run was not dealt
// with (when the reply was lost, maybe it was; the script sent again
// finds the run set aside and appends nothing). indexErr is the index's
// alone: the run was dealt with.
func (d DB) Quarantine(ctx context.Context, run string, ev events.Event, reason string) (done bool, indexErr, err error) {
	indexErr = d.C.HSet(ctx, d.K.Quarantined(), run, reason).Err()
	res, err := quarantineScript.Run(ctx, d.C, []string{d.K.RunState(run), d.K.RunLog(run)},
		ev.ID, ev.Time.UnixMilli(), ev.Worker, string(ev.Body), reason).Slice()
	if err != nil {
		return false, indexErr, fmt.Errorf("quarantine run %s: %w", run, err)
	}
	if str(res, 0) == "not_running" && str(res, 1) != string(events.RunStatusQuarantined) && indexErr == nil {
		indexErr = d.C.HDel(ctx, d.K.Quarantined(), run).Err()
	}
	return str(res, 0) == "ok", indexErr, nil
}

// QuarantineReason returns why run was quarantined, from the namespace
// index ("" when it was not).
func (d DB) QuarantineReason(ctx context.Context, run string) (string, error) {
	s, err := d.C.HGet(ctx, d.K.Quarantined(), run).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	return s, err
}
