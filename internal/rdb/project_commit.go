package rdb

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/redis/go-redis/v9"
)

// The projector's commit: one script on the run's slot compares and sets
// the run's head, appends the decisions, applies their task records and
// enqueues their dispatches (see commitScript); Commits sends several runs'
// commits in one round trip.

// Head is what a projector's commit compares and sets: the run's cursor
// (the last log id its projection accounts for) and its commit token (the
// first event id of the last commit that appended decisions). Every
// appending commit changes the head, even one that leaves the cursor
// where it was (not caught up).
type Head struct {
	Cursor string
	Commit string
}

// HeadCmd queues the read of run's head (and status) on p; read it with
// ParseHead and HeadStatus.
func (d DB) HeadCmd(ctx context.Context, p redis.Cmdable, run string) *redis.SliceCmd {
	return p.HMGet(ctx, d.K.RunState(run), FieldRunCursor, FieldRunCommit, FieldRunStatus)
}

// HeadStatus is the run status read with a HeadCmd ("" when unknown).
func HeadStatus(cmd *redis.SliceCmd) string {
	v := cmd.Val()
	if len(v) < 3 {
		return ""
	}
	s, _ := v[2].(string)
	return s
}

// ParseHead reads a HeadCmd reply (a run with no state has an empty head).
func ParseHead(cmd *redis.SliceCmd) (Head, error) {
	v, err := cmd.Result()
	if err != nil {
		return Head{}, err
	}
	var h Head
	h.Cursor, _ = v[0].(string)
	h.Commit, _ = v[1].(string)
	return h, nil
}

// Commit is a projector commit (see commitScript).
type Commit struct {
	Expected Head   // the head the projector's state was loaded at
	FoldedTo string // last log id folded
	Writer   string // projector id, recorded as the events' worker
	TimeMS   int64
	Events   []events.Event // decisions: ID, Type, Task, Attempt, Epoch, Body
	Records  map[string]string
	// Expect maps each decided task to the record the decision was taken
	// on (Record.String(); "" or "pending|0|0|" for a task never touched):
	// the commit is refused if any task holds another record.
	Expect map[string]string
	// Dispatches are enqueued by the commit itself: on the pool's queue
	// stream of the run's partition, or parked in its delayed set when
	// DueMS is later than TimeMS.
	Dispatches []Dispatch
	// CompactLog, when the decisions end the run, rewrites a log of at
	// most this many events with its memory sized to fit (0: never).
	CompactLog int
	// TTL, when the decisions end the run, makes the run's keys expire
	// that long after (0: never), in the same step.
	TTL time.Duration
	// Trace is the W3C traceparent of the projector's span, carried by
	// every dispatch of the commit (queue messages and delayed-set
	// members); "" for none.
	Trace string
}

// DefaultCompactLog is the longest log a run's last commit compacts: a
// short log is where the preallocated stream node (up to 4 KiB) costs
// most, and the copy is cheap.
const DefaultCompactLog = 1000

// CommitResult is the reply of a commit.
type CommitResult struct {
	Conflict bool
	// Why says what made a conflict: the head moved, the run ended, or a
	// task's record is not the one a decision was taken on.
	Why      string
	Head     Head     // head after the commit (or the current one on conflict)
	CaughtUp bool     // nothing but the decisions was appended since FoldedTo
	Parked   int64    // dispatches parked in the delayed set
	Seqs     []string // stream ids of the appended decisions
}

// HeadMoved reports a conflict because another commit moved the head (or
// the run ended), as opposed to a task record that disagrees with the
// decisions' fold.
func (r CommitResult) HeadMoved() bool { return r.Conflict && !strings.HasPrefix(r.Why, "task ") }

// Stale reports a conflict after which the projector's fold cannot be
// kept: a task record disagrees with it, or the log no longer holds the
// last entry it folded (Redis lost writes it had acknowledged: a crash
// with appendfsync everysec, an asynchronous replica promoted). The run
// is loaded again from its log.
func (r CommitResult) Stale() bool { return r.Conflict && (!r.HeadMoved() || r.Why == whyLogLost) }

// whyLogLost is the conflict of a fold ahead of the log.
const whyLogLost = "the log lost entries the fold holds"

// Commit runs the commit script for run.
func (d DB) Commit(ctx context.Context, run string, c Commit) (CommitResult, error) {
	return ParseCommit(run, d.CommitCmd(ctx, d.C, run, c))
}

// commitScript commits a projector's decisions with a compare-and-set on the
// run's head: the cursor (the last log id the projection accounts for) and
// the commit token (the first event id of the last commit that appended
// decisions), so any appending commit since the projector read the head
// makes its commit conflict, even one that left the cursor where it was.
// Each decision's task must also still hold the record the decision was
// taken on (a pending task still pending, a failed one still failed):
// every check runs before the first write, so a refused commit writes
// nothing. Then it appends the decision events, applies their task records
// and run fields, and enqueues the dispatches: a message on the pool's
// queue stream of the run's partition, or a parked entry in the
// partition's delayed set (all one slot: no outbox, no relay). The cursor
// advances past the decisions only when nothing else was appended since
// foldedTo and the projector folds on from there, and @dirty is left as it
// is. A commit behind the log used to set @dirty, with no feed pointer:
// the run's later finishes then found it dirty and pointed no feed, and if
// the projector that committed died before it read on, holding no feed
// entry for the run (a projector stopped past the feed reclaim, whose
// entry another projector took, handled and acked), nothing ever woke a
// projector for the run again. Leaving @dirty alone is enough: whatever
// landed after the fold and calls for a projector set @dirty itself and,
// when it was not set, pointed the feed (a finish, a cancel, a requeue);
// what set no @dirty needs no projector (a claim, a heartbeat, a finish's
// handoff, another projector's decisions). So @dirty set always means a
// feed entry that will bring a projector to the run.
// A foldedTo the log does not hold conflicts: a fold ahead of the log,
// after Redis lost writes (see CommitResult.Stale).
//
// KEYS: 1 state, 2 log, 3 scratch key for compacting the log, 4 channel,
// then the dispatch targets (queue streams and the delayed set)
// ARGV: 1 expected cursor, 2 expected commit token, 3 foldedTo, 4 time ms,
//
//	5 writer id, 6 n events, then n x (event id, type, task, attempt,
//	epoch, body), then m, m x (field, value), then x, x x (task, expected
//	record, "" for a task never touched), then k, k x dispatch (target key
//	index, due ms (0: queue it now), task, attempt, delayed-set member),
//	then the longest log to compact and the run's TTL in ms (0: none),
//	both applied only when the decisions end the run, then the run id,
//	then the dispatches' traceparent ("" or absent: none)
//
// Reply: {"conflict", cursor, token, why} or
// {"ok", new cursor, caughtUp 0|1, parked, new token, seq...}
var commitScript = redis.NewScript(prelude + enqueueLua + `
local n = tonumber(ARGV[6])
local i = 7 + 6 * n
local m = tonumber(ARGV[i]); local recs = i + 1; i = recs + 2 * m
local x = tonumber(ARGV[i]); local exps = i + 1; i = exps + 2 * x
local k = tonumber(ARGV[i]); local outs = i + 1; i = outs + 5 * k
local compact = tonumber(ARGV[i] or '0') or 0
local ttl = tonumber(ARGV[i + 1] or '0') or 0
local run = ARGV[i + 2]
local trace = ARGV[i + 3]
-- Every check before the first write.
local head = redis.call('HMGET', KEYS[1], '@cursor', '@commit', '@status')
local cur, token = head[1] or '', head[2] or ''
-- No state: the run succeeded (its end kept only its log) or is gone.
-- Nothing to record, and nothing may be written: the state hash would
-- come back.
if not head[3] then
  if n == 0 then return {'ok', ARGV[3], 1, 0, ARGV[2]} end
  return {'conflict', cur, token, 'run is ' .. (loggedend(KEYS[2]) or 'gone')}
end
if cur ~= ARGV[1] or token ~= ARGV[2] then return {'conflict', cur, token, 'head moved'} end
if n > 0 and head[3] ~= 'running' then return {'conflict', cur, token, 'run is ' .. tostring(head[3])} end
for j = 0, x - 1, 1000 do
  local fs = {}
  for l = j, math.min(j + 999, x - 1) do fs[#fs + 1] = ARGV[exps + 2 * l] end
  local vs = redis.call('HMGET', KEYS[1], unpack(fs))
  for l = 1, #fs do
    local v = vs[l] or ''
    if v == 'pending|0|0|' then v = '' end
    if v ~= ARGV[exps + 2 * (j + l - 1) + 1] then
      return {'conflict', cur, token, 'task ' .. fs[l] .. ' is ' .. (vs[l] or 'untouched')}
    end
  end
end
local checked = {}
for j = 0, k - 1 do
  local a = outs + 5 * j
  local key, typ = KEYS[tonumber(ARGV[a])], 'stream'
  if tonumber(ARGV[a + 1]) > 0 then typ = 'zset' end
  if not checked[key] then
    checked[key] = true
    local bad = notwritable(key, typ)
    if bad then return bad end
  end
end
local last = ''
local tail = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #tail > 0 then last = tail[1][1] end
-- A fold ahead of the log: the log no longer holds the last entry the
-- projector folded (Redis lost writes it had acknowledged). Its decisions
-- would rest on events that are gone, and it could never catch up.
if last ~= ARGV[3] and ARGV[3] ~= '' and #redis.call('XRANGE', KEYS[2], ARGV[3], ARGV[3]) == 0 then
  return {'conflict', cur, token, '` + whyLogLost + `'}
end
local seqs = {}
for j = 1, n do
  local a = 7 + 6 * (j - 1)
  seqs[j] = append(KEYS[2], ARGV[a], ARGV[a+1], ARGV[a+2], ARGV[a+3], ARGV[a+4], ARGV[5], ARGV[a+5])
end
-- Every field in one HSET: the task records and run fields, the commit
-- token and the cursor; @dirty is cleared once caught up, and left as it
-- is otherwise (see above).
local fields = {}
for j = 1, 2 * m do fields[j] = ARGV[recs + j - 1] end
local newtoken = token
if n > 0 then
  newtoken = ARGV[7]
  fields[#fields + 1] = '@commit'; fields[#fields + 1] = newtoken
end
local newcur = ARGV[3]
local caught = 0
if last == ARGV[3] then
  caught = 1
  if n > 0 then newcur = seqs[n] end
  redis.call('HDEL', KEYS[1], '@dirty')
end
fields[#fields + 1] = '@cursor'; fields[#fields + 1] = newcur
chunked('HSET', KEYS[1], fields, 1, #fields)
-- The dispatches, after their events: queue messages now, or parked.
local parked = 0
for j = 0, k - 1 do
  local a = outs + 5 * j
  local key = KEYS[tonumber(ARGV[a])]
  local due = tonumber(ARGV[a + 1])
  if due > 0 then
    redis.call('ZADD', key, due, ARGV[a + 4])
    parked = parked + 1
  else
    enqueue(key, run, ARGV[a + 2], ARGV[a + 3], trace)
  end
end
-- The run ended with these decisions: compact a short log (Redis keeps a
-- stream's newest node at its preallocated size, up to 4 KiB; a copy's
-- nodes fit their entries: same entries, ids and stream metadata), then
-- give the run's keys their TTL, in the same step as the run's end.
-- A cancelled run ended in the cancel script, which knows no TTL: the
-- projector's first commit after it (no decisions) applies them.
local ended = n == 0 and head[3] == 'cancelled'
local succeeded = false
for j = 1, n do
  local typ = ARGV[7 + 6 * (j - 1) + 1]
  if typ == 'run_succeeded' or typ == 'run_failed' or typ == 'run_cancelled' then ended = true end
  if typ == 'run_succeeded' then succeeded = true end
end
if ended and compact > 0 and redis.call('XLEN', KEYS[2]) <= compact then
  redis.call('COPY', KEYS[2], KEYS[3], 'REPLACE')
  redis.call('RENAME', KEYS[3], KEYS[2])
end
if ended and ttl > 0 then
  for _, key in ipairs({KEYS[1], KEYS[2], KEYS[4]}) do
    redis.call('PEXPIRE', key, ttl)
  end
end
-- A succeeded run keeps only its log (and its channel).
if succeeded then foldend(KEYS[1]) end
local reply = {'ok', newcur, caught, parked, newtoken}
for j = 1, n do reply[5 + j] = seqs[j] end
return reply
`)

// CommitCmd queues the commit script for run on p, a pipeline or the
// client; read its reply with ParseCommit after Exec.
func (d DB) CommitCmd(ctx context.Context, p redis.Scripter, run string, c Commit) *redis.Cmd {
	keys := []string{d.K.RunState(run), d.K.RunLog(run), d.K.RunLogCompact(run), d.K.RunChannel(run)}
	args := make([]any, 0, 11+6*len(c.Events)+2*len(c.Records)+2*len(c.Expect)+5*len(c.Dispatches))
	args = append(args, c.Expected.Cursor, c.Expected.Commit, c.FoldedTo, strconv.FormatInt(c.TimeMS, 10), c.Writer, len(c.Events))
	for _, e := range c.Events {
		args = append(args, e.ID, string(e.Type), e.Task, e.Attempt, e.Epoch, string(e.Body))
	}
	args = append(args, len(c.Records))
	for f, v := range c.Records {
		args = append(args, f, v)
	}
	args = append(args, len(c.Expect))
	for f, v := range c.Expect {
		if v == untouched {
			v = ""
		}
		args = append(args, f, v)
	}
	args = append(args, len(c.Dispatches))
	var targets keyIndex
	for _, x := range c.Dispatches {
		key, due, member := d.K.QueueFor(run, x.Pool, x.Priority), int64(0), ""
		if x.DueMS > c.TimeMS {
			x.Trace = c.Trace
			key, due, member = d.K.DelayedFor(run), x.DueMS, x.String()
		}
		args = append(args, targets.of(&keys, key), due, x.Task, x.Attempt, member)
	}
	args = append(args, c.CompactLog, c.TTL.Milliseconds(), run)
	if c.Trace != "" {
		args = append(args, c.Trace)
	}
	return commitScript.Run(ctx, p, keys, args...)
}

// untouched is the record of a task no script has written yet.
const untouched = "pending|0|0|"

// ParseCommit reads a CommitCmd reply.
func ParseCommit(run string, cmd *redis.Cmd) (CommitResult, error) {
	res, err := cmd.Slice()
	if err != nil {
		return CommitResult{}, fmt.Errorf("commit run %s: %w", run, err)
	}
	out := CommitResult{Head: Head{Cursor: str(res, 1)}}
	if str(res, 0) == "conflict" {
		out.Conflict = true
		out.Head.Commit, out.Why = str(res, 2), str(res, 3)
		return out, nil
	}
	out.CaughtUp = num(res, 2) == 1
	out.Parked = num(res, 3)
	out.Head.Commit = str(res, 4)
	for i := 5; i < len(res); i++ {
		out.Seqs = append(out.Seqs, str(res, i))
	}
	return out, nil
}

// Commits runs the commit script for several runs in one round trip (see
// Pipelined: a NOSCRIPT loads the scripts and sends them again).
// results[i] and errs[i] are runs[i]'s; err is set when ctx ended.
func (d DB) Commits(ctx context.Context, runs []string, cs []Commit) (results []CommitResult, errs []error, err error) {
	cmds := make([]*redis.Cmd, len(runs))
	err = d.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, run := range runs {
			cmds[i] = d.CommitCmd(ctx, pipe, run, cs[i])
		}
		return nil
	})
	if err != nil && ctx.Err() != nil {
		return nil, nil, err
	}
	results, errs = make([]CommitResult, len(runs)), make([]error, len(runs))
	for i, run := range runs {
		results[i], errs[i] = ParseCommit(run, cmds[i])
	}
	return results, errs, nil
}
