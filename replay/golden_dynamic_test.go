package replay_test

import (
	"encoding/json"
	"testing"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/worker/builtin"
)

// TestRecordGoldenDynamic records dynamic.jsonl (with -record): a dynamic
// fan-out (split spawns four echo tasks, one of them flaky, and sum, after
// split, waits for them) and a loop (three iterations, then the task
// after it) on two workers.
func TestRecordGoldenDynamic(t *testing.T) {
	if !*record {
		t.Skip("records golden histories only with -record")
	}
	e := newEnv(t)
	e.start([]string{"wa", "wb"}, nil, nil)
	ctx := ctxT(t)
	wf := graflow.NewWorkflow("dynamic")
	split := wf.Task("split", builtin.Spawn).Args(builtin.SpawnArgs{N: 4, Handler: builtin.Echo, Args: json.RawMessage(`{"value":2}`), FlakyEvery: 3, Value: json.RawMessage(`0`)})
	wf.Task("sum", builtin.Sum).After(split)
	loop := wf.Task("loop", builtin.Loop).Args(builtin.LoopArgs{Times: 3, Value: json.RawMessage(`7`)})
	wf.Task("after", builtin.Sum).After(loop)
	run, info := e.runToEnd(ctx, wf, graflow.WithRunID("golden-dynamic"))
	t.Logf("run %s %s, %d events", run, info.Status, info.Events)
	e.recordGolden(ctx, run, "dynamic")
}
