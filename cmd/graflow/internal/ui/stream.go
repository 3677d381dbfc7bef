package ui

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
)

// maxErrorRunes bounds an error message sent to or shown by the page.
const maxErrorRunes = 500

// taskView is what the page shows of a task; a live stream sends it when
// it changes.
type taskView struct {
	ID      string `json:"id"`
	Status  string `json:"status"`
	Attempt int    `json:"attempt"`
	Owner   string `json:"owner,omitempty"`
	Error   string `json:"error,omitempty"`
}

// runView is what the page shows of the run itself.
type runView struct {
	Status     string `json:"status"`
	FailedTask string `json:"failed_task,omitempty"`
	Cause      string `json:"cause,omitempty"`
	Events     int    `json:"events"`
}

// snapshotMsg is a stream's first message: the state folded from the log
// as it was when the stream opened.
type snapshotMsg struct {
	Run   runView    `json:"run"`
	Tasks []taskView `json:"tasks"`
}

// eventMsg is one event appended to the log after the snapshot, with what
// it changed.
type eventMsg struct {
	Seq     string    `json:"seq"`
	Type    string    `json:"type"`
	Task    string    `json:"task,omitempty"`
	Attempt int       `json:"attempt,omitempty"`
	Worker  string    `json:"worker,omitempty"`
	Time    time.Time `json:"time"`
	// Run is set when the run's status changed.
	Run *runView `json:"run,omitempty"`
	// Tasks lists the tasks whose view changed.
	Tasks []taskView `json:"tasks,omitempty"`
	// Added counts tasks the event added (tasks_added): the page redraws
	// its DAG.
	Added int `json:"added,omitempty"`
	// Events counts the events folded so far.
	Events int `json:"events"`
	// Problem is set when the event does not fold (the projector would
	// quarantine the run); the stream goes on, as Client.Status does.
	Problem string `json:"problem,omitempty"`
}

// liveRun folds a run's events with projector.Apply, the projector's own
// fold, and remembers what the page was sent, to send only changes. Not
// safe for concurrent use.
type liveRun struct {
	run  *projector.Run
	sent []taskView
	last runView
}

func newLiveRun(id string) *liveRun { return &liveRun{run: projector.NewRun(id)} }

// apply folds e and returns what changed. Only e's own task is compared,
// or every task for a run-level event: in the fold a task event changes no
// other task's status, attempt, owner or error (cascades such as skips
// behind a failure are events of their own).
func (l *liveRun) apply(e events.Event) eventMsg {
	msg := eventMsg{Seq: e.Seq, Type: string(e.Type), Task: e.Task, Attempt: e.Attempt, Worker: e.Worker, Time: e.Time}
	before := len(l.run.Tasks)
	if err := projector.Apply(l.run, e); err != nil {
		msg.Problem = shorten(err.Error(), maxErrorRunes)
	}
	msg.Added = len(l.run.Tasks) - before
	msg.Events = l.run.Events
	for i := len(l.sent); i < len(l.run.Tasks); i++ {
		l.sent = append(l.sent, taskView{})
	}
	if e.Task == "" || msg.Added > 0 {
		for i := range l.run.Tasks {
			msg.Tasks = l.diff(i, msg.Tasks)
		}
	} else {
		for i, t := range l.run.Tasks {
			if t.Spec.ID == e.Task {
				msg.Tasks = l.diff(i, msg.Tasks)
				break
			}
		}
	}
	if rv := l.runView(); rv.Status != l.last.Status || rv.FailedTask != l.last.FailedTask {
		l.last = rv
		msg.Run = &rv
	}
	return msg
}

// diff appends task i's view to out if it changed since it was sent.
func (l *liveRun) diff(i int, out []taskView) []taskView {
	v := viewOf(l.run.Tasks[i])
	if v != l.sent[i] {
		l.sent[i] = v
		out = append(out, v)
	}
	return out
}

// snapshot returns the whole state and marks it sent.
func (l *liveRun) snapshot() snapshotMsg {
	m := snapshotMsg{Run: l.runView(), Tasks: make([]taskView, len(l.run.Tasks))}
	l.sent = l.sent[:0]
	for i, t := range l.run.Tasks {
		m.Tasks[i] = viewOf(t)
		l.sent = append(l.sent, m.Tasks[i])
	}
	l.last = m.Run
	return m
}

func (l *liveRun) runView() runView {
	r := l.run
	return runView{Status: string(r.Status), FailedTask: r.FailedTask, Cause: shorten(r.Cause, maxErrorRunes), Events: r.Events}
}

// ended reports whether the run has ended as folded so far.
func (l *liveRun) ended() bool { return l.run.Status.Terminal() }

func viewOf(t *projector.Task) taskView {
	return taskView{ID: t.Spec.ID, Status: string(t.Status), Attempt: t.Attempt, Owner: t.Owner, Error: shorten(t.Error, maxErrorRunes)}
}

// errStreamEnded stops Follow once the run has ended.
var errStreamEnded = errors.New("run ended")

// handleStream serves GET /runs/{id}/events: the run's state as
// server-sent events. It reads the log so far and folds it, sends a
// "snapshot", then follows the log (Client.Follow: XREAD BLOCK, no
// polling) and sends an "ev" per new event, until the run ends ("end",
// then the response closes), the browser goes away (the request's context
// is cancelled; Follow notices within FollowBlock), or the log cannot be
// read ("fault"). The handler starts no goroutine.
func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	run := r.PathValue("id")
	select {
	case s.streams <- struct{}{}:
		defer func() { <-s.streams }()
	default:
		http.Error(w, fmt.Sprintf("too many live pages open (%d): close some dashboard tabs and reload", s.cfg.MaxStreams), http.StatusServiceUnavailable)
		return
	}
	// The log so far, in one read; Follow then starts after its last entry
	// (without UntilEnd: the live state tells the run's end).
	evs, err := s.cfg.Client.Events(ctx, run, "", 0)
	if err != nil {
		http.Error(w, "cannot read the run's log: "+err.Error(), http.StatusBadGateway)
		return
	}
	if len(evs) == 0 {
		http.Error(w, fmt.Sprintf("run %q not found in namespace %q", run, s.cfg.Client.Namespace()), http.StatusNotFound)
		return
	}
	live := newLiveRun(run)
	for _, e := range evs {
		live.apply(e)
	}
	from := evs[len(evs)-1].Seq

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(event, id string, v any) error {
		data, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if id != "" {
			_, err = fmt.Fprintf(w, "id: %s\n", id)
		}
		if err == nil {
			_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data)
		}
		if err == nil {
			err = rc.Flush()
		}
		return err
	}
	if _, err := fmt.Fprint(w, "retry: 2000\n\n"); err != nil {
		return
	}
	if err := send("snapshot", from, live.snapshot()); err != nil {
		return
	}
	if live.ended() {
		_ = send("end", "", live.runView())
		return
	}
	err = s.cfg.Client.Follow(ctx, run, graflow.FollowOptions{From: from, Block: s.cfg.FollowBlock}, func(e events.Event) error {
		if err := send("ev", e.Seq, live.apply(e)); err != nil {
			return err
		}
		if live.ended() {
			return errStreamEnded
		}
		return nil
	})
	switch {
	case errors.Is(err, errStreamEnded):
		_ = send("end", "", live.runView())
	case err != nil && ctx.Err() == nil:
		s.cfg.Logger.Warn().Err(err).Str("run", run).Msg("live stream")
		_ = send("fault", "", map[string]string{"message": "live updates stopped: " + shorten(err.Error(), maxErrorRunes)})
	}
}
