package ui

import (
	"fmt"
	"time"

	"github.com/graflow-go/graflow/replay"
)

// Geometry of the timeline chart.
const (
	ganttLabelW = 200
	ganttBarW   = 640
	ganttRowH   = 22
	ganttPad    = 6
	// maxGanttRows bounds the attempts drawn.
	maxGanttRows = 300
)

// ganttBar is one segment of an attempt: waiting in its queue, or running.
type ganttBar struct {
	X, W    int
	Kind    string // "wait" or "run"
	Outcome string // the attempt's outcome (colours a run bar)
	Title   string
}

// ganttRow is one attempt of one task.
type ganttRow struct {
	Label, Task string
	Y           int
	Bars        []ganttBar
}

// ganttView is a run's attempts on one time axis, from the submission to
// the end (or now, for a run still running).
type ganttView struct {
	Width, Height int
	LabelW        int
	Rows          []ganttRow
	Span          string // the axis' length, e.g. "1.25s"
	// Cut counts attempts not drawn (beyond maxGanttRows).
	Cut int
}

// layoutGantt draws tl's attempts; now ends the bars of attempts still
// running. Pure.
func layoutGantt(tl *replay.Timeline, now time.Time) ganttView {
	start := tl.SubmittedAt
	end := tl.EndedAt
	if end.IsZero() {
		end = now
	}
	var rows []ganttRow
	cut := 0
	for _, t := range tl.Tasks {
		for _, a := range t.Attempts {
			if start.IsZero() || !end.After(start) {
				break
			}
			if len(rows) == maxGanttRows {
				cut++
				continue
			}
			rows = append(rows, ganttRow{Label: shorten(fmt.Sprintf("%s #%d", t.ID, a.Number), 28), Task: t.ID, Bars: attemptBars(a, start, end)})
		}
	}
	span := end.Sub(start)
	for i := range rows {
		rows[i].Y = ganttPad + i*ganttRowH
		for j := range rows[i].Bars {
			b := &rows[i].Bars[j]
			b.X = ganttLabelW + scale(max(b.X, 0), span)
			b.W = max(scale(b.W, span), 2)
		}
	}
	return ganttView{
		Width: ganttLabelW + ganttBarW + ganttPad, Height: 2*ganttPad + len(rows)*ganttRowH, LabelW: ganttLabelW,
		Rows: rows, Span: span.Round(time.Millisecond).String(), Cut: cut,
	}
}

// scale maps a length in milliseconds (of span) to pixels of the bar area.
func scale(ms int, span time.Duration) int {
	if span <= 0 {
		return 0
	}
	return int(float64(ms) / float64(span.Milliseconds()+1) * ganttBarW)
}

// attemptBars returns a's wait and run segments with X and W in
// milliseconds from start (layoutGantt scales them). The wait runs from
// the dispatch (or the due time of a retry or a delayed start) to the
// first claim: the rule replay uses for Attempt.WaitMS, which replay does
// not export. An attempt still parked before its due time is drawn from
// its dispatch to end, as parked.
func attemptBars(a replay.Attempt, start, end time.Time) []ganttBar {
	var bars []ganttBar
	from := a.DispatchedAt
	if !a.DueAt.IsZero() && a.DueAt.After(from) {
		from = a.DueAt
	}
	claimed := a.ClaimedAt
	if len(a.Claims) > 0 {
		claimed = a.Claims[0].At
	}
	finished := a.FinishedAt
	if finished.IsZero() && !a.ClaimedAt.IsZero() {
		finished = end // still running
	}
	ms := func(t time.Time) int { return int(t.Sub(start).Milliseconds()) }
	if !from.IsZero() {
		to := claimed
		if to.IsZero() {
			to = end // still waiting
		}
		title := fmt.Sprintf("attempt %d waited %s", a.Number, to.Sub(from).Round(time.Millisecond))
		if from.After(to) { // parked until its due time, not yet reached
			from = a.DispatchedAt
			title = fmt.Sprintf("attempt %d parked, due in %s", a.Number, a.DueAt.Sub(to).Round(time.Second))
		}
		bars = append(bars, ganttBar{X: ms(from), W: ms(to) - ms(from), Kind: "wait", Outcome: a.Outcome, Title: title})
	}
	if !a.ClaimedAt.IsZero() {
		who := a.Worker
		bars = append(bars, ganttBar{X: ms(a.ClaimedAt), W: ms(finished) - ms(a.ClaimedAt), Kind: "run", Outcome: a.Outcome,
			Title: fmt.Sprintf("attempt %d on %s: %s after %s", a.Number, who, a.Outcome, finished.Sub(a.ClaimedAt).Round(time.Millisecond))})
	}
	return bars
}
