package rdb

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/graflow-go/graflow/internal/tracing"
	"github.com/redis/go-redis/v9"
)

// The DB, and what several flows share: a dispatch and its queue message
// fields, the feed pointer, consumer groups, script loading and pipelines,
// and the readers of script replies.

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
	// Trace is the W3C traceparent the message carries (MsgTrace), ""
	// for none: the span that decided the dispatch.
	Trace string
}

// String encodes the dispatch as a delayed-set member. A traceparent, when
// set, rides in the last field after the event id ("<id>@<traceparent>"):
// a member keeps seven fields, so a binary that predates tracing still
// parses it (and moves it untraced) instead of dropping it as malformed.
func (p Dispatch) String() string {
	id := p.EventID
	if p.Trace != "" {
		id += "@" + p.Trace
	}
	return strings.Join([]string{p.Pool, strconv.Itoa(p.Priority), strconv.FormatInt(p.DueMS, 10), p.Run, p.Task, strconv.Itoa(p.Attempt), id}, "|")
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
	x := Dispatch{Pool: f[0], Priority: prio, DueMS: due, Run: f[3], Task: f[4], Attempt: att, EventID: f[6]}
	if id, tp, ok := strings.Cut(f[6], "@"); ok {
		if !tracing.Valid(tp) {
			return Dispatch{}, fmt.Errorf("malformed dispatch %q: bad traceparent", s)
		}
		x.EventID, x.Trace = id, tp
	}
	return x, nil
}

// Queue message fields. MsgTrace, the W3C traceparent of the span that
// dispatched the task, is present only when that span was traced.
const (
	MsgRun     = "r"
	MsgTask    = "k"
	MsgAttempt = "a"
	MsgTrace   = "t"
)

// PointFeed appends a pointer to run on its feed partition (pipelineable).
func (d DB) PointFeed(ctx context.Context, p redis.Cmdable, run string) *redis.StringCmd {
	return p.XAdd(ctx, &redis.XAddArgs{Stream: d.K.FeedFor(run), Values: []any{MsgRun, run}})
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
func (d DB) LoadScripts(ctx context.Context) error { return d.load(ctx, Scripts()) }

// load loads scripts into Redis' script cache.
func (d DB) load(ctx context.Context, scripts map[string]*redis.Script) error {
	for name, s := range scripts {
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

// Message is one stream entry as the boundary hands it out (a queue
// message, a feed entry, a log entry): its id and its fields. Stream is
// the entries read from one stream. They are go-redis' own types, named
// here so that the packages above read entries without naming the Redis
// client.
type (
	Message = redis.XMessage
	Stream  = redis.XStream
)
