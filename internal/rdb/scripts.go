package rdb

import "github.com/redis/go-redis/v9"

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
