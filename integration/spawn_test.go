package integration

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/crashpoint"
	"github.com/graflow-go/graflow/worker/builtin"
)

// checkSpawnRun checks a finished run with dynamic tasks: succeeded, and
// its history verifies (replay.Analyze justifies every dispatch by its
// dependencies and the spawned tasks it waited for; CheckInvariants: each
// task accepted once, none lost).
func checkSpawnRun(t *testing.T, s *stack, ctx context.Context, run string) ([]events.Event, *graflow.RunInfo) {
	t.Helper()
	if info := s.wait(ctx, run); !info.Succeeded() {
		t.Fatalf("run %s: %s %s\n%s", info.Status, info.FailedTask, info.Cause, timeline(s.readLog(ctx, run)))
	}
	evs := s.verifyHistory(ctx, run)
	info, err := s.client.Status(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	return evs, info
}

// TestDynamicTasksWithWorkerProcesses runs a dynamic fan-out and a loop on
// worker processes: the spawner's worker dies (crash point) right after
// the finish that committed its spawn and success, another worker is
// SIGKILLed in the middle of the fan-out, and still every spawned task
// runs to one accepted result, the fan-in sums all of them, the loop's
// successor runs after its last iteration, and the history verifies.
func TestDynamicTasksWithWorkerProcesses(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ctx := withTimeout(t, 120*time.Second)
	s.recoveryProjector("p-1", "")
	spawner := s.recoveryWorker("w-spawn", recWorker{pools: []string{"spawner"}, crashAt: crashpoint.WorkerAfterFinish})
	ws := []*proc{s.recoveryWorker("w-1", recWorker{concurrency: 4}), s.recoveryWorker("w-2", recWorker{concurrency: 4})}

	const n = 150
	wf := graflow.NewWorkflow("dynamic")
	fan := wf.Task("fan", builtin.Spawn).Pool("spawner").
		Args(builtin.SpawnArgs{N: n, Handler: builtin.Sleep, Args: json.RawMessage(`{"ms":20,"value":1}`), FlakyEvery: 25, Value: json.RawMessage(`0`)})
	wf.Task("sum", builtin.Sum).After(fan)
	loop := wf.Task("loop", builtin.Loop).Args(builtin.LoopArgs{Times: 5, Value: json.RawMessage(`42`)})
	wf.Task("after-loop", builtin.Sum).After(loop)
	run := submit(t, s, ctx, wf)

	// The spawner's worker commits the spawn with fan's success, then dies.
	if code := awaitExit(t, ctx, spawner); code == 0 {
		t.Fatalf("w-spawn exited 0, want the crash point's exit")
	}
	// A worker dies in the middle of the fan-out: its tasks are reclaimed.
	done := 0
	s.await(ctx, run, "a third of the spawned tasks", func(e events.Event) bool {
		if e.Type == events.TaskSucceeded && strings.HasPrefix(e.Task, "fan-") {
			done++
		}
		return done >= n/3
	})
	ws[0].kill()

	evs, info := checkSpawnRun(t, s, ctx, run)
	if got := string(info.Task("sum").Result); got != strconv.Itoa(n) {
		t.Errorf("sum = %s, want %d (one per spawned task)", got, n)
	}
	if got := string(info.Task("after-loop").Result); got != "52" { // 1+2+3+4 then 42
		t.Errorf("after-loop = %s, want 52", got)
	}
	if adds := filter(evs, events.TasksAdded, "fan"); len(adds) != 1 || adds[0].Worker != "w-spawn" {
		t.Errorf("fan's tasks_added: %d, want 1 by w-spawn:\n%s", len(adds), timeline(adds))
	}
	if adds := filter(evs, events.TasksAdded, ""); len(adds) != 5 {
		t.Errorf("%d tasks_added, want fan's and the loop's 4:\n%s", len(adds), timeline(adds))
	}
	if len(info.Tasks) != 4+n+4 {
		t.Errorf("%d tasks, want %d", len(info.Tasks), 4+n+4)
	}
	t.Logf("%d tasks, %d events, %d reclaims", len(info.Tasks), len(evs), len(filter(evs, events.TaskReclaimed, "")))
}

// TestDynamicSpawnOfAZombieIsRejected freezes the spawner's worker
// (SIGSTOP) while its handler runs, past its lease: another worker
// reclaims the task and commits its own spawn with its success; the
// thawed zombie is fenced (its spawn rejected with its result, or its
// heartbeat rejected first and its outcome discarded), so the run holds
// the spawned tasks once.
func TestDynamicSpawnOfAZombieIsRejected(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ctx := withTimeout(t, 90*time.Second)
	s.recoveryProjector("p-1", "")
	zombie := s.recoveryWorker("w-a", recWorker{pools: []string{"spawner"}, hbEvents: time.Millisecond})
	s.recoveryWorker("w-1", recWorker{concurrency: 4})

	wf := graflow.NewWorkflow("zombie-spawn")
	fan := wf.Task("fan", builtin.Spawn).Pool("spawner").
		Args(builtin.SpawnArgs{N: 20, Handler: builtin.Echo, Args: json.RawMessage(`{"value":1}`), MS: 2500})
	wf.Task("sum", builtin.Sum).After(fan)
	run := submit(t, s, ctx, wf)

	first := s.await(ctx, run, "w-a's heartbeat", func(e events.Event) bool {
		return e.Type == events.TaskHeartbeat && e.Task == "fan" && e.Worker == "w-a"
	})
	zombie.signal(t, syscall.SIGSTOP)
	s.recoveryWorker("w-b", recWorker{pools: []string{"spawner"}})
	won := s.await(ctx, run, "w-b's spawn", func(e events.Event) bool {
		return e.Type == events.TasksAdded && e.Worker == "w-b"
	})
	zombie.signal(t, syscall.SIGCONT)
	// Thawed, the zombie is fenced one of two ways, whichever of its
	// timers fires first: its handler returns and its result (with the
	// spawn) is rejected, or its heartbeat is rejected first and the
	// handler is cancelled, its outcome discarded (never sent).
	rej := s.await(ctx, run, "the zombie's rejected result or heartbeat", func(e events.Event) bool {
		var b events.ResultRejectedBody
		return e.Type == events.ResultRejected && e.Worker == "w-a" && e.DecodeBody(&b) == nil && (b.What == "result" || b.What == "heartbeat")
	})
	if rej.Epoch != first.Epoch || won.Epoch <= first.Epoch {
		t.Errorf("rejected at epoch %d, spawn accepted at %d; want the zombie's epoch %d below the winner's", rej.Epoch, won.Epoch, first.Epoch)
	}
	evs, info := checkSpawnRun(t, s, ctx, run)
	if adds := filter(evs, events.TasksAdded, ""); len(adds) != 1 {
		t.Errorf("%d tasks_added, want w-b's only:\n%s", len(adds), timeline(evs))
	}
	if got := string(info.Task("sum").Result); got != "20" {
		t.Errorf("sum = %s, want 20", got)
	}
}
