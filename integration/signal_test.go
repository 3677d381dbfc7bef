package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker/builtin"
)

// TestSignalsWithWorkerProcesses runs the approval step on worker
// processes, as docs/workflows.md recommends: the waiting tasks go to an
// "approvals" pool served by a worker of high concurrency. Ten runs wait
// on it; it is SIGKILLed mid-wait and another approvals worker takes the
// tasks over after the lease. Half the signals are sent with "graflow
// signal" while no worker waits (the new one finds them in the log when
// it takes the task), half once it waits. Every run succeeds with its
// payload, "graflow wait" exits 0, the histories verify, and a signal to
// a finished run exits 3.
func TestSignalsWithWorkerProcesses(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.projector("p-1")
	s.worker("w-default", 4)
	approvals := func(id string) *proc {
		p := s.start(id, append([]string{"worker"}, append(s.common(), "--id", id, "--pools", "approvals",
			"--concurrency", "100", "--lease", "3s")...)...)
		p.waitLine(t, "worker started")
		return p
	}
	first := approvals("approvals-1")
	ctx := withTimeout(t, 120*time.Second)

	const n = 10
	runs := make([]string, n)
	for i := range runs {
		wf := graflow.NewWorkflow("approval")
		prepare := wf.Task("prepare", builtin.Echo).Args(map[string]any{"value": 100})
		approve := wf.Task("approve", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "approve", Timeout: "1h"}).
			After(prepare).Pool("approvals")
		wf.Task("apply", builtin.Sum).After(prepare, approve)
		run, err := s.client.Submit(ctx, wf, nil)
		if err != nil {
			t.Fatal(err)
		}
		runs[i] = run
	}
	claimedBy := func(worker string) {
		t.Helper()
		for _, run := range runs {
			if err := s.watch(ctx, run, func(e events.Event) bool {
				return e.Type == events.TaskClaimed && e.Task == "approve" && e.Worker == worker
			}); err != nil {
				t.Fatalf("run %s: approve not claimed by %s: %v", run, worker, err)
			}
		}
	}
	signal := func(i int) {
		t.Helper()
		out, errOut, code := s.cli(ctx, append([]string{"signal", runs[i], "approve", "--data", fmt.Sprint(i), "--by", "integration"}, s.common()...)...)
		if code != 0 || !strings.Contains(out, "signal approve delivered") {
			t.Fatalf("graflow signal: exit %d\n%s%s", code, out, errOut)
		}
	}

	claimedBy("approvals-1") // ten tasks wait on it
	first.kill()
	for i := range n / 2 { // nobody waits: recorded in the logs
		signal(i)
	}
	approvals("approvals-2")
	claimedBy("approvals-2") // after the lease, its reclaimer took them over
	for i := n / 2; i < n; i++ {
		signal(i)
	}

	for i, run := range runs {
		out, errOut, code := s.cli(ctx, append([]string{"wait", "--json", run}, s.common()...)...)
		if code != 0 {
			t.Fatalf("graflow wait %s: exit %d\n%s%s", run, code, out, errOut)
		}
		info := s.wait(ctx, run)
		if got, want := string(info.Task("apply").Result), fmt.Sprint(100+i); got != want {
			t.Errorf("run %d: apply = %s, want %s (100 + the signal's payload)", i, got, want)
		}
		evs := s.readLog(ctx, run)
		a, err := replay.Analyze(run, evs)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Problems) > 0 {
			t.Errorf("run %d: history problems: %v", i, a.Problems)
		}
		state, err := s.rdb.HGetAll(ctx, s.keys.RunState(run)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if v := replay.CheckInvariants(evs, state); !v.OK() {
			t.Errorf("run %d: invariants: %v", i, v.Problems)
		}
	}
	if out, errOut, code := s.cli(ctx, append([]string{"replay", "verify", runs[0]}, s.common()...)...); code != 0 {
		t.Fatalf("graflow replay verify: exit %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code := s.cli(ctx, append([]string{"signal", runs[0], "again"}, s.common()...)...); code != 3 || !strings.Contains(errOut, "already finished") {
		t.Fatalf("signal to a finished run: exit %d, want 3: %s", code, errOut)
	}
}
