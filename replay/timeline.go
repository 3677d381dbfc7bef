package replay

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Timeline is a run's history rebuilt from its log: per task its attempts,
// claims, reclaims, rejected results and why it became ready. Times are the
// writers' clocks as recorded in the events; seqs are log entry ids.
type Timeline struct {
	Run         string    `json:"run"`
	Workflow    string    `json:"workflow"`
	Status      string    `json:"status"`
	FailedTask  string    `json:"failed_task,omitempty"`
	Cause       string    `json:"cause,omitempty"`
	SubmittedAt time.Time `json:"submitted_at,omitzero"`
	// EndedAt is the time of run_succeeded / run_failed / run_cancelled.
	EndedAt    time.Time `json:"ended_at,omitzero"`
	DurationMS *int64    `json:"duration_ms,omitempty"`
	Events     int       `json:"events"`
	LastSeq    string    `json:"last_seq"`
	Retries    int       `json:"retries"`
	Reclaims   int       `json:"reclaims"`
	Rejected   int       `json:"rejected"`
	Requeues   int       `json:"requeues"`
	// Workers maps each worker to the number of claims it made.
	Workers map[string]int `json:"workers"`
	// Tasks in the order they were submitted.
	Tasks []TaskTimeline `json:"tasks"`
}

// TaskTimeline is the history of one task.
type TaskTimeline struct {
	ID          string   `json:"id"`
	Handler     string   `json:"handler"`
	Deps        []string `json:"deps,omitempty"`
	Pool        string   `json:"pool"`
	Priority    int      `json:"priority"`
	MaxAttempts int      `json:"max_attempts"`
	// Final folded state.
	Status  string `json:"status"`
	Attempt int    `json:"attempt"`
	Epoch   int64  `json:"epoch"`
	Owner   string `json:"owner,omitempty"`
	// Ready says why the task became ready: no dependencies, or the
	// dependency whose accepted task_succeeded came last before its
	// task_dispatched. Nil for a task never unlocked.
	Ready    *Unlock     `json:"ready,omitempty"`
	Attempts []Attempt   `json:"attempts,omitempty"`
	Retries  int         `json:"retries"`
	Reclaims int         `json:"reclaims"`
	Rejected []Rejection `json:"rejected,omitempty"`
	// Requeues: the task failed for good (or was skipped) and was given
	// another attempt (dead-letter requeue).
	Requeues  []Requeue       `json:"requeues,omitempty"`
	SkipCause string          `json:"skip_cause,omitempty"`
	SkippedAt time.Time       `json:"skipped_at,omitzero"`
	Error     string          `json:"error,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
}

// Unlock is why a task became ready.
type Unlock struct {
	// By is the dependency whose success unlocked the task; "" when the
	// task has no dependencies.
	By     string `json:"by,omitempty"`
	Reason string `json:"reason"`
	// EventID, Seq and At identify the unlocking event (task_succeeded of
	// By, or the run_submitted / tasks_added that added the task).
	EventID string    `json:"event_id"`
	Seq     string    `json:"seq,omitempty"`
	At      time.Time `json:"at"`
}

// Attempt is one attempt of a task: dispatched (or retried), claimed one or
// more times (reclaims take it over), and finished.
type Attempt struct {
	Number int `json:"number"`
	// Kind is "dispatch" (first attempt) or "retry".
	Kind         string    `json:"kind"`
	Seq          string    `json:"seq,omitempty"`
	DispatchedAt time.Time `json:"dispatched_at,omitzero"`
	// DueAt is when a retry's backoff, or a delayed start's start_after,
	// ended.
	DueAt    time.Time `json:"due_at,omitzero"`
	Claims   []Claim   `json:"claims,omitempty"`
	Reclaims []Reclaim `json:"reclaims,omitempty"`
	// Worker, Epoch and ClaimedAt are those of the last claim.
	Worker     string    `json:"worker,omitempty"`
	Epoch      int64     `json:"epoch,omitempty"`
	ClaimedAt  time.Time `json:"claimed_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// WaitMS is from dispatch (or the due time of a retry or a delayed
	// start, if later) to the first claim; RunMS from the last claim to
	// the outcome.
	WaitMS *int64 `json:"wait_ms,omitempty"`
	RunMS  *int64 `json:"run_ms,omitempty"`
	// Outcome: dispatched, running, succeeded, failed, timed_out, cancelled.
	Outcome     string `json:"outcome"`
	Error       string `json:"error,omitempty"`
	FailureKind string `json:"failure_kind,omitempty"`
	Heartbeats  int    `json:"heartbeats,omitempty"`
	// ChannelWrites counts the attempt's writes to the run's channel.
	ChannelWrites int `json:"channel_writes,omitempty"`
}

// Claim is a task_claimed event.
type Claim struct {
	Epoch  int64     `json:"epoch"`
	Worker string    `json:"worker"`
	At     time.Time `json:"at"`
	Seq    string    `json:"seq,omitempty"`
}

// Reclaim is a task_reclaimed event: the claim of From was taken away
// (epoch bumped to Epoch) by By, after its lease expired, or handed back
// by From itself (Reason "handed back", a draining worker).
type Reclaim struct {
	Epoch      int64     `json:"epoch"`
	From       string    `json:"from"`
	By         string    `json:"by"`
	Deliveries int64     `json:"deliveries,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	At         time.Time `json:"at"`
	Seq        string    `json:"seq,omitempty"`
}

// Requeue is a task_requeued event.
type Requeue struct {
	// From is the status the task left: failed or skipped.
	From  string    `json:"from"`
	Cause string    `json:"cause,omitempty"`
	By    string    `json:"by,omitempty"`
	At    time.Time `json:"at"`
	Seq   string    `json:"seq,omitempty"`
}

// Rejection is a result_rejected event: Worker reported (What: result,
// failure, heartbeat) on a claim it no longer held.
type Rejection struct {
	What         string    `json:"what"`
	Reason       string    `json:"reason"`
	Worker       string    `json:"worker"`
	Attempt      int       `json:"attempt"`
	Epoch        int64     `json:"epoch"`
	CurrentEpoch int64     `json:"current_epoch"`
	At           time.Time `json:"at"`
	Seq          string    `json:"seq,omitempty"`
}

// attempt returns attempt n of the task, adding it if the log never
// dispatched it (a history problem reported separately).
func (t *TaskTimeline) attempt(n int) *Attempt {
	for i := len(t.Attempts) - 1; i >= 0; i-- {
		if t.Attempts[i].Number == n {
			return &t.Attempts[i]
		}
	}
	t.Attempts = append(t.Attempts, Attempt{Number: n, Kind: "unknown", Outcome: "dispatched"})
	return &t.Attempts[len(t.Attempts)-1]
}

func (a *Attempt) done() bool {
	switch a.Outcome {
	case "dispatched", "running":
		return false
	}
	return true
}

func (a *Attempt) durations() {
	start := a.DispatchedAt
	if !a.DueAt.IsZero() && a.DueAt.After(start) {
		start = a.DueAt
	}
	first := a.ClaimedAt
	if len(a.Claims) > 0 {
		first = a.Claims[0].At
	}
	if !start.IsZero() && !first.IsZero() {
		a.WaitMS = ptr(max(first.Sub(start).Milliseconds(), 0))
	}
	if !a.ClaimedAt.IsZero() && !a.FinishedAt.IsZero() {
		a.RunMS = ptr(a.FinishedAt.Sub(a.ClaimedAt).Milliseconds())
	}
}

func msTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// WriteText writes the timeline for people: a header, then one row per
// attempt with times relative to the submission.
func (tl *Timeline) WriteText(w io.Writer) error {
	rel := func(t time.Time) string {
		if t.IsZero() || tl.SubmittedAt.IsZero() {
			return "-"
		}
		return "+" + t.Sub(tl.SubmittedAt).Round(time.Millisecond).String()
	}
	ms := func(p *int64) string {
		if p == nil {
			return "-"
		}
		if *p == 0 {
			return "0ms"
		}
		return (time.Duration(*p) * time.Millisecond).String()
	}
	fmt.Fprintf(w, "run %s  workflow %s  status %s  events %d\n", tl.Run, tl.Workflow, tl.Status, tl.Events)
	took := "still running"
	if tl.DurationMS != nil {
		took = "took " + ms(tl.DurationMS)
	}
	fmt.Fprintf(w, "submitted %s  %s  retries %d  reclaims %d  rejected results %d  requeues %d\n",
		tl.SubmittedAt.Format("2006-01-02T15:04:05.000Z07:00"), took, tl.Retries, tl.Reclaims, tl.Rejected, tl.Requeues)
	if tl.FailedTask != "" {
		fmt.Fprintf(w, "failed task %s: %s\n", tl.FailedTask, tl.Cause)
	}
	if len(tl.Workers) > 0 {
		names := make([]string, 0, len(tl.Workers))
		for n := range tl.Workers {
			names = append(names, n)
		}
		sort.Strings(names)
		parts := make([]string, len(names))
		for i, n := range names {
			parts[i] = fmt.Sprintf("%s (%d claims)", n, tl.Workers[n])
		}
		fmt.Fprintf(w, "workers: %s\n", strings.Join(parts, ", "))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK\tATTEMPT\tWORKER\tEPOCH\tDISPATCHED\tCLAIMED\tFINISHED\tWAIT\tRAN\tOUTCOME\tREADY BECAUSE / NOTES")
	for _, t := range tl.Tasks {
		ready := "never unlocked"
		if t.Ready != nil {
			ready = t.Ready.Reason
			if t.Ready.By != "" {
				ready += " (" + rel(t.Ready.At) + ")"
			}
		}
		if len(t.Attempts) == 0 {
			note := ready
			if t.SkipCause != "" {
				note = "skipped at " + rel(t.SkippedAt) + ": " + t.SkipCause
			}
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t-\t%s\t%s\n", t.ID, t.Status, note)
		}
		for i, a := range t.Attempts {
			id, notes := t.ID, []string{}
			if i == 0 {
				notes = append(notes, ready)
				if a.DueAt.After(a.DispatchedAt) {
					notes = append(notes, "start after, due "+rel(a.DueAt))
				}
			} else {
				id = ""
				switch a.Kind {
				case "retry":
					notes = append(notes, "retry, due "+rel(a.DueAt))
				case "requeue":
					notes = append(notes, "requeued")
					if a.DueAt.After(a.DispatchedAt) {
						notes = append(notes, "start after, due "+rel(a.DueAt))
					}
				}
			}
			for _, r := range a.Reclaims {
				if r.Reason == "handed back" {
					notes = append(notes, fmt.Sprintf("handed back by %s at %s (epoch %d)", orDash(r.From), rel(r.At), r.Epoch))
					continue
				}
				note := fmt.Sprintf("reclaimed from %s by %s at %s (epoch %d", orDash(r.From), r.By, rel(r.At), r.Epoch)
				if r.Deliveries > 0 {
					note += fmt.Sprintf(", %d deliveries", r.Deliveries)
				}
				if r.Reason != "" {
					note += ", " + r.Reason
				}
				notes = append(notes, note+")")
			}
			if len(a.Claims) > 1 {
				notes = append(notes, fmt.Sprintf("%d claims", len(a.Claims)))
			}
			switch {
			case a.ChannelWrites == 1:
				notes = append(notes, "1 channel write")
			case a.ChannelWrites > 1:
				notes = append(notes, fmt.Sprintf("%d channel writes", a.ChannelWrites))
			}
			if a.Error != "" {
				notes = append(notes, clip(a.Error, 80))
			}
			epoch := "-"
			if a.Epoch > 0 {
				epoch = fmt.Sprint(a.Epoch)
			}
			fmt.Fprintf(tw, "%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, a.Number, t.MaxAttempts, orDash(a.Worker), epoch,
				rel(a.DispatchedAt), rel(a.ClaimedAt), rel(a.FinishedAt), ms(a.WaitMS), ms(a.RunMS), a.Outcome, strings.Join(notes, "; "))
		}
		for _, q := range t.Requeues {
			fmt.Fprintf(tw, "\t\t%s\t\t\t\t\t\t\t%s\trequeued at %s: %s\n", orDash(q.By), "requeued (was "+q.From+")", rel(q.At), clip(q.Cause, 80))
		}
		for _, r := range t.Rejected {
			fmt.Fprintf(tw, "\t%d/%d\t%s\t%d\t\t%s\t\t\t\trejected %s\t%s\n", r.Attempt, t.MaxAttempts, r.Worker, r.Epoch, rel(r.At), r.What, clip(r.Reason, 80))
		}
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func clip(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}
