package rdb

import (
	"context"
	"fmt"

	"github.com/graflow-go/graflow/events"
	"github.com/redis/go-redis/v9"
)

// The worker's outcomes: one finish script call per run records the
// outcomes of its tasks, points the feed at the run and acks their queue
// messages (finishScript); FinishGroups sends several runs' calls in one
// round trip.

// FinishArgs are the inputs of finishing an attempt.
type FinishArgs struct {
	Run, Task, Worker string
	Attempt           int
	Epoch             int64
	EventID           string
	RejectID          string
	TimeMS            int64
	Type              events.Type
	Body              []byte
	Status            events.TaskStatus // new task status
	Result            []byte            // stored for succeeded
	// Unfenced skips the epoch check: a test-only switch (chaos uses it
	// to prove that its checker catches duplicate accepts). Never set it.
	Unfenced bool
	// Stream and MessageID name the attempt's queue message, acked by the
	// finish itself if it is pending for Consumer. An empty MessageID
	// leaves the ack to the caller (after a dead letter, say).
	Stream, MessageID, Consumer string
}

// Finish runs the finish script for one outcome. newlyDirty says the
// run became dirty (the script pointed the feed at it).
func (d DB) Finish(ctx context.Context, a FinishArgs) (newlyDirty bool, err error) {
	outs, err := ParseFinishes([]FinishArgs{a}, d.FinishesCmd(ctx, d.C, []FinishArgs{a}))
	if err != nil {
		return false, err
	}
	return outs[0].Dirty, outs[0].Err
}

// finishScript records the outcome of an attempt if the caller still holds
// the claim (same attempt, epoch and owner): appends task_succeeded /
// task_failed / task_timed_out, sets the task record, stores a result and
// marks the run dirty; then, in the same step, points the feed at the run
// when it became dirty and acks the attempt's queue message if it is
// pending for the caller (all one slot: the run's partition). A stale
// caller gets its message recorded as result_rejected and changes nothing
// else (its message is not acked: it belongs to the new claim).
//
// KEYS: 1 state, 2 log, 3 results, 4 the messages' queue stream, 5 feed
// ARGV: 1 n, 2 group, 3 consumer, 4 run, then n items (outcomes of one
// run, their messages on one stream) of 13 arguments:
// 1 task, 2 attempt, 3 epoch, 4 worker, 5 event id, 6 time ms,
//
//	7 event type, 8 body, 9 new status, 10 result ("" = none),
//	11 rejection event id, 12 "unfenced" to skip the epoch check (a
//	test-only switch that lets chaos prove its checker catches
//	duplicates), 13 the queue message id to ack ("": the caller acks
//	later, after its dead letter, and points the feed then: with any
//	such item the call points no feed)
//
// Reply: per item, {"ok", seq, newly dirty 0|1, acked 1|0|-1 (as
// queue_ack)} | {"stale", status, epoch, owner}
var finishScript = redis.NewScript(prelude + ackLua + `
local point = false
local toack, acked = {}, {} -- message ids to ack, and which item each is
-- One item per call of one(); the script takes n items of 13 arguments
-- (all of this run) and replies with the n item replies, in order.
local function one(i, A)
  local h = redis.call('HMGET', KEYS[1], '@status', A[1], '@dirty')
  local run = h[1]
  local st, a, e, o = parserec(h[2])
  if not run then
    -- The run is gone (deleted by gc or a TTL): write nothing, or the
    -- log key would come back as an orphan.
    return {'stale', 'missing', '0', ''}
  end
  local att, ep = tonumber(A[2]), tonumber(A[3])
  if (st == A[9] and a == att and e == ep and o == A[4]) or (st ~= 'running' and e == ep and o == A[4] and a >= att) then
    -- Already accepted: a retry after a lost reply (same epoch and owner,
    -- the claim ended; a retry dispatch since keeps both). Point the feed
    -- again (harmless if done before): the first call may have been the
    -- one that set @dirty, and its caller never saw the reply.
    point = true
    if A[13] ~= '' then toack[#toack + 1] = A[13]; acked[#acked + 1] = i end
    return {'ok', '', 1, 0}
  end
  if A[12] == 'unfenced' and a == att then
    e, o = ep, A[4]
  elseif st ~= 'running' or a ~= att or e ~= ep or o ~= A[4] then
    local what = 'result'
    if A[7] ~= 'task_succeeded' then what = 'failure' end
    append(KEYS[2], A[11], 'result_rejected', A[1], att, ep, A[4], A[6],
      cjson.encode({what = what, reason = 'claim lost: task is ' .. st .. ' at epoch ' .. tostring(e), current_epoch = e}))
    return {'stale', st, tostring(e), o}
  end
  -- The record and @dirty in one HSET; "newly dirty" (the feed is then
  -- pointed at the run) if @dirty was not set before.
  redis.call('HSET', KEYS[1], A[1], recstr(A[9], a, e, o), '@dirty', '1')
  if A[9] == 'succeeded' then
    redis.call('HSET', KEYS[3], A[1], A[10])
  end
  local seq = append(KEYS[2], A[5], A[7], A[1], a, e, A[4], A[6], A[8])
  local newly = 1
  if h[3] == '1' then newly = 0 else point = true end
  if A[13] ~= '' then toack[#toack + 1] = A[13]; acked[#acked + 1] = i end
  return {'ok', seq, newly, 0}
end
-- Every check before the first write: the keys written besides the run's
-- own, and the message ids.
local bad = notwritable(KEYS[4], 'stream') or notwritable(KEYS[5], 'stream')
if bad then return bad end
local n, out = tonumber(ARGV[1]), {}
local ids = {}
for i = 0, n - 1 do
  local id = ARGV[4 + i * 13 + 13]
  if id ~= '' then ids[#ids + 1] = id end
end
bad = badids(ids)
if bad then return bad end
for i = 0, n - 1 do
  local A = {}
  for j = 1, 13 do A[j] = ARGV[4 + i * 13 + j] end
  out[i + 1] = one(i + 1, A)
end
-- The accepted outcomes' messages, acked together.
if #toack > 0 then
  local res = ackmine(KEYS[4], ARGV[2], ARGV[3], toack)
  for k, item in ipairs(acked) do out[item][4] = res[k] end
end
-- A call with an outcome that is dead-lettered (no message id: its ack
-- waits) leaves the feed pointer to the caller too, after the dead
-- letter: a projector must not end the run before the dead letter exists.
if point and #ids == n then redis.call('XADD', KEYS[5], '*', 'r', ARGV[4]) end
return out
`)

// FinishesCmd queues one finish script call for several outcomes of ONE
// run whose messages are on ONE stream (and of one consumer) on p; read it
// with ParseFinishes.
func (d DB) FinishesCmd(ctx context.Context, p redis.Scripter, as []FinishArgs) *redis.Cmd {
	run := as[0].Run
	stream := as[0].Stream
	if stream == "" {
		stream = d.K.Feed(d.K.Partition(run)) // any key of the slot: nothing is acked
	}
	argv := make([]any, 0, 4+13*len(as))
	argv = append(argv, len(as), GroupWorkers, as[0].Consumer, run)
	for _, a := range as {
		argv = append(argv, a.Task, a.Attempt, a.Epoch, a.Worker, a.EventID, a.TimeMS, string(a.Type), string(a.Body), string(a.Status), string(a.Result), a.RejectID, unfenced(a.Unfenced), a.MessageID)
	}
	return finishScript.Run(ctx, p, []string{d.K.RunState(run), d.K.RunLog(run), d.K.RunResults(run), stream, d.K.FeedFor(run)}, argv...)
}

// FinishOutcome is one outcome's reply: whether the run became dirty,
// whether its message was acked (1), not pending (0) or pending for
// another consumer (-1), and a *StaleError (wrapping ErrStaleClaim) when
// the caller no longer held the claim.
type FinishOutcome struct {
	Dirty bool
	Acked int
	Err   error
}

// ParseFinishes reads a FinishesCmd reply, an outcome per FinishArgs. err
// is for the call as a whole.
func ParseFinishes(as []FinishArgs, cmd *redis.Cmd) ([]FinishOutcome, error) {
	items, err := cmd.Slice()
	if err != nil {
		return nil, fmt.Errorf("finish %s (%d tasks): %w", as[0].Run, len(as), err)
	}
	if len(items) != len(as) {
		return nil, fmt.Errorf("finish %s: %d replies for %d tasks", as[0].Run, len(items), len(as))
	}
	out := make([]FinishOutcome, len(as))
	for i := range as {
		res, _ := items[i].([]any)
		if str(res, 0) == "stale" {
			out[i].Err = &StaleError{Status: str(res, 1), Epoch: str(res, 2), Owner: str(res, 3)}
			continue
		}
		out[i].Dirty = num(res, 2) == 1
		out[i].Acked = int(num(res, 3))
	}
	return out, nil
}

func unfenced(b bool) string {
	if b {
		return "unfenced"
	}
	return ""
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
