package worker

import (
	"testing"
	"time"

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
	autoclaim := func(consumer string) []redis.XMessage {
		t.Helper()
		msgs, _, err := f.c.XAutoClaim(ctx, &redis.XAutoClaimArgs{Stream: m.stream, Group: rdb.GroupWorkers, Consumer: consumer, MinIdle: 0, Start: "0-0", Count: 10}).Result()
		if err != nil || len(msgs) != 1 || msgs[0].ID != m.id {
			t.Fatalf("XAUTOCLAIM as %s: %v, %v; want the message", consumer, msgs, err)
		}
		return msgs
	}
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
