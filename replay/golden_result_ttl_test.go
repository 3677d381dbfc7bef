package replay_test

import (
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker/builtin"
)

// TestRecordGoldenResultTTL records result_ttl.jsonl (with -record): a's
// result is kept for an hour, and b reads it.
func TestRecordGoldenResultTTL(t *testing.T) {
	if !*record {
		t.Skip("records golden histories only with -record")
	}
	e := newEnv(t)
	e.start([]string{"wa"}, nil, nil)
	ctx := ctxT(t)
	wf := graflow.NewWorkflow("result-ttl")
	a := wf.Task("a", builtin.Echo).Args(map[string]any{"value": 20}).ResultTTL(time.Hour)
	wf.Task("b", builtin.Sum).Args(map[string]any{"add": 1}).After(a)
	run, err := e.client.Submit(ctx, wf, nil, graflow.WithRunID("golden-result-ttl"))
	if err != nil {
		t.Fatal(err)
	}
	if info, err := e.client.Wait(ctx, run); err != nil || !info.Succeeded() {
		t.Fatalf("run %s: %+v, %v", run, info, err)
	}
	e.recordGolden(ctx, run, "result_ttl")
}

// The fold derives a result's expiry from the log alone: task_succeeded's
// time plus the task's result_ttl_ms; a task with no TTL has none.
func TestResultTTLInTheFold(t *testing.T) {
	t.Parallel()
	evs := readGolden(t, "result_ttl")
	a, err := replay.Analyze(evs[0].Run, evs)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Problems) > 0 {
		t.Fatalf("problems: %v", a.Problems)
	}
	var succeeded events.Event
	for _, e := range evs {
		if e.Type == events.TaskSucceeded && e.Task == "a" {
			succeeded = e
		}
	}
	ta := a.Run.Task("a")
	if want := succeeded.Time.Add(time.Hour).UnixMilli(); ta.ResultExpiresMS != want {
		t.Errorf("a's result expires at %d, want task_succeeded's time + 1h = %d", ta.ResultExpiresMS, want)
	}
	if !ta.ResultExpired(succeeded.Time.Add(time.Hour)) || ta.ResultExpired(succeeded.Time.Add(time.Hour-time.Millisecond)) {
		t.Error("ResultExpired is not exactly from the due time on")
	}
	if b := a.Run.Task("b"); b.ResultExpiresMS != 0 || string(b.Result) != "21" {
		t.Errorf("b: expires %d, result %s; want no expiry and 21", b.ResultExpiresMS, b.Result)
	}
}
