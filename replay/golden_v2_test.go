package replay_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
	"github.com/oklog/ulid/v2"
)

var recordV2 = flag.Bool("record-v2", false,
	"rewrite testdata/golden/v2/*.jsonl from the v1 histories in testdata/golden (each id's time set to its event's time, as a schema v2 writer mints it)")

// goldenV2Dir holds the golden histories as a schema version 2 engine
// writes them: the same runs as the version 1 ones in goldenDir, each
// event's ULID id minted at the event's time (its ts in version 1, which
// version 2 no longer stores). They replay to the same recorded states.
var goldenV2Dir = filepath.Join(goldenDir, "v2")

// asV2 returns the v1 history evs as a v2 writer writes it: each id keeps
// its random part and takes its event's time.
func asV2(t *testing.T, evs []events.Event) []events.Event {
	t.Helper()
	out := make([]events.Event, len(evs))
	for i, e := range evs {
		u, err := ulid.ParseStrict(e.ID)
		if err != nil {
			t.Fatalf("event %d: id %q: %v", i, e.ID, err)
		}
		if err := u.SetTime(uint64(e.Time.UnixMilli())); err != nil {
			t.Fatal(err)
		}
		e.ID, e.Version = u.String(), 2
		out[i] = e
	}
	return out
}

func goldenNames(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.jsonl"))
	if err != nil || len(files) < 5 {
		t.Fatalf("golden histories: %v, %d files", err, len(files))
	}
	var names []string
	for _, f := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(f), ".jsonl"))
	}
	return names
}

// goldenStateOf replays evs and returns its state as TestGolden records it.
func goldenStateOf(t *testing.T, evs []events.Event) any {
	t.Helper()
	a, err := replay.Analyze(evs[0].Run, evs)
	if err != nil {
		t.Fatal(err)
	}
	got := goldenState{Run: a.Run, Records: map[string]string{}, Problems: a.Problems}
	for _, tk := range a.Run.Tasks {
		got.Records[tk.Spec.ID] = projector.RecordOf(tk).String()
	}
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// storedVersion is the schema version evs' entry is stored in (the "v" of
// its stream fields, events.Event.Fields).
func storedVersion(e events.Event) string {
	f := e.Fields()
	for i := 0; i < len(f); i += 2 {
		if f[i] == events.FieldVersion {
			return f[i+1].(string)
		}
	}
	return ""
}

// TestGoldenV2 replays the version 2 golden histories (and logs that
// switch from version 1 to 2 midway: a v1 run continued by a v2 engine)
// and compares each with the recorded state of its v1 twin.
func TestGoldenV2(t *testing.T) {
	t.Parallel()
	for _, name := range goldenNames(t) {
		t.Run(name, func(t *testing.T) {
			v1 := readGolden(t, name)
			file := filepath.Join(goldenV2Dir, name+".jsonl")
			if *recordV2 {
				var buf bytes.Buffer
				if err := replay.WriteExport(&buf, asV2(t, v1)); err != nil {
					t.Fatal(err)
				}
				if err := os.MkdirAll(goldenV2Dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run with -record-v2 to derive it from the v1 history)", err)
			}
			v2, err := replay.ReadExport(bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			if len(v2) != len(v1) {
				t.Fatalf("%s holds %d events, its v1 twin %d", file, len(v2), len(v1))
			}
			for i, e := range v2 {
				if got := storedVersion(e); got != "2" {
					t.Fatalf("event %d (%s) would be stored as version %s, want 2 (its time is not its id's)", i, e.Type, got)
				}
			}
			var want any
			stateFile := filepath.Join(goldenDir, name+".state.json")
			b, err := os.ReadFile(stateFile)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &want); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, goldenStateOf(t, v2)); diff != "" {
				t.Fatalf("replay of %s differs from %s (-recorded +replayed):\n%s", file, stateFile, diff)
			}
			for _, k := range []int{1, len(v1) / 2, len(v1) - 1} {
				mixed := append(append([]events.Event(nil), v1[:k]...), v2[k:]...)
				if diff := cmp.Diff(want, goldenStateOf(t, mixed)); diff != "" {
					t.Fatalf("replay of v1[:%d] + v2[%d:] differs from %s (-recorded +replayed):\n%s", k, k, stateFile, diff)
				}
			}
		})
	}
}
