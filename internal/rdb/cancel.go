package rdb

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// cancelScript cancels a running run in one step: it appends run_cancelled
// and, right after it, a task_cancelled for every task that is not
// terminal, each with the task's epoch moved on (so a worker running one
// is fenced: its next heartbeat and its result are rejected, and its
// handler's context is cancelled); it sets those records to cancelled, the
// run's @status to cancelled, and points the feed at the run (its
// projector applies the run's TTL and forgets it). Queued and delayed
// messages stay where they are: a claim of a task of a run that is not
// running is refused and the message acked, so none of them runs. The
// fold derives the same records from the events (replay verify checks
// it). Every check comes before the first write.
//
// KEYS: 1 state, 2 log, 3 feed
// ARGV: 1 run, 2 canceller (the events' worker field), 3 time ms,
//
//	4 reason, 5 n event ids, then n event ids (the first for
//	run_cancelled)
//
// Reply: {"cancelled", tasks} | {"already"} | {"finished", status} |
// {"missing"} | {"ids", needed} (too few event ids: the run has more open
// tasks than the caller guessed; call again with that many)
var cancelScript = redis.NewScript(prelude + `
local st = redis.call('HGET', KEYS[1], '@status') or loggedend(KEYS[2])
if not st then return {'missing'} end
if st == 'cancelled' then return {'already'} end
if st ~= 'running' then return {'finished', st} end
local bad = notwritable(KEYS[3], 'stream') or notwritable(KEYS[2], 'stream')
if bad then return bad end
local tasks = taskids(KEYS[1])
table.sort(tasks)
local open = {}
for i = 1, #tasks, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #tasks) do chunk[#chunk + 1] = tasks[j] end
  local recs = redis.call('HMGET', KEYS[1], unpack(chunk))
  for j = 1, #chunk do
    local s, a, e, o = parserec(recs[j])
    if s == '?' then
      return redis.error_reply('ERR unreadable task record of ' .. chunk[j] .. ': ' .. tostring(recs[j]))
    end
    if not terminal[s] then open[#open + 1] = {chunk[j], s, a, e, o} end
  end
end
local n = tonumber(ARGV[5])
if n < #open + 1 then return {'ids', #open + 1} end
append(KEYS[2], ARGV[6], 'run_cancelled', '', 0, 0, ARGV[2],
  cjson.encode({reason = ARGV[4], tasks = #open}))
for k, t in ipairs(open) do
  local body = {from = t[2]}
  if t[5] ~= '' then body.owner = t[5] end
  append(KEYS[2], ARGV[6 + k], 'task_cancelled', t[1], t[3], t[4] + 1, ARGV[2], cjson.encode(body))
  setrec(KEYS[1], t[1], 'cancelled', t[3], t[4] + 1, '')
end
local newly = redis.call('HSETNX', KEYS[1], '@dirty', '1')
redis.call('HSET', KEYS[1], '@status', 'cancelled')
if newly == 1 then redis.call('XADD', KEYS[3], '*', 'r', ARGV[1]) end
return {'cancelled', #open}
`)

// CancelResult is the reply of CancelRun.
type CancelResult struct {
	// Outcome is "cancelled" (this call cancelled the run), "already"
	// (it was cancelled before) or "finished" (it had ended: Status says
	// how, and nothing was written).
	Outcome string
	// Status is the run's status when it had ended (Outcome "finished").
	Status string
	// Tasks counts the tasks this call cancelled.
	Tasks int
}

// ErrRunMissing is returned for a run that does not exist (never
// submitted, or deleted by GC or its TTL).
var ErrRunMissing = errors.New("no such run")

// CancelRun cancels run (see cancelScript): by names the canceller in the
// events ("client-...", a worker id), ids makes an event id (ULIDs).
func (d DB) CancelRun(ctx context.Context, run, by, reason string, timeMS int64, ids func() string) (CancelResult, error) {
	want := 16
	for {
		args := []any{run, by, timeMS, reason, want}
		for range want {
			args = append(args, ids())
		}
		res, err := cancelScript.Run(ctx, d.C, []string{d.K.RunState(run), d.K.RunLog(run), d.K.FeedFor(run)}, args...).Slice()
		if err != nil {
			return CancelResult{}, fmt.Errorf("cancel run %s: %w", run, err)
		}
		switch res[0] {
		case "cancelled":
			return CancelResult{Outcome: "cancelled", Tasks: int(res[1].(int64))}, nil
		case "already":
			return CancelResult{Outcome: "already"}, nil
		case "finished":
			return CancelResult{Outcome: "finished", Status: res[1].(string)}, nil
		case "missing":
			return CancelResult{}, fmt.Errorf("cancel run %s: %w", run, ErrRunMissing)
		case "ids":
			want = int(res[1].(int64))
		default:
			return CancelResult{}, fmt.Errorf("cancel run %s: unexpected reply %v", run, res)
		}
	}
}
