package rdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The worker's flow around a claim, besides the claim (queue_claim.go) and
// the outcome (queue_finish.go): heartbeats (the heartbeat script and the
// owner-checked touch of the message), owner-checked acks, handing a claim
// back and moving messages, redeliveries and dead letters. Every batch here
// is one round trip; every script in it is safe to repeat, so a caller may
// retry an item alone.

// ErrStaleClaim is returned when a worker reports on a claim it no longer
// holds (its lease was reclaimed and the epoch moved on). Nothing it sent
// changed state; the rejection is recorded in the log as result_rejected.
var ErrStaleClaim = errors.New("stale claim: the task was reclaimed by another worker (epoch moved on)")

// StaleError details an ErrStaleClaim.
type StaleError struct {
	Status string
	Epoch  string
	Owner  string
}

func (e *StaleError) Error() string {
	return fmt.Sprintf("%v: task is %s at epoch %s owned by %q", ErrStaleClaim, e.Status, e.Epoch, e.Owner)
}

func (e *StaleError) Unwrap() error { return ErrStaleClaim }

// HeartbeatArgs are the inputs of a heartbeat.
type HeartbeatArgs struct {
	Run, Task, Worker string
	Attempt           int
	Epoch             int64
	EventID, RejectID string
	TimeMS            int64
	Body              []byte
	Append            bool
}

// heartbeatScript checks that the caller still holds the claim and, when
// asked, appends task_heartbeat. A stale caller is recorded as
// result_rejected.
//
// KEYS: 1 state, 2 log
// ARGV: 1 task, 2 attempt, 3 epoch, 4 worker, 5 event id, 6 time ms,
//
//	7 body, 8 append 0|1, 9 rejection event id
//
// Reply: {"ok"} | {"done"} (the caller's own claim already finished: a
// heartbeat that raced its completion) | {"stale", status, epoch, owner}
var heartbeatScript = redis.NewScript(prelude + `
local att, ep = tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('HEXISTS', KEYS[1], '@status') == 0 then
  if not loggedend(KEYS[2]) then return {'stale', 'missing', '0', ''} end
  -- A succeeded run keeps only its log: its task ended, as its last
  -- event says.
  local _, e, o = lasttask(KEYS[2], ARGV[1])
  if e == ep and o == ARGV[4] then return {'done'} end
  local st
  st, e, o = rejectlate(KEYS[2], ARGV[9], 'heartbeat', ARGV[1], att, ep, ARGV[4])
  return {'stale', st, tostring(e), o}
end
local st, a, e, o = getrec(KEYS[1], ARGV[1])
if (st ~= 'running' and e == ep and o == ARGV[4]) or (st == 'pending' and a == att and e == ep and o == '') then
  -- Same epoch and owner: nobody took the claim over; it ended with the
  -- caller's own outcome (maybe already followed by a retry dispatch,
  -- which keeps epoch and owner). Pending at the claim's attempt and
  -- epoch with no owner: it ended failed, and was requeued since. A
  -- heartbeat that raced it is benign.
  return {'done'}
end
if st ~= 'running' or a ~= att or e ~= ep or o ~= ARGV[4] then
  append(KEYS[2], ARGV[9], 'result_rejected', ARGV[1], att, ep, ARGV[4],
    cjson.encode({what = 'heartbeat', reason = 'claim lost: task is ' .. st .. ' at epoch ' .. tostring(e), current_epoch = e}))
  return {'stale', st, tostring(e), o}
end
if ARGV[8] == '1' then
  append(KEYS[2], ARGV[5], 'task_heartbeat', ARGV[1], a, e, ARGV[4], ARGV[7])
end
return {'ok'}
`)

// Heartbeat runs the heartbeat script (pipelineable: pass a pipeliner and
// read the command's result after Exec with HeartbeatResult).
func (d DB) Heartbeat(ctx context.Context, p redis.Scripter, a HeartbeatArgs) *redis.Cmd {
	app := "0"
	if a.Append {
		app = "1"
	}
	return heartbeatScript.Run(ctx, p, []string{d.K.RunState(a.Run), d.K.RunLog(a.Run)},
		a.Task, a.Attempt, a.Epoch, a.Worker, a.EventID, a.TimeMS, string(a.Body), app, a.RejectID)
}

// HeartbeatResult interprets a heartbeat command's reply.
func HeartbeatResult(cmd *redis.Cmd) error {
	res, err := cmd.Slice()
	if err != nil {
		return err
	}
	if str(res, 0) == "stale" {
		return &StaleError{Status: str(res, 1), Epoch: str(res, 2), Owner: str(res, 3)}
	}
	return nil
}

// queueTouchScript resets a pending message's idle time (the lease) if it is
// pending for this consumer: an owner-checked XCLAIM ... JUSTID.
//
// A pending entry deleted from the stream (an XDEL or XTRIM by hand) is
// left alone: XCLAIM would drop it from the pending list without a word,
// and with it the one trace a reclaimer finds when its holder dies (the
// reclaim script then requests the repair that hands the task back).
// XAUTOCLAIM reports a deleted pending entry whatever its idle time, so
// the next reclaim of any worker finds it, even while its holder lives.
//
// KEYS: 1 queue stream
// ARGV: 1 group, 2 consumer, 3 message id, 4 "d" to have a touch reply
// the message's delivery count
// Reply: 1 touched (with "d": its delivery count, 1 or more), 0 not
// pending, -1 pending for another consumer, -2 pending for this consumer
// but deleted from the stream (not touched)
var queueTouchScript = redis.NewScript(`
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] then return -1 end
if #redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3]) == 0 then return -2 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
if ARGV[4] == 'd' then return p[1][4] end
return 1
`)

// QueueTouch resets the idle time of a message pending for consumer.
func (d DB) QueueTouch(ctx context.Context, p redis.Scripter, stream, consumer, id string) *redis.Cmd {
	return queueTouchScript.Run(ctx, p, []string{stream}, GroupWorkers, consumer, id)
}

// HeartbeatItem is one claim to heartbeat: the heartbeat script, then the
// owner-checked touch of its queue message.
type HeartbeatItem struct {
	Args          HeartbeatArgs
	Stream, MsgID string
}

// HeartbeatOutcome is one HeartbeatItem's reply: the heartbeat's error
// (ErrStaleClaim when the claim was lost) and the touch's result (1
// touched, 0 not pending, -1 pending for another consumer, -2 deleted from
// the stream while pending: see queueTouchScript).
type HeartbeatOutcome struct {
	Err     error
	Touched int64
	// TouchErr is the touch's own error (Touched is then 0), but for a
	// stream or group gone (NOGROUP), which is Touched 0: pending for
	// nobody.
	TouchErr error
	// Done: the claim had already ended with the caller's own outcome (a
	// heartbeat that raced the finish).
	Done bool
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
		if n, err := touches[i].Int64(); err == nil || IsNoGroup(err) {
			out[i].Touched = n
		} else {
			out[i].TouchErr = err
		}
		if res, err := hb[i].Slice(); err == nil {
			out[i].Done = str(res, 0) == "done"
		}
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

// queueAckScript acknowledges and deletes a queue message only if it is
// pending for this consumer. XACK takes no consumer name, so a blind XACK
// from a worker that lost its claim would drop a reclaimed message.
//
// With a delivery count above 0 it also leaves alone a message delivered
// more often than that: a reclaimer took it over since the caller read it
// (see AckMessage).
//
// KEYS: 1 queue stream
// ARGV: 1 group, 2 consumer, 3 delivery count (0: any), 4... message ids
// Reply: per id, 1 acked, 0 not pending, -1 pending for another consumer,
// -2 pending for the consumer but delivered more often than ARGV 3 says
var queueAckScript = redis.NewScript(ackLua + `
local ids = {}
for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
local bad = badids(ids)
if bad then return bad end
return ackmine(KEYS[1], ARGV[1], ARGV[2], ids, ARGV[3])
`)

// ackCopyScript acks a second message of an attempt the caller runs (a
// repair's or a hand-back's copy) only while the caller's claim of that
// attempt still holds: once the claim was handed back (a repair of a claim
// whose entry was lost, a release), the copy may be the task's only
// message, and it stays pending for the reclaim.
//
// KEYS: 1 the copy's stream, 2 the run's state
// ARGV: 1 group, 2 consumer, 3 the copy's id, 4 task, 5 attempt, 6 the
// claim's epoch
// Reply: 1 acked, 0 the claim no longer holds (left pending), -1 the copy
// is not pending for the caller
var ackCopyScript = redis.NewScript(prelude + `
local st, a, e, o = getrec(KEYS[2], ARGV[4])
if st ~= 'running' or a ~= tonumber(ARGV[5]) or e ~= tonumber(ARGV[6]) or o ~= ARGV[2] then return 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return -1 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
`)

// AckCopy acks consumer's copy id on stream of run's task attempt while
// consumer's claim at epoch holds it (see ackCopyScript).
func (d DB) AckCopy(ctx context.Context, stream, consumer, id, run, task string, attempt int, epoch int64) (int64, error) {
	return ackCopyScript.Run(ctx, d.C, []string{stream, d.K.RunState(run)}, GroupWorkers, consumer, id, task, attempt, epoch).Int64()
}

// QueueAck acks and deletes queue messages of one stream that are pending
// for consumer (others are left alone). ids are full stream ids ("ms-seq",
// as XREADGROUP and XAUTOCLAIM return them), each once.
func (d DB) QueueAck(ctx context.Context, p redis.Scripter, stream, consumer string, ids ...string) *redis.Cmd {
	return d.queueAck(ctx, p, stream, consumer, 0, ids...)
}

func (d DB) queueAck(ctx context.Context, p redis.Scripter, stream, consumer string, deliveries int64, ids ...string) *redis.Cmd {
	argv := make([]any, 0, 3+len(ids))
	argv = append(argv, GroupWorkers, consumer, deliveries)
	for _, id := range ids {
		argv = append(argv, id)
	}
	return queueAckScript.Run(ctx, p, []string{stream}, argv...)
}

// releaseScript hands a claim back (a draining worker that cannot finish):
// if the caller still holds it, the epoch is bumped, the task is dispatched
// again for the same attempt and task_reclaimed records why.
//
// With a queue stream (KEYS[3]) it also queues the fresh message itself,
// in the same step, and with the caller's message (KEYS[4], ARGV[9]) it
// acks that one too if it is pending for the caller (owner-checked): the
// task is never left dispatched without a message, whatever became of the
// caller's (a worker's hand-back), or of the caller (a repair).
//
// KEYS: 1 state, 2 log, 3 the queue stream of the fresh message (optional),
// 4 the stream of the caller's message (optional, with KEYS[3])
// ARGV: 1 task, 2 attempt, 3 epoch, 4 worker, 5 event id, 6 time ms, 7 run
// and 8 traceparent of the fresh message (with KEYS[3]), 9 the caller's
// message id (with KEYS[4])
// Reply: {"ok"} | {"stale", status, epoch, owner}
var releaseScript = redis.NewScript(prelude + enqueueLua + `
local st, a, e, o = getrec(KEYS[1], ARGV[1])
if st ~= 'running' or a ~= tonumber(ARGV[2]) or e ~= tonumber(ARGV[3]) or o ~= ARGV[4] then
  return {'stale', st, tostring(e), o}
end
if KEYS[3] then
  local bad = notwritable(KEYS[3], 'stream')
  if bad then return bad end
end
-- Whether the caller's message is still its own, read before any write:
-- a stream deleted by hand has no group (XPENDING would fail after the
-- writes, and a script's writes stay when it fails).
local mine = false
if KEYS[4] then
  local p = redis.pcall('XPENDING', KEYS[4], '` + GroupWorkers + `', ARGV[9], ARGV[9], 1)
  mine = type(p) == 'table' and p.err == nil and #p == 1 and p[1][2] == ARGV[4]
end
e = e + 1
-- The event first: on a log of the wrong type nothing is written.
append(KEYS[2], ARGV[5], 'task_reclaimed', ARGV[1], a, e, ARGV[4],
  cjson.encode({from = ARGV[4], reason = 'handed back'}))
setrec(KEYS[1], ARGV[1], 'dispatched', a, e, '')
if KEYS[3] then enqueue(KEYS[3], ARGV[7], ARGV[1], ARGV[2], ARGV[8]) end
if mine then redis.call('XACK', KEYS[4], '` + GroupWorkers + `', ARGV[9]) end
return {'ok'}
`)

// Release hands a claim back (see releaseScript); the caller queues the
// fresh message.
func (d DB) Release(ctx context.Context, run, task, worker string, attempt int, epoch int64, eventID string, timeMS int64) error {
	return d.release(ctx, run, task, worker, attempt, epoch, eventID, timeMS, nil, "", "")
}

// ReleaseAndDispatch hands a claim back and queues x, its fresh message,
// in one step (see releaseScript).
func (d DB) ReleaseAndDispatch(ctx context.Context, worker string, epoch int64, eventID string, timeMS int64, x Dispatch) error {
	return d.release(ctx, x.Run, x.Task, worker, x.Attempt, epoch, eventID, timeMS, &x, "", "")
}

// HandBack hands worker's claim back, queues x, its fresh message, and
// acks worker's own message id on stream (if it is still pending for
// worker), in one step (see releaseScript).
func (d DB) HandBack(ctx context.Context, worker string, epoch int64, eventID string, timeMS int64, x Dispatch, stream, id string) error {
	return d.release(ctx, x.Run, x.Task, worker, x.Attempt, epoch, eventID, timeMS, &x, stream, id)
}

func (d DB) release(ctx context.Context, run, task, worker string, attempt int, epoch int64, eventID string, timeMS int64, x *Dispatch, stream, id string) error {
	keys := []string{d.K.RunState(run), d.K.RunLog(run)}
	argv := []any{task, attempt, epoch, worker, eventID, timeMS}
	if x != nil {
		keys = append(keys, d.K.QueueFor(run, x.Pool, x.Priority))
		argv = append(argv, run, x.Trace)
		if stream != "" {
			keys = append(keys, stream)
			argv = append(argv, id)
		}
	}
	res, err := releaseScript.Run(ctx, d.C, keys, argv...).Slice()
	if err != nil {
		return fmt.Errorf("release %s/%s: %w", run, task, err)
	}
	if str(res, 0) == "stale" {
		return &StaleError{Status: str(res, 1), Epoch: str(res, 2), Owner: str(res, 3)}
	}
	return nil
}

// queueMoveScript gives a message back to the pool: it queues a fresh copy
// (on the band stream KEYS[2]) and acks the old one (see ackLua), only if
// the old one is pending for this consumer — atomically, so the old message
// is never acked without its replacement (two streams of one pool share a
// slot).
//
// KEYS: 1 the message's stream, 2 the stream for the copy
// ARGV: 1 group, 2 consumer, 3 message id, 4 run, 5 task, 6 attempt,
// 7 traceparent ("" or absent: none)
// Reply: 1 moved, 0 not pending, -1 pending for another consumer
var queueMoveScript = redis.NewScript(enqueueLua + `
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] then return -1 end
enqueue(KEYS[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
`)

// QueueMove gives a pending message back to the pool: a fresh copy on its
// band and the old one acked, atomically (see queueMoveScript).
func (d DB) QueueMove(ctx context.Context, p redis.Scripter, stream, consumer, id string, x Dispatch) *redis.Cmd {
	return queueMoveScript.Run(ctx, p, []string{stream, d.K.QueueFor(x.Run, x.Pool, x.Priority)},
		GroupWorkers, consumer, id, x.Run, x.Task, strconv.Itoa(x.Attempt), x.Trace)
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

// enqueueScript queues one dispatch (enqueue): a script, so that a
// message on a band above 0 and its pool's QueueHigh mark are one step (a
// fetch between a separate SET and XADD could delete the mark the message
// needs).
//
// KEYS: 1 the band stream
// ARGV: 1 run, 2 task, 3 attempt, 4 traceparent ("": none)
// Reply: the message id
var enqueueScript = redis.NewScript(enqueueLua + `
return enqueue(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
`)

// XAddDispatch queues a dispatch on its pool and band (pipelineable);
// Text() of the reply is the message id.
func (d DB) XAddDispatch(ctx context.Context, p redis.Scripter, x Dispatch) *redis.Cmd {
	return enqueueScript.Run(ctx, p, []string{d.K.QueueFor(x.Run, x.Pool, x.Priority)}, x.Run, x.Task, strconv.Itoa(x.Attempt), x.Trace)
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

// Redeliver records the dead letter of a task found failed on redelivery
// (dead, nil for none), then points the feed at run again and, in the same
// step, acks the redelivered message id of stream if it is still pending
// for consumer with at most deliveries deliveries (0: any; see
// AckMessage): what a reporter that died after recording its outcome may
// have left undone (see RecordDeadLetters for the order). acked is
// AckMessage's answer for the message.
func (d DB) Redeliver(ctx context.Context, run string, dead *DeadLetterItem, consumer, stream, id string, deliveries int64) (acked int64, err error) {
	var items []DeadLetterItem
	if dead != nil {
		items = append(items, *dead)
	}
	cmds, err := d.recordDeadLetters(ctx, consumer, items, []PointAck{{Run: run, Acks: map[string][]string{stream: {id}}, MaxDeliveries: deliveries}})
	if err != nil {
		return 0, err
	}
	lists, err := cmds[0].Slice() // one stream's list of one answer
	if err != nil {
		return 0, err
	}
	if len(lists) == 1 {
		if ns, ok := lists[0].([]any); ok && len(ns) == 1 {
			if n, ok := ns[0].(int64); ok {
				return n, nil
			}
		}
	}
	return 0, fmt.Errorf("redeliver %s: unexpected ack reply %v", run, lists)
}

// DeadLetterMember is a task's member in the dead-letter set.
func DeadLetterMember(run, task string) string { return run + "|" + task }

// DeadLetterDetails is what the dead-letter set keeps about a task.
type DeadLetterDetails struct {
	Attempt int    `json:"attempt"`
	Error   string `json:"error"`
	Worker  string `json:"worker"`
	Handler string `json:"handler,omitempty"`
}

// DeadLetter records a task that failed for good (idempotent: NX).
func (d DB) DeadLetter(ctx context.Context, p redis.Pipeliner, run, task string, timeMS int64, info DeadLetterDetails) {
	m := DeadLetterMember(run, task)
	b, _ := json.Marshal(info)
	p.ZAddNX(ctx, d.K.DeadLetter(), redis.Z{Score: float64(timeMS), Member: m})
	p.HSetNX(ctx, d.K.DeadLetterInfo(), m, string(b))
}

// DeadLetterItem is one task to dead-letter.
type DeadLetterItem struct {
	Run, Task string
	TimeMS    int64
	Info      DeadLetterDetails
}

// PointAck is a run to point the feed at and the messages of its slot
// (stream to ids, each pending for the caller's consumer) to ack in the
// same step; with MaxDeliveries above 0, a message delivered more often
// is left pending (see AckMessage).
type PointAck struct {
	Run           string
	Acks          map[string][]string
	MaxDeliveries int64
}

// pointAckScript points the feed at a run and acks messages of its queues
// (owner-checked, as queueAckScript), in one step: the run cannot end
// (a projector's fold, which the pointer wakes) while the messages of its
// outcomes are still pending, and a crash before the step leaves both
// undone, for the reclaimer. The pointer goes first: should an ack fail
// after it (a queue's group deleted by hand), the message stays pending
// and its reclaim acks it, whereas an ack without its pointer would
// leave the run dirty with nothing to wake a projector.
//
// KEYS: 1 the run's feed, 2... queue streams (the run's slot)
// ARGV: 1 run, 2 group, 3 consumer, 4 delivery bound (0: any), then per
// stream: its count of ids, the ids
// Reply: per stream, ackmine's list
var pointAckScript = redis.NewScript(ackLua + `
local lists, a = {}, 5
for k = 2, #KEYS do
  local n, ids = tonumber(ARGV[a]), {}
  for i = a + 1, a + n do ids[#ids + 1] = ARGV[i] end
  local bad = badids(ids)
  if bad then return bad end
  lists[k - 1], a = ids, a + 1 + n
end
redis.call('XADD', KEYS[1], '*', 'r', ARGV[1])
local out = {}
for k, ids in ipairs(lists) do out[k] = ackmine(KEYS[k + 1], ARGV[2], ARGV[3], ids, ARGV[4]) end
return out
`)

// RecordDeadLetters records dead letters and then, once they are all
// written, points the feed at runs (recording one twice is harmless),
// each pointer with the acks of its PointAck (consumer's messages). The
// pointers wait for the dead letters: a projector pointed at a run first
// could fail it before its dead letter exists, and a requeue in between
// would leave that dead letter behind. Two round trips when there are
// both: one pipeline does not order them (it is not atomic, and a cluster
// client sends each node's share at once: the dead letters' node can be
// failing over while the feed's is not). The acks ride with the pointers
// (one script per run): an ack after them could trail the run's end, and
// an ack before them, cut off from its pointer, would leave the run dirty
// with nothing to wake a projector.
func (d DB) RecordDeadLetters(ctx context.Context, consumer string, items []DeadLetterItem, point []PointAck) error {
	_, err := d.recordDeadLetters(ctx, consumer, items, point)
	return err
}

// recordDeadLetters is RecordDeadLetters; it returns the point_ack call of
// each PointAck with acks (nil for a bare pointer), whose reply is, per
// stream in sorted order, ackmine's answer for each id.
func (d DB) recordDeadLetters(ctx context.Context, consumer string, items []DeadLetterItem, point []PointAck) ([]*redis.Cmd, error) {
	if len(items) > 0 {
		pipe := d.C.Pipeline()
		for _, it := range items {
			d.DeadLetter(ctx, pipe, it.Run, it.Task, it.TimeMS, it.Info)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, err
		}
	}
	if len(point) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.Cmd, len(point))
	err := d.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, pa := range point {
			if len(pa.Acks) == 0 {
				d.PointFeed(ctx, pipe, pa.Run)
				continue
			}
			keys := []string{d.K.FeedFor(pa.Run)}
			argv := []any{pa.Run, GroupWorkers, consumer, pa.MaxDeliveries}
			for _, stream := range slices.Sorted(maps.Keys(pa.Acks)) {
				if part, _, _, ok := d.K.ParseQueue(stream); !ok || part != d.K.Partition(pa.Run) {
					return fmt.Errorf("point the feed at %s: stream %s is not of the run's slot", pa.Run, stream)
				}
				keys = append(keys, stream)
				argv = append(argv, len(pa.Acks[stream]))
				for _, id := range pa.Acks[stream] {
					argv = append(argv, id)
				}
			}
			cmds[i] = pointAckScript.EvalSha(ctx, pipe, keys, argv...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return cmds, nil
}

// TouchMessage resets the idle time of a message consumer holds (see
// QueueTouch) and returns its result: 1 touched, 0 gone, -1 another
// consumer's, -2 deleted from the stream while pending (left pending).
//
// A touched message's delivery count comes back as deliveries: more than
// one means a reclaimer took the message over since the consumer read it
// (JUSTID touches do not count).
func (d DB) TouchMessage(ctx context.Context, stream, consumer, id string) (n, deliveries int64, err error) {
	n, err = queueTouchScript.Run(ctx, d.C, []string{stream}, GroupWorkers, consumer, id, "d").Int64()
	if n > 0 {
		return 1, n, err
	}
	return n, 0, err
}

// AckMessage acks a message consumer holds (owner-checked, see QueueAck)
// and returns 1 acked, 0 not pending, -1 another consumer's, or -2: its
// delivery count is above deliveries (0: any count), so a reclaimer took
// the message over since the caller's copy was delivered (and back to
// consumer, or it would be another's): it is left pending, for the
// reclaimed copy to settle (a stale copy's ack would drop the message of
// a task another worker claimed since, and died holding).
func (d DB) AckMessage(ctx context.Context, stream, consumer, id string, deliveries int64) (int64, error) {
	res, err := d.queueAck(ctx, d.C, stream, consumer, deliveries, id).Int64Slice()
	if err != nil || len(res) != 1 {
		return 0, err
	}
	return res[0], nil
}

// reclaimScript takes over queue or feed entries pending longer than a
// lease (XAUTOCLAIM) and, when it reports pending entries deleted from the
// stream (an XTRIM or XDEL by hand, writes lost in a failover), requests a
// repair of the partition's running runs in the same step: XAUTOCLAIM
// drops those entries from the pending list as it reports them, so a
// request made by a later call could be lost with its caller (or the
// reply), and nothing would then come back to their tasks (a queue entry)
// or their run (a feed entry: the run stays dirty with no pointer; the
// repair points the feed at every running run).
//
// KEYS: 1 the queue or feed stream, 2 the partition's repair request
// ARGV: 1 consumer, 2 min idle ms, 3 start, 4 count, 5 group
// Reply: XAUTOCLAIM's: {next, {{id, {field, value, ...}}, ...}, {deleted ids}}
var reclaimScript = redis.NewScript(`
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[5], ARGV[1], ARGV[2], ARGV[3], 'COUNT', ARGV[4])
if r[3] and #r[3] > 0 then redis.call('INCR', KEYS[2]) end
return r
`)

// Reclaim takes over up to count entries of the workers' group on a queue
// stream pending longer than minIdle, for consumer, from start (see
// reclaimScript); deleted lists the pending ids gone from the stream, for
// which a repair was requested.
func (d DB) Reclaim(ctx context.Context, stream, consumer string, minIdle time.Duration, start string, count int) (msgs []Message, next string, deleted []string, err error) {
	part, _, _, ok := d.K.ParseQueue(stream)
	if !ok {
		return nil, "", nil, fmt.Errorf("reclaim: %q is not a queue stream", stream)
	}
	return d.reclaim(ctx, stream, part, GroupWorkers, consumer, minIdle, start, count)
}

// ReclaimFeed takes over up to count entries of the projectors' group on
// partition part's feed pending longer than minIdle, for consumer, from
// start, as Reclaim does for a queue (a repair is requested for deleted
// ones).
func (d DB) ReclaimFeed(ctx context.Context, part int, consumer string, minIdle time.Duration, start string, count int) (msgs []Message, next string, deleted []string, err error) {
	return d.reclaim(ctx, d.K.Feed(part), part, GroupProjectors, consumer, minIdle, start, count)
}

func (d DB) reclaim(ctx context.Context, stream string, part int, group, consumer string, minIdle time.Duration, start string, count int) (msgs []Message, next string, deleted []string, err error) {
	reply, err := reclaimScript.Run(ctx, d.C, []string{stream, d.K.RepairRequestedIn(part)},
		consumer, minIdle.Milliseconds(), start, count, group).Slice()
	if err != nil {
		return nil, "", nil, err
	}
	if len(reply) < 2 {
		return nil, "", nil, fmt.Errorf("reclaim %s: a reply of %d items", stream, len(reply))
	}
	next, _ = reply[0].(string)
	entries, _ := reply[1].([]any)
	for _, e := range entries {
		pair, _ := e.([]any)
		if len(pair) != 2 {
			continue // an entry deleted meanwhile (Redis < 7 reports it as nil)
		}
		id, _ := pair[0].(string)
		kv, _ := pair[1].([]any)
		msgs = append(msgs, Message{ID: id, Values: fieldMap(kv)})
	}
	if len(reply) > 2 {
		ids, _ := reply[2].([]any)
		for _, id := range ids {
			if s, ok := id.(string); ok {
				deleted = append(deleted, s)
			}
		}
	}
	return msgs, next, deleted, nil
}
