package rdb

import "github.com/redis/go-redis/v9"

// The floor scripts are not part of the engine. They are the least Redis
// work that any engine keeping the invariants must do for one single-task
// run, and the bench's "floor" workload drives them with perfect batching
// and no engine logic, to measure the fastest such an engine could go on a
// machine. Every state change is still an event appended in the script that
// checks it (invariant 1), every script touches one run's slot (invariant
// 6), and the queue message is acked through the owner-checked queue_ack
// script (invariant 4). Everything else is as favourable as it can be:
//
//   - the client decides the root's dispatch at submit, so the run's only
//     projector commit is its end; the queue XADD rides in the submit's
//     pipeline (an engine would still need a crash-safe owner for it);
//   - one hash per run holds records, metadata, input and results, so
//     each script reads once and writes once;
//   - the commit trusts a cursor it holds in memory (no tail read) and
//     neither compacts the log nor sets a TTL;
//   - no retries, priorities, heartbeats, feed coalescing or dead letters.
//
// Events have the engine's envelope (the fields of events.Event.Fields).
const floorPrelude = `
local function ev(log, id, typ, task, a, e, w, ts, body)
  return redis.call('XADD', log, '*', 'id', id, 't', typ, 'v', '1', 'k', task,
    'a', a, 'e', e, 'w', w, 'ts', ts, 'b', body)
end
`

// floorSubmitScript: run_submitted and the root's task_dispatched, and the
// run's hash.
//
// KEYS: 1 run hash, 2 log
// ARGV: 1 run_submitted id, 2 task_dispatched id, 3 time ms, 4 body,
// 5 workflow, 6 root task, 7 its meta, 8 input, 9 dispatch body, then
// (task, meta) pairs of the other tasks
// Reply: {"created", cursor} | {"exists"}
var floorSubmitScript = redis.NewScript(floorPrelude + `
if redis.call('HEXISTS', KEYS[1], '@status') == 1 then return {'exists'} end
ev(KEYS[2], ARGV[1], 'run_submitted', '', '0', '0', '', ARGV[3], ARGV[4])
local seq = ev(KEYS[2], ARGV[2], 'task_dispatched', ARGV[6], '1', '0', 'client', ARGV[3], ARGV[9])
local f = {'@status', 'running', '@workflow', ARGV[5], '@cursor', seq,
  '@input', ARGV[8], ARGV[6], 'dispatched|1|0|', 'm|' .. ARGV[6], ARGV[7]}
for i = 10, #ARGV, 2 do
  f[#f + 1] = 'm|' .. ARGV[i]; f[#f + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[1], unpack(f))
return {'created', seq}
`)

// floorAdvanceScript: the projector's compare-and-set on the cursor and
// the next task's task_dispatched (a sequence's next step).
//
// KEYS: 1 run hash, 2 log
// ARGV: 1 expected cursor, 2 event id, 3 time ms, 4 writer, 5 task, 6 dispatch body
// Reply: {"ok", cursor} | {"conflict", cursor}
var floorAdvanceScript = redis.NewScript(floorPrelude + `
local cur = redis.call('HGET', KEYS[1], '@cursor')
if cur ~= ARGV[1] then return {'conflict', cur or ''} end
local seq = ev(KEYS[2], ARGV[2], 'task_dispatched', ARGV[5], '1', '0', ARGV[4], ARGV[3], ARGV[6])
redis.call('HSET', KEYS[1], ARGV[5], 'dispatched|1|0|', '@cursor', seq, '@dirty', '0')
return {'ok', seq}
`)

// floorClaimScript: the claim check, the epoch bump and task_claimed.
//
// KEYS: 1 run hash, 2 log
// ARGV: 1 task, 2 attempt, 3 worker, 4 event id, 5 time ms
// Reply: {"ok", epoch, meta, input} | {"stale"}
var floorClaimScript = redis.NewScript(floorPrelude + `
local h = redis.call('HMGET', KEYS[1], '@status', ARGV[1], 'm|' .. ARGV[1], '@input')
if h[1] ~= 'running' or not h[2] then return {'stale'} end
local st, a, e = string.match(h[2], '^([^|]*)|([^|]*)|([^|]*)|')
if st ~= 'dispatched' or a ~= ARGV[2] then return {'stale'} end
e = tostring(tonumber(e) + 1)
redis.call('HSET', KEYS[1], ARGV[1], 'running|' .. a .. '|' .. e .. '|' .. ARGV[3])
ev(KEYS[2], ARGV[4], 'task_claimed', ARGV[1], a, e, ARGV[3], ARGV[5], '')
return {'ok', e, h[3], h[4]}
`)

// floorFinishScript: the fencing check, the record and result, and
// task_succeeded.
//
// KEYS: 1 run hash, 2 log
// ARGV: 1 task, 2 attempt, 3 epoch, 4 worker, 5 event id, 6 time ms, 7 result
// Reply: {"ok", newly dirty 0|1} | {"stale"}
var floorFinishScript = redis.NewScript(floorPrelude + `
local h = redis.call('HMGET', KEYS[1], ARGV[1], '@dirty')
if h[1] ~= 'running|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4] then return {'stale'} end
redis.call('HSET', KEYS[1], ARGV[1], 'succeeded|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4],
  'r|' .. ARGV[1], ARGV[7], '@dirty', '1')
ev(KEYS[2], ARGV[5], 'task_succeeded', ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[6],
  '{"result":' .. ARGV[7] .. '}')
local newly = 1
if h[2] == '1' then newly = 0 end
return {'ok', newly}
`)

// FloorScripts are the scripts of the bench's floor workload (see
// floorPrelude), by name, for loading and the one-slot test.
func FloorScripts() map[string]*redis.Script {
	return map[string]*redis.Script{
		"floor_submit":  floorSubmitScript,
		"floor_claim":   floorClaimScript,
		"floor_finish":  floorFinishScript,
		"floor_advance": floorAdvanceScript,

		"floor_dispatch":    floorDispatchScript,
		"floor_claim_many":  floorClaimManyScript,
		"floor_finish_many": floorFinishManyScript,
		"floor_cursor":      floorCursorScript,
	}
}

// The fan-out floor: many tasks of one run, in batches. Each script reads
// the run's hash once and writes it once for the whole batch, and appends
// one event per task.

// floorDispatchScript: the projector's task_dispatched for a batch of
// ready tasks (no cursor check: the floor's single projector decided them).
//
// KEYS: 1 run hash, 2 log
// ARGV: 1 time ms, 2 writer, 3 dispatch body, then (task, event id) pairs
// Reply: {"ok"}
var floorDispatchScript = redis.NewScript(floorPrelude + `
local recs = {}
for i = 4, #ARGV, 2 do
  ev(KEYS[2], ARGV[i + 1], 'task_dispatched', ARGV[i], '1', '0', ARGV[2], ARGV[1], ARGV[3])
  recs[#recs + 1] = ARGV[i]; recs[#recs + 1] = 'dispatched|1|0|'
end
redis.call('HSET', KEYS[1], unpack(recs))
return {'ok'}
`)

// floorClaimManyScript: claims of a batch of tasks by one worker.
//
// KEYS: 1 run hash, 2 log
// ARGV: 1 worker, 2 time ms, then (task, event id) pairs
// Reply: {"ok", epoch, meta, input, ...} with (epoch, meta) per task | {"stale", task}
var floorClaimManyScript = redis.NewScript(floorPrelude + `
local fields = {'@status', '@input'}
for i = 3, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]; fields[#fields + 1] = 'm|' .. ARGV[i]
end
local h = redis.call('HMGET', KEYS[1], unpack(fields))
if h[1] ~= 'running' then return {'stale', ''} end
-- Every item is checked before anything is written.
local eps = {}
for i = 3, #ARGV, 2 do
  local st, a, e = string.match(h[i] or '', '^([^|]*)|([^|]*)|([^|]*)|')
  if st ~= 'dispatched' or a ~= '1' then return {'stale', ARGV[i]} end
  eps[i] = tostring(tonumber(e) + 1)
end
local reply, recs = {'ok', h[2]}, {}
for i = 3, #ARGV, 2 do
  recs[#recs + 1] = ARGV[i]; recs[#recs + 1] = 'running|1|' .. eps[i] .. '|' .. ARGV[1]
  ev(KEYS[2], ARGV[i + 1], 'task_claimed', ARGV[i], '1', eps[i], ARGV[1], ARGV[2], '')
  reply[#reply + 1] = eps[i]; reply[#reply + 1] = h[i + 1]
end
redis.call('HSET', KEYS[1], unpack(recs))
return reply
`)

// floorFinishManyScript: outcomes of a batch of tasks of one worker.
//
// KEYS: 1 run hash, 2 log
// ARGV: 1 worker, 2 time ms, 3 result, then (task, epoch, event id) triples
// Reply: {"ok", newly dirty 0|1} | {"stale", task}
var floorFinishManyScript = redis.NewScript(floorPrelude + `
local fields = {'@dirty'}
for i = 4, #ARGV, 3 do fields[#fields + 1] = ARGV[i] end
local h = redis.call('HMGET', KEYS[1], unpack(fields))
-- Every item is checked before anything is written.
for i = 4, #ARGV, 3 do
  if h[2 + (i - 4) / 3] ~= 'running|1|' .. ARGV[i + 1] .. '|' .. ARGV[1] then return {'stale', ARGV[i]} end
end
local recs = {'@dirty', '1'}
for i = 4, #ARGV, 3 do
  recs[#recs + 1] = ARGV[i]; recs[#recs + 1] = 'succeeded|1|' .. ARGV[i + 1] .. '|' .. ARGV[1]
  recs[#recs + 1] = 'r|' .. ARGV[i]; recs[#recs + 1] = ARGV[3]
  ev(KEYS[2], ARGV[i + 2], 'task_succeeded', ARGV[i], '1', ARGV[i + 1], ARGV[1], ARGV[2], '{"result":' .. ARGV[3] .. '}')
end
redis.call('HSET', KEYS[1], unpack(recs))
local newly = 1
if h[1] == '1' then newly = 0 end
return {'ok', newly}
`)

// floorCursorScript: the projector's compare-and-set of the cursor after
// folding outcomes that decide nothing; with end set, run_succeeded (the
// end of every floor run).
//
// KEYS: 1 run hash, 2 log
// ARGV: 1 expected cursor, 2 new cursor, 3 end 0|1, 4 event id, 5 time ms, 6 writer
// Reply: {"ok", cursor} | {"conflict", cursor}
var floorCursorScript = redis.NewScript(floorPrelude + `
local cur = redis.call('HGET', KEYS[1], '@cursor')
if cur ~= ARGV[1] then return {'conflict', cur or ''} end
local seq = ARGV[2]
if ARGV[3] == '1' then
  seq = ev(KEYS[2], ARGV[4], 'run_succeeded', '', '0', '0', ARGV[6], ARGV[5], '')
  redis.call('HSET', KEYS[1], '@status', 'succeeded', '@cursor', seq, '@dirty', '0')
else
  redis.call('HSET', KEYS[1], '@cursor', seq, '@dirty', '0')
end
return {'ok', seq}
`)
