package replay_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/oklog/ulid/v2"
)

// TestRecordGoldenSignal records signal.jsonl (with -record): an approval
// step. a runs, approve (@wait_signal) waits for the signal "approve",
// which the client sends once the task is running; approve's result is
// the payload and b sums a and it.
func TestRecordGoldenSignal(t *testing.T) {
	if !*record {
		t.Skip("records golden histories only with -record")
	}
	e := newEnv(t)
	e.start([]string{"wa"}, nil, nil)
	ctx := ctxT(t)
	wf := graflow.NewWorkflow("signal")
	a := wf.Task("a", builtin.Echo).Args(map[string]any{"value": 1})
	approve := wf.Task("approve", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "approve", Timeout: "1h"}).After(a)
	wf.Task("b", builtin.Sum).After(a, approve)
	run, err := e.client.Submit(ctx, wf, map[string]any{"source": "test"}, graflow.WithRunID("golden-signal"))
	if err != nil {
		t.Fatal(err)
	}
	e.followUntil(ctx, run, func(ev events.Event) bool { return ev.Type == events.TaskClaimed && ev.Task == "approve" })
	if err := e.client.SignalWith(ctx, run, "approve", 41, graflow.SignalOptions{ID: "golden-1", By: "alice"}); err != nil {
		t.Fatal(err)
	}
	if info, err := e.client.Wait(ctx, run); err != nil || !info.Succeeded() {
		t.Fatalf("run %s: %+v, %v", run, info, err)
	}
	e.recordGolden(ctx, run, "signal")
}

// A signal changes no state: the golden approval history folds to the
// same run without its signal_received. A signal recorded after the run
// ended is a history problem (the signal script refuses a finished run).
func TestSignalsInTheFold(t *testing.T) {
	t.Parallel()
	evs := readGolden(t, "signal")
	var without []events.Event
	var signal events.Event
	for _, e := range evs {
		if e.Type == events.SignalReceived {
			signal = e
			continue
		}
		without = append(without, e)
	}
	if signal.Type == "" {
		t.Fatal("the golden history holds no signal_received")
	}
	fold := func(evs []events.Event) *projector.Run {
		t.Helper()
		a, err := replay.Analyze(evs[0].Run, evs)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Problems) > 0 {
			t.Fatalf("problems: %v", a.Problems)
		}
		return a.Run
	}
	with, less := fold(evs), fold(without)
	less.Events = with.Events // the signal is one more event folded
	w, _ := json.MarshalIndent(with, "", " ")
	l, _ := json.MarshalIndent(less, "", " ")
	if diff := cmp.Diff(string(w), string(l)); diff != "" {
		t.Errorf("the signal changed the folded state (-with +without):\n%s", diff)
	}
	if string(with.Task("approve").Result) != "41" {
		t.Errorf("approve's result = %s, want the signal's payload 41", with.Task("approve").Result)
	}

	late := signal
	late.ID, late.Seq = ulid.Make().String(), evs[len(evs)-1].Seq[:strings.Index(evs[len(evs)-1].Seq, "-")]+"-999"
	a, err := replay.Analyze(late.Run, append(evs[:len(evs):len(evs)], late))
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Problems) != 1 || !strings.Contains(a.Problems[0].Detail, "signal_received while the run is succeeded") {
		t.Errorf("a signal after the end: problems %+v, want one naming it", a.Problems)
	}
}
