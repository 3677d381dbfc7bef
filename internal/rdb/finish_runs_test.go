package rdb_test

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
)

// scriptCalls counts the script calls a client sends in pipelines.
type scriptCalls struct{ n atomic.Int64 }

func (*scriptCalls) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (*scriptCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *scriptCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if name := c.Name(); name == "evalsha" || name == "eval" {
				h.n.Add(1)
			}
		}
		return next(ctx, cmds)
	}
}

// finishRuns is a namespace of four runs whose tasks w1 claimed, and the
// successes w1 reports: A (both tasks: it ends), B (a single-task run: it
// ends), C (refused: a bad message id), D (one of two tasks: it becomes
// dirty). msgs are each run's messages.
type finishRuns struct {
	runs   []scriptBundle
	groups [][]rdb.FinishArgs
	msgs   [][]string
	feed   []int // how often the feed named each run before the finish
}

func newFinishRuns(t *testing.T) finishRuns {
	t.Helper()
	base := endRun(t, endPolicy, parallel(2)...)
	f := finishRuns{runs: []scriptBundle{base, base.submitRun(t, parallel(1)), base.submitRun(t, parallel(1)), base.submitRun(t, parallel(2))}}
	for i, b := range f.runs {
		tasks := []string{"t00", "t01"}
		if i == 1 || i == 2 {
			tasks = tasks[:1]
		}
		ids := b.dispatchQueued(t, "w1", tasks...)
		if i == 3 {
			tasks = tasks[:1]
		}
		var g []rdb.FinishArgs
		var m []string
		for _, task := range tasks {
			g = append(g, b.success(t, task, "w1", ids[task]))
			m = append(m, ids[task])
		}
		if i == 2 {
			g[0].MessageID = "not-an-id"
		}
		f.groups, f.msgs = append(f.groups, g), append(f.msgs, m)
	}
	for _, b := range f.runs {
		f.feed = append(f.feed, b.feedPoints(t))
	}
	return f
}

// finishRunsOutcome is what a finish of finishRuns' groups did: per run,
// its error or its outcomes, its events' types, its state's fields (ids
// of events aside), which of its messages are still pending, and how
// often the feed names it.
type finishRunsOutcome struct {
	Err     string
	Ended   []bool
	Dirty   []bool
	Acked   []int
	Events  []string
	State   map[string]string
	Pending []bool
	Feed    int
}

func (f finishRuns) outcome(t *testing.T, results [][]rdb.FinishOutcome, errs []error) []finishRunsOutcome {
	t.Helper()
	base := f.runs[0]
	pending := map[string]bool{}
	ps, err := base.c.XPendingExt(base.ctx, &redis.XPendingExtArgs{Stream: base.endQueue(), Group: rdb.GroupWorkers,
		Start: "-", End: "+", Count: 100}).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		pending[p.ID] = true
	}
	got := make([]finishRunsOutcome, len(f.runs))
	for g, b := range f.runs {
		o := &got[g]
		if errs[g] != nil {
			o.Err = errs[g].Error()
			o.Err = o.Err[strings.Index(o.Err, "ERR"):]
		}
		for _, r := range results[g] {
			if r.Err != nil {
				t.Fatalf("run %d: outcome error %v", g, r.Err)
			}
			o.Ended, o.Dirty, o.Acked = append(o.Ended, r.Ended), append(o.Dirty, r.Dirty), append(o.Acked, r.Acked)
		}
		for _, e := range b.log(t) {
			o.Events = append(o.Events, string(e.Type))
		}
		o.State = b.hash(t, b.db.K.RunState(b.run))
		delete(o.State, "@commit")
		delete(o.State, rdb.FieldRunCursor)
		for _, id := range f.msgs[g] {
			o.Pending = append(o.Pending, pending[id])
		}
		o.Feed = b.feedPoints(t)
	}
	return got
}

// FinishGroups records the outcomes of several runs of one partition and
// stream in ONE finish call, and each run's outcomes as a call of its own
// records them: twin namespaces, one finished with one call per run, the
// other with FinishGroups, end alike. The refused run (its error names
// the bad id; nothing of it written) does not stop the runs after it.
func TestFinishGroupsRecordsSeveralRunsInOneCall(t *testing.T) {
	t.Parallel()
	single, batched := newFinishRuns(t), newFinishRuns(t)

	results, errs := make([][]rdb.FinishOutcome, len(single.groups)), make([]error, len(single.groups))
	for g, as := range single.groups {
		b := single.runs[g]
		results[g], errs[g] = rdb.ParseFinishes(as, b.db.FinishesCmd(b.ctx, b.c, as))
	}
	want := single.outcome(t, results, errs)

	base := batched.runs[0]
	calls := &scriptCalls{}
	c := redis.NewClient(base.c.Options())
	t.Cleanup(func() { _ = c.Close() })
	c.AddHook(calls)
	results, errs = rdb.New(c, base.db.K.Namespace()).FinishGroups(base.ctx, batched.groups)
	if n := calls.n.Load(); n != 1 {
		t.Errorf("FinishGroups of %d runs of one partition and stream sent %d script calls, want 1", len(batched.groups), n)
	}
	got := batched.outcome(t, results, errs)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("one call per run vs one call (-single +batched):\n%s", diff)
	}

	// What the outcomes must be, besides being alike.
	if !strings.Contains(got[2].Err, "bad message id not-an-id") || got[2].Events[len(got[2].Events)-1] != "task_claimed" ||
		!got[2].Pending[0] {
		t.Errorf("the refused run: %+v", got[2])
	}
	for _, g := range []int{0, 1} {
		if ev := got[g].Events; ev[len(ev)-1] != "run_succeeded" || len(got[g].State) != 0 || slices.Contains(got[g].Pending, true) {
			t.Errorf("run %d did not end: %+v", g, got[g])
		}
	}
	if o := got[3]; o.Feed != batched.feed[3]+1 || o.Ended[0] || o.Pending[0] {
		t.Errorf("the dirty run: %+v", o)
	}
}

// A run whose outcome cannot be recorded because of what Redis finds
// (its state hash holds another type: WRONGTYPE from the run's first
// command) fails alone, with nothing of it written, as in a call of its
// own: the runs before and after it in the call are recorded and acked.
func TestFinishGroupsARunThatFailsInRedisFailsAlone(t *testing.T) {
	t.Parallel()
	base := endRun(t, endPolicy, parallel(1)...)
	runs := []scriptBundle{base, base.submitRun(t, parallel(1)), base.submitRun(t, parallel(1))}
	var groups [][]rdb.FinishArgs
	var msgs []string
	for _, b := range runs {
		ids := b.dispatchQueued(t, "w1", "t00")
		groups = append(groups, []rdb.FinishArgs{b.success(t, "t00", "w1", ids["t00"])})
		msgs = append(msgs, ids["t00"])
	}
	bad := runs[1]
	state := bad.db.K.RunState(bad.run)
	if err := bad.c.Del(bad.ctx, state).Err(); err != nil {
		t.Fatal(err)
	}
	if err := bad.c.Set(bad.ctx, state, "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	logBefore := len(bad.log(t))
	if err := base.db.LoadScripts(base.ctx); err != nil { // pipelined calls do not fall back to EVAL
		t.Fatal(err)
	}

	results, errs := base.db.FinishGroups(base.ctx, groups)
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "WRONGTYPE") {
		t.Errorf("the run with a string for a state hash: error %v, want WRONGTYPE", errs[1])
	}
	for _, g := range []int{0, 2} {
		if errs[g] != nil || len(results[g]) != 1 || results[g][0].Err != nil || !results[g][0].Ended || results[g][0].Acked != 1 {
			t.Errorf("run %d next to the failing one: %+v, %v; want it ended and acked", g, results[g], errs[g])
		}
	}
	if n := len(bad.log(t)); n != logBefore {
		t.Errorf("the failing run's log went from %d to %d events", logBefore, n)
	}
	ps, err := base.c.XPendingExt(base.ctx, &redis.XPendingExtArgs{Stream: base.endQueue(), Group: rdb.GroupWorkers,
		Start: "-", End: "+", Count: 100}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].ID != msgs[1] {
		t.Errorf("pending after the call: %v, want only the failing run's message %s", ps, msgs[1])
	}
}
