package rdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/redis/go-redis/v9"
)

// DB runs Graflow's scripts and commands against one namespace. It is a
// small value; copy it freely. Safe for concurrent use.
type DB struct {
	C redis.UniversalClient
	K Keys
	// ClaimUpstreamBytes bounds the upstream results one claim call
	// returns (0: DefaultClaimUpstreamBytes).
	ClaimUpstreamBytes int
}

// New returns a DB for namespace ns ("" means DefaultNamespace).
func New(c redis.UniversalClient, ns string) DB { return DB{C: c, K: NewKeys(ns)} }

// NewP returns the DB of namespace ns with p partitions (p < 1: the
// default).
func NewP(c redis.UniversalClient, ns string, p int) DB { return DB{C: c, K: NewKeysP(ns, p)} }

// Record is a task's lease record (see statehash.Record).
type Record = statehash.Record

// ParseRecord decodes a stored record (see statehash.ParseRecord).
func ParseRecord(s string) (Record, error) { return statehash.ParseRecord(s) }

// TaskMeta is a task's stored metadata (see statehash.TaskMeta).
type TaskMeta = statehash.TaskMeta

// MetaOf builds the stored metadata of a task spec.
func MetaOf(s events.TaskSpec) TaskMeta { return statehash.MetaOf(s) }

// keyIndex numbers the extra KEYS of a script call (dispatch targets),
// each key once, as 1-based KEYS indexes.
type keyIndex map[string]int

// of appends key to keys the first time it is seen and returns its index.
func (x *keyIndex) of(keys *[]string, key string) int {
	if *x == nil {
		*x = keyIndex{}
	}
	i, ok := (*x)[key]
	if !ok {
		*keys = append(*keys, key)
		i = len(*keys)
		(*x)[key] = i
	}
	return i
}

// Dispatch is a task attempt to put on a queue (or in the delayed set
// until DueMS); its String is its delayed-set member.
type Dispatch struct {
	Pool     string
	Priority int
	DueMS    int64
	Run      string
	Task     string
	Attempt  int
	EventID  string // makes the entry unique
}

// String encodes the dispatch as a delayed-set member.
func (p Dispatch) String() string {
	return strings.Join([]string{p.Pool, strconv.Itoa(p.Priority), strconv.FormatInt(p.DueMS, 10), p.Run, p.Task, strconv.Itoa(p.Attempt), p.EventID}, "|")
}

// ParseDispatch decodes a delayed-set member.
func ParseDispatch(s string) (Dispatch, error) {
	f := strings.Split(s, "|")
	if len(f) != 7 {
		return Dispatch{}, fmt.Errorf("malformed dispatch %q", s)
	}
	prio, err1 := strconv.Atoi(f[1])
	due, err2 := strconv.ParseInt(f[2], 10, 64)
	att, err3 := strconv.Atoi(f[5])
	if err := errors.Join(err1, err2, err3); err != nil {
		return Dispatch{}, fmt.Errorf("malformed dispatch %q: %w", s, err)
	}
	return Dispatch{Pool: f[0], Priority: prio, DueMS: due, Run: f[3], Task: f[4], Attempt: att, EventID: f[6]}, nil
}

// Queue message fields.
const (
	MsgRun     = "r"
	MsgTask    = "k"
	MsgAttempt = "a"
)

// XAddDispatch queues a dispatch on its pool and band (pipelineable).
func (d DB) XAddDispatch(ctx context.Context, p redis.Cmdable, x Dispatch) *redis.StringCmd {
	return p.XAdd(ctx, &redis.XAddArgs{
		Stream: d.K.QueueFor(x.Run, x.Pool, x.Priority),
		Values: []any{MsgRun, x.Run, MsgTask, x.Task, MsgAttempt, strconv.Itoa(x.Attempt)},
	})
}

// PointFeed appends a pointer to run on its feed partition (pipelineable).
func (d DB) PointFeed(ctx context.Context, p redis.Cmdable, run string) *redis.StringCmd {
	return p.XAdd(ctx, &redis.XAddArgs{Stream: d.K.FeedFor(run), Values: []any{MsgRun, run}})
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

// ClaimsCmd queues one claim script call for several messages of ONE run
// (all args must share the run) on p, a pipeline or the client; read the
// outcomes with ParseClaims after Exec.
func (d DB) ClaimsCmd(ctx context.Context, p redis.Scripter, as []ClaimArgs) *redis.Cmd {
	run := as[0].Run
	argv := make([]any, 0, 2+8*len(as))
	budget := d.ClaimUpstreamBytes
	if budget <= 0 {
		budget = DefaultClaimUpstreamBytes
	}
	argv = append(argv, len(as), budget)
	for _, a := range as {
		mode := "claim"
		if a.Reclaim {
			mode = "reclaim"
		}
		argv = append(argv, a.Task, a.Attempt, a.Worker, a.EventID, a.TimeMS, mode, a.Deliveries, a.ReclaimEventID)
	}
	return claimScript.Run(ctx, p, []string{d.K.RunState(run), d.K.RunLog(run), d.K.RunDAG(run), d.K.RunResults(run)}, argv...)
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
		r := ClaimResult{Outcome: ClaimOutcome(str(res, 0)), Detail: str(res, 1)}
		if r.Outcome == ClaimOK {
			r.Epoch, _ = strconv.ParseInt(str(res, 1), 10, 64)
			if err := json.Unmarshal([]byte(str(res, 2)), &r.Meta); err != nil {
				return nil, fmt.Errorf("claim %s/%s: task metadata: %w", a.Run, a.Task, err)
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
		}
		out[i] = r
	}
	return out, nil
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
		vals, err := d.C.HMGet(ctx, d.K.RunResults(run), chunk...).Result()
		if err != nil {
			return nil, fmt.Errorf("read upstream results of run %s: %w", run, err)
		}
		for j, dep := range chunk {
			if v, _ := vals[j].(string); v != "" {
				out[dep] = json.RawMessage(v)
			} else {
				out[dep] = nil
			}
		}
	}
	return out, nil
}

// FinishArgs are the inputs of finishing an attempt.
type FinishArgs struct {
	Run, Task, Worker string
	Attempt           int
	Epoch             int64
	EventID           string
	RejectID          string
	TimeMS            int64
	Type              events.Type
	Body              []byte
	Status            events.TaskStatus // new task status
	Result            []byte            // stored for succeeded
	// Unfenced skips the epoch check: a test-only switch (chaos uses it
	// to prove that its checker catches duplicate accepts). Never set it.
	Unfenced bool
	// Stream and MessageID name the attempt's queue message, acked by the
	// finish itself if it is pending for Consumer. An empty MessageID
	// leaves the ack to the caller (after a dead letter, say).
	Stream, MessageID, Consumer string
}

// ErrStaleClaim is returned when a worker reports on a claim it no longer
// holds (its lease was reclaimed and the epoch moved on). Nothing it sent
// changed state; the rejection is recorded in the log as result_rejected.
var ErrStaleClaim = errors.New("stale claim: the task was reclaimed by another worker (epoch moved on)")

// StaleError details an ErrStaleClaim.
type StaleError struct {
	Status string
	Epoch  string
	Owner  string
}

func (e *StaleError) Error() string {
	return fmt.Sprintf("%v: task is %s at epoch %s owned by %q", ErrStaleClaim, e.Status, e.Epoch, e.Owner)
}

func (e *StaleError) Unwrap() error { return ErrStaleClaim }

// Finish runs the finish script for one outcome. newlyDirty says the
// run became dirty (the script pointed the feed at it).
func (d DB) Finish(ctx context.Context, a FinishArgs) (newlyDirty bool, err error) {
	outs, err := ParseFinishes([]FinishArgs{a}, d.FinishesCmd(ctx, d.C, []FinishArgs{a}))
	if err != nil {
		return false, err
	}
	return outs[0].Dirty, outs[0].Err
}

// FinishesCmd queues one finish script call for several outcomes of ONE
// run whose messages are on ONE stream (and of one consumer) on p; read it
// with ParseFinishes.
func (d DB) FinishesCmd(ctx context.Context, p redis.Scripter, as []FinishArgs) *redis.Cmd {
	run := as[0].Run
	stream := as[0].Stream
	if stream == "" {
		stream = d.K.Feed(d.K.Partition(run)) // any key of the slot: nothing is acked
	}
	argv := make([]any, 0, 4+13*len(as))
	argv = append(argv, len(as), GroupWorkers, as[0].Consumer, run)
	for _, a := range as {
		argv = append(argv, a.Task, a.Attempt, a.Epoch, a.Worker, a.EventID, a.TimeMS, string(a.Type), string(a.Body), string(a.Status), string(a.Result), a.RejectID, unfenced(a.Unfenced), a.MessageID)
	}
	return finishScript.Run(ctx, p, []string{d.K.RunState(run), d.K.RunLog(run), d.K.RunResults(run), stream, d.K.FeedFor(run)}, argv...)
}

// FinishOutcome is one outcome's reply: whether the run became dirty,
// whether its message was acked (1), not pending (0) or pending for
// another consumer (-1), and a *StaleError (wrapping ErrStaleClaim) when
// the caller no longer held the claim.
type FinishOutcome struct {
	Dirty bool
	Acked int
	Err   error
}

// ParseFinishes reads a FinishesCmd reply, an outcome per FinishArgs. err
// is for the call as a whole.
func ParseFinishes(as []FinishArgs, cmd *redis.Cmd) ([]FinishOutcome, error) {
	items, err := cmd.Slice()
	if err != nil {
		return nil, fmt.Errorf("finish %s (%d tasks): %w", as[0].Run, len(as), err)
	}
	if len(items) != len(as) {
		return nil, fmt.Errorf("finish %s: %d replies for %d tasks", as[0].Run, len(items), len(as))
	}
	out := make([]FinishOutcome, len(as))
	for i := range as {
		res, _ := items[i].([]any)
		if str(res, 0) == "stale" {
			out[i].Err = &StaleError{Status: str(res, 1), Epoch: str(res, 2), Owner: str(res, 3)}
			continue
		}
		out[i].Dirty = num(res, 2) == 1
		out[i].Acked = int(num(res, 3))
	}
	return out, nil
}

func unfenced(b bool) string {
	if b {
		return "unfenced"
	}
	return ""
}

// Release hands a claim back (see releaseScript).
func (d DB) Release(ctx context.Context, run, task, worker string, attempt int, epoch int64, eventID string, timeMS int64) error {
	res, err := releaseScript.Run(ctx, d.C, []string{d.K.RunState(run), d.K.RunLog(run)},
		task, attempt, epoch, worker, eventID, timeMS).Slice()
	if err != nil {
		return fmt.Errorf("release %s/%s: %w", run, task, err)
	}
	if str(res, 0) == "stale" {
		return &StaleError{Status: str(res, 1), Epoch: str(res, 2), Owner: str(res, 3)}
	}
	return nil
}

// ErrNotRequeueable is returned when requeue finds a task that has not
// failed for good, or a run that was cancelled.
var ErrNotRequeueable = errors.New("task cannot be requeued")

// Requeue gives a failed task another attempt (see requeueScript) and
// points the feed at its run and drops it from the dead-letter set.
func (d DB) Requeue(ctx context.Context, run, task, writer, eventID string, timeMS int64, body []byte) error {
	res, err := requeueScript.Run(ctx, d.C, []string{d.K.RunState(run), d.K.RunLog(run), d.K.RunDAG(run), d.K.RunResults(run),
		d.K.RunOutbox(run), d.K.RunChannel(run)},
		task, eventID, timeMS, writer, string(body)).Slice()
	if err != nil {
		return fmt.Errorf("requeue %s/%s: %w", run, task, err)
	}
	// Point the feed whatever the reply: a "refused" may be the retry of a
	// call whose reply was lost, and a pointer too many is harmless.
	if err := d.PointFeed(ctx, d.C, run).Err(); err != nil {
		return fmt.Errorf("requeue %s/%s: point the feed: %w", run, task, err)
	}
	if str(res, 0) == "refused" {
		return fmt.Errorf("%w: %s/%s is %s (run %s)", ErrNotRequeueable, run, task, str(res, 1), str(res, 2))
	}
	pipe := d.C.TxPipeline()
	pipe.ZRem(ctx, d.K.DeadLetter(), DeadLetterMember(run, task))
	pipe.HDel(ctx, d.K.DeadLetterInfo(), DeadLetterMember(run, task))
	_, err = pipe.Exec(ctx)
	return err
}

// DeadLetterMember is a task's member in the dead-letter set.
func DeadLetterMember(run, task string) string { return run + "|" + task }

// DeadLetterDetails is what the dead-letter set keeps about a task.
type DeadLetterDetails struct {
	Attempt int    `json:"attempt"`
	Error   string `json:"error"`
	Worker  string `json:"worker"`
	Handler string `json:"handler,omitempty"`
}

// DeadLetter records a task that failed for good (idempotent: NX).
func (d DB) DeadLetter(ctx context.Context, p redis.Pipeliner, run, task string, timeMS int64, info DeadLetterDetails) {
	m := DeadLetterMember(run, task)
	b, _ := json.Marshal(info)
	p.ZAddNX(ctx, d.K.DeadLetter(), redis.Z{Score: float64(timeMS), Member: m})
	p.HSetNX(ctx, d.K.DeadLetterInfo(), m, string(b))
}

// HeartbeatArgs are the inputs of a heartbeat.
type HeartbeatArgs struct {
	Run, Task, Worker string
	Attempt           int
	Epoch             int64
	EventID, RejectID string
	TimeMS            int64
	Body              []byte
	Append            bool
}

// Heartbeat runs the heartbeat script (pipelineable: pass a pipeliner and
// read the command's result after Exec with HeartbeatResult).
func (d DB) Heartbeat(ctx context.Context, p redis.Scripter, a HeartbeatArgs) *redis.Cmd {
	app := "0"
	if a.Append {
		app = "1"
	}
	return heartbeatScript.Run(ctx, p, []string{d.K.RunState(a.Run), d.K.RunLog(a.Run)},
		a.Task, a.Attempt, a.Epoch, a.Worker, a.EventID, a.TimeMS, string(a.Body), app, a.RejectID)
}

// HeartbeatResult interprets a heartbeat command's reply.
func HeartbeatResult(cmd *redis.Cmd) error {
	res, err := cmd.Slice()
	if err != nil {
		return err
	}
	if str(res, 0) == "stale" {
		return &StaleError{Status: str(res, 1), Epoch: str(res, 2), Owner: str(res, 3)}
	}
	return nil
}

// Fetch reads up to n new messages of a pool in partition part, highest
// band first, without blocking (see fetchScript).
func (d DB) Fetch(ctx context.Context, part int, pool, consumer string, n int) ([]redis.XStream, error) {
	res, err := fetchScript.Run(ctx, d.C, d.K.Queues(part, pool), GroupWorkers, consumer, n).Slice()
	if err != nil {
		return nil, err
	}
	out := make([]redis.XStream, 0, len(res))
	for _, r := range res {
		item, ok := r.([]any)
		if !ok || len(item) != 3 {
			continue
		}
		stream, _ := item[0].(string)
		id, _ := item[1].(string)
		fields, _ := item[2].([]any)
		values := make(map[string]any, len(fields)/2)
		for i := 0; i+1 < len(fields); i += 2 {
			k, _ := fields[i].(string)
			values[k] = fields[i+1]
		}
		msg := redis.XMessage{ID: id, Values: values}
		if n := len(out); n > 0 && out[n-1].Stream == stream {
			out[n-1].Messages = append(out[n-1].Messages, msg)
		} else {
			out = append(out, redis.XStream{Stream: stream, Messages: []redis.XMessage{msg}})
		}
	}
	return out, nil
}

// QueueAck acks and deletes queue messages of one stream that are pending
// for consumer (others are left alone). ids are full stream ids ("ms-seq",
// as XREADGROUP and XAUTOCLAIM return them), each once.
func (d DB) QueueAck(ctx context.Context, p redis.Scripter, stream, consumer string, ids ...string) *redis.Cmd {
	argv := make([]any, 0, 2+len(ids))
	argv = append(argv, GroupWorkers, consumer)
	for _, id := range ids {
		argv = append(argv, id)
	}
	return queueAckScript.Run(ctx, p, []string{stream}, argv...)
}

// QueueMove gives a pending message back to the pool: a fresh copy on its
// band and the old one acked, atomically (see queueMoveScript).
func (d DB) QueueMove(ctx context.Context, p redis.Scripter, stream, consumer, id string, x Dispatch) *redis.Cmd {
	return queueMoveScript.Run(ctx, p, []string{stream, d.K.QueueFor(x.Run, x.Pool, x.Priority)},
		GroupWorkers, consumer, id, x.Run, x.Task, strconv.Itoa(x.Attempt))
}

// GCRun deletes a finished, fully projected run's keys in one step. ok is
// false (and nothing is deleted) if the run is not collectable.
func (d DB) GCRun(ctx context.Context, run string) (ok bool, keys, events int64, err error) {
	ks := []string{d.K.RunState(run), d.K.RunLog(run), d.K.RunDAG(run), d.K.RunResults(run), d.K.RunOutbox(run), d.K.RunChannel(run)}
	res, err := gcScript.Run(ctx, d.C, ks).Slice()
	if err != nil {
		return false, 0, 0, fmt.Errorf("gc run %s: %w", run, err)
	}
	if num(res, 0) < 0 {
		return false, 0, 0, nil
	}
	return true, num(res, 0), num(res, 1), nil
}

// QueueTouch resets the idle time of a message pending for consumer.
func (d DB) QueueTouch(ctx context.Context, p redis.Scripter, stream, consumer, id string) *redis.Cmd {
	return queueTouchScript.Run(ctx, p, []string{stream}, GroupWorkers, consumer, id)
}

// EnsureGroup creates a consumer group reading from the start, and the
// stream if needed. An existing group is fine.
func (d DB) EnsureGroup(ctx context.Context, stream, group string) error {
	err := d.C.XGroupCreateMkStream(ctx, stream, group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create group %s on %s: %w", group, stream, err)
	}
	return nil
}

// LoadScripts loads every script so the first calls need no EVAL fallback.
// Script.Run falls back to EVAL on NOSCRIPT (after a Redis restart) anyway.
func (d DB) LoadScripts(ctx context.Context) error {
	for name, s := range Scripts() {
		if err := s.Load(ctx, d.C).Err(); err != nil {
			return fmt.Errorf("load script %s: %w", name, err)
		}
	}
	return nil
}

// Pipelined runs build on a pipeline and executes it; if a script in it
// was missing from Redis' script cache (NOSCRIPT: Redis restarted, or a
// fresh server), it loads every script and runs build and Exec once more.
// build must (re)bind the commands it queues. Every script is safe to run
// twice, so the repeat is harmless.
func (d DB) Pipelined(ctx context.Context, build func(p redis.Pipeliner) error) error {
	for try := 0; ; try++ {
		pipe := d.C.Pipeline()
		if err := build(pipe); err != nil {
			return err
		}
		cmds, err := pipe.Exec(ctx)
		noscript := false
		for _, c := range cmds {
			noscript = noscript || IsNoScript(c.Err())
		}
		if !noscript || try > 0 {
			return err
		}
		if err := d.LoadScripts(ctx); err != nil {
			return err
		}
	}
}

// IsNoScript reports a NOSCRIPT error: the script cache is empty (Redis
// restarted). Pipelined scripts do not fall back to EVAL; reload and retry.
func IsNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

func str(res []any, i int) string {
	if i >= len(res) || res[i] == nil {
		return ""
	}
	switch v := res[i].(type) {
	case string:
		return v
	case int64:
		return strconv.FormatInt(v, 10)
	}
	return fmt.Sprint(res[i])
}

func num(res []any, i int) int64 {
	if i >= len(res) {
		return 0
	}
	switch v := res[i].(type) {
	case int64:
		return v
	case string:
		n, _ := strconv.ParseInt(v, 10, 64)
		return n
	}
	return 0
}

// DecodeLog decodes entries of run's log (stream order kept).
func DecodeLog(run string, msgs []redis.XMessage) ([]events.Event, error) {
	out := make([]events.Event, 0, len(msgs))
	for _, m := range msgs {
		e, err := events.Decode(run, m.ID, m.Values)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// BadEntry is a log entry that does not decode.
type BadEntry struct {
	Seq string
	Err error
}

// ReadLogTolerant reads and decodes run's whole log, page entries per round
// trip, and returns the entries that decode and, apart, every one that
// does not.
func (d DB) ReadLogTolerant(ctx context.Context, run string, page int) ([]events.Event, []BadEntry, error) {
	var out []events.Event
	var bad []BadEntry
	start := "-"
	for {
		msgs, err := d.C.XRangeN(ctx, d.K.RunLog(run), start, "+", int64(page)).Result()
		if err != nil {
			return nil, nil, fmt.Errorf("read log of run %s: %w", run, err)
		}
		for _, m := range msgs {
			e, err := events.Decode(run, m.ID, m.Values)
			if err != nil {
				bad = append(bad, BadEntry{Seq: m.ID, Err: err})
				continue
			}
			out = append(out, e)
		}
		if len(msgs) < page {
			return out, bad, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// ReadLog reads and decodes run's log entries from start to end (XRANGE
// bounds: "-", "+", an id, or "(" + id for an exclusive start), page entries
// per round trip; limit > 0 stops after one page of at most limit entries.
func (d DB) ReadLog(ctx context.Context, run, start, end string, page, limit int) ([]events.Event, error) {
	if limit > 0 {
		page = limit
	}
	var out []events.Event
	for {
		msgs, err := d.C.XRangeN(ctx, d.K.RunLog(run), start, end, int64(page)).Result()
		if err != nil {
			return nil, fmt.Errorf("read log of run %s: %w", run, err)
		}
		evs, err := DecodeLog(run, msgs)
		if err != nil {
			return nil, err
		}
		out = append(out, evs...)
		if limit > 0 || len(msgs) < page {
			return out, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}
