package rdb

import (
	"strconv"

	"github.com/redis/go-redis/v9"
)

// The Lua that several scripts share (each prepends what it uses to its
// own source), and the list of every script of the engine.

// endLua is the Lua of a succeeded run's end: the end that appends
// run_succeeded deletes the run's state hash (with its tasks' metadata
// and results) in the same step (a finished run is its log and its index entry: every reader
// of a run without state folds its log), and every script that finds no
// state asks its log whether the run is such a run. Nothing but
// result_rejected is appended to a run without state (a late outcome,
// heartbeat or channel write is rejected as with state, its current epoch
// read from the log), so run_succeeded is its last entry before any
// rejections.
const endLua = `
-- foldend deletes what a succeeded run keeps besides its log.
local function foldend(state)
  redis.call('DEL', state)
end
-- loggedend is for a run whose state hash is gone: 'succeeded' when its
-- log's last entry other than a rejection is run_succeeded (the end
-- deleted the rest), nil when the run is gone.
local function loggedend(log)
  local from = '+'
  while true do
    local page = redis.call('XREVRANGE', log, from, '-', 'COUNT', 16)
    for _, m in ipairs(page) do
      if m[2][4] ~= 'result_rejected' then
        if m[2][3] == 't' and m[2][4] == 'run_succeeded' then return 'succeeded' end
        return nil
      end
    end
    if #page < 16 then return nil end
    from = '(' .. page[#page][1]
  end
end
-- inlog reports whether one of the log's last n entries has event id id
-- (a call sent again after a lost reply finds its own events).
local function inlog(log, id, n)
  for _, m in ipairs(redis.call('XREVRANGE', log, '+', '-', 'COUNT', n)) do
    if m[2][1] == 'id' and m[2][2] == id then return true end
  end
  return false
end
-- lasttask returns, for a run without state, what its record would say
-- of task: the status its last event (not a rejection) left, and that
-- event's epoch and worker; among the log's last 256 entries ('succeeded',
-- 0, '' when not there).
local endedby = {task_succeeded = 'succeeded', task_failed = 'failed', task_timed_out = 'failed',
  task_skipped = 'skipped', task_cancelled = 'cancelled'}
local function lasttask(log, task)
  for _, m in ipairs(redis.call('XREVRANGE', log, '+', '-', 'COUNT', 256)) do
    if m[2][7] == 'k' and m[2][8] == task and m[2][4] ~= 'result_rejected' then
      return endedby[m[2][4]] or m[2][4], tonumber(m[2][12]) or 0, m[2][14] or ''
    end
  end
  return 'succeeded', 0, ''
end
`

// prelude is prepended to every run-slot script. It holds the one encoder of
// events written from Lua (the same field layout as events.Event.Fields:
// schema version 2, whose time is the event id's, a ULID the caller minted
// with events.NewID from the clock reading it passes as the script's "time
// ms"; the scripts no longer store that time, some use it otherwise) and
// the codec of a task record, "status|attempt|epoch|owner". Used by submit
// (submit.go), commit (project_commit.go), claim (queue_claim.go), finish
// (queue_finish.go), heartbeat and release (queue.go), quarantine
// (project.go), requeue and import_state (admin.go).
const prelude = `
-- itoa is tostring, made once per call for each number: Lua's tostring of
-- a number formats it with sprintf("%.14g") and makes a new string, about
-- 0.5 µs each time, and a call's records and events repeat the same few
-- attempts and epochs.
local ITOA = {}
local function itoa(n)
  local s = ITOA[n]
  if s then return s end
  s = tostring(n)
  if type(n) == 'number' and n == n then ITOA[n] = s end
  return s
end
local function append(log, id, typ, task, attempt, epoch, worker, body)
  return redis.call('XADD', log, '*', 'id', id, 't', typ, 'v', '2', 'k', task,
    'a', itoa(attempt), 'e', itoa(epoch), 'w', worker, 'b', body)
end
` + endLua + `
-- rejectlate records, as result_rejected with event id id, a late write
-- (what: result, failure, heartbeat, channel) of worker at attempt att and
-- epoch ep to task of a succeeded run that keeps only its log, and
-- returns the task's status, epoch and owner as its last event left them.
local function rejectlate(log, id, what, task, att, ep, worker)
  local st, e, o = lasttask(log, task)
  append(log, id, 'result_rejected', task, att, ep, worker,
    cjson.encode({what = what, reason = 'claim lost: task is ' .. st .. ' at epoch ' .. tostring(e), current_epoch = e}))
  return st, e, o
end
-- A record that does not parse (changed by hand) reads as status '?',
-- which no check accepts.
local function parserec(r)
  if not r then return 'pending', 0, 0, '' end
  local st, a, e, o = string.match(r, '^([^|]*)|(%d+)|(%d+)|(.*)$')
  if not st then return '?', -1, -1, '' end
  return st, tonumber(a), tonumber(e), o
end
local function getrec(state, task)
  return parserec(redis.call('HGET', state, task))
end
-- taskids returns the ids of the run's tasks: those with metadata
-- (@g:<task>) in its state hash.
local function taskids(state)
  local out = {}
  for _, f in ipairs(redis.call('HKEYS', state)) do
    if string.sub(f, 1, 3) == '@g:' then out[#out + 1] = string.sub(f, 4) end
  end
  return out
end
-- getrun reads the run's status and a task's record in one command.
local function getrun(state, task)
  local r = redis.call('HMGET', state, '@status', task)
  return r[1], parserec(r[2])
end
local function recstr(st, a, e, o)
  return st .. '|' .. itoa(a) .. '|' .. itoa(e) .. '|' .. o
end
local function setrec(state, task, st, a, e, o)
  redis.call('HSET', state, task, recstr(st, a, e, o))
end
local terminal = {succeeded=true, failed=true, skipped=true, cancelled=true}
-- notwritable returns an error reply if key holds a type other than typ
-- (a script checks the keys it will write before its first write: a
-- WRONGTYPE midway would leave a partial write behind).
local function notwritable(key, typ)
  local t = redis.call('TYPE', key)['ok']
  if t == typ or t == 'none' then return nil end
  return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. typ)
end
-- slice returns t[i..j] as a new table: made at its size in one step
-- (unpack) when Lua's stack holds it; filled one element at a time, a
-- table grows and is rehashed as it fills (for a submit's ~30 arguments,
-- ~1 µs of Redis time more).
local function slice(t, i, j)
  if j - i < 4000 then return {unpack(t, i, j)} end
  local out = {}
  for k = i, j do out[k - i + 1] = t[k] end
  return out
end
-- chunked runs cmd on key with the values t[i..j], at most 1,000 per call
-- (Lua's unpack limit), and returns the last reply.
local function chunked(cmd, key, t, i, j)
  local r
  while i <= j do
    local e = math.min(i + 999, j)
    r = redis.call(cmd, key, unpack(t, i, e))
    i = e + 1
  end
  return r
end
`

// enqueueLua defines enqueue, the one writer of a queue message (the
// fields MsgRun, MsgTask, MsgAttempt, MsgTrace): run, task, attempt, and the dispatching
// span's traceparent only when there is one. A message on a band above 0
// also sets the pool's Keys.QueueHigh mark, named from the band stream's
// key ("<ns>:{tag}:q:<pool>:<band>"; a namespace holds no brace): the
// fetch reads bands above 0 only while it is set. Used by submit
// (submit.go), commit (project_commit.go), finish (queue_finish.go),
// delayed_move (project.go), release, queue_move and enqueue (queue.go:
// XAddDispatch), and the admin scripts.
const enqueueLua = `
local function enqueue(key, run, task, attempt, trace)
  -- (Band 0, the usual one, is told by the key's end: no match made.)
  if string.sub(key, -2) ~= ':0' then
    local pre, pool, band = string.match(key, '^([^}]*}:)q:(.*):(%d+)$')
    if band and band ~= '0' then redis.call('SET', pre .. 'qhi:' .. pool, '1') end
  end
  if trace ~= nil and trace ~= '' then
    return redis.call('XADD', key, '*', 'r', run, 'k', task, 'a', attempt, 't', trace)
  end
  return redis.call('XADD', key, '*', 'r', run, 'k', task, 'a', attempt)
end
`

// ackLua defines ackmine, the owner-checked ack of several messages of one
// stream, and badids, which checks their ids (call it before any write).
// Used by finish (queue_finish.go) and queue_ack (queue.go).
//
// An ack does not delete its entry: an XDEL of a queue's oldest entries
// costs Redis ~4 µs each (it scans the node's deleted entries for the
// stream's new first id), as much as the task's other queue work together.
// The entries before the oldest still pending are removed in whole nodes by
// trimacked (trimLua), which the fetch runs.
const ackLua = `
local function parseid(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function badids(ids)
  for _, id in ipairs(ids) do
    if parseid(id) == nil then return redis.error_reply('ERR ack: bad message id ' .. id) end
  end
  return nil
end
-- ackmine acks those of ids that are pending for consumer (trimacked
-- removes the acked entries later) and
-- returns, per id, 1 acked, 0 not pending, -1 pending for another
-- consumer, -2 pending for consumer but delivered more than maxd times
-- (only with maxd above 0; nil or 0: any count). One XPENDING over the
-- ids' range, filtered to the consumer, finds ours; an id it did not list
-- (another consumer's, gone, or past the COUNT) is looked up on its own.
local function ackmine(stream, group, consumer, ids, maxd)
  maxd = tonumber(maxd) or 0
  local lo, hi, lms, lseq, hms, hseq
  for _, id in ipairs(ids) do
    local ms, seq = parseid(id)
    if lo == nil or ms < lms or (ms == lms and seq < lseq) then lo, lms, lseq = id, ms, seq end
    if hi == nil or ms > hms or (ms == hms and seq > hseq) then hi, hms, hseq = id, ms, seq end
  end
  local mine = {} -- id -> its delivery count
  if lo then
    for _, p in ipairs(redis.call('XPENDING', stream, group, lo, hi, 2 * #ids + 64, consumer)) do
      mine[p[1]] = p[4]
    end
  end
  local out, acks = {}, {}
  for _, id in ipairs(ids) do
    local d, r = mine[id], 1
    if not d then
      local p = redis.call('XPENDING', stream, group, id, id, 1)
      if #p == 0 then
        r = 0
      elseif p[1][2] ~= consumer then
        r = -1
      else
        d = p[1][4]
      end
    end
    if r == 1 and maxd > 0 and d > maxd then r = -2 end
    out[#out + 1] = r
    if r == 1 then acks[#acks + 1] = id end
  end
  for i = 1, #acks, 1000 do
    redis.call('XACK', stream, group, unpack(acks, i, math.min(i + 999, #acks)))
  end
  return out
end
`

// trimLua defines trimacked, which removes a queue stream's acked entries.
// A group delivers in id order, so every entry before the oldest pending
// one was delivered and acked: those go in whole nodes (XTRIM MINID ~, a
// few µs for a node of 100 entries), once the stream holds trimAtLength
// entries; with nothing pending and nothing left to deliver (the caller
// read the stream with '>' and got fewer than it asked for), every entry
// goes. No entry still pending or not yet delivered is ever removed.
//
// A message pending for long (a long task's) holds every entry after it
// back from the trim: once the stream holds cleanAtLength acked entries
// (its length less the pending and the group's lag, the undelivered),
// the acked ones among the cleanWindow entries after the oldest pending
// are deleted (XDEL, cheap there: never the stream's first entry), one
// window per call, so that a stream's memory stays bounded by what is
// live, as when every ack deleted its entry.
var trimLua = `
local function trimacked(stream, group, len, drained)
  local p = redis.call('XPENDING', stream, group, '-', '+', 1)
  if #p == 0 then
    if drained then redis.call('XTRIM', stream, 'MAXLEN', 0) end
    return
  end
  local oldest = p[1][1]
  if len >= ` + strconv.Itoa(trimAtLength) + ` then redis.call('XTRIM', stream, 'MINID', '~', oldest) end
  if len < ` + strconv.Itoa(cleanAtLength) + ` then return end
  local pending, lag, delivered = nil, nil, nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local f = {}
    for i = 1, #g - 1, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == group then pending, lag, delivered = f['pending'], f['lag'], f['last-delivered-id'] end
  end
  if type(lag) ~= 'number' or type(pending) ~= 'number' or not delivered then return end
  if redis.call('XLEN', stream) - pending - lag < ` + strconv.Itoa(cleanAtLength) + ` then return end
  local es = redis.call('XRANGE', stream, '(' .. oldest, delivered, 'COUNT', ` + strconv.Itoa(cleanWindow) + `)
  if #es == 0 then return end
  -- Every pending id of the window's range, by the group's whole pending
  -- count: ids deleted from the stream while pending (by hand) stay in the
  -- pending list, and a COUNT of the window's size would let them push
  -- live pending entries out of the reply.
  local live = {}
  for _, x in ipairs(redis.call('XPENDING', stream, group, '(' .. oldest, es[#es][1], pending)) do live[x[1]] = true end
  local del = {}
  for _, e in ipairs(es) do
    if not live[e[1]] then del[#del + 1] = e[1] end
  end
  if #del > 0 then redis.call('XDEL', stream, unpack(del)) end
end
`

// trimAtLength is the stream length from which trimacked trims: a little
// over a node of the default stream-node-max-entries (100), so that a trim
// usually frees one. cleanAtLength is the count of acked entries held
// back by a message pending for long from which it deletes them,
// cleanWindow entries per call.
const (
	trimAtLength  = 128
	cleanAtLength = 1000
	cleanWindow   = 256
)

// Scripts lists every script with the keys of one call, for the one-slot test
// and for preloading.
func Scripts() map[string]*redis.Script {
	return map[string]*redis.Script{
		"submit":         submitScript,
		"commit":         commitScript,
		"claim":          claimScript,
		"claim_fresh":    claimFreshScript,
		"finish":         finishScript,
		"heartbeat":      heartbeatScript,
		"queue_ack":      queueAckScript,
		"ack_copy":       ackCopyScript,
		"point_ack":      pointAckScript,
		"queue_touch":    queueTouchScript,
		"release":        releaseScript,
		"fetch":          fetchScript,
		"queue_move":     queueMoveScript,
		"enqueue":        enqueueScript,
		"gc":             gcScript,
		"requeue":        requeueScript,
		"quarantine":     quarantineScript,
		"delayed_move":   delayedMoveScript,
		"cancel":         cancelScript,
		"schedule_add":   scheduleAddScript,
		"schedule_pause": schedulePauseScript,
		"schedule_fired": scheduleFiredScript,
		"channel_write":  channelWriteScript,
		"spawned":        spawnedScript,
		"signal":         signalScript,
		"expire_results": expireResultsScript,
		"import_append":  importAppendScript,
		"import_state":   importStateScript,
		"resume":         resumeScript,
		"prune":          pruneConsumersScript,
		"reclaim":        reclaimScript,
		"repair_done":    repairDoneScript,
	}
}
