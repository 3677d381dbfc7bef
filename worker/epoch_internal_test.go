package worker

import "testing"

// A fetch-claimed copy of an attempt this worker holds is kept pending only
// when its claim is newer than the one in hand (the held claim was handed
// back meanwhile: the copy carries the live claim). A copy claimed at an
// older epoch than the claim in hand (the worker reclaimed the task since)
// is redundant: it is acked, or a later reclaim of it would take the task
// from the live handler.
func TestAFetchClaimedCopyIsKeptOnlyWhenNewerThanTheClaimInHand(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		heldEpoch   int64 // the fetch claims at epoch 1
		wantPending int
	}{
		{name: "older copy acked", heldEpoch: 2, wantPending: 0},
		{name: "newer copy kept", heldEpoch: 0, wantPending: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFetchClaimed(t)
			w, m := f.w, f.m
			if m.pre.Epoch != 1 {
				t.Fatalf("the fetch's claim = %+v, want one at epoch 1", m.pre)
			}
			// The worker holds the same attempt under another claim.
			w.attempts[m.attemptKey()] = &attemptInHand{claimed: true, epoch: tc.heldEpoch}
			if parked := w.process(f.ctx, m, func() {}); len(parked) != 0 {
				t.Fatalf("process parked %d messages", len(parked))
			}
			if n := f.pendingFor(t, m.stream, "W"); n != tc.wantPending {
				t.Errorf("held claim at epoch %d, copy claimed at 1: %d messages pending for W, want %d", tc.heldEpoch, n, tc.wantPending)
			}
		})
	}
}
