package rdb

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/graflow-go/graflow/events"
	"github.com/redis/go-redis/v9"
)

// This file is the operators' write side of the boundary: import of an
// exported run, resume of an imported one, collection of a finished run
// (gc), another attempt for a task that failed for good (requeue), and the
// dead-letter and index upkeep. Every check that guards a write runs in the
// same script as the write, on the run's slot.

// ErrImportConflict is returned by ImportAppend and ImportState when the
// run changed under the import (another writer appended to its log or
// created its state).
var ErrImportConflict = errors.New("the run changed during the import")

// LogEntry is one entry to append to a run's log: its id ("" for one
// Redis assigns) and the fields of the event (events.Event.Fields).
type LogEntry struct {
	ID     string
	Fields []any
}

// Event field counts (name and value each) of events.Event.Fields: eight
// pairs in schema version 2, nine in version 1 (which stores the time).
const (
	minFieldsPerEvent = 16
	maxFieldsPerEvent = 18
)

// ImportCheck is what ImportConflict found of a run about to be imported.
type ImportCheck struct {
	// Done is the number of the export's events its log holds already
	// (an interrupted import's prefix).
	Done int
	// StateWritten: the whole log and the state are there, and the run is
	// not indexed: the import died before its last step (the index and
	// the feed pointer), which is all that is left to do.
	StateWritten bool
	// Why the run is in the way ("" when it is not).
	Why string
}

// ImportConflict checks that run does not exist, or holds what an
// interrupted import of the same export leaves: a log whose entries are a
// prefix of ids (event ids) and, where seqs[i] is not "", of seqs (entry
// ids), with no other key; or the whole log with the state (and channel)
// the import writes, not indexed.
func (d DB) ImportConflict(ctx context.Context, run string, ids, seqs []string) (ImportCheck, error) {
	k := d.K
	state, channel := false, false
	for _, key := range k.RunKeys(run) {
		if key == k.RunLog(run) {
			continue
		}
		n, err := d.C.Exists(ctx, key).Result()
		if err != nil {
			return ImportCheck{}, fmt.Errorf("check run %s: %w", run, err)
		}
		switch {
		case n == 0:
		case key == k.RunState(run):
			state = true
		case key == k.RunChannel(run):
			channel = true // written with the state, in one script
		default:
			return ImportCheck{Why: "key " + key + " exists"}, nil
		}
	}
	live := ImportCheck{Why: "it has live state"}
	if state {
		channel = false // written with it
	}
	// A channel without state is left only by an interrupted import of a
	// succeeded run (whose state it does not write) once its log is whole.
	inTheWay := ImportCheck{Why: "key " + k.RunChannel(run) + " exists"}
	done := 0
	start := "-"
	for {
		msgs, err := d.C.XRangeN(ctx, k.RunLog(run), start, "+", 1000).Result()
		if err != nil {
			return ImportCheck{}, fmt.Errorf("check run %s: %w", run, err)
		}
		for _, m := range msgs {
			id, _ := m.Values[events.FieldID].(string)
			if done >= len(ids) || id != ids[done] || (seqs[done] != "" && m.ID != seqs[done]) {
				if state {
					return live, nil
				}
				if channel {
					return inTheWay, nil
				}
				return ImportCheck{Why: "its log holds other events"}, nil
			}
			done++
		}
		if len(msgs) < 1000 {
			break
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
	if done < len(ids) {
		if state {
			return live, nil
		}
		if channel {
			return inTheWay, nil
		}
		return ImportCheck{Done: done}, nil
	}
	// The whole log is there. Indexed, the import ended (the index is its
	// last step), or the run is live: it exists. Not indexed, the import
	// was interrupted. A succeeded run keeps only its log, so that is all
	// an import of one leaves; an import of any other run leaves its state
	// too, and has only the index left to write.
	ended := ""
	if !state {
		var err error
		if ended, err = d.LoggedEnd(ctx, run); err != nil {
			return ImportCheck{}, fmt.Errorf("check run %s: %w", run, err)
		}
	}
	if channel && ended == "" {
		return inTheWay, nil
	}
	if state || ended != "" {
		if _, err := d.C.ZScore(ctx, k.Runs(), run).Result(); err == nil {
			if state {
				return live, nil
			}
			return ImportCheck{Why: "it exists (a succeeded run, which keeps only its log)"}, nil
		} else if !errors.Is(err, redis.Nil) {
			return ImportCheck{}, fmt.Errorf("check run %s: %w", run, err)
		}
	}
	return ImportCheck{Done: done, StateWritten: state}, nil
}

// LastLogID returns the id of run's last log entry ("" for no log).
func (d DB) LastLogID(ctx context.Context, run string) (string, error) {
	msgs, err := d.C.XRevRangeN(ctx, d.K.RunLog(run), "+", "-", 1).Result()
	if err != nil || len(msgs) == 0 {
		return "", err
	}
	return msgs[0].ID, nil
}

// importAppendScript appends entries to a run's log if the log holds
// exactly the expected number of entries and the run has no state.
//
// KEYS: 1 log, 2 state
// ARGV: 1 expected log length, then per entry: its id ("*" for a new
// one), the number f of field names and values of the event (16 for
// schema version 2, 18 for version 1), and those f values
// Reply: the last appended id, or {"conflict"}
var importAppendScript = redis.NewScript(`
if redis.call('XLEN', KEYS[1]) ~= tonumber(ARGV[1]) or redis.call('EXISTS', KEYS[2]) == 1 then
  return {'conflict'}
end
local last
local i = 2
while i <= #ARGV do
  local f = tonumber(ARGV[i + 1])
  last = redis.call('XADD', KEYS[1], ARGV[i], unpack(ARGV, i + 2, i + 1 + f))
  i = i + 2 + f
end
return last
`)

// ImportAppend appends entries to run's log in one script, if the log
// holds exactly have entries and the run has no state (else
// ErrImportConflict, nothing written). It returns the last entry's id.
func (d DB) ImportAppend(ctx context.Context, run string, have int, entries []LogEntry) (string, error) {
	argv := make([]any, 0, 1+len(entries)*(maxFieldsPerEvent+2))
	argv = append(argv, have)
	for _, e := range entries {
		if n := len(e.Fields); n != minFieldsPerEvent && n != maxFieldsPerEvent {
			return "", fmt.Errorf("append to log of run %s: an event has %d fields, want %d or %d", run, n, minFieldsPerEvent, maxFieldsPerEvent)
		}
		id := e.ID
		if id == "" {
			id = "*"
		}
		argv = append(argv, id, len(e.Fields))
		argv = append(argv, e.Fields...)
	}
	res, err := importAppendScript.Run(ctx, d.C, []string{d.K.RunLog(run), d.K.RunState(run)}, argv...).Result()
	if err != nil {
		return "", fmt.Errorf("append to log of run %s: %w", run, err)
	}
	last, ok := res.(string)
	if !ok {
		return "", fmt.Errorf("append to log of run %s: %w", run, ErrImportConflict)
	}
	return last, nil
}

// ImportHashes are the hashes of an imported run, field → value.
type ImportHashes struct {
	State, DAG, Results, Channel map[string]string
}

// importStateScript writes an imported run's state and channel hashes if
// it has no state, and enters each result expiry of the state
// (statehash.ResultExpiryField) in the partition's expiry set, so a result
// past its TTL is deleted.
//
// KEYS: 1 state, 2 channel, 3 the partition's expiry set
// ARGV: 1 the number of values (field, value, ...) of the state, 2 of the
// channel, 3 the run id, then the values, the state's first
// Reply: 1 written, 0 the run has state already (nothing written)
var importStateScript = redis.NewScript(prelude + `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ns, nc, run = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
-- The state hash last: it is what marks the run as existing.
if nc > 0 then chunked('HSET', KEYS[2], ARGV, 4 + ns, 3 + ns + nc) end
if ns > 0 then chunked('HSET', KEYS[1], ARGV, 4, 3 + ns) end
for j = 4, 3 + ns, 2 do
  if string.sub(ARGV[j], 1, 4) == '@rx:' then
    redis.call('ZADD', KEYS[3], tonumber(ARGV[j + 1]), run .. '|' .. string.sub(ARGV[j], 5))
  end
end
return 1
`)

// ImportState writes an imported run's state, dag, results and channel
// hashes in one script, if the run has no state yet (else
// ErrImportConflict, nothing written).
func (d DB) ImportState(ctx context.Context, run string, h ImportHashes) error {
	k := d.K
	keys := []string{k.RunState(run), k.RunChannel(run), k.ExpiriesFor(run)}
	state := make(map[string]string, len(h.State)+len(h.DAG)+len(h.Results))
	maps.Copy(state, h.State)
	for task, meta := range h.DAG {
		state[MetaField(task)] = meta
	}
	for f, v := range h.Results {
		if f == FieldRunInput {
			state[f] = v
		} else {
			state[ResultField(f)] = v
		}
	}
	argv := make([]any, 0, 3+2*(len(state)+len(h.Channel)))
	argv = append(argv, 2*len(state), 2*len(h.Channel), run)
	for _, p := range []map[string]string{state, h.Channel} {
		for f, v := range p {
			argv = append(argv, f, v)
		}
	}
	n, err := importStateScript.Run(ctx, d.C, keys, argv...).Int()
	if err != nil {
		return fmt.Errorf("write state of run %s: %w", run, err)
	}
	if n == 0 {
		return fmt.Errorf("write state of run %s: %w", run, ErrImportConflict)
	}
	return nil
}

// Reindex adds run to the run index (if it is not there) and points the
// feed at it, in one pipeline.
func (d DB) Reindex(ctx context.Context, run string, submittedMS int64) error {
	pipe := d.C.Pipeline()
	pipe.ZAddNX(ctx, d.K.Runs(), redis.Z{Score: float64(submittedMS), Member: run})
	d.PointFeed(ctx, pipe, run)
	_, err := pipe.Exec(ctx)
	return err
}

// ResumeItem re-dispatches one task of a run if its record is still
// Record: when Event is set (a reclaim) the event is appended and the
// record set to NewRecord; then Dispatch is queued (or parked in the
// delayed set when due later than nowMS) in the run's partition.
type ResumeItem struct {
	Task      string
	Record    string
	NewRecord string
	Event     *events.Event
	Dispatch  Dispatch
}

// resumeScript re-dispatches tasks of a run whose record is unchanged,
// marks the run dirty and points the feed at it, in the same step: a
// pointer sent as a command of its own and cut off left the run dirty with
// no pointer, which no projector would look at and no later finish would
// point (each finds the run dirty already).
//
// KEYS: 1 state, 2 log, 3 the partition's feed, then the dispatch targets
// (queue streams, the delayed set), all in the run's partition
// ARGV: 1 run, then per task: task id, expected record, new record (""
// keeps it), target key index, due ms (0: queue now), attempt,
// delayed-set member, the queue message's traceparent ("": none), then
// the number f of event field names and values (0: no event; see
// events.Event.Fields) and those f values
// Reply: per task 1 re-dispatched, 0 record changed (left alone)
var resumeScript = redis.NewScript(enqueueLua + `
for i = 3, #KEYS do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= 'stream' and t ~= 'zset' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t)
  end
end
local out = {}
local i = 2
while i <= #ARGV do
  local task = ARGV[i]
  local f = tonumber(ARGV[i + 8])
  if (redis.call('HGET', KEYS[1], task) or '') == ARGV[i + 1] then
    if ARGV[i + 2] ~= '' then
      if f > 0 then redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 9, i + 8 + f)) end
      redis.call('HSET', KEYS[1], task, ARGV[i + 2])
    end
    local key, due = KEYS[tonumber(ARGV[i + 3])], tonumber(ARGV[i + 4])
    if due > 0 then
      redis.call('ZADD', key, due, ARGV[i + 6])
    else
      enqueue(key, ARGV[1], task, ARGV[i + 5], ARGV[i + 7])
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  i = i + 9 + f
end
redis.call('HSET', KEYS[1], '@dirty', '1')
redis.call('XADD', KEYS[3], '*', 'r', ARGV[1])
return out
`)

// Resume runs items in one script on run's slot (see ResumeItem) and
// reports, per item, whether it was done (false: the task moved on since
// the caller read its record).
func (d DB) Resume(ctx context.Context, run string, items []ResumeItem, nowMS int64) ([]bool, error) {
	keys := []string{d.K.RunState(run), d.K.RunLog(run), d.K.FeedFor(run)}
	var targets keyIndex
	argv := make([]any, 0, 1+len(items)*(9+maxFieldsPerEvent))
	argv = append(argv, run)
	for _, it := range items {
		var fields []any
		if it.Event != nil {
			fields = it.Event.Fields()
		}
		x := it.Dispatch
		key, due, member := d.K.QueueFor(run, x.Pool, x.Priority), int64(0), ""
		if x.DueMS > nowMS {
			key, due, member = d.K.DelayedFor(run), x.DueMS, x.String()
		}
		argv = append(argv, it.Task, it.Record, it.NewRecord, targets.of(&keys, key), due, x.Attempt, member, x.Trace, len(fields))
		argv = append(argv, fields...)
	}
	res, err := resumeScript.Run(ctx, d.C, keys, argv...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("resume run %s: %w", run, err)
	}
	done := make([]bool, len(res))
	for i, n := range res {
		done[i] = n == 1
	}
	return done, nil
}

// RunsSubmittedUntil lists the runs of the run index submitted at or
// before maxScore (ms, or "+inf"), oldest first.
func (d DB) RunsSubmittedUntil(ctx context.Context, maxScore string) ([]string, error) {
	return d.C.ZRangeArgs(ctx, redis.ZRangeArgs{Key: d.K.Runs(), Start: "-inf", Stop: maxScore, ByScore: true}).Result()
}

// GCInfo reads what GC decides on: run's @status (ok false: none) and
// whether @dirty is set.
func (d DB) GCInfo(ctx context.Context, run string) (status string, ok, dirty bool, err error) {
	vals, err := d.C.HMGet(ctx, d.K.RunState(run), FieldRunStatus, FieldRunDirty).Result()
	if err != nil {
		return "", false, false, err
	}
	status, ok = vals[0].(string)
	if !ok {
		// A succeeded run keeps only its log.
		status, err = d.LoggedEnd(ctx, run)
		return status, status != "", false, err
	}
	return status, ok, vals[1] != nil, nil
}

// gcScript deletes a finished run's keys if it is still finished and fully
// projected (no @dirty): the check and the delete are one step, so a
// requeue cannot slip in between.
//
// KEYS: 1 state, 2 log, then the run's other keys
// Reply: {deleted keys, events} | {-1, status} (not collectable)
var gcScript = redis.NewScript(endLua + `
local st = redis.call('HGET', KEYS[1], '@status') or loggedend(KEYS[2])
if (st ~= 'succeeded' and st ~= 'failed' and st ~= 'cancelled' and st ~= 'quarantined') or redis.call('HEXISTS', KEYS[1], '@dirty') == 1 then
  return {-1, st or ''}
end
local n = redis.call('XLEN', KEYS[2])
return {redis.call('DEL', unpack(KEYS)), n}
`)

// GCRun deletes a finished, fully projected run's keys in one step. ok is
// false (and nothing is deleted) if the run is not collectable.
func (d DB) GCRun(ctx context.Context, run string) (ok bool, keys, events int64, err error) {
	ks := []string{d.K.RunState(run), d.K.RunLog(run), d.K.RunOutbox(run), d.K.RunChannel(run)}
	res, err := gcScript.Run(ctx, d.C, ks).Slice()
	if err != nil {
		return false, 0, 0, fmt.Errorf("gc run %s: %w", run, err)
	}
	if num(res, 0) < 0 {
		return false, 0, 0, nil
	}
	return true, num(res, 0), num(res, 1), nil
}

// LogLen returns the number of entries of run's log.
func (d DB) LogLen(ctx context.Context, run string) (int64, error) {
	return d.C.XLen(ctx, d.K.RunLog(run)).Result()
}

// Unindex removes run from the run index.
func (d DB) Unindex(ctx context.Context, run string) error {
	return d.C.ZRem(ctx, d.K.Runs(), run).Err()
}

// ForgetQuarantine removes run from the namespace's quarantine index.
func (d DB) ForgetQuarantine(ctx context.Context, run string) error {
	return d.C.HDel(ctx, d.K.Quarantined(), run).Err()
}

// ErrNotRequeueable is returned when requeue finds a task that has not
// failed for good, or a run that was cancelled.
var ErrNotRequeueable = errors.New("task cannot be requeued")

// requeueScript gives a task that failed for good another attempt and
// reopens its run (the projector then requeues the tasks skipped behind it).
//
// It points the feed at the run in the same step: a requeue cut off after
// it (the pointer a command of its own) left a reopened, dirty run that no
// projector would look at again.
//
// KEYS: 1 state, 2 log, 3 feed, then the run's other keys (their TTLs are
// removed)
// ARGV: 1 task, 2 event id, 3 time ms, 4 writer, 5 body, 6 run
// Reply: {"ok", newly dirty 0|1} | {"refused", task status, run status}
var requeueScript = redis.NewScript(prelude + `
local run = redis.call('HGET', KEYS[1], '@status')
local st, a, e, o = getrec(KEYS[1], ARGV[1])
if st ~= 'failed' or (run ~= 'failed' and run ~= 'running') then
  return {'refused', st, run or ''}
end
-- Every key appended to checked before the first write: a script's
-- writes stay when a later command fails.
local bad = notwritable(KEYS[3], 'stream') or notwritable(KEYS[2], 'stream')
if bad then return bad end
setrec(KEYS[1], ARGV[1], 'pending', a, e, '')
-- A reopened run must not expire while it runs (RunTTL set it when it
-- ended); it gets its TTL again when it ends again. The feed is not the
-- run's.
for i, key in ipairs(KEYS) do
  if i ~= 3 then redis.call('PERSIST', key) end
end
local seq = append(KEYS[2], ARGV[2], 'task_requeued', ARGV[1], a, e, ARGV[4], ARGV[5])
-- Moving the cursor makes any projector commit decided before this requeue
-- (a run_failed, a task_skipped) fail its compare-and-set and re-fold.
redis.call('HSET', KEYS[1], '@status', 'running', '@cursor', seq)
local newly = redis.call('HSETNX', KEYS[1], '@dirty', '1')
redis.call('XADD', KEYS[3], '*', 'r', ARGV[6])
return {'ok', newly}
`)

// Requeue gives a failed task another attempt (see requeueScript) and
// points the feed at its run and drops it from the dead-letter set.
func (d DB) Requeue(ctx context.Context, run, task, writer, eventID string, timeMS int64, body []byte) error {
	res, err := requeueScript.Run(ctx, d.C, []string{d.K.RunState(run), d.K.RunLog(run), d.K.FeedFor(run),
		d.K.RunOutbox(run), d.K.RunChannel(run)},
		task, eventID, timeMS, writer, string(body), run).Slice()
	if err != nil {
		return fmt.Errorf("requeue %s/%s: %w", run, task, err)
	}
	if str(res, 0) == "refused" {
		st, runst := str(res, 1), str(res, 2)
		refused := fmt.Errorf("%w: %s/%s is %s (run %s)", ErrNotRequeueable, run, task, st, runst)
		if runst == "" {
			refused = fmt.Errorf("%w: run %s has no live state (it succeeded, or does not exist)", ErrNotRequeueable, run)
		}
		if st != "failed" {
			// The task is not failed (any more): a dead letter of it is
			// stale, left by an earlier requeue whose removal below was
			// cut off. Dropped, so that a retried requeue cleans up.
			if err := d.PurgeDeadLetter(ctx, run, task); err != nil {
				return errors.Join(refused, err)
			}
		}
		return refused
	}
	return d.PurgeDeadLetter(ctx, run, task)
}

// PurgeDeadLetter forgets one dead letter.
func (d DB) PurgeDeadLetter(ctx context.Context, run, task string) error {
	m := DeadLetterMember(run, task)
	pipe := d.C.TxPipeline()
	pipe.ZRem(ctx, d.K.DeadLetter(), m)
	pipe.HDel(ctx, d.K.DeadLetterInfo(), m)
	_, err := pipe.Exec(ctx)
	return err
}

// PurgeDeadLetters forgets every dead letter.
func (d DB) PurgeDeadLetters(ctx context.Context) error {
	return d.C.Del(ctx, d.K.DeadLetter(), d.K.DeadLetterInfo()).Err()
}
