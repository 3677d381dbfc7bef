package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/replay"
)

// submitFile submits the spec file with "graflow submit" (extra flags
// first) and waits for the run with "graflow wait"; it returns the run
// and wait's exit code.
func (s *stack) submitFile(t *testing.T, name string, flags ...string) (string, int) {
	t.Helper()
	ctx := withTimeout(t, 60*time.Second)
	args := append(append(append([]string{"submit"}, flags...), s.common()...), name)
	out, errOut, code := s.cli(ctx, args...)
	if code != 0 {
		t.Fatalf("graflow %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	run := strings.TrimSpace(out)
	_, _, code = s.cli(ctx, append([]string{"wait", run}, s.common()...)...)
	evs, err := s.client.Log(ctx, run) // not s.readLog: it fails the parent test
	if err != nil {
		t.Fatal(err)
	}
	a, err := replay.Analyze(run, evs)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Problems) > 0 {
		t.Errorf("%s: history problems: %v", name, a.Problems)
	}
	if out, errOut, code := s.cli(ctx, append([]string{"replay", "verify", run}, s.common()...)...); code != 0 {
		t.Errorf("graflow replay verify %s: exit %d\n%s%s", run, code, out, errOut)
	}
	return run, code
}

// Timers, group policies and typed handlers on worker and projector
// processes, through the CLI and the example files: examples/timers.yaml submitted with
// --start-in 1s (the root's dispatch is due a second after the submit;
// remind's 2 s after notify succeeded, and neither is claimed before it
// is due), and examples/best-effort.yaml (down fails for good, report
// runs on what arrived, the run succeeds: wait exits 0); the built-in
// handlers are typed (worker.HandleTyped): arguments that do not decode
// fail the task for good, naming the handler and task.
func TestWorkflowFeaturesWithWorkerProcesses(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.projector("p-1")
	s.worker("w-1", 4)

	// The subtests run one after the other, each with its own time limit
	// (parallel subtests wait for the package's other tests, past any
	// limit set here).
	t.Run("timers", func(t *testing.T) {
		ctx := withTimeout(t, 60*time.Second)
		run, code := s.submitFile(t, "../examples/timers.yaml", "--start-in", "1s")
		if code != 0 {
			t.Fatalf("graflow wait: exit %d, want 0", code)
		}
		evs, err := s.client.Log(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		submitted := evs[0].Time
		due := map[string]int64{}
		var claimed, succeeded = map[string]time.Time{}, map[string]time.Time{}
		for _, e := range evs {
			var b events.TaskDispatchedBody
			switch {
			case e.Type == events.TaskDispatched && e.DecodeBody(&b) == nil:
				due[e.Task] = b.DueMS
			case e.Type == events.TaskClaimed:
				claimed[e.Task] = e.Time
			case e.Type == events.TaskSucceeded:
				succeeded[e.Task] = e.Time
			}
		}
		if due["notify"] < submitted.Add(time.Second).UnixMilli() || claimed["notify"].UnixMilli() < due["notify"] {
			t.Errorf("notify: due %d, claimed %v, submitted %v; want due a second after the submit and claimed after", due["notify"], claimed["notify"], submitted)
		}
		if due["remind"] < succeeded["notify"].Add(2*time.Second).UnixMilli() || claimed["remind"].UnixMilli() < due["remind"] {
			t.Errorf("remind: due %d, claimed %v, notify succeeded %v; want due 2 s after and claimed after", due["remind"], claimed["remind"], succeeded["notify"])
		}
		info, err := s.client.Status(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if got := number(t, info.Task("remind").Result); got != 2 {
			t.Errorf("remind = %v, want 2", got)
		}
	})
	t.Run("best effort", func(t *testing.T) {
		ctx := withTimeout(t, 60*time.Second)
		run, code := s.submitFile(t, "../examples/best-effort.yaml")
		if code != 0 {
			t.Fatalf("graflow wait: exit %d, want 0 (the run succeeds)", code)
		}
		info, err := s.client.Status(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if info.Task("down").Status != "failed" || number(t, info.Task("report").Result) != 4 {
			t.Errorf("down %s, report %s; want failed and 4", info.Task("down").Status, info.Task("report").Result)
		}
	})
	t.Run("typed handlers", func(t *testing.T) {
		ctx := withTimeout(t, 60*time.Second)
		file := filepath.Join(t.TempDir(), "typed.yaml")
		spec := "workflow: typed\ntasks:\n  - {id: bad, handler: sleep, args: {ms: soon}, retries: 2}\n"
		if err := os.WriteFile(file, []byte(spec), 0o600); err != nil {
			t.Fatal(err)
		}
		run, code := s.submitFile(t, file)
		if code != 1 {
			t.Fatalf("graflow wait: exit %d, want 1 (the run fails)", code)
		}
		info, err := s.client.Status(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if b := info.Task("bad"); b.Attempt != 1 || !strings.Contains(b.Error, "handler sleep, task bad: decode args") {
			t.Errorf("bad: %d attempts, %q; want one, failed on its arguments", b.Attempt, b.Error)
		}
	})
}
