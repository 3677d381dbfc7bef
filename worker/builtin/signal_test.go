package builtin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/internal/testlog"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/jonboulle/clockwork"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

// goleak proves that every signal loop ends with its worker.
func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Wrap(m)) }

// bundle is a namespace with a projector, a client and the workers a
// test starts.
type bundle struct {
	ctx    context.Context
	rc     *redis.Client
	ns     string
	client *graflow.Client
	wg     sync.WaitGroup
}

func setup(t *testing.T) *bundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	b := &bundle{ctx: ctx, rc: redistest.Client(t), ns: redistest.Namespace(t)}
	p, err := projector.New(projector.Config{Redis: b.rc, Namespace: b.ns, FeedBlock: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if b.client, err = graflow.NewClient(graflow.Config{Redis: b.rc, Namespace: b.ns}); err != nil {
		t.Fatal(err)
	}
	pctx, stop := context.WithCancel(context.Background())
	b.wg.Go(func() { _ = p.Run(pctx) })
	t.Cleanup(func() { stop(); b.wg.Wait(); cancel() })
	return b
}

// worker starts a worker with the built-in handlers until stop is
// called or the test ends; Run's error is sent on the channel.
func (b *bundle) worker(t *testing.T, cfg worker.Config) (stop func(), done <-chan error) {
	t.Helper()
	if cfg.Redis == nil {
		cfg.Redis = b.rc
	}
	cfg.Namespace = b.ns
	cfg.FetchBlock = 200 * time.Millisecond
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	builtin.Register(w)
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	b.wg.Go(func() { ch <- w.Run(ctx) })
	t.Cleanup(cancel)
	return cancel, ch
}

// waitFor follows run's log until ok holds for an event.
func (b *bundle) waitFor(t *testing.T, run string, ok func(events.Event) bool) {
	t.Helper()
	found := errors.New("found")
	if err := b.client.Follow(b.ctx, run, graflow.FollowOptions{Block: time.Second}, func(e events.Event) error {
		if ok(e) {
			return found
		}
		return nil
	}); !errors.Is(err, found) {
		t.Fatalf("run %s: the event awaited never came: %v", run, err)
	}
}

func (b *bundle) end(t *testing.T, run string) *graflow.RunInfo {
	t.Helper()
	info, err := b.client.Wait(b.ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// Forty tasks of twenty runs wait on one worker whose Redis pool has six
// connections: the worker's signal loop blocks on all their logs in one
// XREAD, so one connection is blocked for them all (CLIENT LIST says so).
// A blocked read holds its connection: a read of its own per wait took
// all six (the pool's cap), and the worker's other commands queued
// behind them. No task loses its lease, and each run's sum gets both of
// its signals' payloads.
func TestManyWaitsShareOneWorkerConnection(t *testing.T) {
	t.Parallel()
	b := setup(t)
	o := b.rc.Options()
	name := "approvals-" + b.ns // names its connections in CLIENT LIST
	small := redis.NewClient(&redis.Options{Addr: o.Addr, Username: o.Username, Password: o.Password, DB: o.DB,
		PoolSize: 6, PoolTimeout: time.Second, ClientName: name})
	t.Cleanup(func() { _ = small.Close() })
	b.worker(t, worker.Config{Redis: small, ID: "w-approvals", Concurrency: 64, Lease: 1500 * time.Millisecond})

	const runs = 20
	ids := make([]string, runs)
	for i := range ids {
		wf := graflow.NewWorkflow("approvals")
		a := wf.Task("a", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "first"})
		c := wf.Task("b", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "second", Timeout: "1h"})
		wf.Task("sum", builtin.Sum).After(a, c)
		run, err := b.client.Submit(b.ctx, wf, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = run
	}
	for _, run := range ids { // every task waiting: its progress note was sent with a heartbeat
		waiting := map[string]bool{}
		b.waitFor(t, run, func(e events.Event) bool {
			var hb events.TaskHeartbeatBody
			if e.Type == events.TaskHeartbeat && e.DecodeBody(&hb) == nil && strings.HasPrefix(hb.Progress, "waiting for signal ") {
				waiting[e.Task] = true
			}
			return len(waiting) == 2
		})
	}
	most := 0
	for range 3 {
		list, err := b.rc.ClientList(b.ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, l := range strings.Split(list, "\n") {
			// Blocked now (flag b) in XREAD: cmd= is a connection's last
			// command, and an idle one whose last read returned says xread
			// too.
			if strings.Contains(l, " name="+name+" ") && strings.Contains(l, " cmd=xread ") && blocked(l) {
				n++
			}
		}
		most = max(most, n)
	}
	st := small.PoolStats()
	t.Logf("40 tasks waiting: %d of the worker's %d connections blocked in XREAD", most, st.TotalConns)
	if most > 1 {
		t.Errorf("%d of the worker's connections block in XREAD for 40 waits, want 1", most)
	}
	for i, run := range ids {
		if err := b.client.Signal(b.ctx, run, "first", i); err != nil {
			t.Fatal(err)
		}
		if err := b.client.Signal(b.ctx, run, "second", 1000); err != nil {
			t.Fatal(err)
		}
	}
	for i, run := range ids {
		info := b.end(t, run)
		if !info.Succeeded() || string(info.Task("sum").Result) != fmt.Sprint(1000+i) {
			t.Fatalf("run %d: %s, sum = %s, want succeeded with %d", i, info.Status, info.Task("sum").Result, 1000+i)
		}
		evs, err := b.client.Log(b.ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Type == events.TaskReclaimed || e.Type == events.ResultRejected {
				t.Errorf("run %d: %s of %s: a waiting task lost its lease", i, e.Type, e.Task)
			}
		}
	}
}

// Bad args are refused at submit, naming the task and what to write; a
// run written without the submit's checks (an old client, a hand-made
// log) gets them from the handler: the task fails at once and for good
// (its retries unused).
func TestWaitSignalBadArgsFailForGood(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.worker(t, worker.Config{ID: "w-args", Concurrency: 8})
	wf := graflow.NewWorkflow("bad-args")
	cases := map[string]struct {
		args   any
		submit string // the submit's message
		want   string // the handler's
	}{
		"none":       {nil, `args : EOF`, "args need a signal name"},
		"no-name":    {map[string]any{"timeout": "1h"}, `invalid signal: name ""`, "args need a signal name"},
		"misspelt":   {map[string]any{"name": "ok", "timout": "1h"}, `unknown field "timout"`, `unknown field "timout"`},
		"bad-time":   {map[string]any{"name": "ok", "timeout": "soon"}, `timeout "soon": want a positive Go duration`, `timeout "soon": want a positive Go duration`},
		"negative":   {map[string]any{"name": "ok", "timeout": "-1h"}, `timeout "-1h"`, `timeout "-1h"`},
		"bad-name":   {map[string]any{"name": "a b"}, `invalid signal: name "a b"`, `invalid signal: name "a b"`},
		"not-object": {[]int{1}, "cannot unmarshal array", "cannot unmarshal array"},
	}
	for id, c := range cases {
		task := wf.Task(id, builtin.WaitSignal).Retries(2)
		if c.args != nil {
			task.Args(c.args)
		}
	}
	_, err := b.client.Submit(b.ctx, wf, nil)
	if !errors.Is(err, scheduler.ErrInvalidOption) {
		t.Fatalf("submit = %v, want ErrInvalidOption", err)
	}
	for id, c := range cases {
		if want := fmt.Sprintf("task %q: @wait_signal: ", id); !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), c.submit) {
			t.Errorf("the submit's error does not name task %s and %q: %v", id, c.submit, err)
		}
	}

	spec, err := wf.Spec(nil)
	if err != nil {
		t.Fatal(err)
	}
	run := "bad-args-" + ulid.Make().String()
	ev := events.Event{ID: ulid.Make().String(), Type: events.RunSubmitted, Time: time.Now()}.WithBody(spec)
	if _, _, err := rdb.New(b.rc, b.ns).Submit(b.ctx, run, ev, spec); err != nil {
		t.Fatal(err)
	}
	info := b.end(t, run)
	for id, c := range cases {
		task := info.Task(id)
		if task.Status != "failed" || task.Attempt != 1 || !strings.Contains(task.Error, c.want) {
			t.Errorf("task %s: %s at attempt %d (%q), want failed at attempt 1 with %q", id, task.Status, task.Attempt, task.Error, c.want)
		}
	}
}

// The timeout counts from the task's dispatch, not from when a worker
// started waiting: a run submitted (dispatched) 59 min 58 s ago with a
// timeout of 1 h fails within seconds, for good. Requeued, the task
// waits again (its new dispatch starts a new hour) and takes the signal.
func TestWaitSignalTimeoutCountsFromTheDispatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	past, err := graflow.NewClient(graflow.Config{Redis: b.rc, Namespace: b.ns,
		Clock: clockwork.NewFakeClockAt(time.Now().Add(-time.Hour + 2*time.Second))})
	if err != nil {
		t.Fatal(err)
	}
	wf := graflow.NewWorkflow("late")
	wf.Task("sum", builtin.Sum).After(wf.Task("approve", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "approve", Timeout: "1h"}))
	run, err := past.Submit(b.ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.worker(t, worker.Config{ID: "w-late"})
	info := b.end(t, run)
	if got := info.Task("approve"); info.Status != "failed" || got.Status != "failed" || got.Error != "no signal approve within 1h" {
		t.Fatalf("run %s, approve %s: %q; want failed: no signal approve within 1h", info.Status, got.Status, got.Error)
	}

	if err := b.client.Requeue(b.ctx, run, "approve"); err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, run, func(e events.Event) bool {
		return e.Type == events.TaskClaimed && e.Task == "approve" && e.Attempt == 2
	})
	if err := b.client.Signal(b.ctx, run, "approve", 7); err != nil {
		t.Fatal(err)
	}
	info = b.end(t, run)
	if !info.Succeeded() || string(info.Task("sum").Result) != `7` {
		t.Fatalf("after the requeue and the signal: %s, sum = %s", info.Status, info.Task("sum").Result)
	}
}

// A worker that stops while a task waits hands the task back after its
// drain timeout; another worker takes it over and the wait goes on there.
func TestAWaitHandedBackGoesOnElsewhere(t *testing.T) {
	t.Parallel()
	b := setup(t)
	stop, done := b.worker(t, worker.Config{ID: "w-leaving", DrainTimeout: 100 * time.Millisecond})
	wf := graflow.NewWorkflow("handover")
	wf.Task("approve", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "go", Timeout: "1h"})
	run, err := b.client.Submit(b.ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, run, func(e events.Event) bool { return e.Type == events.TaskClaimed && e.Worker == "w-leaving" })
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-b.ctx.Done():
		t.Fatal("the worker did not stop")
	}
	b.waitFor(t, run, func(e events.Event) bool { return e.Type == events.TaskReclaimed && e.Task == "approve" })
	b.worker(t, worker.Config{ID: "w-staying"})
	b.waitFor(t, run, func(e events.Event) bool { return e.Type == events.TaskClaimed && e.Worker == "w-staying" })
	if err := b.client.Signal(b.ctx, run, "go", json.RawMessage(`"went"`)); err != nil {
		t.Fatal(err)
	}
	if info := b.end(t, run); !info.Succeeded() || string(info.Task("approve").Result) != `"went"` {
		t.Fatalf("run %s, result %s", info.Status, info.Task("approve").Result)
	}
}

// The submit checks @wait_signal's arguments under the handler's name.
func TestWaitSignalNameIsTheSchedulers(t *testing.T) {
	if builtin.WaitSignal != scheduler.WaitSignalHandler {
		t.Fatalf("builtin.WaitSignal %q, scheduler.WaitSignalHandler %q: the submit would not check its args", builtin.WaitSignal, scheduler.WaitSignalHandler)
	}
}

// blocked reports whether a CLIENT LIST line's flags hold b (blocked).
func blocked(line string) bool {
	for _, f := range strings.Fields(line) {
		if flags, ok := strings.CutPrefix(f, "flags="); ok {
			return strings.Contains(flags, "b")
		}
	}
	return false
}

// One run whose log refuses reads (its key replaced by hand with another
// type) failed the signal waits of every run of its partition: the
// worker's one XREAD over their logs failed, and every waiting task
// failed with it (found by an audit). Only the bad run's waits fail; the
// other run's wait gets its signal.
func TestABadLogFailsTheSignalWaitsOfItsRunOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	refused := testlog.NewLineSignal("signal loop: read the logs of waiting tasks")
	lg := zerolog.New(refused)
	b.worker(t, worker.Config{ID: "w-bad-log", Concurrency: 4, Lease: 1500 * time.Millisecond, Logger: &lg})
	submit := func() string {
		wf := graflow.NewWorkflow("approval")
		wf.Task("a", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "go"})
		run, err := b.client.Submit(b.ctx, wf, nil)
		if err != nil {
			t.Fatal(err)
		}
		b.waitFor(t, run, func(e events.Event) bool {
			var hb events.TaskHeartbeatBody
			return e.Type == events.TaskHeartbeat && e.DecodeBody(&hb) == nil && strings.HasPrefix(hb.Progress, "waiting for signal ")
		})
		return run
	}
	bad, good := submit(), submit()
	k := rdb.NewKeys(b.ns)
	if k.Partition(bad) != k.Partition(good) {
		t.Fatalf("runs in partitions %d and %d: one XREAD reads them only in one", k.Partition(bad), k.Partition(good))
	}
	log := k.RunLog(bad)
	if err := b.rc.Del(b.ctx, log).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.rc.Set(b.ctx, log, "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	select { // the worker's read of both logs was refused
	case <-refused.Seen:
	case <-b.ctx.Done():
		t.Fatal("the signal loop never read the bad log")
	}
	if err := b.client.Signal(b.ctx, good, "go", 7); err != nil {
		t.Fatal(err)
	}
	info := b.end(t, good)
	if !info.Succeeded() || string(info.Task("a").Result) != "7" {
		t.Fatalf("the good run: %s, a = %s (%s); want succeeded with 7", info.Status, info.Task("a").Result, info.Task("a").Error)
	}
}
