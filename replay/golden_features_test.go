package replay_test

import (
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker/builtin"
)

// TestRecordGoldenFeatures records (with -record) the histories of three
// workflow features on two workers: channels.jsonl (writers set, increment
// and append channel keys; a waiter blocks on a key another task sets),
// best_effort.jsonl (a best-effort group with a member that fails for
// good: its successor runs, the run succeeds) and start_after.jsonl (a
// task that starts 300 ms after it is ready: its dispatch carries
// delay_ms and due_ms) and result_ttl.jsonl (a's result is kept for an
// hour, and b reads it).
func TestRecordGoldenFeatures(t *testing.T) {
	if !*record {
		t.Skip("records golden histories only with -record")
	}
	e := newEnv(t)
	e.start([]string{"wa", "wb"}, nil, nil)
	ctx := ctxT(t)

	wf := graflow.NewWorkflow("channels")
	root := wf.Task("root", builtin.Noop)
	set := wf.Task("set", builtin.ChannelSet).Args(map[string]any{"key": "ready", "value": "go"}).After(root)
	incr := wf.Task("incr", builtin.ChannelIncr).Args(map[string]any{"key": "count"}).After(root)
	app := wf.Task("append", builtin.ChannelAppend).Args(map[string]any{"key": "seen", "value": "x"}).After(root)
	waiter := wf.Task("wait", builtin.ChannelWait).Args(map[string]any{"key": "ready"}).After(root)
	wf.Task("end", builtin.Noop).After(set, incr, app, waiter)
	run, _ := e.runToEnd(ctx, wf, graflow.WithRunID("golden-channels"))
	e.recordGolden(ctx, run, "channels")

	wf = graflow.NewWorkflow("best-effort")
	a := wf.Task("a", builtin.Echo).Args(map[string]any{"value": 1})
	b := wf.Task("b", builtin.Fail).Args(map[string]any{"permanent": true, "message": "b fails"})
	c := wf.Task("c", builtin.Echo).Args(map[string]any{"value": 2})
	wf.Parallel(a, b, c).BestEffort().Then(wf.Task("sum", builtin.Sum))
	run, _ = e.runToEnd(ctx, wf, graflow.WithRunID("golden-best-effort"))
	e.recordGolden(ctx, run, "best_effort")

	wf = graflow.NewWorkflow("start-after")
	first := wf.Task("first", builtin.Echo).Args(map[string]any{"value": 1})
	wf.Task("later", builtin.Sum).After(first).StartAfter(300 * time.Millisecond)
	run, _ = e.runToEnd(ctx, wf, graflow.WithRunID("golden-start-after"))
	e.recordGolden(ctx, run, "start_after")

	wf = graflow.NewWorkflow("result-ttl")
	kept := wf.Task("a", builtin.Echo).Args(map[string]any{"value": 20}).ResultTTL(time.Hour)
	wf.Task("b", builtin.Sum).Args(map[string]any{"add": 1}).After(kept)
	run, _ = e.runToEnd(ctx, wf, graflow.WithRunID("golden-result-ttl"))
	e.recordGolden(ctx, run, "result_ttl")
}

// The recorded features replay as they ran: the best-effort run succeeded
// with b failed and sum run on what succeeded; the delayed task's
// dispatch came at least its delay after its dependency succeeded; the
// channel history holds a write of every key.
func TestGoldenFeatures(t *testing.T) {
	t.Parallel()
	analyze := func(name string) (*replay.Analysis, []events.Event) {
		t.Helper()
		evs := readGolden(t, name)
		a, err := replay.Analyze(evs[0].Run, evs)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Problems) > 0 {
			t.Fatalf("%s: problems %v", name, a.Problems)
		}
		return a, evs
	}
	be, _ := analyze("best_effort")
	if be.Run.Status != "succeeded" || be.Run.Task("b").Status != "failed" || string(be.Run.Task("sum").Result) != "3" {
		t.Errorf("best_effort: run %s, b %s, sum %s; want succeeded, failed, 3", be.Run.Status, be.Run.Task("b").Status, be.Run.Task("sum").Result)
	}
	_, evs := analyze("start_after")
	var done, dispatched events.Event
	for _, e := range evs {
		switch {
		case e.Type == events.TaskSucceeded && e.Task == "first":
			done = e
		case e.Type == events.TaskDispatched && e.Task == "later":
			dispatched = e
		}
	}
	var body events.TaskDispatchedBody
	if err := dispatched.DecodeBody(&body); err != nil || body.DelayMS != 300 || body.DueMS < done.Time.UnixMilli()+300 {
		t.Errorf("later's dispatch %+v (%v), first succeeded at %d: want delay_ms 300 and due_ms at least 300 ms after", body, err, done.Time.UnixMilli())
	}
	_, evs = analyze("channels")
	keys := map[string]bool{}
	for _, e := range evs {
		var b events.ChannelWrittenBody
		if e.Type == events.ChannelWritten && e.DecodeBody(&b) == nil {
			keys[b.Key] = true
		}
	}
	if !keys["ready"] || !keys["count"] || !keys["seen"] {
		t.Errorf("channel keys written: %v; want ready, count and seen", keys)
	}
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
