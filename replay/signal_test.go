package replay_test

import (
	"strings"
	"testing"

	"github.com/graflow-go/graflow/replay"
)

// An import writes the run's signal ids (the signal script's one signal
// per name), and verify checks the live ones against the log: a missing,
// changed or unknown signal id is a problem.
func TestVerifySignalIDs(t *testing.T) {
	t.Parallel()
	evs := readGolden(t, "signal")
	im, err := replay.PrepareImport(evs, replay.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	last := evs[len(evs)-1].Seq
	hs, err := im.Hashes(last)
	if err != nil {
		t.Fatal(err)
	}
	if got := hs.State["@signal:approve"]; got != "golden-1" {
		t.Fatalf("imported @signal:approve = %q, want the signal's id golden-1", got)
	}
	live := replay.Live{State: hs.State, Results: hs.Results, DAG: hs.DAG, LastSeq: last}
	if rep, _ := replay.Verify(evs[0].Run, "ns", live, evs, nil); !rep.OK() {
		t.Fatalf("the imported hashes do not verify: %v", rep.Problems)
	}
	delete(live.State, "@signal:approve")
	live.State["@signal:other"] = "x"
	rep, _ := replay.Verify(evs[0].Run, "ns", live, evs, nil)
	var fields []string
	for _, p := range rep.Problems {
		fields = append(fields, p.Field)
	}
	if got := strings.Join(fields, " "); got != "@signal:approve @signal:other" {
		t.Fatalf("problems on fields %q, want @signal:approve @signal:other: %v", got, rep.Problems)
	}
}
