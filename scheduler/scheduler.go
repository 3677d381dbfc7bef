package scheduler

import (
	"context"
	"errors"
	"fmt"
	"github.com/jonboulle/clockwork"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// ErrRunExists is returned when a run id is reused for another workflow.
var ErrRunExists = errors.New("run id already used by another workflow")

// ErrInvalidRunID is returned for a caller-supplied run id that cannot be a
// hash tag.
var ErrInvalidRunID = errors.New("invalid run id")

// Config configures a Scheduler. A zero field means its default.
type Config struct {
	// Redis is required.
	Redis redis.UniversalClient
	// Namespace is the key prefix (default "graflow").
	Namespace string
	// NamespacePartitions is the namespace's partition count (default
	// rdb.DefaultPartitions, 1): fixed per namespace and checked (see
	// docs/operations.md, "Key layout and partitions").
	NamespacePartitions int
	// MaxPayloadBytes bounds inputs and args (default 1 MiB).
	MaxPayloadBytes int
	// Clock decides what time it is and when timers fire (default the real
	// clock; tests pass clockwork.NewFakeClock()).
	Clock clockwork.Clock
	// ID names the submitter as the writer of the decisions a submit makes
	// at once (default "submit").
	ID string
}

// Scheduler validates and submits runs. Safe for concurrent use.
type Scheduler struct {
	cfg Config
	db  rdb.DB
	sub *rdb.Submitter // concurrent submits share a round trip and a script call

	layoutMu sync.Mutex
	layoutOK bool // the namespace's layout was checked (rdb.CheckLayout)
}

// checkLayout checks the namespace's key layout once per Scheduler (a run
// submitted with another partition count would be invisible to the
// namespace's workers). A failed check is tried again at the next submit.
func (s *Scheduler) checkLayout(ctx context.Context) error {
	s.layoutMu.Lock()
	defer s.layoutMu.Unlock()
	if s.layoutOK {
		return nil
	}
	if err := s.db.CheckLayout(ctx); err != nil {
		return err
	}
	s.layoutOK = true
	return nil
}

// New returns a Scheduler.
func New(cfg Config) (*Scheduler, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = rdb.DefaultNamespace
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.ID == "" {
		cfg.ID = "submit"
	}
	var errs []error
	if cfg.Redis == nil {
		errs = append(errs, errors.New("scheduler: Config.Redis is required"))
	}
	if err := rdb.ValidNamespace(cfg.Namespace); err != nil {
		errs = append(errs, fmt.Errorf("scheduler: %w", err))
	}
	if err := rdb.CheckPartitions("scheduler", cfg.NamespacePartitions); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	db := rdb.NewP(cfg.Redis, cfg.Namespace, cfg.NamespacePartitions)
	return &Scheduler{cfg: cfg, db: db, sub: rdb.NewSubmitter(db, 128)}, nil
}

// SubmitOptions tune Submit.
type SubmitOptions struct {
	// RunID makes submission idempotent: submitting the same id again
	// returns it without creating anything. Default: a new ULID.
	RunID string
	// Handlers, when set, rejects handler names outside the set.
	Handlers map[string]bool
	// StartAt submits the run for later: its root tasks start no earlier
	// than this (their StartAfter is raised to reach it; a time past is
	// now). The run exists, running, from the submit on.
	StartAt time.Time
	// StartIn submits the run for later by a duration measured from the
	// submit's own instant (the time run_submitted records), so its root
	// tasks are due exactly StartIn after the submit. With StartAt, the
	// later of the two wins.
	StartIn time.Duration
}

var runIDRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,128}$`)

// Submit validates spec and creates the run: appends run_submitted (with the
// whole DAG) in one script, indexes the run and points the feed at it. An
// invalid spec returns a *ValidationError and writes nothing. created is
// false when opts.RunID named an existing run of the same workflow.
//
// Concurrent calls share one round trip (group commit): one script call
// per partition creates their runs, one command indexes them (see
// rdb.SubmitRuns); each call gets its own run's outcome. A call whose ctx ends
// while it waits for its turn returns ctx.Err() with nothing written; once
// its commands are on the wire it waits for their replies (bounded by the
// Redis client's timeouts).
func (s *Scheduler) Submit(ctx context.Context, spec events.RunSubmittedBody, opts SubmitOptions) (run string, created bool, err error) {
	run, req, err := s.prepare(spec, opts)
	if err != nil {
		return "", false, err
	}
	now := req.At
	// One round trip: the script (which also dispatches the root tasks, or
	// points the feed at the new run: same slot), then the run's index
	// entry. Concurrent Submit calls share it (group commit): one script
	// call per partition creates their runs, one command indexes them.
	if err := s.checkLayout(ctx); err != nil {
		return "", false, err
	}
	rep, err := s.sub.Submit(ctx, req)
	if err != nil {
		return "", false, err
	}
	if rep.Err != nil {
		return "", false, rep.Err
	}
	created = rep.Created
	if !created && rep.Workflow != spec.Workflow {
		return run, false, fmt.Errorf("%w: run %s is a %q run", ErrRunExists, run, rep.Workflow)
	}
	if err := rep.IndexErr; err != nil {
		// The run exists and runs; without its index entry it is missing
		// from run lists. Retry it (idempotent) before reporting.
		for try := 0; try < 3 && err != nil; try++ {
			err = s.db.IndexRun(ctx, s.cfg.Redis, run, now).Err()
		}
		if err != nil {
			return run, created, fmt.Errorf("run %s created, but its index entry failed (submit it again with the same run id to repair): %w", run, err)
		}
	}
	return run, created, nil
}

// prepare validates spec and builds the request that creates its run (Go
// only: no Redis).
func (s *Scheduler) prepare(spec events.RunSubmittedBody, opts SubmitOptions) (string, rdb.SubmitReq, error) {
	if err := Validate(spec, ValidateOptions{MaxPayloadBytes: s.cfg.MaxPayloadBytes, Handlers: opts.Handlers}); err != nil {
		return "", rdb.SubmitReq{}, err
	}
	now := s.cfg.Clock.Now()
	if at := now.Add(opts.StartIn); opts.StartIn > 0 && at.After(opts.StartAt) {
		opts.StartAt = at
	}
	if wait := opts.StartAt.Sub(now); !opts.StartAt.IsZero() && wait > 0 {
		tasks := slices.Clone(spec.Tasks)
		for i := range tasks {
			if len(tasks[i].Deps) == 0 {
				tasks[i].StartAfterMS = max(tasks[i].StartAfterMS, wait.Milliseconds())
			}
		}
		spec.Tasks = tasks
	}
	run := opts.RunID
	if run == "" {
		run = ulid.MustNew(ulid.Timestamp(now), ulid.DefaultEntropy()).String()
	} else if !runIDRE.MatchString(run) {
		return "", rdb.SubmitReq{}, fmt.Errorf("%w %q: use 1-128 letters, digits, '_', '.', ':', '-'", ErrInvalidRunID, run)
	}
	ev := events.Event{ID: events.NewID(now), Run: run, Type: events.RunSubmitted, Time: now}.WithBody(spec)
	init, err := s.initial(ev, now)
	if err != nil {
		return "", rdb.SubmitReq{}, err
	}
	init.Trace = spec.Traceparent
	req, err := rdb.NewSubmitReq(run, ev, spec, init, now)
	if err != nil {
		return "", rdb.SubmitReq{}, err
	}
	return run, req, nil
}

// initial folds ev (run_submitted) into the decisions the run calls for at
// once, the root tasks' dispatches, for the submit script to commit (see
// projector.InitialPlan).
func (s *Scheduler) initial(ev events.Event, now time.Time) (rdb.Initial, error) {
	plan, err := projector.InitialPlan(ev, projector.DefaultBatchSize, rdb.HandoffMaxTasks)
	if err != nil {
		return rdb.Initial{}, fmt.Errorf("fold run_submitted: %w", err)
	}
	init := rdb.Initial{More: plan.More, Writer: s.cfg.ID}
	for task, hs := range plan.Handoffs {
		if init.Handoffs == nil {
			init.Handoffs = map[string][]rdb.Handoff{}
		}
		for _, h := range hs {
			init.Handoffs[task] = append(init.Handoffs[task], rdb.Handoff(h))
		}
	}
	for _, d := range plan.Decisions {
		d.ID, d.Time, d.Worker, d.Version = events.NewID(now), now, s.cfg.ID, events.CurrentVersion
		var b events.TaskDispatchedBody
		if err := d.DecodeBody(&b); err != nil {
			return rdb.Initial{}, err
		}
		init.Events = append(init.Events, d)
		init.Dispatches = append(init.Dispatches, rdb.Dispatch{Pool: b.Pool, Priority: b.Priority, Run: ev.Run, Task: d.Task, Attempt: d.Attempt, EventID: d.ID})
	}
	return init, nil
}
