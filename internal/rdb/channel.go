package rdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/redis/go-redis/v9"
)

// Limits of a run's channel, checked by the write script (and, to fail
// before a round trip, by WriteChannel).
//
// Every write is an event that carries the key's whole new value, and a
// run's log is read whole by every fold (projector cold start, replay,
// verify, export), so a value is small: 64 KiB holds a config, a cursor
// or a list of a few thousand ids; data belongs in task results (1 MiB)
// or in external storage, with its address in the channel. A key is a
// name (task ids are at most 200 bytes). 1,000 keys bound the hash that
// Client.Channel and "graflow status --channel" read in one reply (at
// most about 64 MiB, typically a few KiB).
const (
	ChannelMaxKeyBytes   = 256
	ChannelMaxValueBytes = 64 << 10
	ChannelMaxKeys       = 1000
)

// Channel operations, the op of channel_written.
const (
	ChannelOpSet    = "set"
	ChannelOpAppend = "append"
	ChannelOpIncr   = "incr"
)

var (
	// ErrChannelLimit is returned for a write over a channel limit (see
	// ChannelMaxKeyBytes); nothing was written.
	ErrChannelLimit = errors.New("channel limit exceeded")
	// ErrChannelType is returned for an append to a value that is not a
	// JSON array, or an increment of one that is not an integer (or that
	// would overflow int64); nothing was written.
	ErrChannelType = errors.New("channel value has the wrong type for the operation")
	// ErrRunNotRunning is returned for a channel write to a run that is
	// not running (it ended or was quarantined); nothing was written.
	ErrRunNotRunning = errors.New("run is not running")
)

// channelWriteScript writes one key of a run's channel for the task
// attempt that holds the claim: checks the caller still holds it (task
// record running, same attempt, epoch and owner; a caller that lost it is
// refused and recorded as result_rejected, what "channel", as a stale
// heartbeat is), that the run is running and that the write keeps within
// the limits; then applies the op to the channel hash and appends
// channel_written {key, op, value} (value: the key's new value) with the
// writer's task, attempt, epoch and worker. Every check comes before the
// first write; an incr's HINCRBY is that first write, and it writes
// nothing when it refuses (not an integer, overflow).
//
// Like every script it is safe to run twice (go-redis retries a command
// whose reply timed out, and a worker retries a write whose connection
// failed for up to 30 s, with the same event id): the claim's last
// applied write is kept in the state hash (FieldChannelWritePrefix: event id,
// seq and an incr's new value), so a call whose event id it holds replies
// as the first call did, writing nothing. A worker sends one write of a
// claim at a time, so a retry finds its own id there. A call whose event
// is among the log's last channelRetryWindow entries (the run ended since:
// a succeeded run keeps only its log; another write of the claim came in
// between) was applied too. The log was all it searched: a retry after
// more entries than that (a busy fan-out, a retry seconds later) applied
// again.
//
// Values are JSON: the caller passes valid, compact JSON (set: the value;
// append: the element), so append is a splice of the stored array's text
// and nothing is decoded in Lua. The event body is built the same way.
//
// KEYS: 1 state, 2 log, 3 channel
// ARGV: 1 task, 2 attempt, 3 epoch, 4 worker, 5 event id, 6 time ms,
//
//	7 op (set|append|incr), 8 key, 9 value (set: the JSON value;
//	append: the JSON element; incr: the decimal delta), 10 rejection
//	event id, 11 max key bytes, 12 max value bytes, 13 max keys
//
// Reply: {"ok", seq, new value for incr ("" otherwise)} |
// {"stale", status, epoch, owner} | {"missing"} | {"not_running", status} |
// {"limit", why} | {"type", why}
var channelWriteScript = redis.NewScript(prelude + `
local cwf = '` + statehash.FieldChannelWritePrefix + `' .. ARGV[1]
local h = redis.call('HMGET', KEYS[1], '@status', ARGV[1], cwf)
if h[3] then
  -- A call run twice (a retry after a lost reply) finds its own id as
  -- the claim's last write and replies as the first did.
  local id, seq, val = string.match(h[3], '^([^|]+)|([^|]+)|(.*)$')
  if id == ARGV[5] then return {'ok', seq, val} end
end
-- Or its own event among the log's last entries (the run ended since, or
-- another write of the claim came in between; its body is the entry's
-- last field in every schema version).
for _, m in ipairs(redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ` + channelRetryWindow + `)) do
  if m[2][1] == 'id' and m[2][2] == ARGV[5] and m[2][4] == 'channel_written' then
    return {'ok', m[1], string.match(m[2][#m[2]], '"value":(-?%d+)}$') or ''}
  end
end
local run = h[1]
if not run then
  if not loggedend(KEYS[2]) then return {'missing'} end
  -- A succeeded run keeps only its log and channel: its task ended, as
  -- its last event says.
  local st, e, o = rejectlate(KEYS[2], ARGV[10], 'channel', ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4])
  return {'stale', st, tostring(e), o}
end
local st, a, e, o = parserec(h[2])
local att, ep = tonumber(ARGV[2]), tonumber(ARGV[3])
if st ~= 'running' or a ~= att or e ~= ep or o ~= ARGV[4] then
  append(KEYS[2], ARGV[10], 'result_rejected', ARGV[1], att, ep, ARGV[4],
    cjson.encode({what = 'channel', reason = 'claim lost: task is ' .. st .. ' at epoch ' .. tostring(e), current_epoch = e}))
  return {'stale', st, tostring(e), o}
end
if run ~= 'running' then return {'not_running', run} end
local op, key, v = ARGV[7], ARGV[8], ARGV[9]
local maxk, maxv, maxn = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
if #key == 0 or #key > maxk then
  return {'limit', 'key of ' .. #key .. ' bytes: a key has 1 to ' .. maxk .. ' bytes'}
end
local bad = notwritable(KEYS[3], 'hash') or notwritable(KEYS[2], 'stream')
if bad then return bad end
local cur = redis.call('HGET', KEYS[3], key)
if not cur and redis.call('HLEN', KEYS[3]) >= maxn then
  return {'limit', 'the channel holds ' .. maxn .. ' keys already: ' .. key .. ' would be one more'}
end
local new
if op == 'set' then
  new = v
elseif op == 'append' then
  if not cur then
    new = '[' .. v .. ']'
  else
    local items = string.match(cur, '^%s*%[(.*)%]%s*$')
    if not items then return {'type', 'append to ' .. key .. ': its value is not a JSON array'} end
    if string.find(items, '^%s*$') then new = '[' .. v .. ']' else new = '[' .. items .. ',' .. v .. ']' end
  end
elseif op == 'incr' then
  if cur and not string.find(cur, '^-?%d+$') then
    return {'type', 'incr of ' .. key .. ': its value is not an integer'}
  end
  if not string.find(v, '^-?%d+$') then return redis.error_reply('ERR channel incr: bad delta ' .. v) end
else
  return redis.error_reply('ERR channel: unknown op ' .. op)
end
if new and #new > maxv then
  return {'limit', op .. ' of ' .. key .. ': the value would have ' .. #new .. ' bytes, over ' .. maxv}
end
if op == 'incr' then
  local r = redis.pcall('HINCRBY', KEYS[3], key, v)
  if type(r) == 'table' and r.err then return {'type', 'incr of ' .. key .. ': ' .. r.err} end
  new = redis.call('HGET', KEYS[3], key) -- exact: a Lua number is a double
else
  redis.call('HSET', KEYS[3], key, new)
end
local body = '{"key":' .. cjson.encode(key) .. ',"op":"' .. op .. '","value":' .. new .. '}'
local seq = append(KEYS[2], ARGV[5], 'channel_written', ARGV[1], a, e, ARGV[4], body)
if op ~= 'incr' then new = '' end
redis.call('HSET', KEYS[1], cwf, ARGV[5] .. '|' .. seq .. '|' .. new)
return {'ok', seq, new}
`)

// channelRetryWindow is how many of the log's last entries a channel
// write searches for its own event id (see channelWriteScript).
const channelRetryWindow = "128"

// ChannelWrite is one write of a run's channel by the task attempt that
// holds the claim (see channelWriteScript).
type ChannelWrite struct {
	Run, Task, Worker string
	Attempt           int
	Epoch             int64
	// EventID names the channel_written event, RejectID the
	// result_rejected recorded if the caller lost its claim.
	EventID, RejectID string
	TimeMS            int64
	// Op is ChannelOpSet, ChannelOpAppend or ChannelOpIncr.
	Op  string
	Key string
	// Value is the JSON value (set) or element (append); Delta the
	// increment (incr).
	Value json.RawMessage
	Delta int64
}

// ChannelWritten is the reply of WriteChannel: the channel_written
// event's log id and, for an incr, the key's new value.
type ChannelWritten struct {
	Seq   string
	Value int64
}

// CheckChannelKey returns an error wrapping ErrChannelLimit for a key
// that is empty, longer than ChannelMaxKeyBytes or not UTF-8 (an event
// body is JSON: a key that JSON cannot carry as is would come back
// another from the log).
func CheckChannelKey(key string) error {
	switch {
	case key == "" || len(key) > ChannelMaxKeyBytes:
		return fmt.Errorf("%w: key of %d bytes: a key has 1 to %d bytes", ErrChannelLimit, len(key), ChannelMaxKeyBytes)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: key %q is not UTF-8", ErrChannelLimit, key)
	}
	return nil
}

// WriteChannel runs the channel write script. The errors: a *StaleError
// (wrapping ErrStaleClaim) when the caller no longer holds the claim (the
// refusal is recorded as result_rejected), ErrRunMissing, ErrRunNotRunning,
// ErrChannelLimit, ErrChannelType, each wrapped with the run and key;
// nothing was written to the channel then.
func (d DB) WriteChannel(ctx context.Context, w ChannelWrite) (ChannelWritten, error) {
	where := fmt.Sprintf("channel %s of run %s", w.Op, w.Run)
	if err := CheckChannelKey(w.Key); err != nil {
		return ChannelWritten{}, fmt.Errorf("%s: %w", where, err)
	}
	where += " key " + w.Key
	var value string
	switch w.Op {
	case ChannelOpSet, ChannelOpAppend:
		if !json.Valid(w.Value) {
			return ChannelWritten{}, fmt.Errorf("%s: the value is not valid JSON", where)
		}
		if len(w.Value) > ChannelMaxValueBytes {
			return ChannelWritten{}, fmt.Errorf("%s: %w: a value of %d bytes, over %d", where, ErrChannelLimit, len(w.Value), ChannelMaxValueBytes)
		}
		value = string(w.Value)
	case ChannelOpIncr:
		value = strconv.FormatInt(w.Delta, 10)
	default:
		return ChannelWritten{}, fmt.Errorf("%s: unknown op", where)
	}
	res, err := channelWriteScript.Run(ctx, d.C, []string{d.K.RunState(w.Run), d.K.RunLog(w.Run), d.K.RunChannel(w.Run)},
		w.Task, w.Attempt, w.Epoch, w.Worker, w.EventID, w.TimeMS, w.Op, w.Key, value, w.RejectID,
		ChannelMaxKeyBytes, ChannelMaxValueBytes, ChannelMaxKeys).Slice()
	if err != nil {
		return ChannelWritten{}, fmt.Errorf("%s: %w", where, err)
	}
	switch str(res, 0) {
	case "ok":
		out := ChannelWritten{Seq: str(res, 1)}
		if w.Op == ChannelOpIncr {
			if out.Value, err = strconv.ParseInt(str(res, 2), 10, 64); err != nil {
				return out, fmt.Errorf("%s: new value %q: %w", where, str(res, 2), err)
			}
		}
		return out, nil
	case "stale":
		return ChannelWritten{}, fmt.Errorf("%s: %w", where, &StaleError{Status: str(res, 1), Epoch: str(res, 2), Owner: str(res, 3)})
	case "missing":
		return ChannelWritten{}, fmt.Errorf("%s: %w", where, ErrRunMissing)
	case "not_running":
		return ChannelWritten{}, fmt.Errorf("%s: %w (it is %s)", where, ErrRunNotRunning, str(res, 1))
	case "limit":
		return ChannelWritten{}, fmt.Errorf("%s: %w: %s", where, ErrChannelLimit, str(res, 1))
	case "type":
		return ChannelWritten{}, fmt.Errorf("%s: %w: %s", where, ErrChannelType, str(res, 1))
	}
	return ChannelWritten{}, fmt.Errorf("%s: unexpected reply %v", where, res)
}

// Channel returns run's channel, key → JSON value (HGETALL: at most
// ChannelMaxKeys keys).
func (d DB) Channel(ctx context.Context, run string) (map[string]string, error) {
	h, err := d.C.HGetAll(ctx, d.K.RunChannel(run)).Result()
	if err != nil {
		return nil, fmt.Errorf("read the channel of run %s: %w", run, err)
	}
	return h, nil
}

// ChannelGet returns the JSON value of key in run's channel; ok is false
// when the key has none.
func (d DB) ChannelGet(ctx context.Context, run, key string) (value string, ok bool, err error) {
	v, err := d.C.HGet(ctx, d.K.RunChannel(run), key).Result()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read channel key %s of run %s: %w", key, run, err)
	}
	return v, true, nil
}

// ChannelKeys returns the keys of run's channel, sorted.
func (d DB) ChannelKeys(ctx context.Context, run string) ([]string, error) {
	ks, err := d.C.HKeys(ctx, d.K.RunChannel(run)).Result()
	if err != nil {
		return nil, fmt.Errorf("read the channel keys of run %s: %w", run, err)
	}
	slices.Sort(ks)
	return ks, nil
}

// channelWaitCount is how many log entries one blocking read of
// ChannelWait returns.
const channelWaitCount = 1000

// ChannelWait returns the JSON value of key in run's channel as soon as
// it has one, blocking on the run's log (no polling): it reads the log's
// last id, then the key and the run's status (in that order, in one round
// trip: a write between the reads is seen by the read of the key, one
// after them is in the log after that id); without a value, it blocks on
// the log (XREAD BLOCK, block per read) from that id until a
// channel_written of key appears, and returns the value it carries. It
// returns ctx's error when ctx ends first, and an error wrapping
// ErrRunNotRunning when the run is not running or an event that ends it
// (or sets it aside) comes first: nothing can write the key then.
// ErrRunMissing when the run does not exist.
func (d DB) ChannelWait(ctx context.Context, run, key string, block time.Duration) (json.RawMessage, error) {
	where := fmt.Sprintf("wait for channel key %s of run %s", key, run)
	pipe := d.C.Pipeline()
	last := pipe.XRevRangeN(ctx, d.K.RunLog(run), "+", "-", 1)
	val := pipe.HGet(ctx, d.K.RunChannel(run), key)
	status := pipe.HGet(ctx, d.K.RunState(run), FieldRunStatus)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if v, err := val.Result(); err == nil {
		return json.RawMessage(v), nil
	}
	tail, err := last.Result()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	switch st := status.Val(); {
	case len(tail) == 0 || st == "":
		return nil, fmt.Errorf("%s: %w", where, ErrRunMissing)
	case st != string(events.RunStatusRunning):
		return nil, fmt.Errorf("%s: %w (it is %s)", where, ErrRunNotRunning, st)
	}
	var found json.RawMessage
	var ended error
	err = d.Tail(ctx, run, tail[0].ID, channelWaitCount, block, func(batch []Message) (bool, error) {
		for _, m := range batch {
			t, _ := m.Values[events.FieldType].(string)
			switch events.Type(t) {
			case events.ChannelWritten:
				b, _ := m.Values[events.FieldBody].(string)
				var body events.ChannelWrittenBody
				if json.Unmarshal([]byte(b), &body) == nil && body.Key == key {
					found = body.Value
					return true, nil
				}
			case events.RunSucceeded, events.RunFailed, events.RunCancelled, events.RunQuarantined:
				ended = fmt.Errorf("%w: %s (entry %s) before the key was written", ErrRunNotRunning, t, m.ID)
				return true, nil
			}
		}
		return false, nil
	})
	switch {
	case found != nil:
		return found, nil
	case ended != nil:
		return nil, fmt.Errorf("%s: %w", where, ended)
	case err != nil:
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return nil, fmt.Errorf("%s: the log read ended", where)
}
