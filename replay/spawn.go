package replay

import (
	"strconv"
	"strings"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/statehash"
	"github.com/graflow-go/graflow/projector"
)

// spawnFields returns the state hash fields the finish script keeps for
// the run's spawns, as the log implies them: each spawner's spawn record
// (statehash.SpawnField: its spawn's sinks) and @spawned, the number of
// tasks spawned (absent when none).
func (a *Analysis) spawnFields() map[string]string {
	out := map[string]string{}
	n := 0
	for _, e := range a.adds {
		if e.Type != events.TasksAdded || e.Task == "" {
			continue
		}
		var b events.TasksAddedBody
		if e.DecodeBody(&b) != nil {
			continue
		}
		out[statehash.SpawnField(e.Task)] = strings.Join(projector.Sinks(b.Tasks), ",")
		n += len(b.Tasks)
	}
	if n > 0 {
		out[statehash.FieldRunSpawned] = strconv.Itoa(n)
	}
	return out
}

// compareSpawns compares the live spawn records and @spawned with the
// log's spawns: a worker reads the records to find what a task waited for.
func compareSpawns(a *Analysis, s Live) []Problem {
	want := a.spawnFields()
	var out []Problem
	for _, k := range sortedKeys(want) {
		if live := s.State[k]; live != want[k] {
			out = append(out, Problem{Check: CheckState, Field: k, Live: live, Replayed: want[k],
				Detail: "spawn record differs from the log's tasks_added"})
		}
	}
	for _, k := range sortedKeys(s.State) {
		if _, ok := want[k]; !ok && (strings.HasPrefix(k, statehash.FieldSpawnPrefix) || k == statehash.FieldRunSpawned) {
			out = append(out, Problem{Check: CheckState, Field: k, Live: s.State[k],
				Detail: "spawn record of a spawn the log does not hold"})
		}
	}
	return out
}

// compareTaskCount compares the live @tasks, the run's tasks at submit,
// with the log's (its tasks less those spawned). A finish ends a small
// run once @ok reaches @tasks + @spawned, so an @tasks below the real
// count could end a run before every task succeeded. A run without
// @tasks is fine: its finishes leave the end to a projector.
func compareTaskCount(a *Analysis, s Live) []Problem {
	live, ok := s.State[statehash.FieldRunTasks]
	if !ok {
		return nil
	}
	spawned, _ := strconv.Atoi(a.spawnFields()[statehash.FieldRunSpawned])
	want := strconv.Itoa(len(a.Specs()) - spawned)
	if live == want {
		return nil
	}
	return []Problem{{Check: CheckState, Field: statehash.FieldRunTasks, Live: live, Replayed: want,
		Detail: "the run's task count at submit differs from the log's (a finish ends a run by it)"}}
}
