package graflow_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
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
)

// signalStack is a projector and a worker with the built-in handlers
// (@wait_signal among them), "show", which returns its upstream results,
// "read", which reads each of them, and "hold", which runs until the test
// releases it.
type signalStack struct {
	bundle
	ctx     context.Context
	holding chan string   // task ids of "hold" handlers that started
	release chan struct{} // closed: every "hold" handler returns
}

func newSignalStack(t *testing.T) *signalStack {
	t.Helper()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	runCtx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait(); cancel() })
	p, err := projector.New(projector.Config{Redis: rc, Namespace: ns, FeedBlock: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Redis: rc, Namespace: ns, ID: "w-signals", Pools: []string{"default", "approvals"}, Concurrency: 8, FetchBlock: 200 * time.Millisecond,
		HeartbeatInterval: 200 * time.Millisecond, DrainTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s := &signalStack{ctx: ctx, holding: make(chan string, 4), release: make(chan struct{})}
	builtin.Register(w)
	w.HandleFunc("show", func(ctx context.Context, t *worker.Task) (any, error) { return t.Upstream, nil })
	// read reads every upstream result as a handler must (BindUpstream),
	// so an expired one fails it (result TTL).
	w.HandleFunc("read", func(ctx context.Context, t *worker.Task) (any, error) {
		out := map[string]json.RawMessage{}
		for _, d := range t.Deps() {
			var v json.RawMessage
			if err := t.BindUpstream(d, &v); err != nil {
				return nil, err
			}
			out[d] = v
		}
		return out, nil
	})
	w.HandleFunc("hold", func(ctx context.Context, t *worker.Task) (any, error) {
		s.holding <- t.ID
		select {
		case <-s.release:
			return "released", nil
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	})
	wg.Go(func() { _ = p.Run(runCtx) })
	wg.Go(func() { _ = w.Run(runCtx) })
	c, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	s.bundle = bundle{rdb: rc, ns: ns, client: c}
	return s
}

// runToEnd submits wf (no input) and waits for the run to end.
func (s *signalStack) runToEnd(t *testing.T, wf *graflow.Workflow) (string, *graflow.RunInfo) {
	t.Helper()
	run, err := s.client.Submit(s.ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.client.Wait(s.ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	return run, info
}

// sound checks run's history with replay.Analyze and the live state with
// Verify, and returns its log.
func (s *signalStack) sound(t *testing.T, run string) []events.Event {
	t.Helper()
	evs := logEvents(t, s.bundle, run)
	a, err := replay.Analyze(run, evs)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Problems) > 0 {
		t.Errorf("run %s: history problems: %+v", run, a.Problems)
	}
	vr, err := s.client.Verify(s.ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if err := vr.Err(); err != nil {
		t.Errorf("run %s: verify: %v", run, err)
	}
	return evs
}

func seqOf(t *testing.T, evs []events.Event, ok func(events.Event) bool) string {
	t.Helper()
	for _, e := range evs {
		if ok(e) {
			return e.Seq
		}
	}
	t.Fatal("no such event in the log")
	return ""
}

// The approval step: two tasks wait for the signal "approve" and take its
// payload as their result; the successor gets it as their upstream
// result. Sending it again is refused (or harmless with the same id), and
// the run's history verifies.
func TestSignalApprovesAWaitingTask(t *testing.T) {
	t.Parallel()
	s := newSignalStack(t)
	wf := graflow.NewWorkflow("approval")
	prepare := wf.Task("prepare", builtin.Echo).Args(map[string]any{"value": map[string]int{"amount": 120}})
	approve := wf.Task("approve", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "approve", Timeout: "72h"}).After(prepare).Pool("approvals")
	audit := wf.Task("audit", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "approve"}).After(prepare).Pool("approvals")
	wf.Task("apply", "show").After(approve, audit)
	run, err := s.client.Submit(s.ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	waiting := map[string]bool{} // the progress note each wait sends with a heartbeat
	waitForEvent(t, s.client, run, func(e events.Event) bool {
		var hb events.TaskHeartbeatBody
		if e.Type == events.TaskHeartbeat && e.DecodeBody(&hb) == nil && hb.Progress == "waiting for signal approve" {
			waiting[e.Task] = true
		}
		return len(waiting) == 2
	})
	payload := json.RawMessage(`{"approved":true,"note":"within budget"}`)
	if err := s.client.SignalWith(s.ctx, run, "approve", payload, graflow.SignalOptions{ID: "ticket-7", By: "alice"}); err != nil {
		t.Fatal(err)
	}
	info, err := s.client.Wait(s.ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Succeeded() {
		t.Fatalf("run %s: task %s: %s", info.Status, info.FailedTask, info.Cause)
	}
	for _, id := range []string{"approve", "audit"} {
		if got := string(info.Task(id).Result); got != string(payload) {
			t.Errorf("%s's result = %s, want the payload %s", id, got, payload)
		}
	}
	var up map[string]json.RawMessage
	if err := json.Unmarshal(info.Task("apply").Result, &up); err != nil || string(up["approve"]) != string(payload) || string(up["audit"]) != string(payload) {
		t.Errorf("apply saw upstream %s (%v), want the payload from approve and audit", info.Task("apply").Result, err)
	}

	// Again with the same id: harmless, even now the run has ended.
	if err := s.client.SignalWith(s.ctx, run, "approve", payload, graflow.SignalOptions{ID: "ticket-7"}); err != nil {
		t.Errorf("the same signal id again: %v", err)
	}
	evs := s.sound(t, run)
	var got []events.SignalReceivedBody
	for _, e := range evs {
		if e.Type == events.SignalReceived {
			var b events.SignalReceivedBody
			if err := e.DecodeBody(&b); err != nil {
				t.Fatal(err)
			}
			got = append(got, b)
			if !strings.HasPrefix(e.Worker, "client-") {
				t.Errorf("signal_received written by %q, want the client", e.Worker)
			}
		}
	}
	if len(got) != 1 || got[0].ID != "ticket-7" || got[0].By != "alice" || got[0].Name != "approve" {
		t.Errorf("signals in the log: %+v, want approve (ticket-7, by alice) once", got)
	}
}

// A signal sent before the waiting task starts is not lost: the task
// finds it in the run's log when it starts and returns at once.
func TestASignalSentBeforeTheWaitIsTaken(t *testing.T) {
	t.Parallel()
	s := newSignalStack(t)
	wf := graflow.NewWorkflow("early")
	gate := wf.Task("gate", "hold")
	wf.Task("approve", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "approve", Timeout: "1h"}).After(gate)
	run, err := s.client.Submit(s.ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	receive(t, s.holding, 20*time.Second, "the gate's start") // approve is pending behind it
	if err := s.client.Signal(s.ctx, run, "approve", 42); err != nil {
		t.Fatal(err)
	}
	close(s.release)
	info, err := s.client.Wait(s.ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Succeeded() || string(info.Task("approve").Result) != "42" {
		t.Fatalf("run %s, approve = %s (%s), want succeeded with 42", info.Status, info.Task("approve").Result, info.Task("approve").Error)
	}
	evs := s.sound(t, run)
	sig := seqOf(t, evs, func(e events.Event) bool { return e.Type == events.SignalReceived })
	disp := seqOf(t, evs, func(e events.Event) bool { return e.Type == events.TaskDispatched && e.Task == "approve" })
	if projector.CompareSeq(sig, disp) >= 0 {
		t.Errorf("the signal (%s) was not sent before approve was dispatched (%s)", sig, disp)
	}
}

// With no signal in time the waiting task fails for good (its retries
// unused), naming the signal and the timeout; its successor is skipped.
func TestASignalThatNeverComesFailsTheTask(t *testing.T) {
	t.Parallel()
	s := newSignalStack(t)
	wf := graflow.NewWorkflow("unanswered")
	approve := wf.Task("approve", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "approve", Timeout: "300ms"}).Retries(2)
	wf.Task("apply", "show").After(approve)
	run, info := s.runToEnd(t, wf)
	a := info.Task("approve")
	if info.Status != "failed" || a.Status != "failed" || a.Attempt != 1 || a.Error != "no signal approve within 300ms" {
		t.Fatalf("run %s, approve %s at attempt %d: %q; want failed at attempt 1: no signal approve within 300ms", info.Status, a.Status, a.Attempt, a.Error)
	}
	if st := info.Task("apply").Status; st != "skipped" {
		t.Errorf("apply is %s, want skipped", st)
	}
	s.sound(t, run)
}

// Signals that cannot be delivered are refused with a typed error, and
// nothing is written.
func TestSignalErrors(t *testing.T) {
	t.Parallel()
	s := newSignalStack(t)
	wf := graflow.NewWorkflow("errors")
	wf.Task("gate", "hold")
	run, err := s.client.Submit(s.ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	receive(t, s.holding, 20*time.Second, "the gate's start")
	if err := s.client.Signal(s.ctx, run, "approve", "yes"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what    string
		run     string
		name    string
		payload any
		want    error
	}{
		{"a second signal of a name", run, "approve", "no", graflow.ErrSignalExists},
		{"an unknown run", "no-such-run", "approve", nil, graflow.ErrRunNotFound},
		{"a name starting with @", run, "@status", nil, graflow.ErrInvalidSignal},
		{"a name with a slash", run, "a/b", nil, graflow.ErrInvalidSignal},
		{"a payload that does not encode", run, "ok", make(chan int), graflow.ErrInvalidSignal},
		{"a payload that is not JSON", run, "ok", json.RawMessage(`{`), graflow.ErrInvalidSignal},
		{"a payload over 1 MiB", run, "ok", strings.Repeat("x", 1<<20), graflow.ErrInvalidSignal},
	} {
		if err := s.client.Signal(s.ctx, c.run, c.name, c.payload); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.what, err, c.want)
		}
	}
	close(s.release)
	if info, err := s.client.Wait(s.ctx, run); err != nil || !info.Succeeded() {
		t.Fatalf("run: %v, %v", info, err)
	}
	if err := s.client.Signal(s.ctx, run, "late", nil); !errors.Is(err, graflow.ErrRunFinished) || !strings.Contains(err.Error(), "succeeded") {
		t.Errorf("a signal to a finished run: %v, want ErrRunFinished (succeeded)", err)
	}
	n := 0
	for _, e := range s.sound(t, run) {
		if e.Type == events.SignalReceived {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d signals recorded, want the first only", n)
	}
}

// An approval step in Go: approve waits (on a pool of its own) for the
// signal "approve", whose payload is its result; pay runs after it.
// Deliver the signal with client.Signal(ctx, run, "approve", payload) or
// "graflow signal RUN approve --data JSON".
func Example_approval() {
	wf := graflow.NewWorkflow("approval")
	quote := wf.Task("quote", "billing.quote")
	approve := wf.Task("approve", builtin.WaitSignal).
		Args(builtin.WaitSignalArgs{Name: "approve", Timeout: "72h"}).After(quote).Pool("approvals")
	wf.Task("pay", "billing.pay").After(approve)

	spec, _ := wf.Spec(nil)
	printSpec(spec)
	// Output:
	// workflow approval
	//   quote (billing.quote)
	//   approve (@wait_signal) <- quote pool=approvals args={"name":"approve","timeout":"72h"}
	//   pay (billing.pay) <- approve
}
