package chaos

import (
	"strconv"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
)

// Touches is what a run's history shows of its projectors: evidence that
// the multi-projector faults did what they are for.
type Touches struct {
	// SharedRuns counts runs whose decisions were written by two or more
	// projector ids.
	SharedRuns int
	// Handoffs counts decision events written by another projector than
	// the run's previous decision.
	Handoffs int
	// LateCommits counts decision events a projector prepared before one of
	// its SIGSTOPs and appended after the matching SIGCONT: a zombie
	// projector's commit that was accepted (it may be right to accept one,
	// when nothing changed the run in between).
	LateCommits int
}

func (t *Touches) add(u Touches) {
	t.SharedRuns += u.SharedRuns
	t.Handoffs += u.Handoffs
	t.LateCommits += u.LateCommits
}

// touches reads Touches from one run's events; isProjector tells a
// projector's writer id, pauses holds each projector id's SIGSTOPs.
func touches(evs []events.Event, isProjector func(string) bool, pauses map[string][]span) Touches {
	var t Touches
	writers := map[string]bool{}
	prev := ""
	for _, e := range evs {
		if !isProjector(e.Worker) {
			continue
		}
		writers[e.Worker] = true
		if prev != "" && e.Worker != prev {
			t.Handoffs++
		}
		prev = e.Worker
		appended, ok := seqTime(e.Seq)
		if !ok {
			continue
		}
		for _, p := range pauses[e.Worker] {
			if !p.to.IsZero() && e.Time.Before(p.from.Truncate(time.Millisecond)) && !appended.Before(p.to.Truncate(time.Millisecond)) {
				t.LateCommits++
				break
			}
		}
	}
	if len(writers) >= 2 {
		t.SharedRuns = 1
	}
	return t
}

// seqTime is the Redis clock time in a stream entry id "<ms>-<n>".
func seqTime(seq string) (time.Time, bool) {
	ms, _, ok := strings.Cut(seq, "-")
	if !ok {
		return time.Time{}, false
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(n), true
}
