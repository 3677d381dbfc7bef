package worker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/testlog"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
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
		// The newer copy: TestANewerClaimOfAnAttemptInHandRunsOnItsSlotOnceTheStaleOneIsOver.
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

// newerClaimInHand starts f's message, whose fetch claimed the task at
// epoch 1, while the worker holds the same attempt under an older claim
// (epoch 0, handed back since: a repair or a release), on the slot the
// fetch reserved for it, as the fetch loop does; it returns once the
// message waits for the stale attempt, and that attempt's hold. The
// handler "h" records the slots held while it runs.
func newerClaimInHand(t *testing.T, f fetchClaimed, workCtx context.Context) (stale *attemptInHand, slots chan int) {
	t.Helper()
	w, m := f.w, f.m
	sig := testlog.NewLineSignal("a newer claim of an attempt in hand")
	w.log = zerolog.New(sig)
	w.workCtx, w.batch = workCtx, newBatcher(f.ctx, w)
	t.Cleanup(w.batch.stop)
	slots = make(chan int, 1)
	w.Handle("h", HandlerFunc(func(context.Context, *Task) (any, error) {
		slots <- len(w.sem)
		return "ok", nil
	}))
	stale = &attemptInHand{claimed: true, over: make(chan struct{})}
	w.attempts[m.attemptKey()] = stale
	w.sem <- struct{}{}
	w.start(m)
	select {
	case <-sig.Seen:
	case <-f.ctx.Done():
		t.Fatal("the newer claim did not wait for the stale attempt")
	}
	if n := f.pendingFor(t, m.stream, "W"); n != 1 {
		t.Errorf("%d messages pending for W while the stale attempt is in hand, want 1", n)
	}
	return stale, slots
}

// waitTasks waits for the worker's started tasks to end.
func (f fetchClaimed) waitTasks(t *testing.T) {
	t.Helper()
	done := make(chan struct{})
	go func() { f.w.tasks.Wait(); close(done) }()
	select {
	case <-done:
	case <-f.ctx.Done():
		t.Fatal("the started task did not end")
	}
}

// A fetch-claimed message of an attempt the worker still runs under a
// claim handed back since carries the live claim. It ran only at its
// reclaim, a lease later; then (ec08acb) right after the stale attempt,
// but in that attempt's goroutine, whose slot its outcome had freed: one
// handler over the worker's concurrency (found by a review). It runs on
// its own slot, as soon as the stale attempt is over.
func TestANewerClaimOfAnAttemptInHandRunsOnItsSlotOnceTheStaleOneIsOver(t *testing.T) {
	t.Parallel()
	f := newFetchClaimed(t)
	stale, slots := newerClaimInHand(t, f, f.ctx)
	f.w.mu.Lock() // the stale attempt ends, as process's cleanup does
	delete(f.w.attempts, f.m.attemptKey())
	close(stale.over)
	f.w.mu.Unlock()
	select {
	case n := <-slots:
		if n != 1 {
			t.Errorf("the handler ran with %d slots held, want 1: its own", n)
		}
	case <-f.ctx.Done():
		t.Fatal("the newer claim did not run once the stale attempt was over")
	}
	f.waitTasks(t)
	if n := len(f.w.sem); n != 0 {
		t.Errorf("%d slots held after the task, want 0", n)
	}
	if rec, err := f.w.db.TaskRecord(f.ctx, f.run, "t"); err != nil || rec.Status != "succeeded" || rec.Epoch != 1 {
		t.Errorf("record %+v, %v; want succeeded under the fetch's claim (epoch 1)", rec, err)
	}
}

// A worker that drains while such a message waits starts no task: the
// message's claim goes back with a fresh message, as an unstarted
// message's does (a handler started after Run returned was possible).
func TestANewerClaimOfAnAttemptInHandIsHandedBackWhenTheDrainTimesOut(t *testing.T) {
	t.Parallel()
	f := newFetchClaimed(t)
	work, timeout := context.WithCancel(f.ctx)
	_, slots := newerClaimInHand(t, f, work)
	timeout() // the drain times out; the stale handler ignores it
	f.waitTasks(t)
	select {
	case <-slots:
		t.Error("the handler ran while the worker drained")
	default:
	}
	if n := f.pendingFor(t, f.m.stream, "W"); n != 0 {
		t.Errorf("%d messages pending for W after the hand-back, want 0", n)
	}
	if rec, err := f.w.db.TaskRecord(f.ctx, f.run, "t"); err != nil || rec.Status != "dispatched" {
		t.Errorf("record %+v, %v; want dispatched (handed back)", rec, err)
	}
	if n := len(f.w.sem); n != 0 {
		t.Errorf("%d slots held after the hand-back, want 0", n)
	}
}
