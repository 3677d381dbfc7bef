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

// This file is the read side of the boundary: listing runs, reading a
// run's log and live projection, following a log, finding where a task's
// dispatch is, and the registry and queue statistics. Nothing here writes.

// RunRow is one run of the run index with the live fields of its state
// hash. Err is set (and the fields empty) when the state hash cannot be
// read, e.g. a key of the wrong type: the other rows are still good.
type RunRow struct {
	ID          string
	SubmittedMS int64
	Status      string
	Workflow    string
	Quarantine  string
	Err         error
}

// RunPage reads up to n runs of the run index, newest first, from rank
// start, with their @status, @workflow and @quarantine. A run whose state
// cannot be read gets RunRow.Err; an error is returned only when the
// index itself or the connection fails.
func (d DB) RunPage(ctx context.Context, start, n int64) ([]RunRow, error) {
	zs, err := d.C.ZRevRangeWithScores(ctx, d.K.Runs(), start, start+n-1).Result()
	if err != nil {
		return nil, fmt.Errorf("read run index: %w", err)
	}
	out := make([]RunRow, len(zs))
	if len(zs) == 0 {
		return out, nil
	}
	pipe := d.C.Pipeline()
	cmds := make([]*redis.SliceCmd, len(zs))
	for i, z := range zs {
		id, _ := z.Member.(string)
		out[i] = RunRow{ID: id, SubmittedMS: int64(z.Score)}
		cmds[i] = pipe.HMGet(ctx, d.K.RunState(id), FieldRunStatus, FieldRunWorkflow, FieldRunQuarantine)
	}
	_, _ = pipe.Exec(ctx) // each command's error is read below
	for i, cmd := range cmds {
		v, err := cmd.Result()
		if err != nil {
			if !isReplyError(err) {
				return nil, fmt.Errorf("read run states: %w", err)
			}
			out[i].Err = fmt.Errorf("read state of run %s: %w", out[i].ID, err)
			continue
		}
		if len(v) == 3 {
			out[i].Status, _ = v[0].(string)
			out[i].Workflow, _ = v[1].(string)
			out[i].Quarantine, _ = v[2].(string)
		}
	}
	return out, nil
}

// isReplyError reports whether err is an error reply of Redis to one
// command (WRONGTYPE, NOPERM, ...), as opposed to a connection failure.
func isReplyError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, redis.Nil)
}

// RunIDs lists the runs of the run index, oldest first.
func (d DB) RunIDs(ctx context.Context) ([]string, error) {
	ids, err := d.C.ZRange(ctx, d.K.Runs(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("read run index: %w", err)
	}
	return ids, nil
}

// RunStatus returns run's @status ("" when it has none).
func (d DB) RunStatus(ctx context.Context, run string) (string, error) {
	st, err := d.C.HGet(ctx, d.K.RunState(run), FieldRunStatus).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	return st, err
}

// LogExists reports whether run has a log.
func (d DB) LogExists(ctx context.Context, run string) (bool, error) {
	n, err := d.C.Exists(ctx, d.K.RunLog(run)).Result()
	return n > 0, err
}

// Live is a run's live projection read in one transaction: its state,
// results and dag hashes and the id of its log's last entry ("" for no
// log). Added, Length and MaxDeleted are the log's XINFO STREAM counters
// (entries ever added, entries now, last deleted id), read after.
type Live struct {
	State, Results, DAG map[string]string
	Last                string
	Added, Length       int64
	MaxDeleted          string
}

// ReadLive reads run's live projection (see Live).
func (d DB) ReadLive(ctx context.Context, run string) (Live, error) {
	var l Live
	var st, res, dag *redis.MapStringStringCmd
	var tail *redis.XMessageSliceCmd
	_, err := d.C.TxPipelined(ctx, func(p redis.Pipeliner) error {
		st = p.HGetAll(ctx, d.K.RunState(run))
		res = p.HGetAll(ctx, d.K.RunResults(run))
		dag = p.HGetAll(ctx, d.K.RunDAG(run))
		tail = p.XRevRangeN(ctx, d.K.RunLog(run), "+", "-", 1)
		return nil
	})
	if err != nil {
		return l, fmt.Errorf("read live state of run %s: %w", run, err)
	}
	l.State, l.Results, l.DAG = st.Val(), res.Val(), dag.Val()
	if msgs := tail.Val(); len(msgs) > 0 {
		l.Last = msgs[0].ID
		if info, err := d.C.XInfoStream(ctx, d.K.RunLog(run)).Result(); err == nil {
			l.Added, l.Length, l.MaxDeleted = info.EntriesAdded, info.Length, info.MaxDeletedEntryID
		}
	}
	return l, nil
}

// Tail calls fn with each batch of run's log entries after the entry id
// from ("" or "0-0": from the first), in order, at most count per batch,
// and blocks on the log (XREAD BLOCK, no polling) for new ones; a read
// that times out calls fn with an empty batch. block bounds one XREAD
// (clipped to ctx's deadline). Tail returns when fn returns stop or an
// error (returned), with ctx.Err() when ctx is done, or with the error of
// a read.
func (d DB) Tail(ctx context.Context, run, from string, count int, block time.Duration,
	fn func(batch []redis.XMessage) (stop bool, err error)) error {
	last := from
	if last == "" {
		last = "0-0"
	}
	for {
		b := block
		if dl, ok := ctx.Deadline(); ok {
			b = min(b, time.Until(dl))
		}
		if b <= 0 {
			return context.DeadlineExceeded
		}
		res, err := d.C.XRead(ctx, &redis.XReadArgs{Streams: []string{d.K.RunLog(run), last}, Count: int64(count), Block: b}).Result()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		var batch []redis.XMessage
		for _, s := range res {
			batch = append(batch, s.Messages...)
		}
		if len(batch) > 0 {
			last = batch[len(batch)-1].ID
		}
		if stop, err := fn(batch); stop || err != nil {
			return err
		}
	}
}

// Want is a task attempt whose dispatch should be somewhere: the run's
// partition's delayed set or its queue stream. Record is the task's
// record when the search started.
type Want struct {
	Task     string
	Attempt  int
	Pool     string
	Priority int
	Record   string
}

// Lost returns the entries of want whose dispatch is nowhere and whose
// record is still the one the search started from.
//
// The places are searched in the order a dispatch moves through them
// (delayed set → queue; a move is one script), so a dispatch that moves
// while the search runs is found in the place searched later. A
// queue message disappears only when its task is finished, after the
// task's record changed; the records of the tasks not found are read again
// to tell a lost task from one that moved on.
func (d DB) Lost(ctx context.Context, run string, want []Want) ([]Want, error) {
	if len(want) == 0 {
		return nil, nil
	}
	found, err := d.locate(ctx, run, want)
	if err != nil {
		return nil, err
	}
	var miss []Want
	for _, w := range want {
		if !found[w.Task] {
			miss = append(miss, w)
		}
	}
	if len(miss) == 0 {
		return nil, nil
	}
	fields := make([]string, len(miss))
	for i, w := range miss {
		fields[i] = w.Task
	}
	vals, err := d.C.HMGet(ctx, d.K.RunState(run), fields...).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read state of run %s: %w", run, err)
	}
	var lost []Want
	for i, w := range miss {
		if s, _ := vals[i].(string); s == w.Record {
			lost = append(lost, w)
		}
	}
	return lost, nil
}

// locate returns the tasks of want whose dispatch (that attempt) is in the
// run's partition's delayed set or queue streams (undelivered, or pending for a
// consumer: acked messages are deleted).
func (d DB) locate(ctx context.Context, run string, want []Want) (map[string]bool, error) {
	found := map[string]bool{}
	byKey := map[string]bool{}
	for _, w := range want {
		byKey[w.Task+"\x00"+strconv.Itoa(w.Attempt)] = true
	}
	match := func(task string, attempt int) {
		if byKey[task+"\x00"+strconv.Itoa(attempt)] {
			found[task] = true
		}
	}
	var cursor uint64
	for {
		keys, next, err := d.C.ZScan(ctx, d.K.DelayedFor(run), cursor, "*|"+globEscape(run)+"|*", 1000).Result()
		if err != nil {
			return nil, fmt.Errorf("scan delayed set: %w", err)
		}
		for i := 0; i < len(keys); i += 2 { // member, score pairs
			if x, err := ParseDispatch(keys[i]); err == nil && x.Run == run {
				match(x.Task, x.Attempt)
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	streams := map[string]bool{}
	for _, w := range want {
		streams[d.K.QueueFor(run, w.Pool, w.Priority)] = true
	}
	for stream := range streams {
		start := "-"
		for {
			msgs, err := d.C.XRangeN(ctx, stream, start, "+", 1000).Result()
			if err != nil {
				return nil, fmt.Errorf("read queue %s: %w", stream, err)
			}
			for _, m := range msgs {
				if r, _ := m.Values[MsgRun].(string); r == run {
					t, _ := m.Values[MsgTask].(string)
					a, _ := m.Values[MsgAttempt].(string)
					n, _ := strconv.Atoi(a)
					match(t, n)
				}
			}
			if len(msgs) < 1000 {
				break
			}
			start = "(" + msgs[len(msgs)-1].ID
		}
	}
	return found, nil
}

// globEscape escapes the glob metacharacters of Redis MATCH patterns.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// QueueStat is what Redis reports about one queue stream.
type QueueStat struct {
	Length int64
	// Lag is the group's lag (-1 when Redis cannot compute it); HasGroup
	// is false when no worker has read the stream yet.
	Lag       int64
	HasGroup  bool
	Pending   int64
	Consumers map[string]int64
	// Oldest is the oldest pending message, if any.
	Oldest *redis.XPendingExt
}

// QueueStat reads stream's statistics; ok is false when it does not exist.
func (d DB) QueueStat(ctx context.Context, stream string) (q QueueStat, ok bool, err error) {
	n, err := d.C.Exists(ctx, stream).Result()
	if err != nil || n == 0 {
		return q, false, err
	}
	wrap := func(err error) (QueueStat, bool, error) { return q, false, fmt.Errorf("queue %s: %w", stream, err) }
	if q.Length, err = d.C.XLen(ctx, stream).Result(); err != nil {
		return wrap(err)
	}
	groups, err := d.C.XInfoGroups(ctx, stream).Result()
	if err != nil {
		return wrap(err)
	}
	for _, g := range groups {
		if g.Name == GroupWorkers {
			q.HasGroup, q.Lag = true, g.Lag
		}
	}
	if !q.HasGroup {
		return q, true, nil
	}
	pend, err := d.C.XPending(ctx, stream, GroupWorkers).Result()
	if err != nil {
		return wrap(err)
	}
	q.Pending, q.Consumers = pend.Count, pend.Consumers
	if pend.Count > 0 {
		ext, err := d.C.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: GroupWorkers, Start: "-", End: "+", Count: 1}).Result()
		if err != nil {
			return wrap(err)
		}
		if len(ext) > 0 {
			q.Oldest = &ext[0]
		}
	}
	return q, true, nil
}

// QueuePools returns the pools that have a queue stream (SCAN over every
// master of a cluster for the keys the key builder gives for each band).
func (d DB) QueuePools(ctx context.Context) (map[string]bool, error) {
	set := map[string]bool{}
	for part := range d.K.Partitions() {
		for p := 0; p <= MaxPriority; p++ {
			// The builder's own key for pool "*" is the MATCH pattern; pool
			// names cannot hold glob characters (letters, digits, "_.:-").
			err := d.scanStreams(ctx, d.K.Queue(part, "*", p), func(key string) {
				if _, pool, _, ok := d.K.ParseQueue(key); ok {
					set[pool] = true
				}
			})
			if err != nil {
				return nil, err
			}
		}
	}
	return set, nil
}

// scanStreams calls fn for every stream key matching pattern, on every
// master of a cluster.
func (d DB) scanStreams(ctx context.Context, pattern string, fn func(string)) error {
	one := func(ctx context.Context, cl redis.Cmdable) error {
		var cursor uint64
		for {
			keys, next, err := cl.ScanType(ctx, cursor, pattern, 1000, "stream").Result()
			if err != nil {
				return fmt.Errorf("scan keys %s: %w", pattern, err)
			}
			for _, k := range keys {
				fn(k)
			}
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	if cc, ok := d.C.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return one(ctx, m) })
	}
	return one(ctx, d.C)
}

// DeadLetterRow is one entry of the dead-letter set.
type DeadLetterRow struct {
	Run, Task string
	AtMS      int64
	Details   string // JSON, "" when the details hash has none
}

// DeadLetters reads up to limit dead letters, oldest first.
func (d DB) DeadLetters(ctx context.Context, limit int64) ([]DeadLetterRow, error) {
	zs, err := d.C.ZRangeWithScores(ctx, d.K.DeadLetter(), 0, limit-1).Result()
	if err != nil {
		return nil, err
	}
	out := make([]DeadLetterRow, 0, len(zs))
	members := make([]string, 0, len(zs))
	for _, z := range zs {
		m, _ := z.Member.(string)
		run, task, _ := strings.Cut(m, "|")
		out = append(out, DeadLetterRow{Run: run, Task: task, AtMS: int64(z.Score)})
		members = append(members, m)
	}
	if len(members) > 0 {
		infos, err := d.C.HMGet(ctx, d.K.DeadLetterInfo(), members...).Result()
		if err != nil {
			return nil, err
		}
		for i, v := range infos {
			out[i].Details, _ = v.(string)
		}
	}
	return out, nil
}

// ReadLogAfter reads and decodes the entries of run's log after the entry
// id after ("", "0" or "0-0": from the first), page per round trip;
// limit > 0 stops after one page of at most limit entries (see ReadLog).
func (d DB) ReadLogAfter(ctx context.Context, run, after string, page, limit int) ([]events.Event, error) {
	start := "-"
	if after != "" && after != "0" && after != "0-0" {
		start = "(" + after
	}
	return d.ReadLog(ctx, run, start, "+", page, limit)
}
