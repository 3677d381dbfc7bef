package worker

import (
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/oklog/ulid/v2"
)

// A message the fetch claimed but the worker never started (it stopped
// first) is given back with its claim handed back: another worker then
// claims the fresh copy. A copy given back with the claim still ours would
// be refused as busy and acked, and the task would be left running with
// no message at all.
func TestAnUnstartedFetchClaimedMessageIsGivenBackWithItsClaim(t *testing.T) {
	t.Parallel()
	f := newFetchClaimed(t)
	w, db, ctx := f.w, f.w.db, f.ctx

	w.requeueUnstarted([]message{f.m})

	// Another worker gets the fresh copy and claims it.
	res, claims, err := db.FetchClaim(ctx, 0, "default", "X", []string{ulid.Make().String()}, time.Now().UnixMilli())
	if err != nil || len(res) != 1 || len(res[0].Messages) != 1 {
		t.Fatalf("fetch as X: %v, %v; want the given-back copy", res, err)
	}
	m := w.messages(res, claims, nil)[0]
	if m.pre == nil {
		cr, err := db.Claim(ctx, rdb.ClaimArgs{Run: f.run, Task: "t", Worker: "X", Attempt: 1, EventID: ulid.Make().String(), TimeMS: time.Now().UnixMilli()})
		t.Fatalf("X's fetch did not claim the given-back copy; its claim: %+v, %v", cr, err)
	}
	if m.pre.Outcome != rdb.ClaimOK || m.pre.Epoch != 3 {
		t.Errorf("X's claim = %+v, want ok at epoch 3 (W's claim, its hand-back, X's claim)", *m.pre)
	}
	// W's message was acked: nothing of W's is pending.
	if n := f.pendingFor(t, db.K.Queue(0, "default", 0), "W"); n != 0 {
		t.Errorf("W still has %d messages pending", n)
	}
}
