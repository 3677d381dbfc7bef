package rdb_test

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// initialOf is what a submitter decides at once for ev (run_submitted)
// of tasks specs, each without arguments or retries: the roots'
// dispatches on their pools (event ids from ids) and the handoffs of the
// others.
func initialOf(ev events.Event, specs []events.TaskSpec, ids func() string) rdb.Initial {
	init := rdb.Initial{Writer: "submit"}
	for _, t := range specs {
		if len(t.Deps) > 0 {
			if init.Handoffs == nil {
				init.Handoffs = map[string][]rdb.Handoff{}
			}
			for _, d := range t.Deps {
				init.Handoffs[d] = append(init.Handoffs[d], rdb.Handoff{Task: t.ID, Pool: "default", Deps: len(t.Deps)})
			}
			continue
		}
		pool := t.Pool
		if pool == "" {
			pool = "default"
		}
		d := events.Event{ID: ids(), Run: ev.Run, Type: events.TaskDispatched, Task: t.ID, Attempt: 1, Epoch: 0,
			Time: ev.Time, Worker: "submit", Version: events.CurrentVersion}.WithBody(events.TaskDispatchedBody{Pool: pool})
		init.Events = append(init.Events, d)
		init.Dispatches = append(init.Dispatches, rdb.Dispatch{Pool: pool, Run: ev.Run, Task: t.ID, Attempt: 1, EventID: d.ID})
	}
	return init
}

// submitReq is the submit of run (workflow wf, tasks specs), decided at
// once (dispatches and handoffs) unless bare, with event ids from ids.
func submitReq(t *testing.T, run, wf string, bare bool, ids func() string, specs ...events.TaskSpec) rdb.SubmitReq {
	t.Helper()
	now := time.UnixMilli(1_000_000)
	body := events.RunSubmittedBody{Workflow: wf, Tasks: specs, Input: json.RawMessage(`{"in":1}`)}
	ev := events.Event{ID: ids(), Run: run, Type: events.RunSubmitted, Time: now}.WithBody(body)
	var init rdb.Initial
	if !bare {
		init = initialOf(ev, specs, ids)
	}
	req, err := rdb.NewSubmitReq(run, ev, body, init, now)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// eventIDs returns a source of the same event ids in every namespace.
func eventIDs() func() string {
	n := 0
	return func() string {
		n++
		return fmt.Sprintf("01JZZZZZZZZZZZZZZZZZ%04d00", n)
	}
}

var streamID = regexp.MustCompile(`\b\d{10,}-\d+\b`)

// dumpNamespace is every key of namespace ns, its prefix and stream entry
// ids masked: type and content (a stream's entries' fields, a hash's
// fields, a sorted set's members and scores, a string).
func dumpNamespace(t *testing.T, ctx context.Context, c *redis.Client, ns string) map[string]any {
	t.Helper()
	keys, err := c.Keys(ctx, ns+":*").Result()
	if err != nil {
		t.Fatal(err)
	}
	mask := func(s string) string { return streamID.ReplaceAllString(strings.ReplaceAll(s, ns, "NS"), "<id>") }
	out := map[string]any{}
	for _, k := range keys {
		typ, err := c.Type(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		var v any
		switch typ {
		case "stream":
			msgs, err := c.XRange(ctx, k, "-", "+").Result()
			if err != nil {
				t.Fatal(err)
			}
			var es []map[string]string
			for _, m := range msgs {
				e := map[string]string{}
				for f, x := range m.Values {
					e[f] = mask(x.(string))
				}
				es = append(es, e)
			}
			v = es
		case "hash":
			h, err := c.HGetAll(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			for f, x := range h {
				h[f] = mask(x)
			}
			v = h
		case "zset":
			v, err = c.ZRangeWithScores(ctx, k, 0, -1).Result()
		case "string":
			v, err = c.Get(ctx, k).Result()
		}
		if err != nil {
			t.Fatal(err)
		}
		out[typ+" "+mask(k)] = v
	}
	return out
}

// submitRunsCase is a namespace prepared for the submits of reqs: run R4
// exists (another workflow), R5's log key holds a string, and the queue of
// pool "bad" (R7's) holds a string.
type submitRunsCase struct {
	ctx  context.Context
	c    *redis.Client
	db   rdb.DB
	reqs []rdb.SubmitReq
}

func newSubmitRunsCase(t *testing.T, c *redis.Client) submitRunsCase {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	s := submitRunsCase{ctx: ctx, c: c, db: rdb.New(c, redistest.Namespace(t))}
	ids := eventIDs()
	if err := s.db.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	one := events.TaskSpec{ID: "a", Handler: "h"}
	chain := []events.TaskSpec{{ID: "a", Handler: "h"}, {ID: "b", Handler: "h", Deps: []string{"a"}}}
	if r := s.db.SubmitRuns(ctx, []rdb.SubmitReq{submitReq(t, "R4", "other", false, ids, one)}); r[0].Err != nil || !r[0].Created {
		t.Fatalf("submit R4: %+v", r[0])
	}
	if err := c.Set(ctx, s.db.K.RunLog("R5"), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, s.db.K.QueueFor("R7", "bad", 0), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.reqs = []rdb.SubmitReq{
		submitReq(t, "R1", "wf", false, ids, one),                                                 // created, its task dispatched
		submitReq(t, "R2", "wf", false, ids, chain...),                                            // created, a dispatched, b handed on
		submitReq(t, "R3", "wf", true, ids, one),                                                  // created, left to the projector
		submitReq(t, "R4", "wf", false, ids, one),                                                 // exists, an "other" run
		submitReq(t, "R1", "wf", false, ids, one),                                                 // exists: a second submit of R1
		submitReq(t, "R5", "wf", false, ids, one),                                                 // WRONGTYPE raised by a read, before any write
		submitReq(t, "R7", "wf", false, ids, events.TaskSpec{ID: "a", Handler: "h", Pool: "bad"}), // refused by its check of its queue
		submitReq(t, "R6", "wf", false, ids, chain...),                                            // created
	}
	return s
}

// submitRunsReply is a SubmitReply with its error as text (namespace
// masked).
type submitRunsReply struct {
	Created  bool
	Workflow string
	Err      string
	IndexErr string
}

func (s submitRunsCase) replies(rs []rdb.SubmitReply) []submitRunsReply {
	out := make([]submitRunsReply, len(rs))
	for i, r := range rs {
		out[i] = submitRunsReply{Created: r.Created, Workflow: r.Workflow}
		if r.Err != nil {
			out[i].Err = strings.ReplaceAll(r.Err.Error(), s.db.K.Namespace(), "NS")
		}
		if r.IndexErr != nil {
			out[i].IndexErr = r.IndexErr.Error()
		}
	}
	return out
}

// SubmitRuns creates several runs of one partition in ONE script call,
// each as a call of its own creates it: twin namespaces, one submitted a
// run per call, the other in one call, hold the same keys with the same
// contents, and the replies are alike. A run that exists is left alone
// (its reply names its workflow), and a run Redis refuses before its first
// write (its log holds a string) or the script refuses (its queue holds a
// string) fails alone, nothing of it written.
func TestSubmitRunsCreatesSeveralRunsInOneCall(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	single, batched := newSubmitRunsCase(t, c), newSubmitRunsCase(t, c)

	var singleReplies []rdb.SubmitReply
	for _, r := range single.reqs {
		singleReplies = append(singleReplies, single.db.SubmitRuns(single.ctx, []rdb.SubmitReq{r})...)
	}

	calls := &scriptCalls{}
	hooked := redis.NewClient(c.Options())
	t.Cleanup(func() { _ = hooked.Close() })
	hooked.AddHook(calls)
	batchedReplies := rdb.New(hooked, batched.db.K.Namespace()).SubmitRuns(batched.ctx, batched.reqs)
	if n := calls.n.Load(); n != 1 {
		t.Errorf("SubmitRuns of %d runs of one partition sent %d script calls, want 1", len(batched.reqs), n)
	}

	want, got := single.replies(singleReplies), batched.replies(batchedReplies)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("replies, one call per run vs one call (-single +batched):\n%s", diff)
	}
	if diff := cmp.Diff(dumpNamespace(t, single.ctx, c, single.db.K.Namespace()), dumpNamespace(t, batched.ctx, c, batched.db.K.Namespace())); diff != "" {
		t.Errorf("keys, one call per run vs one call (-single +batched):\n%s", diff)
	}

	// What the replies must be, besides being alike.
	wantShape := []struct {
		created bool
		wf, err string
	}{{true, "wf", ""}, {true, "wf", ""}, {true, "wf", ""}, {false, "other", ""}, {false, "wf", ""}, {false, "", "WRONGTYPE"},
		{false, "", "WRONGTYPE " + strings.ReplaceAll(batched.db.K.QueueFor("R7", "bad", 0), batched.db.K.Namespace(), "NS") + " holds a string"}, {true, "wf", ""}}
	for i, w := range wantShape {
		g := got[i]
		if g.Created != w.created || g.Workflow != w.wf || (w.err == "") != (g.Err == "") || !strings.Contains(g.Err, w.err) || g.IndexErr != "" {
			t.Errorf("run %d (%s): %+v, want created %v, workflow %q, error with %q", i, batched.reqs[i].Run, g, w.created, w.wf, w.err)
		}
	}
	db := batched.db
	if typ, _ := c.Type(batched.ctx, db.K.RunLog("R5")).Result(); typ != "string" {
		t.Errorf("R5's log is a %s after its failed submit", typ)
	}
	if n, _ := c.Exists(batched.ctx, db.K.RunState("R5"), db.K.RunState("R7"), db.K.RunLog("R7")).Result(); n != 0 {
		t.Error("the failed submits of R5 and R7 wrote their state or log")
	}
	for _, run := range []string{"R1", "R2", "R6"} {
		if st, _ := c.HGet(batched.ctx, db.K.RunState(run), "a").Result(); !strings.HasPrefix(st, "dispatched|1|") {
			t.Errorf("run %s: task a is %q, want dispatched at submit", run, st)
		}
	}
	if n, _ := c.ZCard(batched.ctx, db.K.Runs()).Result(); n != 7 {
		t.Errorf("the run index holds %d runs, want 7 (R1-R7: an entry is written even when its run was not created)", n)
	}
}

// A run with more arguments than the script unpacks at once (its part of
// the call is copied element by element) is created whole between two
// small runs of the same call: the offsets after it are right.
func TestSubmitRunsCreatesALargeRunBetweenSmallOnes(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	ctx := context.Background()
	ns := redistest.Namespace(t)
	if err := rdb.New(c, ns).LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	calls := &scriptCalls{}
	hooked := redis.NewClient(c.Options())
	t.Cleanup(func() { _ = hooked.Close() })
	hooked.AddHook(calls)
	db := rdb.New(hooked, ns)
	ids := eventIDs()
	wide := make([]events.TaskSpec, 2100) // 4,200 arguments of task ids and metadata
	for i := range wide {
		wide[i] = events.TaskSpec{ID: fmt.Sprintf("t%04d", i), Handler: "h"}
	}
	a := events.TaskSpec{ID: "a", Handler: "h"}
	reqs := []rdb.SubmitReq{submitReq(t, "small1", "wf", false, ids, a), submitReq(t, "big", "wf", true, ids, wide...), submitReq(t, "small2", "wf", false, ids, a)}
	for i, r := range db.SubmitRuns(ctx, reqs) {
		if r.Err != nil || !r.Created {
			t.Fatalf("run %s: %+v", reqs[i].Run, r)
		}
	}
	if n := calls.n.Load(); n != 1 {
		t.Fatalf("%d script calls, want the three runs in one", n)
	}
	h, err := c.HGetAll(ctx, db.K.RunState("big")).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range wide {
		if h["@g:"+s.ID] != `{"h":"h"}` {
			t.Fatalf("big: task %s's metadata is %q", s.ID, h["@g:"+s.ID])
		}
	}
	if h["@tasks"] != "2100" || h["@workflow"] != "wf" || h["@dirty"] != "1" {
		t.Errorf("big: @tasks %q, @workflow %q, @dirty %q", h["@tasks"], h["@workflow"], h["@dirty"])
	}
	for _, run := range []string{"small1", "small2"} {
		if st, _ := c.HGet(ctx, db.K.RunState(run), "a").Result(); !strings.HasPrefix(st, "dispatched|1|") {
			t.Errorf("%s: task a is %q, want dispatched", run, st)
		}
	}
}

// Runs of several partitions go in one call per partition, and a
// partition's runs beyond a call's bound in another; each reply reaches its
// own submit (an existing run's names its own workflow).
func TestSubmitRunsSplitsByPartitionAndSize(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	ctx := context.Background()
	ns := redistest.Namespace(t)
	if err := rdb.NewP(c, ns, 3).LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	calls := &scriptCalls{}
	hooked := redis.NewClient(c.Options())
	t.Cleanup(func() { _ = hooked.Close() })
	hooked.AddHook(calls)
	db := rdb.NewP(hooked, ns, 3)
	ids := eventIDs()
	a := events.TaskSpec{ID: "a", Handler: "h"}
	// 240 runs, each already submitted with a workflow named after it, then
	// submitted again: every reply must name its own run's workflow.
	var first, again []rdb.SubmitReq
	parts := map[int]int{}
	for i := range 240 {
		run := fmt.Sprintf("run%03d", i)
		first = append(first, submitReq(t, run, "wf-"+run, false, ids, a))
		again = append(again, submitReq(t, run, "wf", false, ids, a))
		parts[db.K.Partition(run)]++
	}
	for i, r := range db.SubmitRuns(ctx, first) {
		if r.Err != nil || !r.Created {
			t.Fatalf("run %s: %+v", first[i].Run, r)
		}
	}
	want := 0
	for _, n := range parts {
		want += (n + 63) / 64
	}
	if len(parts) != 3 || want <= 3 {
		t.Fatalf("runs by partition %v: the test needs all three, one with more than a call's 64", parts)
	}
	if n := calls.n.Load(); n != int64(want) {
		t.Errorf("%d script calls for runs by partition %v, want %d", n, parts, want)
	}
	for i, r := range db.SubmitRuns(ctx, again) {
		if r.Err != nil || r.Created || r.Workflow != "wf-"+again[i].Run {
			t.Errorf("run %s submitted again: %+v, want it found, of workflow wf-%s", again[i].Run, r, again[i].Run)
		}
	}
}
