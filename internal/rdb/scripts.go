package rdb

import "github.com/redis/go-redis/v9"

// claimScript claims a task for a worker: checks the task is claimable for
// that attempt, bumps the epoch, records the owner, appends task_claimed
// (after task_reclaimed when taking over a running claim in reclaim mode),
// and returns what the handler needs. Every read and check of an item
// comes before its first write, and nothing is decoded in Lua (user args
// nested deeper than cjson allows used to fail the script after it wrote):
// the dependency list is read from the head of the stored metadata, which
// MetaOf encodes first ({"d":[...],...}; task ids need no JSON escaping),
// or right after the handler in metadata stored before that order.
//
// KEYS: 1 state, 2 log, 3 dag, 4 results
// ARGV: 1 n, 2 upstream byte budget of the call (0: none), then n items
// (claims of several messages of one run in one call) of 8 arguments:
// 1 task, 2 attempt, 3 worker, 4 claim event id, 5 time ms,
//
//	6 mode "claim"|"reclaim", 7 deliveries, 8 reclaim event id
//
// Every script is safe to run twice (a client may retry one whose reply
// was lost): a second claim by the same worker returns its claim as is.
//
// Reply: per item, {"ok", epoch, meta, input, k, the first k dep results
// in the metadata's order} (the others are over the budget: the caller
// reads them itself) |
//
//	{"done", status} (finished or run over: ack, re-point the feed) |
//	{"stale", status, attempt} (another attempt: ack and drop) |
//	{"busy", owner, epoch} (claimed by a live claim: ack and drop) |
//	{"missing"} (no such run) |
//	{"bad", why} (the task's stored metadata cannot be read; nothing written)
var claimScript = redis.NewScript(prelude + `
-- One item per call of one(); the script takes n items of 8 arguments
-- (all of this run) and replies with the n item replies, in order.
local input
local budget = tonumber(ARGV[2]) or 0
local bounded = budget > 0
-- claimedby reports whether the log's recent entries hold the event id: a
-- retried call's task_claimed is among the last ones appended (a call
-- appends at most two per item, and a worker claims at most 128 messages
-- per call). Best effort: a retry that comes after more than 512 other
-- entries bumps the epoch again, which is harmless (the claim is ours).
-- Only a reclaim of a task this worker already holds reads it.
local function claimedby(log, id)
  for _, m in ipairs(redis.call('XREVRANGE', log, '+', '-', 'COUNT', 512)) do
    if m[2][1] == 'id' and m[2][2] == id then return true end
  end
  return false
end
-- deps returns the dependency ids in a task's stored metadata, or nil and
-- why it cannot be read. Nothing is decoded: MetaOf writes the deps first
-- ({"d":[...],"h":...}, none when there are none); metadata written before
-- that has them right after the handler ({"h":"name","d":[...]}; handler
-- names and task ids need no JSON escaping).
local function deps(meta)
  local list = string.match(meta, '^{"d":%[([^%]]*)%]')
  if not list then list = string.match(meta, '^{"h":"[^"\\]*","d":%[([^%]]*)%]') end
  if not list then
    local legacy = string.find(meta, '^{"h":"[^"\\]*","d":')
    if (string.sub(meta, 1, 5) == '{"h":' and not legacy) or meta == '{}' then return {} end
    return nil, 'unreadable task metadata: ' .. string.sub(meta, 1, 40)
  end
  local out = {}
  for id in string.gmatch(list, '"([^"]*)"') do out[#out + 1] = id end
  return out
end
local function one(A)
  local run, st, a, e, o = getrun(KEYS[1], A[1])
  if not run then return {'missing'} end
  if st == '?' then return {'bad', 'unreadable task record'} end
  if terminal[st] then return {'done', st} end
  if run ~= 'running' then return {'done', run} end
  local att = tonumber(A[2])
  if a ~= att then return {'stale', st, tostring(a)} end
  -- What this claim writes: nothing (ours already), a claim, or a reclaim
  -- and a claim. Decided before anything is written.
  local write
  if st == 'running' and o == A[3] and A[6] ~= 'reclaim' then
    -- Already ours: a retry (ours, or go-redis') after a lost reply, or a
    -- duplicate message. Hand the claim back as is, without a second event;
    -- never report it "busy", which would ack our only message.
    write = 'none'
  elseif st == 'running' and o == A[3] and claimedby(KEYS[2], A[4]) then
    -- A reclaim of ours that already ran: the same call again after a lost
    -- reply (its claim event is in the log). Hand it back as is; bumping
    -- the epoch again would record a reclaim of the task from itself.
    write = 'none'
  elseif st == 'running' then
    if A[6] ~= 'reclaim' then return {'busy', o, tostring(e)} end
    write = 'reclaim'
  elseif st == 'dispatched' then
    write = 'claim'
  else
    return {'stale', st, tostring(a)}
  end
  -- Every read before the first write.
  local meta = redis.call('HGET', KEYS[3], A[1]) or '{}'
  local ds, why = deps(meta)
  if not ds then return {'bad', why} end
  if input == nil then input = redis.call('HGET', KEYS[4], '@input') or '' end
  local vals = {}
  for i = 1, #ds, 500 do
    local chunk = {}
    for j = i, math.min(i + 499, #ds) do chunk[#chunk + 1] = ds[j] end
    local vs = redis.call('HMGET', KEYS[4], unpack(chunk))
    for j = 1, #chunk do vals[#vals + 1] = vs[j] or '' end
  end
  -- The writes: the log first (the source of truth), then the record.
  if write == 'reclaim' then
    e = e + 1
    append(KEYS[2], A[8], 'task_reclaimed', A[1], a, e, A[3], A[5],
      cjson.encode({from = o, deliveries = tonumber(A[7]), reason = 'lease expired'}))
  end
  if write ~= 'none' then
    e = e + 1
    append(KEYS[2], A[4], 'task_claimed', A[1], a, e, A[3], A[5], '')
    setrec(KEYS[1], A[1], 'running', a, e, A[3])
  end
  -- The dep results that fit the call's budget; the caller reads the rest.
  local reply = {'ok', tostring(e), meta, input, 0}
  local k = 0
  for j = 1, #vals do
    if bounded and #vals[j] > budget then break end
    budget = budget - #vals[j]
    reply[#reply + 1] = vals[j]
    k = k + 1
  end
  reply[5] = k
  return reply
end
local n, out = tonumber(ARGV[1]), {}
for i = 0, n - 1 do
  local A = {}
  for j = 1, 8 do A[j] = ARGV[2 + i * 8 + j] end
  out[i + 1] = one(A)
end
return out
`)

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
if redis.call('HEXISTS', KEYS[1], '@status') == 0 then
  return {'stale', 'missing', '0', ''}
end
local st, a, e, o = getrec(KEYS[1], ARGV[1])
local att, ep = tonumber(ARGV[2]), tonumber(ARGV[3])
if st ~= 'running' and e == ep and o == ARGV[4] then
  -- Same epoch and owner: nobody took the claim over; it ended with the
  -- caller's own outcome (maybe already followed by a retry dispatch,
  -- which keeps epoch and owner). A heartbeat that raced it is benign.
  return {'done'}
end
if st ~= 'running' or a ~= att or e ~= ep or o ~= ARGV[4] then
  append(KEYS[2], ARGV[9], 'result_rejected', ARGV[1], att, ep, ARGV[4], ARGV[6],
    cjson.encode({what = 'heartbeat', reason = 'claim lost: task is ' .. st .. ' at epoch ' .. tostring(e), current_epoch = e}))
  return {'stale', st, tostring(e), o}
end
if ARGV[8] == '1' then
  append(KEYS[2], ARGV[5], 'task_heartbeat', ARGV[1], a, e, ARGV[4], ARGV[6], ARGV[7])
end
return {'ok'}
`)

// releaseScript hands a claim back (a draining worker that cannot finish):
// if the caller still holds it, the epoch is bumped, the task is dispatched
// again for the same attempt and task_reclaimed records why. The caller
// then queues a fresh message and acks its own.
//
// KEYS: 1 state, 2 log
// ARGV: 1 task, 2 attempt, 3 epoch, 4 worker, 5 event id, 6 time ms
// Reply: {"ok"} | {"stale", status, epoch, owner}
var releaseScript = redis.NewScript(prelude + `
local st, a, e, o = getrec(KEYS[1], ARGV[1])
if st ~= 'running' or a ~= tonumber(ARGV[2]) or e ~= tonumber(ARGV[3]) or o ~= ARGV[4] then
  return {'stale', st, tostring(e), o}
end
e = e + 1
setrec(KEYS[1], ARGV[1], 'dispatched', a, e, '')
append(KEYS[2], ARGV[5], 'task_reclaimed', ARGV[1], a, e, ARGV[4], ARGV[6],
  cjson.encode({from = ARGV[4], reason = 'handed back'}))
return {'ok'}
`)

// requeueScript gives a task that failed for good another attempt and
// reopens its run (the projector then requeues the tasks skipped behind it).
//
// KEYS: 1 state, 2 log, then the run's other keys (their TTLs are removed)
// ARGV: 1 task, 2 event id, 3 time ms, 4 writer, 5 body
// Reply: {"ok", newly dirty 0|1} | {"refused", task status, run status}
var requeueScript = redis.NewScript(prelude + `
local run = redis.call('HGET', KEYS[1], '@status')
local st, a, e, o = getrec(KEYS[1], ARGV[1])
if st ~= 'failed' or (run ~= 'failed' and run ~= 'running') then
  return {'refused', st, run or ''}
end
setrec(KEYS[1], ARGV[1], 'pending', a, e, '')
-- A reopened run must not expire while it runs (RunTTL set it when it
-- ended); it gets its TTL again when it ends again.
for _, key in ipairs(KEYS) do redis.call('PERSIST', key) end
local seq = append(KEYS[2], ARGV[2], 'task_requeued', ARGV[1], a, e, ARGV[4], ARGV[3], ARGV[5])
-- Moving the cursor makes any projector commit decided before this requeue
-- (a run_failed, a task_skipped) fail its compare-and-set and re-fold.
redis.call('HSET', KEYS[1], '@status', 'running', '@cursor', seq)
return {'ok', redis.call('HSETNX', KEYS[1], '@dirty', '1')}
`)

// fetchScript reads up to n new messages from a pool's band streams for a
// consumer, strictly highest band first (one multi-stream XREADGROUP would
// apply COUNT per stream and interleave bands). Non-blocking: when it
// returns nothing, the worker blocks on all bands with XREADGROUP.
//
// KEYS: the pool's band streams, highest priority first (one slot: {q:pool})
// ARGV: 1 group, 2 consumer, 3 n
// Reply: {{stream, id, {field, value, ...}}, ...}
var fetchScript = redis.NewScript(`
local n = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS do
  if n <= 0 then break end
  -- Acked entries are deleted, so an empty band has nothing new: skip the
  -- (costlier) XREADGROUP.
  local r = false
  if redis.call('XLEN', KEYS[i]) > 0 then
    r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n, 'STREAMS', KEYS[i], '>')
  end
  if r then
    for _, m in ipairs(r[1][2]) do
      out[#out + 1] = {KEYS[i], m[1], m[2]}
      n = n - 1
    end
  end
end
return out
`)

// queueAckScript acknowledges and deletes a queue message only if it is
// pending for this consumer. XACK takes no consumer name, so a blind XACK
// from a worker that lost its claim would drop a reclaimed message.
//
// KEYS: 1 queue stream
// ARGV: 1 group, 2 consumer, 3... message ids
// Reply: per id, 1 acked, 0 not pending, -1 pending for another consumer
var queueAckScript = redis.NewScript(ackLua + `
local ids = {}
for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
local bad = badids(ids)
if bad then return bad end
return ackmine(KEYS[1], ARGV[1], ARGV[2], ids)
`)

// queueMoveScript gives a message back to the pool: it queues a fresh copy
// (on the band stream KEYS[2]) and acks and deletes the old one, only if
// the old one is pending for this consumer — atomically, so the old message
// is never acked without its replacement (two streams of one pool share a
// slot).
//
// KEYS: 1 the message's stream, 2 the stream for the copy
// ARGV: 1 group, 2 consumer, 3 message id, 4 run, 5 task, 6 attempt
// Reply: 1 moved, 0 not pending, -1 pending for another consumer
var queueMoveScript = redis.NewScript(`
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] then return -1 end
redis.call('XADD', KEYS[2], '*', 'r', ARGV[4], 'k', ARGV[5], 'a', ARGV[6])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
`)

// gcScript deletes a finished run's keys if it is still finished and fully
// projected (no @dirty): the check and the delete are one step, so a
// requeue cannot slip in between.
//
// KEYS: 1 state, 2 log, then the run's other keys
// Reply: {deleted keys, events} | {-1, status} (not collectable)
var gcScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], '@status')
if (st ~= 'succeeded' and st ~= 'failed' and st ~= 'cancelled' and st ~= 'quarantined') or redis.call('HEXISTS', KEYS[1], '@dirty') == 1 then
  return {-1, st or ''}
end
local n = redis.call('XLEN', KEYS[2])
return {redis.call('DEL', unpack(KEYS)), n}
`)

// queueTouchScript resets a pending message's idle time (the lease) if it is
// pending for this consumer: an owner-checked XCLAIM ... JUSTID.
//
// KEYS: 1 queue stream
// ARGV: 1 group, 2 consumer, 3 message id
// Reply: 1 touched, 0 not pending, -1 pending for another consumer
var queueTouchScript = redis.NewScript(`
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] then return -1 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
`)
