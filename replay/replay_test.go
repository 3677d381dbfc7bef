package replay_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// env is one namespace of the shared Redis with the clients a test needs.
type env struct {
	t      *testing.T
	rdb    *redis.Client
	ns     string
	client *graflow.Client
	rc     *graflow.Client
}

// newEnv returns a fresh namespace; nothing runs in it yet.
func newEnv(t *testing.T) *env {
	t.Helper()
	rdb := redistest.Client(t)
	return envIn(t, rdb, redistest.Namespace(t))
}

func envIn(t *testing.T, rdb *redis.Client, ns string) *env {
	t.Helper()
	c, err := graflow.NewClient(graflow.Config{Redis: rdb, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := graflow.NewClient(graflow.Config{Redis: rdb, Namespace: ns, ID: "replay-test"})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, rdb: rdb, ns: ns, client: c, rc: rc}
}

// start runs a projector and workers (ids given) in the env's namespace
// until the test ends, and returns once every worker has registered.
// configure, if set, adjusts each worker (extra handlers) after the
// built-ins are registered.
func (e *env) start(workers []string, pools []string, configure func(*worker.Worker)) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	p, err := projector.New(projector.Config{Redis: e.rdb, Namespace: e.ns, ID: "proj-" + e.ns, FeedBlock: 200 * time.Millisecond,
		RetryInitial: 10 * time.Millisecond, RetryMax: 40 * time.Millisecond})
	if err != nil {
		e.t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = p.Run(ctx) }()
	var up []<-chan struct{}
	for _, id := range workers {
		reg := registered{up: make(chan struct{})}
		up = append(up, reg.up)
		w, err := worker.New(worker.Config{Redis: e.rdb, Namespace: e.ns, ID: id, Pools: pools, Concurrency: 4,
			FetchBlock: 200 * time.Millisecond, DrainTimeout: 200 * time.Millisecond, Metrics: &reg})
		if err != nil {
			e.t.Fatal(err)
		}
		builtin.Register(w)
		if configure != nil {
			configure(w)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = w.Run(ctx) }()
	}
	e.t.Cleanup(func() { cancel(); wg.Wait() })
	// A worker's runs may all be taken by another that started first: a
	// test that lists the registry waits for each record, not for work.
	timeout := time.After(30 * time.Second)
	for i, c := range up {
		select {
		case <-c:
		case <-timeout:
			e.t.Fatalf("worker %s never registered", workers[i])
		}
	}
}

// registered observes a worker until its heartbeat loop first goes round,
// which it does once the worker has registered.
type registered struct {
	worker.NopObserver
	once sync.Once
	up   chan struct{}
}

func (r *registered) Alive(loop string, _ time.Duration) {
	if loop == "worker.heartbeat" {
		r.once.Do(func() { close(r.up) })
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// runToEnd submits wf and waits for the run to end.
func (e *env) runToEnd(ctx context.Context, wf *graflow.Workflow, opts ...graflow.SubmitOption) (string, *graflow.RunInfo) {
	e.t.Helper()
	run, err := e.client.Submit(ctx, wf, map[string]any{"source": "test"}, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := e.client.Wait(ctx, run)
	if err != nil {
		e.t.Fatalf("wait for run %s: %v", run, err)
	}
	return run, info
}

// waitFor follows run's log until pred holds for the events seen so far.
func (e *env) waitFor(ctx context.Context, run string, what string, pred func([]events.Event) bool) []events.Event {
	e.t.Helper()
	var seen []events.Event
	errDone := errorString("done")
	err := e.rc.Follow(ctx, run, graflow.FollowOptions{Block: 200 * time.Millisecond}, func(ev events.Event) error {
		seen = append(seen, ev)
		if pred(seen) {
			return errDone
		}
		return nil
	})
	if !errors.Is(err, errDone) {
		e.t.Fatalf("run %s: waiting for %s: %v (saw %d events)", run, what, err, len(seen))
	}
	return seen
}

type errorString string

func (e errorString) Error() string { return string(e) }

// has reports whether evs holds an event of type typ for task.
func has(evs []events.Event, typ events.Type, task string) bool {
	for _, e := range evs {
		if e.Type == typ && e.Task == task {
			return true
		}
	}
	return false
}

// sequence is a → b → c with echo handlers.
func sequence() *graflow.Workflow {
	wf := graflow.NewWorkflow("sequence")
	a := wf.Task("a", builtin.Echo).Args(map[string]any{"value": 1})
	b := wf.Task("b", builtin.Echo).Args(map[string]any{"value": 2}).After(a)
	wf.Task("c", builtin.Sum).After(b)
	return wf
}

// failingSequence is sequence whose last task c fails for good: the run
// fails and keeps its state hashes (a succeeded run keeps only its log),
// which the tests that corrupt them need.
func failingSequence() *graflow.Workflow {
	wf := graflow.NewWorkflow("failing-sequence")
	a := wf.Task("a", builtin.Echo).Args(map[string]any{"value": 1})
	b := wf.Task("b", builtin.Echo).Args(map[string]any{"value": 2}).After(a)
	wf.Task("c", builtin.Fail).Args(map[string]any{"permanent": true}).After(b)
	return wf
}

// fanout is extract → transform-1..3 → load, plus a flaky task that fails
// twice before it succeeds (3 attempts allowed).
func fanout() *graflow.Workflow {
	wf := graflow.NewWorkflow("fanout")
	ex := wf.Task("extract", builtin.Echo).Args(map[string]any{"value": 1})
	g := wf.FanOut(ex, "transform", builtin.Sleep, 3, func(i int) any { return map[string]any{"ms": 5 * i, "value": i + 1} })
	load := wf.Task("load", builtin.Sum)
	g.Then(load)
	wf.Task("flaky", builtin.Flaky).Args(map[string]any{"fail": 2, "value": "ok"}).Retries(2).After(ex)
	return wf
}

func problemsOf(r *replay.Report) string {
	if r.OK() {
		return "none"
	}
	return r.Err().Error()
}
