package worker

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// A buffered message that waited past the lease was reclaimed by another
// worker B (which claimed its task and died), then reclaimed back by this
// worker's reclaimer while the buffered copy held the message's handling
// mark (so the reclaimed copy was dropped as handled here). The buffered
// copy must take the task over from the dead B as the reclaimed copy
// would: its claim found the task busy (B's) and acked the message, which
// left the task running for a dead worker with no message pending for any
// reclaimer: the run hung.
func TestABufferedMessageReclaimedAwayAndBackTakesTheTaskOver(t *testing.T) {
	t.Parallel()
	f := newFetchClaimed(t)
	w, m, ctx := f.w, f.m, f.ctx
	ran := f.running(t)
	autoclaim := func(consumer string) []redis.XMessage { return f.autoclaim(t, consumer) }
	// B's reclaimer takes the message over and claims the task; B dies.
	autoclaim("B")
	cr, err := w.db.Claim(ctx, rdb.ClaimArgs{Run: f.run, Task: "t", Worker: "B", Attempt: 1, EventID: ulid.Make().String(),
		TimeMS: time.Now().UnixMilli(), Reclaim: true, Deliveries: 2, ReclaimEventID: ulid.Make().String()})
	if err != nil || cr.Outcome != rdb.ClaimOK {
		t.Fatalf("B's reclaim: %+v, %v", cr, err)
	}
	// Our reclaimer takes it back; its copy arrives while the buffered
	// copy holds the handling mark, and is dropped.
	rm := w.messages([]redis.XStream{{Stream: m.stream, Messages: autoclaim("W")}}, nil, nil)[0]
	rm.reclaimed, rm.deliveries = true, 3
	w.mu.Lock()
	w.handling[m.key()] = true
	w.mu.Unlock()
	w.process(ctx, rm, func() {})
	w.mu.Lock()
	delete(w.handling, m.key())
	w.mu.Unlock()
	// The buffered copy, which waited past the lease.
	m.fetched = time.Now().Add(-3 * w.cfg.Lease)
	w.process(ctx, m, func() {})
	if !ran.Load() {
		rec, _ := w.db.TaskRecord(ctx, f.run, "t")
		t.Errorf("the task did not run: its record is %+v, and %d messages are pending for W; want it taken over from the dead B and run",
			rec, f.pendingFor(t, m.stream, "W"))
	}
}

// A message whose claimed copy is still in hand here (its handler
// running) is reclaimed by worker B (which claims the task and dies), then
// reclaimed back by this worker's reclaimer: that reclaimed copy is
// dropped as handled here (the copy in hand holds the message's mark).
// The copy in hand then finds its claim gone, by a heartbeat (lease lost)
// or by its outcome refused (stale), and must not ack the message: it is
// the only one left of a task running for the dead B, and the reclaimed
// copy it stands for takes the task over.
func TestACopyInHandDoesNotAckItsMessageReclaimedAwayAndBack(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		lost func(ctx context.Context, w *Worker, proceed chan struct{})
	}{
		{"its lease is lost", func(ctx context.Context, w *Worker, _ chan struct{}) { w.beat(ctx) }},
		{"its outcome is refused", func(_ context.Context, _ *Worker, proceed chan struct{}) { close(proceed) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFetchClaimed(t)
			w, m, ctx := f.w, f.m, f.ctx
			f.running(t)
			var calls atomic.Int64
			started, proceed := make(chan struct{}), make(chan struct{})
			w.Handle("h", HandlerFunc(func(hctx context.Context, _ *Task) (any, error) {
				if calls.Add(1) == 1 {
					close(started)
					select {
					case <-hctx.Done():
					case <-proceed:
					}
				}
				return "ok", nil
			}))
			autoclaim := func(consumer string) []redis.XMessage { return f.autoclaim(t, consumer) }
			reclaimed := func() message {
				t.Helper()
				msgs := autoclaim("W")
				rm := w.messages([]redis.XStream{{Stream: m.stream, Messages: msgs}}, nil, nil)[0]
				rm.reclaimed, rm.deliveries = true, w.deliveries(ctx, m.stream, msgs)[0]
				return rm
			}

			// The fetch-claimed copy runs its handler.
			done := make(chan struct{})
			go func() {
				defer close(done)
				w.process(ctx, m, func() {})
			}()
			select {
			case <-started:
			case <-ctx.Done():
				t.Fatal("the handler did not start")
			}
			// B's reclaimer takes the message over and claims the task; B dies.
			autoclaim("B")
			cr, err := w.db.Claim(ctx, rdb.ClaimArgs{Run: f.run, Task: "t", Worker: "B", Attempt: 1, EventID: ulid.Make().String(),
				TimeMS: time.Now().UnixMilli(), Reclaim: true, Deliveries: 2, ReclaimEventID: ulid.Make().String()})
			if err != nil || cr.Outcome != rdb.ClaimOK {
				t.Fatalf("B's reclaim: %+v, %v", cr, err)
			}
			// Our reclaimer takes it back; the copy in hand holds its mark.
			w.process(ctx, reclaimed(), func() {})
			// The copy in hand finds its claim gone.
			c.lost(ctx, w, proceed)
			select {
			case <-done:
			case <-ctx.Done():
				t.Fatal("the copy in hand did not end")
			}
			if n := f.pendingFor(t, m.stream, "W"); n != 1 {
				rec, _ := w.db.TaskRecord(ctx, f.run, "t")
				t.Fatalf("%d messages pending for W, and the task's record is %v; want the message left pending for its reclaimed copy", n, rec)
			}
			// The reclaimer's next pass takes the task over from the dead B.
			w.process(ctx, reclaimed(), func() {})
			entries, err := f.c.XRange(ctx, w.db.K.RunLog(f.run), "-", "+").Result()
			if err != nil {
				t.Fatal(err)
			}
			succeeded := slices.ContainsFunc(entries, func(e redis.XMessage) bool {
				return e.Values["t"] == string(events.TaskSucceeded) && e.Values["w"] == "W"
			})
			if !succeeded || calls.Load() != 2 {
				t.Errorf("after the reclaimer's next pass, task_succeeded by W logged: %v, handler calls: %d; want the task taken over from B and run again", succeeded, calls.Load())
			}
		})
	}
}
