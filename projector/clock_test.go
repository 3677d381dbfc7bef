package projector_test

import (
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
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
