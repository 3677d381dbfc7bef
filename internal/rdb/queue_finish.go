package rdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/redis/go-redis/v9"
)

// The worker's outcomes: a finish script call records the outcomes of the
// tasks of one or more runs of a partition, points the feed at each run
// that became dirty and acks their queue messages (finishScript);
// FinishGroups sends one call per partition and stream, in one round trip.

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
	// ResultExpiresMS (Unix ms), with a success, expires the stored
	// result then (the task's result TTL after TimeMS; 0: never): the
	// script records it in the state hash (FieldResultExpiry) and the
	// partition's expiry set, and ExpireResults deletes the result.
	ResultExpiresMS int64
	// Unfenced skips the epoch check: a test-only switch (chaos uses it
	// to prove that its checker catches duplicate accepts). Never set it.
	Unfenced bool
	// Stream and MessageID name the attempt's queue message, acked by the
	// finish itself if it is pending for Consumer. An empty MessageID
	// leaves the ack to the caller (after a dead letter, say).
	Stream, MessageID, Consumer string
	// Spawn, with a success, adds tasks to the run in the same step
	// (dynamic tasks): nil adds none.
	Spawn *Spawn
	// EndID is the id of the run_succeeded a call appends if its
	// success ends the run (see finishScript): a call with several
	// outcomes uses the first one set; a call with none never ends it.
	// The dispatches a success hands on (Handoff) take their ids from it.
	EndID string
	// Trace is the W3C traceparent the queue messages of the dispatches
	// a success hands on carry ("" none): a call with several outcomes
	// uses the first one set.
	Trace string
}

// Spawn is what a succeeded attempt adds to its run: tasks_added (written
// by the attempt, fenced like its outcome) right before its
// task_succeeded, the tasks' metadata in the state hash (@g:<task>), the spawner's
// spawn record (statehash.SpawnField) and the run's @spawned count.
// Build it with NewSpawn.
type Spawn struct {
	EventID string
	Tasks   []events.TaskSpec
	// Sinks are the tasks no other task of the spawn depends on
	// (projector.Sinks): the spawn record.
	Sinks []string
	// External are the dependencies outside the spawn: each must be a
	// task of the run that succeeded and spawned nothing.
	External []string
	// Limit bounds the tasks spawned into the run, all spawns together.
	Limit int

	body  string   // the tasks_added body
	metas []string // MetaOf each task, JSON
}

// NewSpawn encodes a spawn of tasks (validated by the caller: ids,
// dependencies, JSON args) for FinishArgs.
func NewSpawn(eventID string, tasks []events.TaskSpec, sinks, external []string, limit int) (*Spawn, error) {
	s := &Spawn{EventID: eventID, Tasks: tasks, Sinks: sinks, External: external, Limit: limit, metas: make([]string, len(tasks))}
	body, err := json.Marshal(events.TasksAddedBody{Tasks: tasks})
	if err != nil {
		return nil, fmt.Errorf("encode tasks_added: %w", err)
	}
	s.body = string(body)
	for i, t := range tasks {
		m, err := json.Marshal(MetaOf(t))
		if err != nil {
			return nil, fmt.Errorf("encode metadata of spawned task %s: %w", t.ID, err)
		}
		s.metas[i] = string(m)
	}
	return s, nil
}

// ErrSpawnRefused is returned (in a *SpawnError) for an outcome whose
// spawn the finish script refused: nothing was written for it, and the
// claim still holds (the caller records a failure instead).
var ErrSpawnRefused = errors.New("spawn refused")

// SpawnError says why the finish script refused a spawn.
type SpawnError struct{ Reason string }

func (e *SpawnError) Error() string { return ErrSpawnRefused.Error() + ": " + e.Reason }

// Unwrap returns ErrSpawnRefused.
func (e *SpawnError) Unwrap() error { return ErrSpawnRefused }

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
// A success may carry a spawn (dynamic tasks): once the claim is found
// held, and before anything of the item is written, the script checks the
// run is running, no spawned id is a task of the run yet (has metadata), every dependency
// outside the spawn is a task that succeeded and spawned nothing, and the
// run's @spawned count stays within the limit; any failure refuses the
// item with nothing written. Then it writes the tasks' metadata, appends
// tasks_added (with the attempt's task, attempt, epoch and worker) right
// before task_succeeded, and sets the spawn record and @spawned. A stale
// caller's spawn is rejected with its result.
//
// One call records the outcomes of one or more runs of one partition
// whose messages are on one stream (FinishGroups): each run's outcomes are
// recorded as if by a call of its own (finishrun), and the messages of
// all of them are acked together, last. A run refused by a check, or by
// Redis at its first command (each run runs under pcall), gets its error
// reply in its place, with nothing of it written; the call goes on with
// the others.
//
// KEYS: 1 the messages' queue stream, 2 feed, 3 the partition's expiry
// set, 4 the partition's end policy, then per run 4 keys: state, log,
// scratch key for compacting the log, channel
// ARGV: 1 the number of runs, then per run the number of its arguments
// and these (below)
// Reply: per run, its reply (below) or an error reply
//
// Inside finishrun, a run's KEYS are 1 state, 2 log, 3 the messages'
// queue stream, 4 feed, 5 the partition's expiry set, 6 scratch key for
// compacting the log, 7 channel, 8 the partition's end policy, and its
// ARGV: 1 n, 2 group, 3 consumer, 4 run, then n items (outcomes of one
// run, their messages on one stream) of 15 arguments:
// 1 task, 2 attempt, 3 epoch, 4 worker, 5 event id, 6 time ms,
//
//	7 event type, 8 body, 9 new status, 10 result ("" = none),
//	11 rejection event id, 12 "unfenced" to skip the epoch check (a
//	test-only switch that lets chaos prove its checker catches
//	duplicates), 13 the queue message id to ack ("": the caller acks
//	later, after its dead letter, and points the feed then: with any
//	such item the call points no feed), 14 k, the number of tasks the
//	item spawns (0: none), 15 when a stored result expires (Unix ms;
//	0: never)
//
// then, for each item with k > 0 in item order, its spawn: tasks_added
// event id, tasks_added body, spawn record (the sinks, comma-separated),
// limit of spawned tasks in the run, x, x dependency ids outside the
// spawn, then k pairs (task id, meta JSON)
//
// then the event id of the run_succeeded this call appends if it ends the
// run ("" or absent: the call never ends the run). When every task of a
// run of at most EndMaxTasks tasks has succeeded after the call's items,
// the script ends the run as the projector would (run_succeeded, written
// by the worker of the call's success; status, head, compaction and TTL by
// the partition's end policy) and points no feed. It does so only when a
// projector has recorded that policy.
//
// Then the traceparent of the dispatches the call hands on ("" or absent:
// none). A success with handoffs (HandoffField, read in the item's HMGET)
// counts each of its dependents down (CountField); one in a running run
// that spawned nothing (and in a call that spawns nothing) sets no @dirty,
// and dispatches each pending dependent it counted to zero (DispatchField)
// as the projector's Decide would, with an event id derived from the end
// id. Anything it cannot settle wakes a projector.
//
// A run's reply: per item, {"ok", seq, newly dirty 0|1, acked 1|0|-1 (as
// queue_ack), ended 1|0} | {"stale", status, epoch, owner} | {"spawn", why}
// (the spawn is refused; nothing of the item was written, the claim
// holds)
var finishScript = redis.NewScript(prelude + enqueueLua + ackLua + `
-- The acks of every run of the call, sent after all of the call's writes
-- (see the end).
local ACKS = {}
-- The streams found writable (TYPE) so far in the call: the feed, the
-- queues of handoffs.
local STREAMS = {}
-- finishrun records the outcomes of one run: KEYS and ARGV are the run's
-- own (see FinishesCmd), its reply the run's.
local function finishrun(KEYS, ARGV)
local point = false
local handoffs = {} -- the handoffs of the successes this call hands on itself
local dirty0 = false -- the run was dirty before this call
local spawned = false -- an item of this call spawned tasks
local succ = nil -- the worker of a success this call accepted
local ok = 0 -- the run's @ok after this call's successes
local toack, acked = {}, {} -- message ids to ack, and which item each is
-- The state fields this call sets (records, results, @dirty, @ok, ...),
-- written together after the items (one HSET), or not at all when the
-- call ends the run (its end deletes the hash); every read of them in the
-- call looks here first. done: the tasks whose success this call
-- accepted.
local W, done = {}, {}
local runst = nil -- the run's status, as the items read it
local tasks0 = nil -- the run's @tasks (its tasks at submit), as the items read it
local spawned0 = 0 -- the run's @spawned, as the items read it
-- spawnbad returns why the spawn S cannot be added, or nil. Reads only.
local function spawnbad(run, S)
  if run ~= 'running' then return 'the run is ' .. run end
  for i = S.t, S.t + 2 * S.k - 1, 1000 do
    local ids = {}
    for j = i, math.min(i + 999, S.t + 2 * S.k - 1), 2 do ids[#ids + 1] = ARGV[j] end
    for j = 1, #ids do ids[j] = '@g:' .. ids[j] end
    local metas = redis.call('HMGET', KEYS[1], unpack(ids))
    for j = 1, #ids do
      if metas[j] then return 'task ' .. string.sub(ids[j], 4) .. ' is already in the run: spawned ids must be new' end
    end
  end
  for i = S.x, S.x + S.nx - 1 do
    local d = ARGV[i]
    if redis.call('HEXISTS', KEYS[1], '@g:' .. d) == 0 then return 'dependency ' .. d .. ' is not a task of the run' end
    local st = parserec(W[d] or redis.call('HGET', KEYS[1], d))
    if st ~= 'succeeded' then
      return 'dependency ' .. d .. ' is ' .. st .. ': a spawned task may depend only on tasks of its spawn and on tasks that succeeded'
    end
    if redis.call('HEXISTS', KEYS[1], '@s:' .. d) == 1 then
      return 'dependency ' .. d .. ' spawned tasks: a spawned task may not depend on it (its successors wait for what it spawned)'
    end
  end
  local n = tonumber(redis.call('HGET', KEYS[1], '@spawned') or '0') or 0
  if n + S.k > S.limit then
    return 'the run would hold ' .. (n + S.k) .. ' spawned tasks; the limit is ' .. S.limit
  end
  return nil
end
-- One item per call of one(); the script takes n items of 15 arguments
-- (all of this run) and replies with the n item replies, in order. S is
-- the item's spawn, or nil.
local function one(i, A, S)
  local h = redis.call('HMGET', KEYS[1], '@status', A[1], '@dirty', '@ok', '@n:' .. A[1], '@spawned', '@tasks')
  if h[3] == '1' then dirty0 = true end
  tasks0, spawned0 = tonumber(h[7]), tonumber(h[6] or '0') or 0
  h[2], h[3], h[4] = W[A[1]] or h[2], W['@dirty'] or h[3], W['@ok'] or h[4]
  local run = h[1]
  runst = run
  local st, a, e, o = parserec(h[2])
  if not run then
    -- This very call sent again after a lost reply that ended the run
    -- finds its event in the log: accepted.
    if inlog(KEYS[2], A[5], 2 * tonumber(ARGV[1]) + 8) then
      if A[13] ~= '' then toack[#toack + 1] = A[13]; acked[#acked + 1] = i end
      return {'ok', '', 0, 0, 0}
    end
    -- The run is gone (deleted by gc or a TTL): write nothing, or the
    -- log key would come back as an orphan.
    if not loggedend(KEYS[2]) then return {'stale', 'missing', '0', ''} end
    -- The run succeeded and keeps only its log.
    local att, ep = tonumber(A[2]), tonumber(A[3])
    -- The task's last event is this very outcome (its claim's epoch and
    -- worker: an epoch names one claim): a call sent again after a lost
    -- reply, with more events appended since than inlog looks back
    -- (another call ended the run). Accepted, as above.
    local lst, le, lo = lasttask(KEYS[2], A[1])
    if lst == A[9] and le == ep and lo == A[4] then
      if A[13] ~= '' then toack[#toack + 1] = A[13]; acked[#acked + 1] = i end
      return {'ok', '', 0, 0, 0}
    end
    -- Otherwise the outcome is late.
    if A[12] == 'unfenced' then
      -- Fencing off (test builds): the late outcome is accepted, a
      -- duplicate the checkers must catch.
      local seq = append(KEYS[2], A[5], A[7], A[1], att, ep, A[4], A[8])
      if A[13] ~= '' then toack[#toack + 1] = A[13]; acked[#acked + 1] = i end
      return {'ok', seq, 0, 0, 0}
    end
    local what = 'result'
    if A[7] ~= 'task_succeeded' then what = 'failure' end
    local st, e, o = rejectlate(KEYS[2], A[11], what, A[1], att, ep, A[4])
    return {'stale', st, tostring(e), o}
  end
  local att, ep = tonumber(A[2]), tonumber(A[3])
  if (st == A[9] and a == att and e == ep and o == A[4]) or (st ~= 'running' and e == ep and o == A[4] and a >= att)
    or (st == 'pending' and a == att and e == ep and o == '') then
    -- Already accepted: a retry after a lost reply (same epoch and owner,
    -- the claim ended; a retry dispatch since keeps both; or pending at
    -- the claim's attempt and epoch with no owner: it failed and was
    -- requeued since, which clears the owner). Point the feed
    -- again (harmless if done before): the first call may have been the
    -- one that set @dirty, and its caller never saw the reply.
    point = true
    if A[13] ~= '' then toack[#toack + 1] = A[13]; acked[#acked + 1] = i end
    return {'ok', '', 1, 0, 0}
  end
  if A[12] == 'unfenced' and a == att then
    e, o = ep, A[4]
  elseif st ~= 'running' or a ~= att or e ~= ep or o ~= A[4] then
    local what = 'result'
    if A[7] ~= 'task_succeeded' then what = 'failure' end
    append(KEYS[2], A[11], 'result_rejected', A[1], att, ep, A[4],
      cjson.encode({what = what, reason = 'claim lost: task is ' .. st .. ' at epoch ' .. tostring(e), current_epoch = e}))
    return {'stale', st, tostring(e), o}
  end
  if S and A[7] == 'task_succeeded' then
    local why = spawnbad(run, S)
    if why then return {'spawn', why} end
    -- The event first: an append to a log of the wrong type fails with
    -- nothing of the call written.
    append(KEYS[2], S.id, 'tasks_added', A[1], a, e, A[4], S.body)
    local metas = {}
    for j = S.t, S.t + 2 * S.k - 1, 2 do
      metas[#metas + 1] = '@g:' .. ARGV[j]; metas[#metas + 1] = ARGV[j + 1]
    end
    chunked('HSET', KEYS[1], metas, 1, #metas)
    redis.call('HSET', KEYS[1], '@s:' .. A[1], S.sinks)
    redis.call('HINCRBY', KEYS[1], '@spawned', S.k)
    spawned = true
  end
  -- A success with handoffs (a run that spawned nothing) is handed on
  -- below, by this call: no projector is woken for it. Any success with
  -- handoffs counts its dependents down (below), handed on or not, so
  -- that the counts stay exact.
  local hand = A[9] == 'succeeded' and not S and run == 'running' and h[5] and (h[6] or '0') == '0'
  -- The record and @dirty in one HSET; "newly dirty" (the feed is then
  -- pointed at the run) if @dirty was not set before.
  W[A[1]] = recstr(A[9], a, e, o)
  if not hand then W['@dirty'] = '1' end
  done[A[1]] = nil
  if A[9] == 'succeeded' then
    -- @ok counts the successes accepted here: a filter for the end check
    -- below (a count short of the tasks skips it; the records decide).
    ok = (tonumber(h[4]) or 0) + 1
    W['@ok'], done[A[1]] = tostring(ok), true
    W['@r:' .. A[1]] = A[10]
  end
  -- The item's event before its other writes (see the spawn above).
  local seq = append(KEYS[2], A[5], A[7], A[1], a, e, A[4], A[8])
  if A[9] == 'succeeded' and A[15] ~= '0' then
    W['@rx:' .. A[1]] = A[15]
    redis.call('ZADD', KEYS[5], tonumber(A[15]), ARGV[4] .. '|' .. A[1])
  end
  if A[9] == 'succeeded' then succ = A[4] end
  local newly = 1
  if A[9] == 'succeeded' and h[5] then handoffs[#handoffs + 1] = {h[5], hand} end
  if hand then
    newly = 0
  elseif h[3] == '1' then newly = 0 else point = true end
  if A[13] ~= '' then toack[#toack + 1] = A[13]; acked[#acked + 1] = i end
  return {'ok', seq, newly, 0, 0}
end
-- Every check before the first write (Redis rolls nothing back): the keys
-- written or read after it besides the log (each item's first write is
-- its event, which fails alone on a log of the wrong type) and the
-- messages' queue (read by the ack, last: see there; a handoff checks it
-- before it queues a dispatch on it), and the message ids.
local streams = STREAMS -- streams found writable (the call's runs share them)
local bad = nil
if not streams[KEYS[4]] then
  bad = notwritable(KEYS[4], 'stream')
  if bad then return bad end
  streams[KEYS[4]] = true
end
local n, out = tonumber(ARGV[1]), {}
local ids, expiring, succs = {}, false, false
for i = 0, n - 1 do
  local id = ARGV[4 + i * 15 + 13]
  if id ~= '' then ids[#ids + 1] = id end
  if ARGV[4 + i * 15 + 15] ~= '0' then expiring = true end
  if ARGV[4 + i * 15 + 9] == 'succeeded' then succs = true end
end
if expiring then
  bad = notwritable(KEYS[5], 'zset')
  if bad then return bad end
end
bad = badids(ids)
if bad then return bad end
-- The spawns, after the items: where each one's arguments are.
local spawns, pos = {}, 4 + n * 15 + 1
for i = 0, n - 1 do
  local k = tonumber(ARGV[4 + i * 15 + 14]) or 0
  if k > 0 then
    local nx = tonumber(ARGV[pos + 4])
    spawns[i + 1] = {id = ARGV[pos], body = ARGV[pos + 1], sinks = ARGV[pos + 2], limit = tonumber(ARGV[pos + 3]),
      x = pos + 5, nx = nx, t = pos + 5 + nx, k = k}
    pos = pos + 5 + nx + 2 * k
  end
end
local endid = ARGV[pos]
local ending = succs and endid and endid ~= ''
for i = 0, n - 1 do
  local A = {unpack(ARGV, 5 + i * 15, 19 + i * 15)}
  out[i + 1] = one(i + 1, A, spawns[i + 1])
end
-- The run's end, when a success of this call was its last task to
-- succeed: run_succeeded, as the projector's Decide would append it (every
-- task succeeded; the fold applies it only then, and replay verify checks
-- it), with the end's compaction and TTL. Only for runs of at most
-- EndMaxTasks tasks (their records are read here), and only once a
-- projector has recorded the end policy (its compaction bound and run
-- TTL) in the partition: otherwise the projector ends the run. The
-- records are read only once the run's @ok (successes accepted by finish
-- calls) reaches its task count: a run with a success recorded elsewhere
-- (an import) or that predates @ok is left to the projector.
--
-- The run's task count is its @tasks (written at submit and by an import)
-- plus its @spawned; a run without @tasks is left to the projector. The
-- reads the end needs besides (the task ids, the end policy) come after
-- the items' writes, and only once @ok reaches that count; the end policy
-- is read with a pcall: of the wrong type, it leaves the end to a
-- projector (the feed is pointed as for any success) rather than failing
-- the call midway.
local ended = false
if succ and ending and runst == 'running' and tasks0 then
  local sp = spawned0
  if spawned then sp = tonumber(redis.call('HGET', KEYS[1], '@spawned') or '0') or 0 end
  local ntasks = tasks0 + sp
  local tasks = nil
  if ntasks > 0 and ntasks <= ` + strconv.Itoa(EndMaxTasks) + ` and ok >= ntasks then
    -- A call that accepted the success of as many distinct tasks as the
    -- run has accepted every one of them (a single-task run's finish):
    -- nothing to list or read.
    local ndone = 0
    for _ in pairs(done) do ndone = ndone + 1 end
    if ndone == ntasks then
      tasks = {}
    else
      tasks = taskids(KEYS[1])
      if #tasks ~= ntasks then tasks = nil end
    end
  end
  local pol = nil
  if tasks then
    pol = redis.pcall('HMGET', KEYS[8], 'compact', 'ttl')
    if type(pol) ~= 'table' or pol.err then pol = nil; tasks = nil end
  end
  if tasks then
    -- Every task's record, this call's first; the hash is read only for
    -- tasks whose success this call did not accept.
    local rest = {}
    for _, t in ipairs(tasks) do
      if not done[t] then rest[#rest + 1] = t end
    end
    local all = true
    if #rest > 0 then
      local recs = redis.call('HMGET', KEYS[1], unpack(rest))
      for j = 1, #rest do
        if parserec(W[rest[j]] or recs[j]) ~= 'succeeded' then all = false; break end
      end
    end
    if all and pol[1] then
      -- The end deletes the state hash (foldend, below): a projector's
      -- commit prepared before this finds no head and conflicts.
      append(KEYS[2], endid, 'run_succeeded', '', 0, 0, succ, '')
      ended = true
      point = false
      local compact, ttl = tonumber(pol[1]) or 0, tonumber(pol[2] or '0') or 0
      if compact > 0 and redis.call('XLEN', KEYS[2]) <= compact then
        redis.call('COPY', KEYS[2], KEYS[6], 'REPLACE')
        redis.call('RENAME', KEYS[6], KEYS[2])
      end
      if ttl > 0 then
        for _, key in ipairs({KEYS[2], KEYS[7]}) do
          redis.call('PEXPIRE', key, ttl)
        end
      end
      foldend(KEYS[1])
      for k = 1, n do
        if out[k][1] == 'ok' then out[k][5] = 1 end
      end
    end
  end
end
-- The handoffs of the successes this call accepted, unless the run ended
-- (then the state is gone): each success counts each of its dependents
-- down (@w:<task>, exact: every accepted success of a dependency counts
-- it once); a handed-on success dispatches each dependent it counted to
-- zero that is pending, as the projector's Decide would (task_dispatched
-- at one attempt more, by the worker of the success; its record; its
-- queue message from @d:<task>, with the call's trace). A dependent not
-- pending at zero is in progress already, or else (skipped, cancelled,
-- failed: a requeue's reopening the projector has yet to make) wakes a
-- projector, as does a queue of the wrong type. The dispatches' event ids
-- are the call's end id with its first two random characters moved on by
-- 1, 2, ... (unique, and of the call's time); past 1,023 the rest is left
-- to a projector.
if not ended and #handoffs > 0 then
  local B32 = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'
  local c1, c2 = nil, nil
  if endid and endid ~= '' then
    c1 = string.find(B32, string.sub(endid, 11, 11), 1, true)
    c2 = string.find(B32, string.sub(endid, 12, 12), 1, true)
  end
  local nid, wake = 0, false
  local trace = ARGV[pos + 1] or ''
  if spawned then
    -- An item spawned tasks after another item of the call, handed on,
    -- read a run that had spawned nothing: a spawner's dependents wait
    -- for what it spawned, which only the projector's fold sees.
    for _, ho in ipairs(handoffs) do
      if ho[2] then ho[2], wake = false, true end
    end
  end
  for _, ho in ipairs(handoffs) do
    for d in string.gmatch(ho[1], '[^,]+') do
      local left = redis.call('HINCRBY', KEYS[1], '@w:' .. d, -1)
      if left <= 0 and ho[2] then
        local g = redis.call('HMGET', KEYS[1], d, '@d:' .. d)
        local st, a, e = parserec(W[d] or g[1])
        if st == 'pending' then
          local q, body = string.match(g[2] or '', '^([^\t]*)\t(.*)$')
          if q and not streams[q] and not notwritable(q, 'stream') then streams[q] = true end
          if not q or not c1 or not c2 or nid >= 1023 or not streams[q] then
            wake = true
          else
            nid = nid + 1
            local k1, k2 = (c1 - 1 + nid) % 32, (c2 - 1 + math.floor(nid / 32)) % 32
            local id = string.sub(endid, 1, 10) .. string.sub(B32, k1 + 1, k1 + 1) .. string.sub(B32, k2 + 1, k2 + 1) .. string.sub(endid, 13)
            append(KEYS[2], id, 'task_dispatched', d, a + 1, 0, succ, body)
            W[d] = recstr('dispatched', a + 1, e, '')
            enqueue(q, ARGV[4], d, a + 1, trace)
          end
        elseif st ~= 'dispatched' and st ~= 'running' and st ~= 'awaiting_retry' and st ~= 'succeeded' then
          wake = true
        end
      end
    end
  end
  if wake then
    W['@dirty'] = '1'
    if not dirty0 then point = true end
  end
end
-- The fields the items set, unless the run ended (then they are gone).
if not ended then
  local f = {}
  for k, v in pairs(W) do f[#f + 1] = k; f[#f + 1] = v end
  if #f > 0 then chunked('HSET', KEYS[1], f, 1, #f) end
end
-- A call with an outcome that is dead-lettered (no message id: its ack
-- waits) leaves the feed pointer to the caller too, after the dead
-- letter: a projector must not end the run before the dead letter exists.
if point and #ids == n then redis.call('XADD', KEYS[4], '*', 'r', ARGV[4]) end
-- The accepted outcomes' messages are acked after every run of the call
-- (below).
if #toack > 0 then ACKS[#ACKS + 1] = {KEYS[3], ARGV[2], ARGV[3], toack, acked, out} end
return out
end
-- The runs, each with the 8 keys and the arguments of its own (see
-- finishrun): the shared keys are given once, the run's four per run.
local R, apos = {}, 2
for r = 1, tonumber(ARGV[1]) do
  local k = 4 + 4 * (r - 1)
  local K = {KEYS[k + 1], KEYS[k + 2], KEYS[1], KEYS[2], KEYS[3], KEYS[k + 3], KEYS[k + 4], KEYS[4]}
  local len = tonumber(ARGV[apos])
  local A = slice(ARGV, apos + 1, apos + len)
  apos = apos + len + 1
  -- An error Redis raises in a run (a key of the wrong type) is that
  -- run's reply, as if it had had a call of its own: its first command
  -- reads, so nothing of it was written, and the other runs go on.
  local ok, res = pcall(finishrun, K, A)
  if not ok and (type(res) ~= 'table' or not res.err) then res = redis.error_reply(tostring(res)) end
  R[r] = res
end
-- The accepted outcomes' messages, acked together, last: Redis rolls
-- nothing back, so an ack that fails (the queue's group is gone) must find
-- every record, result, end and feed pointer of the call written. One
-- ackmine per stream, group and consumer (a call's runs share them).
local byq, order = {}, {}
for _, a in ipairs(ACKS) do
  local key = a[1] .. '\0' .. a[2] .. '\0' .. a[3]
  local g = byq[key]
  if not g then
    g = {a[1], a[2], a[3], {}, {}}
    byq[key], order[#order + 1] = g, g
  end
  for j, id in ipairs(a[4]) do
    g[4][#g[4] + 1] = id
    g[5][#g[5] + 1] = {a[6], a[5][j]}
  end
end
for _, g in ipairs(order) do
  local res = ackmine(g[1], g[2], g[3], g[4])
  for k, ref in ipairs(g[5]) do ref[1][ref[2]][4] = res[k] end
end
return R
`)

// EndMaxTasks bounds the runs whose end a finish decides (see
// finishScript): the script reads every task's record of such a run.
// Larger runs are ended by the projector.
const EndMaxTasks = 32

// EndPolicy is what a run's end applies besides its event: the log
// compaction bound (0: none) and the run's TTL (0: none). A projector
// records its own in each of its partitions (SetEndPolicy), for the
// finishes that end runs.
type EndPolicy struct {
	CompactLog int
	TTL        time.Duration
}

// SetEndPolicy records the end policy in partitions parts.
func (d DB) SetEndPolicy(ctx context.Context, parts []int, p EndPolicy) error {
	_, err := d.C.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, n := range parts {
			pipe.HSet(ctx, d.K.EndPolicy(n), "compact", max(p.CompactLog, 0), "ttl", p.TTL.Milliseconds())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record the end policy: %w", err)
	}
	return nil
}

// FinishesCmd queues one finish script call for several outcomes of ONE
// run whose messages are on ONE stream (and of one consumer) on p; read it
// with ParseFinishes.
func (d DB) FinishesCmd(ctx context.Context, p redis.Scripter, as []FinishArgs) *redis.Cmd {
	return d.finishCall(ctx, p, [][]FinishArgs{as})
}

// finishStream is the stream whose messages the outcomes as ack (any key
// of the run's slot when they ack none).
func (d DB) finishStream(as []FinishArgs) string {
	if as[0].Stream == "" {
		return d.K.Feed(d.K.Partition(as[0].Run)) // any key of the slot: nothing is acked
	}
	return as[0].Stream
}

// finishCall queues one finish script call for several runs of ONE
// partition, each group the outcomes of one run whose messages are on the
// stream of the first group (see FinishGroups).
func (d DB) finishCall(ctx context.Context, p redis.Scripter, groups [][]FinishArgs) *redis.Cmd {
	run0 := groups[0][0].Run
	keys := make([]string, 0, 4+4*len(groups))
	keys = append(keys, d.finishStream(groups[0]), d.K.FeedFor(run0), d.K.ExpiriesFor(run0), d.K.EndPolicyFor(run0))
	n := 1
	for _, as := range groups {
		n += 7 + 15*len(as)
	}
	argv := make([]any, 0, n)
	argv = append(argv, len(groups))
	for _, as := range groups {
		run := as[0].Run
		keys = append(keys, d.K.RunState(run), d.K.RunLog(run), d.K.RunLogCompact(run), d.K.RunChannel(run))
		at := len(argv)
		argv = append(argv, 0) // the run's argument count, below
		argv = finishArgs(argv, as)
		argv[at] = len(argv) - at - 1
	}
	return finishScript.Run(ctx, p, keys, argv...)
}

// finishArgs appends the arguments of one run's outcomes as (finishScript's
// ARGV of one run).
func finishArgs(argv []any, as []FinishArgs) []any {
	argv = append(argv, len(as), GroupWorkers, as[0].Consumer, as[0].Run)
	for _, a := range as {
		k := 0
		if a.Spawn != nil {
			k = len(a.Spawn.Tasks)
		}
		argv = append(argv, a.Task, a.Attempt, a.Epoch, a.Worker, a.EventID, a.TimeMS, string(a.Type), string(a.Body), string(a.Status), string(a.Result), a.RejectID, unfenced(a.Unfenced), a.MessageID, k, a.ResultExpiresMS)
	}
	for _, a := range as {
		if a.Spawn != nil && len(a.Spawn.Tasks) > 0 {
			argv = a.Spawn.appendArgs(argv)
		}
	}
	end := ""
	for _, a := range as {
		if a.EndID != "" {
			end = a.EndID
			break
		}
	}
	trace := ""
	for _, a := range as {
		if a.Trace != "" {
			trace = a.Trace
			break
		}
	}
	return append(argv, end, trace)
}

// appendArgs appends the spawn's arguments of the finish script.
func (s *Spawn) appendArgs(argv []any) []any {
	argv = slices.Grow(argv, 5+len(s.External)+2*len(s.Tasks))
	argv = append(argv, s.EventID, s.body, strings.Join(s.Sinks, ","), s.Limit, len(s.External))
	for _, x := range s.External {
		argv = append(argv, x)
	}
	for i, t := range s.Tasks {
		argv = append(argv, t.ID, s.metas[i])
	}
	return argv
}

// FinishOutcome is one outcome's reply: whether the run became dirty,
// whether its message was acked (1), not pending (0) or pending for
// another consumer (-1), and a *StaleError (wrapping ErrStaleClaim) when
// the caller no longer held the claim, or a *SpawnError (wrapping
// ErrSpawnRefused) when its spawn was refused.
type FinishOutcome struct {
	Dirty bool
	Acked int
	// Ended says the call ended the run (run_succeeded appended).
	Ended bool
	Err   error
}

// ParseFinishes reads a FinishesCmd reply, an outcome per FinishArgs. err
// is for the call as a whole.
func ParseFinishes(as []FinishArgs, cmd *redis.Cmd) ([]FinishOutcome, error) {
	runs, err := cmd.Slice()
	if err != nil {
		return nil, fmt.Errorf("finish %s (%d tasks): %w", as[0].Run, len(as), err)
	}
	if len(runs) != 1 {
		return nil, fmt.Errorf("finish %s: %d run replies for 1 run", as[0].Run, len(runs))
	}
	return parseFinishRun(as, runs[0])
}

// parseFinishRun reads one run's reply of a finish call: its outcomes, or
// the error that refused all of them (nothing of the run was written).
func parseFinishRun(as []FinishArgs, reply any) ([]FinishOutcome, error) {
	if err, ok := reply.(error); ok {
		return nil, fmt.Errorf("finish %s (%d tasks): %w", as[0].Run, len(as), err)
	}
	items, _ := reply.([]any)
	if len(items) != len(as) {
		return nil, fmt.Errorf("finish %s: %d replies for %d tasks", as[0].Run, len(items), len(as))
	}
	out := make([]FinishOutcome, len(as))
	for i := range as {
		res, _ := items[i].([]any)
		switch str(res, 0) {
		case "stale":
			out[i].Err = &StaleError{Status: str(res, 1), Epoch: str(res, 2), Owner: str(res, 3)}
			continue
		case "spawn":
			out[i].Err = &SpawnError{Reason: str(res, 1)}
			continue
		}
		out[i].Dirty = num(res, 2) == 1
		out[i].Acked = int(num(res, 3))
		out[i].Ended = num(res, 4) == 1
	}
	return out, nil
}

func unfenced(b bool) string {
	if b {
		return "unfenced"
	}
	return ""
}

// finishCallItems bounds the outcomes of one finish call of several runs
// (FinishGroups): a call holds Redis' one thread for about 30 µs an
// outcome under load (a chain step's finish, handoff and ack), so a full
// call blocks other clients for ~4 ms; a worker's batches are usually
// about its concurrency (16) outcomes.
const finishCallItems = 128

// FinishGroups records groups of outcomes (each of one run, its messages
// on one stream) in one round trip: one finish script call for the groups
// of each partition and stream, up to finishCallItems outcomes (a group is
// never split). errs[g] is for group g as a whole: nothing of it was
// written when the script refused it (a check failed) or Redis refused its
// first command (a key of the wrong type); an error Redis raises later in
// the run may leave part of it written, as in a call of its own. A call
// that failed as a whole (the ack, a lost reply) may have written any of
// its runs: a caller's retry of an outcome finds it accepted (and acks
// its message then) or, if it was stale, rejects it again.
func (d DB) FinishGroups(ctx context.Context, groups [][]FinishArgs) (results [][]FinishOutcome, errs []error) {
	type call struct {
		idx   []int // the groups of the call
		items int
	}
	var calls []*call
	open := map[string]*call{} // by partition and stream: the call filling up
	for g, as := range groups {
		key := strconv.Itoa(d.K.Partition(as[0].Run)) + "\x00" + d.finishStream(as)
		c := open[key]
		if c == nil || (c.items > 0 && c.items+len(as) > finishCallItems) {
			c = &call{}
			open[key] = c
			calls = append(calls, c)
		}
		c.idx = append(c.idx, g)
		c.items += len(as)
	}
	// After a Redis restart (NOSCRIPT), Pipelined loads the scripts and
	// sends the calls again: each outcome then has its call, not a retry
	// of its own.
	cmds := make([]*redis.Cmd, len(calls))
	_ = d.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, c := range calls {
			gs := make([][]FinishArgs, len(c.idx))
			for k, g := range c.idx {
				gs[k] = groups[g]
			}
			cmds[i] = d.finishCall(ctx, pipe, gs)
		}
		return nil
	})
	results, errs = make([][]FinishOutcome, len(groups)), make([]error, len(groups))
	for i, c := range calls {
		runs, err := cmds[i].Slice()
		if err == nil && len(runs) != len(c.idx) {
			err = fmt.Errorf("%d run replies for %d runs", len(runs), len(c.idx))
		}
		for k, g := range c.idx {
			if err != nil {
				errs[g] = fmt.Errorf("finish %s (%d tasks): %w", groups[g][0].Run, len(groups[g]), err)
				continue
			}
			results[g], errs[g] = parseFinishRun(groups[g], runs[k])
		}
	}
	return results, errs
}
