package replay

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
)

// RunSummary is one run of the run index.
type RunSummary struct {
	ID          string    `json:"id"`
	Workflow    string    `json:"workflow"`
	Status      string    `json:"status"`
	SubmittedAt time.Time `json:"submitted_at"`
	// Quarantined holds why the projector set the run aside, if it did.
	Quarantined string `json:"quarantined,omitempty"`
}

// RunsOptions filter Runs.
type RunsOptions struct {
	// Status keeps runs in this status ("" keeps all).
	Status string
	// Limit bounds the runs returned (0 means 100; < 0 means no limit).
	Limit int
}

// Runs lists the runs of the run index, newest first, with their live
// @status and @workflow.
func (c *Client) Runs(ctx context.Context, opts RunsOptions) ([]RunSummary, error) {
	limit := opts.Limit
	if limit == 0 {
		limit = 100
	}
	out := []RunSummary{}
	const page = 500
	for start := int64(0); ; start += page {
		zs, err := c.cfg.Redis.ZRevRangeWithScores(ctx, c.db.K.Runs(), start, start+page-1).Result()
		if err != nil {
			return nil, fmt.Errorf("read run index: %w", err)
		}
		pipe := c.cfg.Redis.Pipeline()
		cmds := make([]*redis.SliceCmd, len(zs))
		for i, z := range zs {
			id, _ := z.Member.(string)
			cmds[i] = pipe.HMGet(ctx, c.db.K.RunState(id), rdb.FieldRunStatus, rdb.FieldRunWorkflow, rdb.FieldRunQuarantine)
		}
		if len(zs) > 0 {
			if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
				return nil, fmt.Errorf("read run states: %w", err)
			}
		}
		for i, z := range zs {
			v := cmds[i].Val()
			s := RunSummary{SubmittedAt: msTime(int64(z.Score))}
			s.ID, _ = z.Member.(string)
			if len(v) == 3 {
				s.Status, _ = v[0].(string)
				s.Workflow, _ = v[1].(string)
				s.Quarantined, _ = v[2].(string)
			}
			if s.Status == "" {
				s.Status = "unknown"
			}
			if opts.Status != "" && s.Status != opts.Status {
				continue
			}
			out = append(out, s)
			if limit > 0 && len(out) >= limit {
				return out, nil
			}
		}
		if len(zs) < page {
			return out, nil
		}
	}
}

// WorkerInfo is one worker of the registry.
type WorkerInfo struct {
	ID          string    `json:"id"`
	Host        string    `json:"host,omitempty"`
	PID         int       `json:"pid,omitempty"`
	Pools       []string  `json:"pools"`
	Concurrency int       `json:"concurrency"`
	Handlers    []string  `json:"handlers,omitempty"`
	Running     int64     `json:"running"`
	Processed   int64     `json:"processed"`
	Failed      int64     `json:"failed"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	// UptimeMS is from the worker's start to now.
	UptimeMS int64 `json:"uptime_ms"`
	// LastHeartbeat and HeartbeatAgeMS: when the worker last refreshed its
	// registry entry, and how long ago.
	LastHeartbeat  time.Time `json:"last_heartbeat,omitzero"`
	HeartbeatAgeMS int64     `json:"heartbeat_age_ms"`
	// Expired: the worker is in the set but its hash expired (it died
	// without deregistering).
	Expired bool `json:"expired,omitempty"`
}

// Workers lists the workers of the registry, sorted by id.
func (c *Client) Workers(ctx context.Context) ([]WorkerInfo, error) {
	ids, err := c.cfg.Redis.SMembers(ctx, c.db.K.Workers()).Result()
	if err != nil {
		return nil, fmt.Errorf("read worker registry: %w", err)
	}
	sort.Strings(ids)
	pipe := c.cfg.Redis.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGetAll(ctx, c.db.K.Worker(id))
	}
	if len(ids) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("read workers: %w", err)
		}
	}
	now := c.cfg.Now()
	out := make([]WorkerInfo, 0, len(ids))
	for i, id := range ids {
		h := cmds[i].Val()
		w := WorkerInfo{ID: id, Pools: []string{}}
		if len(h) == 0 {
			w.Expired = true
			out = append(out, w)
			continue
		}
		num := func(k string) int64 { n, _ := strconv.ParseInt(h[k], 10, 64); return n }
		w.Host, w.PID, w.Concurrency = h["host"], int(num("pid")), int(num("concurrency"))
		w.Pools, w.Handlers = splitComma(h["pools"]), splitComma(h["handlers"])
		w.Running, w.Processed, w.Failed = num("tasks_running"), num("tasks_processed"), num("tasks_failed")
		if ms := num("started_at"); ms > 0 {
			w.StartedAt = msTime(ms)
			w.UptimeMS = now.Sub(w.StartedAt).Milliseconds()
		}
		if ms := num("last_heartbeat"); ms > 0 {
			w.LastHeartbeat = msTime(ms)
			w.HeartbeatAgeMS = now.Sub(w.LastHeartbeat).Milliseconds()
		}
		out = append(out, w)
	}
	return out, nil
}

func splitComma(s string) []string {
	out := []string{}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// QueueInfo describes one queue stream (a pool's priority band).
type QueueInfo struct {
	Pool     string `json:"pool"`
	Priority int    `json:"priority"`
	Stream   string `json:"stream"`
	// Length is the number of messages in the stream: pending ones plus
	// those not yet delivered (acked messages are deleted).
	Length int64 `json:"length"`
	// Pending is the group's PEL size (delivered, not acked), by consumer.
	Pending   int64            `json:"pending"`
	Consumers map[string]int64 `json:"consumers,omitempty"`
	// Lag is the number of messages not yet delivered to the group. Redis
	// cannot always compute it after deletions; then it is Length -
	// Pending (exact here, since acked messages are deleted) and
	// LagEstimated is set.
	Lag          int64 `json:"lag"`
	LagEstimated bool  `json:"lag_estimated,omitempty"`
	// OldestPendingID is the oldest pending message; its age is since it
	// was queued, its idle time since it was last delivered or touched by
	// a heartbeat.
	OldestPendingID     string `json:"oldest_pending_id,omitempty"`
	OldestPendingAgeMS  int64  `json:"oldest_pending_age_ms,omitempty"`
	OldestPendingIdleMS int64  `json:"oldest_pending_idle_ms,omitempty"`
	OldestDeliveries    int64  `json:"oldest_pending_deliveries,omitempty"`
}

// QueuesOptions tune Queues.
type QueuesOptions struct {
	// Pools to show; default: every pool with a queue stream in the
	// namespace (found by SCAN) or served by a registered worker.
	Pools []string
	// Empty includes bands with no message and no lag.
	Empty bool
}

// Queues describes the queue streams of the namespace, by pool then band
// (highest priority first).
func (c *Client) Queues(ctx context.Context, opts QueuesOptions) ([]QueueInfo, error) {
	pools := opts.Pools
	if len(pools) == 0 {
		var err error
		if pools, err = c.pools(ctx); err != nil {
			return nil, err
		}
	}
	now := c.cfg.Now()
	out := []QueueInfo{}
	for _, pool := range pools {
		for _, stream := range c.db.K.AllQueues(pool) {
			q, ok, err := c.queue(ctx, stream, now)
			if err != nil {
				return nil, err
			}
			if !ok || (!opts.Empty && q.Length == 0 && q.Pending == 0 && q.Lag == 0) {
				continue
			}
			_, _, prio, _ := c.db.K.ParseQueue(stream)
			q.Pool, q.Priority = pool, prio
			out = append(out, q)
		}
	}
	return out, nil
}

func (c *Client) queue(ctx context.Context, stream string, now time.Time) (QueueInfo, bool, error) {
	q := QueueInfo{Stream: stream}
	n, err := c.cfg.Redis.Exists(ctx, stream).Result()
	if err != nil || n == 0 {
		return q, false, err
	}
	if q.Length, err = c.cfg.Redis.XLen(ctx, stream).Result(); err != nil {
		return q, false, fmt.Errorf("queue %s: %w", stream, err)
	}
	groups, err := c.cfg.Redis.XInfoGroups(ctx, stream).Result()
	if err != nil {
		return q, false, fmt.Errorf("queue %s: %w", stream, err)
	}
	hasGroup := false
	for _, g := range groups {
		if g.Name == rdb.GroupWorkers {
			hasGroup = true
			q.Lag = g.Lag
		}
	}
	if !hasGroup {
		q.Lag = q.Length // nobody has read it yet
		return q, true, nil
	}
	pend, err := c.cfg.Redis.XPending(ctx, stream, rdb.GroupWorkers).Result()
	if err != nil {
		return q, false, fmt.Errorf("queue %s: %w", stream, err)
	}
	q.Pending, q.Consumers = pend.Count, pend.Consumers
	if q.Lag < 0 {
		q.Lag, q.LagEstimated = max(q.Length-q.Pending, 0), true
	}
	if pend.Count > 0 {
		ext, err := c.cfg.Redis.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 1}).Result()
		if err != nil {
			return q, false, fmt.Errorf("queue %s: %w", stream, err)
		}
		if len(ext) > 0 {
			q.OldestPendingID = ext[0].ID
			q.OldestPendingAgeMS = now.UnixMilli() - seqMS(ext[0].ID)
			q.OldestPendingIdleMS = ext[0].Idle.Milliseconds()
			q.OldestDeliveries = ext[0].RetryCount
		}
	}
	return q, true, nil
}

// pools finds the pools with a queue stream (SCAN over every master for
// the keys the key builder gives for each band) plus those registered
// workers serve, sorted.
func (c *Client) pools(ctx context.Context) ([]string, error) {
	set := map[string]bool{}
	for part := range c.db.K.Partitions() {
		for p := 0; p <= rdb.MaxPriority; p++ {
			// The builder's own key for pool "*" is the MATCH pattern; pool
			// names cannot hold glob characters (letters, digits, "_.:-").
			err := c.scan(ctx, c.db.K.Queue(part, "*", p), func(key string) {
				if _, pool, _, ok := c.db.K.ParseQueue(key); ok {
					set[pool] = true
				}
			})
			if err != nil {
				return nil, err
			}
		}
	}
	ws, err := c.Workers(ctx)
	if err != nil {
		return nil, err
	}
	for _, w := range ws {
		for _, p := range w.Pools {
			set[p] = true
		}
	}
	out := make([]string, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

// scan calls fn for every stream key matching pattern, on every master of
// a cluster.
func (c *Client) scan(ctx context.Context, pattern string, fn func(string)) error {
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
	if cc, ok := c.cfg.Redis.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return one(ctx, m) })
	}
	return one(ctx, c.cfg.Redis)
}

// Events returns up to limit events of run's log after the entry id from
// ("" or "0" for the start; limit <= 0 means all).
func (c *Client) Events(ctx context.Context, run, from string, limit int) ([]events.Event, error) {
	start := "-"
	if from != "" && from != "0" && from != "0-0" {
		start = "(" + from
	}
	if limit <= 0 {
		return c.readLog(ctx, run, start, "+")
	}
	return c.db.ReadLog(ctx, run, start, "+", limit, limit)
}

// FollowOptions tune Follow.
type FollowOptions struct {
	// From is the log entry id after which to start ("" = the first
	// event). Pass the Seq of the last event handled to resume.
	From string
	// UntilEnd returns after the run's terminal event (run_succeeded,
	// run_failed, run_cancelled).
	UntilEnd bool
	// Block bounds one XREAD BLOCK (default 5s); it only bounds how fast
	// Follow notices cancellation.
	Block time.Duration
}

// Follow calls fn for each event of run's log after opts.From, in order,
// then blocks on the log (XREAD BLOCK, no polling) for new ones until ctx
// is done (it returns nil then), fn returns an error (returned), or, with
// UntilEnd, the run ends.
func (c *Client) Follow(ctx context.Context, run string, opts FollowOptions, fn func(events.Event) error) error {
	last := opts.From
	if last == "" {
		last = "0-0"
	}
	block := opts.Block
	if block <= 0 {
		block = 5 * time.Second
	}
	for {
		res, err := c.cfg.Redis.XRead(ctx, &redis.XReadArgs{Streams: []string{c.db.K.RunLog(run), last}, Count: int64(c.cfg.ReadCount), Block: block}).Result()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("follow run %s: %w", run, err)
		}
		for _, s := range res {
			for _, m := range s.Messages {
				last = m.ID
				e, err := events.Decode(run, m.ID, m.Values)
				if err != nil {
					return err
				}
				if err := fn(e); err != nil {
					return err
				}
				switch e.Type {
				case events.RunSucceeded, events.RunFailed, events.RunCancelled, events.RunQuarantined:
					if opts.UntilEnd {
						return nil
					}
				}
			}
		}
	}
}
