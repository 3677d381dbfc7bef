package projector_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/jonboulle/clockwork"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// The projector's clock decides when a retry is due: a retry about an hour
// out moves to its queue when the (fake) clock has moved that far, not a
// millisecond before, and no wall time passes.
func TestARetryIsDueWhenTheClockSaysSo(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	clock := clockwork.NewFakeClockAt(time.Now())
	p, err := projector.New(projector.Config{Redis: b.rdb, Namespace: b.db.K.Namespace(), ID: "p1", Clock: clock,
		RetryInitial: time.Hour, RetryMax: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s := spec("a")
	s.MaxAttempts = 2
	run := b.submit(t, s) // the submit dispatches a
	b.run(t, run, "a", "w1", false)
	if err := p.Project(b.ctx, run); err != nil {
		t.Fatal(err)
	}
	var retries []events.Event
	for _, e := range b.log(t, run) {
		if e.Type == events.TaskRetryScheduled {
			retries = append(retries, e)
		}
	}
	if len(retries) != 1 {
		t.Fatalf("retries scheduled = %d, want 1", len(retries))
	}
	var body events.TaskRetryScheduledBody
	if err := retries[0].DecodeBody(&body); err != nil {
		t.Fatal(err)
	}
	delay := time.Duration(body.DelayMS) * time.Millisecond // 1h with jitter
	if want := clock.Now().Add(delay).UnixMilli(); delay < 30*time.Minute || body.DueMS != want {
		t.Fatalf("due at %d after %v, want the fake clock's now + about 1h = %d", body.DueMS, delay, want)
	}
	queued := func() int64 {
		n, err := b.rdb.XLen(b.ctx, b.db.K.QueueFor(run, events.DefaultPool, 0)).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := queued()

	clock.Advance(delay - time.Millisecond)
	wait, err := p.MoveDue(b.ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if wait != time.Millisecond || queued() != before {
		t.Fatalf("1 ms early: wait %v, queued %d (was %d); want 1ms and nothing moved", wait, queued(), before)
	}
	clock.Advance(time.Millisecond)
	if _, err := p.MoveDue(b.ctx, 0); err != nil {
		t.Fatal(err)
	}
	if queued() != before+1 {
		t.Fatalf("when due: queued %d, want %d", queued(), before+1)
	}
}

// A task's StartAfter and a run's StartAt hold its dispatch in the delayed
// set until the (fake) clock reaches it: not at submit (the submitter
// leaves delayed starts to the projector), not a millisecond early.
func TestADelayedStartIsDueWhenTheClockSaysSo(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	clock, sched, p := b.onFakeClock(t)
	queued := func(run string) int64 {
		n, err := b.rdb.XLen(b.ctx, b.db.K.QueueFor(run, events.DefaultPool, 0)).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	later := spec("later")
	later.StartAfterMS = time.Hour.Milliseconds()
	for name, submit := range map[string]func() (string, error){
		"start_after": func() (string, error) {
			run, _, err := sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "timers", Tasks: []events.TaskSpec{later}}, scheduler.SubmitOptions{})
			return run, err
		},
		"start_at": func() (string, error) {
			run, _, err := sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "timers", Tasks: []events.TaskSpec{spec("root")}},
				scheduler.SubmitOptions{StartAt: clock.Now().Add(time.Hour)})
			return run, err
		},
	} {
		run, err := submit()
		if err != nil {
			t.Fatal(err)
		}
		base := queued(run) // the runs share a queue stream
		if len(b.log(t, run)) != 1 {
			t.Fatalf("%s: the submit dispatched a delayed root", name)
		}
		if err := p.Project(b.ctx, run); err != nil {
			t.Fatal(err)
		}
		evs := b.log(t, run)
		var body events.TaskDispatchedBody
		if last := evs[len(evs)-1]; last.Type != events.TaskDispatched || last.DecodeBody(&body) != nil ||
			body.DueMS != clock.Now().Add(time.Hour).UnixMilli() || queued(run) != base {
			t.Fatalf("%s: after projecting: %s %s, queued %d; want a dispatch due in 1h, nothing queued", name, last.Type, last.Body, queued(run)-base)
		}
		clock.Advance(time.Hour - time.Millisecond)
		if _, err := p.MoveDue(b.ctx, 0); err != nil || queued(run) != base {
			t.Fatalf("%s: 1 ms early: queued %d (%v)", name, queued(run), err)
		}
		clock.Advance(time.Millisecond)
		if _, err := p.MoveDue(b.ctx, 0); err != nil || queued(run) != base+1 {
			t.Fatalf("%s: when due: queued %d (%v), want 1", name, queued(run), err)
		}
	}
}

// One delayed-set member whose queue key holds another type made
// delayed_move refuse the whole page, so every other due dispatch of the
// partition (another pool's, another run's) stayed parked for good (found
// by an audit).
func TestOneBadQueueKeyHoldsNoOtherDelayedDispatchBack(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	clock, sched, p := b.onFakeClock(t)
	submit := func(pool string) string {
		s := spec("t")
		s.Pool = pool
		s.StartAfterMS = time.Minute.Milliseconds()
		run, _, err := sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "w", Tasks: []events.TaskSpec{s}}, scheduler.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Project(b.ctx, run); err != nil {
			t.Fatal(err)
		}
		return run
	}
	bad := submit("broken")
	good := submit("healthy")
	// The broken pool's queue key holds a string (written by hand, or by
	// another application sharing the namespace).
	if err := b.rdb.Set(b.ctx, b.db.K.QueueFor(bad, "broken", 0), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	var err error
	for range 3 {
		_, err = p.MoveDue(b.ctx, 0)
	}
	n, _ := b.rdb.XLen(b.ctx, b.db.K.QueueFor(good, "healthy", 0)).Result()
	z, _ := b.rdb.ZCard(b.ctx, b.db.K.Delayed(0)).Result()
	if n != 1 {
		t.Errorf("the healthy run's due dispatch was never queued (queue length %d, delayed set %d members, mover error: %v)", n, z, err)
	}
	if z != 1 || err != nil {
		t.Errorf("the broken pool's dispatch: delayed set %d members, mover error %v; want it parked there, no error", z, err)
	}
}

// onFakeClock returns a fake clock and a scheduler and a projector of b's
// namespace that read it.
func (b liveBundle) onFakeClock(t *testing.T) (*clockwork.FakeClock, *scheduler.Scheduler, *projector.Projector) {
	t.Helper()
	clock := clockwork.NewFakeClockAt(time.Now())
	sched, err := scheduler.New(scheduler.Config{Redis: b.rdb, Namespace: b.db.K.Namespace(), Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	p, err := projector.New(projector.Config{Redis: b.rdb, Namespace: b.db.K.Namespace(), ID: "p1", Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	return clock, sched, p
}

// A delayed root's delay counts from the submit (run_submitted's time), as
// StartIn and StartAfter promise: it counted from the projector's commit,
// so a projector that lagged or was down when the run was submitted
// started the root that much later (found by an audit).
func TestADelayedRootIsDueFromTheSubmitNotFromItsProjection(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	clock, sched, p := b.onFakeClock(t)
	submitted := clock.Now()
	later := spec("later")
	later.StartAfterMS = time.Hour.Milliseconds()
	run, _, err := sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "timers", Tasks: []events.TaskSpec{later}}, scheduler.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(10 * time.Minute) // the projector comes to the run late
	if err := p.Project(b.ctx, run); err != nil {
		t.Fatal(err)
	}
	evs := b.log(t, run)
	var body events.TaskDispatchedBody
	if last := evs[len(evs)-1]; last.Type != events.TaskDispatched || last.DecodeBody(&body) != nil ||
		body.DueMS != submitted.Add(time.Hour).UnixMilli() {
		t.Fatalf("after projecting 10 min late: %s %s; want a dispatch due 1 h after the submit (%d)", last.Type, last.Body,
			submitted.Add(time.Hour).UnixMilli())
	}
}

// A delay counts from the event that called for it, as docs/workflows.md
// promises: a dependent's start_after from when it became ready (its last
// dependency's success; the failure that settled a tolerant join), a
// retry's backoff from the failure. Both counted from the projector's
// commit, so a projector that lagged or was down pushed them back by as
// much. The time is the event's log entry's (Redis' clock), so the tests
// read it from the log; "later" entries are appended with ids ahead of
// Redis' clock.
func TestDelaysCountFromTheirEventNotFromTheProjection(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	// seqOf returns the time of the log entry of run's event of type typ
	// for task.
	seqOf := func(t *testing.T, run string, typ events.Type, task string) int64 {
		t.Helper()
		for _, e := range b.log(t, run) {
			if e.Type == typ && e.Task == task {
				ms, _ := strconv.ParseInt(strings.SplitN(e.Seq, "-", 2)[0], 10, 64)
				return ms
			}
		}
		t.Fatalf("no %s of %s in run %s", typ, task, run)
		return 0
	}
	// after appends a heartbeat of task to run's log, d after Redis'
	// clock's now: an event of the run later than those before it.
	after := func(t *testing.T, run, task string, d time.Duration) {
		t.Helper()
		id := fmt.Sprintf("%d-0", time.Now().Add(d).UnixMilli())
		e := events.Event{ID: ulid.Make().String(), Run: run, Type: events.TaskHeartbeat, Task: task, Attempt: 1, Time: time.Now()}
		if err := b.rdb.XAdd(b.ctx, &redis.XAddArgs{Stream: b.db.K.RunLog(run), ID: id, Values: e.Fields()}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	lastDispatch := func(t *testing.T, run, task string) events.TaskDispatchedBody {
		t.Helper()
		var body events.TaskDispatchedBody
		evs := b.log(t, run)
		for _, e := range evs {
			if e.Type == events.TaskDispatched && e.Task == task {
				if err := e.DecodeBody(&body); err != nil {
					t.Fatal(err)
				}
			}
		}
		if body.DueMS == 0 {
			t.Fatalf("no delayed dispatch of %s in %v", task, decisionKeys(evs))
		}
		return body
	}
	t.Run("start_after of a dependent, from its last dependency's success", func(t *testing.T) {
		clock, sched, p := b.onFakeClock(t)
		later := spec("later", "a", "b")
		later.StartAfterMS = time.Hour.Milliseconds()
		run, _, err := sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "timers",
			Tasks: []events.TaskSpec{spec("a"), spec("b"), spec("other"), later}}, scheduler.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b.run(t, run, "a", "w1", true)
		b.run(t, run, "b", "w1", true)
		ready := seqOf(t, run, events.TaskSucceeded, "b")
		after(t, run, "other", 5*time.Minute) // an event of another task, after later became ready
		clock.Advance(10 * time.Minute)       // the projector comes to the run late
		if err := p.Project(b.ctx, run); err != nil {
			t.Fatal(err)
		}
		if got := lastDispatch(t, run, "later"); got.DueMS != ready+time.Hour.Milliseconds() {
			t.Fatalf("later due at %d; want 1 h after b's success (%d), %v off", got.DueMS, ready+time.Hour.Milliseconds(),
				time.Duration(got.DueMS-ready-time.Hour.Milliseconds())*time.Millisecond)
		}
	})
	t.Run("start_after of a tolerant join, from the failure that settled it", func(t *testing.T) {
		clock, sched, p := b.onFakeClock(t)
		late := spec("late", "b")
		late.StartAfterMS = time.Hour.Milliseconds()
		late.Join = &events.Join{Policy: events.JoinBestEffort}
		run, _, err := sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "joins",
			Tasks: []events.TaskSpec{spec("x"), spec("b", "x"), late}}, scheduler.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b.run(t, run, "x", "w1", false) // fails for good (one attempt): b is skipped, late may run
		failed := seqOf(t, run, events.TaskFailed, "x")
		after(t, run, "x", 5*time.Minute) // the skip the projector writes comes after this
		clock.Advance(10 * time.Minute)
		for range 2 { // the skip, then late's dispatch
			if err := p.Project(b.ctx, run); err != nil {
				t.Fatal(err)
			}
		}
		if got := lastDispatch(t, run, "late"); got.DueMS != failed+time.Hour.Milliseconds() {
			t.Fatalf("late due at %d; want 1 h after x's failure (%d), %v off", got.DueMS, failed+time.Hour.Milliseconds(),
				time.Duration(got.DueMS-failed-time.Hour.Milliseconds())*time.Millisecond)
		}
	})
	t.Run("retry, from the failure", func(t *testing.T) {
		clock, sched, p := b.onFakeClock(t)
		s := spec("flaky")
		s.MaxAttempts = 2
		run, _, err := sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "retries", Tasks: []events.TaskSpec{s}}, scheduler.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b.run(t, run, "flaky", "w1", false)
		failed := seqOf(t, run, events.TaskFailed, "flaky")
		clock.Advance(10 * time.Minute)
		if err := p.Project(b.ctx, run); err != nil {
			t.Fatal(err)
		}
		evs := b.log(t, run)
		var body events.TaskRetryScheduledBody
		if last := evs[len(evs)-1]; last.Type != events.TaskRetryScheduled || last.DecodeBody(&body) != nil ||
			body.DueMS != failed+body.DelayMS {
			t.Fatalf("after projecting 10 min late: %s %s; want a retry due its delay after the failure (%d + delay)",
				last.Type, last.Body, failed)
		}
	})
	t.Run("never later than from the projection", func(t *testing.T) {
		clock, sched, p := b.onFakeClock(t)
		clock.Advance(-30 * time.Minute) // the projector's clock is 30 min behind Redis'
		later := spec("later", "first")
		later.StartAfterMS = time.Hour.Milliseconds()
		run, _, err := sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "timers", Tasks: []events.TaskSpec{spec("first"), later}}, scheduler.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b.run(t, run, "first", "w1", true)
		if err := p.Project(b.ctx, run); err != nil {
			t.Fatal(err)
		}
		if got := lastDispatch(t, run, "later"); got.DueMS != clock.Now().Add(time.Hour).UnixMilli() {
			t.Fatalf("later due at %d; want 1 h after the projection (%d)", got.DueMS, clock.Now().Add(time.Hour).UnixMilli())
		}
	})
}
