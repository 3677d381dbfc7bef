package rdb_test

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/oklog/ulid/v2"
)

// The claim and finish scripts take several items of one run per call. A
// call of n items must do exactly what n calls of one item do, in order:
// the same replies, the same records, results and @dirty, the same events.
// Random item sequences (duplicates, other workers, wrong attempts and
// epochs, reclaims, items repeated with the same event ids as retries do,
// retries of accepted outcomes) run both ways on twin runs. (A version that kept a call's records in memory between items, one
// HMGET and one HSET per call, passed this test but cost more Redis time
// per one-item call than it saved; see docs/performance.md.)
func TestBatchedItemsEqualOneCallPerItem(t *testing.T) {
	t.Parallel()
	const tasks = 4
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 7))
		batched, single := setupRun(t), setupRun(t)
		for _, b := range []scriptBundle{batched, single} {
			b.dispatchTasks(t, tasks, "dispatched|1|0|")
		}
		pick := func(n int) int { return rng.IntN(n) }
		task := func() string { return "t" + strconv.Itoa(pick(tasks)) }
		worker := func() string { return []string{"w1", "w2"}[pick(2)] }

		var claims []rdb.ClaimArgs
		for range 1 + pick(8) {
			if len(claims) > 0 && pick(4) == 0 {
				// The same call's item again (a retry after a lost reply).
				claims = append(claims, claims[pick(len(claims))])
				continue
			}
			claims = append(claims, rdb.ClaimArgs{Task: task(), Worker: worker(), Attempt: 1 + pick(4)/3,
				EventID: ulid.Make().String(), TimeMS: 3000, Reclaim: pick(4) == 0, Deliveries: 2,
				ReclaimEventID: ulid.Make().String()})
		}
		var got [2][]rdb.ClaimResult
		for k, b := range []scriptBundle{batched, single} {
			as := make([]rdb.ClaimArgs, len(claims))
			for i, a := range claims {
				a.Run = b.run
				as[i] = a
			}
			if k == 0 {
				res, err := rdb.ParseClaims(as, b.db.ClaimsCmd(b.ctx, b.c, as))
				if err != nil {
					t.Fatalf("seed %d: batched claims: %v", seed, err)
				}
				got[k] = res
				continue
			}
			for _, a := range as {
				res, err := rdb.ParseClaims([]rdb.ClaimArgs{a}, b.db.ClaimsCmd(b.ctx, b.c, []rdb.ClaimArgs{a}))
				if err != nil {
					t.Fatalf("seed %d: claim: %v", seed, err)
				}
				got[k] = append(got[k], res...)
			}
		}
		if diff := cmp.Diff(got[1], got[0]); diff != "" {
			t.Fatalf("seed %d: claim replies, one call per item vs one call (-single +batched):\n%s", seed, diff)
		}

		var finishes []rdb.FinishArgs
		for range 1 + pick(8) {
			a := rdb.FinishArgs{Task: task(), Worker: worker(), Attempt: 1 + pick(4)/3, Epoch: int64(pick(4)),
				EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 4000}
			if pick(3) > 0 {
				a.Type, a.Status, a.Result = events.TaskSucceeded, "succeeded", []byte(`{"by":"`+a.Worker+`"}`)
				a.Body = events.Event{}.WithBody(events.TaskSucceededBody{Result: a.Result}).Body
			} else {
				a.Type, a.Status = events.TaskFailed, "awaiting_retry"
				a.Body = events.Event{}.WithBody(events.TaskFailedBody{Error: "boom", Kind: events.FailureError}).Body
			}
			finishes = append(finishes, a)
		}
		type outcome struct {
			Dirty []bool
			Errs  []string
		}
		var out [2]outcome
		for k, b := range []scriptBundle{batched, single} {
			as := make([]rdb.FinishArgs, len(finishes))
			for i, a := range finishes {
				a.Run = b.run
				as[i] = a
			}
			calls := [][]rdb.FinishArgs{as}
			if k == 1 {
				calls = nil
				for i := range as {
					calls = append(calls, as[i:i+1])
				}
			}
			for _, c := range calls {
				outs, err := rdb.ParseFinishes(c, b.db.FinishesCmd(b.ctx, b.c, c))
				if err != nil {
					t.Fatalf("seed %d: finishes: %v", seed, err)
				}
				for _, o := range outs {
					out[k].Dirty = append(out[k].Dirty, o.Dirty)
					s := ""
					if o.Err != nil {
						s = o.Err.Error()
					}
					out[k].Errs = append(out[k].Errs, s)
				}
			}
		}
		if diff := cmp.Diff(out[1], out[0]); diff != "" {
			t.Fatalf("seed %d: finish replies (-single +batched):\n%s", seed, diff)
		}

		// Same state, results and events (stream ids and the run id aside).
		for _, key := range []func(rdb.Keys, string) string{rdb.Keys.RunState} {
			want, have := single.hash(t, key(single.db.K, single.run)), batched.hash(t, key(batched.db.K, batched.run))
			for _, h := range []map[string]string{want, have} {
				delete(h, rdb.FieldRunCursor)
				delete(h, "@commit")
			}
			if diff := cmp.Diff(want, have); diff != "" {
				t.Fatalf("seed %d: %s (-single +batched):\n%s", seed, key(rdb.Keys{}, "R"), diff)
			}
		}
		ignore := cmpopts.IgnoreFields(events.Event{}, "Seq", "Run")
		// The first two events are setupRun's own (ids of their own).
		if diff := cmp.Diff(single.log(t)[2:], batched.log(t)[2:], ignore, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("seed %d: events (-single +batched):\n%s", seed, diff)
		}
	}
}

// dispatchTasks commits task_dispatched for tasks t0..t<n-1> with the given
// record for each, as a projector would.
func (b scriptBundle) dispatchTasks(t *testing.T, n int, record string) {
	t.Helper()
	recs := map[string]string{}
	var evs []events.Event
	for i := range n {
		task := "t" + strconv.Itoa(i)
		recs[task] = record
		evs = append(evs, events.Event{ID: fixedID(2000, i), Type: events.TaskDispatched, Task: task, Attempt: 1}.
			WithBody(events.TaskDispatchedBody{Pool: "default"}))
	}
	res, err := b.db.Commit(b.ctx, b.run, rdb.Commit{Expected: b.head(t), FoldedTo: b.last(t), Writer: "p1", TimeMS: 2000,
		Events: evs, Records: recs})
	if err != nil || res.Conflict {
		t.Fatalf("dispatch commit %+v %v", res, err)
	}
}

// fixedID is the i-th of a fixed sequence of ULIDs of time ms: event ids
// that two runs of a test share (a version 2 event's time is its id's).
func fixedID(ms uint64, i int) string {
	var u ulid.ULID
	if err := u.SetTime(ms); err != nil {
		panic(err)
	}
	copy(u[6:], fmt.Sprintf("%010d", i))
	return u.String()
}
