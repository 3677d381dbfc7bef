package graflow_test

import (
	"context"
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
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
)

func TestMain(m *testing.M) { redistest.Main(m) }

type bundle struct {
	rdb    *redis.Client
	ns     string
	client *graflow.Client
}

// setup starts a projector and n in-process workers in a fresh namespace.
func setup(t *testing.T, workers int) bundle {
	t.Helper()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	p, err := projector.New(projector.Config{Redis: rc, Namespace: ns, FeedBlock: 200 * time.Millisecond, RetryInitial: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = p.Run(ctx) }()
	for i := 0; i < workers; i++ {
		w, err := worker.New(worker.Config{Redis: rc, Namespace: ns, ID: "w" + string(rune('a'+i)), Concurrency: 4, FetchBlock: 200 * time.Millisecond, DrainTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		builtin.Register(w)
		wg.Add(1)
		go func() { defer wg.Done(); _ = w.Run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	c, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	return bundle{rdb: rc, ns: ns, client: c}
}

func TestETLRunSucceeds(t *testing.T) {
	t.Parallel()
	b := setup(t, 3)
	wf := graflow.NewWorkflow("etl")
	ex := wf.Task("extract", builtin.Echo).Args(map[string]any{"value": 1})
	g := wf.FanOut(ex, "transform", builtin.Sleep, 4, func(i int) any { return map[string]any{"ms": 10, "value": i + 1} })
	g.Then(wf.Task("load", builtin.Sum))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, info := b.submitAndWait(ctx, t, wf)
	if !info.Succeeded() {
		t.Fatalf("run %s: %+v", info.Status, info)
	}
	if got := string(info.Task("load").Result); got != "10" {
		t.Fatalf("load result = %s, want 10", got)
	}
	t.Logf("events=%d elapsed=%v", info.Events, time.Since(start))
}

// logEvents reads a run's whole log.
func logEvents(t *testing.T, b bundle, run string) []events.Event {
	t.Helper()
	evs, err := rdb.New(b.rdb, b.ns).ReadLog(context.Background(), run, "-", "+", 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// submitAndWait submits wf and waits for the run to end.
func (b bundle) submitAndWait(ctx context.Context, t *testing.T, wf *graflow.Workflow) (string, *graflow.RunInfo) {
	t.Helper()
	run, err := b.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := b.client.Wait(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	return run, info
}

func TestRetriesBackOffThenSucceed(t *testing.T) {
	t.Parallel()
	b := setup(t, 2)
	wf := graflow.NewWorkflow("retry")
	wf.Task("flaky", builtin.Flaky).Args(map[string]any{"fail": 2, "value": 7}).Retries(2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run, info := b.submitAndWait(ctx, t, wf)
	if !info.Succeeded() || info.Task("flaky").Attempt != 3 || string(info.Task("flaky").Result) != "7" {
		t.Fatalf("want success on attempt 3 with result 7, got %+v", info.Task("flaky"))
	}
	var delays []int64
	for _, e := range logEvents(t, b, run) {
		if e.Type == events.TaskRetryScheduled {
			var body events.TaskRetryScheduledBody
			if err := e.DecodeBody(&body); err != nil {
				t.Fatal(err)
			}
			delays = append(delays, body.DelayMS)
		}
	}
	if len(delays) != 2 || delays[1] <= delays[0] {
		t.Fatalf("retry delays = %v, want two growing delays", delays)
	}
}

func TestPermanentFailureDeadLettersAndRequeueRunsAgain(t *testing.T) {
	t.Parallel()
	b := setup(t, 2)
	wf := graflow.NewWorkflow("dlq")
	a := wf.Task("a", builtin.Flaky).Args(map[string]any{"fail": 1, "permanent": true, "value": 2}).Retries(5)
	wf.Task("b", builtin.Sum).After(a)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run, info := b.submitAndWait(ctx, t, wf)
	if info.Status != "failed" || info.FailedTask != "a" || info.Task("a").Attempt != 1 || info.Task("b").Status != "skipped" {
		t.Fatalf("want run failed at a (1 attempt, permanent) with b skipped, got %+v", info)
	}
	dls, err := b.client.DeadLetters(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 || dls[0].Run != run || dls[0].Task != "a" {
		t.Fatalf("dead letters = %+v, want [%s a]", dls, run)
	}
	if err := b.client.Requeue(ctx, run, "a"); err != nil {
		t.Fatal(err)
	}
	if err := b.client.Requeue(ctx, run, "a"); err == nil {
		t.Fatal("second requeue of a task no longer failed: want an error")
	}
	info, err = b.client.Wait(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Succeeded() || info.Task("a").Attempt != 2 || string(info.Task("b").Result) != "2" {
		t.Fatalf("after requeue want success (a attempt 2, b = 2), got %+v", info)
	}
	if dls, _ := b.client.DeadLetters(ctx, 0); len(dls) != 0 {
		t.Fatalf("dead letters after requeue = %+v, want none", dls)
	}
}

func TestRepairRedispatchesTasksWhoseMessagesWereDeleted(t *testing.T) {
	t.Parallel()
	b := setup(t, 0) // a projector, no worker yet
	wf := graflow.NewWorkflow("repair")
	wf.Task("only", builtin.Echo).Args(map[string]any{"value": 5})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run, err := b.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	k := rdb.NewKeys(b.ns)
	// Wait for the dispatch to reach its queue, then lose it the way an
	// operator's XTRIM would.
	for last := "0"; ; {
		res, err := b.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{k.Queue(0, "default", 0), last}, Block: 5 * time.Second}).Result()
		if err != nil {
			t.Fatalf("waiting for the dispatch: %v", err)
		}
		if len(res) > 0 && len(res[0].Messages) > 0 {
			break
		}
	}
	// While its message is queued, a repair leaves it alone: a duplicate
	// for every queued task doubled the backlog.
	if rep, err := b.client.Repair(ctx, run); err != nil || len(rep.Redispatched) != 0 {
		t.Fatalf("repair of a queued task = %+v, %v; want nothing re-dispatched", rep, err)
	}
	if n := b.rdb.XLen(ctx, k.Queue(0, "default", 0)).Val(); n != 1 {
		t.Fatalf("%d queue messages after a repair of a queued task, want 1", n)
	}
	if err := b.rdb.XTrimMaxLen(ctx, k.Queue(0, "default", 0), 0).Err(); err != nil {
		t.Fatal(err)
	}
	rep, err := b.client.Repair(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Redispatched) != 1 || rep.Redispatched[0] != "only" {
		t.Fatalf("repair = %+v, want task only re-dispatched", rep)
	}
	startWorker(t, b, "late")
	info, err := b.client.Wait(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Succeeded() || string(info.Task("only").Result) != "5" {
		t.Fatalf("after repair want success with 5, got %+v", info)
	}
}

// A repair left a running task alone while its owner was registered,
// even when the owner held no queue entry of it (deleted while pending):
// once that owner died, nothing came back to the task. The repair a
// reclaimer requests on finding a deleted pending entry can also run
// before its dead holder's registry record expires.
func TestRepairHandsBackARunningTaskWhoseEntryItsOwnerNoLongerHolds(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	started := make(chan int64, 2)
	release := make(chan struct{})
	var calls sync.Mutex
	first := true
	// The fresh message the repair queues comes back to this worker, whose
	// fetch claims the task afresh while the first claim's handler still
	// runs (until a heartbeat finds that claim handed back). That message
	// runs once the stale attempt is over: it waited for its reclaim, a
	// lease later (a minute here, past the test's deadline).
	w, err := worker.New(worker.Config{Redis: b.rdb, Namespace: b.ns, ID: "holder", Concurrency: 4, FetchBlock: 200 * time.Millisecond,
		Lease: time.Minute, HeartbeatInterval: 100 * time.Millisecond, ReclaimInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w.HandleFunc("hold", func(ctx context.Context, task *worker.Task) (any, error) {
		started <- task.Epoch
		calls.Lock()
		wait := first
		first = false
		calls.Unlock()
		if wait {
			select { // the first claim's handler holds on
			case <-ctx.Done():
			case <-release:
			}
			return nil, errors.New("the first claim was let go")
		}
		return "again", nil
	})
	wctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(wctx) }()
	t.Cleanup(func() { close(release); stop(); <-done })
	wf := graflow.NewWorkflow("held")
	wf.Task("only", "hold")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := submitStarted(ctx, t, b.client, wf, started)
	// While its owner holds its entry, a repair leaves the claim alone.
	if rep, err := b.client.Repair(ctx, run); err != nil || len(rep.Redispatched) != 0 {
		t.Fatalf("repair of a held claim = %+v, %v; want nothing re-dispatched", rep, err)
	}
	// Its entry is deleted while it runs, the way an operator's XTRIM would.
	if err := b.rdb.XTrimMaxLen(ctx, rdb.NewKeys(b.ns).Queue(0, "default", 0), 0).Err(); err != nil {
		t.Fatal(err)
	}
	rep, err := b.client.Repair(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Redispatched) != 1 || rep.Redispatched[0] != "only" {
		t.Fatalf("repair = %+v, want the running task only handed back (its live owner holds no entry of it)", rep)
	}
	info, err := b.client.Wait(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Succeeded() || string(info.Task("only").Result) != `"again"` {
		t.Fatalf("after the repair want success with \"again\", got %+v", info)
	}
	// The repair's hand-back is the one task_reclaimed; the fresh
	// message's own claim (task_claimed) ran the task, not a reclaim.
	log, err := b.client.Log(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	var reclaims []string
	for _, e := range log {
		if e.Type == events.TaskReclaimed {
			reclaims = append(reclaims, string(e.Body))
		}
	}
	if len(reclaims) != 1 || !strings.Contains(reclaims[0], "handed back") {
		t.Errorf("task_reclaimed events %v; want the repair's hand-back alone", reclaims)
	}
}

// beats observes a worker's heartbeat loop: one value per round.
type beats struct {
	worker.NopObserver
	c chan struct{}
}

func (b beats) Alive(loop string, _ time.Duration) {
	if loop == "worker.heartbeat" {
		select {
		case b.c <- struct{}{}:
		default:
		}
	}
}

// A running task whose queue entry is deleted (XDEL, XTRIM) or acked by
// hand (XACK) while its holder lives, and whose holder then dies, runs on
// another worker. Deleted: the heartbeat's touch dropped the entry from
// the pending list, and nothing came back to the task; now the entry stays
// pending, a reclaimer finds it deleted and requests the repair, which
// hands the task back. Acked: nothing was pending to find; now the
// holder's heartbeats, finding its entry pending for nobody, request the
// repair.
func TestATaskWhoseEntryIsLostAndWhoseHolderDiesRunsElsewhere(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		lose func(ctx context.Context, rc *redis.Client, q string) error
	}{
		{"deleted", func(ctx context.Context, rc *redis.Client, q string) error { return rc.XTrimMaxLen(ctx, q, 0).Err() }},
		{"acked", func(ctx context.Context, rc *redis.Client, q string) error {
			p, err := rc.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: q, Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 1}).Result()
			if err != nil || len(p) != 1 {
				return fmt.Errorf("pending %v: %w", p, err)
			}
			return rc.XAck(ctx, q, rdb.GroupWorkers, p[0].ID).Err()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lostEntryRunsElsewhere(t, tc.lose)
		})
	}
}

func lostEntryRunsElsewhere(t *testing.T, lose func(ctx context.Context, rc *redis.Client, q string) error) {
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	life, stop := context.WithCancel(context.Background())
	t.Cleanup(func() { stop(); wg.Wait() })
	// Repair passes every 200 ms (FeedReclaimIdle / 3).
	p, err := projector.New(projector.Config{Redis: rc, Namespace: ns, FeedBlock: 100 * time.Millisecond, FeedReclaimIdle: 600 * time.Millisecond,
		RetryInitial: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = p.Run(life) }()
	client, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}

	// The holder has a client of its own, closed to kill it.
	hc := redistest.Client(t)
	started := make(chan string, 1)
	hb := beats{c: make(chan struct{}, 1)}
	holder, err := worker.New(worker.Config{Redis: hc, Namespace: ns, ID: "holder", FetchBlock: 100 * time.Millisecond,
		Lease: time.Second, HeartbeatInterval: 100 * time.Millisecond, ReclaimInterval: 100 * time.Millisecond, Metrics: hb,
		DrainTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	holder.HandleFunc("hold", func(ctx context.Context, task *worker.Task) (any, error) {
		started <- task.ID
		<-ctx.Done()
		return nil, context.Cause(ctx)
	})
	hctx, kill := context.WithCancel(context.Background())
	wg.Add(1)
	go func() { defer wg.Done(); _ = holder.Run(hctx) }()

	wf := graflow.NewWorkflow("lost")
	wf.Task("only", "hold")
	run := submitStarted(ctx, t, client, wf, started)
	if err := lose(ctx, rc, rdb.NewKeys(ns).Queue(0, "default", 0)); err != nil {
		t.Fatal(err)
	}
	for range 4 { // three whole heartbeat rounds after the loss
		select {
		case <-hb.c:
		case <-ctx.Done():
			t.Fatal("the holder stopped heartbeating")
		}
	}
	// The holder dies: nothing it sends arrives any more.
	if err := hc.Close(); err != nil {
		t.Fatal(err)
	}
	kill()

	w, err := worker.New(worker.Config{Redis: rc, Namespace: ns, ID: "rescuer", FetchBlock: 100 * time.Millisecond,
		Lease: time.Second, ReclaimInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w.HandleFunc("hold", func(ctx context.Context, task *worker.Task) (any, error) { return "rescued", nil })
	wg.Add(1)
	go func() { defer wg.Done(); _ = w.Run(life) }()
	info, err := client.Wait(ctx, run)
	if err != nil {
		t.Fatalf("the task of the dead holder never ran again: %v", err)
	}
	if !info.Succeeded() || string(info.Task("only").Result) != `"rescued"` {
		t.Fatalf("run %+v; want it succeeded by the rescuer", info)
	}
}

// submitStarted submits wf and waits for its first task to start (its
// handler sends on started).
func submitStarted[T any](ctx context.Context, t *testing.T, c *graflow.Client, wf *graflow.Workflow, started <-chan T) string {
	t.Helper()
	run, err := c.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("the task never started")
	}
	return run
}

// startWorker runs one more in-process worker until the test ends.
func startWorker(t *testing.T, b bundle, id string) { startWorkerWith(t, b, id, nil) }

// startWorkerWith runs one more in-process worker with the built-in
// handlers and those configure registers, serving pools (default: the
// default pool), until the test ends.
func startWorkerWith(t *testing.T, b bundle, id string, configure func(*worker.Worker), pools ...string) {
	t.Helper()
	w, err := worker.New(worker.Config{Redis: b.rdb, Namespace: b.ns, ID: id, Concurrency: 4, FetchBlock: 200 * time.Millisecond, Pools: pools})
	if err != nil {
		t.Fatal(err)
	}
	builtin.Register(w)
	if configure != nil {
		configure(w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestGCRemovesOnlyFinishedFullyProjectedRuns(t *testing.T) {
	t.Parallel()
	b := setup(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := graflow.NewWorkflow("done")
	done.Task("a", builtin.Noop)
	finished, err := b.client.Submit(ctx, done, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.client.Wait(ctx, finished); err != nil {
		t.Fatal(err)
	}
	slow := graflow.NewWorkflow("slow")
	slow.Task("s", builtin.Sleep).Args(map[string]any{"ms": 60000})
	running, err := b.client.Submit(ctx, slow, nil)
	if err != nil {
		t.Fatal(err)
	}
	// run_succeeded is appended by the same commit that clears @dirty, so
	// once Wait has seen it the run is collectable.
	rep, err := b.client.GC(ctx, graflow.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 1 || rep.Runs[0] != finished || rep.Events == 0 {
		t.Fatalf("gc = %+v, want exactly the finished run %s", rep, finished)
	}
	k := rdb.NewKeys(b.ns)
	if n, _ := b.rdb.Exists(ctx, k.RunKeys(finished)...).Result(); n != 0 {
		t.Fatalf("%d keys of the collected run remain", n)
	}
	if n, _ := b.rdb.Exists(ctx, k.RunLog(running)).Result(); n != 1 {
		t.Fatal("gc removed the running run's log")
	}
	if _, err := b.client.Status(ctx, finished); !errors.Is(err, graflow.ErrRunNotFound) {
		t.Fatalf("status of a collected run: %v, want ErrRunNotFound", err)
	}
}
