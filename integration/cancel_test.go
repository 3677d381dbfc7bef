package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/worker/builtin"
)

// TestCancelWithWorkerProcesses cancels a run with "graflow cancel" while
// worker processes run its tasks: "graflow wait" exits 6 with the reason,
// every running task's handler is fenced (its late outcome rejected), no
// task of the run is claimed after the cancel, the history verifies, and
// cancelling again or cancelling a finished run behave as documented.
func TestCancelWithWorkerProcesses(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.projector("p-1")
	s.workers(2, 2)
	ctx := withTimeout(t, 90*time.Second)

	wf := graflow.NewWorkflow("cancel")
	first := wf.Task("first", builtin.Echo).Args(map[string]any{"value": 1})
	var slow []*graflow.Task
	for i := range 4 { // four 60 s sleeps on four slots: all running at the cancel
		slow = append(slow, wf.Task("slow-"+string(rune('a'+i)), builtin.Sleep).Args(sleepArgs(60000, i)).After(first))
	}
	wf.Task("after", builtin.Sum).After(slow...)
	run, err := s.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	running := map[string]bool{}
	if err := s.watch(ctx, run, func(e events.Event) bool {
		if e.Type == events.TaskClaimed && strings.HasPrefix(e.Task, "slow-") {
			running[e.Task] = true
		}
		return len(running) == 4
	}); err != nil {
		t.Fatalf("waiting for the slow tasks to run (%v): %v", running, err)
	}
	at := time.Now()
	if out, errOut, code := s.cli(ctx, append([]string{"cancel", run, "--reason", "changed my mind"}, s.common()...)...); code != 0 {
		t.Fatalf("graflow cancel: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code := s.cli(ctx, append([]string{"wait", run}, s.common()...)...)
	if code != 6 || !strings.Contains(errOut, "cancelled: changed my mind") {
		t.Fatalf("graflow wait: exit %d, want 6 with the reason\n%s%s", code, out, errOut)
	}
	// Each slow handler is told at its worker's next heartbeat (default
	// interval 5 s) and reports; its report is rejected.
	rejected := map[string]bool{}
	if err := s.watch(ctx, run, func(e events.Event) bool {
		var b events.ResultRejectedBody
		if e.Type == events.ResultRejected && e.DecodeBody(&b) == nil && b.What != "heartbeat" {
			rejected[e.Task] = true
		}
		return len(rejected) == 4
	}); err != nil {
		t.Fatalf("waiting for the four late outcomes to be rejected (%v): %v", rejected, err)
	}
	t.Logf("cancel reached the four running handlers; their outcomes were rejected %v after the cancel", time.Since(at).Round(time.Millisecond))

	s.verifyHistory(ctx, run)
	if _, errOut, code := s.cli(ctx, append([]string{"cancel", run}, s.common()...)...); code != 0 {
		t.Fatalf("second cancel: exit %d: %s", code, errOut)
	}

	done := graflow.NewWorkflow("done")
	done.Task("x", builtin.Echo)
	fin, err := s.client.Submit(ctx, done, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.wait(ctx, fin)
	if _, errOut, code := s.cli(ctx, append([]string{"cancel", fin}, s.common()...)...); code != 3 || !strings.Contains(errOut, "already finished") {
		t.Fatalf("cancel of a finished run: exit %d, want 3: %s", code, errOut)
	}
}
