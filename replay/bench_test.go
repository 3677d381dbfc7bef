package replay_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
	"github.com/redis/go-redis/v9"
)

// syntheticTasks makes a 100,001-event run: run_submitted, 33,333 tasks ×
// (task_dispatched, task_claimed, task_succeeded), run_succeeded.
const syntheticTasks = 33_333

// synthetic builds a succeeded run of n tasks in memory, as the engine
// writes it. Task i depends on task (i-1)/2 (a binary tree), so unlocks
// are real; events come in an order the engine could produce (a parent
// succeeds before its children are dispatched).
func synthetic(n int) []events.Event {
	specs := make([]events.TaskSpec, n)
	for i := range specs {
		specs[i] = events.TaskSpec{ID: "t" + strconv.Itoa(i), Handler: "noop"}
		if i > 0 {
			specs[i].Deps = []string{"t" + strconv.Itoa((i-1)/2)}
		}
	}
	base := time.UnixMilli(1_700_000_000_000).UTC()
	evs := make([]events.Event, 0, 3*n+2)
	add := func(e events.Event) {
		k := len(evs)
		e.Run, e.Version, e.ID = "bench", events.CurrentVersion, fmt.Sprintf("01BENCH%019d", k)
		e.Seq, e.Time = fmt.Sprintf("1700000000000-%d", k), base.Add(time.Duration(k)*time.Millisecond)
		evs = append(evs, e)
	}
	add(events.Event{Type: events.RunSubmitted}.WithBody(events.RunSubmittedBody{Workflow: "bench", Tasks: specs}))
	result := events.Event{}.WithBody(events.TaskSucceededBody{Result: []byte(`1`)}).Body
	for i := range specs {
		id := specs[i].ID
		add(events.Event{Type: events.TaskDispatched, Task: id, Attempt: 1, Worker: "p"}.WithBody(events.TaskDispatchedBody{Pool: "default"}))
		add(events.Event{Type: events.TaskClaimed, Task: id, Attempt: 1, Epoch: 1, Worker: "w"})
		add(events.Event{Type: events.TaskSucceeded, Task: id, Attempt: 1, Epoch: 1, Worker: "w", Body: result})
	}
	add(events.Event{Type: events.RunSucceeded, Worker: "p"})
	return evs
}

// fields returns the events as go-redis returns stream entries.
func fields(evs []events.Event) []map[string]any {
	out := make([]map[string]any, len(evs))
	for i, e := range evs {
		f := e.Fields()
		m := make(map[string]any, len(f)/2)
		for j := 0; j < len(f); j += 2 {
			m[f[j].(string)] = f[j+1]
		}
		out[i] = m
	}
	return out
}

func TestSyntheticRunIsSound(t *testing.T) {
	t.Parallel()
	evs := synthetic(syntheticTasks)
	if len(evs) != 100_001 {
		t.Fatalf("%d events, want 100,001", len(evs))
	}
	a, err := replay.Analyze("bench", evs)
	if err != nil {
		t.Fatal(err)
	}
	if a.Run.Status != projector.RunSucceeded || len(a.Problems) != 0 {
		t.Fatalf("status %s, problems %v", a.Run.Status, a.Problems)
	}
}

func fold(b *testing.B, evs []events.Event) *projector.Run {
	r := projector.NewRun("bench")
	for _, e := range evs {
		if err := projector.Apply(r, e); err != nil {
			b.Fatal(err)
		}
	}
	return r
}

// BenchmarkFold folds the 100,001 decoded events of the synthetic run with
// projector.Apply; events/s is the fold's throughput.
func BenchmarkFold(b *testing.B) {
	evs := synthetic(syntheticTasks)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		fold(b, evs)
		n += len(evs)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkRebuild100k rebuilds the 100,000-event run from its stream
// entries as go-redis hands them over (events.Decode + projector.Apply, no
// network): the CPU cost of "graflow replay" on a run that size.
func BenchmarkRebuild100k(b *testing.B) {
	evs := synthetic(syntheticTasks)
	entries := fields(evs)
	b.ReportAllocs()
	for b.Loop() {
		r := projector.NewRun("bench")
		for i, m := range entries {
			e, err := events.Decode("bench", evs[i].Seq, m)
			if err != nil {
				b.Fatal(err)
			}
			if err := projector.Apply(r, e); err != nil {
				b.Fatal(err)
			}
		}
		if r.Status != projector.RunSucceeded {
			b.Fatal(r.Status)
		}
	}
	b.ReportMetric(float64(len(evs))*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkAnalyze100k is the full replay analysis of the 100,000-event
// run: fold, timeline and history checks.
func BenchmarkAnalyze100k(b *testing.B) {
	evs := synthetic(syntheticTasks)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := replay.Analyze("bench", evs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(evs))*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkRebuildFromRedis100k reads the 100,000-event run back from a
// real Redis log (XRANGE in chunks) and folds it: Client.Fold end to end.
func BenchmarkRebuildFromRedis100k(b *testing.B) {
	evs := synthetic(syntheticTasks)
	c := redistest.Client(b)
	ns := redistest.Namespace(b)
	ctx := context.Background()
	k := rdb.NewKeys(ns)
	for i := 0; i < len(evs); i += 1000 {
		pipe := c.Pipeline()
		for _, e := range evs[i:min(i+1000, len(evs))] {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: k.RunLog("bench"), ID: e.Seq, Values: e.Fields()})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() { c.Del(context.Background(), k.RunLog("bench")) })
	rc, err := graflow.NewClient(graflow.Config{Redis: c, Namespace: ns})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		r, err := rc.Fold(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		if r.Events != len(evs) {
			b.Fatalf("folded %d events", r.Events)
		}
	}
	b.ReportMetric(float64(len(evs))*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
