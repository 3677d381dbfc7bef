package rdb

import (
	"context"
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

// PointFeed appends a pointer to run on its feed partition (pipelineable).
func (d DB) PointFeed(ctx context.Context, p redis.Cmdable, run string) *redis.StringCmd {
	return p.XAdd(ctx, &redis.XAddArgs{Stream: d.K.FeedFor(run), Values: []any{MsgRun, run}})
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
