package rdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/redis/go-redis/v9"
)

// MaxSignalBytes bounds a signal's encoded payload: it becomes the waiting
// task's result, which a worker bounds the same (worker.DefaultMaxResultBytes).
const MaxSignalBytes = 1 << 20

// maxSignalID bounds a signal id (the sender's idempotency key).
const maxSignalID = 200

// ErrInvalidSignal is returned (wrapped, naming the problem) for a signal
// that cannot be sent: a bad name or id, a payload that is not JSON or is
// too large. Nothing is written.
var ErrInvalidSignal = errors.New("invalid signal")

var signalNameRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,200}$`)

// CheckSignalName checks a signal's name: like a task id, 1-200 letters,
// digits and "_.:-", not starting with "@".
func CheckSignalName(name string) error {
	if !signalNameRE.MatchString(name) || name[0] == '@' {
		return fmt.Errorf("%w: name %q: use 1-200 letters, digits, '_', '.', ':', '-' (not starting with '@')", ErrInvalidSignal, name)
	}
	return nil
}

// CheckSignal checks everything about a signal that can be checked
// before it is sent: its name, its id (1-200 bytes) and its payload (JSON,
// at most MaxSignalBytes).
func CheckSignal(name, id string, payload json.RawMessage) error {
	var errs []error
	if err := CheckSignalName(name); err != nil {
		errs = append(errs, err)
	}
	if id == "" || len(id) > maxSignalID {
		errs = append(errs, fmt.Errorf("%w: id %q: use 1-%d bytes", ErrInvalidSignal, id, maxSignalID))
	}
	switch {
	case len(payload) > MaxSignalBytes:
		errs = append(errs, fmt.Errorf("%w: the payload is %d bytes, the limit is %d", ErrInvalidSignal, len(payload), MaxSignalBytes))
	case !json.Valid(payload):
		errs = append(errs, fmt.Errorf("%w: the payload is not JSON", ErrInvalidSignal))
	}
	return errors.Join(errs...)
}

// signalScript records a signal delivered to a running run: it appends
// signal_received and notes the signal's id in the run's state hash under
// "@signal:<name>", which makes a run take one signal per name and a
// retried delivery (the same id) harmless. A signal changes no task or run
// state (the fold ignores it), so the run is not marked dirty and no
// projector is woken: the task waiting for it reads the log. Every check
// comes before the first write; the name and the body's size are checked
// again here, so nothing but a valid signal is ever written.
//
// KEYS: 1 state, 2 log
// ARGV: 1 name, 2 signal id, 3 event id, 4 sender (the event's worker
// field), 5 time ms, 6 body (JSON, built by the caller), 7 most body bytes
//
// Reply: {"recorded", seq} | {"duplicate"} (this id was recorded before,
// whatever the run's status now) | {"exists", id} (another signal of the
// name was recorded: its id) | {"finished", status} | {"missing"}
var signalScript = redis.NewScript(prelude + `
local name = ARGV[1]
if #name > 200 or not string.match(name, '^[%w_.:%-]+$') or string.sub(name, 1, 1) == '@' then
  return redis.error_reply('ERR invalid signal name ' .. name)
end
if #ARGV[6] > tonumber(ARGV[7]) then
  return redis.error_reply('ERR signal body of ' .. #ARGV[6] .. ' bytes is over the limit')
end
local field = '@signal:' .. name
local r = redis.call('HMGET', KEYS[1], '@status', field)
if r[2] then
  if r[2] == ARGV[2] then return {'duplicate'} end
  return {'exists', r[2]}
end
if not r[1] then
  local ended = loggedend(KEYS[2])
  if ended then return {'finished', ended} end
  return {'missing'}
end
if r[1] ~= 'running' then return {'finished', r[1]} end
local bad = notwritable(KEYS[2], 'stream')
if bad then return bad end
local seq = append(KEYS[2], ARGV[3], 'signal_received', '', 0, 0, ARGV[4], ARGV[6])
redis.call('HSET', KEYS[1], field, ARGV[2])
return {'recorded', seq}
`)

// SignalOutcome says what Signal did.
type SignalOutcome string

// Signal outcomes.
const (
	// SignalRecorded: this call appended signal_received.
	SignalRecorded SignalOutcome = "recorded"
	// SignalDuplicate: a signal of the name with this id was recorded
	// before (a retried delivery); nothing was written.
	SignalDuplicate SignalOutcome = "duplicate"
	// SignalExists: another signal of the name was recorded before
	// (SignalResult.ID is its id); nothing was written.
	SignalExists SignalOutcome = "exists"
	// SignalFinished: the run had ended (SignalResult.Status says how);
	// nothing was written.
	SignalFinished SignalOutcome = "finished"
)

// SignalResult is the reply of Signal.
type SignalResult struct {
	Outcome SignalOutcome
	// Seq is the log entry id of the signal_received this call appended.
	Seq string
	// ID is the id of the signal recorded before (SignalExists).
	ID string
	// Status is the run's status when it had ended (SignalFinished).
	Status string
}

// Signal records signal body for run (see signalScript). writer names the
// sender in the event's envelope ("client-...", "cli"), eventID is the
// event's ULID. The body is checked first (CheckSignal: ErrInvalidSignal,
// nothing sent); a run that does not exist is ErrRunMissing.
func (d DB) Signal(ctx context.Context, run, writer string, timeMS int64, eventID string, body events.SignalReceivedBody) (SignalResult, error) {
	if err := CheckSignal(body.Name, body.ID, body.Payload); err != nil {
		return SignalResult{}, err
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return SignalResult{}, fmt.Errorf("%w: %w", ErrInvalidSignal, err)
	}
	res, err := signalScript.Run(ctx, d.C, []string{d.K.RunState(run), d.K.RunLog(run)},
		body.Name, body.ID, eventID, writer, timeMS, raw, MaxSignalBytes+1024).Slice()
	if err != nil {
		return SignalResult{}, fmt.Errorf("signal %s to run %s: %w", body.Name, run, err)
	}
	str := func(i int) string {
		if i < len(res) {
			s, _ := res[i].(string)
			return s
		}
		return ""
	}
	switch SignalOutcome(str(0)) {
	case SignalRecorded:
		return SignalResult{Outcome: SignalRecorded, Seq: str(1)}, nil
	case SignalDuplicate:
		return SignalResult{Outcome: SignalDuplicate}, nil
	case SignalExists:
		return SignalResult{Outcome: SignalExists, ID: str(1)}, nil
	case SignalFinished:
		return SignalResult{Outcome: SignalFinished, Status: str(1)}, nil
	case "missing":
		return SignalResult{}, fmt.Errorf("signal %s to run %s: %w", body.Name, run, ErrRunMissing)
	}
	return SignalResult{}, fmt.Errorf("signal %s to run %s: unexpected reply %v", body.Name, run, res)
}

// isSignal reports whether e is a signal_received of name.
func isSignal(e events.Event, name string) bool {
	if e.Type != events.SignalReceived {
		return false
	}
	var b events.SignalReceivedBody
	return e.DecodeBody(&b) == nil && b.Name == name
}

// FindSignal reads run's log after the entry id after ("" or "0-0": from
// the first), page entries per round trip, and returns the first
// signal_received of name (nil if the log holds none) and the id of the
// last entry read (after itself when there was none). It stops at the
// signal. each, when not nil, sees every other entry read, in order (a
// waiting task learns from them when it was dispatched). Entries that do
// not decode are skipped: the projector quarantines such a run, and a
// task waiting for a signal need not fail for it.
func (d DB) FindSignal(ctx context.Context, run, name, after string, page int, each func(events.Event)) (*events.Event, string, error) {
	last, start := after, "-"
	if after != "" && after != "0" && after != "0-0" {
		start = "(" + after
	}
	for {
		msgs, err := d.C.XRangeN(ctx, d.K.RunLog(run), start, "+", int64(page)).Result()
		if err != nil {
			return nil, last, fmt.Errorf("read log of run %s: %w", run, err)
		}
		for _, m := range msgs {
			last = m.ID
			e, err := events.Decode(run, m.ID, m.Values)
			if err != nil {
				continue
			}
			if isSignal(e, name) {
				return &e, last, nil
			}
			if each != nil {
				each(e)
			}
		}
		if len(msgs) < page {
			return nil, last, nil
		}
		start = "(" + last
	}
}

// LogBatch is what BlockOnLogs read of one run's log.
type LogBatch struct {
	// Last is the id of the last entry read (the next read's start).
	Last string
	// Events are the entries read that decode, in order.
	Events []events.Event
}

// SignalWakeTTL is how long a signal loop's wake stream outlives its last
// wake (a worker that stops deletes its own).
const SignalWakeTTL = 10 * time.Minute

// Wake is a wake stream read with the logs by BlockOnLogs: Key (in the
// logs' partition; "" none) after entry Last ("": from its start). An
// entry there ends the block; BlockOnLogs moves Last past what it read.
type Wake struct {
	Key, Last string
}

// WakeSignalLoop adds an entry to wake stream key (a SignalWake key),
// which ends the BlockOnLogs that reads it: a signal loop sees a wait that
// joined it during its read at once, not when the read times out. The
// stream keeps one entry and expires SignalWakeTTL later.
func (d DB) WakeSignalLoop(ctx context.Context, key string) error {
	_, err := d.C.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.XAdd(ctx, &redis.XAddArgs{Stream: key, MaxLen: 1, Values: []any{"w", "1"}})
		p.PExpire(ctx, key, SignalWakeTTL)
		return nil
	})
	if err != nil {
		return fmt.Errorf("wake the signal loop: %w", err)
	}
	return nil
}

// StreamRefusesReads reads stream key without blocking and returns the
// error if Redis refuses the read (a key of another type), nil if it
// reads (a missing key reads as empty) or the read failed for another
// reason (the connection: the caller's next read tells).
func (d DB) StreamRefusesReads(ctx context.Context, key string) error {
	err := d.C.XRead(ctx, &redis.XReadArgs{Streams: []string{key, "0-0"}, Count: 1, Block: -1}).Err()
	if err != nil && !errors.Is(err, redis.Nil) && isReplyError(err) {
		return fmt.Errorf("read stream %s: %w", key, err)
	}
	return nil
}

// DeleteWake deletes wake stream key (a signal loop's, when it stops).
func (d DB) DeleteWake(ctx context.Context, key string) error {
	return d.C.Del(ctx, key).Err()
}

// BlockOnLogs blocks on the logs of runs (XREAD BLOCK, no polling) until
// one of them holds entries after its id in after (run → entry id), or
// wake (if set) an entry after wake.Last, for at most block, and returns
// up to count of those entries per run that has some, decoded (an entry
// that does not decode is left out, and Last moves past it). The runs and
// the wake stream must be of one partition: their keys share a slot, so
// one XREAD reads them all on Redis Cluster too. A read that times out,
// or that only a wake ended, returns an empty map.
func (d DB) BlockOnLogs(ctx context.Context, after map[string]string, wake *Wake, count int, block time.Duration) (map[string]LogBatch, error) {
	if len(after) == 0 {
		return nil, nil
	}
	streams := make([]string, 0, 2*len(after)+2)
	ids := make([]string, 0, len(after)+1)
	runOf := make(map[string]string, len(after))
	part := -1
	for run, id := range after {
		if p := d.K.Partition(run); part < 0 {
			part = p
		} else if p != part {
			return nil, fmt.Errorf("block on logs: runs of partitions %d and %d cannot be read in one call", part, p)
		}
		key := d.K.RunLog(run)
		runOf[key] = run
		if id == "" {
			id = "0-0"
		}
		streams, ids = append(streams, key), append(ids, id)
	}
	if wake != nil && wake.Key != "" {
		last := wake.Last
		if last == "" {
			last = "0-0"
		}
		streams, ids = append(streams, wake.Key), append(ids, last)
	}
	res, err := d.C.XRead(ctx, &redis.XReadArgs{Streams: append(streams, ids...), Count: int64(count), Block: block}).Result()
	if errors.Is(err, redis.Nil) {
		return map[string]LogBatch{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("block on the logs of %d runs: %w", len(after), err)
	}
	out := make(map[string]LogBatch, len(res))
	for _, s := range res {
		if wake != nil && s.Stream == wake.Key {
			if n := len(s.Messages); n > 0 {
				wake.Last = s.Messages[n-1].ID
			}
			continue
		}
		run := runOf[s.Stream]
		var b LogBatch
		for _, m := range s.Messages {
			b.Last = m.ID
			if e, err := events.Decode(run, m.ID, m.Values); err == nil {
				b.Events = append(b.Events, e)
			}
		}
		if b.Last != "" {
			out[run] = b
		}
	}
	return out, nil
}

// LogRefusals reads the log of each run of after alone, without blocking
// (one XREAD of one entry per run, in one pipeline), and returns the
// error of each read that failed (run → error; none: every log can be
// read). A run's log that does not exist reads as empty, not as an error.
// err is the pipeline's own failure (the connection), when no read could
// be told apart.
func (d DB) LogRefusals(ctx context.Context, after map[string]string) (refused map[string]error, err error) {
	pipe := d.C.Pipeline()
	cmds := make(map[string]*redis.XStreamSliceCmd, len(after))
	for run, id := range after {
		if id == "" {
			id = "0-0"
		}
		cmds[run] = pipe.XRead(ctx, &redis.XReadArgs{Streams: []string{d.K.RunLog(run), id}, Count: 1, Block: -1})
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) && !isReplyError(err) {
		return nil, fmt.Errorf("read the logs of %d runs one by one: %w", len(after), err)
	}
	refused = map[string]error{}
	for run, c := range cmds {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			refused[run] = fmt.Errorf("read the log of run %s: %w", run, err)
		}
	}
	return refused, nil
}
