package rdb

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// This file is the read side of the boundary for the queues: finding where
// a task's dispatch is (a delayed set or a queue stream), queue statistics
// and pools, and the dead letters. Nothing here writes.

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
// run's partition's delayed set or queue streams, undelivered or pending
// for a consumer: a stream also holds acked entries until a fetch trims
// them (trimLua), which do not count.
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
	ix := NewQueueIndex(run)
	for _, w := range want {
		live, err := d.Queued(ctx, ix, d.K.QueueFor(run, w.Pool, w.Priority), run, w.Task, w.Attempt)
		if err != nil {
			return nil, err
		}
		if live {
			found[w.Task] = true
		}
	}
	return found, nil
}

// QueueIndex is what reads of queue streams found live in them: the task
// attempts with a message undelivered or pending for a consumer (a stream
// also holds acked entries until a fetch trims them, which do not count,
// and lists a pending entry deleted from it, which does not either). It
// reads each stream once, on the first question about it: a repair of
// many runs keeps one per page of runs, so that each queue is read once a
// page, not once per run. Not safe for concurrent use.
type QueueIndex struct {
	run     string                     // "" every run's messages
	streams map[string]map[string]bool // stream → run, task, attempt
	// byID is the most delivered messages of a stream looked up in its
	// pending list one by one (a pipeline), rather than reading it whole.
	byID int
}

// NewQueueIndex returns an empty index that keeps run's messages (""
// every run's).
func NewQueueIndex(run string) *QueueIndex {
	return &QueueIndex{run: run, streams: map[string]map[string]bool{}, byID: 256}
}

func queuedKey(run, task string, attempt int) string {
	return run + "\x00" + task + "\x00" + strconv.Itoa(attempt)
}

// Queued reports whether stream held a live message of run's task at
// attempt when ix read it (see QueueIndex).
func (d DB) Queued(ctx context.Context, ix *QueueIndex, stream, run, task string, attempt int) (bool, error) {
	live, ok := ix.streams[stream]
	if !ok {
		var err error
		if live, err = d.liveMessages(ctx, stream, ix.run, ix.byID); err != nil {
			return false, err
		}
		ix.streams[stream] = live
	}
	return live[queuedKey(run, task, attempt)], nil
}

// queuePage is the page of entries liveMessages reads at a time.
const queuePage = 1000

// liveMessages reads stream's live messages (of run; "" every run's) as
// queuedKeys: three steps, each paged. The group's last delivered id is
// read first: a message delivered meanwhile is after it, and counted as
// undelivered (it is pending now). A message delivered before it counts
// while it is pending, which is read last: one acked meanwhile was handled
// (its task moved on, or was handed back by a script that queued a fresh
// copy in the same step). The pending list is read id by id for up to
// byID delivered messages, whole (paged) for more.
func (d DB) liveMessages(ctx context.Context, stream, run string, byID int) (map[string]bool, error) {
	delivered, err := d.lastDelivered(ctx, stream)
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	older := map[string]string{} // delivered: live only while pending
	for start := "-"; ; {
		msgs, err := d.C.XRangeN(ctx, stream, start, "+", queuePage).Result()
		if err != nil {
			return nil, fmt.Errorf("read queue %s: %w", stream, err)
		}
		for _, m := range msgs {
			r, _ := m.Values[MsgRun].(string)
			if run != "" && r != run {
				continue
			}
			t, _ := m.Values[MsgTask].(string)
			a, _ := m.Values[MsgAttempt].(string)
			n, _ := strconv.Atoi(a)
			if delivered != "" && !idAfter(m.ID, delivered) {
				older[m.ID] = queuedKey(r, t, n)
				continue
			}
			live[queuedKey(r, t, n)] = true
		}
		if len(msgs) < queuePage {
			break
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
	if len(older) <= byID {
		if err := d.pendingByID(ctx, stream, older, live); err != nil {
			return nil, err
		}
		return live, nil
	}
	for start := "-"; ; {
		p, err := d.C.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: GroupWorkers, Start: start, End: "+", Count: queuePage}).Result()
		if IsNoGroup(err) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read pending messages of queue %s: %w", stream, err)
		}
		for _, e := range p {
			if k, ok := older[e.ID]; ok {
				live[k] = true
			}
		}
		if len(p) < queuePage {
			break
		}
		start = "(" + p[len(p)-1].ID
	}
	return live, nil
}

// pendingByID marks in live the messages of older (id → queuedKey) that
// are pending on stream.
func (d DB) pendingByID(ctx context.Context, stream string, older map[string]string, live map[string]bool) error {
	if len(older) == 0 {
		return nil
	}
	pipe := d.C.Pipeline()
	cmds := map[string]*redis.XPendingExtCmd{}
	for id := range older {
		cmds[id] = pipe.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: GroupWorkers, Start: id, End: id, Count: 1})
	}
	if _, err := pipe.Exec(ctx); err != nil && !IsNoGroup(err) {
		return fmt.Errorf("read pending messages of queue %s: %w", stream, err)
	}
	for id, c := range cmds {
		if p, _ := c.Result(); len(p) == 1 {
			live[older[id]] = true
		}
	}
	return nil
}

// lastDelivered returns the last id the workers' group delivered of
// stream ("" with no group: nothing was delivered).
func (d DB) lastDelivered(ctx context.Context, stream string) (string, error) {
	groups, err := d.C.XInfoGroups(ctx, stream).Result()
	if err != nil {
		if strings.Contains(err.Error(), "no such key") {
			return "", nil
		}
		return "", fmt.Errorf("read queue %s: %w", stream, err)
	}
	for _, g := range groups {
		if g.Name == GroupWorkers {
			return g.LastDeliveredID, nil
		}
	}
	return "", nil
}

// idAfter reports whether stream id a ("ms-seq") comes after b.
func idAfter(a, b string) bool {
	ams, aseq := splitID(a)
	bms, bseq := splitID(b)
	return ams > bms || (ams == bms && aseq > bseq)
}

func splitID(id string) (ms, seq uint64) {
	m, s, _ := strings.Cut(id, "-")
	ms, _ = strconv.ParseUint(m, 10, 64)
	seq, _ = strconv.ParseUint(s, 10, 64)
	return ms, seq
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
	// Length is the messages not acked yet: pending + lag when Redis
	// knows the lag, else the stream's length, which counts acked entries
	// not trimmed yet too (see trimLua).
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
	// Length is what is neither acked nor trimmed yet; below, the
	// messages not yet acked (pending + lag) when Redis knows the lag: a
	// stream keeps up to about a node of acked entries until a fetch
	// trims them.
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
	if q.Lag >= 0 {
		q.Length = min(q.Length, q.Pending+q.Lag)
	}
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

// QueuePools returns the pools that have a queue stream: one SCAN of the
// keyspace (of every master of a cluster) for the queue streams of every
// partition and band, each key then checked by ParseQueue. A SCAN walks
// the whole keyspace whatever its MATCH, so one walk, not one per
// partition and band (it was 10 per partition: seconds on a Redis of a
// few hundred thousand keys, past a metrics scrape's read budget).
func (d DB) QueuePools(ctx context.Context) (map[string]bool, error) {
	set := map[string]bool{}
	err := d.scanStreams(ctx, d.K.QueuesPattern(), func(key string) {
		if _, pool, _, ok := d.K.ParseQueue(key); ok {
			set[pool] = true
		}
	})
	if err != nil {
		return nil, err
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

// UnmarkedBands returns the bands above 0 of pool in partition part that
// hold messages not yet delivered while the pool's QueueHigh mark is
// unset, read in one MULTI: a fetch would not read them. None whenever
// every writer of such a message sets the mark in the step that writes it
// (enqueueLua); chaos samples it under its faults. A band whose lag Redis
// cannot compute is not reported.
func (d DB) UnmarkedBands(ctx context.Context, part int, pool string) ([]int, error) {
	var mark *redis.IntCmd
	infos := make([]*redis.XInfoGroupsCmd, MaxPriority+1)
	_, err := d.C.TxPipelined(ctx, func(p redis.Pipeliner) error {
		mark = p.Exists(ctx, d.K.QueueHigh(part, pool))
		for b := 1; b <= MaxPriority; b++ {
			infos[b] = p.XInfoGroups(ctx, d.K.Queue(part, pool, b))
		}
		return nil
	})
	if err != nil && !strings.Contains(err.Error(), "no such key") {
		return nil, fmt.Errorf("read the bands of pool %s in partition %d: %w", pool, part, err)
	}
	if mark.Val() == 1 {
		return nil, nil
	}
	var out []int
	for b := 1; b <= MaxPriority; b++ {
		groups, err := infos[b].Result()
		if err != nil {
			continue // no stream on this band
		}
		for _, g := range groups {
			if g.Name == GroupWorkers && g.Lag > 0 {
				out = append(out, b)
			}
		}
	}
	return out, nil
}
