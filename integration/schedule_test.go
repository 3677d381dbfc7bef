package integration

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/scheduler"
)

// TestSchedulesWithSchedulerProcesses runs a schedule ("@every 1s") with
// three "graflow schedule run" processes racing for every tick, one of
// them SIGKILLed mid-way, and worker and projector processes running what
// they start (--catch-up all: a pass delayed past a tick, on a loaded
// machine, still fires it): every tick from the first to the last has exactly one run
// (the run id is the schedule's name and the tick: a second scheduler's
// submit of the same tick is a no-op), and every run succeeds.
func TestSchedulesWithSchedulerProcesses(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.projector("p-1")
	s.worker("w-1", 4)
	ctx := withTimeout(t, 90*time.Second)
	var scheds []*proc
	for _, id := range []string{"sched-1", "sched-2", "sched-3"} {
		p := s.start(id, append([]string{"schedule", "run", "--refresh", "200ms", "--catch-up", "all"}, s.common()...)...)
		p.waitLine(t, "scheduler started")
		scheds = append(scheds, p)
	}
	if out, errOut, code := s.cli(ctx, append([]string{"schedule", "add", "tick", "@every 1s", "../examples/timers.yaml", "--input", `{"n":1}`}, s.common()...)...); code != 0 {
		t.Fatalf("graflow schedule add: exit %d\n%s%s", code, out, errOut)
	}
	runs := func(n int) []string {
		t.Helper()
		for {
			ids, err := s.client.RunIDs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(ids) >= n {
				return ids
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%d runs started, want %d", len(ids), n)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	runs(3)
	scheds[0].kill()
	runs(6)
	if out, errOut, code := s.cli(ctx, append([]string{"schedule", "rm", "tick"}, s.common()...)...); code != 0 {
		t.Fatalf("graflow schedule rm: exit %d\n%s%s", code, out, errOut)
	}
	ids := runs(6)
	slices.Sort(ids)
	var ticks []time.Time
	for _, id := range ids {
		at, err := time.Parse("20060102T150405Z", strings.TrimPrefix(id, "tick-"))
		if err != nil || scheduler.RunID("tick", at) != id {
			t.Fatalf("run %s is not a tick of the schedule (%v)", id, err)
		}
		ticks = append(ticks, at)
	}
	for i := 1; i < len(ticks); i++ {
		if d := ticks[i].Sub(ticks[i-1]); d != time.Second {
			t.Errorf("ticks %s and %s are %s apart: want one run per second, no gap and no duplicate", ids[i-1], ids[i], d)
		}
	}
	for _, id := range ids {
		info, err := s.client.Wait(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if !info.Succeeded() {
			t.Errorf("run %s: %s (%s: %s)", id, info.Status, info.FailedTask, info.Cause)
		}
	}
}
