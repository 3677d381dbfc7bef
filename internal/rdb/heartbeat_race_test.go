package rdb_test

import (
	"testing"

	"github.com/graflow-go/graflow/events"
	"github.com/oklog/ulid/v2"
)

// A worker's heartbeat snapshot may race its own outcome: the attempt
// failed (a retry follows), the projector already dispatched attempt 2 —
// which keeps the epoch and the owner — and then the heartbeat for attempt
// 1 arrives. Nobody took the claim over, so nothing was refused: the
// heartbeat is benign and no result_rejected is written. A second run of
// the finish (a retry after a lost reply) is likewise "already accepted".
func TestHeartbeatAndFinishAfterTheirOwnRetryDispatchAreBenign(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	cr := b.claim(t, "a", "w1", 1, false)
	if _, err := b.finish("a", "w1", 1, cr.Epoch, false); err != nil {
		t.Fatal(err)
	}
	b.commit(t, b.last(t), events.Event{ID: ulid.Make().String(), Type: events.TaskRetryScheduled, Task: "a", Attempt: 2}.
		WithBody(events.TaskRetryScheduledBody{}), "a", "dispatched|2|1|w1")
	if err := b.heartbeat("w1", 1, cr.Epoch, true); err != nil {
		t.Fatalf("heartbeat after the own retry dispatch = %v, want nil (benign)", err)
	}
	if _, err := b.finish("a", "w1", 1, cr.Epoch, false); err != nil {
		t.Fatalf("finish again after the own retry dispatch = %v, want already accepted", err)
	}
	for _, e := range b.log(t) {
		if e.Type == events.ResultRejected {
			t.Fatalf("result_rejected written for a claim nobody took over: %+v", e)
		}
	}
	// A claim that was taken over stays stale: attempt 2 claimed by w2.
	cr2 := b.claim(t, "a", "w2", 2, false)
	if cr2.Epoch <= cr.Epoch {
		t.Fatalf("claim of attempt 2 at epoch %d, want > %d", cr2.Epoch, cr.Epoch)
	}
	if err := b.heartbeat("w1", 1, cr.Epoch, true); err == nil {
		t.Fatal("heartbeat of a claim taken over = nil, want a stale claim error")
	}
}
