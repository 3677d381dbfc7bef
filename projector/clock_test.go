package projector_test

import (
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/jonboulle/clockwork"
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

// A delayed dependent's start_after counts from when it became ready (its
// last dependency's success), as docs/workflows.md promises, and a retry's
// backoff from the failure: both counted from the projector's commit, so
// a projector that lagged or was down pushed them back by as much.
func TestDelaysCountFromTheirEventNotFromTheProjection(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	t.Run("start_after of a dependent", func(t *testing.T) {
		clock, sched, p := b.onFakeClock(t)
		later := spec("later", "first")
		later.StartAfterMS = time.Hour.Milliseconds()
		run, _, err := sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "timers", Tasks: []events.TaskSpec{spec("first"), later}}, scheduler.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		succeeded := clock.Now().Add(time.Minute)
		b.runAt(t, run, "first", "w1", true, succeeded.UnixMilli())
		clock.Advance(10 * time.Minute) // the projector comes to the run late
		if err := p.Project(b.ctx, run); err != nil {
			t.Fatal(err)
		}
		evs := b.log(t, run)
		var body events.TaskDispatchedBody
		if last := evs[len(evs)-1]; last.Type != events.TaskDispatched || last.Task != "later" || last.DecodeBody(&body) != nil ||
			body.DueMS != succeeded.Add(time.Hour).UnixMilli() {
			t.Fatalf("after projecting 9 min late: %s %s %s; want later's dispatch due 1 h after first's success (%d)",
				last.Type, last.Task, last.Body, succeeded.Add(time.Hour).UnixMilli())
		}
	})
	t.Run("retry", func(t *testing.T) {
		clock, sched, p := b.onFakeClock(t)
		s := spec("flaky")
		s.MaxAttempts = 2
		run, _, err := sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "retries", Tasks: []events.TaskSpec{s}}, scheduler.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		failed := clock.Now()
		b.runAt(t, run, "flaky", "w1", false, failed.UnixMilli())
		clock.Advance(10 * time.Minute)
		if err := p.Project(b.ctx, run); err != nil {
			t.Fatal(err)
		}
		evs := b.log(t, run)
		var body events.TaskRetryScheduledBody
		if last := evs[len(evs)-1]; last.Type != events.TaskRetryScheduled || last.DecodeBody(&body) != nil ||
			body.DueMS != failed.UnixMilli()+body.DelayMS {
			t.Fatalf("after projecting 10 min late: %s %s; want a retry due its delay after the failure (%d + delay)",
				last.Type, last.Body, failed.UnixMilli())
		}
	})
	t.Run("an event from a clock ahead delays nothing further", func(t *testing.T) {
		clock, sched, p := b.onFakeClock(t)
		later := spec("later", "first")
		later.StartAfterMS = time.Hour.Milliseconds()
		run, _, err := sched.Submit(b.ctx, events.RunSubmittedBody{Workflow: "timers", Tasks: []events.TaskSpec{spec("first"), later}}, scheduler.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b.runAt(t, run, "first", "w1", true, clock.Now().Add(30*time.Minute).UnixMilli()) // the worker's clock is 30 min ahead
		if err := p.Project(b.ctx, run); err != nil {
			t.Fatal(err)
		}
		evs := b.log(t, run)
		var body events.TaskDispatchedBody
		if last := evs[len(evs)-1]; last.Type != events.TaskDispatched || last.DecodeBody(&body) != nil ||
			body.DueMS != clock.Now().Add(time.Hour).UnixMilli() {
			t.Fatalf("%s %s; want later due 1 h after the projection (%d)", last.Type, last.Body, clock.Now().Add(time.Hour).UnixMilli())
		}
	})
}
