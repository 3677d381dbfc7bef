package worker

import (
	"fmt"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

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
			// The worker holds the same attempt under another claim (for
			// the older copy: it reclaimed the task since, so the task's
			// record is its claim at that epoch).
			w.attempts[m.attemptKey()] = &attemptInHand{claimed: true, epoch: tc.heldEpoch}
			if tc.heldEpoch > 1 {
				if err := f.c.HSet(f.ctx, w.db.K.RunState(f.run), "t", fmt.Sprintf("running|1|%d|W", tc.heldEpoch)).Err(); err != nil {
					t.Fatal(err)
				}
			}
			if parked := w.process(f.ctx, m, func() {}); len(parked) != 0 {
				t.Fatalf("process parked %d messages", len(parked))
			}
			if n := f.pendingFor(t, m.stream, "W"); n != tc.wantPending {
				t.Errorf("held claim at epoch %d, copy claimed at 1: %d messages pending for W, want %d", tc.heldEpoch, n, tc.wantPending)
			}
			// A kept copy runs once the stale attempt is over: its
			// process hands it on, not a reclaim a lease later.
			if newer := w.attempts[m.attemptKey()].newer; len(newer) != tc.wantPending {
				t.Errorf("%d messages to run after the attempt in hand, want %d", len(newer), tc.wantPending)
			}
		})
	}
}

// A worker whose claim was handed back while its handler runs (a repair of
// a claim whose entry was lost, a release) and which then reads the fresh
// message without claiming it (a blocking read's message whose claim
// failed) took it for a redundant copy of the attempt in hand and acked
// it: the task's only message, so the task stayed dispatched for good
// (TestATaskWhoseEntryIsLostAndWhoseHolderDiesRunsElsewhere/deleted failed
// 1 in 30 so, its log showing the drop). The copy is acked only while the
// claim holds; here it stays pending, for the reclaim.
func TestACopyOfAnAttemptWhoseClaimWasHandedBackIsKept(t *testing.T) {
	t.Parallel()
	f := newFetchClaimed(t)
	w, m := f.w, f.m
	w.attempts[m.attemptKey()] = &attemptInHand{claimed: true, epoch: m.pre.Epoch}
	if err := w.db.ReleaseAndDispatch(f.ctx, "W", m.pre.Epoch, ulid.Make().String(), time.Now().UnixMilli(),
		rdb.Dispatch{Pool: "default", Run: m.run, Task: m.task, Attempt: m.attempt}); err != nil {
		t.Fatal(err)
	}
	res, err := f.c.XReadGroup(f.ctx, &redis.XReadGroupArgs{Group: rdb.GroupWorkers, Consumer: "W", Streams: []string{m.stream, ">"}, Block: -1}).Result()
	if err != nil {
		t.Fatal(err)
	}
	fresh := w.messages(res, nil, nil)
	if len(fresh) != 1 || fresh[0].pre != nil {
		t.Fatalf("read %+v, want the fresh message, unclaimed", fresh)
	}
	w.process(f.ctx, fresh[0], func() {})
	if n := f.pendingFor(t, m.stream, "W"); n != 2 {
		t.Errorf("%d messages pending for W, want 2: the handed-back claim's and the fresh one, the task's only live message", n)
	}
}
