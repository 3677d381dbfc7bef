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
// dispatches (event ids from ids) and the handoffs of the others.
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
		d := events.Event{ID: ids(), Run: ev.Run, Type: events.TaskDispatched, Task: t.ID, Attempt: 1, Epoch: 0,
			Time: ev.Time, Worker: "submit", Version: events.CurrentVersion}.WithBody(events.TaskDispatchedBody{Pool: "default"})
		init.Events = append(init.Events, d)
		init.Dispatches = append(init.Dispatches, rdb.Dispatch{Pool: "default", Run: ev.Run, Task: t.ID, Attempt: 1, EventID: d.ID})
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
// exists (another workflow), R5's log key holds a string.
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
	s.reqs = []rdb.SubmitReq{
		submitReq(t, "R1", "wf", false, ids, one),      // created, its task dispatched
		submitReq(t, "R2", "wf", false, ids, chain...), // created, a dispatched, b handed on
		submitReq(t, "R3", "wf", true, ids, one),       // created, left to the projector
		submitReq(t, "R4", "wf", false, ids, one),      // exists, an "other" run
		submitReq(t, "R1", "wf", false, ids, one),      // exists: a second submit of R1
		submitReq(t, "R5", "wf", false, ids, one),      // WRONGTYPE at its first command
		submitReq(t, "R6", "wf", false, ids, chain...), // created
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
// (its reply names its workflow), and a run Redis refuses at its first
// command (its log holds a string) fails alone, nothing of it written.
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
	}{{true, "wf", ""}, {true, "wf", ""}, {true, "wf", ""}, {false, "other", ""}, {false, "wf", ""}, {false, "", "WRONGTYPE"}, {true, "wf", ""}}
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
	if n, _ := c.Exists(batched.ctx, db.K.RunState("R5")).Result(); n != 0 {
		t.Error("R5's failed submit wrote its state")
	}
	for _, run := range []string{"R1", "R2", "R6"} {
		if st, _ := c.HGet(batched.ctx, db.K.RunState(run), "a").Result(); !strings.HasPrefix(st, "dispatched|1|") {
			t.Errorf("run %s: task a is %q, want dispatched at submit", run, st)
		}
	}
	if n, _ := c.ZCard(batched.ctx, db.K.Runs()).Result(); n != 6 {
		t.Errorf("the run index holds %d runs, want 6 (R1-R6: an entry is written even when its run was not created)", n)
	}
}

// A run too large for one Lua stack's worth of arguments (its arguments
// are copied for its part of the call element by element, not unpacked)
// is created whole, and so is the small run after it in the same call.
func TestSubmitRunsCreatesALargeRunBesideASmallOne(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	ctx := context.Background()
	db := rdb.New(c, redistest.Namespace(t))
	if err := db.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	ids := eventIDs()
	wide := make([]events.TaskSpec, 2500) // 5,000 arguments of task ids and metadata
	for i := range wide {
		wide[i] = events.TaskSpec{ID: fmt.Sprintf("t%04d", i), Handler: "h"}
	}
	reqs := []rdb.SubmitReq{submitReq(t, "big", "wf", true, ids, wide...), submitReq(t, "small", "wf", false, ids, events.TaskSpec{ID: "a", Handler: "h"})}
	for i, r := range db.SubmitRuns(ctx, reqs) {
		if r.Err != nil || !r.Created {
			t.Fatalf("run %s: %+v", reqs[i].Run, r)
		}
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
	if h["@tasks"] != "2500" || h["@workflow"] != "wf" {
		t.Errorf("big: @tasks %q, @workflow %q", h["@tasks"], h["@workflow"])
	}
	if st, _ := c.HGet(ctx, db.K.RunState("small"), "a").Result(); !strings.HasPrefix(st, "dispatched|1|") {
		t.Errorf("small: task a is %q, want dispatched", st)
	}
}
