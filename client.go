package graflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// ErrRunNotFound is returned for a run id with no log in the namespace.
var ErrRunNotFound = errors.New("run not found")

// Config configures a Client. A zero field means its default.
type Config struct {
	// Redis is required (a *redis.Client, *redis.ClusterClient, or a
	// failover client: anything go-redis's UniversalClient covers).
	Redis redis.UniversalClient
	// Namespace is the key prefix (default "graflow").
	Namespace string
	// MaxPayloadBytes bounds inputs and args (default 1 MiB).
	MaxPayloadBytes int
}

// Client submits runs and reads their state. Safe for concurrent use.
type Client struct {
	db    rdb.DB
	sched *scheduler.Scheduler
}

// NewClient returns a Client.
func NewClient(cfg Config) (*Client, error) {
	s, err := scheduler.New(scheduler.Config{Redis: cfg.Redis, Namespace: cfg.Namespace, MaxPayloadBytes: cfg.MaxPayloadBytes})
	if err != nil {
		return nil, err
	}
	return &Client{db: rdb.New(cfg.Redis, cfg.Namespace), sched: s}, nil
}

// SubmitOption tunes Submit.
type SubmitOption func(*scheduler.SubmitOptions)

// WithRunID makes the submission idempotent under a caller-chosen run id.
func WithRunID(id string) SubmitOption { return func(o *scheduler.SubmitOptions) { o.RunID = id } }

// Submit validates wf and starts a run of it with input (JSON-encoded).
// It returns the run id. An invalid workflow returns an error wrapping
// scheduler.ErrInvalidWorkflow (and the specific problem, e.g.
// scheduler.ErrCycle) and writes nothing.
func (c *Client) Submit(ctx context.Context, wf *Workflow, input any, opts ...SubmitOption) (string, error) {
	spec, err := wf.Spec(input)
	if err != nil {
		return "", err
	}
	return c.SubmitSpec(ctx, spec, opts...)
}

// SubmitSpec starts a run from a definition (see ParseSpec for files).
func (c *Client) SubmitSpec(ctx context.Context, spec events.RunSubmittedBody, opts ...SubmitOption) (string, error) {
	var o scheduler.SubmitOptions
	for _, f := range opts {
		f(&o)
	}
	run, _, err := c.sched.Submit(ctx, spec, o)
	return run, err
}

// TaskInfo is one task of a RunInfo.
type TaskInfo struct {
	ID       string          `json:"id"`
	Handler  string          `json:"handler"`
	Deps     []string        `json:"deps,omitempty"`
	Pool     string          `json:"pool"`
	Priority int             `json:"priority"`
	Status   string          `json:"status"`
	Attempt  int             `json:"attempt"`
	Epoch    int64           `json:"epoch"`
	Owner    string          `json:"owner,omitempty"`
	Error    string          `json:"error,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
}

// RunInfo is the state of a run, folded from its log.
type RunInfo struct {
	ID         string     `json:"id"`
	Workflow   string     `json:"workflow"`
	Status     string     `json:"status"`
	FailedTask string     `json:"failed_task,omitempty"`
	Cause      string     `json:"cause,omitempty"`
	Events     int        `json:"events"`
	Tasks      []TaskInfo `json:"tasks"`
	// Counts maps each task status to the number of tasks in it.
	Counts map[string]int `json:"counts"`
	// Quarantine says why the projector set the run aside (status
	// "quarantined"), and BadEntries lists the log entries that do not
	// decode or fold (the state above is the fold of the others).
	Quarantine string     `json:"quarantine,omitempty"`
	BadEntries []BadEntry `json:"bad_entries,omitempty"`
}

// BadEntry is a log entry that cannot be decoded or folded.
type BadEntry struct {
	Seq   string `json:"seq"`
	Error string `json:"error"`
}

// Quarantined reports whether the projector set the run aside for good.
func (r *RunInfo) Quarantined() bool { return r.Status == string(projector.RunQuarantined) }

// Done reports whether the run has ended.
func (r *RunInfo) Done() bool { return projector.RunStatus(r.Status).Terminal() }

// Succeeded reports whether the run ended successfully.
func (r *RunInfo) Succeeded() bool { return r.Status == string(projector.RunSucceeded) }

// Task returns the task with id, or nil.
func (r *RunInfo) Task(id string) *TaskInfo {
	for i := range r.Tasks {
		if r.Tasks[i].ID == id {
			return &r.Tasks[i]
		}
	}
	return nil
}

// Status folds run's log from the first event and returns its state. A
// log entry that does not decode or fold is skipped and listed in
// BadEntries (the projector quarantines such a run); a run whose own keys
// cannot be read but that the projector quarantined is reported from the
// namespace's quarantine index.
func (c *Client) Status(ctx context.Context, run string) (*RunInfo, error) {
	r, bad, err := c.foldTolerant(ctx, run)
	if err != nil {
		why, qerr := c.db.QuarantineReason(ctx, run)
		if qerr != nil || why == "" {
			return nil, err
		}
		return &RunInfo{ID: run, Status: string(projector.RunQuarantined), Quarantine: why, Counts: map[string]int{},
			BadEntries: []BadEntry{{Error: err.Error()}}}, nil
	}
	info := &RunInfo{ID: run, Workflow: r.Workflow, Status: string(r.Status), FailedTask: r.FailedTask, Cause: r.Cause,
		Events: r.Events, Counts: map[string]int{}, BadEntries: bad}
	if r.Status == projector.RunQuarantined {
		info.Quarantine, info.Cause = r.Cause, ""
	}
	for _, t := range r.Tasks {
		info.Tasks = append(info.Tasks, TaskInfo{
			ID: t.Spec.ID, Handler: t.Spec.Handler, Deps: t.Spec.Deps, Pool: t.Spec.Pool, Priority: t.Spec.Priority,
			Status: string(t.Status), Attempt: t.Attempt, Epoch: t.Epoch, Owner: t.Owner, Error: t.Error, Result: t.Result,
		})
		info.Counts[string(t.Status)]++
	}
	return info, nil
}

// foldTolerant folds run's log, skipping (and listing) the entries that do
// not decode or fold.
func (c *Client) foldTolerant(ctx context.Context, run string) (*projector.Run, []BadEntry, error) {
	evs, undecodable, err := c.db.ReadLogTolerant(ctx, run, 10000)
	if err != nil {
		return nil, nil, err
	}
	var bad []BadEntry
	for _, b := range undecodable {
		bad = append(bad, BadEntry{Seq: b.Seq, Error: b.Err.Error()})
	}
	r := projector.NewRun(run)
	for _, e := range evs {
		if err := projector.Apply(r, e); err != nil {
			bad = append(bad, BadEntry{Seq: e.Seq, Error: err.Error()})
		}
	}
	if r.Status == projector.RunUnknown {
		return nil, nil, fmt.Errorf("%w: %s in namespace %q", ErrRunNotFound, run, c.db.K.Namespace())
	}
	if len(bad) > 1 {
		sort.Slice(bad, func(i, j int) bool { return projector.CompareSeq(bad[i].Seq, bad[j].Seq) < 0 })
	}
	return r, bad, nil
}

// Fold reads run's whole log and folds it with projector.Apply.
func (c *Client) Fold(ctx context.Context, run string) (*projector.Run, error) {
	r := projector.NewRun(run)
	evs, err := c.db.ReadLog(ctx, run, "-", "+", 10000, 0)
	if err != nil {
		return nil, err
	}
	for _, e := range evs {
		if err := projector.Apply(r, e); err != nil {
			return nil, err
		}
	}
	if r.Status == projector.RunUnknown {
		return nil, fmt.Errorf("%w: %s in namespace %q", ErrRunNotFound, run, c.db.K.Namespace())
	}
	return r, nil
}

// Wait blocks until run ends (run_succeeded, run_failed, run_cancelled or
// run_quarantined appears in its log) or ctx is done, and returns its
// final state (see RunInfo.Succeeded and RunInfo.Quarantined). It
// blocks on the log stream (XREAD BLOCK); it does not poll.
func (c *Client) Wait(ctx context.Context, run string) (*RunInfo, error) {
	if n, err := c.db.C.Exists(ctx, c.db.K.RunLog(run)).Result(); err != nil {
		return nil, fmt.Errorf("wait for run %s: %w", run, err)
	} else if n == 0 {
		return nil, fmt.Errorf("%w: %s in namespace %q", ErrRunNotFound, run, c.db.K.Namespace())
	}
	last := "0"
	ended := false
	for {
		block := 5 * time.Second
		if dl, ok := ctx.Deadline(); ok {
			if d := time.Until(dl); d < block {
				block = d
			}
		}
		if block <= 0 {
			return nil, ctx.Err()
		}
		res, err := c.db.C.XRead(ctx, &redis.XReadArgs{Streams: []string{c.db.K.RunLog(run), last}, Count: 1000, Block: block}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("wait for run %s: %w", run, err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		n := 0
		for _, s := range res {
			for _, m := range s.Messages {
				last = m.ID
				n++
				switch t, _ := m.Values[events.FieldType].(string); events.Type(t) {
				case events.RunSucceeded, events.RunFailed, events.RunCancelled, events.RunQuarantined:
					ended = true
				case events.TaskRequeued: // the run was reopened
					ended = false
				}
			}
		}
		if ended && n < 1000 {
			return c.Status(ctx, run)
		}
	}
}

// DeadLetter is a task that failed for good (or as poison).
type DeadLetter struct {
	Run     string          `json:"run"`
	Task    string          `json:"task"`
	At      time.Time       `json:"at"`
	Details json.RawMessage `json:"details,omitempty"`
}

// DeadLetters lists up to limit dead letters, oldest first.
func (c *Client) DeadLetters(ctx context.Context, limit int64) ([]DeadLetter, error) {
	if limit <= 0 {
		limit = 1 << 30
	}
	zs, err := c.db.C.ZRangeWithScores(ctx, c.db.K.DeadLetter(), 0, limit-1).Result()
	if err != nil {
		return nil, err
	}
	out := make([]DeadLetter, 0, len(zs))
	members := make([]string, 0, len(zs))
	for _, z := range zs {
		m, _ := z.Member.(string)
		run, task, _ := strings.Cut(m, "|")
		out = append(out, DeadLetter{Run: run, Task: task, At: time.UnixMilli(int64(z.Score)).UTC()})
		members = append(members, m)
	}
	if len(members) > 0 {
		infos, err := c.db.C.HMGet(ctx, c.db.K.DeadLetterInfo(), members...).Result()
		if err != nil {
			return nil, err
		}
		for i, v := range infos {
			if s, ok := v.(string); ok {
				out[i].Details = json.RawMessage(s)
			}
		}
	}
	return out, nil
}

// Requeue gives a task that failed for good one more attempt: it appends
// task_requeued, reopens the run, and the projector requeues the tasks
// skipped behind it. It returns an error wrapping rdb's ErrNotRequeueable
// (message "task cannot be requeued") if the task has not failed.
func (c *Client) Requeue(ctx context.Context, run, task string) error {
	body, _ := json.Marshal(events.TaskRequeuedBody{Cause: "requeued from the dead-letter set"})
	return c.db.Requeue(ctx, run, task, "client", ulid.Make().String(), time.Now().UnixMilli(), body)
}

// PurgeDeadLetter forgets one dead letter (the run keeps its history).
func (c *Client) PurgeDeadLetter(ctx context.Context, run, task string) error {
	m := rdb.DeadLetterMember(run, task)
	pipe := c.db.C.TxPipeline()
	pipe.ZRem(ctx, c.db.K.DeadLetter(), m)
	pipe.HDel(ctx, c.db.K.DeadLetterInfo(), m)
	_, err := pipe.Exec(ctx)
	return err
}

// PurgeDeadLetters forgets every dead letter.
func (c *Client) PurgeDeadLetters(ctx context.Context) error {
	return c.db.C.Del(ctx, c.db.K.DeadLetter(), c.db.K.DeadLetterInfo()).Err()
}

// RepairReport says what Repair did for one run.
type RepairReport struct {
	Run string `json:"run"`
	// Redispatched lists tasks given a fresh queue message: dispatched
	// tasks (a duplicate message is dropped at claim) and running tasks
	// whose owner is no longer a live worker (their claim is released
	// first, bumping the epoch, so a late result is rejected).
	Redispatched []string `json:"redispatched,omitempty"`
	// Skipped is true for runs that are not running.
	Skipped bool `json:"skipped,omitempty"`
}

// Repair re-dispatches a running run's tasks from its state, for queue
// messages lost outside Graflow's control: entries deleted from a queue
// stream while pending (XTRIM/XDEL by hand; the reclaimer logs them), or a
// Redis Cluster node that lost its last writes. It also points the feed at
// the run. Safe to run at any time: duplicates are dropped at claim, and a
// live claim is never touched.
func (c *Client) Repair(ctx context.Context, run string) (RepairReport, error) {
	rep := RepairReport{Run: run}
	var err error
	rep.Redispatched, err = projector.Repair(ctx, c.db.C, c.db.K.Namespace(), run, time.Now())
	if errors.Is(err, projector.ErrNotRunning) {
		return RepairReport{Run: run, Skipped: true}, nil
	}
	return rep, err
}

// RunningRuns lists the ids of runs in the index whose state is running.
func (c *Client) RunningRuns(ctx context.Context) ([]string, error) {
	ids, err := c.db.C.ZRange(ctx, c.db.K.Runs(), 0, -1).Result()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, id := range ids {
		st, err := c.db.C.HGet(ctx, c.db.K.RunState(id), rdb.FieldRunStatus).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		if st == string(projector.RunRunning) {
			out = append(out, id)
		}
	}
	return out, nil
}

// GCOptions select what GC removes.
type GCOptions struct {
	// OlderThan: only runs submitted longer ago than this (0: any age).
	OlderThan time.Duration
	// DryRun reports what would be removed and removes nothing.
	DryRun bool
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// GCReport says what GC removed (or would remove, in a dry run).
type GCReport struct {
	Runs   []string `json:"runs"`
	Events int64    `json:"events"`
	Keys   int64    `json:"keys"`
	// Kept counts finished runs left alone because the projector has not
	// applied all their events yet (they are collected on a later pass).
	Kept int `json:"kept"`
	// Dangling counts index entries whose run no longer exists (expired
	// by a TTL), removed from the index.
	Dangling int `json:"dangling"`
	// DeadLetters counts dead letters of runs that are gone (collected
	// now, or expired by a TTL), forgotten. A dry run does not count them.
	DeadLetters int `json:"dead_letters"`
}

// GC deletes finished runs (succeeded, failed or cancelled) submitted more
// than OlderThan ago: their log, state, results, dag, outbox and channel,
// their index entry and their dead letters; it also drops the index entries
// and dead letters of runs already gone (expired by RunTTL). It never
// removes a run that is still running or
// whose events the projector has not all applied (@dirty set), so no event
// the projector still needs is ever trimmed. Export runs first
// (replay.Export) if you need their history later.
func (c *Client) GC(ctx context.Context, opt GCOptions) (GCReport, error) {
	var rep GCReport
	if opt.Now == nil {
		opt.Now = time.Now
	}
	max := "+inf"
	if opt.OlderThan > 0 {
		max = fmt.Sprint(opt.Now().Add(-opt.OlderThan).UnixMilli())
	}
	ids, err := c.db.C.ZRangeArgs(ctx, redis.ZRangeArgs{Key: c.db.K.Runs(), Start: "-inf", Stop: max, ByScore: true}).Result()
	if err != nil {
		return rep, err
	}
	for _, run := range ids {
		vals, err := c.db.C.HMGet(ctx, c.db.K.RunState(run), rdb.FieldRunStatus, rdb.FieldRunDirty).Result()
		if err != nil {
			return rep, err
		}
		status, _ := vals[0].(string)
		if vals[0] == nil {
			if n, err := c.db.C.Exists(ctx, c.db.K.RunLog(run)).Result(); err == nil && n == 0 {
				rep.Dangling++
				if !opt.DryRun {
					_ = c.db.C.ZRem(ctx, c.db.K.Runs(), run).Err()
				}
			}
			continue
		}
		if !projector.RunStatus(status).Terminal() {
			continue
		}
		if vals[1] != nil {
			rep.Kept++
			continue
		}
		if opt.DryRun {
			n, err := c.db.C.XLen(ctx, c.db.K.RunLog(run)).Result()
			if err != nil {
				return rep, err
			}
			rep.Runs = append(rep.Runs, run)
			rep.Events += n
			continue
		}
		// Check and delete in one script: a requeue cannot slip in between.
		ok, keys, n, err := c.db.GCRun(ctx, run)
		if err != nil {
			return rep, err
		}
		if !ok {
			rep.Kept++
			continue
		}
		rep.Runs = append(rep.Runs, run)
		rep.Events += n
		rep.Keys += keys
		if err := c.db.C.ZRem(ctx, c.db.K.Runs(), run).Err(); err != nil {
			return rep, err
		}
		if err := c.db.C.HDel(ctx, c.db.K.Quarantined(), run).Err(); err != nil {
			return rep, err
		}
	}
	if opt.DryRun {
		return rep, nil
	}
	// The dead letters of runs that are gone, page by page (a page's
	// removals shift the ranks; the sweep accounts for them).
	for start := int64(0); ; {
		next, gone, err := c.db.SweepDeadLetters(ctx, start, 500)
		if err != nil {
			return rep, err
		}
		rep.DeadLetters += len(gone)
		if next == 0 {
			return rep, nil
		}
		start = next
	}
}
