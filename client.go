package graflow

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/retry"
	"github.com/graflow-go/graflow/internal/tracing"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
)

// ErrRunNotFound is returned for a run id with no log in the namespace
// (Verify and Resume: neither log nor state). Every method that names a
// run returns it, wrapped with the run and the namespace; use errors.Is.
var ErrRunNotFound = errors.New("run not found")

// readCount is the number of log entries read per round trip.
const readCount = 5000

// resumeBatch bounds the tasks one resume script call repairs.
const resumeBatch = 256

// importChunk bounds the events one import script call appends, so an
// import of a large run never stalls Redis for long.
const importChunk = 500

// Config configures a Client. A zero field means its default.
type Config struct {
	// Redis is required (a *redis.Client, *redis.ClusterClient, or a
	// failover client: anything go-redis's UniversalClient covers).
	Redis redis.UniversalClient
	// Namespace is the key prefix (default "graflow").
	Namespace string
	// NamespacePartitions is the namespace's partition count (default
	// rdb.DefaultPartitions, 1): fixed per namespace and checked (see
	// docs/operations.md, "Key layout and partitions").
	NamespacePartitions int
	// MaxPayloadBytes bounds inputs and args (default 1 MiB).
	MaxPayloadBytes int
	// ID names this client in the events it writes for an operator
	// (Resume's task_reclaimed). Default "client-<host>-<pid>".
	ID string
	// Clock dates the events Resume, Requeue and Repair write and the ages
	// Workers, Projectors, Queues and GC go by (default the real clock).
	Clock clockwork.Clock
	// TracerProvider makes the client's spans (graflow.submit); nil means
	// otel.GetTracerProvider(), a no-op unless the program set one. A
	// traced submit stores its trace context in run_submitted, so the
	// run's projection and tasks join its trace (docs/operations.md,
	// "Tracing").
	TracerProvider trace.TracerProvider
}

// Client is the one way in to a namespace: it submits runs, waits for
// them, reads and follows them, lists runs, workers, projectors and
// queues, verifies, exports, imports and resumes runs, and handles dead
// letters. Every Redis command it issues goes through internal/rdb; the
// analysis is package replay's, pure. Safe for concurrent use.
type Client struct {
	db     rdb.DB
	sched  *scheduler.Scheduler
	id     string
	clock  clockwork.Clock
	tracer trace.Tracer
}

// NewClient returns a Client.
func NewClient(cfg Config) (*Client, error) {
	s, err := scheduler.New(scheduler.Config{Redis: cfg.Redis, Namespace: cfg.Namespace, NamespacePartitions: cfg.NamespacePartitions, MaxPayloadBytes: cfg.MaxPayloadBytes, Clock: cfg.Clock})
	if err != nil {
		return nil, err
	}
	if cfg.ID == "" {
		host, _ := os.Hostname()
		cfg.ID = "client-" + host + "-" + strconv.Itoa(os.Getpid())
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	return &Client{db: rdb.NewP(cfg.Redis, cfg.Namespace, cfg.NamespacePartitions), sched: s, id: cfg.ID, clock: cfg.Clock,
		tracer: tracing.Tracer(cfg.TracerProvider)}, nil
}

// Namespace returns the key prefix the client works in.
func (c *Client) Namespace() string { return c.db.K.Namespace() }

// notFound is ErrRunNotFound for run.
func (c *Client) notFound(run string) error {
	return fmt.Errorf("%w: %s in namespace %q", ErrRunNotFound, run, c.db.K.Namespace())
}

// SubmitOption tunes Submit.
type SubmitOption func(*scheduler.SubmitOptions)

// WithRunID makes the submission idempotent under a caller-chosen run id.
func WithRunID(id string) SubmitOption { return func(o *scheduler.SubmitOptions) { o.RunID = id } }

// StartAt submits the run for later: the run is created now, and its root
// tasks start at t (their dispatches wait in the delayed set until then).
func StartAt(t time.Time) SubmitOption { return func(o *scheduler.SubmitOptions) { o.StartAt = t } }

// StartIn submits the run for later: its root tasks start d after the
// submit, measured from the instant run_submitted records (StartAt with
// time.Now().Add(d) would count from the caller's clock reading, a little
// earlier).
func StartIn(d time.Duration) SubmitOption {
	return func(o *scheduler.SubmitOptions) { o.StartIn = d }
}

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
// Traced (a graflow.submit span, child of ctx's), it records the span's
// trace context in run_submitted (spec.Traceparent), unless ctx holds no
// valid span context and spec has one already.
func (c *Client) SubmitSpec(ctx context.Context, spec events.RunSubmittedBody, opts ...SubmitOption) (run string, err error) {
	var o scheduler.SubmitOptions
	for _, f := range opts {
		f(&o)
	}
	ctx, span := c.tracer.Start(ctx, tracing.SpanSubmit, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(tracing.Workflow.String(spec.Workflow), tracing.Tasks.Int(len(spec.Tasks))))
	defer func() { tracing.End(span, err) }()
	if tp := tracing.Traceparent(ctx); tp != "" {
		spec.Traceparent = tp
	}
	run, created, err := c.sched.Submit(ctx, spec, o)
	span.SetAttributes(tracing.Run.String(run), tracing.Created.Bool(created))
	return run, err
}

// TaskInfo is one task of a RunInfo.
type TaskInfo struct {
	ID      string   `json:"id"`
	Handler string   `json:"handler"`
	Deps    []string `json:"deps,omitempty"`
	// Waits are the tasks spawned at run time (dynamic tasks) that this
	// task waits for besides Deps.
	Waits    []string        `json:"waits,omitempty"`
	Pool     string          `json:"pool"`
	Priority int             `json:"priority"`
	Status   string          `json:"status"`
	Attempt  int             `json:"attempt"`
	Epoch    int64           `json:"epoch"`
	Owner    string          `json:"owner,omitempty"`
	Error    string          `json:"error,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
	// ResultExpiresAt is when the stored result expires (the task's
	// ResultTTL after it succeeded; nil: never), and ResultExpired says it
	// has: Result is then empty (Client.Result returns ErrResultExpired;
	// the log keeps the value: Log, Export).
	ResultExpiresAt *time.Time `json:"result_expires_at,omitempty"`
	ResultExpired   bool       `json:"result_expired,omitempty"`
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

// Cancelled reports whether the run was cancelled (Cause holds the
// reason given).
func (r *RunInfo) Cancelled() bool { return r.Status == string(projector.RunCancelled) }

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
	evs, undecodable, err := c.db.ReadLogTolerant(ctx, run, 10000)
	if err != nil {
		return nil, err
	}
	return c.info(ctx, run, evs, undecodable)
}

// info folds a run's events (those read, and those that did not decode)
// into its RunInfo (Status, Wait).
func (c *Client) info(ctx context.Context, run string, evs []events.Event, undecodable []rdb.BadEntry) (*RunInfo, error) {
	r, bad, err := c.foldTolerant(run, evs, undecodable)
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
			ID: t.Spec.ID, Handler: t.Spec.Handler, Deps: t.Spec.Deps, Waits: t.Waits, Pool: t.Spec.Pool, Priority: t.Spec.Priority,
			Status: string(t.Status), Attempt: t.Attempt, Epoch: t.Epoch, Owner: t.Owner, Error: t.Error, Result: t.Result,
		})
		if t.ResultExpiresMS > 0 {
			ti := &info.Tasks[len(info.Tasks)-1]
			at := time.UnixMilli(t.ResultExpiresMS).UTC()
			ti.ResultExpiresAt = &at
			if t.ResultExpired(c.clock.Now()) {
				ti.Result, ti.ResultExpired = nil, true
			}
		}
		info.Counts[string(t.Status)]++
	}
	return info, nil
}

// foldTolerant folds run's events, listing those that did not decode and
// those that do not fold.
func (c *Client) foldTolerant(run string, evs []events.Event, undecodable []rdb.BadEntry) (*projector.Run, []BadEntry, error) {
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
		return nil, nil, c.notFound(run)
	}
	if len(bad) > 1 {
		sort.Slice(bad, func(i, j int) bool { return projector.CompareSeq(bad[i].Seq, bad[j].Seq) < 0 })
	}
	return r, bad, nil
}

// Log reads run's whole log and decodes it (older schema versions are
// upcast, see events.Upcast). It returns ErrRunNotFound for an empty log and
// an *events.DecodeError for an entry that does not decode.
func (c *Client) Log(ctx context.Context, run string) ([]events.Event, error) {
	evs, err := c.db.ReadLog(ctx, run, "-", "+", readCount, 0)
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 {
		return nil, c.notFound(run)
	}
	return evs, nil
}

// Fold reads run's whole log and folds it from the first event with
// projector.Apply, the projector's own fold (replay.Fold).
func (c *Client) Fold(ctx context.Context, run string) (*projector.Run, error) {
	evs, err := c.Log(ctx, run)
	if err != nil {
		return nil, err
	}
	r, err := replay.Fold(run, evs)
	if err != nil {
		return nil, err
	}
	if r.Status == projector.RunUnknown {
		return nil, c.notFound(run)
	}
	return r, nil
}

// Timeline reads run's log, replays it and returns its timeline.
func (c *Client) Timeline(ctx context.Context, run string) (*replay.Timeline, error) {
	evs, err := c.Log(ctx, run)
	if err != nil {
		return nil, err
	}
	a, err := replay.Analyze(run, evs)
	if err != nil {
		return nil, err
	}
	return a.Timeline, nil
}

// Events returns up to limit events of run's log after the entry id from
// ("" or "0" for the start; limit <= 0 means all).
func (c *Client) Events(ctx context.Context, run, from string, limit int) ([]events.Event, error) {
	return c.db.ReadLogAfter(ctx, run, from, readCount, max(limit, 0))
}

// runEnd tracks Wait's rule as a run's log is read in order (Wait,
// Follow with UntilEnd): the run has ended when its last terminal event
// (events.Type.EndsRun) is not followed by a task_requeued, which reopens it.
type runEnd struct{ ended bool }

// see takes the next event of the log, of type t.
func (r *runEnd) see(t events.Type) {
	if t.EndsRun() {
		r.ended = true
	} else if t == events.TaskRequeued { // the run was reopened
		r.ended = false
	}
}

// over reports whether the reader can stop after a batch of n entries,
// read count at a time: the run has ended and the reader has caught up (a
// batch shorter than count), so no later requeue was there to read.
func (r *runEnd) over(n, count int) bool { return r.ended && n < count }

// Wait blocks until run ends (run_succeeded, run_failed, run_cancelled or
// run_quarantined appears in its log, and no task_requeued reopened it
// since) or ctx is done, and returns its final state (see
// RunInfo.Succeeded and RunInfo.Quarantined). It blocks on the log stream
// (XREAD BLOCK); it does not poll. A transient Redis error (a failover's
// refused dial, CLUSTERDOWN, a restart) starts the wait over, for up to a
// minute, instead of ending it.
func (c *Client) Wait(ctx context.Context, run string) (*RunInfo, error) {
	var info *RunInfo
	// A transient Redis error (a failover's refused dial, CLUSTERDOWN, a
	// restart) starts the wait over, for up to waitRetry: a waiter must
	// not report a failover as the run's end.
	err := retry.Do(ctx, retry.Policy{Initial: 50 * time.Millisecond, Max: 2 * time.Second, MaxElapsed: waitRetry}, func() error {
		var err error
		info, err = c.waitOnce(ctx, run)
		if errors.Is(err, ErrRunNotFound) {
			return retry.Permanent(err)
		}
		return err
	})
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return info, err
}

// waitRetry bounds how long Wait retries transient Redis errors.
const waitRetry = time.Minute

// waitOnce follows run's log until it ends, then folds what it read
// (Wait): one XRANGE for what is there (none: no such run), XREAD BLOCK
// after it while the run is not over, and no second read of the log.
func (c *Client) waitOnce(ctx context.Context, run string) (*RunInfo, error) {
	const count = 1000
	var end runEnd
	scan := func(batch []rdb.Message) bool {
		for _, m := range batch {
			t, _ := m.Values[events.FieldType].(string)
			end.see(events.Type(t))
		}
		return end.over(len(batch), count)
	}
	msgs, err := c.db.LogPageAfter(ctx, run, "", count)
	if err != nil {
		return nil, err // "read log of run RUN: ..."
	}
	if len(msgs) == 0 {
		return nil, c.notFound(run)
	}
	if !scan(msgs) {
		err = c.db.Tail(ctx, run, msgs[len(msgs)-1].ID, count, 5*time.Second, func(batch []rdb.Message) (bool, error) {
			msgs = append(msgs, batch...)
			return scan(batch), nil
		})
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("wait for run %s: %w", run, err)
	}
	evs, undecodable := rdb.DecodeTolerant(run, msgs)
	return c.info(ctx, run, evs, undecodable)
}

// FollowOptions tune Follow.
type FollowOptions struct {
	// From is the log entry id after which to start ("" = the first
	// event). Pass the Seq of the last event handled to resume.
	From string
	// UntilEnd returns once the run has ended by Wait's rule: its last
	// terminal event (run_succeeded, run_failed, run_cancelled,
	// run_quarantined) not followed by a task_requeued, and Follow has
	// caught up with the log (a terminal event that a later requeue
	// reopened is delivered, and Follow goes on to the rerun's end).
	UntilEnd bool
	// Block bounds one XREAD BLOCK (default 5s); it only bounds how fast
	// Follow notices cancellation.
	Block time.Duration
}

// Follow calls fn for each event of run's log after opts.From, in order,
// then blocks on the log (XREAD BLOCK, no polling) for new ones until ctx
// is done (it returns nil then), fn returns an error (returned), an entry
// does not decode (its *events.DecodeError), or, with UntilEnd, the run
// ends (Wait's rule, see FollowOptions.UntilEnd).
//
// A run that does not exist yet is waited for (follow a run id, then
// submit it: nothing is missed); check it exists first (Status) if a
// typo must not wait. With UntilEnd, a run that had ended by From (Wait's
// rule: its last terminal event not followed by a task_requeued) returns
// nil at once, and a ctx that ends first returns ctx's error, not nil, so
// the caller can tell.
func (c *Client) Follow(ctx context.Context, run string, opts FollowOptions, fn func(events.Event) error) error {
	block := opts.Block
	if block <= 0 {
		block = 5 * time.Second
	}
	if opts.UntilEnd {
		if ended, err := c.db.EndedBy(ctx, run, opts.From); err != nil {
			return fmt.Errorf("follow run %s: %w", run, err)
		} else if ended {
			return nil
		}
	}
	var ferr error // from decoding or fn: returned as is
	var end runEnd // not ended by From (EndedBy above)
	err := c.db.Tail(ctx, run, opts.From, readCount, block, func(batch []rdb.Message) (bool, error) {
		for _, m := range batch {
			e, err := events.Decode(run, m.ID, m.Values)
			if err == nil {
				err = fn(e)
			}
			if err != nil {
				ferr = err
				return true, nil
			}
			end.see(e.Type)
		}
		return opts.UntilEnd && end.over(len(batch), readCount), nil
	})
	switch {
	case ferr != nil:
		return ferr
	case ctx.Err() != nil && opts.UntilEnd:
		return ctx.Err()
	case ctx.Err() != nil:
		return nil
	case err != nil:
		return fmt.Errorf("follow run %s: %w", run, err)
	}
	return nil
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
	rows, err := c.db.DeadLetters(ctx, limit)
	if err != nil {
		return nil, err
	}
	out := make([]DeadLetter, 0, len(rows))
	for _, r := range rows {
		d := DeadLetter{Run: r.Run, Task: r.Task, At: time.UnixMilli(r.AtMS).UTC()}
		if r.Details != "" {
			d.Details = json.RawMessage(r.Details)
		}
		out = append(out, d)
	}
	return out, nil
}

// ErrNotRequeueable is returned (wrapped) by Requeue for a task that has
// not failed for good, or a run that was cancelled.
var ErrNotRequeueable = rdb.ErrNotRequeueable

// Requeue gives a task that failed for good one more attempt: it appends
// task_requeued, reopens the run, and the projector requeues the tasks
// skipped behind it. It returns an error wrapping ErrNotRequeueable
// (message "task cannot be requeued") if the task has not failed (and
// drops a stale dead letter of it: one left by a requeue cut off before
// it removed it), ErrRunNotFound for a run with no log.
func (c *Client) Requeue(ctx context.Context, run, task string) error {
	body, _ := json.Marshal(events.TaskRequeuedBody{Cause: "requeued from the dead-letter set"})
	now := c.clock.Now()
	err := c.db.Requeue(ctx, run, task, "client", events.NewID(now), now.UnixMilli(), body)
	if errors.Is(err, ErrNotRequeueable) {
		if nf := c.exists(ctx, run); errors.Is(nf, ErrRunNotFound) {
			return nf
		}
	}
	return err
}

// PurgeDeadLetter forgets one dead letter (the run keeps its history).
func (c *Client) PurgeDeadLetter(ctx context.Context, run, task string) error {
	return c.db.PurgeDeadLetter(ctx, run, task)
}

// PurgeDeadLetters forgets every dead letter.
func (c *Client) PurgeDeadLetters(ctx context.Context) error {
	return c.db.PurgeDeadLetters(ctx)
}

// RepairReport says what Repair did for one run.
type RepairReport struct {
	Run string `json:"run"`
	// Redispatched lists tasks given a fresh queue message: dispatched
	// tasks whose queue holds no live message of them, and running tasks
	// whose owner is no longer a live worker or holds no queue entry of
	// them (their claim is released first, bumping the epoch, so a late
	// result is rejected; a live owner's handler is cancelled at its next
	// heartbeat).
	Redispatched []string `json:"redispatched,omitempty"`
	// Skipped is true for runs that are not running.
	Skipped bool `json:"skipped,omitempty"`
}

// Repair re-dispatches a running run's tasks whose queue message is gone,
// from its state, for messages lost outside Graflow's control: entries
// deleted from a queue stream (XTRIM/XDEL by hand; the reclaimer logs those
// deleted while pending), or a Redis Cluster node that lost its last
// writes. A dispatched task gets a fresh message only when its queue
// stream holds no live one (undelivered, or pending for a consumer). It
// also points the feed at the run. Safe to run at any time: duplicates are
// dropped at claim, and a claim whose owner holds its queue entry is never
// touched (one whose entry is gone is handed back: nothing would come back
// to it if its owner died). ErrRunNotFound for a run with no log.
//
// Its dispatches carry the trace context of a graflow.repair span in the
// run's trace.
func (c *Client) Repair(ctx context.Context, run string) (RepairReport, error) {
	return c.repair(ctx, run, nil)
}

// RepairRuns repairs each of runs in turn, as Repair does, and hands each
// report to each as it is made; it stops at the first error (a repair's,
// with the run named, or each's as it is). Each page of
// projector.RepairPage runs shares one read of each queue stream, taken at
// the first run that needs it: a queue is read once a page, not once per
// run. A task dispatched
// after that read may get a duplicate message, which its claim drops; a
// message deleted after it is not seen missing until the next read.
func (c *Client) RepairRuns(ctx context.Context, runs []string, each func(RepairReport) error) error {
	var ix *rdb.QueueIndex
	for i, run := range runs {
		if i%projector.RepairPage == 0 {
			ix = rdb.NewQueueIndex("")
		}
		rep, err := c.repair(ctx, run, ix)
		if err != nil {
			return fmt.Errorf("repair %s: %w", run, err)
		}
		if err := each(rep); err != nil {
			return err
		}
	}
	return nil
}

func (c *Client) repair(ctx context.Context, run string, ix *rdb.QueueIndex) (RepairReport, error) {
	ids, err := projector.Repair(ctx, c.db, c.tracer, run, c.clock.Now(), ix)
	if errors.Is(err, projector.ErrNotRunning) {
		if err := c.exists(ctx, run); err != nil {
			return RepairReport{}, err // ErrRunNotFound: no log, not "not running"
		}
		return RepairReport{Run: run, Skipped: true}, nil
	}
	return RepairReport{Run: run, Redispatched: ids}, err
}

// RunningRuns lists the ids of runs in the index whose state is running.
func (c *Client) RunningRuns(ctx context.Context) ([]string, error) {
	ids, err := c.db.RunIDs(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, id := range ids {
		st, err := c.db.RunStatus(ctx, id)
		if err != nil {
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
// than OlderThan ago: their log, state, results, dag and channel,
// their index entry and their dead letters; it also drops the index entries
// and dead letters of runs already gone (expired by RunTTL). It never
// removes a run that is still running or
// whose events the projector has not all applied (@dirty set), so no event
// the projector still needs is ever trimmed. Export runs first
// (Export) if you need their history later.
func (c *Client) GC(ctx context.Context, opt GCOptions) (GCReport, error) {
	var rep GCReport
	max := "+inf"
	if opt.OlderThan > 0 {
		max = fmt.Sprint(c.clock.Now().Add(-opt.OlderThan).UnixMilli())
	}
	ids, err := c.db.RunsSubmittedUntil(ctx, max)
	if err != nil {
		return rep, err
	}
	for _, run := range ids {
		status, ok, dirty, err := c.db.GCInfo(ctx, run)
		if err != nil {
			return rep, err
		}
		if !ok {
			if exists, err := c.db.LogExists(ctx, run); err == nil && !exists {
				rep.Dangling++
				if !opt.DryRun {
					_ = c.db.Unindex(ctx, run)
				}
			}
			continue
		}
		if !projector.RunStatus(status).Terminal() {
			continue
		}
		if dirty {
			rep.Kept++
			continue
		}
		if opt.DryRun {
			n, err := c.db.LogLen(ctx, run)
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
		if err := c.db.Unindex(ctx, run); err != nil {
			return rep, err
		}
		if err := c.db.ForgetQuarantine(ctx, run); err != nil {
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

// RunUnreadable is the status Runs reports for a run whose state cannot
// be read (a key of the wrong type, a missing permission).
const RunUnreadable = "unreadable"

// RunSummary is one run of the run index.
type RunSummary struct {
	ID          string    `json:"id"`
	Workflow    string    `json:"workflow"`
	Status      string    `json:"status"`
	SubmittedAt time.Time `json:"submitted_at"`
	// Quarantined holds why the projector set the run aside, if it did.
	Quarantined string `json:"quarantined,omitempty"`
	// Error says why the run's state cannot be read (Status
	// RunUnreadable).
	Error string `json:"error,omitempty"`
}

// RunsOptions filter Runs.
type RunsOptions struct {
	// Status keeps runs in this status ("" keeps all).
	Status string
	// Limit bounds the runs returned (0 means 100; < 0 means no limit).
	Limit int
}

// RunIDs lists the runs of the namespace's run index, oldest first.
func (c *Client) RunIDs(ctx context.Context) ([]string, error) { return c.db.RunIDs(ctx) }

// Runs lists the runs of the run index, newest first, with their live
// @status and @workflow. A run whose state cannot be read is listed with
// status RunUnreadable and the reason; it does not hide the others.
func (c *Client) Runs(ctx context.Context, opts RunsOptions) ([]RunSummary, error) {
	limit := opts.Limit
	if limit == 0 {
		limit = 100
	}
	out := []RunSummary{}
	const page = 500
	for start := int64(0); ; start += page {
		rows, err := c.db.RunPage(ctx, start, page)
		if err != nil {
			return nil, err
		}
		for _, row := range rows {
			s := RunSummary{ID: row.ID, Workflow: row.Workflow, Status: row.Status, Quarantined: row.Quarantine,
				SubmittedAt: time.UnixMilli(row.SubmittedMS).UTC()}
			switch {
			case row.Err != nil:
				s.Status, s.Error = RunUnreadable, row.Err.Error()
			case s.Status == "":
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
		if len(rows) < page {
			return out, nil
		}
	}
}

// registryEntry is what a worker's and a projector's registry hash have in
// common.
type registryEntry struct {
	host                     string
	pid                      int
	started, last            time.Time
	uptimeMS, heartbeatAgeMS int64
	num                      func(field string) int64
}

func parseRegistryEntry(h map[string]string, now time.Time) registryEntry {
	num := func(k string) int64 { n, _ := strconv.ParseInt(h[k], 10, 64); return n }
	e := registryEntry{host: h["host"], pid: int(num("pid")), num: num}
	if ms := num("started_at"); ms > 0 {
		e.started = time.UnixMilli(ms).UTC()
		e.uptimeMS = now.Sub(e.started).Milliseconds()
	}
	if ms := num("last_heartbeat"); ms > 0 {
		e.last = time.UnixMilli(ms).UTC()
		e.heartbeatAgeMS = now.Sub(e.last).Milliseconds()
	}
	return e
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
	ids, hs, err := c.db.Records(ctx, c.db.WorkerRegistry())
	if err != nil {
		return nil, fmt.Errorf("read worker registry: %w", err)
	}
	now := c.clock.Now()
	out := make([]WorkerInfo, 0, len(ids))
	for i, id := range ids {
		w := WorkerInfo{ID: id, Pools: []string{}}
		if len(hs[i]) == 0 {
			w.Expired = true
			out = append(out, w)
			continue
		}
		e := parseRegistryEntry(hs[i], now)
		w.Host, w.PID, w.Concurrency = e.host, e.pid, int(e.num("concurrency"))
		w.Pools, w.Handlers = splitComma(hs[i]["pools"]), splitComma(hs[i]["handlers"])
		w.Running, w.Processed, w.Failed = e.num("tasks_running"), e.num("tasks_processed"), e.num("tasks_failed")
		w.StartedAt, w.UptimeMS, w.LastHeartbeat, w.HeartbeatAgeMS = e.started, e.uptimeMS, e.last, e.heartbeatAgeMS
		out = append(out, w)
	}
	return out, nil
}

// ProjectorInfo is a projector's registry entry.
type ProjectorInfo struct {
	ID   string `json:"id"`
	Host string `json:"host,omitempty"`
	PID  int    `json:"pid,omitempty"`
	// Partitions are the feed partitions it consumes.
	Partitions []string  `json:"partitions"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	UptimeMS   int64     `json:"uptime_ms"`
	// LastHeartbeat and HeartbeatAgeMS: when it last refreshed its entry,
	// and how long ago.
	LastHeartbeat  time.Time `json:"last_heartbeat,omitzero"`
	HeartbeatAgeMS int64     `json:"heartbeat_age_ms"`
	// Expired: in the set, but its hash expired (it died without
	// deregistering; the next prune removes it).
	Expired bool `json:"expired,omitempty"`
}

// Projectors lists the projectors of the registry, sorted by id. None
// live means no run makes progress.
func (c *Client) Projectors(ctx context.Context) ([]ProjectorInfo, error) {
	ids, hs, err := c.db.Records(ctx, c.db.ProjectorRegistry())
	if err != nil {
		return nil, fmt.Errorf("read projector registry: %w", err)
	}
	now := c.clock.Now()
	out := make([]ProjectorInfo, 0, len(ids))
	for i, id := range ids {
		p := ProjectorInfo{ID: id, Partitions: []string{}}
		if len(hs[i]) == 0 {
			p.Expired = true
			out = append(out, p)
			continue
		}
		e := parseRegistryEntry(hs[i], now)
		p.Host, p.PID, p.Partitions = e.host, e.pid, splitComma(hs[i]["partitions"])
		p.StartedAt, p.UptimeMS, p.LastHeartbeat, p.HeartbeatAgeMS = e.started, e.uptimeMS, e.last, e.heartbeatAgeMS
		out = append(out, p)
	}
	return out, nil
}

// QueueInfo describes one queue stream (a pool's priority band).
type QueueInfo struct {
	Pool     string `json:"pool"`
	Priority int    `json:"priority"`
	Stream   string `json:"stream"`
	// Length is the number of messages not acked yet: pending ones plus
	// those not yet delivered (the stream itself also holds acked entries
	// until a fetch trims them; see rdb.QueueStat).
	Length int64 `json:"length"`
	// Pending is the group's PEL size (delivered, not acked), by consumer.
	Pending   int64            `json:"pending"`
	Consumers map[string]int64 `json:"consumers,omitempty"`
	// Lag is the number of messages not yet delivered to the group. Redis
	// cannot always compute it after deletions; then it is Length -
	// Pending, where Length is the stream's length with acked entries not
	// trimmed yet (an upper bound), and LagEstimated is set.
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
	now := c.clock.Now()
	out := []QueueInfo{}
	for _, pool := range pools {
		for _, stream := range c.db.K.AllQueues(pool) {
			st, ok, err := c.db.QueueStat(ctx, stream)
			if err != nil {
				return nil, err
			}
			q := QueueInfo{Stream: stream, Length: st.Length, Lag: st.Lag, Pending: st.Pending, Consumers: st.Consumers}
			switch {
			case !st.HasGroup:
				q.Lag = q.Length // nobody has read it yet
			case q.Lag < 0:
				q.Lag, q.LagEstimated = max(q.Length-q.Pending, 0), true
			}
			if o := st.Oldest; o != nil {
				q.OldestPendingID = o.ID
				q.OldestPendingAgeMS = now.UnixMilli() - seqMS(o.ID)
				q.OldestPendingIdleMS = o.Idle.Milliseconds()
				q.OldestDeliveries = o.RetryCount
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

// pools returns the pools with a queue stream plus those registered
// workers serve, sorted.
func (c *Client) pools(ctx context.Context) ([]string, error) {
	set, err := c.db.QueuePools(ctx)
	if err != nil {
		return nil, err
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

// seqMS returns the milliseconds part of a stream id.
func seqMS(seq string) int64 {
	ms, _, _ := strings.Cut(seq, "-")
	n, _ := strconv.ParseInt(ms, 10, 64)
	return n
}

// Verify rebuilds run's state from its log and compares it, field by
// field, with the live projection in Redis, then checks the history
// invariants and, for a running run, that every dispatched or running
// task's dispatch is in the delayed set or its queue (see
// replay.Verify).
//
// It may run at any time: it reads the state hashes and the log's last id
// in one transaction and folds the log up to that id. Verify returns an
// error only when it cannot read; a run with problems returns a report
// whose Err is a *replay.VerifyError. ErrRunNotFound when the run has
// neither log nor state.
func (c *Client) Verify(ctx context.Context, run string) (*replay.Report, error) {
	live, err := c.db.ReadLive(ctx, run)
	if err != nil {
		return nil, err
	}
	read := c.clock.Now() // after the read: a result deleted by then was due by then
	if live.Last == "" && len(live.State) == 0 {
		return nil, c.notFound(run)
	}
	var evs []events.Event
	var bad []replay.Undecodable
	if live.Last != "" {
		var undecodable []rdb.BadEntry
		if evs, undecodable, err = c.db.ReadLogTolerant(ctx, run, readCount); err != nil {
			return nil, err
		}
		for _, b := range undecodable {
			bad = append(bad, replay.Undecodable(b))
		}
	}
	rep, want := replay.Verify(run, c.Namespace(), replay.Live{State: live.State, Results: live.Results, DAG: live.DAG,
		LastSeq: live.Last, Added: live.Added, Length: live.Length, MaxDeleted: live.MaxDeleted, Now: read}, evs, bad)
	if len(want) == 0 {
		return rep, nil
	}
	lost, err := c.lost(ctx, run, want)
	if err != nil {
		return nil, err
	}
	rep.AddLost(lost, func(pool string, prio int) string { return c.db.K.QueueFor(run, pool, prio) })
	return rep, nil
}

// lost returns the dispatches of want that are nowhere (rdb.DB.Lost).
func (c *Client) lost(ctx context.Context, run string, want []replay.ExpectedDispatch) ([]replay.ExpectedDispatch, error) {
	ws := make([]rdb.Want, len(want))
	for i, w := range want {
		ws[i] = rdb.Want(w)
	}
	lost, err := c.db.Lost(ctx, run, ws)
	if err != nil {
		return nil, err
	}
	out := make([]replay.ExpectedDispatch, len(lost))
	for i, w := range lost {
		out[i] = replay.ExpectedDispatch(w)
	}
	return out, nil
}

// VerifyAll verifies every run of the namespace's run index, oldest first.
// A run indexed but gone (no log, no state) gets a report with one problem.
func (c *Client) VerifyAll(ctx context.Context) ([]*replay.Report, error) {
	ids, err := c.RunIDs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*replay.Report, 0, len(ids))
	for _, id := range ids {
		rep, err := c.Verify(ctx, id)
		if errors.Is(err, ErrRunNotFound) {
			rep = replay.NotIndexed(id, c.Namespace())
		} else if err != nil {
			return out, err
		}
		out = append(out, rep)
	}
	return out, nil
}

// Export writes run's log to w as JSON lines, in log order (see
// replay.WriteExport), reading it a chunk at a time. It returns the number
// of events written.
func (c *Client) Export(ctx context.Context, run string, w io.Writer) (int, error) {
	bw := bufio.NewWriter(w)
	after, n := "", 0
	for {
		evs, err := c.db.ReadLogAfter(ctx, run, after, readCount, readCount)
		if err != nil {
			return n, err
		}
		if err := replay.WriteExport(bw, evs); err != nil {
			return n, fmt.Errorf("export run %s: %w", run, err)
		}
		n += len(evs)
		if len(evs) < readCount {
			break
		}
		after = evs[len(evs)-1].Seq
	}
	if n == 0 {
		return 0, c.notFound(run)
	}
	return n, bw.Flush()
}

// Import reads an export (see replay.ReadExport) and rebuilds the run in
// this client's namespace, with state identical to the replayed state: it
// appends the events to the run's log (keeping the exported seqs when the
// file has them), writes the state hash (task records as
// projector.RecordOf, @status, @workflow, @cursor = last seq, @tasks,
// the accepted results and @input, the metadata of every submitted and
// spawned task) and the channel hash, indexes the run and points the
// projector feed at it. Each write is one script on the run's slot that
// first checks nobody else wrote the run meanwhile.
//
// Import refuses to overwrite: if any key of the run exists it returns a
// *replay.ExistsError (replay.ErrRunExists), except what an interrupted
// import of the same file leaves, which it completes: a log that holds a
// prefix of its events and no state, or all of them with the state but
// no index entry (the index is the import's last step). A file that does not parse or fold returns
// replay.ErrInvalidExport; nothing is written then.
func (c *Client) Import(ctx context.Context, r io.Reader, opts replay.ImportOptions) (*replay.ImportResult, error) {
	evs, err := replay.ReadExport(r)
	if err != nil {
		return nil, err
	}
	return c.ImportEvents(ctx, evs, opts)
}

// ImportEvents is Import for events already read (see replay.ReadExport).
func (c *Client) ImportEvents(ctx context.Context, evs []events.Event, opts replay.ImportOptions) (*replay.ImportResult, error) {
	im, err := replay.PrepareImport(evs, opts)
	if err != nil {
		return nil, err
	}
	run, evs := im.Run, im.Events
	res := im.Result(c.Namespace())
	exists := func(why string) error { return &replay.ExistsError{Run: run, Namespace: c.Namespace(), Why: why} }
	ids, seqs := make([]string, len(evs)), make([]string, len(evs))
	for i, e := range evs {
		ids[i], seqs[i] = e.ID, e.Seq
	}
	check, err := c.db.ImportConflict(ctx, run, ids, seqs)
	if err != nil {
		return nil, err
	}
	if check.Why != "" {
		return nil, exists(check.Why)
	}
	done := check.Done
	res.Continued = done
	if check.StateWritten {
		// Interrupted after the state: only its index is left to write.
		return c.indexImported(ctx, res, run, evs)
	}
	last := ""
	if done > 0 {
		if last = evs[done-1].Seq; last == "" {
			if last, err = c.db.LastLogID(ctx, run); err != nil || last == "" {
				return nil, fmt.Errorf("read log of run %s: %w", run, err)
			}
		}
	}
	for i := done; i < len(evs); i += importChunk {
		chunk := evs[i:min(i+importChunk, len(evs))]
		entries := make([]rdb.LogEntry, len(chunk))
		for j := range chunk {
			entries[j] = rdb.LogEntry{ID: chunk[j].Seq, Fields: chunk[j].Fields()}
		}
		last, err = c.db.ImportAppend(ctx, run, i, entries)
		if errors.Is(err, rdb.ErrImportConflict) {
			return nil, exists("another writer changed it during the import")
		}
		if err != nil {
			return nil, err
		}
	}
	h, err := im.Hashes(last)
	if err != nil {
		return nil, err
	}
	if h.State[rdb.FieldRunStatus] == string(projector.RunSucceeded) {
		// A succeeded run keeps only its log (and channel), as its end
		// leaves it.
		h.State, h.DAG, h.Results = nil, nil, nil
	}
	err = c.db.ImportState(ctx, run, rdb.ImportHashes(h))
	if errors.Is(err, rdb.ErrImportConflict) {
		return nil, exists("another writer created its state during the import")
	}
	if err != nil {
		return nil, err
	}
	return c.indexImported(ctx, res, run, evs)
}

// indexImported is an import's last step: the run enters the run index
// and the feed is pointed at it. Until then the run is not listed, and an
// import of the same export again completes it.
func (c *Client) indexImported(ctx context.Context, res *replay.ImportResult, run string, evs []events.Event) (*replay.ImportResult, error) {
	if err := c.db.Reindex(ctx, run, evs[0].Time.UnixMilli()); err != nil {
		return nil, fmt.Errorf("index imported run %s: %w (import the same file again, or run \"graflow resume %s\", to complete it)", run, err, run)
	}
	return res, nil
}

// Resume puts an unfinished run back to work where its queue messages are
// gone, typically after Import (queue messages are not part of an export);
// see replay.Resume for what it re-dispatches. Each batch of repairs is one
// script on the run's slot that re-checks every task's record, then
// appends the task_reclaimed events, sets the records and queues the
// dispatches (or parks a retry in the delayed set), like a projector
// commit; then the run is (re-)indexed and the feed pointed at it. A task that moves on while
// Resume works is left alone. Resume is idempotent: a second call finds the
// dispatches and does nothing. A duplicate dispatch is harmless anyway
// (the claim script drops it). ErrRunNotFound when the run has no log.
func (c *Client) Resume(ctx context.Context, run string) (res *replay.ResumeResult, err error) {
	live, err := c.db.ReadLive(ctx, run)
	if err != nil {
		return nil, err
	}
	if live.Last == "" {
		return nil, c.notFound(run)
	}
	evs, err := c.db.ReadLog(ctx, run, "-", live.Last, readCount, 0)
	if err != nil {
		return nil, err
	}
	plan, err := replay.PlanResume(run, evs, live.State)
	if err != nil {
		return nil, err
	}
	res = plan.Result
	// A graflow.resume span in the run's trace: the dispatches carry it.
	ctx, span := c.tracer.Start(tracing.WithTraceparent(ctx, plan.Run.Traceparent), tracing.SpanResume,
		trace.WithAttributes(tracing.Run.String(run), tracing.Workflow.String(plan.Run.Workflow)))
	defer func() {
		if res != nil {
			span.SetAttributes(tracing.Redispatched.Int(len(res.Reclaimed) + len(res.Redispatched)))
		}
		tracing.End(span, err)
	}()
	if plan.Run.Status == projector.RunRunning {
		lost, err := c.lost(ctx, run, plan.Want)
		if err != nil {
			return nil, err
		}
		res.Queued = len(plan.Want) - len(lost)
		for i := 0; i < len(lost); i += resumeBatch {
			if err := c.redispatch(ctx, plan, lost[i:min(i+resumeBatch, len(lost))]); err != nil {
				return res, err
			}
		}
	}
	if err := c.db.Reindex(ctx, run, plan.Submitted.Time.UnixMilli()); err != nil {
		return res, fmt.Errorf("index run %s: %w", run, err)
	}
	return res, nil
}

// redispatch re-dispatches one batch of lost tasks in one script.
func (c *Client) redispatch(ctx context.Context, plan *replay.Resume, batch []replay.ExpectedDispatch) error {
	now := c.clock.Now()
	rds := make([]replay.Redispatch, len(batch))
	items := make([]rdb.ResumeItem, len(batch))
	for i, w := range batch {
		rds[i] = plan.Redispatch(w, now, c.id, events.NewID(now))
		items[i] = rdb.ResumeItem{Task: w.Task, Record: w.Record, NewRecord: rds[i].Record, Event: rds[i].Reclaim,
			Dispatch: rdb.Dispatch{Pool: w.Pool, Priority: w.Priority, DueMS: rds[i].DueMS, Run: plan.Run.ID, Task: w.Task,
				Attempt: w.Attempt, EventID: events.NewID(now), Trace: tracing.Traceparent(ctx)}}
	}
	done, err := c.db.Resume(ctx, plan.Run.ID, items, now.UnixMilli())
	if err != nil {
		return err
	}
	for i, ok := range done {
		if ok {
			plan.Done(rds[i])
		}
	}
	return nil
}
