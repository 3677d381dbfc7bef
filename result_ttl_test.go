package graflow_test

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/jonboulle/clockwork"
)

// A result with a TTL expires: the projector deletes the stored value at
// the due time; Client.Result then returns ErrResultExpired, Status shows
// the result as expired, a dependent task that starts afterwards fails
// for good with ErrResultExpired (the gate holds it until then), and the
// log keeps the task_succeeded with its result: the run verifies.
func TestResultTTLExpiresTheStoredResult(t *testing.T) {
	t.Parallel()
	s := newSignalStack(t)
	wf := graflow.NewWorkflow("ttl")
	a := wf.Task("a", builtin.Echo).Args(map[string]any{"value": "secret"}).ResultTTL(time.Millisecond)
	gate := wf.Task("gate", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "go"})
	wf.Task("b", "read").After(a, gate)
	run, err := s.client.Submit(s.ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	succeeded := waitForEvent(t, s.client, run, func(e events.Event) bool { return e.Type == events.TaskSucceeded && e.Task == "a" })
	// The projector's mover deletes the value once due: wait for it.
	state := rdb.NewKeys(s.ns).RunState(run)
	for {
		n, err := s.rdb.HExists(s.ctx, state, rdb.ResultField("a")).Result()
		if err != nil {
			t.Fatal(err)
		}
		if !n {
			break
		}
		select {
		case <-s.ctx.Done():
			t.Fatal("a's result was never deleted")
		case <-time.After(5 * time.Millisecond):
		}
	}
	if _, err := s.client.Result(s.ctx, run, "a"); !errors.Is(err, graflow.ErrResultExpired) {
		t.Fatalf("Result(a) = %v, want ErrResultExpired", err)
	}
	if err := s.client.Signal(s.ctx, run, "go", true); err != nil {
		t.Fatal(err)
	}
	info, err := s.client.Wait(s.ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if info.Status != "failed" || info.FailedTask != "b" || !strings.Contains(info.Task("b").Error, graflow.ErrResultExpired.Error()) {
		t.Fatalf("run %s, failed task %q: %q; want b failed on the expired result", info.Status, info.FailedTask, info.Task("b").Error)
	}
	if got := info.Task("b").Attempt; got != 1 {
		t.Errorf("b ran %d attempts; an expired result is permanent", got)
	}
	ta := info.Task("a")
	want := succeeded.Time.Add(time.Millisecond).UTC()
	if !ta.ResultExpired || ta.Result != nil || ta.ResultExpiresAt == nil || !ta.ResultExpiresAt.Equal(want) {
		t.Errorf("status of a: expired %v, result %s, expires %v; want expired at %v with no result", ta.ResultExpired, ta.Result, ta.ResultExpiresAt, want)
	}
	var b events.TaskSucceededBody
	if err := succeeded.DecodeBody(&b); err != nil || string(b.Result) != `"secret"` {
		t.Errorf("the log's task_succeeded holds %s (%v), want the result kept", b.Result, err)
	}
	s.sound(t, run)
}

// Within its TTL a result reads as any other: the dependent gets it,
// Client.Result returns it, Status shows when it expires.
func TestResultTTLKeepsTheResultUntilDue(t *testing.T) {
	t.Parallel()
	s := newSignalStack(t)
	wf := graflow.NewWorkflow("ttl-long")
	a := wf.Task("a", builtin.Echo).Args(map[string]any{"value": 42}).ResultTTL(time.Hour)
	wf.Task("b", "read").After(a)
	run, info := s.runToEnd(t, wf)
	if !info.Succeeded() {
		t.Fatalf("run %s: %s: %s", info.Status, info.FailedTask, info.Cause)
	}
	var got map[string]json.RawMessage
	if err := json.Unmarshal(info.Task("b").Result, &got); err != nil || string(got["a"]) != "42" {
		t.Errorf("b saw %s (%v), want a's 42", info.Task("b").Result, err)
	}
	if v, err := s.client.Result(s.ctx, run, "a"); err != nil || string(v) != "42" {
		t.Errorf("Result(a) = %s, %v; want 42", v, err)
	}
	ta := info.Task("a")
	if ta.ResultExpired || ta.ResultExpiresAt == nil || time.Until(*ta.ResultExpiresAt) < 50*time.Minute {
		t.Errorf("status of a: expired %v, expires %v; want in about an hour", ta.ResultExpired, ta.ResultExpiresAt)
	}
	if _, err := s.client.Result(s.ctx, run, "nope"); !errors.Is(err, graflow.ErrNoResult) {
		t.Errorf("Result(nope) = %v, want ErrNoResult", err)
	}
	// The run succeeded: it keeps only its log, and its results are read
	// from there, their TTL too. Two hours on, a's has expired.
	later, err := graflow.NewClient(graflow.Config{Redis: s.rdb, Namespace: s.ns, Clock: clockwork.NewFakeClockAt(time.Now().Add(2 * time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.rdb.Exists(s.ctx, rdb.NewKeys(s.ns).RunState(run)).Result(); err != nil || n != 0 {
		t.Errorf("the succeeded run's state hash (with its results) left (%d, %v), want none", n, err)
	}
	if _, err := later.Result(s.ctx, run, "a"); !errors.Is(err, graflow.ErrResultExpired) {
		t.Errorf("Result(a) two hours later = %v, want ErrResultExpired", err)
	}
	if v, err := later.Result(s.ctx, run, "b"); err != nil || len(v) == 0 {
		t.Errorf("Result(b) two hours later = %s, %v; want b's result (no TTL)", v, err)
	}
	if _, err := s.client.Result(s.ctx, "no-such-run", "a"); !errors.Is(err, graflow.ErrRunNotFound) {
		t.Errorf("Result of a missing run = %v, want ErrRunNotFound", err)
	}
	s.sound(t, run)
}

// examples/result-ttl.yaml runs as its comment says.
func TestResultTTLExampleFile(t *testing.T) {
	t.Parallel()
	s := newSignalStack(t)
	src, err := os.ReadFile("examples/result-ttl.yaml")
	if err != nil {
		t.Fatal(err)
	}
	spec, err := scheduler.ParseSpec(src)
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.Tasks[0].ResultTTLMS; got != (10 * time.Minute).Milliseconds() {
		t.Fatalf("quote's result_ttl = %d ms, want 10m", got)
	}
	run, err := s.client.SubmitSpec(s.ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.client.Wait(s.ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Succeeded() || string(info.Task("pay").Result) != "1400" || info.Task("quote").ResultExpiresAt == nil {
		t.Fatalf("run %s: pay %s, quote expires %v; want succeeded, 1400, an expiry", info.Status, info.Task("pay").Result, info.Task("quote").ResultExpiresAt)
	}
}
