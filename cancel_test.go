package graflow_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker"
)

// cancelStack is a projector and one worker whose "block" handler runs
// until its context ends and reports the cause.
type cancelStack struct {
	bundle
	started chan string // task ids whose handler started
	causes  chan error  // context.Cause of each "block" handler that ended
	ran     chan string // task ids of "never" handlers (must stay empty)
}

const cancelHeartbeat = 200 * time.Millisecond

func newCancelStack(t *testing.T) cancelStack {
	t.Helper()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	p, err := projector.New(projector.Config{Redis: rc, Namespace: ns, FeedBlock: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s := cancelStack{started: make(chan string, 16), causes: make(chan error, 16), ran: make(chan string, 16)}
	w, err := worker.New(worker.Config{Redis: rc, Namespace: ns, ID: "wc", Concurrency: 1, FetchBlock: 200 * time.Millisecond,
		HeartbeatInterval: cancelHeartbeat, DrainTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("block", worker.HandlerFunc(func(ctx context.Context, task *worker.Task) (any, error) {
		s.started <- task.ID
		<-ctx.Done()
		s.causes <- context.Cause(ctx)
		return "late", nil // a result after the cancel: must be rejected
	}))
	w.Handle("self-cancel", worker.HandlerFunc(func(ctx context.Context, task *worker.Task) (any, error) {
		if err := task.CancelRun("the data says stop"); err != nil {
			return nil, err
		}
		<-ctx.Done() // at once: CancelRun cancels the caller's context
		s.causes <- context.Cause(ctx)
		return nil, ctx.Err()
	}))
	w.Handle("never", worker.HandlerFunc(func(ctx context.Context, task *worker.Task) (any, error) {
		s.ran <- task.ID
		return nil, nil
	}))
	wg.Add(2)
	go func() { defer wg.Done(); _ = p.Run(ctx) }()
	go func() { defer wg.Done(); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	c, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	s.bundle = bundle{rdb: rc, ns: ns, client: c}
	return s
}

func receive[T any](t *testing.T, ch <-chan T, within time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(within):
		t.Fatalf("no %s within %v", what, within)
	}
	panic("unreachable")
}

// waitForEvent follows run's log until an event satisfies ok.
func waitForEvent(t *testing.T, c *graflow.Client, run string, ok func(events.Event) bool) events.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var found events.Event
	errFound := errors.New("found")
	err := c.Follow(ctx, run, graflow.FollowOptions{Block: time.Second}, func(e events.Event) error {
		if ok(e) {
			found = e
			return errFound
		}
		return nil
	})
	if !errors.Is(err, errFound) {
		t.Fatalf("run %s: event not seen: %v", run, err)
	}
	return found
}

// Cancel ends a run at once: the running handler's context is cancelled
// (cause worker.ErrRunCancelled) within a heartbeat interval and its late
// result is rejected; the queued task and the pending one never run; the
// run's history verifies; a second cancel is harmless and a finished run
// cannot be cancelled.
func TestCancelStopsQueuedAndRunningTasks(t *testing.T) {
	t.Parallel()
	s := newCancelStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wf := graflow.NewWorkflow("cancel")
	a := wf.Task("a", "block").Priority(9) // first; the worker runs one task at a time
	wf.Task("queued", "never")
	wf.Task("after", "never").After(a) // pending
	run, err := s.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := receive(t, s.started, 10*time.Second, "start of a"); got != "a" {
		t.Fatalf("started %q, want a (queued went first?)", got)
	}
	cancelled := time.Now()
	if err := s.client.Cancel(ctx, run, "operator said so"); err != nil {
		t.Fatal(err)
	}
	info, err := s.client.Wait(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Cancelled() || info.Cause != "operator said so" {
		t.Fatalf("after cancel: status %s cause %q", info.Status, info.Cause)
	}
	for _, task := range info.Tasks {
		if task.Status != string(events.TaskStatusCancelled) {
			t.Errorf("task %s is %s, want cancelled", task.ID, task.Status)
		}
	}
	cause := receive(t, s.causes, 2*cancelHeartbeat+5*time.Second, "cancellation of the running handler")
	if !errors.Is(cause, worker.ErrRunCancelled) {
		t.Fatalf("handler's context cause = %v, want worker.ErrRunCancelled", cause)
	}
	t.Logf("the handler saw the cancel %v after it was made (heartbeat interval %v)", time.Since(cancelled).Round(time.Millisecond), cancelHeartbeat)
	rej := waitForEvent(t, s.client, run, func(e events.Event) bool {
		var b events.ResultRejectedBody
		return e.Type == events.ResultRejected && e.Task == "a" && e.DecodeBody(&b) == nil && b.What == "result"
	})
	t.Logf("late result rejected: %s", rej.Body)

	if err := s.client.Cancel(ctx, run, "again"); err != nil {
		t.Fatalf("second cancel: %v", err)
	}
	evs := logEvents(t, s.bundle, run)
	var types []string
	for _, e := range evs {
		if e.Type == events.TaskClaimed && e.Task != "a" {
			t.Errorf("task %s was claimed after the cancel", e.Task)
		}
		if e.Type == events.RunCancelled || e.Type == events.TaskCancelled {
			types = append(types, string(e.Type)+" "+e.Task)
		}
	}
	want := []string{"run_cancelled ", "task_cancelled a", "task_cancelled after", "task_cancelled queued"}
	if !slices.Equal(types, want) {
		t.Errorf("cancel events = %q, want %q (one cancel, every open task)", types, want)
	}
	rep, err := replay.Analyze(run, evs)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) > 0 {
		t.Errorf("history problems: %+v", rep.Problems)
	}
	vr, err := s.client.Verify(ctx, run) // the state hash = the fold of the log
	if err != nil {
		t.Fatal(err)
	}
	if err := vr.Err(); err != nil {
		t.Errorf("verify: %v", err)
	}
	// A finished run cannot be cancelled; an unknown one is not found. Its
	// task x is queued behind "queued" on the same stream, and the worker
	// takes one message at a time, in order: when x runs, queued's message
	// was taken before it, and dropped (x is the first "never" to run).
	done := graflow.NewWorkflow("done")
	done.Task("x", "never")
	finished, err := s.client.Submit(ctx, done, nil)
	if err != nil {
		t.Fatal(err)
	}
	if id := receive(t, s.ran, 10*time.Second, "run of x"); id != "x" {
		t.Fatalf("task %s of the cancelled run ran", id)
	}
	if _, err := s.client.Wait(ctx, finished); err != nil {
		t.Fatal(err)
	}
	if err := s.client.Cancel(ctx, finished, ""); !errors.Is(err, graflow.ErrRunFinished) {
		t.Errorf("cancel of a succeeded run = %v, want ErrRunFinished", err)
	}
	if err := s.client.Cancel(ctx, "no-such-run", ""); !errors.Is(err, graflow.ErrRunNotFound) {
		t.Errorf("cancel of an unknown run = %v, want ErrRunNotFound", err)
	}
}

// A handler cancels its own run: its context ends at once, the run ends
// cancelled with the handler's reason, the rest never runs.
func TestAHandlerCancelsItsRun(t *testing.T) {
	t.Parallel()
	s := newCancelStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wf := graflow.NewWorkflow("self")
	wf.Task("rest", "never").After(wf.Task("check", "self-cancel"))
	run, err := s.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.client.Wait(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Cancelled() || info.Cause != "the data says stop" {
		t.Fatalf("status %s cause %q", info.Status, info.Cause)
	}
	if cause := receive(t, s.causes, 10*time.Second, "the handler's context"); !errors.Is(cause, worker.ErrRunCancelled) {
		t.Fatalf("cause %v", cause)
	}
	waitForEvent(t, s.client, run, func(e events.Event) bool { return e.Type == events.ResultRejected && e.Task == "check" })
	select {
	case id := <-s.ran:
		t.Errorf("task %s ran", id)
	default:
	}
}
