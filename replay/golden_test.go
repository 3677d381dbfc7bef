package replay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/oklog/ulid/v2"
)

var (
	update = flag.Bool("update", os.Getenv("GRAFLOW_GOLDEN_UPDATE") == "1",
		"rewrite testdata/golden/*.state.json from the replay of each *.jsonl (or GRAFLOW_GOLDEN_UPDATE=1)")
	record = flag.Bool("record", false,
		"re-record testdata/golden/*.jsonl from real runs (then run with -update); only when a history must change")
)

const goldenDir = "testdata/golden"

// goldenState is the recorded expected outcome of replaying a history.
type goldenState struct {
	// Run is the folded state (projector.Run's exported fields).
	Run *projector.Run `json:"run"`
	// Records are the task records the state hash must hold.
	Records map[string]string `json:"records"`
	// Problems are the history problems (none for a sound history).
	Problems []replay.Problem `json:"problems"`
}

// TestGolden replays every recorded history with the current fold and
// compares the result with the recorded final state. A change to the fold
// (projector.Apply) or to the upcasters (events.Upcast) that changes how an
// old history replays fails here.
func TestGolden(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 5 {
		t.Fatalf("want at least 5 golden histories in %s, found %d", goldenDir, len(files))
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".jsonl")
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			evs := readGolden(t, name)
			a, err := replay.Analyze(evs[0].Run, evs)
			if err != nil {
				t.Fatal(err)
			}
			got := goldenState{Run: a.Run, Records: map[string]string{}, Problems: a.Problems}
			for _, tk := range a.Run.Tasks {
				got.Records[tk.Spec.ID] = projector.RecordOf(tk).String()
			}
			gotJSON, err := json.MarshalIndent(got, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			stateFile := filepath.Join(goldenDir, name+".state.json")
			if *update {
				if err := os.WriteFile(stateFile, append(gotJSON, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			wantJSON, err := os.ReadFile(stateFile)
			if err != nil {
				t.Fatalf("%v (run with -update to record it)", err)
			}
			var want, have any
			if err := json.Unmarshal(wantJSON, &want); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(gotJSON, &have); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, have); diff != "" {
				t.Fatalf("replay of %s differs from %s (-recorded +replayed):\n%s", file, stateFile, diff)
			}
			if len(a.Problems) != 0 {
				t.Fatalf("golden history %s breaks invariants: %v", name, a.Problems)
			}
		})
	}
}

// TestRecordGolden records the golden histories from real runs. It only
// runs with -record; the histories are fixtures, re-recorded on purpose.
func TestRecordGolden(t *testing.T) {
	if !*record {
		t.Skip("records golden histories only with -record")
	}
	e := newEnv(t)
	e.start([]string{"wa", "wb"}, nil, nil)
	ctx := ctxT(t)

	failed := graflow.NewWorkflow("failed")
	a := failed.Task("a", builtin.Echo).Args(map[string]any{"value": 1})
	b := failed.Task("b", builtin.Fail).Args(map[string]any{"permanent": true, "message": "bad input"}).After(a)
	c := failed.Task("c", builtin.Echo).After(b)
	failed.Task("d", builtin.Sum).After(c, a)
	failed.Task("e", builtin.Echo).Args(map[string]any{"value": 5}).After(a)

	retries := graflow.NewWorkflow("retries")
	fl := retries.Task("flaky", builtin.Flaky).Args(map[string]any{"fail": 2, "value": 4}).Retries(3)
	retries.Task("after", builtin.Sum).Args(map[string]any{"add": 1}).After(fl)

	fan := graflow.NewWorkflow("fanout")
	ex := fan.Task("extract", builtin.Echo).Args(map[string]any{"value": 1})
	fan.FanOut(ex, "transform", builtin.Sleep, 4, func(i int) any { return map[string]any{"ms": 3 * i, "value": i + 1} }).
		Then(fan.Task("load", builtin.Sum))

	for name, wf := range map[string]*graflow.Workflow{
		"sequence": sequence(), "fanout": fan, "retries": retries, "failed": failed,
	} {
		run, info := e.runToEnd(ctx, wf, graflow.WithRunID("golden-"+name))
		t.Logf("%s: run %s %s, %d events", name, run, info.Status, info.Events)
		var buf bytes.Buffer
		if _, err := e.rc.Export(ctx, run, &buf); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(goldenDir, name+".jsonl"), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		if name == "sequence" {
			if err := recordReclaim(ctx, buf.Bytes()); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// recordReclaim derives the reclaim history from the sequence run, as the
// engine would write it (reclaim is synthesised: the reclaimer is not built
// yet): b's claim by wa (epoch e) is reclaimed by wb after the lease
// (task_reclaimed, epoch e+1, then task_claimed, epoch e+2), wb's result is
// accepted, and wa's late result is rejected (result_rejected). Later
// events move 15 s later; seqs are renumbered.
func recordReclaim(_ context.Context, sequence []byte) error {
	evs, err := replay.ReadExport(bytes.NewReader(sequence))
	if err != nil {
		return err
	}
	const lease = 15 * time.Second
	var out []events.Event
	shift := time.Duration(0)
	for _, e := range evs {
		e.Run = "golden-reclaim"
		e.Time = e.Time.Add(shift)
		switch {
		case e.Type == events.TaskClaimed && e.Task == "b":
			out = append(out, e)
			shift = lease
			at := e.Time.Add(lease)
			out = append(out,
				events.Event{ID: ulid.Make().String(), Run: e.Run, Type: events.TaskReclaimed, Version: e.Version, Task: "b",
					Attempt: e.Attempt, Epoch: e.Epoch + 1, Worker: "wb", Time: at}.
					WithBody(events.TaskReclaimedBody{From: e.Worker, Deliveries: 2}),
				events.Event{ID: ulid.Make().String(), Run: e.Run, Type: events.TaskClaimed, Version: e.Version, Task: "b",
					Attempt: e.Attempt, Epoch: e.Epoch + 2, Worker: "wb", Time: at})
			continue
		case e.Type == events.TaskSucceeded && e.Task == "b":
			late := events.Event{ID: ulid.Make().String(), Run: e.Run, Type: events.ResultRejected, Version: e.Version, Task: "b",
				Attempt: e.Attempt, Epoch: e.Epoch, Worker: e.Worker, Time: e.Time.Add(-time.Millisecond)}.
				WithBody(events.ResultRejectedBody{What: "result", Reason: fmt.Sprintf("claim lost: task is running at epoch %d", e.Epoch+2), CurrentEpoch: e.Epoch + 2})
			out = append(out, late)
			e.Epoch, e.Worker = e.Epoch+2, "wb"
		}
		out = append(out, e)
	}
	first := out[0].Time.UnixMilli()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	for i := range out {
		out[i].Seq = fmt.Sprintf("%d-%d", first, i)
		if err := enc.Encode(out[i]); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(goldenDir, "reclaim.jsonl"), buf.Bytes(), 0o644)
}

// TestRecordGoldenCancelled records cancelled.jsonl (with -record): a run
// cancelled while b runs, c waits behind it and d sits in a queue no worker
// serves; b's handler is told at its next heartbeat and its late failure
// is rejected.
func TestRecordGoldenCancelled(t *testing.T) {
	if !*record {
		t.Skip("records golden histories only with -record")
	}
	e := newEnv(t)
	e.start([]string{"wa"}, nil, nil)
	ctx := ctxT(t)
	wf := graflow.NewWorkflow("cancelled")
	a := wf.Task("a", builtin.Echo).Args(map[string]any{"value": 1})
	b := wf.Task("b", builtin.Sleep).Args(map[string]any{"ms": 60000}).After(a)
	wf.Task("c", builtin.Echo).After(b)
	wf.Task("d", builtin.Echo).Pool("nobody")
	run, err := e.client.Submit(ctx, wf, map[string]any{"source": "test"}, graflow.WithRunID("golden-cancelled"))
	if err != nil {
		t.Fatal(err)
	}
	follow := func(ok func(events.Event) bool) { e.followUntil(ctx, run, ok) }
	follow(func(ev events.Event) bool { return ev.Type == events.TaskClaimed && ev.Task == "b" })
	if err := e.client.Cancel(ctx, run, "recorded for the golden history"); err != nil {
		t.Fatal(err)
	}
	follow(func(ev events.Event) bool { // the heartbeat's rejection, then the handler's failure's
		var body events.ResultRejectedBody
		return ev.Type == events.ResultRejected && ev.Task == "b" && ev.DecodeBody(&body) == nil && body.What == "failure"
	})
	e.recordGolden(ctx, run, "cancelled")
}

// followUntil follows run's log from its first event until ok holds for
// one (the test fails if the log ends or ctx does first).
func (e *env) followUntil(ctx context.Context, run string, ok func(events.Event) bool) {
	e.t.Helper()
	errSeen := errors.New("seen")
	if err := e.client.Follow(ctx, run, graflow.FollowOptions{}, func(ev events.Event) error {
		if ok(ev) {
			return errSeen
		}
		return nil
	}); !errors.Is(err, errSeen) {
		e.t.Fatal(err)
	}
}

// recordGolden writes run's export as the golden history name.jsonl.
func (e *env) recordGolden(ctx context.Context, run, name string) {
	e.t.Helper()
	var buf bytes.Buffer
	if _, err := e.rc.Export(ctx, run, &buf); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(goldenDir, name+".jsonl"), buf.Bytes(), 0o644); err != nil {
		e.t.Fatal(err)
	}
}
