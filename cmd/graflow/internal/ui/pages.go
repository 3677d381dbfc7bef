package ui

import (
	"bytes"
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/replay"
)

// pageNames are the pages; each is templates/<name>.tmpl with the layout.
var pageNames = []string{"runs", "run", "task", "timeline", "workers", "projectors", "queues", "deadletters", "error"}

// parsePages parses every page with the layout and the DAG fragment.
func (s *Server) parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"path":  url.PathEscape,
		"stamp": func(t time.Time) string { return stamp(t) },
		"ago": func(t time.Time) string {
			if t.IsZero() {
				return "-"
			}
			return s.cfg.Now().Sub(t).Round(time.Second).String() + " ago"
		},
		"rel": func(t, t0 time.Time) string {
			if t.IsZero() || t0.IsZero() {
				return "-"
			}
			return "+" + t.Sub(t0).Round(time.Millisecond).String()
		},
		"ms": func(ms int64) string { return (time.Duration(ms) * time.Millisecond).Round(time.Millisecond).String() },
		"msp": func(ms *int64) string {
			if ms == nil {
				return "-"
			}
			return (time.Duration(*ms) * time.Millisecond).String()
		},
		"join": strings.Join,
		"add":  func(a, b int) int { return a + b },
	}
	out := make(map[string]*template.Template, len(pageNames))
	for _, name := range pageNames {
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.tmpl", "templates/dag.tmpl", "templates/"+name+".tmpl")
		if err != nil {
			return nil, err
		}
		out[name] = t
	}
	return out, nil
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05.000Z")
}

// base is what every page has: its title, the namespace, and which
// section of the navigation it belongs to.
type base struct {
	Title     string
	Namespace string
	Section   string
}

func (s *Server) base(title, section string) base {
	return base{Title: title, Namespace: s.cfg.Client.Namespace(), Section: section}
}

// runStatuses are the statuses the runs list filters by.
var runStatuses = []string{"running", "succeeded", "failed", "cancelled", "quarantined", graflow.RunUnreadable}

type runsPage struct {
	base
	Status, Name string
	Statuses     []string
	Runs         []graflow.RunSummary
	Page         int
	First        int // 1-based number of the first run shown
	Prev, Next   string
}

// handleRuns serves GET /runs?status=&name=&page=: the run index, newest
// first, a page at a time. name keeps runs whose workflow or id contains
// it (case-insensitive).
func (s *Server) handleRuns(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	status := strings.TrimSpace(q.Get("status"))
	name := strings.TrimSpace(q.Get("name"))
	page, _ := strconv.Atoi(q.Get("page"))
	page = max(page, 1)
	per := s.cfg.PageSize
	skip := (page - 1) * per
	// Client.Runs filters by status and stops at a limit, newest first; it
	// has no name filter nor offset, so a name filter reads the whole index.
	limit := skip + per + 1
	if name != "" {
		limit = -1
	}
	runs, err := s.cfg.Client.Runs(r.Context(), graflow.RunsOptions{Status: status, Limit: limit})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if name != "" {
		lname := strings.ToLower(name)
		kept := runs[:0]
		for _, run := range runs {
			if strings.Contains(strings.ToLower(run.Workflow), lname) || strings.Contains(strings.ToLower(run.ID), lname) {
				kept = append(kept, run)
			}
		}
		runs = kept
	}
	p := runsPage{base: s.base("Runs", "runs"), Status: status, Name: name, Statuses: runStatuses, Page: page, First: skip + 1}
	link := func(page int) string {
		v := url.Values{}
		if status != "" {
			v.Set("status", status)
		}
		if name != "" {
			v.Set("name", name)
		}
		if page > 1 {
			v.Set("page", strconv.Itoa(page))
		}
		if len(v) == 0 {
			return "/runs"
		}
		return "/runs?" + v.Encode()
	}
	if skip < len(runs) {
		p.Runs = runs[skip:min(skip+per, len(runs))]
	}
	if page > 1 {
		p.Prev = link(page - 1)
	}
	if len(runs) > skip+per {
		p.Next = link(page + 1)
	}
	s.render(w, r, http.StatusOK, "runs", p)
}

type runPage struct {
	base
	Run    *graflow.RunInfo
	DAG    dagView
	Counts []statusCount
}

type statusCount struct {
	Status string
	N      int
}

// taskStatusOrder orders the per-status counts of a run.
var taskStatusOrder = []string{"pending", "dispatched", "running", "awaiting_retry", "succeeded", "failed", "skipped", "cancelled"}

// handleRun serves GET /runs/{id}: the run's status, its DAG and its
// tasks; the page's script then follows /runs/{id}/events.
func (s *Server) handleRun(w http.ResponseWriter, r *http.Request) {
	info, err := s.cfg.Client.Status(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	p := runPage{base: s.base("Run "+info.ID, "runs"), Run: info, DAG: layoutDAG(info.ID, info.Tasks)}
	for _, st := range taskStatusOrder {
		p.Counts = append(p.Counts, statusCount{Status: st, N: info.Counts[st]})
	}
	s.render(w, r, http.StatusOK, "run", p)
}

// handleDAG serves GET /runs/{id}/dag: the DAG drawing alone, which the
// run page fetches again when tasks are added while it is open.
func (s *Server) handleDAG(w http.ResponseWriter, r *http.Request) {
	info, err := s.cfg.Client.Status(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var buf bytes.Buffer
	if err := s.pages["run"].ExecuteTemplate(&buf, "dag", layoutDAG(info.ID, info.Tasks)); err != nil {
		s.cfg.Logger.Error().Err(err).Msg("render dag")
		http.Error(w, "internal error rendering the DAG", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = buf.WriteTo(w)
}

type taskPage struct {
	base
	Run    *graflow.RunInfo
	Task   *graflow.TaskInfo
	Result string
	// Timeline is the task's history (nil when the log cannot be
	// analysed; TimelineErr says why).
	Timeline    *replay.TaskTimeline
	TimelineErr string
	SubmittedAt time.Time
}

// handleTask serves GET /runs/{id}/tasks/{task}: the task's state (folded
// by Client.Status), its result or error, and its attempts (from the
// replayed timeline).
func (s *Server) handleTask(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	info, err := s.cfg.Client.Status(ctx, r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	id := r.PathValue("task")
	t := info.Task(id)
	if t == nil {
		s.fail(w, r, errors.Join(graflow.ErrRunNotFound, errors.New("no task "+strconv.Quote(id)+" in run "+info.ID)))
		return
	}
	p := taskPage{base: s.base("Task "+id, "runs"), Run: info, Task: t, Result: prettyJSON(t.Result)}
	if tl, err := s.cfg.Client.Timeline(ctx, info.ID); err != nil {
		p.TimelineErr = err.Error()
	} else {
		p.SubmittedAt = tl.SubmittedAt
		for i := range tl.Tasks {
			if tl.Tasks[i].ID == id {
				p.Timeline = &tl.Tasks[i]
			}
		}
	}
	s.render(w, r, http.StatusOK, "task", p)
}

// maxShownJSON bounds a result or dead letter's details shown on a page.
const maxShownJSON = 64 << 10

// prettyJSON indents raw for reading, cut to maxShownJSON.
func prettyJSON(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		buf.Reset()
		buf.Write(raw)
	}
	if buf.Len() > maxShownJSON {
		return buf.String()[:maxShownJSON] + "\n… (cut: " + strconv.Itoa(buf.Len()) + " bytes in all; graflow status --json shows it whole)"
	}
	return buf.String()
}

type timelinePage struct {
	base
	TL    *replay.Timeline
	Gantt ganttView
}

// handleTimeline serves GET /runs/{id}/timeline: the run's history
// replayed from its log (Client.Timeline).
func (s *Server) handleTimeline(w http.ResponseWriter, r *http.Request) {
	tl, err := s.cfg.Client.Timeline(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, http.StatusOK, "timeline", timelinePage{base: s.base("Timeline of "+tl.Run, "runs"), TL: tl, Gantt: layoutGantt(tl, s.cfg.Now())})
}

type workersPage struct {
	base
	Workers []graflow.WorkerInfo
}

func (s *Server) handleWorkers(w http.ResponseWriter, r *http.Request) {
	ws, err := s.cfg.Client.Workers(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, http.StatusOK, "workers", workersPage{base: s.base("Workers", "workers"), Workers: ws})
}

type projectorsPage struct {
	base
	Projectors []graflow.ProjectorInfo
	Live       int
}

func (s *Server) handleProjectors(w http.ResponseWriter, r *http.Request) {
	ps, err := s.cfg.Client.Projectors(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	p := projectorsPage{base: s.base("Projectors", "projectors"), Projectors: ps}
	for _, pi := range ps {
		if !pi.Expired {
			p.Live++
		}
	}
	s.render(w, r, http.StatusOK, "projectors", p)
}

type queuesPage struct {
	base
	Queues []queueRow
	All    bool
}

type queueRow struct {
	graflow.QueueInfo
	ConsumerList []string
}

// handleQueues serves GET /queues[?all=1]: the queue streams per pool and
// priority band; all includes empty bands.
func (s *Server) handleQueues(w http.ResponseWriter, r *http.Request) {
	all := r.URL.Query().Get("all") != ""
	qs, err := s.cfg.Client.Queues(r.Context(), graflow.QueuesOptions{Empty: all})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	p := queuesPage{base: s.base("Queues", "queues"), All: all}
	for _, q := range qs {
		row := queueRow{QueueInfo: q}
		for name, n := range q.Consumers {
			row.ConsumerList = append(row.ConsumerList, name+": "+strconv.FormatInt(n, 10))
		}
		sort.Strings(row.ConsumerList)
		p.Queues = append(p.Queues, row)
	}
	s.render(w, r, http.StatusOK, "queues", p)
}

// maxDeadLetters bounds the dead letters listed.
const maxDeadLetters = 500

type deadLettersPage struct {
	base
	Letters []deadLetterRow
	// More is set when there may be more than listed.
	More bool
	Max  int
	CSRF string
}

type deadLetterRow struct {
	graflow.DeadLetter
	Details string
}

// handleDeadLetters serves GET /dead-letters: the oldest dead letters,
// each with a requeue form.
func (s *Server) handleDeadLetters(w http.ResponseWriter, r *http.Request) {
	dls, err := s.cfg.Client.DeadLetters(r.Context(), maxDeadLetters+1)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	p := deadLettersPage{base: s.base("Dead letters", "dead-letters"), CSRF: s.csrfToken(w, r), Max: maxDeadLetters}
	if len(dls) > maxDeadLetters {
		dls, p.More = dls[:maxDeadLetters], true
	}
	for _, d := range dls {
		p.Letters = append(p.Letters, deadLetterRow{DeadLetter: d, Details: prettyJSON(d.Details)})
	}
	s.render(w, r, http.StatusOK, "deadletters", p)
}

// handleRequeue serves POST /dead-letters/requeue (run, task, and the CSRF
// token, checked by requireCSRF): Client.Requeue, then a redirect to the
// run's page, which shows it running again.
func (s *Server) handleRequeue(w http.ResponseWriter, r *http.Request) {
	run, task := r.PostFormValue("run"), r.PostFormValue("task")
	if run == "" || task == "" {
		http.Error(w, "requeue needs the run and task fields", http.StatusBadRequest)
		return
	}
	err := s.cfg.Client.Requeue(r.Context(), run, task)
	switch {
	case errors.Is(err, rdb.ErrNotRequeueable):
		s.render(w, r, http.StatusConflict, "error", errorPage{base: s.base("Not requeued", "dead-letters"), Status: http.StatusConflict, Message: err.Error()})
		return
	case err != nil:
		s.fail(w, r, err)
		return
	}
	s.cfg.Logger.Info().Str("run", run).Str("task", task).Msg("requeued from the dashboard")
	http.Redirect(w, r, "/runs/"+url.PathEscape(run), http.StatusSeeOther)
}
