package rdb

import (
	"context"
	"fmt"

	"github.com/graflow-go/graflow/events"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// The fan-out floor: many tasks of one run, in batches. Each script reads
// the run's hash once and writes it once for the whole batch, and appends
// one event per task. The projector dispatches every task, worker lanes
// claim and finish them a batch per script call, and the projector folds
// the outcomes and commits the run's end once all succeeded.

// FloorFanoutStart writes run as the submit of n parallel noop tasks leaves
// it (run_submitted and the run's hash; the floor does not time this) and
// returns its cursor.
func (d DB) FloorFanoutStart(ctx context.Context, run string, n int) (string, error) {
	keys := d.floorKeys(run)
	first, err := d.C.XAdd(ctx, &redis.XAddArgs{Stream: keys[1], Values: []any{"id", ulid.Make().String(), "t", "run_submitted",
		"v", "2", "k", "", "a", "0", "e", "0", "w", "", "b", "{}"}}).Result()
	if err != nil {
		return "", err
	}
	fields := []any{"@status", "running", "@workflow", "bench-floor-fanout", "@input", "", "@cursor", first}
	for i := range n {
		fields = append(fields, "m|"+floorTask(i), `{"h":"noop"}`)
	}
	for i := 0; i < len(fields); i += 2000 {
		if err := d.C.HSet(ctx, keys[0], fields[i:min(i+2000, len(fields))]...).Err(); err != nil {
			return "", err
		}
	}
	return first, nil
}

// FloorDispatchBatch is how many tasks one floor_dispatch call dispatches.
const FloorDispatchBatch = 256

// floorDispatchScript: the projector's task_dispatched for a batch of
// ready tasks (no cursor check: the floor's single projector decided them).
//
// KEYS: 1 run hash, 2 log
// ARGV: 1 time ms, 2 writer, 3 dispatch body, then (task, event id) pairs
// Reply: {"ok"}
var floorDispatchScript = redis.NewScript(floorPrelude + `
local recs = {}
for i = 4, #ARGV, 2 do
  ev(KEYS[2], ARGV[i + 1], 'task_dispatched', ARGV[i], '1', '0', ARGV[2], ARGV[3])
  recs[#recs + 1] = ARGV[i]; recs[#recs + 1] = 'dispatched|1|0|'
end
redis.call('HSET', KEYS[1], unpack(recs))
return {'ok'}
`)

// FloorDispatch dispatches tasks from to to-1 of run in one round trip:
// floor_dispatch calls of FloorDispatchBatch tasks each (there is no
// compare-and-set to wait for) with the tasks' messages, task j's on
// queue(j). projector is the events' writer.
func (d DB) FloorDispatch(ctx context.Context, run, projector string, from, to int, queue func(task int) string) error {
	p := d.C.Pipeline()
	for c := from; c < to; c += FloorDispatchBatch {
		args := []any{floorNow(), projector, floorDispatchBody}
		for j := c; j < min(c+FloorDispatchBatch, to); j++ {
			args = append(args, floorTask(j), ulid.Make().String())
		}
		floorDispatchScript.EvalSha(ctx, p, d.floorKeys(run), args...)
		for j := c; j < min(c+FloorDispatchBatch, to); j++ {
			floorQueue(ctx, p, queue(j), run, j)
		}
	}
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("floor fanout dispatch: %w", err)
	}
	return nil
}

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
  ev(KEYS[2], ARGV[i + 1], 'task_claimed', ARGV[i], '1', eps[i], ARGV[1], '')
  reply[#reply + 1] = eps[i]; reply[#reply + 1] = h[i + 1]
end
redis.call('HSET', KEYS[1], unpack(recs))
return reply
`)

// FloorClaimMany claims tasks of run for the lane's worker in one
// floor_claim_many call and returns each task's epoch.
func (d DB) FloorClaimMany(ctx context.Context, lane FloorLane, run string, tasks []string) ([]string, error) {
	args := []any{lane.Worker, floorNow()}
	for _, t := range tasks {
		args = append(args, t, ulid.Make().String())
	}
	got, err := floorClaimManyScript.EvalSha(ctx, d.C, d.floorKeys(run), args...).Slice()
	if err != nil {
		return nil, fmt.Errorf("floor fanout claim: %w", err)
	}
	if str(got, 0) != "ok" {
		return nil, fmt.Errorf("floor fanout claim: %v", got)
	}
	epochs := make([]string, len(tasks))
	for i := range tasks {
		epochs[i] = str(got, 2+2*i)
	}
	return epochs, nil
}

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
  ev(KEYS[2], ARGV[i + 2], 'task_succeeded', ARGV[i], '1', ARGV[i + 1], ARGV[1], '{"result":' .. ARGV[3] .. '}')
end
redis.call('HSET', KEYS[1], unpack(recs))
local newly = 1
if h[1] == '1' then newly = 0 end
return {'ok', newly}
`)

// FloorFinishMany records the success of tasks of run (their claims'
// epochs) in one floor_finish_many call and points the lane's feed at the
// run, in one round trip.
func (d DB) FloorFinishMany(ctx context.Context, lane FloorLane, run string, tasks, epochs []string) error {
	args := []any{lane.Worker, floorNow(), "null"}
	for i, t := range tasks {
		args = append(args, t, epochs[i], ulid.Make().String())
	}
	p := d.C.Pipeline()
	fin := floorFinishManyScript.EvalSha(ctx, p, d.floorKeys(run), args...)
	floorPoint(ctx, p, lane.Feed, run)
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("floor fanout finish: %w", err)
	}
	if v, _ := fin.Slice(); len(v) == 0 || v[0] != "ok" {
		return fmt.Errorf("floor fanout finish: %v", v)
	}
	return nil
}

// FloorFanoutFold reads run's log after the entry id after to its end,
// 2048 entries per round trip, decodes it and returns the last entry id
// read (after when none) and how many task_succeeded it holds.
func (d DB) FloorFanoutFold(ctx context.Context, run, after string) (last string, succeeded int, err error) {
	last = after
	for {
		msgs, err := d.LogPageAfter(ctx, run, last, 2048)
		if err != nil {
			return "", 0, fmt.Errorf("floor fanout log: %w", err)
		}
		evs, err := DecodeLog(run, msgs)
		if err != nil {
			return "", 0, err
		}
		for _, e := range evs {
			if e.Type == events.TaskSucceeded {
				succeeded++
			}
		}
		if len(msgs) > 0 {
			last = msgs[len(msgs)-1].ID
		}
		if len(msgs) < 2048 {
			return last, succeeded, nil
		}
	}
}

// FloorFanoutCommit moves run's cursor from cursor to last (floor_cursor;
// with end, run_succeeded too) and acks the lane's feed entries fids, in
// one round trip. It returns the new cursor.
func (d DB) FloorFanoutCommit(ctx context.Context, lane FloorLane, run, cursor, last string, end bool, fids []string) (string, error) {
	ended := "0"
	if end {
		ended = "1"
	}
	p := d.C.Pipeline()
	c := floorCursorScript.EvalSha(ctx, p, d.floorKeys(run), cursor, last, ended, ulid.Make().String(), floorNow(), lane.Projector)
	p.XAck(ctx, lane.Feed, GroupProjectors, fids...)
	if _, err := p.Exec(ctx); err != nil {
		return "", fmt.Errorf("floor fanout commit: %w", err)
	}
	v, _ := c.Slice()
	if len(v) < 2 || v[0] != "ok" {
		return "", fmt.Errorf("floor fanout commit: %v", v)
	}
	return str(v, 1), nil
}
