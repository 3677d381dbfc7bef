package projector_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
)

// ---- snapshot: every exported field of a Run, plus what Decide would do ----

type taskSnap struct {
	Spec    events.TaskSpec
	Status  projector.TaskStatus
	Attempt int
	Epoch   int64
	Owner   string
	Error   string
	Result  string
	Expires int64
	Waits   []string
}

type decisionSnap struct {
	Type    events.Type
	Task    string
	Attempt int
	Epoch   int64
	Body    string
}

type runSnap struct {
	ID, Workflow string
	Traceparent  string
	Status       projector.RunStatus
	Input        string
	FailedTask   string
	Cause        string
	LastSeq      string
	Events       int
	Open         int
	Tasks        []taskSnap
	Counts       map[projector.TaskStatus]int
	// Decisions is what Decide returns for the state: it covers the
	// unexported work queues through their only observable effect.
	Decisions []decisionSnap
}

// snapshotFields lists the exported fields of Run and Task that snapshot
// copies; TestSnapshotCoversEveryExportedField fails when one is added, so
// the property tests cannot silently ignore new state.
var snapshotFields = map[reflect.Type][]string{
	reflect.TypeFor[projector.Run]():  {"ID", "Workflow", "Traceparent", "Status", "Input", "Tasks", "FailedTask", "Cause", "LastSeq", "Events"},
	reflect.TypeFor[projector.Task](): {"Spec", "Status", "Attempt", "Epoch", "Owner", "Error", "Result", "ResultExpiresMS", "Waits"},
}

func testDelay(spec events.TaskSpec, attempt int) time.Duration {
	return time.Duration(attempt*100) * time.Millisecond
}

func snapshot(r *projector.Run) runSnap {
	s := runSnap{
		ID: r.ID, Workflow: r.Workflow, Traceparent: r.Traceparent, Status: r.Status, Input: string(r.Input), FailedTask: r.FailedTask,
		Cause: r.Cause, LastSeq: r.LastSeq, Events: r.Events, Open: r.Open(), Counts: map[projector.TaskStatus]int{},
	}
	for _, t := range r.Tasks {
		s.Tasks = append(s.Tasks, taskSnap{Spec: t.Spec, Status: t.Status, Attempt: t.Attempt, Epoch: t.Epoch,
			Owner: t.Owner, Error: t.Error, Result: string(t.Result), Expires: t.ResultExpiresMS, Waits: t.Waits})
		s.Counts[t.Status]++
	}
	for _, d := range projector.Decide(r, 0, testDelay) {
		s.Decisions = append(s.Decisions, decisionSnap{Type: d.Type, Task: d.Task, Attempt: d.Attempt, Epoch: d.Epoch, Body: string(d.Body)})
	}
	return s
}

func TestSnapshotCoversEveryExportedField(t *testing.T) {
	t.Parallel()
	for typ, covered := range snapshotFields {
		var exported []string
		for f := range typ.Fields() {
			if f.IsExported() {
				exported = append(exported, f.Name)
			}
		}
		sort.Strings(exported)
		want := append([]string(nil), covered...)
		sort.Strings(want)
		if diff := cmp.Diff(want, exported); diff != "" {
			t.Errorf("exported fields of %s changed; update snapshot() and snapshotFields (-covered +exported):\n%s", typ, diff)
		}
	}
}

// fold applies evs to a new run and fails t on an error.
func fold(t testing.TB, run string, evs []events.Event) *projector.Run {
	t.Helper()
	r := projector.NewRun(run)
	for _, e := range evs {
		if err := projector.Apply(r, e); err != nil {
			t.Fatalf("Apply %s %s seq %s: %v", e.Type, e.Task, e.Seq, err)
		}
	}
	return r
}

// ---- simulator: an in-memory engine producing valid event histories ----

// claim is one claim a worker got: (task, attempt, epoch, worker).
type claim struct {
	task    string
	attempt int
	epoch   int64
	worker  string
}

// sim plays the engine in memory: a projector (Decide on its own fold,
// decisions appended with increasing seqs) and workers whose actions follow
// the Lua scripts (claim, reclaim, heartbeat, finish, stale results). recs
// models the lease records the scripts keep in the state hash.
type sim struct {
	t     testing.TB
	rng   *rand.Rand
	run   string
	log   []events.Event
	ms    int64
	n     int64
	ids   int
	notes int // note events appended
	recs  map[string]rdb.Record
	max   map[string]int // task → max attempts
	deps  map[string][]string
	tids  []string // task ids in creation order
	dyn   int
	// spawners are the tasks that added tasks.
	spawners map[string]bool

	proj   *projector.Run // the projector's incremental fold
	folded int            // log entries folded into proj
	claims []claim
	done   bool // run_succeeded / run_failed appended (and not reopened since)
	ended  string
	stuck  bool // the drain found the run open with nothing to do
}

func newSim(t testing.TB, seed uint64) *sim {
	return &sim{
		t: t, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), run: "run-" + strconv.FormatUint(seed, 10),
		recs: map[string]rdb.Record{}, max: map[string]int{}, deps: map[string][]string{}, ms: 1700000000000, spawners: map[string]bool{},
		proj: projector.NewRun("run-" + strconv.FormatUint(seed, 10)),
	}
}

// nextSeq returns an increasing stream id, sometimes in the same millisecond.
func (s *sim) nextSeq() string {
	if s.rng.IntN(3) > 0 {
		s.ms += int64(s.rng.IntN(5) + 1)
		s.n = 0
	} else {
		s.n++
	}
	return strconv.FormatInt(s.ms, 10) + "-" + strconv.FormatInt(s.n, 10)
}

func (s *sim) append(e events.Event) events.Event {
	s.ids++
	e.ID = fmt.Sprintf("ev%06d", s.ids)
	e.Run, e.Seq, e.Version, e.Time = s.run, s.nextSeq(), events.CurrentVersion, time.UnixMilli(s.ms).UTC()
	s.log = append(s.log, e)
	return e
}

// randomSpecs returns n tasks named prefix0.., each depending on a random
// subset of earlier tasks (of this batch and of existing).
func (s *sim) randomSpecs(prefix string, n int, existing []string) []events.TaskSpec {
	var specs []events.TaskSpec
	pool := append([]string(nil), existing...)
	for i := range n {
		id := prefix + strconv.Itoa(i)
		var deps []string
		if len(pool) > 0 {
			k := s.rng.IntN(min(len(pool), 3) + 1)
			for _, j := range s.rng.Perm(len(pool))[:k] {
				deps = append(deps, pool[j])
			}
		}
		spec := events.TaskSpec{
			ID: id, Handler: "h", Deps: deps, MaxAttempts: s.rng.IntN(3) + 1, Priority: s.rng.IntN(3),
			Args: json.RawMessage(`{"i":` + strconv.Itoa(i) + `}`),
		}
		if s.rng.IntN(4) == 0 { // a result TTL
			spec.ResultTTLMS = int64(1 + s.rng.IntN(60_000))
		}
		if len(deps) >= 2 && s.rng.IntN(3) == 0 { // a join policy
			switch s.rng.IntN(3) {
			case 0:
				spec.Join = &events.Join{Policy: events.JoinBestEffort}
			case 1:
				spec.Join = &events.Join{Policy: events.JoinAtLeast, N: 1 + s.rng.IntN(len(deps))}
			default:
				spec.Join = &events.Join{Policy: events.JoinCritical, Critical: deps[:1+s.rng.IntN(len(deps)-1)]}
			}
		}
		specs = append(specs, spec)
		pool = append(pool, id)
	}
	return specs
}

func (s *sim) addSpecs(specs []events.TaskSpec) {
	for _, sp := range specs {
		s.max[sp.ID] = max(sp.MaxAttempts, 1)
		s.deps[sp.ID] = sp.Deps
		s.tids = append(s.tids, sp.ID)
	}
}

func (s *sim) submit(n int) {
	specs := s.randomSpecs("t", n, nil)
	s.addSpecs(specs)
	s.append(events.Event{Type: events.RunSubmitted}.WithBody(events.RunSubmittedBody{
		Workflow: "prop", Tasks: specs, Input: json.RawMessage(`{"seed":1}`),
		Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}))
}

func (s *sim) rec(task string) rdb.Record {
	if r, ok := s.recs[task]; ok {
		return r
	}
	return rdb.Record{Status: "pending"}
}

func (s *sim) withStatus(st string) []string {
	var out []string
	for _, id := range s.tids {
		if string(s.rec(id).Status) == st {
			out = append(out, id)
		}
	}
	return out
}

func (s *sim) pick(ids []string) string { return ids[s.rng.IntN(len(ids))] }

func (s *sim) worker() string { return "w" + strconv.Itoa(s.rng.IntN(4)) }

// project folds the new log entries into the projector's run, decides, lets
// workers act between the decision and its commit (decisions are
// monotone), and appends the decisions, updating records as the commit
// script does.
func (s *sim) project() {
	s.catchUp()
	limit := []int{0, 1, 2, 5}[s.rng.IntN(4)]
	before := snapshot(s.proj)
	decisions := projector.Decide(s.proj, limit, testDelay)
	if diff := cmp.Diff(before, snapshot(s.proj)); diff != "" {
		s.t.Fatalf("Decide changed the run (-before +after):\n%s", diff)
	}
	if limit > 0 && len(decisions) > limit {
		s.t.Fatalf("Decide returned %d decisions, limit %d", len(decisions), limit)
	}
	for range s.rng.IntN(3) {
		s.act(false)
	}
	for _, d := range decisions {
		if d.ID != "" || d.Seq != "" || !d.Time.IsZero() {
			s.t.Fatalf("Decide set ID/Seq/Time: %+v", d)
		}
		d.Worker = "projector-1"
		r := s.rec(d.Task)
		switch d.Type {
		case events.TaskDispatched, events.TaskRetryScheduled:
			if d.Type == events.TaskDispatched && r.Status != "pending" || d.Type == events.TaskRetryScheduled && r.Status != "awaiting_retry" {
				s.t.Fatalf("%s for task %s in record %v: the decision was invalidated before its commit", d.Type, d.Task, r)
			}
			r.Status, r.Attempt = "dispatched", d.Attempt
			s.recs[d.Task] = r
		case events.TaskSkipped:
			r.Status = "skipped"
			s.recs[d.Task] = r
		case events.TaskRequeued:
			if r.Status != "skipped" {
				s.t.Fatalf("task_requeued decision for task %s in record %v", d.Task, r)
			}
			r.Status, r.Owner = "pending", ""
			s.recs[d.Task] = r
		case events.RunSucceeded, events.RunFailed:
			if s.done {
				s.t.Fatalf("second run-terminal decision %s", d.Type)
			}
			s.done, s.ended = true, string(d.Type)
		default:
			s.t.Fatalf("unexpected decision %s", d.Type)
		}
		s.append(d)
	}
}

// catchUp folds the log entries the projector has not seen yet.
func (s *sim) catchUp() {
	for ; s.folded < len(s.log); s.folded++ {
		if err := projector.Apply(s.proj, s.log[s.folded]); err != nil {
			s.t.Fatalf("projector fold: %v", err)
		}
	}
}

// act performs one random worker action. grow allows tasks_added.
func (s *sim) act(grow bool) {
	switch k := s.rng.IntN(100); {
	case k < 30:
		s.claim()
	case k < 40:
		s.reclaim()
	case k < 44:
		s.heartbeat()
	case k < 47:
		s.note()
	case k < 80:
		s.finish(grow)
	default:
		s.stale()
	}
}

func (s *sim) claim() {
	ids := s.withStatus("dispatched")
	if len(ids) == 0 || s.done {
		return
	}
	id := s.pick(ids)
	r := s.rec(id)
	w := s.worker()
	r.Status, r.Epoch, r.Owner = "running", r.Epoch+1, w
	s.recs[id] = r
	s.claims = append(s.claims, claim{id, r.Attempt, r.Epoch, w})
	s.append(events.Event{Type: events.TaskClaimed, Task: id, Attempt: r.Attempt, Epoch: r.Epoch, Worker: w})
}

// reclaim takes over a running claim as the claim script does in reclaim
// mode: task_reclaimed (epoch+1) then task_claimed (epoch+2).
func (s *sim) reclaim() {
	ids := s.withStatus("running")
	if len(ids) == 0 || s.done {
		return
	}
	id := s.pick(ids)
	r := s.rec(id)
	w := s.worker()
	from := r.Owner
	r.Epoch++
	s.append(events.Event{Type: events.TaskReclaimed, Task: id, Attempt: r.Attempt, Epoch: r.Epoch, Worker: w}.
		WithBody(events.TaskReclaimedBody{From: from, Deliveries: int64(s.rng.IntN(4) + 2)}))
	r.Status, r.Epoch, r.Owner = "running", r.Epoch+1, w
	s.recs[id] = r
	s.claims = append(s.claims, claim{id, r.Attempt, r.Epoch, w})
	s.append(events.Event{Type: events.TaskClaimed, Task: id, Attempt: r.Attempt, Epoch: r.Epoch, Worker: w})
}

func (s *sim) heartbeat() {
	ids := s.withStatus("running")
	if len(ids) == 0 {
		return
	}
	id := s.pick(ids)
	r := s.rec(id)
	s.append(events.Event{Type: events.TaskHeartbeat, Task: id, Attempt: r.Attempt, Epoch: r.Epoch, Worker: r.Owner}.
		WithBody(events.TaskHeartbeatBody{Progress: strconv.Itoa(s.rng.IntN(100)) + "%"}))
}

// note appends an event that changes no task: a channel_written by a
// running task's claim holder (the channel write script), or a
// signal_received with a name not used before (the signal script), while
// the run runs.
func (s *sim) note() {
	if s.done {
		return
	}
	s.notes++
	if ids := s.withStatus("running"); len(ids) > 0 && s.rng.IntN(2) == 0 {
		id := s.pick(ids)
		r := s.rec(id)
		s.append(events.Event{Type: events.ChannelWritten, Task: id, Attempt: r.Attempt, Epoch: r.Epoch, Worker: r.Owner}.
			WithBody(events.ChannelWrittenBody{Key: "k" + strconv.Itoa(s.rng.IntN(3)), Value: json.RawMessage(strconv.Itoa(s.notes))}))
		return
	}
	s.append(events.Event{Type: events.SignalReceived, Worker: "client-1"}.
		WithBody(events.SignalReceivedBody{Name: "s" + strconv.Itoa(s.notes), ID: "id" + strconv.Itoa(s.notes), Payload: json.RawMessage(`true`)}))
}

// finish reports an outcome for a running task by its current owner, as the
// finish script does. A success may first add tasks (dynamic fan-out).
func (s *sim) finish(grow bool) {
	ids := s.withStatus("running")
	if len(ids) == 0 {
		return
	}
	id := s.pick(ids)
	r := s.rec(id)
	ev := events.Event{Task: id, Attempt: r.Attempt, Epoch: r.Epoch, Worker: r.Owner}
	switch k := s.rng.IntN(10); {
	case k < 6:
		if grow && s.dyn < 3 && s.rng.IntN(3) == 0 {
			// A spawn as the worker validates it and the finish script
			// accepts it: dependencies on earlier tasks of the spawn and on
			// tasks that succeeded without spawning, never on the spawner
			// (see docs/workflows.md, "Dynamic tasks").
			s.dyn++
			var done []string
			for _, d := range s.withStatus("succeeded") {
				if !s.spawners[d] {
					done = append(done, d)
				}
			}
			s.spawners[id] = true
			specs := s.randomSpecs("d"+strconv.Itoa(s.dyn)+"-", s.rng.IntN(3)+1, done)
			s.addSpecs(specs)
			s.append(events.Event{Type: events.TasksAdded, Task: id, Attempt: r.Attempt, Epoch: r.Epoch, Worker: r.Owner}.
				WithBody(events.TasksAddedBody{Tasks: specs}))
		}
		r.Status = "succeeded"
		ev.Type = events.TaskSucceeded
		ev = ev.WithBody(events.TaskSucceededBody{Result: json.RawMessage(`{"task":"` + id + `","a":` + strconv.Itoa(r.Attempt) + `}`)})
	default:
		permanent := k == 9
		final := permanent || r.Attempt >= s.max[id]
		ev.Type = events.TaskFailed
		kind := events.FailureError
		if s.rng.IntN(4) == 0 {
			ev.Type, kind = events.TaskTimedOut, events.FailureTimeout
		}
		ev = ev.WithBody(events.TaskFailedBody{Error: fmt.Sprintf("%s failed at attempt %d", id, r.Attempt), Kind: kind, Final: final})
		r.Status = "awaiting_retry"
		if final {
			r.Status = "failed"
		}
	}
	s.recs[id] = r
	s.append(ev)
}

// stale replays something from an old claim: the result_rejected the
// scripts append, and sometimes the raw stale event itself (as a buggy or
// hostile writer would), which the fold must ignore as well.
func (s *sim) stale() {
	var old []claim
	for _, c := range s.claims {
		r := s.rec(c.task)
		if !(r.Status == "running" && r.Attempt == c.attempt && r.Epoch == c.epoch && r.Owner == c.worker) {
			old = append(old, c)
		}
	}
	if len(old) == 0 {
		return
	}
	c := old[s.rng.IntN(len(old))]
	r := s.rec(c.task)
	s.append(events.Event{Type: events.ResultRejected, Task: c.task, Attempt: c.attempt, Epoch: c.epoch, Worker: c.worker}.
		WithBody(events.ResultRejectedBody{What: "result", Reason: "claim lost", CurrentEpoch: r.Epoch}))
	if s.rng.IntN(2) == 0 {
		ev := events.Event{Task: c.task, Attempt: c.attempt, Epoch: c.epoch, Worker: c.worker}
		switch s.rng.IntN(4) {
		case 0:
			ev.Type = events.TaskSucceeded
			ev = ev.WithBody(events.TaskSucceededBody{Result: json.RawMessage(`"stale"`)})
		case 1:
			ev.Type = events.TaskFailed
			ev = ev.WithBody(events.TaskFailedBody{Error: "stale", Kind: events.FailureError, Final: true})
		case 2:
			ev.Type = events.TaskTimedOut
			ev = ev.WithBody(events.TaskFailedBody{Error: "stale", Kind: events.FailureTimeout})
		default:
			ev.Type = events.TaskHeartbeat
		}
		s.append(ev)
	}
}

// requeue gives a task that failed for good another attempt, as the
// requeue script does for "graflow dlq requeue". It is only called between
// projector steps: a requeue racing a projector's commit is
// TestRequeueBetweenDecideAndCommit.
func (s *sim) requeue() {
	if s.ended == string(events.RunSucceeded) || s.ended == string(events.RunCancelled) {
		return
	}
	ids := s.withStatus("failed")
	if len(ids) == 0 {
		return
	}
	id := s.pick(ids)
	r := s.rec(id)
	r.Status, r.Owner = "pending", ""
	s.recs[id] = r
	s.done, s.ended = false, ""
	s.append(events.Event{Type: events.TaskRequeued, Task: id, Attempt: r.Attempt, Epoch: r.Epoch, Worker: "operator"}.
		WithBody(events.TaskRequeuedBody{Cause: "operator"}))
}

// cancel cancels the run as the cancel script does: run_cancelled, then a
// task_cancelled with the epoch moved on for every task not terminal (in
// id order), each record set to cancelled.
func (s *sim) cancel() {
	if s.done {
		return
	}
	ids := slices.Sorted(slices.Values(s.tids))
	var open []string
	for _, id := range ids {
		if !s.rec(id).Status.Terminal() {
			open = append(open, id)
		}
	}
	s.append(events.Event{Type: events.RunCancelled, Worker: "operator"}.
		WithBody(events.RunCancelledBody{Reason: "sim", Tasks: len(open)}))
	for _, id := range open {
		r := s.rec(id)
		from, owner := r.Status, r.Owner
		r.Status, r.Epoch, r.Owner = "cancelled", r.Epoch+1, ""
		s.recs[id] = r
		s.append(events.Event{Type: events.TaskCancelled, Task: id, Attempt: r.Attempt, Epoch: r.Epoch, Worker: "operator"}.
			WithBody(events.TaskCancelledBody{From: from, Owner: owner}))
	}
	s.done, s.ended = true, string(events.RunCancelled)
}

// history generates one random valid history: random steps, then a drain
// that drives the run to its end.
func history(t testing.TB, seed uint64) *sim {
	s := newSim(t, seed)
	historyInto(t, s, seed)
	return s
}

func historyInto(t testing.TB, s *sim, seed uint64) {
	s.submit(s.rng.IntN(10) + 1)
	for range s.rng.IntN(120) {
		switch k := s.rng.IntN(30); {
		case k == 0:
			s.requeue()
		case k == 1 && s.rng.IntN(10) == 0:
			s.cancel()
		case k < 10:
			s.project()
		default:
			s.act(true)
		}
	}
	for i := 0; !s.done; i++ {
		if i > 10000 {
			t.Fatalf("seed %d: the drain does not converge; records %v", seed, s.recs)
		}
		n := len(s.log)
		s.project()
		for len(s.withStatus("dispatched")) > 0 {
			s.claim()
		}
		for len(s.withStatus("running")) > 0 {
			s.finish(false)
		}
		if len(s.log) == n {
			// Nothing to run and nothing decided, yet the run is open:
			// TestPropertyEveryRunEnds reports it.
			s.stuck = true
			break
		}
	}
	s.catchUp() // fold the final decision and anything after it
}

const propertySeeds = 400

func forEachHistory(t *testing.T, check func(t *testing.T, s *sim)) {
	t.Helper()
	for seed := range uint64(propertySeeds) {
		t.Run("seed "+strconv.FormatUint(seed, 10), func(t *testing.T) {
			t.Parallel()
			check(t, history(t, seed))
		})
	}
}

// ---- properties ----

func TestPropertyFoldTwiceSameSeqChangesNothing(t *testing.T) {
	t.Parallel()
	forEachHistory(t, func(t *testing.T, s *sim) {
		once := fold(t, s.run, s.log)
		var twice []events.Event
		for _, e := range s.log {
			twice = append(twice, e, e)
		}
		if diff := cmp.Diff(snapshot(once), snapshot(fold(t, s.run, twice))); diff != "" {
			t.Fatalf("folding each event twice (-once +twice):\n%s", diff)
		}
		// Re-delivery of an old entry with its seq, later in the feed.
		r := projector.NewRun(s.run)
		for i, e := range s.log {
			if err := projector.Apply(r, e); err != nil {
				t.Fatal(err)
			}
			if i > 0 && s.rng.IntN(3) == 0 {
				old := s.log[s.rng.IntN(i)]
				if err := projector.Apply(r, old); err != nil {
					t.Fatalf("re-applying %s %s seq %s: %v", old.Type, old.Task, old.Seq, err)
				}
			}
		}
		if diff := cmp.Diff(snapshot(once), snapshot(r)); diff != "" {
			t.Fatalf("re-delivering old entries with their seq (-once +redelivered):\n%s", diff)
		}
	})
}

func TestPropertyDuplicatesWithoutSeqChangeNothing(t *testing.T) {
	t.Parallel()
	forEachHistory(t, func(t *testing.T, s *sim) {
		once := fold(t, s.run, s.log)
		r := projector.NewRun(s.run)
		for i, e := range s.log {
			if err := projector.Apply(r, e); err != nil {
				t.Fatal(err)
			}
			dup := e
			if s.rng.IntN(2) == 0 && i > 0 {
				dup = s.log[s.rng.IntN(i)] // an older event, re-delivered late
			}
			dup.Seq = ""
			if err := projector.Apply(r, dup); err != nil {
				t.Fatalf("duplicate of %s %s (seq %s) without seq: %v", dup.Type, dup.Task, e.Seq, err)
			}
		}
		if diff := cmp.Diff(snapshot(once), snapshot(r)); diff != "" {
			t.Fatalf("folding with seq-less duplicates (-once +with duplicates):\n%s", diff)
		}
	})
}

func TestPropertyIncrementalEqualsFromScratch(t *testing.T) {
	t.Parallel()
	forEachHistory(t, func(t *testing.T, s *sim) {
		whole := snapshot(fold(t, s.run, s.log))
		// The simulator's projector folded incrementally, deciding between batches.
		if diff := cmp.Diff(whole, snapshot(s.proj)); diff != "" {
			t.Fatalf("incremental projector fold (-from scratch +incremental):\n%s", diff)
		}
		for range 5 {
			k := s.rng.IntN(len(s.log) + 1)
			r := fold(t, s.run, s.log[:k])
			prefix := snapshot(r)
			_ = projector.Decide(r, s.rng.IntN(4), testDelay)
			if diff := cmp.Diff(prefix, snapshot(r)); diff != "" {
				t.Fatalf("Decide changed the run at prefix %d (-before +after):\n%s", k, diff)
			}
			for _, e := range s.log[k:] {
				if err := projector.Apply(r, e); err != nil {
					t.Fatal(err)
				}
			}
			if diff := cmp.Diff(whole, snapshot(r)); diff != "" {
				t.Fatalf("fold of log[:%d] then log[%d:] (-whole +prefix then rest):\n%s", k, k, diff)
			}
		}
	})
}

// The fold computes the same lease records as the scripts maintain (the
// "two writers" of DESIGN.md).
func TestPropertyFoldMatchesScriptRecords(t *testing.T) {
	t.Parallel()
	forEachHistory(t, func(t *testing.T, s *sim) {
		r := fold(t, s.run, s.log)
		got := map[string]rdb.Record{}
		for _, task := range r.Tasks {
			got[task.Spec.ID] = projector.RecordOf(task)
		}
		want := map[string]rdb.Record{}
		for _, id := range s.tids {
			want[id] = s.rec(id)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("task records (-scripts +fold):\n%s", diff)
		}
	})
}

// Driving every runnable task to an outcome ends the run, consistently:
// every task terminal, succeeded tasks only behind succeeded dependencies,
// run_succeeded exactly when no task failed.
// A tolerant join's tally (join.go) agrees with a look at every
// dependency after every event of every history.
func TestPropertyJoinTalliesAgreeWithTheDependencies(t *testing.T) {
	t.Parallel()
	forEachHistory(t, func(t *testing.T, s *sim) {
		r := projector.NewRun(s.run)
		for _, e := range s.log {
			if err := projector.Apply(r, e); err != nil {
				t.Fatalf("Apply %s %s seq %s: %v", e.Type, e.Task, e.Seq, err)
			}
			if m := r.TallyMismatch(); m != "" {
				t.Fatalf("after %s %s (seq %s): %s", e.Type, e.Task, e.Seq, m)
			}
		}
	})
}

func TestPropertyEveryRunEnds(t *testing.T) {
	t.Parallel()
	forEachHistory(t, func(t *testing.T, s *sim) {
		r := fold(t, s.run, s.log)
		if s.stuck || !r.Status.Terminal() {
			var open []string
			for _, task := range r.Tasks {
				if !task.Status.Terminal() {
					open = append(open, fmt.Sprintf("%s %s (deps %v)", task.Spec.ID, task.Status, task.Spec.Deps))
				}
			}
			t.Fatalf("run %s with nothing left to run or decide; open tasks: %v", r.Status, open)
		}
		unabsorbed := 0 // failed tasks no tolerant join absorbed
		succ := map[string][]*projector.Task{}
		for _, task := range r.Tasks {
			for _, d := range task.Spec.Deps {
				succ[d] = append(succ[d], task)
			}
		}
		for _, task := range r.Tasks {
			if !task.Status.Terminal() {
				t.Errorf("run %s with task %s %s", r.Status, task.Spec.ID, task.Status)
			}
			if task.Status == projector.TaskFailed {
				absorbed := len(succ[task.Spec.ID]) > 0
				for _, s := range succ[task.Spec.ID] {
					j := s.Spec.Join
					if j.Strict() || s.Status != projector.TaskSucceeded || j.Policy == events.JoinCritical && slices.Contains(j.Critical, task.Spec.ID) {
						absorbed = false
					}
				}
				if !absorbed {
					unabsorbed++
				}
			}
			if task.Status == projector.TaskSucceeded {
				for _, w := range task.Waits { // strict, whatever the join
					if st := r.Task(w).Status; st != projector.TaskSucceeded {
						t.Errorf("task %s succeeded but %s, a spawned task it waits for, is %s", task.Spec.ID, w, st)
					}
				}
				ok, critical := 0, true
				for _, d := range task.Spec.Deps {
					st := r.Task(d).Status
					if st == projector.TaskSucceeded {
						ok++
					} else if !st.Terminal() || task.Spec.Join.Strict() {
						t.Errorf("task %s (join %v) succeeded but its dependency %s is %s", task.Spec.ID, task.Spec.Join, d, st)
					} else if task.Spec.Join.Policy == events.JoinCritical && slices.Contains(task.Spec.Join.Critical, d) {
						critical = false
					}
				}
				if j := task.Spec.Join; j != nil && (j.Policy == events.JoinAtLeast && ok < j.N || !critical) {
					t.Errorf("task %s succeeded with %d of its dependencies succeeded, against its join %+v", task.Spec.ID, ok, *j)
				}
			}
		}
		if r.Status != projector.RunCancelled && (unabsorbed == 0) != (r.Status == projector.RunSucceeded) {
			t.Errorf("run %s with %d failed tasks no join absorbed", r.Status, unabsorbed)
		}
		if r.Open() != 0 {
			t.Errorf("Open() = %d for a finished run", r.Open())
		}
		if d := projector.Decide(r, 0, testDelay); len(d) != 0 {
			t.Errorf("Decide on a finished run = %v", d)
		}
	})
}

// The generated histories cover cancellation (so the properties above
// hold for it): a fair share of them end cancelled, some with tasks
// running or queued at the cancel.
func TestPropertyHistoriesCoverCancel(t *testing.T) {
	t.Parallel()
	cancelled, busy := 0, 0
	for seed := uint64(1); seed <= propertySeeds; seed++ {
		s := history(t, seed)
		for _, e := range s.log {
			var b events.TaskCancelledBody
			if e.Type == events.TaskCancelled && e.DecodeBody(&b) == nil && (b.From == events.TaskStatusRunning || b.From == events.TaskStatusDispatched) {
				busy++
				break
			}
		}
		if s.ended == string(events.RunCancelled) {
			cancelled++
		}
	}
	if cancelled < propertySeeds/10 || busy < propertySeeds/20 {
		t.Fatalf("%d of %d histories cancelled, %d with a task queued or running at the cancel", cancelled, propertySeeds, busy)
	}
	t.Logf("%d of %d histories cancelled, %d with a task queued or running at the cancel", cancelled, propertySeeds, busy)
}

// Each task has at most one accepted result, and it comes from the claim
// current at the time (the fold's acceptance matches the scripts').
func TestPropertyOneAcceptedOutcomePerAttempt(t *testing.T) {
	t.Parallel()
	forEachHistory(t, func(t *testing.T, s *sim) {
		r := projector.NewRun(s.run)
		accepted := map[string]int{}
		for _, e := range s.log {
			var before projector.TaskStatus
			if task := r.Task(e.Task); task != nil {
				before = task.Status
			}
			if err := projector.Apply(r, e); err != nil {
				t.Fatal(err)
			}
			if e.Type == events.TaskSucceeded && before != projector.TaskSucceeded && r.Task(e.Task).Status == projector.TaskSucceeded {
				accepted[e.Task]++
				if got := string(r.Task(e.Task).Result); got == `"stale"` {
					t.Errorf("task %s accepted a stale result at seq %s", e.Task, e.Seq)
				}
			}
		}
		for id, n := range accepted {
			if n > 1 {
				t.Errorf("task %s accepted %d results", id, n)
			}
		}
	})
}

// FuzzFold folds a simulated history (chosen by seed) with old entries
// re-delivered, with their seqs, at points chosen by picks, and split at a
// point chosen by cut: the state must equal the plain fold of the log. The
// log is read back as stored, each entry in schema version 1 or 2 as picks
// choose (all version 2 without picks).
func FuzzFold(f *testing.F) {
	f.Add(uint64(0), []byte{1, 2, 3}, uint16(0))
	f.Add(uint64(7), []byte{}, uint16(5))
	f.Add(uint64(42), []byte{255, 0, 17, 9}, uint16(999))
	f.Fuzz(func(t *testing.T, seed uint64, picks []byte, cut uint16) {
		s := history(t, seed%100000)
		want := snapshot(fold(t, s.run, s.log))
		log := storedLog(t, s, func(i int) bool { return len(picks) > 0 && picks[(i+1)%len(picks)]%2 == 1 })
		k := int(cut) % (len(log) + 1)
		r := fold(t, s.run, log[:k])
		for i := k; i < len(log); i++ {
			if err := projector.Apply(r, log[i]); err != nil {
				t.Fatal(err)
			}
			if len(picks) > 0 {
				p := int(picks[i%len(picks)])
				if p%3 == 0 {
					old := log[p%(i+1)]
					if err := projector.Apply(r, old); err != nil {
						t.Fatalf("re-delivered %s %s seq %s: %v", old.Type, old.Task, old.Seq, err)
					}
				}
			}
		}
		if diff := cmp.Diff(want, snapshot(r)); diff != "" {
			t.Fatalf("(-plain fold +with re-deliveries):\n%s", diff)
		}
	})
}

// The generated histories cover dynamic tasks (so the properties above
// hold for them): a fair share spawn, and some of those make a successor
// wait for what was spawned, which ran before it.
func TestPropertyHistoriesCoverSpawns(t *testing.T) {
	t.Parallel()
	spawning, waiting := 0, 0
	for seed := uint64(1); seed <= propertySeeds; seed++ {
		s := history(t, seed)
		if len(s.spawners) > 0 {
			spawning++
		}
		r := fold(t, s.run, s.log)
		for _, task := range r.Tasks {
			if len(task.Waits) > 0 && task.Status == projector.TaskSucceeded {
				waiting++
				break
			}
		}
	}
	if spawning < propertySeeds/5 || waiting < propertySeeds/40 {
		t.Fatalf("%d of %d histories spawn, %d with a successor that waited for spawned tasks and succeeded", spawning, propertySeeds, waiting)
	}
	t.Logf("%d of %d histories spawn, %d with a successor that waited for spawned tasks and succeeded", spawning, propertySeeds, waiting)
}

// The generated histories hold every event type the engine writes except
// run_quarantined (the projector's verdict on a log it cannot fold, which
// these histories never are), so the properties above cover them all:
// channel_written and signal_received included, and tasks with a result
// TTL.
func TestPropertyHistoriesCoverEveryEventType(t *testing.T) {
	t.Parallel()
	seen := map[events.Type]int{}
	ttls := 0
	for seed := uint64(1); seed <= propertySeeds; seed++ {
		s := history(t, seed)
		for _, e := range s.log {
			seen[e.Type]++
		}
		for _, tk := range fold(t, s.run, s.log).Tasks {
			if tk.ResultExpiresMS > 0 {
				ttls++
			}
		}
	}
	for _, typ := range events.Types {
		if seen[typ] == 0 && typ != events.RunQuarantined {
			t.Errorf("no history of %d holds %s", propertySeeds, typ)
		}
	}
	if ttls == 0 {
		t.Error("no history holds a succeeded task with a result TTL")
	}
	t.Logf("event types: %v; results with a TTL: %d", seen, ttls)
}
