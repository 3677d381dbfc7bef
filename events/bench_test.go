package events_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
)

// benchEvent is a task_succeeded as a worker writes it.
func benchEvent() events.Event {
	return events.Event{
		ID: "01JBENCH0000000000000000000", Run: "run", Type: events.TaskSucceeded, Version: events.CurrentVersion,
		Task: "transform-17", Attempt: 1, Epoch: 3, Worker: "host-1234", Time: time.UnixMilli(1_700_000_000_000),
	}.WithBody(events.TaskSucceededBody{Result: []byte(`{"rows":1234,"ok":true}`)})
}

// benchValues turns Fields() into the map go-redis returns for an entry.
func benchValues(e events.Event) map[string]any {
	f := e.Fields()
	m := make(map[string]any, len(f)/2)
	for i := 0; i+1 < len(f); i += 2 {
		m[f[i].(string)] = f[i+1]
	}
	return m
}

// BenchmarkFields encodes an event into its stream fields (every append).
func BenchmarkFields(b *testing.B) {
	e := benchEvent()
	b.ReportAllocs()
	for b.Loop() {
		_ = e.Fields()
	}
}

// BenchmarkDecode decodes a task_succeeded stream entry (every fold of a
// log entry: projector, Client.Status, replay).
func BenchmarkDecode(b *testing.B) {
	v := benchValues(benchEvent())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := events.Decode("run", "1700000000000-0", v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeRunSubmitted1000 decodes a run_submitted entry carrying a
// 1,000-task DAG (Decode validates the body's JSON).
func BenchmarkDecodeRunSubmitted1000(b *testing.B) {
	spec := events.RunSubmittedBody{Workflow: "bench", Tasks: make([]events.TaskSpec, 1000)}
	for i := range spec.Tasks {
		spec.Tasks[i] = events.TaskSpec{ID: "t" + strconv.Itoa(i), Handler: "noop"}
		if i > 0 {
			spec.Tasks[i].Deps = []string{"t" + strconv.Itoa(i-1)}
		}
	}
	v := benchValues(events.Event{ID: "01JBENCH0000000000000000000", Type: events.RunSubmitted, Time: time.UnixMilli(1)}.WithBody(spec))
	b.SetBytes(int64(len(v[events.FieldBody].(string))))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := events.Decode("run", "1700000000000-0", v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWithBody encodes a body into an event (every decision event).
func BenchmarkWithBody(b *testing.B) {
	e := events.Event{Type: events.TaskDispatched, Task: "t", Attempt: 1}
	body := events.TaskDispatchedBody{Pool: "default"}
	b.ReportAllocs()
	for b.Loop() {
		_ = e.WithBody(body)
	}
}
