package projector_test

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/oklog/ulid/v2"
)

// storedID is the ULID a version 2 writer would have minted for the i-th
// event of a history, written at ms (the simulator's ids are not ULIDs).
func storedID(ms int64, i int) string {
	var u ulid.ULID
	if err := u.SetTime(uint64(ms)); err != nil {
		panic(err)
	}
	copy(u[6:], fmt.Sprintf("%010d", i))
	return u.String()
}

// TestPropertyFoldOfStoredVersions writes every history as it is stored
// in a run's log, in schema version 1 (with ts), version 2 (the time is
// the ULID id's) and a mix of both (a v1 log continued by a v2 engine, and
// entries mixed at random), decodes each entry as the projector does and
// folds: the state is the in-memory history's, whichever versions the
// entries were stored in.
func TestPropertyFoldOfStoredVersions(t *testing.T) {
	t.Parallel()
	forEachHistory(t, func(t *testing.T, s *sim) {
		want := snapshot(fold(t, s.run, s.log))
		split := s.rng.IntN(len(s.log) + 1)
		for _, mode := range []string{"v1", "v2", "v1 then v2", "mixed"} {
			stored := storedLog(t, s, func(i int) bool {
				return mode == "v1" || mode == "v1 then v2" && i < split || mode == "mixed" && s.rng.IntN(2) == 0
			})
			if diff := cmp.Diff(want, snapshot(fold(t, s.run, stored))); diff != "" {
				t.Fatalf("fold of the log stored as %s (split %d) (-in memory +stored):\n%s", mode, split, diff)
			}
		}
	})
}

// storedLog returns s's log as the projector reads it back from Redis:
// each event encoded as a stream entry (version 1 where v1(i), else
// version 2, with ULID ids minted at the events' times) and decoded.
func storedLog(t testing.TB, s *sim, v1 func(i int) bool) []events.Event {
	t.Helper()
	ids := map[string]string{}
	for i, e := range s.log {
		if ids[e.ID] == "" {
			ids[e.ID] = storedID(e.Time.UnixMilli(), i)
		}
	}
	out := make([]events.Event, 0, len(s.log))
	for i, e := range s.log {
		e.ID = ids[e.ID]
		old := v1(i)
		if old {
			e.Version = 1
		}
		m := map[string]any{}
		f := e.Fields()
		for j := 0; j < len(f); j += 2 {
			m[f[j].(string)] = f[j+1]
		}
		if _, hasTS := m[events.FieldTime]; hasTS != old || m[events.FieldVersion] != map[bool]string{true: "1", false: "2"}[old] {
			t.Fatalf("entry %d stored as %v, want version 1: %v", i, m, old)
		}
		d, err := events.Decode(s.run, e.Seq, m)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if !d.Time.Equal(e.Time) || d.Version != events.CurrentVersion {
			t.Fatalf("entry %d decodes at %v version %d, written at %v", i, d.Time, d.Version, e.Time)
		}
		out = append(out, d)
	}
	return out
}
