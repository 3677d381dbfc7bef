package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/internal/testlog"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/graflow-go/graflow/worker"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

const waitTimeout = 30 * time.Second

type bundle struct {
	c     *redis.Client
	ns    string
	db    rdb.DB
	ctx   context.Context
	sched *scheduler.Scheduler
}

// setup gives a test a namespace with a running projector (stopped and
// waited for at cleanup).
func setup(t *testing.T) bundle {
	t.Helper()
	c := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	t.Cleanup(cancel)
	s, err := scheduler.New(scheduler.Config{Redis: c, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	p, err := projector.New(projector.Config{Redis: c, Namespace: ns, ID: "p", FeedBlock: 100 * time.Millisecond,
		RetryInitial: time.Millisecond, RetryMax: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	pctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(pctx) }()
	t.Cleanup(func() { stop(); <-done })
	return bundle{c: c, ns: ns, db: rdb.New(c, ns), ctx: ctx, sched: s}
}

func (b bundle) config(id string) worker.Config {
	return worker.Config{Redis: b.c, Namespace: b.ns, ID: id, FetchBlock: 100 * time.Millisecond, Lease: 10 * time.Second}
}

// running is a worker started by start.
type running struct {
	w    *worker.Worker
	stop context.CancelFunc
	done chan struct{} // closed when Run returned
	err  error         // what Run returned, once done is closed
}

// wait stops the worker and waits for Run to return.
func (r *running) wait(t *testing.T) {
	t.Helper()
	r.stop()
	select {
	case <-r.done:
		if r.err != nil {
			t.Errorf("Run = %v", r.err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return after its context was cancelled")
	}
}

// start runs a worker with the given handlers until the test ends.
func (b bundle) start(t *testing.T, cfg worker.Config, handlers map[string]worker.HandlerFunc) *running {
	t.Helper()
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for name, h := range handlers {
		w.Handle(name, h)
	}
	ctx, stop := context.WithCancel(context.Background())
	r := &running{w: w, stop: stop, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = w.Run(ctx)
	}()
	t.Cleanup(func() {
		stop()
		select {
		case <-r.done:
		case <-time.After(waitTimeout):
			t.Error("Run did not return at cleanup")
		}
	})
	return r
}

func (b bundle) submit(t *testing.T, specs ...events.TaskSpec) string {
	t.Helper()
	run, _, err := b.sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "w", Tasks: specs}, scheduler.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return run
}

// waitFor blocks on run's log until an event matching match appears after
// entry id after; it returns that event.
func (b bundle) waitFor(t *testing.T, run, after string, match func(events.Event) bool) events.Event {
	t.Helper()
	for {
		res, err := b.c.XRead(b.ctx, &redis.XReadArgs{Streams: []string{b.db.K.RunLog(run), after}, Block: waitTimeout}).Result()
		if err != nil {
			t.Fatalf("waiting on the log of run %s: %v", run, err)
		}
		for _, m := range res[0].Messages {
			after = m.ID
			e, err := events.Decode(run, m.ID, m.Values)
			if err != nil {
				t.Fatal(err)
			}
			if match(e) {
				return e
			}
		}
	}
}

func isType(types ...events.Type) func(events.Event) bool {
	return func(e events.Event) bool {
		for _, typ := range types {
			if e.Type == typ {
				return true
			}
		}
		return false
	}
}

// waitEnd waits for the run to end and returns its log and folded state.
func (b bundle) waitEnd(t *testing.T, run string) ([]events.Event, *projector.Run) {
	t.Helper()
	b.waitFor(t, run, "0", isType(events.RunSucceeded, events.RunFailed, events.RunCancelled))
	return b.fold(t, run)
}

func (b bundle) fold(t *testing.T, run string) ([]events.Event, *projector.Run) {
	t.Helper()
	msgs, err := b.c.XRange(b.ctx, b.db.K.RunLog(run), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	r := projector.NewRun(run)
	var log []events.Event
	for _, m := range msgs {
		e, err := events.Decode(run, m.ID, m.Values)
		if err != nil {
			t.Fatal(err)
		}
		if err := projector.Apply(r, e); err != nil {
			t.Fatal(err)
		}
		log = append(log, e)
	}
	return log, r
}

func only(log []events.Event, typ events.Type, task string) []events.Event {
	var out []events.Event
	for _, e := range log {
		if e.Type == typ && (task == "" || e.Task == task) {
			out = append(out, e)
		}
	}
	return out
}

func failure(t *testing.T, e events.Event) events.TaskFailedBody {
	t.Helper()
	var b events.TaskFailedBody
	if err := e.DecodeBody(&b); err != nil {
		t.Fatal(err)
	}
	return b
}

func recv(t *testing.T, ch <-chan string, what string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
		return ""
	}
}

func TestConcurrencyLimitIsRespected(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const limit, tasks = 3, 10
	var inFlight, maxInFlight atomic.Int64
	entered := make(chan string, tasks)
	release := make(chan struct{})
	cfg := b.config("w")
	cfg.Concurrency = limit
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"block": func(ctx context.Context, task *worker.Task) (any, error) {
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
			}
			entered <- task.ID
			select {
			case <-release:
				return task.ID, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
	})
	var specs []events.TaskSpec
	for i := range tasks {
		specs = append(specs, events.TaskSpec{ID: fmt.Sprintf("t%d", i), Handler: "block"})
	}
	run := b.submit(t, specs...)
	// Fill every slot, then let one task out per task that comes in: a
	// worker starting more than `limit` would show in maxInFlight.
	for range limit {
		recv(t, entered, "a task to start")
	}
	for i := limit; i < tasks; i++ {
		release <- struct{}{}
		recv(t, entered, "the next task to start after one finished")
	}
	for range limit {
		release <- struct{}{}
	}
	_, r := b.waitEnd(t, run)
	if r.Status != projector.RunSucceeded {
		t.Fatalf("run %s", r.Status)
	}
	if got := maxInFlight.Load(); got != limit {
		t.Errorf("at most %d handlers ran at once, want exactly the limit %d", got, limit)
	}
}

func TestPermanentErrorsAreNotRetried(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var permanentCalls, transientCalls atomic.Int64
	b.start(t, b.config("w"), map[string]worker.HandlerFunc{
		"permanent": func(ctx context.Context, task *worker.Task) (any, error) {
			permanentCalls.Add(1)
			return nil, worker.Permanent(errors.New("bad input"))
		},
		"transient": func(ctx context.Context, task *worker.Task) (any, error) {
			transientCalls.Add(1)
			return nil, fmt.Errorf("attempt %d of %d failed", task.Attempt, task.MaxAttempts)
		},
	})
	run := b.submit(t,
		events.TaskSpec{ID: "p", Handler: "permanent", MaxAttempts: 3},
		events.TaskSpec{ID: "r", Handler: "transient", MaxAttempts: 2})
	log, r := b.waitEnd(t, run)
	if r.Status != projector.RunFailed {
		t.Fatalf("run %s", r.Status)
	}

	fails := only(log, events.TaskFailed, "p")
	if permanentCalls.Load() != 1 || len(fails) != 1 || len(only(log, events.TaskRetryScheduled, "p")) != 0 {
		t.Fatalf("permanent: %d calls, %d task_failed, %d retries; want 1, 1, 0",
			permanentCalls.Load(), len(fails), len(only(log, events.TaskRetryScheduled, "p")))
	}
	if f := failure(t, fails[0]); !f.Final || f.Kind != events.FailureError || f.Error != "bad input" {
		t.Errorf("permanent failure body %+v", f)
	}
	if r.Task("p").Status != projector.TaskFailed || r.Task("p").Attempt != 1 {
		t.Errorf("p: %s attempt %d", r.Task("p").Status, r.Task("p").Attempt)
	}

	fails = only(log, events.TaskFailed, "r")
	if transientCalls.Load() != 2 || len(fails) != 2 {
		t.Fatalf("transient: %d calls, %d task_failed; want 2, 2", transientCalls.Load(), len(fails))
	}
	if f := failure(t, fails[0]); f.Final {
		t.Errorf("attempt 1 of 2 recorded as final: %+v", f)
	}
	if f := failure(t, fails[1]); !f.Final || f.Error != "attempt 2 of 2 failed" {
		t.Errorf("attempt 2 of 2: %+v", f)
	}
}

func TestPanicsBecomeFailures(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config("w"), map[string]worker.HandlerFunc{
		"panic": func(ctx context.Context, task *worker.Task) (any, error) { panic("kaboom") },
		"ok":    func(ctx context.Context, task *worker.Task) (any, error) { return "fine", nil },
	})
	run := b.submit(t, events.TaskSpec{ID: "p", Handler: "panic"}, events.TaskSpec{ID: "after", Handler: "ok"})
	log, r := b.waitEnd(t, run)
	fails := only(log, events.TaskFailed, "p")
	if len(fails) != 1 {
		t.Fatalf("%d task_failed for p", len(fails))
	}
	if f := failure(t, fails[0]); f.Kind != events.FailurePanic || !strings.Contains(f.Error, "kaboom") || !f.Final {
		t.Errorf("failure %+v, want kind panic mentioning kaboom", f)
	}
	if r.Task("after").Status != projector.TaskSucceeded {
		t.Errorf("the worker did not survive the panic: after is %s", r.Task("after").Status)
	}
}

func TestUnknownHandlerFails(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.start(t, b.config("w-unknown"), map[string]worker.HandlerFunc{
		"ok": func(ctx context.Context, task *worker.Task) (any, error) { return nil, nil },
	})
	run := b.submit(t, events.TaskSpec{ID: "x", Handler: "etl.missing"})
	log, r := b.waitEnd(t, run)
	fails := only(log, events.TaskFailed, "x")
	if len(fails) != 1 {
		t.Fatalf("%d task_failed", len(fails))
	}
	f := failure(t, fails[0])
	if f.Kind != events.FailureUnknown || !strings.Contains(f.Error, `"etl.missing"`) || !strings.Contains(f.Error, "w-unknown") {
		t.Errorf("failure %+v, want kind unknown_handler naming the handler and the worker", f)
	}
	if r.Status != projector.RunFailed {
		t.Errorf("run %s", r.Status)
	}
}

func TestResultsThatCannotBeStoredFailPermanently(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var calls atomic.Int64
	cfg := b.config("w")
	cfg.MaxResultBytes = 64
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"big": func(ctx context.Context, task *worker.Task) (any, error) {
			calls.Add(1)
			return strings.Repeat("x", 100), nil
		},
		"unencodable": func(ctx context.Context, task *worker.Task) (any, error) {
			calls.Add(1)
			return map[string]any{"ch": make(chan int)}, nil
		},
		"fits": func(ctx context.Context, task *worker.Task) (any, error) { return strings.Repeat("x", 62), nil },
	})
	run := b.submit(t,
		events.TaskSpec{ID: "big", Handler: "big", MaxAttempts: 3},
		events.TaskSpec{ID: "unencodable", Handler: "unencodable", MaxAttempts: 3},
		events.TaskSpec{ID: "fits", Handler: "fits"})
	log, r := b.waitEnd(t, run)
	if calls.Load() != 2 {
		t.Errorf("%d calls of the failing handlers, want 2 (no retries)", calls.Load())
	}
	for task, want := range map[string]string{"big": "exceeds the limit of 64", "unencodable": "encode result"} {
		fails := only(log, events.TaskFailed, task)
		if len(fails) != 1 {
			t.Fatalf("%s: %d task_failed", task, len(fails))
		}
		if f := failure(t, fails[0]); !f.Final || !strings.Contains(f.Error, want) {
			t.Errorf("%s: failure %+v, want a final failure mentioning %q", task, f, want)
		}
	}
	if got := string(r.Task("fits").Result); got != `"`+strings.Repeat("x", 62)+`"` {
		t.Errorf("a 64-byte result was not stored: %q", got)
	}
}

func TestTimeoutCancelsTheHandler(t *testing.T) {
	t.Parallel()
	b := setup(t)
	causes := make(chan string, 1)
	b.start(t, b.config("w"), map[string]worker.HandlerFunc{
		"hang": func(ctx context.Context, task *worker.Task) (any, error) {
			<-ctx.Done()
			causes <- fmt.Sprint(ctx.Err())
			return nil, ctx.Err()
		},
	})
	run := b.submit(t, events.TaskSpec{ID: "slow", Handler: "hang", TimeoutMS: 50})
	log, r := b.waitEnd(t, run)
	if got := recv(t, causes, "the handler to see its context end"); got != context.DeadlineExceeded.Error() {
		t.Errorf("handler ctx.Err() = %s, want deadline exceeded", got)
	}
	timeouts := only(log, events.TaskTimedOut, "slow")
	if len(timeouts) != 1 || len(only(log, events.TaskFailed, "slow")) != 0 {
		t.Fatalf("%d task_timed_out, %d task_failed; want 1, 0", len(timeouts), len(only(log, events.TaskFailed, "slow")))
	}
	if f := failure(t, timeouts[0]); f.Kind != events.FailureTimeout || !f.Final || !strings.Contains(f.Error, "timed out after 50ms") {
		t.Errorf("timeout body %+v", f)
	}
	if r.Task("slow").Status != projector.TaskFailed {
		t.Errorf("slow is %s", r.Task("slow").Status)
	}
}

// syncWriter lets a test wait for a log message.
type syncWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	match string
	seen  chan struct{}
	once  sync.Once
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if bytes.Contains(p, []byte(w.match)) {
		w.once.Do(func() { close(w.seen) })
	}
	return w.buf.Write(p)
}

func TestRunDrainsInFlightTasksOnCancel(t *testing.T) {
	t.Parallel()
	b := setup(t)
	entered := make(chan string, 2)
	release := map[string]chan struct{}{"a": make(chan struct{}), "b": make(chan struct{})}
	draining := &syncWriter{match: "worker draining", seen: make(chan struct{})}
	logger := zerolog.New(draining)
	cfg := b.config("w")
	cfg.Concurrency, cfg.Logger = 2, &logger
	r := b.start(t, cfg, map[string]worker.HandlerFunc{
		"hold": func(ctx context.Context, task *worker.Task) (any, error) {
			entered <- task.ID
			<-release[task.ID] // not ctx: drain lets handlers finish
			return task.ID + " done", ctx.Err()
		},
	})
	run := b.submit(t, events.TaskSpec{ID: "a", Handler: "hold"}, events.TaskSpec{ID: "b", Handler: "hold"})
	recv(t, entered, "the first task to start")
	recv(t, entered, "the second task to start")
	r.stop()
	select {
	case <-draining.seen:
	case <-time.After(waitTimeout):
		t.Fatal("the worker did not start draining")
	}
	close(release["a"])
	b.waitFor(t, run, "0", func(e events.Event) bool { return e.Type == events.TaskSucceeded && e.Task == "a" })
	select {
	case <-r.done:
		t.Fatalf("Run returned (%v) while task b was still running", r.err)
	default:
	}
	close(release["b"])
	r.wait(t)
	log, _ := b.fold(t, run)
	for _, task := range []string{"a", "b"} {
		if len(only(log, events.TaskSucceeded, task)) != 1 {
			t.Errorf("task %s has no accepted result after the drain", task)
		}
	}
	if n, _ := b.c.SIsMember(b.ctx, b.db.K.Workers(), "w").Result(); n {
		t.Error("the drained worker is still registered")
	}
}

// startStuck starts a worker whose handler "stuck" runs until its context
// ends, submits a run of one such task s and waits for it to start.
func (b bundle) startStuck(t *testing.T, cfg worker.Config) (*running, string) {
	t.Helper()
	entered := make(chan string, 1)
	r := b.start(t, cfg, map[string]worker.HandlerFunc{
		"stuck": func(ctx context.Context, task *worker.Task) (any, error) {
			entered <- task.ID
			<-ctx.Done()
			return nil, context.Cause(ctx)
		},
	})
	run := b.submit(t, events.TaskSpec{ID: "s", Handler: "stuck"})
	recv(t, entered, "the task to start")
	return r, run
}

func TestDrainTimeoutHandsTasksBack(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.config("w-drain")
	cfg.DrainTimeout = 10 * time.Millisecond
	r, run := b.startStuck(t, cfg)
	r.wait(t)
	log, state := b.fold(t, run)
	back := only(log, events.TaskReclaimed, "s")
	if len(back) != 1 {
		t.Fatalf("%d task_reclaimed after the drain timeout, want 1", len(back))
	}
	var body events.TaskReclaimedBody
	if err := back[0].DecodeBody(&body); err != nil {
		t.Fatal(err)
	}
	if body.From != "w-drain" || body.Reason != "handed back" {
		t.Errorf("task_reclaimed body %+v", body)
	}
	if len(only(log, events.TaskFailed, "s"))+len(only(log, events.TaskSucceeded, "s")) != 0 {
		t.Error("a handed-back task recorded an outcome")
	}
	if st := state.Task("s"); st.Status != projector.TaskDispatched || st.Attempt != 1 {
		t.Errorf("s is %s attempt %d, want dispatched attempt 1", st.Status, st.Attempt)
	}
	// Another worker finishes it from the fresh queue message.
	b.start(t, b.config("w-next"), map[string]worker.HandlerFunc{
		"stuck": func(ctx context.Context, task *worker.Task) (any, error) { return "ok", nil },
	})
	if _, r := b.waitEnd(t, run); r.Status != projector.RunSucceeded || r.Task("s").Owner != "w-next" {
		t.Errorf("run %s, s owned by %q", r.Status, r.Task("s").Owner)
	}
}

// A drain's hand-back whose message was no longer pending for the worker
// released the claim, found nothing to move, and queued a fresh message in
// a call of its own: when that call failed, the task stayed dispatched with
// no message (an audit's suspicion). One script now releases, queues and
// acks.
func TestAHandBackWhoseMessageIsGoneStillQueuesTheTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	q := b.db.K.Queue(0, "default", 0)
	c := redistest.Client(t)
	// The fresh message's own call, if there is one, fails (a script whose
	// only key is the queue: the enqueue script).
	c.AddHook(&redistest.FailOnce{Err: fmt.Errorf("injected: %w", syscall.ECONNRESET), Match: func(args []any) bool {
		name := fmt.Sprint(args[0])
		return (name == "evalsha" || name == "eval") && len(args) > 3 && fmt.Sprint(args[2]) == "1" && args[3] == q
	}})
	cfg := b.config("w-drain")
	cfg.Redis, cfg.DrainTimeout = c, 10*time.Millisecond
	r, run := b.startStuck(t, cfg)
	// Its message is no longer pending for the worker (acked by hand).
	p, err := b.c.XPendingExt(b.ctx, &redis.XPendingExtArgs{Stream: q, Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 10}).Result()
	if err != nil || len(p) != 1 {
		t.Fatalf("pending: %v %v", p, err)
	}
	if err := b.c.XAck(b.ctx, q, rdb.GroupWorkers, p[0].ID).Err(); err != nil {
		t.Fatal(err)
	}
	r.wait(t) // the drain times out and hands the task back
	if log, _ := b.fold(t, run); len(only(log, events.TaskReclaimed, "s")) != 1 {
		t.Fatalf("%d task_reclaimed after the drain, want the hand-back", len(only(log, events.TaskReclaimed, "s")))
	}
	b.start(t, b.config("w-next"), map[string]worker.HandlerFunc{
		"stuck": func(ctx context.Context, task *worker.Task) (any, error) { return "ok", nil },
	})
	if _, r := b.waitEnd(t, run); r.Status != projector.RunSucceeded || r.Task("s").Owner != "w-next" {
		t.Errorf("run %s, s owned by %q; want it run by w-next from the hand-back's message", r.Status, r.Task("s").Owner)
	}
}

// A worker whose claim was taken over learns it at its next heartbeat: the
// handler's context is cancelled and nothing it reports is accepted.
func TestLostLeaseCancelsTheHandler(t *testing.T) {
	t.Parallel()
	b := setup(t)
	entered := make(chan string, 1)
	causes := make(chan string, 1)
	cfg := b.config("w-old")
	cfg.HeartbeatInterval = 10 * time.Millisecond
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"long": func(ctx context.Context, task *worker.Task) (any, error) {
			entered <- task.ID
			<-ctx.Done()
			causes <- context.Cause(ctx).Error()
			return "late result", nil
		},
	})
	run := b.submit(t, events.TaskSpec{ID: "t", Handler: "long"})
	recv(t, entered, "the task to start")
	// Another worker takes the claim over, as the reclaimer would.
	cr, err := b.db.Claim(b.ctx, rdb.ClaimArgs{Run: run, Task: "t", Worker: "thief", Attempt: 1, EventID: ulid.Make().String(),
		TimeMS: 1, Reclaim: true, Deliveries: 2, ReclaimEventID: ulid.Make().String()})
	if err != nil || cr.Outcome != rdb.ClaimOK {
		t.Fatalf("takeover claim = %+v, %v", cr, err)
	}
	if got := recv(t, causes, "the handler to be cancelled"); !strings.Contains(got, "lease lost") {
		t.Errorf("handler cancelled with %q, want the lease-lost cause", got)
	}
	b.waitFor(t, run, "0", func(e events.Event) bool {
		return e.Type == events.ResultRejected && e.Worker == "w-old"
	})
	log, r := b.fold(t, run)
	if len(only(log, events.TaskSucceeded, "t")) != 0 {
		t.Error("the old owner's result was accepted")
	}
	if st := r.Task("t"); st.Status != projector.TaskRunning || st.Owner != "thief" || st.Epoch != cr.Epoch {
		t.Errorf("t is %s owned by %s at epoch %d, want running by thief at %d", st.Status, st.Owner, st.Epoch, cr.Epoch)
	}
}

func TestHandlersSeeTheirInputs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	type seen struct {
		Run, ID, Handler string
		Attempt, Max     int
		Args, Input      string
		Upstream         map[string]string
	}
	got := make(chan seen, 1)
	b.start(t, b.config("w"), map[string]worker.HandlerFunc{
		"first": func(ctx context.Context, task *worker.Task) (any, error) { return map[string]int{"n": 7}, nil },
		"second": func(ctx context.Context, task *worker.Task) (any, error) {
			s := seen{Run: task.Run, ID: task.ID, Handler: task.Handler, Attempt: task.Attempt, Max: task.MaxAttempts,
				Args: string(task.Args), Input: string(task.Input), Upstream: map[string]string{}}
			for k, v := range task.Upstream {
				s.Upstream[k] = string(v)
			}
			var up struct{ N int }
			if err := task.BindUpstream("a", &up); err != nil || up.N != 7 {
				return nil, fmt.Errorf("BindUpstream: %w %+v", err, up)
			}
			if err := task.BindUpstream("zz", &up); err == nil {
				return nil, errors.New("BindUpstream of a non-dependency succeeded")
			}
			got <- s
			return nil, nil
		},
	})
	run, _, err := b.sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "w", Input: json.RawMessage(`{"in":1}`), Tasks: []events.TaskSpec{
		{ID: "a", Handler: "first"},
		{ID: "b", Handler: "second", Deps: []string{"a"}, MaxAttempts: 2, Args: json.RawMessage(`{"x":true}`)},
	}}, scheduler.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var s seen
	select {
	case s = <-got:
	case <-time.After(waitTimeout):
		log, _ := b.fold(t, run)
		t.Fatalf("task b never reported what it saw; log: %v", log)
	}
	want := seen{Run: run, ID: "b", Handler: "second", Attempt: 1, Max: 2, Args: `{"x":true}`, Input: `{"in":1}`,
		Upstream: map[string]string{"a": `{"n":7}`}}
	if fmt.Sprint(s) != fmt.Sprint(want) {
		t.Errorf("handler saw %+v, want %+v", s, want)
	}
	if _, r := b.waitEnd(t, run); r.Status != projector.RunSucceeded {
		t.Errorf("run %s: %s", r.Status, r.Cause)
	}
}

func TestPermanent(t *testing.T) {
	t.Parallel()
	base := errors.New("base")
	err := worker.Permanent(fmt.Errorf("wrapped: %w", base))
	if !errors.Is(err, worker.ErrPermanent) || !errors.Is(err, base) || err.Error() != "wrapped: base" {
		t.Errorf("Permanent: Is(ErrPermanent)=%v Is(base)=%v msg=%q", errors.Is(err, worker.ErrPermanent), errors.Is(err, base), err)
	}
	if worker.Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
	if errors.Is(base, worker.ErrPermanent) {
		t.Error("a plain error is permanent")
	}
	if outer := fmt.Errorf("ctx: %w", err); !errors.Is(outer, worker.ErrPermanent) {
		t.Error("a wrapped permanent error is not permanent")
	}
}

func TestTaskBindErrorsArePermanent(t *testing.T) {
	t.Parallel()
	task := &worker.Task{ID: "t", Args: json.RawMessage(`{"n":"x"}`), Input: json.RawMessage(`[`)}
	var v struct{ N int }
	if err := task.BindArgs(&v); !errors.Is(err, worker.ErrPermanent) {
		t.Errorf("BindArgs = %v, want a permanent error", err)
	}
	if err := task.BindInput(&v); !errors.Is(err, worker.ErrPermanent) {
		t.Errorf("BindInput = %v, want a permanent error", err)
	}
	empty := &worker.Task{ID: "t"}
	v.N = 5
	if err := empty.BindArgs(&v); err != nil || v.N != 5 {
		t.Errorf("BindArgs without args = %v, N %d", err, v.N)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	tests := map[string]struct {
		cfg  worker.Config
		want string
	}{
		"no Redis":                     {worker.Config{ID: "w"}, "Config.Redis is required"},
		"a bad namespace":              {worker.Config{Redis: c, ID: "w", Namespace: "a b"}, "invalid namespace"},
		"a bad id":                     {worker.Config{Redis: c, ID: "w 1"}, "invalid ID"},
		"a bad pool":                   {worker.Config{Redis: c, ID: "w", Pools: []string{"gpu|1"}}, "invalid pool"},
		"a heartbeat as long as lease": {worker.Config{Redis: c, ID: "w", Lease: time.Second, HeartbeatInterval: time.Second}, "must be shorter than Lease"},
	}
	for name, tt := range tests {
		if _, err := worker.New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: New = %v, want an error mentioning %q", name, err, tt.want)
		}
	}
	w, err := worker.New(worker.Config{Redis: c})
	if err != nil {
		t.Fatalf("New with defaults: %v", err)
	}
	if w.ID() == "" {
		t.Error("no default ID")
	}
	w.HandleFunc("b", func(context.Context, *worker.Task) (any, error) { return nil, nil })
	w.HandleFunc("a", func(context.Context, *worker.Task) (any, error) { return nil, nil })
	if got := fmt.Sprint(w.Handlers()); got != "[a b]" {
		t.Errorf("Handlers() = %s", got)
	}
}

// abandon makes the task's queue message look like it belongs to a worker
// that died while running it: read and claimed by "dead", delivered
// deliveries times, idle for an hour.
func (b bundle) abandon(t *testing.T, run, task string, deliveries int) {
	t.Helper()
	q := b.db.K.Queue(0, "default", 0)
	if err := b.db.EnsureGroup(b.ctx, q, rdb.GroupWorkers); err != nil {
		t.Fatal(err)
	}
	res, err := b.c.XReadGroup(b.ctx, &redis.XReadGroupArgs{Group: rdb.GroupWorkers, Consumer: "dead", Streams: []string{q, ">"},
		Count: 1, Block: waitTimeout}).Result()
	if err != nil || len(res[0].Messages) != 1 {
		t.Fatalf("read the dispatch: %v %v", res, err)
	}
	id := res[0].Messages[0].ID
	if cr, err := b.db.Claim(b.ctx, rdb.ClaimArgs{Run: run, Task: task, Worker: "dead", Attempt: 1, EventID: ulid.Make().String(), TimeMS: 1}); err != nil || cr.Outcome != rdb.ClaimOK {
		t.Fatalf("claim as the dead worker: %+v %v", cr, err)
	}
	for i := 1; i < deliveries; i++ {
		if err := b.c.Do(b.ctx, "XCLAIM", q, rdb.GroupWorkers, "dead", 0, id).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.c.Do(b.ctx, "XCLAIM", q, rdb.GroupWorkers, "dead", 0, id, "IDLE", time.Hour.Milliseconds(), "JUSTID").Err(); err != nil {
		t.Fatal(err)
	}
}

func TestReclaimTakesOverADeadWorkersTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run := b.submit(t, events.TaskSpec{ID: "t", Handler: "ok"})
	b.abandon(t, run, "t", 1)
	cfg := b.config("rescuer")
	cfg.ReclaimInterval = 20 * time.Millisecond
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"ok": func(ctx context.Context, task *worker.Task) (any, error) { return task.Epoch, nil },
	})
	log, r := b.waitEnd(t, run)
	if r.Status != projector.RunSucceeded {
		t.Fatalf("run %s", r.Status)
	}
	re := only(log, events.TaskReclaimed, "t")
	if len(re) != 1 {
		t.Fatalf("%d task_reclaimed", len(re))
	}
	var body events.TaskReclaimedBody
	if err := re[0].DecodeBody(&body); err != nil {
		t.Fatal(err)
	}
	if body.From != "dead" || body.Deliveries != 2 || re[0].Worker != "rescuer" || re[0].Epoch != 2 {
		t.Errorf("task_reclaimed %+v by %s at epoch %d", body, re[0].Worker, re[0].Epoch)
	}
	if st := r.Task("t"); st.Owner != "rescuer" || st.Epoch != 3 || string(st.Result) != "3" {
		t.Errorf("t: owner %s epoch %d result %s; want rescuer, 3, 3", st.Owner, st.Epoch, st.Result)
	}
	if p, err := b.c.XPending(b.ctx, b.db.K.Queue(0, "default", 0), rdb.GroupWorkers).Result(); err != nil || p.Count != 0 {
		t.Errorf("pending after the rescue: %+v %v", p, err)
	}
}

// A worker that always has work still takes over a dead worker's task:
// its fetch loop, waiting for a slot, took each one freed ahead of the
// reclaimer, whose ticks only took slots that happened to be free, so the
// task waited until the backlog ran dry (found by a review).
func TestAWorkerThatAlwaysHasWorkStillReclaims(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run := b.submit(t, events.TaskSpec{ID: "t", Handler: "rescued"})
	b.abandon(t, run, "t", 1)
	rescued := make(chan struct{})
	var once sync.Once
	cfg := b.config("busy")
	cfg.Concurrency, cfg.ReclaimInterval = 1, 20*time.Millisecond
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"rescued": func(ctx context.Context, task *worker.Task) (any, error) {
			once.Do(func() { close(rescued) })
			return "ok", nil
		},
		// Each busy task queues the next before it returns, until the
		// dead worker's task ran: the worker always has work.
		"busy": func(ctx context.Context, task *worker.Task) (any, error) {
			select {
			case <-rescued:
			default:
				if _, _, err := b.sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "w", Tasks: []events.TaskSpec{{ID: "b", Handler: "busy"}}}, scheduler.SubmitOptions{}); err != nil {
					t.Errorf("submit the next busy task: %v", err)
				}
			}
			return "ok", nil
		},
	})
	b.submit(t, events.TaskSpec{ID: "b", Handler: "busy"})
	select {
	case <-rescued:
	case <-b.ctx.Done():
		t.Fatal("the dead worker's task was never reclaimed by a worker that always had work")
	}
	if _, r := b.waitEnd(t, run); r.Status != projector.RunSucceeded {
		t.Errorf("run %s, want succeeded", r.Status)
	}
}

// XAUTOCLAIM drops a deleted pending entry from the PEL when it reports
// it: the reclaimer's repair request was all that was left of it, made in
// a call of its own, so a reclaim whose reply was lost (or a worker that
// died in between, or a request that failed for a moment) left the task
// running for a dead worker with nothing to come back to it (found by an
// audit). The reclaim script requests the repair in the same step.
func TestAReclaimWhoseReplyIsLostStillRequestsTheRepair(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run := b.submit(t, events.TaskSpec{ID: "t", Handler: "ok"})
	b.abandon(t, run, "t", 1)
	q := b.db.K.Queue(0, "default", 0)
	p, err := b.c.XPendingExt(b.ctx, &redis.XPendingExtArgs{Stream: q, Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 10}).Result()
	if err != nil || len(p) != 1 {
		t.Fatalf("pending: %v %v", p, err)
	}
	if err := b.c.XDel(b.ctx, q, p[0].ID).Err(); err != nil {
		t.Fatal(err)
	}
	c := redistest.Client(t)
	hook := &redistest.FailOnce{AfterSend: true, Err: fmt.Errorf("injected: %w", syscall.ECONNRESET), Match: func(args []any) bool {
		name := fmt.Sprint(args[0])
		return name == "xautoclaim" && len(args) > 1 && args[1] == q || // a command of its own
			(name == "evalsha" || name == "eval") && len(args) > 3 && args[3] == q // a script on the queue
	}}
	c.AddHook(hook)
	cfg := b.config("rescuer")
	cfg.Redis, cfg.ReclaimInterval = c, 20*time.Millisecond
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"ok": func(ctx context.Context, task *worker.Task) (any, error) { return "ok", nil },
	})
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		reqs, err := b.db.RepairRequest(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if hook.Failed() && len(reqs) > 0 {
			return
		}
		select {
		case <-tick.C:
		case <-b.ctx.Done():
			t.Fatalf("no repair requested for a deleted pending entry (a reclaim's reply was lost: %v)", hook.Failed())
		}
	}
}

func TestPoisonTaskFailsAndIsDeadLettered(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run := b.submit(t, events.TaskSpec{ID: "t", Handler: "crash", MaxAttempts: 5})
	b.abandon(t, run, "t", 4)
	var calls atomic.Int64
	cfg := b.config("rescuer")
	cfg.ReclaimInterval, cfg.PoisonLimit = 20*time.Millisecond, 3
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"crash": func(ctx context.Context, task *worker.Task) (any, error) { calls.Add(1); return nil, nil },
	})
	log, r := b.waitEnd(t, run)
	if r.Status != projector.RunFailed || calls.Load() != 0 {
		t.Fatalf("run %s after %d handler calls; want failed without running the poison task", r.Status, calls.Load())
	}
	fails := only(log, events.TaskFailed, "t")
	if len(fails) != 1 {
		t.Fatalf("%d task_failed", len(fails))
	}
	if f := failure(t, fails[0]); f.Kind != events.FailurePoison || !f.Final || !strings.Contains(f.Error, "delivered 5 times") {
		t.Errorf("failure %+v", f)
	}
	if _, err := b.c.ZScore(b.ctx, b.db.K.DeadLetter(), rdb.DeadLetterMember(run, "t")).Result(); err != nil {
		t.Errorf("the poison task is not in the dead-letter set: %v", err)
	}
}

// gateHook holds pipelines that run the finish script until release is
// closed, and reports single calls of the script queueAck names on acked.
type gateHook struct {
	finish, queueAck string
	release          chan struct{}
	acked            chan struct{}
}

func (h *gateHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *gateHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if a := cmd.Args(); len(a) > 1 && a[1] == h.queueAck {
			select {
			case h.acked <- struct{}{}:
			default:
			}
		}
		return err
	}
}
func (h *gateHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if a := c.Args(); len(a) > 1 && a[1] == h.finish {
				select {
				case <-h.release:
				case <-time.After(waitTimeout):
				}
				break
			}
		}
		return next(ctx, cmds)
	}
}

// A second queue message of an attempt this worker holds (a relay repeated,
// a hand-back's copy) is dropped, not run again, even while the first
// outcome waits to be recorded and its slot is free. (Found in review: the
// claim script takes the copy as "already ours".)
func TestSecondMessageOfAnAttemptInHandIsNotRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := &gateHook{finish: rdb.Scripts()["finish"].Hash(), queueAck: rdb.Scripts()["ack_copy"].Hash(),
		release: make(chan struct{}), acked: make(chan struct{}, 1)}
	wc := b.clientWith(t, h)
	cfg := b.config("w1")
	cfg.Redis, cfg.Concurrency = wc, 1
	var calls atomic.Int64
	again := make(chan struct{}, 1)
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"h": func(ctx context.Context, tk *worker.Task) (any, error) {
			if calls.Add(1) > 1 {
				again <- struct{}{}
				return "again", nil
			}
			// A copy of this very attempt's message.
			return "ok", b.db.XAddDispatch(ctx, b.c, rdb.Dispatch{Pool: "default", Run: tk.Run, Task: tk.ID, Attempt: tk.Attempt}).Err()
		},
	})
	run := b.submit(t, events.TaskSpec{ID: "t", Handler: "h"})
	select {
	case <-h.acked: // the copy was dropped (its owner-checked ack)
	case <-again:
		t.Error("the handler ran again for the copy of an attempt in hand")
	case <-time.After(waitTimeout):
		t.Fatal("the copy was neither dropped nor run")
	}
	close(h.release)
	b.waitFor(t, run, "0", func(e events.Event) bool { return e.Type == events.RunSucceeded })
	if n := calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// clientWith is a client of the test's Redis with hook added, closed at
// cleanup.
func (b bundle) clientWith(t *testing.T, hook redis.Hook) *redis.Client {
	t.Helper()
	c := redistest.Client(t) // not a copy of b.c's Options: go-redis writes them while it connects (a data race)
	c.AddHook(hook)
	return c
}

// dispatchedTask submits a run of one task "t" (handler "h") and waits
// until its message is on the default queue.
func (b bundle) dispatchedTask(t *testing.T) (run, queue string) {
	t.Helper()
	run = b.submit(t, events.TaskSpec{ID: "t", Handler: "h"})
	queue = b.db.K.Queue(0, "default", 0)
	if _, err := b.c.XRead(b.ctx, &redis.XReadArgs{Streams: []string{queue, "0"}, Block: waitTimeout}).Result(); err != nil {
		t.Fatalf("waiting for the dispatch on the queue: %v", err)
	}
	return run, queue
}

// queueCopy queues another message of task t's first attempt (as a
// repeated relay would).
func (b bundle) queueCopy(t *testing.T, run string) {
	t.Helper()
	if err := b.db.XAddDispatch(b.ctx, b.c, rdb.Dispatch{Pool: "default", Run: run, Task: "t", Attempt: 1}).Err(); err != nil {
		t.Fatal(err)
	}
}

// holdFirstClaim holds the first pipeline that runs the claim script until
// release is closed. If set, held is closed when it starts holding,
// blocked gets a value (when there is room) each time a blocking
// XREADGROUP is sent, and every call of the script failFresh fails
// without being sent.
type holdFirstClaim struct {
	claim     string
	once      sync.Once
	release   chan struct{}
	held      chan struct{}
	blocked   chan struct{}
	failFresh string
}

func (h *holdFirstClaim) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *holdFirstClaim) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		a := cmd.Args()
		if h.blocked != nil && len(a) > 0 && fmt.Sprint(a[0]) == "xreadgroup" && slices.ContainsFunc(a, func(v any) bool { return fmt.Sprint(v) == "block" }) {
			select {
			case h.blocked <- struct{}{}:
			default:
			}
		}
		if h.failFresh != "" && len(a) > 1 && a[1] == h.failFresh {
			err := errors.New("injected: claim_fresh refused")
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}
func (h *holdFirstClaim) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if a := c.Args(); len(a) > 1 && a[1] == h.claim {
				h.once.Do(func() {
					if h.held != nil {
						close(h.held)
					}
					select {
					case <-h.release:
					case <-time.After(waitTimeout):
					}
				})
				break
			}
		}
		return next(ctx, cmds)
	}
}

// A dead worker D holds task t from message M; a copy M1 of the same
// attempt is queued. Worker W claims M1 (the claim will say "busy": D's
// claim is recorded) and, while that claim is in flight, W's reclaimer
// takes M over from D. M must not be dropped as a second message of an
// attempt in hand: M1 is about to be acked as busy, and M is then the only
// message that can take the task over from D. (Found in review.)
func TestReclaimedMessageIsKeptWhileTheOtherClaimIsUnresolved(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run, _ := b.dispatchedTask(t)
	for _, s := range b.db.K.AllQueues("default") {
		if err := b.db.EnsureGroup(b.ctx, s, rdb.GroupWorkers); err != nil {
			t.Fatal(err)
		}
	}
	// D reads M and claims it, then dies (never heard of again).
	if res, err := b.db.Fetch(b.ctx, 0, "default", "D", 1); err != nil || len(res) == 0 {
		t.Fatalf("fetch as D: %v %v", res, err)
	}
	cr, err := b.db.Claim(b.ctx, rdb.ClaimArgs{Run: run, Task: "t", Worker: "D", Attempt: 1, EventID: ulid.Make().String(),
		TimeMS: time.Now().UnixMilli(), ReclaimEventID: ulid.Make().String()})
	if err != nil || cr.Outcome != rdb.ClaimOK {
		t.Fatalf("claim as D: %+v %v", cr, err)
	}
	b.queueCopy(t, run) // M1: a copy of the same attempt (a repeated relay)

	hold := &holdFirstClaim{claim: rdb.Scripts()["claim"].Hash(), release: make(chan struct{})}
	wc := b.clientWith(t, hold)
	kept := testlog.NewLineSignal("a second message of an attempt being claimed here")
	dropped := testlog.NewLineSignal("a second message of an attempt in hand; dropping it")
	lg := zerolog.New(zerolog.MultiLevelWriter(kept, dropped)).Level(zerolog.DebugLevel)
	cfg := b.config("W")
	cfg.Logger = &lg
	cfg.Redis, cfg.Lease, cfg.ReclaimInterval = wc, time.Second, 100*time.Millisecond
	var ran atomic.Int64
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"h": func(ctx context.Context, tk *worker.Task) (any, error) { ran.Add(1); return "ok", nil },
	})
	// M1's claim is held; the reclaimer takes M over from D meanwhile.
	select {
	case <-kept.Seen:
	case <-dropped.Seen:
		t.Error("the reclaimed message was dropped while the other message's claim was unresolved")
	case <-time.After(waitTimeout):
		t.Fatal("the reclaimer did not take the dead worker's message over")
	}
	close(hold.release) // M1's claim: busy (D), acked; M comes back after the lease and takes over
	b.waitFor(t, run, "0", func(e events.Event) bool { return e.Type == events.RunSucceeded })
	if n := ran.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// Two messages of one attempt reach a worker together (a repeated relay):
// one is claimed, the other is parked while that claim is in flight, then
// acked once the claim holds. Nothing is left pending for a reclaimer,
// which would otherwise take the task over from the live claim and run it
// again after one lease. (Found in review.)
//
// A read claims the messages whose task is dispatched at once, so for the
// first message's claim to be the claim script's, in flight, both
// messages come through the worker's blocking read with the claim of what
// it returned failing (the fallback this also tests): the queue is emptied
// before the worker starts, the first message is queued once the worker
// blocks, and its copy once the first one's claim is held.
func TestParkedCopyIsAckedWhenTheClaimHolds(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run, q := b.dispatchedTask(t)
	first, err := b.c.XRange(b.ctx, q, "-", "+").Result()
	if err != nil || len(first) != 1 {
		t.Fatalf("the dispatch's message: %v %v", first, err)
	}
	if err := b.c.XDel(b.ctx, q, first[0].ID).Err(); err != nil {
		t.Fatal(err)
	}
	hold := &holdFirstClaim{claim: rdb.Scripts()["claim"].Hash(), release: make(chan struct{}),
		held: make(chan struct{}), blocked: make(chan struct{}, 1), failFresh: rdb.Scripts()["claim_fresh"].Hash()}
	wc := b.clientWith(t, hold)
	parked := testlog.NewLineSignal("a second message of an attempt being claimed here")
	lg := zerolog.New(parked).Level(zerolog.DebugLevel)
	cfg := b.config("W")
	cfg.Logger, cfg.Redis, cfg.Concurrency = &lg, wc, 4
	var ran atomic.Int64
	r := b.start(t, cfg, map[string]worker.HandlerFunc{
		"h": func(ctx context.Context, tk *worker.Task) (any, error) { ran.Add(1); return "ok", nil },
	})
	for _, step := range []struct {
		wait <-chan struct{}
		what string
	}{{hold.blocked, "the worker did not block on its queues"}, {hold.held, "the first message's claim was not sent"}} {
		select {
		case <-step.wait:
		case <-time.After(waitTimeout):
			t.Fatal(step.what)
		}
		b.queueCopy(t, run)
	}
	select {
	case <-parked.Seen:
	case <-time.After(waitTimeout):
		t.Fatal("the second message was not parked behind the first one's claim")
	}
	close(hold.release)
	b.waitFor(t, run, "0", func(e events.Event) bool { return e.Type == events.RunSucceeded })
	if n := ran.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
	// The claimed message is acked after its feed pointer, so maybe after
	// run_succeeded: stop the worker (its drain waits for every ack), then
	// nothing may be pending.
	r.wait(t)
	p, err := b.c.XPending(b.ctx, q, rdb.GroupWorkers).Result()
	if err != nil {
		t.Fatal(err)
	}
	if p.Count != 0 {
		t.Errorf("%d messages still pending after the run ended (a parked copy left for a reclaimer)", p.Count)
	}
}

// scriptCalls counts the calls of one script whose first key is key, and
// signals done after each call of the script named after.
type scriptCalls struct {
	sha, key string
	n        atomic.Int64
	after    string        // sha
	done     chan struct{} // capacity 1
	// fail, if set, is the error each counted call returns instead of
	// its reply (after Redis ran it).
	fail error
}

func (h *scriptCalls) is(cmd redis.Cmder, sha string) bool {
	a := cmd.Args()
	return len(a) > 1 && fmt.Sprint(a[0]) == "evalsha" && a[1] == sha
}

func (h *scriptCalls) count(cmd redis.Cmder) bool {
	if a := cmd.Args(); h.is(cmd, h.sha) && len(a) > 3 && a[3] == h.key {
		h.n.Add(1)
		return true
	}
	return false
}

func (h *scriptCalls) signal(cmds ...redis.Cmder) {
	for _, c := range cmds {
		if h.is(c, h.after) {
			select {
			case h.done <- struct{}{}:
			default:
			}
		}
	}
}
func (h *scriptCalls) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *scriptCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		counted := h.count(cmd)
		err := next(ctx, cmd)
		if counted && h.fail != nil {
			cmd.SetErr(h.fail)
			err = h.fail
		}
		h.signal(cmd)
		return err
	}
}
func (h *scriptCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var counted []redis.Cmder
		for _, c := range cmds {
			if h.count(c) {
				counted = append(counted, c)
			}
		}
		err := next(ctx, cmds)
		for _, c := range counted {
			if h.fail != nil {
				c.SetErr(h.fail)
				if err == nil {
					err = h.fail
				}
			}
		}
		h.signal(cmds...)
		return err
	}
}

func scriptSHA(name string) string { return rdb.Scripts()[name].Hash() }

// Issue #10 defect 2: a claim that fails with an error that is not
// transient (the run's data cannot be read) was retried for 30 s inside
// the worker's one claim goroutine, delaying every other run on it, and
// the poison limit never applied. Now the claim is not retried, the
// message waits for its reclaim, and past the poison limit the run is
// quarantined and the task dead-lettered and acked.
func TestClaimsThatKeepFailingArePoison(t *testing.T) {
	t.Parallel()
	testPoisonClaims(t, false)
}

// The quarantine of a run whose claims keep failing failed when Redis was
// unreachable for a moment: the worker logged it, then dead-lettered and
// acked the message anyway, so the run was never set aside and nothing
// would ever try again (its one message was gone). The quarantine is now
// retried as the dead letter is.
func TestAPoisonClaimWhoseQuarantineFailsForAMomentStillQuarantinesTheRun(t *testing.T) {
	t.Parallel()
	testPoisonClaims(t, true)
}

func testPoisonClaims(t *testing.T, failQuarantine bool) {
	b := setup(t)
	bad := b.submit(t, events.TaskSpec{ID: "t", Handler: "ok"})
	b.waitFor(t, bad, "0", isType(events.TaskDispatched))
	// The run's metadata becomes unreadable, so the fetch leaves its
	// message unclaimed, and every claim script call of it fails with an
	// error that is not transient (as one on a key of the wrong type did
	// when the metadata had a hash of its own).
	if err := b.c.HSet(b.ctx, b.db.K.RunState(bad), rdb.MetaField("t"), `{"h":"ok","d":[`).Err(); err != nil {
		t.Fatal(err)
	}
	calls := &scriptCalls{sha: scriptSHA("claim"), key: b.db.K.RunState(bad), after: scriptSHA("queue_ack"), done: make(chan struct{}, 1),
		fail: errors.New("WRONGTYPE Operation against a key holding the wrong kind of value")}
	cfg := b.config("w1")
	c := b.clientWith(t, calls)
	quarantine := &redistest.FailOnce{Err: fmt.Errorf("read tcp: %w", syscall.ECONNRESET), Match: func(a []any) bool {
		return len(a) > 3 && fmt.Sprint(a[0]) == "evalsha" && a[1] == scriptSHA("quarantine") && a[3] == b.db.K.RunState(bad)
	}}
	if failQuarantine {
		c.AddHook(quarantine)
	}
	cfg.Redis = c
	cfg.Lease, cfg.ReclaimInterval, cfg.PoisonLimit = 300*time.Millisecond, 50*time.Millisecond, 2
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"ok": func(ctx context.Context, task *worker.Task) (any, error) { return "ok", nil },
	})

	// Meanwhile another run on the same worker finishes, long before the
	// 30 s the old retry loop held the claim goroutine.
	good := b.submit(t, events.TaskSpec{ID: "g", Handler: "ok"})
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	quick := b
	quick.ctx = ctx
	if _, r := quick.waitEnd(t, good); r.Status != projector.RunSucceeded {
		t.Errorf("the other run %s", r.Status)
	}

	quick.waitFor(t, bad, "0", isType(events.RunQuarantined))
	if failQuarantine && !quarantine.Failed() {
		t.Error("the quarantine never failed: the test tested nothing")
	}
	// Then the dead letter, then the ack of the poison message.
	pending := func() int64 {
		p, err := b.c.XPending(b.ctx, b.db.K.Queue(0, "default", 0), rdb.GroupWorkers).Result()
		if err != nil {
			t.Fatal(err)
		}
		return p.Count
	}
	for pending() > 0 {
		select {
		case <-calls.done:
		case <-ctx.Done():
			t.Fatalf("the poison message is still pending: %d", pending())
		}
	}
	if _, err := b.c.ZScore(b.ctx, b.db.K.DeadLetter(), rdb.DeadLetterMember(bad, "t")).Result(); err != nil {
		t.Errorf("the task is not in the dead-letter set: %v", err)
	}
	if n := calls.n.Load(); n > int64(cfg.PoisonLimit)+2 {
		t.Errorf("%d claim script calls for the bad run, want at most %d (one per delivery)", n, cfg.PoisonLimit+2)
	}
}

// Issue #10 defect 7: a claim carried every upstream result in one reply,
// with no bound. It carries what fits its byte budget; a fan-in reads the
// rest page by page (EachUpstream) or one by one (BindUpstream).
func TestAWideFanInReadsItsUpstreamResultsPageByPage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var specs []events.TaskSpec
	var deps []string
	for i := range 30 {
		id := fmt.Sprintf("m%02d", i)
		specs = append(specs, events.TaskSpec{ID: id, Handler: "big"})
		deps = append(deps, id)
	}
	specs = append(specs, events.TaskSpec{ID: "fanin", Handler: "fanin", Deps: deps})
	run := b.submit(t, specs...)
	type seen struct {
		carried, each int
		last          string
		err           error
	}
	got := make(chan seen, 1)
	cfg := worker.WithClaimUpstreamBytes(b.config("w1"), 5000) // four results of ~1 KB
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"big": func(ctx context.Context, task *worker.Task) (any, error) {
			return strings.Repeat("x", 1000) + task.ID, nil
		},
		"fanin": func(ctx context.Context, task *worker.Task) (any, error) {
			s := seen{carried: len(task.Upstream)}
			s.err = task.EachUpstream(ctx, func(dep string, result json.RawMessage) error {
				var v string
				if err := json.Unmarshal(result, &v); err != nil || !strings.HasSuffix(v, dep) {
					return fmt.Errorf("result of %s: %.20q %w", dep, result, err)
				}
				s.each++
				return nil
			})
			if s.err == nil {
				s.err = task.BindUpstream("m29", &s.last)
			}
			got <- s
			return s.each, s.err
		},
	})
	_, r := b.waitEnd(t, run)
	s := <-got
	if s.err != nil || r.Status != projector.RunSucceeded {
		t.Fatalf("run %s: %v", r.Status, s.err)
	}
	if s.carried >= 30 || s.carried == 0 || s.each != 30 || !strings.HasSuffix(s.last, "m29") {
		t.Errorf("the claim carried %d results, EachUpstream saw %d, BindUpstream(m29) = %.10q...; want fewer than 30, 30, its result", s.carried, s.each, s.last)
	}
}

// Issue #10 defect 6: a queue entry deleted while pending (an XTRIM or XDEL
// by hand) left its task running under a dead worker with nothing to
// reclaim it: XAUTOCLAIM only reports the id, and the reclaimer logged it
// and waited for an operator's "graflow repair". Now it asks for a repair,
// and a projector re-dispatches the task from the run's log.
func TestADeletedPendingEntryIsRepairedAutomatically(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run := b.submit(t, events.TaskSpec{ID: "t", Handler: "ok"})
	b.abandon(t, run, "t", 1)
	q := b.db.K.Queue(0, "default", 0)
	p, err := b.c.XPendingExt(b.ctx, &redis.XPendingExtArgs{Stream: q, Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 10}).Result()
	if err != nil || len(p) != 1 {
		t.Fatalf("pending: %v %v", p, err)
	}
	if err := b.c.XDel(b.ctx, q, p[0].ID).Err(); err != nil {
		t.Fatal(err)
	}
	cfg := b.config("rescuer")
	cfg.ReclaimInterval = 20 * time.Millisecond
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"ok": func(ctx context.Context, task *worker.Task) (any, error) { return "ok", nil },
	})
	log, r := b.waitEnd(t, run)
	if r.Status != projector.RunSucceeded {
		t.Fatalf("run %s", r.Status)
	}
	if re := only(log, events.TaskReclaimed, "t"); len(re) != 1 || re[0].Epoch != 2 {
		t.Errorf("task_reclaimed %v: want the dead claim handed back once (epoch 2)", re)
	}
}

// A worker stopped while it starts (SIGTERM right after a pod started)
// stops cleanly: Run returns nil, not the cancelled start's error, and
// leaves no registration behind.
func TestRunStoppedWhileStartingIsACleanStop(t *testing.T) {
	t.Parallel()
	b := setup(t)
	w, err := worker.New(b.config("w-stopped-early"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatalf("Run with a cancelled context = %v, want nil", err)
	}
	if n, err := b.c.Exists(b.ctx, b.db.K.Worker("w-stopped-early")).Result(); err != nil || n != 0 {
		t.Errorf("the worker left a registration (%d, %v)", n, err)
	}
}

// cutOffAtFeed cuts a worker off from Redis at the pipeline that points
// the feed after a dead letter (the first pipeline naming the feed key
// after one that writes the dead-letter set, dlq): that pipeline and every
// command after it fail without being sent, and cut is closed.
type cutOffAtFeed struct {
	dlq   string
	feed  string
	once  sync.Once
	cut   chan struct{}
	armed atomic.Bool
	off   atomic.Bool
}

var errCutOff = errors.New("injected: worker cut off from Redis")

// writesKey reports whether cmds hold a cmd writing key (its first key).
func writesKey(cmds []redis.Cmder, cmd, key string) bool {
	for _, c := range cmds {
		if a := c.Args(); len(a) > 1 && fmt.Sprint(a[0]) == cmd && a[1] == key {
			return true
		}
	}
	return false
}

// namesKey reports whether a command of cmds has key among its arguments
// (an XADD to it, or a script's KEYS).
func namesKey(cmds []redis.Cmder, key string) bool {
	for _, c := range cmds {
		for _, a := range c.Args() {
			if a == key {
				return true
			}
		}
	}
	return false
}

func (h *cutOffAtFeed) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *cutOffAtFeed) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.off.Load() {
			cmd.SetErr(errCutOff)
			return errCutOff
		}
		return next(ctx, cmd)
	}
}
func (h *cutOffAtFeed) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.armed.Load() && namesKey(cmds, h.feed) {
			h.off.Store(true)
			h.once.Do(func() { close(h.cut) })
		}
		if h.off.Load() {
			for _, c := range cmds {
				c.SetErr(errCutOff)
			}
			return errCutOff
		}
		if writesKey(cmds, "zadd", h.dlq) {
			h.armed.Store(true)
		}
		return next(ctx, cmds)
	}
}

// holdAfterFeed lets a worker point the feed after a dead letter (the
// first pipeline naming the feed key after one that writes the
// dead-letter set, dlq) and then holds every later command until release
// is closed: the worker is frozen just after its pointer, and passed is
// closed.
type holdAfterFeed struct {
	dlq     string
	feed    string
	armed   atomic.Bool
	held    atomic.Bool
	once    sync.Once
	passed  chan struct{}
	release chan struct{}
}

func (h *holdAfterFeed) hold(ctx context.Context) error {
	if !h.held.Load() {
		return nil
	}
	select {
	case <-h.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *holdAfterFeed) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *holdAfterFeed) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if err := h.hold(ctx); err != nil {
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}
func (h *holdAfterFeed) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if err := h.hold(ctx); err != nil {
			for _, c := range cmds {
				c.SetErr(err)
			}
			return err
		}
		err := next(ctx, cmds)
		switch {
		case h.armed.Load() && namesKey(cmds, h.feed):
			h.held.Store(true)
			h.once.Do(func() { close(h.passed) })
		case writesKey(cmds, "zadd", h.dlq):
			h.armed.Store(true)
		}
		return err
	}
}

// A run whose task failed for good ends only with the task's message
// acked: the ack rides with the feed pointer that lets a projector end
// the run. It came in a round trip of its own after the pointer, so a
// client that saw the run end (Wait) could still list the message as
// pending on its queue (graflow queues; replay's TestInspect flaked on
// it in CI).
func TestATaskThatFailsForGoodIsAckedBeforeItsRunEnds(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run := b.submit(t, events.TaskSpec{ID: "t", Handler: "fail"})
	queue := b.db.K.Queue(0, "default", 0)
	h := &holdAfterFeed{dlq: b.db.K.DeadLetter(), feed: b.db.K.FeedFor(run), passed: make(chan struct{}), release: make(chan struct{})}
	cfg := b.config("A")
	cfg.Redis = b.clientWith(t, h)
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"fail": func(ctx context.Context, tk *worker.Task) (any, error) {
			return nil, worker.Permanent(errors.New("boom"))
		},
	})
	t.Cleanup(func() { close(h.release) }) // before the worker's stop (cleanups run last first)
	select {
	case <-h.passed:
	case <-time.After(waitTimeout):
		t.Fatal("the worker never pointed the feed after the dead letter")
	}
	if _, r := b.waitEnd(t, run); r.Status != projector.RunFailed {
		t.Fatalf("run %s, want failed", r.Status)
	}
	// The worker is held: nothing it sends after the pointer gets out.
	p, err := b.c.XPending(b.ctx, queue, rdb.GroupWorkers).Result()
	if err != nil {
		t.Fatal(err)
	}
	if p.Count != 0 {
		t.Fatalf("the run ended with %d message(s) of its task pending (%+v): the ack came after the feed pointer", p.Count, p)
	}
}

// A worker cut off between writing a task's dead letter and pointing the
// feed at its run (RecordDeadLetters' two steps) has not acked the task's
// message: the ack comes last. The message stays pending, so another
// worker's reclaimer takes it over and, finding the task failed for good
// (Redeliver), writes the dead letter again (NX: still one) and points the
// feed; the run then ends failed, with exactly one dead letter.
func TestAWorkerCutOffBetweenItsDeadLetterAndFeedPointerLeavesItsMessagePending(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run := b.submit(t, events.TaskSpec{ID: "t", Handler: "fail"})
	queue := b.db.K.Queue(0, "default", 0)
	handlers := map[string]worker.HandlerFunc{
		"fail": func(ctx context.Context, tk *worker.Task) (any, error) {
			return nil, worker.Permanent(errors.New("boom"))
		},
	}

	h := &cutOffAtFeed{dlq: b.db.K.DeadLetter(), feed: b.db.K.FeedFor(run), cut: make(chan struct{})}
	cfg := b.config("A")
	cfg.Redis = b.clientWith(t, h)
	a := b.start(t, cfg, handlers)
	select {
	case <-h.cut:
	case <-time.After(waitTimeout):
		t.Fatal("worker A never pointed the feed at the run")
	}
	a.stop()
	select {
	case <-a.done: // its error is the cut-off's
	case <-time.After(waitTimeout):
		t.Fatal("worker A's Run did not return after its context was cancelled")
	}

	// A's outcome and dead letter are written, its feed pointer is not,
	// and its message is still pending for A.
	if _, err := b.c.ZScore(b.ctx, b.db.K.DeadLetter(), rdb.DeadLetterMember(run, "t")).Result(); err != nil {
		t.Fatalf("the dead letter was not written before the feed pointer: %v", err)
	}
	if log, _ := b.fold(t, run); len(only(log, events.TaskFailed, "t")) != 1 {
		t.Fatalf("task_failed of t: %d, want 1 (A's outcome)", len(only(log, events.TaskFailed, "t")))
	}
	p, err := b.c.XPendingExt(b.ctx, &redis.XPendingExtArgs{Stream: queue, Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 10}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 1 || p[0].Consumer != "A" {
		t.Fatalf("pending after A was cut off: %+v; want its message, pending for A", p)
	}

	// B's reclaimer redoes the rest.
	cfg = b.config("B")
	cfg.Lease, cfg.ReclaimInterval = 200*time.Millisecond, 20*time.Millisecond
	b.start(t, cfg, handlers)
	log, r := b.waitEnd(t, run)
	if r.Status != projector.RunFailed {
		t.Fatalf("run %s, want failed", r.Status)
	}
	if n := len(only(log, events.TaskFailed, "t")); n != 1 {
		t.Errorf("task_failed of t: %d, want 1", n)
	}
	if dls, err := b.db.DeadLetters(b.ctx, 100); err != nil || len(dls) != 1 || dls[0].Run != run || dls[0].Task != "t" {
		t.Errorf("dead letters %+v (%v), want exactly one, of %s t", dls, err, run)
	}
	if p, err := b.c.XPending(b.ctx, queue, rdb.GroupWorkers).Result(); err != nil || p.Count != 0 {
		t.Errorf("pending after the reclaim: %+v %v; want none", p, err)
	}
}

// An idle worker's blocking read asks each band for one message, so it
// could return one per band: all of them were claimed at once, more than
// the free slots. A worker running one task at a time claimed the next
// one while its first ran, and that claim outlived a cancel of the run (a
// cancelled run's task ran; TestCancelStopsQueuedAndRunningTasks failed
// on it in CI). The blocking read now claims no more than the free slots,
// highest band first; the rest are claimed when they start.
func TestAnIdleWorkersReadClaimsNoMoreThanItsFreeSlots(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// The run lands between the worker's fetch (which found nothing) and
	// its blocking read, which then finds a message in two bands at once.
	submitted := make(chan string, 1)
	hook := newReadsBlocked(b.submitTo(t, submitted, events.TaskSpec{ID: "high", Handler: "h", Priority: 9}, events.TaskSpec{ID: "low", Handler: "h"}), b.db.K.Queue(0, "default", 0))
	cfg := b.config("w1")
	cfg.Concurrency = 1
	cfg.Redis = b.clientWith(t, hook)
	started := make(chan string, 2)
	release := make(chan struct{})
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"h": func(ctx context.Context, task *worker.Task) (any, error) {
			started <- task.ID
			<-release
			return "ok", nil
		},
	})
	var run string
	select {
	case run = <-submitted:
	case <-b.ctx.Done():
		t.Fatal("the worker never blocked on its queues")
	}
	select {
	case id := <-started:
		if id != "high" {
			t.Errorf("started %s first, want high", id)
		}
	case <-b.ctx.Done():
		t.Fatal("no task started")
	}
	evs, _ := b.fold(t, run)
	for _, e := range evs {
		if e.Type == events.TaskClaimed && e.Task == "low" {
			t.Errorf("low was claimed while high ran, with the one slot busy")
		}
	}
	close(release)
	if _, r := b.waitEnd(t, run); r.Status != projector.RunSucceeded {
		t.Errorf("run %s, want succeeded", r.Status)
	}
}

// passDialsAndPipelines, embedded in a go-redis hook that looks at single
// commands, passes dials and pipelines through.
type passDialsAndPipelines struct{}

func (passDialsAndPipelines) DialHook(next redis.DialHook) redis.DialHook { return next }
func (passDialsAndPipelines) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// isBlockingRead reports a fetch loop's blocking XREADGROUP.
func isBlockingRead(cmd redis.Cmder) bool {
	return cmd.Name() == "xreadgroup" && slices.ContainsFunc(cmd.Args(), func(a any) bool { return fmt.Sprint(a) == "block" })
}

// readsBlocked holds the first blocking XREADGROUP of each of its queues
// until every one of them is about to be sent, then runs do once, before
// any of them is sent.
type readsBlocked struct {
	passDialsAndPipelines
	queues  []string
	do      func()
	mu      *sync.Mutex
	arrived map[string]bool
	ready   chan struct{}
}

// submitTo returns a func that submits a run of specs and sends its id
// on out (for a hook: no t.Fatal off the test's goroutine).
func (b bundle) submitTo(t *testing.T, out chan<- string, specs ...events.TaskSpec) func() {
	return func() {
		run, _, err := b.sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "wf", Tasks: specs}, scheduler.SubmitOptions{})
		if err != nil {
			t.Errorf("submit: %v", err)
		}
		out <- run
	}
}

func newReadsBlocked(do func(), queues ...string) readsBlocked {
	return readsBlocked{queues: queues, do: do, mu: &sync.Mutex{}, arrived: map[string]bool{}, ready: make(chan struct{})}
}

func (h readsBlocked) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		a := cmd.Args()
		if isBlockingRead(cmd) {
			for _, q := range h.queues {
				if !slices.Contains(a, any(q)) {
					continue
				}
				h.mu.Lock()
				first := !h.arrived[q]
				h.arrived[q] = true
				all := first && len(h.arrived) == len(h.queues)
				h.mu.Unlock()
				if all {
					h.do()
					close(h.ready)
				} else if first {
					select {
					case <-h.ready:
					case <-ctx.Done():
					}
				}
			}
		}
		return next(ctx, cmd)
	}
}

// Each of a worker's fetch loops (one per pool and partition) claimed up
// to the free slots it counted, so two loops could each claim a task for
// the one free slot, and the second claim waited in the buffer for it: a
// task held by a worker that was not running it (another worker could
// have), whose run's cancel did not reach it. A loop now reserves the
// slots before it reads, so a claim always starts at once and a message
// that waits for a slot holds no claim.
func TestAMessageThatWaitsForASlotHoldsNoClaim(t *testing.T) {
	t.Parallel()
	b := setup(t)
	submitted := make(chan string, 1)
	hook := newReadsBlocked(b.submitTo(t, submitted, events.TaskSpec{ID: "a", Handler: "h"}, events.TaskSpec{ID: "b", Handler: "h", Pool: "other"}), b.db.K.Queue(0, "default", 0), b.db.K.Queue(0, "other", 0))
	type wait struct {
		task    string
		claimed bool
	}
	waiting := make(chan wait, 4)
	cfg := worker.WithSlotWait(b.config("w1"), func(task string, claimed bool) { waiting <- wait{task, claimed} })
	cfg.Concurrency, cfg.Pools = 1, []string{"default", "other"}
	cfg.Redis = b.clientWith(t, hook)
	ran := make(chan string, 2)
	var first atomic.Bool
	r := b.start(t, cfg, map[string]worker.HandlerFunc{
		"h": func(ctx context.Context, task *worker.Task) (any, error) {
			ran <- task.ID
			if first.CompareAndSwap(false, true) {
				// The first task holds the one slot until the other
				// loop's message waits for it.
				select {
				case w := <-waiting:
					other := map[string]string{"a": "b", "b": "a"}[task.ID]
					if w.task != other {
						t.Errorf("%s waits for a slot, want %s", w.task, other)
					}
					if w.claimed {
						t.Errorf("%s waits for the slot %s holds with its task claimed", w.task, task.ID)
					}
					if rec, err := b.db.TaskRecord(b.ctx, task.Run, other); err != nil || rec.Status != events.TaskStatusDispatched {
						t.Errorf("%s waits for a slot: its task is %q (%v), want dispatched", other, rec.Status, err)
					}
					// A cancel of the run reaches the waiting message:
					// its claim, when its turn comes, is refused.
					if err := task.CancelRun("stop"); err != nil {
						t.Errorf("CancelRun: %v", err)
					}
				case <-ctx.Done():
					t.Error("no message waited for the busy slot")
				}
			}
			return "ok", nil
		},
	})
	var run string
	select {
	case run = <-submitted:
	case <-b.ctx.Done():
		t.Fatal("the worker's loops never both blocked")
	}
	b.waitFor(t, run, "0", isType(events.RunCancelled))
	// Until both messages are acked: the second one's claim was refused.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for _, q := range hook.queues {
		for {
			p, err := b.c.XPending(b.ctx, q, rdb.GroupWorkers).Result()
			if err != nil {
				t.Fatal(err)
			}
			if p.Count == 0 {
				break
			}
			select {
			case <-tick.C:
			case <-b.ctx.Done():
				t.Fatalf("%s: %d messages still pending", q, p.Count)
			}
		}
	}
	r.wait(t)
	close(ran)
	var got []string
	for id := range ran {
		got = append(got, id)
	}
	if len(got) != 1 {
		t.Errorf("handlers ran for %v; want only the first (the run was cancelled while the second waited)", got)
	}
}

// readStopsWorker runs do on the first blocking XREADGROUP, then sends the
// read with a context that is not cancelled: a read already on the wire
// when its worker stops (go-redis does not cut it short).
type readStopsWorker struct {
	passDialsAndPipelines
	do   func()
	once *sync.Once
}

func (h readStopsWorker) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if isBlockingRead(cmd) {
			first := false
			h.once.Do(func() { first = true })
			if first {
				h.do()
				return next(context.WithoutCancel(ctx), cmd)
			}
		}
		return next(ctx, cmd)
	}
}

// A message that a blocking read sent before the worker stopped returns
// after the stop is given back at once, not claimed and run in the drain
// (found by a review: the fetch loop started what such a read returned on
// the slots the drain had freed).
func TestAReadThatReturnsAfterTheStopIsGivenBack(t *testing.T) {
	t.Parallel()
	b := setup(t)
	stop := make(chan context.CancelFunc, 1)
	submitted := make(chan string, 1)
	submit := b.submitTo(t, submitted, events.TaskSpec{ID: "a", Handler: "h"})
	cfg := b.config("w-stopped")
	cfg.Concurrency = 1
	cfg.Redis = b.clientWith(t, readStopsWorker{once: &sync.Once{}, do: func() {
		(<-stop)() // the worker stops while its read is on the wire...
		submit()   // ...and a run arrives before the read returns
	}})
	ran := make(chan string, 1)
	r := b.start(t, cfg, map[string]worker.HandlerFunc{
		"h": func(ctx context.Context, task *worker.Task) (any, error) { ran <- task.ID; return "ok", nil },
	})
	stop <- r.stop
	var run string
	select {
	case run = <-submitted:
	case <-b.ctx.Done():
		t.Fatal("the worker never blocked on its read")
	}
	select {
	case <-r.done:
	case <-b.ctx.Done():
		t.Fatal("Run did not return")
	}
	select {
	case id := <-ran:
		t.Errorf("the stopped worker claimed and ran %s, read after its stop", id)
	default:
	}
	for _, q := range b.db.K.Queues(0, worker.DefaultPool) {
		p, err := b.c.XPendingExt(b.ctx, &redis.XPendingExtArgs{Stream: q, Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 10, Consumer: "w-stopped"}).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(p) > 0 {
			t.Errorf("%s: %d messages left pending for the stopped worker (they wait a lease for a reclaim)", q, len(p))
		}
	}
	b.start(t, b.config("w-next"), map[string]worker.HandlerFunc{
		"h": func(ctx context.Context, task *worker.Task) (any, error) { return "ok", nil },
	})
	if _, end := b.waitEnd(t, run); end.Status != projector.RunSucceeded {
		t.Errorf("run %s, want succeeded", end.Status)
	}
}
