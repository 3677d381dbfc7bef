package rdb

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/redis/go-redis/v9"
)

// The reads in this file are for the tools that watch a Redis from outside
// the engine: graflow bench (server facts, memory, the end of the runs it
// times, cleaning its namespace) and graflow chaos and its soak (memory,
// key and consumer counts, a run's log and state for the checker). Nothing
// here is on the engine's path, and none of it writes except
// DeleteNamespace.

// Ping checks that Redis answers (PING).
func (d DB) Ping(ctx context.Context) error { return d.C.Ping(ctx).Err() }

// ServerTime is Redis' clock now (TIME).
func (d DB) ServerTime(ctx context.Context) (time.Time, error) { return d.C.Time(ctx).Result() }

// Info returns the "key:value" lines of the INFO sections (INFO with one
// round trip for all of them), comments and blank lines left out.
func (d DB) Info(ctx context.Context, sections ...string) (map[string]string, error) {
	if cc, ok := d.C.(*redis.ClusterClient); ok {
		return infoCluster(ctx, cc, sections)
	}
	raw, err := d.C.Info(ctx, sections...).Result()
	if err != nil {
		return nil, fmt.Errorf("INFO %s: %w", strings.Join(sections, " "), err)
	}
	return ParseInfo(raw), nil
}

// ParseInfo reads the "key:value" lines of an INFO reply.
func ParseInfo(s string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = v
		}
	}
	return out
}

// MemoryUsed is the memory Redis has allocated, in bytes (used_memory of
// INFO memory).
func (d DB) MemoryUsed(ctx context.Context) (int64, error) {
	info, err := d.Info(ctx, "memory")
	if err != nil {
		return 0, err
	}
	v, ok := info["used_memory"]
	if !ok {
		return 0, errors.New("no used_memory in INFO memory")
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("INFO memory: used_memory %q: %w", v, err)
	}
	return n, nil
}

// Persistence is how a Redis keeps its data, as CONFIG GET reports it.
type Persistence struct {
	AppendOnly  string // appendonly: "yes" or "no"
	AppendFsync string // appendfsync: always, everysec or no
	Save        string // save: the RDB snapshot schedule ("" for none)
}

// Persistence reads the AOF and RDB settings (three CONFIG GETs). A Redis
// that refuses CONFIG (a managed service, an ACL) returns the error.
func (d DB) Persistence(ctx context.Context) (Persistence, error) {
	var p Persistence
	for _, f := range []struct {
		name string
		to   *string
	}{{"appendonly", &p.AppendOnly}, {"appendfsync", &p.AppendFsync}, {"save", &p.Save}} {
		m, err := d.C.ConfigGet(ctx, f.name).Result()
		if err != nil {
			return Persistence{}, fmt.Errorf("CONFIG GET %s: %w", f.name, err)
		}
		*f.to = m[f.name]
	}
	return p, nil
}

// namespacePattern matches every key of the namespace. ValidNamespace
// allows no glob metacharacters, so the namespace needs no escaping.
func (d DB) namespacePattern() string { return d.K.Namespace() + ":*" }

// DeleteNamespace deletes every key of the namespace (SCAN COUNT 2000 and
// a DEL of each batch: DEL, not UNLINK, so the memory is freed when it
// returns). Keys written meanwhile may survive.
func (d DB) DeleteNamespace(ctx context.Context) error {
	if cc, ok := d.C.(*redis.ClusterClient); ok {
		return d.deleteNamespaceCluster(ctx, cc)
	}
	var cursor uint64
	for {
		keys, next, err := d.C.Scan(ctx, cursor, d.namespacePattern(), 2000).Result()
		if err != nil {
			return fmt.Errorf("delete namespace %s: %w", d.K.Namespace(), err)
		}
		if len(keys) > 0 {
			if err := d.C.Del(ctx, keys...).Err(); err != nil {
				return fmt.Errorf("delete namespace %s: %w", d.K.Namespace(), err)
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// NamespaceKeys counts the keys of the namespace (SCAN COUNT 1000: O(keys
// of the whole database)).
func (d DB) NamespaceKeys(ctx context.Context) (int64, error) {
	var n int64
	iter := d.C.Scan(ctx, 0, d.namespacePattern(), 1000).Iterator()
	for iter.Next(ctx) {
		n++
	}
	return n, iter.Err()
}

// DatabaseKeys counts the keys of the whole database (DBSIZE), for a Redis
// that holds one namespace only.
func (d DB) DatabaseKeys(ctx context.Context) (int64, error) { return d.C.DBSize(ctx).Result() }

// LiveWorkers counts the workers in the registry (SCARD), expired ones
// not yet pruned included.
func (d DB) LiveWorkers(ctx context.Context) (int64, error) {
	return d.C.SCard(ctx, d.K.Workers()).Result()
}

// IndexedRuns counts the runs in the run index (ZCARD).
func (d DB) IndexedRuns(ctx context.Context) (int64, error) {
	return d.C.ZCard(ctx, d.K.Runs()).Result()
}

// FeedConsumers counts the consumers of the projector groups over every
// feed partition (XINFO GROUPS each); a feed not created yet counts 0.
func (d DB) FeedConsumers(ctx context.Context) (int64, error) {
	var total int64
	for p := range d.K.Partitions() {
		n, err := d.consumers(ctx, d.K.Feed(p))
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// QueueConsumers counts the consumers of the worker groups over the
// pool's priority bands (XINFO GROUPS each); a band not created yet counts 0.
func (d DB) QueueConsumers(ctx context.Context, pool string) (int64, error) {
	var total int64
	for _, q := range d.K.AllQueues(pool) {
		n, err := d.consumers(ctx, q)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// consumers sums the consumers of stream's groups.
func (d DB) consumers(ctx context.Context, stream string) (int64, error) {
	gs, err := d.C.XInfoGroups(ctx, stream).Result()
	if err != nil {
		if strings.Contains(err.Error(), "no such key") {
			return 0, nil
		}
		return 0, err
	}
	var n int64
	for _, g := range gs {
		n += g.Consumers
	}
	return n, nil
}

// RunState reads run's whole state hash (HGETALL): task records by task
// id and the run fields (FieldRunStatus, ...), among them the tasks'
// metadata and results (MetaField, ResultField). Empty if the run has
// none.
func (d DB) RunState(ctx context.Context, run string) (map[string]string, error) {
	return d.C.HGetAll(ctx, d.K.RunState(run)).Result()
}

// RunMemory is the memory of run's keys in bytes (MEMORY USAGE SAMPLES 0:
// every element counted); absent keys count 0.
func (d DB) RunMemory(ctx context.Context, run string) (int64, error) {
	var total int64
	for _, k := range d.K.RunKeys(run) {
		n, err := d.C.MemoryUsage(ctx, k, 0).Result()
		if errors.Is(err, redis.Nil) {
			continue // no such key (no channel written, say)
		}
		if err != nil {
			return 0, fmt.Errorf("MEMORY USAGE %s: %w", k, err)
		}
		total += n
	}
	return total, nil
}

// EntryHead is a run log entry as the watchers see it: its stream id and
// the envelope fields that tell what happened, undecoded otherwise.
type EntryHead struct {
	Seq    string
	Type   events.Type
	Task   string
	Writer string // the worker or projector that appended it
}

func entryHead(m redis.XMessage) EntryHead {
	e := EntryHead{Seq: m.ID}
	t, _ := m.Values[events.FieldType].(string)
	e.Type = events.Type(t)
	e.Task, _ = m.Values[events.FieldTask].(string)
	e.Writer, _ = m.Values[events.FieldWorker].(string)
	return e
}

// FollowLog returns up to count entries of run's log after the stream id
// after ("0" for the start), blocking up to block for the first (XREAD
// BLOCK). None and no error when the block ran out.
func (d DB) FollowLog(ctx context.Context, run, after string, count int64, block time.Duration) ([]EntryHead, error) {
	res, err := d.C.XRead(ctx, &redis.XReadArgs{Streams: []string{d.K.RunLog(run), after}, Count: count, Block: block}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []EntryHead
	for _, st := range res {
		for _, m := range st.Messages {
			out = append(out, entryHead(m))
		}
	}
	return out, nil
}

// TailLog returns up to count whole entries of run's log after the stream
// id after ("0" for the start), blocking up to block for the first (XREAD
// BLOCK). None and no error when the block ran out.
func (d DB) TailLog(ctx context.Context, run, after string, count int64, block time.Duration) ([]Message, error) {
	res, err := d.C.XRead(ctx, &redis.XReadArgs{Streams: []string{d.K.RunLog(run), after}, Count: count, Block: block}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil || len(res) == 0 {
		return nil, err
	}
	return res[0].Messages, nil
}

// LastEntries returns the newest log entry of each run, in runs' order, in
// one pipeline (XREVRANGE COUNT 1 each); a zero EntryHead for a run with no
// log. Callers keep runs to a few thousand per call.
func (d DB) LastEntries(ctx context.Context, runs []string) ([]EntryHead, error) {
	p := d.C.Pipeline()
	cmds := make([]*redis.XMessageSliceCmd, len(runs))
	for i, run := range runs {
		cmds[i] = p.XRevRangeN(ctx, d.K.RunLog(run), "+", "-", 1)
	}
	if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make([]EntryHead, len(runs))
	for i, c := range cmds {
		if msgs, _ := c.Result(); len(msgs) == 1 {
			out[i] = entryHead(msgs[0])
		}
	}
	return out, nil
}

// CountEvents sums the lengths of runs' logs in one pipeline (XLEN each).
// Callers keep runs to a few thousand per call.
func (d DB) CountEvents(ctx context.Context, runs []string) (int64, error) {
	p := d.C.Pipeline()
	cmds := make([]*redis.IntCmd, len(runs))
	for i, run := range runs {
		cmds[i] = p.XLen(ctx, d.K.RunLog(run))
	}
	if _, err := p.Exec(ctx); err != nil {
		return 0, err
	}
	var total int64
	for _, c := range cmds {
		total += c.Val()
	}
	return total, nil
}

// FeedPending counts the feed entries each projector has read and not
// acknowledged, summed over the feed partitions (XPENDING each): who is
// busiest. A partition that fails to answer is left out of the counts and
// its error joined into err, so the counts are usable either way.
func (d DB) FeedPending(ctx context.Context) (map[string]int64, error) {
	pending := map[string]int64{}
	var errs []error
	for n := range d.K.Partitions() {
		x, err := d.C.XPending(ctx, d.K.Feed(n), GroupProjectors).Result()
		if err != nil {
			if !strings.HasPrefix(err.Error(), "NOGROUP") { // a feed not created yet holds nothing
				errs = append(errs, err)
			}
			continue
		}
		for c, k := range x.Consumers {
			pending[c] += k
		}
	}
	return pending, errors.Join(errs...)
}
