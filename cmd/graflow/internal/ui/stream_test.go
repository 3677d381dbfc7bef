package ui

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
)

// TestLiveRunSendsWhatChanged folds a hand-made log: the stream's messages
// carry exactly the tasks and run status each event changed, and tasks
// added while the page is open (tasks_added, which no engine API writes
// yet) so the page redraws its DAG.
func TestLiveRunSendsWhatChanged(t *testing.T) {
	t.Parallel()
	seq := 0
	ev := func(typ events.Type, task string, attempt int, epoch int64, worker string, body any) events.Event {
		seq++
		raw, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		return events.Event{ID: "e" + strconv.Itoa(seq), Seq: strconv.Itoa(seq) + "-0", Run: "r", Type: typ, Version: 1,
			Task: task, Attempt: attempt, Epoch: epoch, Worker: worker, Time: time.UnixMilli(int64(seq)), Body: raw}
	}
	live := newLiveRun("r")
	live.apply(ev(events.RunSubmitted, "", 0, 0, "", events.RunSubmittedBody{Workflow: "w", Tasks: []events.TaskSpec{
		{ID: "a", Handler: "h"}, {ID: "b", Handler: "h", Deps: []string{"a"}},
	}}))
	live.apply(ev(events.TaskDispatched, "a", 1, 0, "p", struct{}{}))
	snap := live.snapshot()
	want := snapshotMsg{Run: runView{Status: "running", Events: 2}, Tasks: []taskView{
		{ID: "a", Status: "dispatched", Attempt: 1}, {ID: "b", Status: "pending"},
	}}
	if diff := cmp.Diff(want, snap); diff != "" {
		t.Fatalf("snapshot (-want +got):\n%s", diff)
	}

	steps := []struct {
		name string
		ev   events.Event
		want eventMsg
	}{
		{"a claim changes its task only", ev(events.TaskClaimed, "a", 1, 1, "w1", struct{}{}),
			eventMsg{Tasks: []taskView{{ID: "a", Status: "running", Attempt: 1, Owner: "w1"}}}},
		{"a heartbeat changes nothing", ev(events.TaskHeartbeat, "a", 1, 1, "w1", struct{}{}), eventMsg{}},
		{"tasks added are sent, and counted", ev(events.TasksAdded, "", 0, 0, "w1", events.TasksAddedBody{Tasks: []events.TaskSpec{
			{ID: "c", Handler: "h", Deps: []string{"a"}},
		}}), eventMsg{Added: 1, Tasks: []taskView{{ID: "c", Status: "pending"}}}},
		{"a success", ev(events.TaskSucceeded, "a", 1, 1, "w1", events.TaskSucceededBody{Result: json.RawMessage(`1`)}),
			eventMsg{Tasks: []taskView{{ID: "a", Status: "succeeded", Attempt: 1, Owner: "w1"}}}},
		{"an event that does not fold is reported, not fatal", ev(events.TaskClaimed, "ghost", 1, 1, "w1", struct{}{}),
			eventMsg{Problem: "projector: invalid event: task_claimed ghost (seq 7-0): no such task in run r"}},
	}
	for _, st := range steps {
		got := live.apply(st.ev)
		st.want.Seq, st.want.Type, st.want.Task, st.want.Attempt, st.want.Worker, st.want.Time =
			st.ev.Seq, string(st.ev.Type), st.ev.Task, st.ev.Attempt, st.ev.Worker, st.ev.Time
		st.want.Events = live.run.Events
		if diff := cmp.Diff(st.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", st.name, diff)
		}
	}
	if live.ended() {
		t.Error("the run ended with b and c pending")
	}
}
