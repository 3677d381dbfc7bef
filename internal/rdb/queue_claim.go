package rdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/redis/go-redis/v9"
)

// The worker's claim: reading its pools' queue streams, highest band first
// (fetchScript), and claiming the messages read, one script call per run
// and one round trip per batch (claimScript, ClaimGroups). Upstream results
// over a claim's byte budget are read with ReadUpstream.

// fetchScript reads up to n new messages from a pool's band streams for a
// consumer, strictly highest band first (one multi-stream XREADGROUP would
// apply COUNT per stream and interleave bands). Non-blocking: when it
// returns nothing, the worker blocks on all bands with XREADGROUP.
//
// With a run key prefix (ARGV 4) it also claims, in the same call, each
// message it read whose task is dispatched for the message's attempt in a
// running run (claimone's fresh mode): the claim script's one call and
// round trip per batch saved. Every other message comes back unclaimed,
// for the worker's own checks and the claim script. The runs of a queue
// partition have their keys in its slot, so the keys built here from the
// message's run id are local.
//
// A claiming call is safe to send again (go-redis resends a command whose
// reply was lost or timed out): it records what it read in the consumer's
// fetch mark, under its first claim event id (unique to the call), and
// the same call sent again reads those messages back (XRANGE) and answers
// their claims (claimone finds its own task_claimed by id) instead of
// reading new messages, which it would claim with event ids already used
// while the first execution's claims waited for the reclaimer.
//
// It also removes the acked entries of each band it reads (trimacked) once
// they may fill a node, and all of them when the band had nothing new.
//
// Bands above 0 are read only while the pool's Keys.QueueHigh mark is set
// (every writer of a message on such a band sets it, see enqueueLua): a
// pool that only uses band 0 costs one look at one band. A call that finds
// every band above 0 with nothing new deletes the mark.
//
// KEYS: the pool's band streams, highest priority first, then the
// consumer's fetch mark, then the pool's Keys.QueueHigh mark (one slot:
// {pN})
// ARGV: 1 group, 2 consumer, 3 n, 4 run key prefix of the partition ("":
// no claims), 5 time ms, 6 upstream byte budget, then n claim event ids
// (the i-th message read claims with the i-th)
// Reply: {{stream, id, {field, value, ...}, claim reply or nil}, ...}
var fetchScript = redis.NewScript(prelude + claimLua + trimLua + `
local n = tonumber(ARGV[3])
local prefix = ARGV[4]
local call = claimcall(ARGV[6])
local out, read = {}, {}
local bands, mark, high, token = #KEYS - 2, KEYS[#KEYS - 1], KEYS[#KEYS], ARGV[7]
local function field(f, name)
  for i = 1, #f - 1, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end
-- add appends message m of band b, read at position pos, to the reply,
-- claimed with the position's event id when it can be.
local function add(b, m, pos)
  local claim = false
  local run, task, att = field(m[2], 'r'), field(m[2], 'k'), field(m[2], 'a')
  if prefix ~= '' and run and task and att and run ~= '' and task ~= '' then
    claim = claimone(call, runkeys(prefix, run), {task, att, ARGV[2], ARGV[6 + pos], ARGV[5], 'claim', '0', ''}, true) or false
  end
  out[#out + 1] = {KEYS[b], m[1], m[2], claim}
end
local claiming = prefix ~= '' and token
if claiming then
  local prev = redis.call('GET', mark)
  if prev and string.sub(prev, 1, #token + 1) == token .. '|' then
    -- This very call, sent again: what it read, as it read it.
    local pos = 0
    for b, id in string.gmatch(string.sub(prev, #token + 2), '(%d+):([^,]+)') do
      pos = pos + 1
      local m = redis.call('XRANGE', KEYS[tonumber(b)], id, id)[1]
      if m then add(tonumber(b), m, pos) end
    end
    return out
  end
end
-- quiet: every band above 0 was seen with nothing new left.
local hi, quiet = redis.call('EXISTS', high) == 1, true
for i = 1, bands do
  if n <= 0 then
    if i < bands then quiet = false end
    break
  end
  -- An empty band has nothing new: skip the (costlier) XREADGROUP. A band
  -- keeps at most about a node of acked entries (trimacked), so a band
  -- that holds only those is read once more, finds nothing new and is
  -- emptied. Bands above 0 only while marked.
  local len = 0
  if hi or i == bands then len = redis.call('XLEN', KEYS[i]) end
  if len > 0 then
    local bs = tostring(i) .. ':'
    local asked = n
    local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n, 'STREAMS', KEYS[i], '>')
    local got = 0
    if r then
      for _, m in ipairs(r[1][2]) do
        add(i, m, #out + 1)
        read[#read + 1] = bs .. m[1]
        n = n - 1
        got = got + 1
      end
    end
    if got == asked and i < bands then quiet = false end
    if got == 0 or len >= ` + strconv.Itoa(trimAtLength) + ` then trimacked(KEYS[i], ARGV[1], len, got == 0) end
  end
end
if hi and quiet then redis.call('DEL', high) end
if claiming and #read > 0 then
  redis.call('SET', mark, token .. '|' .. table.concat(read, ','), 'PX', ` + strconv.Itoa(fetchMarkTTLMS) + `)
end
return out
`)

// fetchMarkTTLMS is how long a fetch mark is kept: longer than go-redis
// takes to send a call again (its retries back off to 512 ms, three times).
const fetchMarkTTLMS = 60_000

// Fetch reads up to n new messages of a pool in partition part, highest
// band first, without blocking and without claiming (see fetchScript).
func (d DB) Fetch(ctx context.Context, part int, pool, consumer string, n int) ([]Stream, error) {
	res, _, err := d.fetch(ctx, part, pool, consumer, n, "", 0, nil)
	return res, err
}

// FetchClaim reads up to len(eventIDs) new messages of a pool in partition
// part as Fetch does, and claims for consumer, in the same call, those
// whose task is dispatched for the message's attempt in a running run (the
// i-th message read with eventIDs[i] as its task_claimed id). claims maps
// MessageKey(stream, id) to the claim of each message claimed; every other
// message read is not claimed and needs the claim script (Claim,
// ClaimGroups) after the caller's own checks.
func (d DB) FetchClaim(ctx context.Context, part int, pool, consumer string, eventIDs []string, timeMS int64) (res []Stream, claims map[string]ClaimResult, err error) {
	return d.fetch(ctx, part, pool, consumer, len(eventIDs), d.K.RunPrefix(part), timeMS, eventIDs)
}

// claimFreshScript claims, for a consumer, messages it read with a
// blocking XREADGROUP, as the fetch script claims what it reads: each whose
// task is dispatched for the message's attempt in a running run
// (claimone's fresh mode); the others are left alone.
//
// KEYS: 1 a key of the partition's slot (the stream read: it routes the
// call; the runs' keys are built from ARGV 1)
// ARGV: 1 run key prefix of the partition, 2 consumer, 3 time ms, 4
// upstream byte budget, then per message 4 arguments: run, task, attempt,
// claim event id
// Reply: per message, its claim reply or nil
var claimFreshScript = redis.NewScript(prelude + claimLua + `
local call = claimcall(ARGV[4])
local out = {}
for i = 5, #ARGV - 3, 4 do
  local run, task, att, id = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local claim = false
  if run ~= '' and task ~= '' then
    claim = claimone(call, runkeys(ARGV[1], run), {task, att, ARGV[2], id, ARGV[3], 'claim', '0', ''}, true) or false
  end
  out[#out + 1] = claim
end
return out
`)

// ClaimFresh claims for consumer, in one call, the messages of res (read
// from partition part's queues with a blocking XREADGROUP) whose task is
// dispatched for the message's attempt in a running run, as FetchClaim
// does for what it reads; eventID mints each claim's event id. It returns
// the claims by MessageKey; the messages not claimed need the claim script
// after the caller's checks.
func (d DB) ClaimFresh(ctx context.Context, part int, consumer string, res []Stream, eventID func() string, timeMS int64) (map[string]ClaimResult, error) {
	argv := []any{d.K.RunPrefix(part), consumer, timeMS, d.claimBudget()}
	var keys []string
	for _, s := range res {
		for _, m := range s.Messages {
			run, _ := m.Values[MsgRun].(string)
			task, _ := m.Values[MsgTask].(string)
			att, _ := m.Values[MsgAttempt].(string)
			keys = append(keys, MessageKey(s.Stream, m.ID), run, task)
			argv = append(argv, run, task, att, eventID())
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	items, err := claimFreshScript.Run(ctx, d.C, []string{res[0].Stream}, argv...).Slice()
	if err != nil {
		return nil, err
	}
	if len(items) != len(keys)/3 {
		return nil, fmt.Errorf("claim fresh: %d replies for %d messages", len(items), len(keys)/3)
	}
	var claims map[string]ClaimResult
	for i, item := range items {
		reply, ok := item.([]any)
		if !ok {
			continue
		}
		cr, err := parseClaim(keys[3*i+1], keys[3*i+2], reply)
		if err != nil {
			continue // claimed, but unreadable: the claim script's "already ours" is the way back
		}
		if claims == nil {
			claims = map[string]ClaimResult{}
		}
		claims[keys[3*i]] = cr
	}
	return claims, nil
}

// MessageKey names a message within a worker: stream ids are unique only
// within their stream.
func MessageKey(stream, id string) string { return stream + "\x00" + id }

func (d DB) fetch(ctx context.Context, part int, pool, consumer string, n int, prefix string, timeMS int64, eventIDs []string) ([]Stream, map[string]ClaimResult, error) {
	argv := make([]any, 0, 6+len(eventIDs))
	argv = append(argv, GroupWorkers, consumer, n, prefix, timeMS, d.claimBudget())
	for _, id := range eventIDs {
		argv = append(argv, id)
	}
	keys := append(d.K.Queues(part, pool), d.K.FetchMark(part, pool, consumer), d.K.QueueHigh(part, pool))
	res, err := fetchScript.Run(ctx, d.C, keys, argv...).Slice()
	if err != nil {
		return nil, nil, err
	}
	out := make([]Stream, 0, len(res))
	var claims map[string]ClaimResult
	for _, r := range res {
		item, ok := r.([]any)
		if !ok || len(item) < 3 {
			continue
		}
		stream, _ := item[0].(string)
		id, _ := item[1].(string)
		fields, _ := item[2].([]any)
		values := fieldMap(fields)
		msg := redis.XMessage{ID: id, Values: values}
		if n := len(out); n > 0 && out[n-1].Stream == stream {
			out[n-1].Messages = append(out[n-1].Messages, msg)
		} else {
			out = append(out, redis.XStream{Stream: stream, Messages: []Message{msg}})
		}
		if len(item) < 4 {
			continue
		}
		if reply, ok := item[3].([]any); ok {
			task, _ := values[MsgTask].(string)
			run, _ := values[MsgRun].(string)
			cr, err := parseClaim(run, task, reply)
			if err != nil {
				// Claimed, but its reply is unreadable: the claim
				// script's reply to the same worker ("already ours")
				// is the way back; the message goes that way.
				continue
			}
			if claims == nil {
				claims = map[string]ClaimResult{}
			}
			claims[MessageKey(stream, id)] = cr
		}
	}
	return out, claims, nil
}

// ClaimArgs are the inputs of a claim.
type ClaimArgs struct {
	Run, Task, Worker string
	Attempt           int
	EventID           string
	TimeMS            int64
	Reclaim           bool
	Deliveries        int64
	ReclaimEventID    string
}

// ClaimOutcome says what a claim found.
type ClaimOutcome string

// Claim outcomes.
const (
	ClaimOK      ClaimOutcome = "ok"
	ClaimDone    ClaimOutcome = "done"
	ClaimStale   ClaimOutcome = "stale"
	ClaimBusy    ClaimOutcome = "busy"
	ClaimMissing ClaimOutcome = "missing"
	// ClaimBad: the task's stored metadata cannot be read; nothing was
	// written (Detail says why).
	ClaimBad ClaimOutcome = "bad"
)

// ClaimResult is the reply of a claim.
type ClaimResult struct {
	Outcome ClaimOutcome
	Epoch   int64
	Meta    TaskMeta
	Input   json.RawMessage
	// Upstream maps each dependency to its accepted result; the results
	// that did not fit the claim's byte budget are missing and listed in
	// UpstreamLeft (read them with ReadUpstream).
	Upstream     map[string]json.RawMessage
	UpstreamLeft []string
	Detail       string // status found, for logs; why, for ClaimBad
}

// DefaultClaimUpstreamBytes bounds the upstream results one claim call
// returns (a wide fan-in's results are otherwise one reply of any size);
// the rest are read page by page with ReadUpstream.
const DefaultClaimUpstreamBytes = 8 << 20

// ErrBadTaskMeta is returned for a claim of a task whose stored metadata
// cannot be read (the claim wrote nothing).
var ErrBadTaskMeta = errors.New("task metadata cannot be read")

// Claim runs the claim script for one message.
func (d DB) Claim(ctx context.Context, a ClaimArgs) (ClaimResult, error) {
	out, err := ParseClaims([]ClaimArgs{a}, d.ClaimsCmd(ctx, d.C, []ClaimArgs{a}))
	if err != nil {
		return ClaimResult{}, err
	}
	return out[0], nil
}

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
// KEYS: 1 state, 2 log
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
var claimScript = redis.NewScript(prelude + claimLua + `
local call = claimcall(ARGV[2])
local K = {KEYS[1], KEYS[2]}
local n, out = tonumber(ARGV[1]), {}
for i = 0, n - 1 do
  local A = {}
  for j = 1, 8 do A[j] = ARGV[2 + i * 8 + j] end
  out[i + 1] = claimone(call, K, A, false)
end
return out
`)

// claimLua defines claimone, the claim of one message's task (the claim
// script's items, and the fetch script's claims of what it reads), and
// claimcall, the state one script call's claims share (the upstream byte
// budget). The prelude must come first.
//
// claimone(call, K, A, fresh): K = {state, log} of the run,
// A = the 8 arguments of a claim item (see claimScript). With fresh set it
// claims only a dispatched task of the message's attempt in a running run
// (the one case that needs no worker-side check first), answers the same
// call sent again with the claim it made, and returns nil, having written
// nothing, in every other case.
const claimLua = `
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
-- runkeys returns the keys claimone reads and writes of a run whose
-- partition's run key prefix is prefix (Keys.RunPrefix; the names of
-- Keys.RunState and RunLog): state, log.
local function runkeys(prefix, run)
  local p = prefix .. run .. ':'
  return {p .. 'state', p .. 'log'}
end
local function claimcall(budget)
  budget = tonumber(budget) or 0
  return {budget = budget, bounded = budget > 0}
end
local function claimone(call, K, A, fresh)
  -- The run's status, the task's record and metadata and the run's input:
  -- one read.
  local h = redis.call('HMGET', K[1], '@status', A[1], '@g:' .. A[1], '@input')
  local run = h[1]
  local st, a, e, o = parserec(h[2])
  local att = tonumber(A[2])
  if fresh then
    if run ~= 'running' or a ~= att then return nil end
    if st == 'running' and o == A[3] then
      -- Ours already: this very call sent again after a lost reply (go-redis
      -- resends), whose claim is in the log under this id, gets that claim
      -- back; any other claim of ours is the claim script's to answer,
      -- after the worker's checks.
      if not claimedby(K[2], A[4]) then return nil end
    elseif st ~= 'dispatched' then
      return nil
    end
  end
  if not run then
    local ended = loggedend(K[2])
    if ended then return {'done', ended} end
    return {'missing'}
  end
  if st == '?' then return {'bad', 'unreadable task record'} end
  if terminal[st] then return {'done', st} end
  if run ~= 'running' then return {'done', run} end
  if a ~= att then return {'stale', st, tostring(a)} end
  -- What this claim writes: nothing (ours already), a claim, or a reclaim
  -- and a claim. Decided before anything is written.
  local write
  if st == 'running' and o == A[3] and A[6] ~= 'reclaim' then
    -- Already ours: a retry (ours, or go-redis') after a lost reply, or a
    -- duplicate message. Hand the claim back as is, without a second event;
    -- never report it "busy", which would ack our only message.
    write = 'none'
  elseif st == 'running' and o == A[3] and claimedby(K[2], A[4]) then
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
  local meta = h[3] or '{}'
  local ds, why = deps(meta)
  if not ds then
    if fresh then return nil end
    return {'bad', why}
  end
  local input = h[4] or ''
  local vals = {}
  for i = 1, #ds, 500 do
    local chunk = {}
    for j = i, math.min(i + 499, #ds) do chunk[#chunk + 1] = '@r:' .. ds[j] end
    local vs = redis.call('HMGET', K[1], unpack(chunk))
    for j = 1, #chunk do
      local v = vs[j]
      if not v then
        -- No result: the dependency did not succeed, or its result
        -- expired (result TTL), which the reader must be told.
        v = ''
        if redis.call('HEXISTS', K[1], '@rx:' .. ds[i + j - 1]) == 1 then v = '!expired' end
      end
      vals[#vals + 1] = v
    end
  end
  -- The writes: the log first (the source of truth), then the record.
  if write == 'reclaim' then
    e = e + 1
    append(K[2], A[8], 'task_reclaimed', A[1], a, e, A[3],
      cjson.encode({from = o, deliveries = tonumber(A[7]), reason = 'lease expired'}))
  end
  if write ~= 'none' then
    e = e + 1
    append(K[2], A[4], 'task_claimed', A[1], a, e, A[3], '')
    setrec(K[1], A[1], 'running', a, e, A[3])
  end
  -- The dep results that fit the call's budget; the caller reads the rest.
  local reply = {'ok', itoa(e), meta, input, 0}
  local k = 0
  for j = 1, #vals do
    if call.bounded and #vals[j] > call.budget then break end
    call.budget = call.budget - #vals[j]
    reply[#reply + 1] = vals[j]
    k = k + 1
  end
  reply[5] = k
  return reply
end
`

// ClaimsCmd queues one claim script call for several messages of ONE run
// (all args must share the run) on p, a pipeline or the client; read the
// outcomes with ParseClaims after Exec.
func (d DB) ClaimsCmd(ctx context.Context, p redis.Scripter, as []ClaimArgs) *redis.Cmd {
	run := as[0].Run
	argv := make([]any, 0, 2+8*len(as))
	argv = append(argv, len(as), d.claimBudget())
	for _, a := range as {
		mode := "claim"
		if a.Reclaim {
			mode = "reclaim"
		}
		argv = append(argv, a.Task, a.Attempt, a.Worker, a.EventID, a.TimeMS, mode, a.Deliveries, a.ReclaimEventID)
	}
	return claimScript.Run(ctx, p, []string{d.K.RunState(run), d.K.RunLog(run)}, argv...)
}

// claimBudget is the upstream byte budget of one claiming call.
func (d DB) claimBudget() int {
	if d.ClaimUpstreamBytes <= 0 {
		return DefaultClaimUpstreamBytes
	}
	return d.ClaimUpstreamBytes
}

// ParseClaims reads a ClaimsCmd reply, one result per arg.
func ParseClaims(as []ClaimArgs, cmd *redis.Cmd) ([]ClaimResult, error) {
	items, err := cmd.Slice()
	if err != nil {
		return nil, fmt.Errorf("claim %s (%d tasks): %w", as[0].Run, len(as), err)
	}
	if len(items) != len(as) {
		return nil, fmt.Errorf("claim %s: %d replies for %d tasks", as[0].Run, len(items), len(as))
	}
	out := make([]ClaimResult, len(as))
	for i, a := range as {
		res, _ := items[i].([]any)
		r, err := parseClaim(a.Run, a.Task, res)
		if err != nil {
			return nil, err
		}
		out[i] = r
	}
	return out, nil
}

// parseClaim reads one claim reply (claimone's) of run's task.
func parseClaim(run, task string, res []any) (ClaimResult, error) {
	r := ClaimResult{Outcome: ClaimOutcome(str(res, 0)), Detail: str(res, 1)}
	if r.Outcome != ClaimOK {
		return r, nil
	}
	r.Epoch, _ = strconv.ParseInt(str(res, 1), 10, 64)
	if err := json.Unmarshal([]byte(str(res, 2)), &r.Meta); err != nil {
		return ClaimResult{}, fmt.Errorf("claim %s/%s: task metadata: %w", run, task, err)
	}
	if in := str(res, 3); in != "" {
		r.Input = json.RawMessage(in)
	}
	k := int(num(res, 4))
	r.Upstream = make(map[string]json.RawMessage, len(r.Meta.Deps))
	for j, dep := range r.Meta.Deps {
		if j >= k {
			r.UpstreamLeft = append(r.UpstreamLeft, dep)
		} else if v := str(res, 5+j); v != "" {
			r.Upstream[dep] = json.RawMessage(v)
		} else {
			r.Upstream[dep] = nil
		}
	}
	return r, nil
}

// ClaimGroups runs one claim script call per group (claims of one run) in
// one round trip: results[g] and errs[g] are group g's.
func (d DB) ClaimGroups(ctx context.Context, groups [][]ClaimArgs) (results [][]ClaimResult, errs []error) {
	cmds := make([]*redis.Cmd, len(groups))
	_ = d.Pipelined(ctx, func(pipe redis.Pipeliner) error { // loads the scripts after a NOSCRIPT and sends again
		for g, as := range groups {
			cmds[g] = d.ClaimsCmd(ctx, pipe, as)
		}
		return nil
	})
	results, errs = make([][]ClaimResult, len(groups)), make([]error, len(groups))
	for g, as := range groups {
		results[g], errs[g] = ParseClaims(as, cmds[g])
	}
	return results, errs
}

// ReadUpstream reads the accepted results of deps of run, at most page
// per round trip (page <= 0: 500); a dependency with no result maps to nil.
func (d DB) ReadUpstream(ctx context.Context, run string, deps []string, page int) (map[string]json.RawMessage, error) {
	if page <= 0 {
		page = 500
	}
	out := make(map[string]json.RawMessage, len(deps))
	for i := 0; i < len(deps); i += page {
		chunk := deps[i:min(i+page, len(deps))]
		// Each dependency's result and result expiry, one read: a
		// result that is gone because it expired reads as the expired
		// mark, one never stored as nil.
		fields := make([]string, 0, 2*len(chunk))
		for _, dep := range chunk {
			fields = append(fields, ResultField(dep), statehash.ResultExpiryField(dep))
		}
		vals, err := d.C.HMGet(ctx, d.K.RunState(run), fields...).Result()
		if err != nil {
			return nil, fmt.Errorf("read upstream results of run %s: %w", run, err)
		}
		for j, dep := range chunk {
			v, _ := vals[2*j].(string)
			x, _ := vals[2*j+1].(string)
			switch {
			case v != "":
				out[dep] = json.RawMessage(v)
			case x != "":
				out[dep] = json.RawMessage(expiredResult)
			default:
				out[dep] = nil
			}
		}
	}
	return out, nil
}

// fieldMap is a stream entry's flat field/value list, as a script returns
// it, as a map.
func fieldMap(kv []any) map[string]any {
	values := make(map[string]any, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		k, _ := kv[i].(string)
		values[k] = kv[i+1]
	}
	return values
}
