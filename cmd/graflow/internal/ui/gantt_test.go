package ui

import (
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/replay"
)

// A task parked until its start_after (or a retry's backoff) ends, not yet
// due, is drawn from its dispatch to now inside the chart: its wait bar
// ran from the due time, in the future, so it started past the chart's
// right edge and its title said "waited -59m50s" (a review found it once
// the timeline recorded delayed starts' due times).
func TestGanttDrawsAParkedAttemptInsideTheChart(t *testing.T) {
	t.Parallel()
	s := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	tl := &replay.Timeline{SubmittedAt: s, Tasks: []replay.TaskTimeline{{ID: "later", Attempts: []replay.Attempt{
		{Number: 1, Kind: "dispatch", DispatchedAt: s.Add(time.Second), DueAt: s.Add(time.Hour), Outcome: "dispatched"},
	}}}}
	v := layoutGantt(tl, s.Add(10*time.Second))
	if len(v.Rows) != 1 || len(v.Rows[0].Bars) != 1 {
		t.Fatalf("rows %+v, want one row of one bar", v.Rows)
	}
	b := v.Rows[0].Bars[0]
	if b.X < ganttLabelW || b.X+b.W > ganttLabelW+ganttBarW {
		t.Errorf("bar at x %d, width %d: outside the chart's %d..%d", b.X, b.W, ganttLabelW, ganttLabelW+ganttBarW)
	}
	if strings.Contains(b.Title, "-") || !strings.Contains(b.Title, "parked") {
		t.Errorf("bar title %q, want it parked, with no negative duration", b.Title)
	}
}
