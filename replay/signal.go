package replay

import (
	"strings"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/statehash"
)

// signalFields returns the state hash fields the signal script keeps, as
// the log implies them: for each signal name, the id of the first
// signal_received of the name (statehash.SignalField).
func (a *Analysis) signalFields() map[string]string {
	out := map[string]string{}
	for _, e := range a.signals {
		var b events.SignalReceivedBody
		if e.Type != events.SignalReceived || e.DecodeBody(&b) != nil || b.Name == "" {
			continue
		}
		if f := statehash.SignalField(b.Name); out[f] == "" {
			out[f] = b.ID
		}
	}
	return out
}

// compareSignals compares the live signal ids with the log's signals: the
// signal script refuses a second signal of a name by its id.
func compareSignals(a *Analysis, s Live) []Problem {
	want := a.signalFields()
	var out []Problem
	for _, k := range sortedKeys(want) {
		if live := s.State[k]; live != want[k] {
			out = append(out, Problem{Check: CheckState, Field: k, Live: live, Replayed: want[k],
				Detail: "signal id differs from the log's first signal_received of the name"})
		}
	}
	for _, k := range sortedKeys(s.State) {
		if _, ok := want[k]; !ok && strings.HasPrefix(k, statehash.FieldSignalPrefix) {
			out = append(out, Problem{Check: CheckState, Field: k, Live: s.State[k],
				Detail: "signal id of a signal the log does not hold"})
		}
	}
	return out
}
