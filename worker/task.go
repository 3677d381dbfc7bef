package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
)

// Handler runs tasks of one handler name. The returned value is the task's
// result (JSON-encoded, may be nil); an error fails the attempt, and the
// task is retried while it has attempts left unless the error is Permanent.
//
// ProcessTask must return when ctx is done: ctx is cancelled on the task's
// timeout, when its claim is lost (another worker reclaimed it), or when
// the worker's drain timeout ends.
type Handler interface {
	ProcessTask(ctx context.Context, t *Task) (any, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, t *Task) (any, error)

// ProcessTask calls f.
func (f HandlerFunc) ProcessTask(ctx context.Context, t *Task) (any, error) { return f(ctx, t) }

// Task is one claimed attempt of a task, as a handler sees it.
type Task struct {
	Run         string
	ID          string
	Handler     string
	Attempt     int
	MaxAttempts int
	Epoch       int64
	// Input is the run's input (JSON), shared by all tasks of the run.
	Input json.RawMessage
	// Args are the task's static arguments from the workflow (JSON).
	Args json.RawMessage
	// Upstream maps each dependency's id to its accepted result (JSON):
	// every dependency, unless the results of a wide fan-in exceed what
	// one claim carries (rdb.DefaultClaimUpstreamBytes, 8 MiB); then the
	// first that fit. BindUpstream and EachUpstream read the others from
	// Redis when asked, page by page, so a fan-in of any width works
	// without holding every result in memory.
	Upstream map[string]json.RawMessage

	deps []string        // every dependency, in the workflow's order
	left []string        // dependencies whose results Upstream lacks
	read upstreamReader  // reads results of dependencies
	ctx  context.Context // the handler's (BindUpstream reads with it)
	// stop cancels the handler's context; cancelRun cancels the run.
	stop      context.CancelCauseFunc
	cancelRun func(ctx context.Context, reason string) error
	channel   *Channel // the run's channel, written as this claim
	// readSpawned reads what the dependencies spawned (Spawned).
	readSpawned func(ctx context.Context, deps []string) ([]string, error)
	signals     *signalHub // WaitSignal's

	timeout time.Duration
	// resultTTLMS expires the stored result after the success (0: never).
	resultTTLMS int64
	// expired lists dependencies whose stored results expired (their
	// result TTL passed): they are not in Upstream.
	expired   map[string]bool
	pool      string
	priority  int
	limits    spawnLimits
	mu        sync.Mutex
	progress  string
	spawn     spawnState
	waits     []string // Spawned, once read
	waitsRead bool
}

// Progress records a progress note sent with the task's next heartbeat.
// Safe for concurrent use.
func (t *Task) Progress(note string) {
	t.mu.Lock()
	t.progress = note
	t.mu.Unlock()
}

func (t *Task) takeProgress() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.progress
}

// CancelRun cancels the task's run (as Client.Cancel does, with this
// worker as the canceller): no other task of the run starts, running ones
// are told at their next heartbeat, and the run ends cancelled. This
// task's context is cancelled too (cause ErrRunCancelled) and whatever the
// handler returns afterwards is recorded as result_rejected, so return
// promptly. Cancelling a run that has already finished or been cancelled
// changes nothing and is not an error.
func (t *Task) CancelRun(reason string) error {
	if t.cancelRun == nil {
		return errors.New("worker: CancelRun on a task the worker did not claim")
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.ctx), 30*time.Second)
	defer cancel()
	if err := t.cancelRun(ctx, reason); err != nil {
		return fmt.Errorf("cancel run %s: %w", t.Run, err)
	}
	t.stop(ErrRunCancelled)
	return nil
}

// BindArgs decodes the task's arguments into v (no-op when there are none).
func (t *Task) BindArgs(v any) error { return bind(t.Args, v, "args") }

// BindInput decodes the run's input into v (no-op when there is none).
func (t *Task) BindInput(v any) error { return bind(t.Input, v, "input") }

// BindUpstream decodes dependency dep's result into v (reading it from
// Redis if the claim did not carry it: see Upstream). dep may also be a
// spawned task this task waited for (see Spawned).
func (t *Task) BindUpstream(dep string, v any) error {
	raw, ok := t.Upstream[dep]
	if !ok && !slices.Contains(t.left, dep) && !slices.Contains(t.deps, dep) {
		ctx := t.ctx
		if ctx == nil {
			ctx = context.Background()
		}
		waits, err := t.Spawned(ctx)
		if err != nil {
			return err // transient: the attempt is retried
		}
		if slices.Contains(waits, dep) {
			res, err := t.read(ctx, []string{dep})
			if err != nil {
				return err
			}
			raw, ok = res[dep], true
		}
	}
	if !ok && slices.Contains(t.left, dep) {
		ctx := t.ctx
		if ctx == nil {
			ctx = context.Background()
		}
		res, err := t.read(ctx, []string{dep})
		if err != nil {
			return err // transient: the attempt is retried
		}
		raw, ok = res[dep], true
	}
	if !ok && !t.expired[dep] {
		return fmt.Errorf("task %s has no dependency %q", t.ID, dep)
	}
	if err := t.checkExpired(dep, raw); err != nil {
		return err
	}
	return bind(raw, v, "result of "+dep)
}

// ErrResultExpired is returned (wrapped, and Permanent: the result will
// not come back) when a task reads the result of a dependency whose result
// TTL passed before the read (see graflow's Task.ResultTTL).
var ErrResultExpired = rdb.ErrResultExpired

// checkExpired returns the error of reading dep's result when it expired
// (raw is what the claim or a read gave for it).
func (t *Task) checkExpired(dep string, raw json.RawMessage) error {
	if t.expired[dep] || rdb.IsExpiredResult(raw) {
		return Permanent(fmt.Errorf("task %s reads the result of %s: %w", t.ID, dep, ErrResultExpired))
	}
	return nil
}

// withoutExpired moves the expired results' marks out of up (a claim's
// upstream results) and returns the dependencies they were for.
func withoutExpired(up map[string]json.RawMessage) map[string]bool {
	var out map[string]bool
	for dep, raw := range up {
		if rdb.IsExpiredResult(raw) {
			if out == nil {
				out = map[string]bool{}
			}
			out[dep] = true
			delete(up, dep)
		}
	}
	return out
}

// Deps returns the ids of the task's dependencies, in the workflow's order.
func (t *Task) Deps() []string { return slices.Clone(t.deps) }

// upstreamPage is how many results EachUpstream reads per round trip.
const upstreamPage = 500

// Spawned returns the ids of the spawned tasks this task waited for
// besides its dependencies: the tasks its dependencies spawned that no
// other task of their spawn depends on, and what those spawned in turn,
// breadth first (see Spawn). One read from Redis, on the first call.
func (t *Task) Spawned(ctx context.Context) ([]string, error) {
	t.mu.Lock()
	if t.waitsRead || t.readSpawned == nil {
		defer t.mu.Unlock()
		return slices.Clone(t.waits), nil
	}
	t.mu.Unlock()
	waits, err := t.readSpawned(ctx, t.deps)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.waits, t.waitsRead = waits, true
	return slices.Clone(waits), nil
}

// EachUpstream calls fn with every dependency's result, in the workflow's
// order, then with the result of every spawned task this task waited for
// (Spawned): those in Upstream, and the others read from Redis a page at
// a time and not kept. It stops at fn's first error and returns it.
func (t *Task) EachUpstream(ctx context.Context, fn func(dep string, result json.RawMessage) error) error {
	if err := t.eachDep(ctx, fn); err != nil {
		return err
	}
	waits, err := t.Spawned(ctx)
	if err != nil {
		return err
	}
	for i := 0; i < len(waits); i += upstreamPage {
		if err := t.eachRead(ctx, waits[i:min(i+upstreamPage, len(waits))], fn); err != nil {
			return err
		}
	}
	return nil
}

// eachRead reads the results of ids (one page) and calls fn with each, in
// order.
func (t *Task) eachRead(ctx context.Context, ids []string, fn func(dep string, result json.RawMessage) error) error {
	res, err := t.read(ctx, ids)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := t.checkExpired(id, res[id]); err != nil {
			return err
		}
		if err := fn(id, res[id]); err != nil {
			return err
		}
	}
	return nil
}

// eachDep calls fn with every dependency's result (EachUpstream).
func (t *Task) eachDep(ctx context.Context, fn func(dep string, result json.RawMessage) error) error {
	left := map[string]bool{}
	for _, d := range t.left {
		left[d] = true
	}
	deps := t.deps
	if deps == nil { // a Task built by hand: what Upstream holds
		deps = slices.Sorted(maps.Keys(t.Upstream))
	}
	for i := 0; i < len(deps); {
		if !left[deps[i]] {
			if err := t.checkExpired(deps[i], nil); err != nil {
				return err
			}
			if err := fn(deps[i], t.Upstream[deps[i]]); err != nil {
				return err
			}
			i++
			continue
		}
		var page []string
		for i < len(deps) && left[deps[i]] && len(page) < upstreamPage {
			page = append(page, deps[i])
			i++
		}
		if err := t.eachRead(ctx, page, fn); err != nil {
			return err
		}
	}
	return nil
}

type upstreamReader func(ctx context.Context, deps []string) (map[string]json.RawMessage, error)

func bind(raw json.RawMessage, v any, what string) error {
	if len(raw) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return Permanent(fmt.Errorf("decode %s: %w", what, err))
	}
	return nil
}

// ErrPermanent marks errors that must not be retried.
var ErrPermanent = errors.New("permanent failure")

type permanentError struct{ err error }

func (e *permanentError) Error() string        { return e.err.Error() }
func (e *permanentError) Unwrap() []error      { return []error{e.err, ErrPermanent} }
func (e *permanentError) Is(target error) bool { return target == ErrPermanent }

// Permanent wraps err so that the task fails for good, without retries.
// errors.Is(Permanent(err), ErrPermanent) is true and the original error
// is still reachable with errors.Is / errors.As.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// FailedDeps returns the dependencies that did not succeed (failed, were
// skipped or cancelled): a task whose join policy lets it run after some
// dependencies failed (best_effort, at_least, critical) sees which. Their
// Upstream entries are nil.
func (t *Task) FailedDeps() []string {
	var out []string
	for _, d := range t.deps {
		if raw, ok := t.Upstream[d]; ok && raw == nil {
			out = append(out, d)
		}
	}
	return out
}
