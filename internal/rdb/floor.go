package rdb

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// The floor scripts are not part of the engine. They are the least Redis
// work that any engine keeping the invariants must do for one single-task
// run, and the bench's "floor" workload drives them with perfect batching
// and no engine logic, to measure the fastest such an engine could go on a
// machine. Every state change is still an event appended in the script that
// checks it (invariant 1), every script touches one run's slot (invariant
// 6), and the queue message is acked through the owner-checked queue_ack
// script (invariant 4). Everything else is as favourable as it can be:
//
//   - the client decides the root's dispatch at submit and the last
//     step's finish ends the run (as the engine's finish does for a small
//     run whose tasks all succeeded), so a single-task run has no
//     projector commit at all and a chain one per step after the first;
//     the queue XADD rides in the submit's pipeline (an engine would
//     still need a crash-safe owner for it);
//   - one hash per run holds records, metadata, input and results, so
//     each script reads once and writes once;
//   - the commit trusts a cursor it holds in memory (no tail read) and
//     neither compacts the log nor sets a TTL;
//   - no retries, priorities, heartbeats, feed coalescing or dead letters.
//
// Events have the engine's envelope (the fields of events.Event.Fields,
// schema version 2: an event's time is its ULID id's; the scripts' "time
// ms" arguments are not stored).
const floorPrelude = `
local function ev(log, id, typ, task, a, e, w, body)
  return redis.call('XADD', log, '*', 'id', id, 't', typ, 'v', '2', 'k', task,
    'a', a, 'e', e, 'w', w, 'b', body)
end
`

// FloorScripts are the scripts of the bench's floor workload (see
// floorPrelude), by name.
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

// LoadFloorScripts loads the floor's scripts, which the floor sends by
// EVALSHA only.
func (d DB) LoadFloorScripts(ctx context.Context) error { return d.load(ctx, FloorScripts()) }

// FloorLane is one lane of the floor workload: the queue stream its worker
// reads, the feed its projector reads, and their names.
type FloorLane struct {
	Queue, Feed       string
	Worker, Projector string
}

// The sequence floor (the single-task and chain workloads): a lane takes a
// batch of runs through each step in one round trip for all of them. Every
// method fails on a reply an engine would have to handle (a stale claim, a
// conflict), which a lone lane never gets.

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
ev(KEYS[2], ARGV[1], 'run_submitted', '', '0', '0', '', ARGV[4])
local seq = ev(KEYS[2], ARGV[2], 'task_dispatched', ARGV[6], '1', '0', 'client', ARGV[9])
local f = {'@status', 'running', '@workflow', ARGV[5], '@cursor', seq,
  '@input', ARGV[8], ARGV[6], 'dispatched|1|0|', 'm|' .. ARGV[6], ARGV[7]}
for i = 10, #ARGV, 2 do
  f[#f + 1] = 'm|' .. ARGV[i]; f[#f + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[1], unpack(f))
return {'created', seq}
`)

// FloorSubmit submits runs of a steps-long sequence of noop tasks (task k
// after task k-1) in one round trip: each run's floor_submit and its first
// task's message on the lane's queue. It returns each run's cursor.
func (d DB) FloorSubmit(ctx context.Context, lane FloorLane, runs []string, steps int) ([]string, error) {
	spec := `{"workflow":"bench-floor","tasks":[{"id":"t0","handler":"noop"}`
	for k := 1; k < steps; k++ {
		spec += `,{"id":"` + floorTask(k) + `","handler":"noop","deps":["` + floorTask(k-1) + `"]}`
	}
	spec += "]}"
	subs, err := d.floorExec(ctx, "submit", func(p redis.Pipeliner) []*redis.Cmd {
		cmds := make([]*redis.Cmd, len(runs))
		for i, run := range runs {
			args := []any{ulid.Make().String(), ulid.Make().String(), floorNow(), spec, "bench-floor", floorTask(0), `{"h":"noop"}`, "", floorDispatchBody}
			for k := 1; k < steps; k++ {
				args = append(args, floorTask(k), `{"h":"noop","d":["`+floorTask(k-1)+`"]}`)
			}
			cmds[i] = floorSubmitScript.EvalSha(ctx, p, d.floorKeys(run), args...)
			floorQueue(ctx, p, lane.Queue, run, 0)
		}
		return cmds
	})
	if err != nil {
		return nil, err
	}
	return column(subs, 1), nil
}

// FloorRead reads exactly n new entries of stream for consumer of group
// (non-blocking: a lane's entries are all there) and returns their ids and
// the runs they name.
func (d DB) FloorRead(ctx context.Context, group, consumer, stream string, n int) (ids, runs []string, err error) {
	ids, runs, err = d.FloorPoll(ctx, group, consumer, stream, MsgRun, n, -1)
	if err == nil && len(ids) != n {
		err = fmt.Errorf("%d entries, want %d", len(ids), n)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("floor read %s: %w", stream, err)
	}
	return ids, runs, nil
}

// FloorPoll reads up to count new entries of stream for consumer of group,
// blocking up to block (block < 0: not at all), and returns their ids and
// the values of their field field. None and no error when the block ran
// out.
func (d DB) FloorPoll(ctx context.Context, group, consumer, stream, field string, count int, block time.Duration) (ids, values []string, err error) {
	res, err := d.ReadGroup(ctx, group, consumer, []string{stream}, ">", count, block)
	if err != nil || len(res) == 0 {
		return nil, nil, err
	}
	for _, m := range res[0].Messages {
		v, _ := m.Values[field].(string)
		ids, values = append(ids, m.ID), append(values, v)
	}
	return ids, values, nil
}

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
ev(KEYS[2], ARGV[4], 'task_claimed', ARGV[1], a, e, ARGV[3], '')
return {'ok', e, h[3], h[4]}
`)

// FloorClaim claims the task of step of each run for the lane's worker in
// one round trip (floor_claim each) and returns the claims' epochs.
func (d DB) FloorClaim(ctx context.Context, lane FloorLane, runs []string, step int) ([]string, error) {
	claims, err := d.floorExec(ctx, "claim", func(p redis.Pipeliner) []*redis.Cmd {
		cmds := make([]*redis.Cmd, len(runs))
		for i, run := range runs {
			cmds[i] = floorClaimScript.EvalSha(ctx, p, d.floorKeys(run), floorTask(step), "1", lane.Worker, ulid.Make().String(), floorNow())
		}
		return cmds
	})
	if err != nil {
		return nil, err
	}
	return column(claims, 1), nil
}

// floorFinishScript: the fencing check, the record and result, and
// task_succeeded; with an end event id (the run's last step), also
// run_succeeded and the run's status, and the run is not dirty.
//
// KEYS: 1 run hash, 2 log
// ARGV: 1 task, 2 attempt, 3 epoch, 4 worker, 5 event id, 6 time ms, 7 result,
// 8 run_succeeded's event id ("": not the last step)
// Reply: {"ok", newly dirty 0|1} | {"stale"}
var floorFinishScript = redis.NewScript(floorPrelude + `
local h = redis.call('HMGET', KEYS[1], ARGV[1], '@dirty')
if h[1] ~= 'running|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4] then return {'stale'} end
ev(KEYS[2], ARGV[5], 'task_succeeded', ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  '{"result":' .. ARGV[7] .. '}')
if ARGV[8] ~= '' then
  local seq = ev(KEYS[2], ARGV[8], 'run_succeeded', '', '0', '0', ARGV[4], '')
  redis.call('HSET', KEYS[1], ARGV[1], 'succeeded|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4],
    'r|' .. ARGV[1], ARGV[7], '@status', 'succeeded', '@cursor', seq)
  return {'ok', 0}
end
redis.call('HSET', KEYS[1], ARGV[1], 'succeeded|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4],
  'r|' .. ARGV[1], ARGV[7], '@dirty', '1')
local newly = 1
if h[2] == '1' then newly = 0 end
return {'ok', newly}
`)

// FloorFinish records the success of the task of step of each run (the
// claim of epochs[i]) and points the lane's feed at the run, in one round
// trip; with last (the run's last step) it ends each run instead of
// pointing the feed.
func (d DB) FloorFinish(ctx context.Context, lane FloorLane, runs []string, step int, epochs []string, last bool) error {
	_, err := d.floorExec(ctx, "finish", func(p redis.Pipeliner) []*redis.Cmd {
		cmds := make([]*redis.Cmd, len(runs))
		for i, run := range runs {
			end := ""
			if last {
				end = ulid.Make().String()
			}
			cmds[i] = floorFinishScript.EvalSha(ctx, p, d.floorKeys(run), floorTask(step), "1", epochs[i], lane.Worker, ulid.Make().String(), floorNow(), "null", end)
			if !last {
				floorPoint(ctx, p, lane.Feed, run)
			}
		}
		return cmds
	})
	return err
}

// FloorAck acks queue messages ids of the lane through the owner-checked
// queue_ack script and fails unless every one was pending for its worker.
func (d DB) FloorAck(ctx context.Context, lane FloorLane, ids []string) error {
	acked, err := d.QueueAck(ctx, d.C, lane.Queue, lane.Worker, ids...).Int64Slice()
	if err != nil {
		return fmt.Errorf("floor queue ack: %w", err)
	}
	for _, a := range acked {
		if a != 1 {
			return fmt.Errorf("floor queue ack: %v", acked)
		}
	}
	return nil
}

// FloorFold reads each run's log after its cursor in one round trip,
// decodes the entries (the projector's fold reads each event) and returns
// how many each run has.
func (d DB) FloorFold(ctx context.Context, runs []string, cursor map[string]string) ([]int, error) {
	p := d.C.Pipeline()
	logs := make([]*redis.XMessageSliceCmd, len(runs))
	for i, run := range runs {
		logs[i] = p.XRange(ctx, d.K.RunLog(run), "("+cursor[run], "+")
	}
	if _, err := p.Exec(ctx); err != nil {
		return nil, fmt.Errorf("floor read logs: %w", err)
	}
	out := make([]int, len(runs))
	for i, run := range runs {
		evs, err := DecodeLog(run, logs[i].Val())
		if err != nil {
			return nil, fmt.Errorf("floor fold %s: %w", run, err)
		}
		out[i] = len(evs)
	}
	return out, nil
}

// floorAdvanceScript: the projector's compare-and-set on the cursor and
// the next task's task_dispatched (a sequence's next step).
//
// KEYS: 1 run hash, 2 log
// ARGV: 1 expected cursor, 2 event id, 3 time ms, 4 writer, 5 task, 6 dispatch body
// Reply: {"ok", cursor} | {"conflict", cursor}
var floorAdvanceScript = redis.NewScript(floorPrelude + `
local cur = redis.call('HGET', KEYS[1], '@cursor')
if cur ~= ARGV[1] then return {'conflict', cur or ''} end
local seq = ev(KEYS[2], ARGV[2], 'task_dispatched', ARGV[5], '1', '0', ARGV[4], ARGV[6])
redis.call('HSET', KEYS[1], ARGV[5], 'dispatched|1|0|', '@cursor', seq, '@dirty', '0')
return {'ok', seq}
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
  seq = ev(KEYS[2], ARGV[4], 'run_succeeded', '', '0', '0', ARGV[6], '')
  redis.call('HSET', KEYS[1], '@status', 'succeeded', '@cursor', seq, '@dirty', '0')
else
  redis.call('HSET', KEYS[1], '@cursor', seq, '@dirty', '0')
end
return {'ok', seq}
`)

// FloorCommit commits the projector's decision for each run after the
// step of steps it folded, in one round trip: the next task's dispatch
// (floor_advance) and its message on the lane's queue, or after the last
// step the run's end (floor_cursor); and it acks the lane's feed entries
// fids. It returns the new cursors.
func (d DB) FloorCommit(ctx context.Context, lane FloorLane, runs []string, cursor map[string]string, step, steps int, fids []string) ([]string, error) {
	last := step == steps-1
	commits, err := d.floorExec(ctx, "commit", func(p redis.Pipeliner) []*redis.Cmd {
		cmds := make([]*redis.Cmd, len(runs))
		for i, run := range runs {
			if last {
				cmds[i] = floorCursorScript.EvalSha(ctx, p, d.floorKeys(run), cursor[run], cursor[run], "1", ulid.Make().String(), floorNow(), lane.Projector)
				continue
			}
			cmds[i] = floorAdvanceScript.EvalSha(ctx, p, d.floorKeys(run), cursor[run], ulid.Make().String(), floorNow(), lane.Projector, floorTask(step+1), floorDispatchBody)
		}
		if !last {
			for _, run := range runs {
				floorQueue(ctx, p, lane.Queue, run, step+1)
			}
		}
		p.XAck(ctx, lane.Feed, GroupProjectors, fids...)
		return cmds
	})
	if err != nil {
		return nil, err
	}
	return column(commits, 1), nil
}

// floorDispatchBody is the body of the floor's task_dispatched events.
const floorDispatchBody = `{"pool":"default","priority":0}`

// floorTask is the id of a floor run's task k.
func floorTask(k int) string { return "t" + strconv.Itoa(k) }

// floorNow is the time of a floor event, in ms.
func floorNow() string { return strconv.FormatInt(time.Now().UnixMilli(), 10) }

// floorKeys are a floor run's keys: its hash and its log.
func (d DB) floorKeys(run string) []string { return []string{d.K.RunState(run), d.K.RunLog(run)} }

// floorQueue queues the message of run's task k on queue.
func floorQueue(ctx context.Context, p redis.Pipeliner, queue, run string, k int) {
	p.XAdd(ctx, &redis.XAddArgs{Stream: queue, Values: []any{MsgRun, run, MsgTask, floorTask(k), MsgAttempt, "1"}})
}

// floorPoint points feed at run.
func floorPoint(ctx context.Context, p redis.Pipeliner, feed, run string) {
	p.XAdd(ctx, &redis.XAddArgs{Stream: feed, Values: []any{MsgRun, run}})
}

// floorExec sends the commands build queues in one pipeline and returns
// the replies of the scripts it returns, failing on a reply other than
// "ok" or "created".
func (d DB) floorExec(ctx context.Context, step string, build func(p redis.Pipeliner) []*redis.Cmd) ([][]any, error) {
	p := d.C.Pipeline()
	cmds := build(p)
	if _, err := p.Exec(ctx); err != nil {
		return nil, fmt.Errorf("floor %s: %w", step, err)
	}
	out := make([][]any, len(cmds))
	for i, c := range cmds {
		v, err := c.Slice()
		if err != nil {
			return nil, fmt.Errorf("floor %s: %w", step, err)
		}
		if len(v) == 0 || (v[0] != "ok" && v[0] != "created") {
			return nil, fmt.Errorf("floor %s: reply %v", step, v)
		}
		out[i] = v
	}
	return out, nil
}

// column is the i-th element of each reply, as a string.
func column(replies [][]any, i int) []string {
	out := make([]string, len(replies))
	for j, r := range replies {
		out[j] = str(r, i)
	}
	return out
}
