package projector_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

type liveBundle struct {
	rdb   *redis.Client
	db    rdb.DB
	sched *scheduler.Scheduler
	ctx   context.Context
}

func setupLive(t *testing.T) liveBundle {
	t.Helper()
	c := redistest.Client(t)
	ns := redistest.Namespace(t)
	s, err := scheduler.New(scheduler.Config{Redis: c, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return liveBundle{rdb: c, db: rdb.New(c, ns), sched: s, ctx: ctx}
}

func (b liveBundle) projector(t *testing.T, id string) *projector.Projector {
	t.Helper()
	p, err := projector.New(projector.Config{Redis: b.rdb, Namespace: b.db.K.Namespace(), ID: id,
		RetryInitial: time.Millisecond, RetryMax: time.Millisecond, FeedBlock: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// start runs p until the returned stop is called (stop waits for Run to
// return and fails the test if it does not, or returns an error).
func (b liveBundle) start(t *testing.T, p *projector.Projector) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	return func() {
		t.Helper()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run = %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	}
}

func (b liveBundle) submit(t *testing.T, specs ...events.TaskSpec) string {
	t.Helper()
	run, _, err := b.sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "live", Tasks: specs}, scheduler.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return run
}

// submitRaw creates a run with the bare submit script: no decisions made
// at submit (the scheduler dispatches a run's roots itself), so the
// projector makes the run's first decisions, as it does for a run
// submitted without them.
func (b liveBundle) submitRaw(t *testing.T, id string, specs ...events.TaskSpec) string {
	t.Helper()
	if id == "" {
		id = ulid.Make().String()
	}
	body := events.RunSubmittedBody{Workflow: "live", Tasks: specs}
	ev := events.Event{ID: ulid.Make().String(), Run: id, Type: events.RunSubmitted, Time: time.Now()}.WithBody(body)
	if _, _, err := b.db.Submit(b.ctx, id, ev, body); err != nil {
		t.Fatal(err)
	}
	return id
}

func (b liveBundle) log(t *testing.T, run string) []events.Event {
	t.Helper()
	msgs, err := b.rdb.XRange(b.ctx, b.db.K.RunLog(run), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]events.Event, 0, len(msgs))
	for _, m := range msgs {
		e, err := events.Decode(run, m.ID, m.Values)
		if err != nil {
			t.Fatalf("log entry %s: %v", m.ID, err)
		}
		out = append(out, e)
	}
	return out
}

// records reads the task records of the run's state hash.
func (b liveBundle) records(t *testing.T, run string) map[string]rdb.Record {
	t.Helper()
	h, err := b.rdb.HGetAll(b.ctx, b.db.K.RunState(run)).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]rdb.Record{}
	for k, v := range h {
		if k[0] == '@' {
			continue
		}
		r, err := rdb.ParseRecord(v)
		if err != nil {
			t.Fatal(err)
		}
		out[k] = r
	}
	return out
}

// run claims and finishes task's current attempt as a worker would.
func (b liveBundle) run(t *testing.T, run, task, worker string, succeed bool) {
	t.Helper()
	b.runAt(t, run, task, worker, succeed, time.Now().UnixMilli())
}

// runAt is run with the claim and the outcome written at ms (Unix ms: the
// worker's clock).
func (b liveBundle) runAt(t *testing.T, run, task, worker string, succeed bool, ms int64) {
	t.Helper()
	rec := b.records(t, run)[task]
	id := func() string { return ulid.MustNew(uint64(ms), ulid.DefaultEntropy()).String() } // an event's time is its id's
	cr, err := b.db.Claim(b.ctx, rdb.ClaimArgs{Run: run, Task: task, Worker: worker, Attempt: rec.Attempt, EventID: id(), TimeMS: ms})
	if err != nil || cr.Outcome != rdb.ClaimOK {
		t.Fatalf("claim %s: %v %+v", task, err, cr)
	}
	args := rdb.FinishArgs{Run: run, Task: task, Worker: worker, Attempt: rec.Attempt, Epoch: cr.Epoch,
		EventID: id(), RejectID: id(), TimeMS: ms}
	if succeed {
		args.Type, args.Status, args.Result = events.TaskSucceeded, "succeeded", []byte(`"`+task+`"`)
		args.Body = events.Event{}.WithBody(events.TaskSucceededBody{Result: args.Result}).Body
	} else {
		final := rec.Attempt >= 2
		args.Type, args.Status = events.TaskFailed, "awaiting_retry"
		if final {
			args.Status = "failed"
		}
		args.Body = events.Event{}.WithBody(events.TaskFailedBody{Error: "boom", Kind: events.FailureError, Final: final}).Body
	}
	if _, err := b.db.Finish(b.ctx, args); err != nil {
		t.Fatalf("finish %s: %v", task, err)
	}
}

// decisionKeys counts decision events by "type task attempt".
func decisionKeys(evs []events.Event) map[string]int {
	out := map[string]int{}
	for _, e := range evs {
		switch e.Type {
		case events.TaskDispatched, events.TaskRetryScheduled, events.TaskSkipped, events.TaskRequeued, events.RunSucceeded, events.RunFailed:
			out[fmt.Sprintf("%s %s %d", e.Type, e.Task, e.Attempt)]++
		}
	}
	return out
}

func TestProjectTwiceAppendsNothing(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	run := b.submit(t, spec("a"), spec("b", "a"), spec("c", "a"), spec("d", "b", "c"))
	p1, p2 := b.projector(t, "p1"), b.projector(t, "p2")

	project := func(step string) {
		t.Helper()
		if err := p1.Project(b.ctx, run); err != nil {
			t.Fatal(err)
		}
		n := len(b.log(t, run))
		// A duplicated feed pointer: the same projector again, then another
		// projector with a cold cache.
		for _, p := range []*projector.Projector{p1, p2, p1} {
			if err := p.Project(b.ctx, run); err != nil {
				t.Fatal(err)
			}
			if got := b.log(t, run); len(got) != n {
				t.Fatalf("%s: a repeated Project appended %d events: %v", step, len(got)-n, decisionKeys(got[n:]))
			}
		}
	}
	project("at submit")
	b.run(t, run, "a", "w1", true)
	project("after a")
	b.run(t, run, "b", "w1", true)
	b.run(t, run, "c", "w2", true)
	project("after b and c")
	b.run(t, run, "d", "w1", true)
	project("after d")

	log := b.log(t, run)
	want := map[string]int{
		"task_dispatched a 1": 1, "task_dispatched b 1": 1, "task_dispatched c 1": 1, "task_dispatched d 1": 1, "run_succeeded  0": 1,
	}
	if diff := cmp.Diff(want, decisionKeys(log)); diff != "" {
		t.Errorf("decisions in the log (-want +got):\n%s", diff)
	}
	r := fold(t, run, log)
	if r.Status != projector.RunSucceeded {
		t.Fatalf("run %s", r.Status)
	}
	b.checkState(t, run, r)
}

// checkState compares the state hash with the fold of the log: records,
// run status and cursor; and checks the outbox was relayed.
func (b liveBundle) checkState(t *testing.T, run string, r *projector.Run) {
	t.Helper()
	if r.Status == projector.RunSucceeded {
		// A succeeded run's end keeps only its log.
		n, err := b.rdb.Exists(b.ctx, b.db.K.RunState(run)).Result()
		if err != nil || n != 0 {
			t.Errorf("succeeded run %s: its state hash (with its tasks' metadata and results) left (%d, %v), want none", run, n, err)
		}
		if st, err := b.db.RunStatus(b.ctx, run); err != nil || st != string(projector.RunSucceeded) {
			t.Errorf("succeeded run %s: RunStatus %q (%v)", run, st, err)
		}
		return
	}
	want := map[string]rdb.Record{}
	for _, task := range r.Tasks {
		if task.Status != projector.TaskPending || task.Attempt > 0 {
			want[task.Spec.ID] = projector.RecordOf(task)
		}
	}
	if diff := cmp.Diff(want, b.records(t, run)); diff != "" {
		t.Errorf("state hash records (-fold +redis):\n%s", diff)
	}
	st, err := b.rdb.HMGet(b.ctx, b.db.K.RunState(run), rdb.FieldRunStatus, rdb.FieldRunCursor, rdb.FieldRunQuarantine).Result()
	if err != nil {
		t.Fatal(err)
	}
	if st[0] != string(r.Status) || st[1] != r.LastSeq || st[2] != nil {
		t.Errorf("state hash: status %v cursor %v quarantine %v; fold: status %s last seq %s", st[0], st[1], st[2], r.Status, r.LastSeq)
	}
	if n, err := b.rdb.LLen(b.ctx, b.db.K.RunOutbox(run)).Result(); err != nil || n != 0 {
		t.Errorf("outbox length %d (%v) after Project, want 0", n, err)
	}
}

// Concurrent projectors on the same run commit each decision once.
func TestProjectConcurrently(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	var specs []events.TaskSpec
	specs = append(specs, spec("root"))
	for i := range 50 {
		specs = append(specs, spec("m"+strconv.Itoa(i), "root"))
	}
	run := b.submit(t, specs...)
	ps := []*projector.Projector{b.projector(t, "p1"), b.projector(t, "p2"), b.projector(t, "p3")}
	projectAll := func() {
		var wg sync.WaitGroup
		errs := make(chan error, 2*len(ps))
		for _, p := range ps {
			for range 2 {
				wg.Go(func() { errs <- p.Project(b.ctx, run) })
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	projectAll()
	b.run(t, run, "root", "w", true)
	projectAll()
	log := b.log(t, run)
	for k, n := range decisionKeys(log) {
		if n != 1 {
			t.Errorf("%s appended %d times", k, n)
		}
	}
	if got := len(decisionKeys(log)); got != 51 {
		t.Errorf("%d distinct decisions, want 51 dispatches", got)
	}
	// Concurrent relays of one outbox may queue a dispatch twice (the claim
	// script drops the duplicate); none may be lost or invented.
	msgs, err := b.rdb.XRange(b.ctx, b.db.K.Queue(0, "default", 0), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	queued := map[string]int{}
	for _, m := range msgs {
		queued[fmt.Sprintf("task_dispatched %s %s", m.Values[rdb.MsgTask], m.Values[rdb.MsgAttempt])]++
	}
	for k := range decisionKeys(log) {
		if queued[k] == 0 {
			t.Errorf("%s is not in the queue", k)
		}
		delete(queued, k)
	}
	if len(queued) > 0 {
		t.Errorf("queue messages without a dispatch event: %v", queued)
	}
	t.Logf("%d queue messages for 51 dispatches", len(msgs))
	b.checkState(t, run, fold(t, run, log))
}

// A random DAG driven to its end through the real scripts, with feed
// pointers duplicated and projectors taking turns: every decision is in
// the log once, the state hash equals the fold, and queue messages match
// the dispatches.
func TestProjectRandomRunsWithDuplicatedFeed(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	ps := []*projector.Projector{b.projector(t, "p1"), b.projector(t, "p2")}
	for seed := range uint64(12) {
		t.Run("seed "+strconv.FormatUint(seed, 10), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			s := newSim(t, seed)
			specs := s.randomSpecs("t", rng.IntN(12)+1, nil)
			for i := range specs {
				specs[i].MaxAttempts = 2
			}
			run := b.submit(t, specs...)
			for step := 0; ; step++ {
				if step > 1000 {
					t.Fatal("the run did not end")
				}
				for range rng.IntN(3) + 1 {
					if err := ps[rng.IntN(len(ps))].Project(b.ctx, run); err != nil {
						t.Fatal(err)
					}
				}
				st, err := b.db.RunStatus(b.ctx, run)
				if err != nil {
					t.Fatal(err)
				}
				if st != "running" {
					break
				}
				for id, rec := range b.records(t, run) {
					if rec.Status == "dispatched" && rng.IntN(3) > 0 {
						b.run(t, run, id, "w"+strconv.Itoa(rng.IntN(3)), rng.IntN(4) > 0)
					}
				}
			}
			log := b.log(t, run)
			for k, n := range decisionKeys(log) {
				if n != 1 {
					t.Errorf("%s appended %d times", k, n)
				}
			}
			r := fold(t, run, log)
			if !r.Status.Terminal() {
				t.Fatalf("run %s", r.Status)
			}
			b.checkState(t, run, r)
		})
	}
}

func TestProjectRejectsAnUndecodableLog(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	run := b.submit(t, spec("a"))
	p := b.projector(t, "p1")
	if err := p.Project(b.ctx, run); err != nil {
		t.Fatal(err)
	}
	n := len(b.log(t, run))
	if err := b.rdb.XAdd(b.ctx, &redis.XAddArgs{Stream: b.db.K.RunLog(run), Values: []any{"id", "x", "t", "task_claimed", "v", "99", "k", "a", "a", "1", "e", "1", "w", "w", "ts", "1", "b", ""}}).Err(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*projector.Projector{p, b.projector(t, "p2")} {
		err := p.Project(b.ctx, run)
		if !errors.Is(err, events.ErrUnknownVersion) {
			t.Fatalf("Project error = %v, want ErrUnknownVersion", err)
		}
	}
	msgs, err := b.rdb.XLen(b.ctx, b.db.K.RunLog(run)).Result()
	if err != nil || int(msgs) != n+1 {
		t.Errorf("log length %d (%v), want %d: nothing may be appended behind an undecodable event", msgs, err, n+1)
	}
}

// Run consumes the feed and stops, with every goroutine, when its context
// ends (goleak checks the latter in TestMain).
func TestRunProjectsFromTheFeedAndStops(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	stop := b.start(t, b.projector(t, "p1"))
	run := b.submit(t, spec("a"))
	b.waitFor(t, run, events.TaskDispatched, "a") // the projector's dispatch
	stop()
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	_, err := projector.New(projector.Config{Namespace: "bad ns", Partitions: []int{-1, rdb.DefaultPartitions}})
	if err == nil {
		t.Fatal("New accepted an invalid config")
	}
	for _, want := range []string{"Config.Redis is required", "invalid namespace", "partition -1", "partition " + strconv.Itoa(rdb.DefaultPartitions)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// An operator's requeue (graflow dlq requeue) may land between a
// projector's Decide and its commit. The decisions computed before it (skip
// the dependents of the failed task, or end the run as failed) must not
// swallow the requeue: the requeued task runs again, the tasks behind it
// run, and the run succeeds.
func TestRequeueBetweenDecideAndCommit(t *testing.T) {
	t.Parallel()
	for name, specs := range map[string][]events.TaskSpec{
		"the run_failed decision": {spec("a")},
		"a task_skipped decision": {spec("a"), spec("b", "a")},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setupLive(t)
			run := b.submit(t, specs...)
			p := b.projector(t, "p1")
			if err := p.Project(b.ctx, run); err != nil {
				t.Fatal(err)
			}
			cr, err := b.db.Claim(b.ctx, rdb.ClaimArgs{Run: run, Task: "a", Worker: "w", Attempt: 1, EventID: ulid.Make().String(), TimeMS: 1})
			if err != nil || cr.Outcome != rdb.ClaimOK {
				t.Fatalf("claim: %+v %v", cr, err)
			}
			if _, err := b.db.Finish(b.ctx, rdb.FinishArgs{Run: run, Task: "a", Worker: "w", Attempt: 1, Epoch: cr.Epoch,
				EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 2, Type: events.TaskFailed, Status: "failed",
				Body: events.Event{}.WithBody(events.TaskFailedBody{Error: "boom", Kind: events.FailureError, Final: true}).Body}); err != nil {
				t.Fatal(err)
			}

			// A projector's step, cut between Decide and Commit.
			r := fold(t, run, b.log(t, run))
			head, err := rdb.ParseHead(b.db.HeadCmd(b.ctx, b.rdb, run))
			if err != nil {
				t.Fatal(err)
			}
			decisions := projector.Decide(r, 0, nil)
			records := map[string]string{}
			for i := range decisions {
				d := &decisions[i]
				d.ID, d.Worker, d.Version = ulid.Make().String(), "p1", events.CurrentVersion
				switch d.Type {
				case events.TaskSkipped:
					records[d.Task] = rdb.Record{Status: "skipped"}.String()
				case events.RunFailed:
					records[rdb.FieldRunStatus] = "failed"
				default:
					t.Fatalf("unexpected decision %s %s", d.Type, d.Task)
				}
			}
			if err := b.db.Requeue(b.ctx, run, "a", "operator", ulid.Make().String(), 3,
				events.Event{}.WithBody(events.TaskRequeuedBody{Cause: "operator"}).Body); err != nil {
				t.Fatal(err)
			}
			res, err := b.db.Commit(b.ctx, run, rdb.Commit{Expected: head, FoldedTo: r.LastSeq, Writer: "p1", TimeMS: 4,
				Events: decisions, Records: records})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("commit of %v after the requeue: conflict=%v caughtUp=%v", decisionKeys(decisions), res.Conflict, res.CaughtUp)

			// The projectors and a worker carry on.
			for step := 0; ; step++ {
				if step > 20 {
					t.Fatalf("the run did not end: records %v", b.records(t, run))
				}
				if err := b.projector(t, fmt.Sprintf("p%d", step+2)).Project(b.ctx, run); err != nil {
					t.Fatal(err)
				}
				st, err := b.db.RunStatus(b.ctx, run)
				if err != nil {
					t.Fatal(err)
				}
				if st != "running" {
					break
				}
				progressed := false
				for id, rec := range b.records(t, run) {
					if rec.Status == "dispatched" {
						b.run(t, run, id, "w2", true)
						progressed = true
					}
				}
				if !progressed {
					t.Fatalf("run %s is stuck: records %v", st, b.records(t, run))
				}
			}
			final := fold(t, run, b.log(t, run))
			for _, task := range final.Tasks {
				if task.Status != projector.TaskSucceeded {
					t.Errorf("task %s ended %s (attempt %d), want succeeded after the requeue", task.Spec.ID, task.Status, task.Attempt)
				}
			}
			if final.Status != projector.RunSucceeded {
				t.Errorf("run ended %s, want succeeded", final.Status)
			}
			b.checkState(t, run, final)
		})
	}
}

// waitFor blocks on run's log until an event of type typ for task appears.
func (b liveBundle) waitFor(t *testing.T, run string, typ events.Type, task string) {
	t.Helper()
	last := "0"
	for {
		res, err := b.rdb.XRead(b.ctx, &redis.XReadArgs{Streams: []string{b.db.K.RunLog(run), last}, Block: 10 * time.Second}).Result()
		if err != nil {
			t.Fatalf("run %s: waiting for %s: %v", run, typ, err)
		}
		for _, m := range res[0].Messages {
			last = m.ID
			if m.Values[events.FieldType] == string(typ) && m.Values[events.FieldTask] == task {
				return
			}
		}
	}
}

// A projector that stops leaves nothing half done: every feed entry it
// read is acked and deleted, every outbox it relayed is empty, and every
// dispatch is on its queue. (A batch's acks go out with the next feed
// read, before the projector blocks on the feed.)
func TestRunLeavesNoFeedEntryOrOutboxBehind(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	stop := b.start(t, b.projector(t, "p1"))
	const n = 40
	runs := make([]string, n)
	for i := range runs {
		runs[i] = b.submit(t, spec("a"), spec("b", "a"))
	}
	for _, run := range runs {
		b.waitFor(t, run, events.TaskDispatched, "a")
	}
	for _, run := range runs[:n/2] { // half of them finish their first task
		b.run(t, run, "a", "w", true)
		if err := b.db.PointFeed(b.ctx, b.rdb, run).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, run := range runs[:n/2] {
		b.waitFor(t, run, events.TaskDispatched, "b")
	}
	// Every pointer consumed, acked and deleted: a dispatch in the log
	// does not say the projector has read the pointers after it (the
	// submits' own; it read one and stopped before handling it once).
	eventually(t, 20*time.Second, "the feed drained", func() bool {
		for i := range b.db.K.Partitions() {
			if l, err := b.rdb.XLen(b.ctx, b.db.K.Feed(i)).Result(); err != nil || l != 0 {
				return false
			}
		}
		return true
	})
	stop()
	for i := range b.db.K.Partitions() {
		feed := b.db.K.Feed(i)
		if l, _ := b.rdb.XLen(b.ctx, feed).Result(); l != 0 {
			t.Errorf("feed partition %d holds %d entries after the projector stopped", i, l)
		}
		if pend, err := b.rdb.XPending(b.ctx, feed, rdb.GroupProjectors).Result(); err == nil && pend.Count != 0 {
			t.Errorf("feed partition %d: %d entries pending", i, pend.Count)
		}
	}
	for _, run := range runs {
		if l, _ := b.rdb.LLen(b.ctx, b.db.K.RunOutbox(run)).Result(); l != 0 {
			t.Errorf("run %s: %d relayed entries still in the outbox", run, l)
		}
	}
	if l, _ := b.rdb.XLen(b.ctx, b.db.K.Queue(0, "default", 0)).Result(); l != n+n/2 {
		t.Errorf("queue holds %d messages, want %d (one per dispatch)", l, n+n/2)
	}
}

// With RunTTL, a finished run's keys expire: every key of the run gets the
// TTL once the run ends (through the batched pass, many runs at once).
func TestRunTTLExpiresFinishedRuns(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	p, err := projector.New(projector.Config{Redis: b.rdb, Namespace: b.db.K.Namespace(), ID: "p", RunTTL: time.Hour,
		RetryInitial: time.Millisecond, RetryMax: time.Millisecond, FeedBlock: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := b.start(t, p)
	runs := make([]string, 10)
	for i := range runs {
		runs[i] = b.submit(t, spec("a"))
	}
	for _, run := range runs {
		b.waitFor(t, run, events.TaskDispatched, "a")
		b.run(t, run, "a", "w", true)
		if err := b.db.PointFeed(b.ctx, b.rdb, run).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, run := range runs {
		b.waitFor(t, run, events.RunSucceeded, "")
	}
	stop()
	for _, run := range runs {
		for _, k := range b.db.K.RunKeys(run) {
			ttl, err := b.rdb.PTTL(b.ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := b.rdb.Exists(b.ctx, k).Result(); n == 1 && (ttl <= 0 || ttl > time.Hour) {
				t.Errorf("%s: TTL %v, want (0, 1h]", k, ttl)
			}
		}
	}
}

// A cancelled run expires too: the cancel script knows no TTL, so the
// projector's commit after it (no decisions) applies RunTTL and compacts
// the log.
func TestRunTTLExpiresCancelledRuns(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	p, err := projector.New(projector.Config{Redis: b.rdb, Namespace: b.db.K.Namespace(), ID: "p", RunTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	run := b.submit(t, spec("a"), spec("b", "a"))
	res, err := b.db.CancelRun(b.ctx, run, "op", "test", 1, func() string { return ulid.Make().String() })
	if err != nil || res.Outcome != "cancelled" || res.Tasks != 2 {
		t.Fatalf("cancel: %+v %v", res, err)
	}
	if err := p.Project(b.ctx, run); err != nil {
		t.Fatal(err)
	}
	for _, k := range b.db.K.RunKeys(run) {
		ttl, err := b.rdb.PTTL(b.ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := b.rdb.Exists(b.ctx, k).Result(); n == 1 && (ttl <= 0 || ttl > time.Hour) {
			t.Errorf("%s: TTL %v, want (0, 1h]", k, ttl)
		}
	}
	if d, _ := b.rdb.HExists(b.ctx, b.db.K.RunState(run), "@dirty").Result(); d {
		t.Error("@dirty still set after the projector's commit")
	}
}

// The commit that ends a run compacts its short log: same entries, ids and
// stream metadata, without the stream node Redis keeps preallocated (up to
// 4 KiB, which would dominate a small run's memory).
func TestFinishedRunsLogIsCompacted(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	stop := b.start(t, b.projector(t, "p1"))
	run := b.submit(t, spec("a"))
	b.waitFor(t, run, events.TaskDispatched, "a")
	b.run(t, run, "a", "w", true)
	if err := b.db.PointFeed(b.ctx, b.rdb, run).Err(); err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, run, events.RunSucceeded, "")
	stop()
	var types []string
	for _, e := range b.log(t, run) {
		types = append(types, string(e.Type))
	}
	want := []string{"run_submitted", "task_dispatched", "task_claimed", "task_succeeded", "run_succeeded"}
	if diff := cmp.Diff(want, types); diff != "" {
		t.Errorf("log after compaction (-want +got):\n%s", diff)
	}
	info, err := b.rdb.XInfoStream(b.ctx, b.db.K.RunLog(run)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if info.EntriesAdded != 5 || info.LastGeneratedID != info.LastEntry.ID {
		t.Errorf("stream metadata after compaction: entries-added %d, last-generated-id %s, last entry %s",
			info.EntriesAdded, info.LastGeneratedID, info.LastEntry.ID)
	}
	if n, err := b.rdb.MemoryUsage(b.ctx, b.db.K.RunLog(run), 0).Result(); err != nil || n >= 4096 {
		t.Errorf("MEMORY USAGE of the finished run's log = %d, %v; want it compacted below the 4 KiB preallocated node", n, err)
	}
	if n, _ := b.rdb.Exists(b.ctx, b.db.K.RunLogCompact(run)).Result(); n != 0 {
		t.Error("the compaction's scratch key is left behind")
	}
}

// Feed entries delivered to this projector by a read it never saw (its
// reply lost, the read repeated by go-redis) are projected the next time
// the projector goes idle, not only when the feed reclaim takes them over
// (here an hour away).
func TestProjectorPicksUpEntriesOfALostReadWhenIdle(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	p, err := projector.New(projector.Config{Redis: b.rdb, Namespace: b.db.K.Namespace(), ID: "p1",
		RetryInitial: time.Millisecond, RetryMax: time.Millisecond, FeedBlock: 100 * time.Millisecond,
		FeedReclaimIdle: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	stop := b.start(t, p)
	defer stop()
	lost := b.submit(t, spec("a"), spec("b", "a"))
	b.waitFor(t, lost, events.TaskDispatched, "a")
	b.run(t, lost, "a", "w", true)
	// The pointer is added and delivered to p1 in one step, as the lost
	// read did: p1's blocking read never returns it.
	feed := b.db.K.FeedFor(lost)
	// The read below needs the projectors' group, which p1 creates as it
	// starts: the run got this far without p1 (a submit dispatches its
	// roots), so make sure it exists (NOGROUP, seen once under load).
	if err := b.db.EnsureGroup(b.ctx, feed, rdb.GroupProjectors); err != nil {
		t.Fatal(err)
	}
	var read *redis.XStreamSliceCmd
	if _, err := b.rdb.TxPipelined(b.ctx, func(pipe redis.Pipeliner) error {
		b.db.PointFeed(b.ctx, pipe, lost)
		read = pipe.XReadGroup(b.ctx, &redis.XReadGroupArgs{Group: rdb.GroupProjectors, Consumer: "p1",
			Streams: []string{feed, ">"}, Count: 1, Block: -1})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if res := read.Val(); len(res) != 1 || len(res[0].Messages) != 1 || res[0].Messages[0].Values[rdb.MsgRun] != lost {
		t.Fatalf("the lost read got %v", res)
	}
	// Other work on the same feed partition makes p1 busy, then idle again.
	var other string
	for i := 0; other == ""; i++ {
		if id := "other-" + strconv.Itoa(i); b.db.K.Partition(id) == b.db.K.Partition(lost) {
			other = id
		}
	}
	if _, _, err := b.sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "live", Tasks: []events.TaskSpec{spec("a")}},
		scheduler.SubmitOptions{RunID: other}); err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, other, events.TaskDispatched, "a")
	b.waitFor(t, lost, events.TaskDispatched, "b")
}

// Issue #10 defect 1, the sequence as seen: two projectors on one run
// (BatchSize 1, tasks a and b). P1 dispatches a; a is claimed; P2 loads and
// decides "dispatch b"; P1 commits "dispatch b" without catching up (the
// claim came after its fold), so the cursor stays where it was; b is
// claimed; P2's commit must then be refused. It was accepted: b went back
// to dispatched, a second message was relayed, the claim holder's result
// was rejected, and a second worker claimed the copy at the same epoch.
func TestTwoProjectorsOnOneRunDoNotDecideTwice(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	run := b.submitRaw(t, "", spec("a"), spec("b"))
	newP := func(id string) *projector.Projector {
		p, err := projector.New(projector.Config{Redis: b.rdb, Namespace: b.db.K.Namespace(), ID: id, BatchSize: 1})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p1, p2 := newP("p1"), newP("p2")
	only := func(x projector.Prepared, typ events.Type, task string) {
		t.Helper()
		d := x.Decisions()
		if len(d) != 1 || d[0].Type != typ || d[0].Task != task {
			t.Fatalf("decisions %v, want %s %s", decisionKeys(d), typ, task)
		}
	}
	claim := func(task, worker string) int64 {
		t.Helper()
		cr, err := b.db.Claim(b.ctx, rdb.ClaimArgs{Run: run, Task: task, Worker: worker, Attempt: 1, EventID: ulid.Make().String(), TimeMS: 1})
		if err != nil || cr.Outcome != rdb.ClaimOK {
			t.Fatalf("claim %s by %s: %+v %v", task, worker, cr, err)
		}
		return cr.Epoch
	}

	if err := p1.LoadRun(b.ctx, run); err != nil {
		t.Fatal(err)
	}
	x := p1.PrepareCommit(run)
	only(x, events.TaskDispatched, "a")
	if res, err := p1.CommitPrepared(b.ctx, run, x); err != nil || res.Conflict || !res.CaughtUp {
		t.Fatalf("P1 dispatch a = %+v, %v", res, err)
	}
	claim("a", "wa")
	if err := p2.LoadRun(b.ctx, run); err != nil {
		t.Fatal(err)
	}
	late := p2.PrepareCommit(run)
	only(late, events.TaskDispatched, "b")
	x = p1.PrepareCommit(run)
	only(x, events.TaskDispatched, "b")
	if res, err := p1.CommitPrepared(b.ctx, run, x); err != nil || res.Conflict || res.CaughtUp {
		t.Fatalf("P1 dispatch b = %+v, %v; want applied, not caught up", res, err)
	}
	epoch := claim("b", "wb")

	res, err := p2.CommitPrepared(b.ctx, run, late)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Conflict {
		t.Errorf("P2's commit of a decision P1 already made was accepted: %+v", res)
	}
	if got := b.records(t, run)["b"]; got.Status != "running" || got.Owner != "wb" || got.Epoch != epoch {
		t.Errorf("b's record after P2's commit = %+v, want running by wb at epoch %d", got, epoch)
	}
	if n := decisionKeys(b.log(t, run))["task_dispatched b 1"]; n != 1 {
		t.Errorf("b dispatched %d times, want once", n)
	}

	// The run still ends, with a live state equal to the fold.
	b.finish(t, run, "a", "wa", 1)
	b.finish(t, run, "b", "wb", epoch)
	for _, p := range []*projector.Projector{p2, p1} {
		if err := p.Project(b.ctx, run); err != nil {
			t.Fatal(err)
		}
	}
	final := fold(t, run, b.log(t, run))
	if final.Status != projector.RunSucceeded {
		t.Errorf("run is %s, want succeeded", final.Status)
	}
	b.checkState(t, run, final)
}

// finish records task's success by worker at epoch, as a worker would.
func (b liveBundle) finish(t *testing.T, run, task, worker string, epoch int64) {
	t.Helper()
	args := rdb.FinishArgs{Run: run, Task: task, Worker: worker, Attempt: 1, Epoch: epoch,
		EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 2,
		Type: events.TaskSucceeded, Status: "succeeded", Result: []byte(`"` + task + `"`)}
	args.Body = events.Event{}.WithBody(events.TaskSucceededBody{Result: args.Result}).Body
	if _, err := b.db.Finish(b.ctx, args); err != nil {
		t.Fatalf("finish %s by %s: %v", task, worker, err)
	}
}

// fullReads counts reads of a run log from its first entry (XRANGE key - +):
// what loading a run costs.
type fullReads struct {
	mu sync.Mutex
	n  int
}

func (h *fullReads) count(cmd redis.Cmder) {
	a := cmd.Args()
	if len(a) >= 3 && strings.EqualFold(fmt.Sprint(a[0]), "xrange") && a[2] == "-" {
		h.mu.Lock()
		h.n++
		h.mu.Unlock()
	}
}

func (h *fullReads) get() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

func (h *fullReads) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *fullReads) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.count(cmd)
		return next(ctx, cmd)
	}
}
func (h *fullReads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			h.count(c)
		}
		return next(ctx, cmds)
	}
}

// Issue #10 defect 4: when another projector committed in between, a
// projector's commit conflicts; it folds on from its cache (the log only
// grows) instead of reading the whole log again.
func TestACommitConflictFoldsOnFromTheCache(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	specs := []events.TaskSpec{}
	for i := range 40 {
		specs = append(specs, spec(fmt.Sprintf("t%02d", i)))
	}
	run := b.submit(t, specs...)
	hook := &fullReads{}
	c := redistest.Client(t) // not a copy of a live client's Options: go-redis writes them while it connects
	c.AddHook(hook)
	newP := func(c *redis.Client, id string) *projector.Projector {
		p, err := projector.New(projector.Config{Redis: c, Namespace: b.db.K.Namespace(), ID: id, BatchSize: 4})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p1, p2 := newP(c, "p1"), newP(b.rdb, "p2")
	if err := p1.LoadRun(b.ctx, run); err != nil {
		t.Fatal(err)
	}
	stale := p1.PrepareCommit(run)
	if err := p2.Project(b.ctx, run); err != nil { // dispatches all 40, moving the head
		t.Fatal(err)
	}
	for i := range 10 { // and the two alternate while workers finish tasks
		b.run(t, run, fmt.Sprintf("t%02d", i), "w", true)
		if i%2 == 0 {
			if err := p2.Project(b.ctx, run); err != nil {
				t.Fatal(err)
			}
		}
		if i == 0 {
			if res, err := p1.CommitPrepared(b.ctx, run, stale); err != nil || !res.Conflict {
				t.Fatalf("P1's stale commit = %+v, %v; want a conflict", res, err)
			}
		}
		if err := p1.Project(b.ctx, run); err != nil {
			t.Fatal(err)
		}
	}
	if n := hook.get(); n != 1 {
		t.Errorf("P1 read the whole log %d times, want once (its first load)", n)
	}
	b.checkState(t, run, fold(t, run, b.log(t, run)))
}

// A small run leaves the projector's cache once nothing is left to decide:
// its end may come from a finish script that never points a projector at
// it (rdb.EndMaxTasks), and kept, it would take a cache slot until an
// arbitrary eviction, maybe of a large run's fold. A larger run stays
// cached between its decisions. (Before, the 2-task run stayed cached
// after b's dispatch: CachedRuns 1.)
func TestProjectorForgetsASmallRunOnceItIsDecided(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	p := b.projector(t, "p1")
	run := b.submit(t, events.TaskSpec{ID: "a", Handler: "h"}, events.TaskSpec{ID: "b", Handler: "h", Deps: []string{"a"}})
	b.run(t, run, "a", "w1", true)
	if err := p.Project(b.ctx, run); err != nil {
		t.Fatal(err)
	}
	if got := b.records(t, run)["b"].Status; got != events.TaskStatusDispatched {
		t.Fatalf("b is %s after the projection, want dispatched", got)
	}
	if n := p.CachedRuns(); n != 0 {
		t.Errorf("after a 2-task run's last decision the projector caches %d runs, want 0", n)
	}

	specs := []events.TaskSpec{{ID: "root", Handler: "h"}}
	for i := range rdb.EndMaxTasks {
		specs = append(specs, events.TaskSpec{ID: fmt.Sprintf("m%d", i), Handler: "h", Deps: []string{"root"}})
	}
	large := b.submit(t, specs...)
	b.run(t, large, "root", "w1", true)
	if err := p.Project(b.ctx, large); err != nil {
		t.Fatal(err)
	}
	if n := p.CachedRuns(); n != 1 {
		t.Errorf("after a %d-task run's dispatches the projector caches %d runs, want 1", len(specs), n)
	}
}
