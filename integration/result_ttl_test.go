package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/replay"
)

// TestResultTTLWithWorkerProcesses submits a spec with result_ttl through
// "graflow submit" to worker and projector processes: token's result
// (kept 200 ms) is deleted by the projector process when due; "graflow
// status" then shows it expired; use, held back by a signal gate until
// then, fails for good on the expired result ("graflow wait" exits 1),
// while keep (result_ttl 1h) was read by check as usual. The log keeps
// token's result and "graflow replay verify" passes.
func TestResultTTLWithWorkerProcesses(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.projector("p-1")
	s.worker("w-1", 4)
	ctx := withTimeout(t, 90*time.Second)
	file := filepath.Join(t.TempDir(), "ttl.yaml")
	spec := "workflow: ttl\ntasks:\n" +
		"  - {id: token, handler: echo, args: {value: 7}, result_ttl: 200ms}\n" +
		"  - {id: keep, handler: echo, args: {value: 5}, result_ttl: 1h}\n" +
		"  - {id: check, handler: sum, deps: [keep]}\n" +
		"  - {id: gate, handler: '@wait_signal', args: {name: go}}\n" +
		"  - {id: use, handler: sum, deps: [token, gate]}\n"
	if err := os.WriteFile(file, []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := s.cli(ctx, append(append([]string{"submit"}, s.common()...), file)...)
	if code != 0 {
		t.Fatalf("graflow submit: exit %d\n%s%s", code, out, errOut)
	}
	run := strings.TrimSpace(out)
	if err := s.watch(ctx, run, func(e events.Event) bool { return e.Type == events.TaskSucceeded && e.Task == "check" }); err != nil {
		t.Fatal(err)
	}
	for { // the projector process deletes token's result when due
		n, err := s.rdb.HExists(ctx, s.keys.RunState(run), rdb.ResultField("token")).Result()
		if err != nil {
			t.Fatal(err)
		}
		if !n {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("token's result was never deleted")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if out, errOut, code := s.cli(ctx, append([]string{"status", run}, s.common()...)...); code != 0 || !strings.Contains(out, "(result expired") {
		t.Fatalf("graflow status: exit %d, want token's result shown expired\n%s%s", code, out, errOut)
	}
	if out, errOut, code := s.cli(ctx, append([]string{"signal", run, "go"}, s.common()...)...); code != 0 {
		t.Fatalf("graflow signal: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := s.cli(ctx, append([]string{"wait", run}, s.common()...)...); code != 1 {
		t.Fatalf("graflow wait: exit %d, want 1 (use failed)\n%s%s", code, out, errOut)
	}
	info, err := s.client.Status(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if u := info.Task("use"); u.Status != "failed" || u.Attempt != 1 || !strings.Contains(u.Error, "result TTL") {
		t.Errorf("use: %s after %d attempts: %q; want failed once on the expired result", u.Status, u.Attempt, u.Error)
	}
	if got := string(info.Task("check").Result); got != "5" {
		t.Errorf("check = %s, want keep's 5", got)
	}
	var kept bool
	for _, e := range s.readLog(ctx, run) {
		var b events.TaskSucceededBody
		if e.Type == events.TaskSucceeded && e.Task == "token" && e.DecodeBody(&b) == nil && string(b.Result) == "7" {
			kept = true
		}
	}
	if !kept {
		t.Error("the log lost token's task_succeeded with its result")
	}
	a, err := replay.Analyze(run, s.readLog(ctx, run))
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Problems) > 0 {
		t.Errorf("history problems: %v", a.Problems)
	}
	if out, errOut, code := s.cli(ctx, append([]string{"replay", "verify", run}, s.common()...)...); code != 0 {
		t.Fatalf("graflow replay verify: exit %d\n%s%s", code, out, errOut)
	}
}
