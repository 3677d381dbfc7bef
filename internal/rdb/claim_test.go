package rdb_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/oklog/ulid/v2"
)

// submitRun creates a run of specs in b's namespace (under a new run id)
// and dispatches its tasks named in dispatch.
func (b scriptBundle) submitRun(t *testing.T, specs []events.TaskSpec, dispatch ...string) scriptBundle {
	t.Helper()
	b.run = "R" + ulid.Make().String()
	body := events.RunSubmittedBody{Workflow: "wf", Tasks: specs}
	ev := events.Event{ID: ulid.Make().String(), Type: events.RunSubmitted, Time: time.UnixMilli(1000)}.WithBody(body)
	if created, _, err := b.db.Submit(b.ctx, b.run, ev, body); err != nil || !created {
		t.Fatalf("Submit = %v, %v", created, err)
	}
	for _, task := range dispatch {
		b.commit(t, b.last(t), events.Event{ID: ulid.Make().String(), Type: events.TaskDispatched, Task: task, Attempt: 1}.
			WithBody(events.TaskDispatchedBody{Pool: "default"}), task, "dispatched|1|0|")
	}
	return b
}

// Issue #10 defect 2: args nested deeper than cjson decodes (1,100 levels
// pass Go's validation) made the claim script fail after it had bumped the
// epoch and appended task_claimed, on every delivery. User args are not
// decoded in Lua any more.
func TestClaimOfDeeplyNestedArgs(t *testing.T) {
	t.Parallel()
	args := strings.Repeat("[", 1100) + strings.Repeat("]", 1100)
	if !json.Valid([]byte(args)) {
		t.Fatal("test args are not valid JSON")
	}
	b := setupRun(t).submitRun(t, []events.TaskSpec{{ID: "up", Handler: "h"}, {ID: "deep", Handler: "h", Deps: []string{"up"}, Args: json.RawMessage(args)}}, "deep")
	if err := b.c.HSet(b.ctx, b.db.K.RunState(b.run), rdb.ResultField("up"), `"u"`).Err(); err != nil {
		t.Fatal(err)
	}
	before := len(b.log(t))
	cr, err := b.db.Claim(b.ctx, rdb.ClaimArgs{Run: b.run, Task: "deep", Worker: "w1", Attempt: 1, EventID: ulid.Make().String(), TimeMS: 2000})
	if err != nil || cr.Outcome != rdb.ClaimOK || cr.Epoch != 1 {
		t.Fatalf("claim = %+v, %v; want ok at epoch 1", cr, err)
	}
	if string(cr.Meta.Args) != args || string(cr.Upstream["up"]) != `"u"` {
		t.Errorf("claim returned args of %d bytes and upstream %q", len(cr.Meta.Args), cr.Upstream["up"])
	}
	if n := len(b.log(t)) - before; n != 1 {
		t.Errorf("the claim appended %d events, want 1 (task_claimed)", n)
	}
}

// Metadata that cannot be read gets a "bad" reply, and the claim writes
// nothing: no epoch bump, no event, whatever the mode.
func TestClaimOfUnreadableMetadataWritesNothing(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	// As written before deps came first, but broken.
	if err := b.c.HSet(b.ctx, b.db.K.RunState(b.run), rdb.MetaField("a"), `{"h":"h.a","d":[`).Err(); err != nil {
		t.Fatal(err)
	}
	for _, reclaim := range []bool{false, true} {
		n, state := len(b.log(t)), b.hash(t, b.db.K.RunState(b.run))
		cr, err := b.db.Claim(b.ctx, rdb.ClaimArgs{Run: b.run, Task: "a", Worker: "w1", Attempt: 1, EventID: ulid.Make().String(),
			TimeMS: 2000, Reclaim: reclaim, Deliveries: 3, ReclaimEventID: ulid.Make().String()})
		if err != nil || cr.Outcome != rdb.ClaimBad || !strings.Contains(cr.Detail, "unreadable") {
			t.Fatalf("reclaim=%v: claim = %+v, %v; want bad", reclaim, cr, err)
		}
		if len(b.log(t)) != n {
			t.Errorf("reclaim=%v: a bad claim appended events", reclaim)
		}
		if diff := cmp.Diff(state, b.hash(t, b.db.K.RunState(b.run))); diff != "" {
			t.Errorf("reclaim=%v: a bad claim changed the state (-before +after):\n%s", reclaim, diff)
		}
	}
}

// Metadata written before deps came first ({"h":...,"d":[...]}) still
// gives its upstream results.
func TestClaimReadsDepsOfMetadataInTheOldOrder(t *testing.T) {
	t.Parallel()
	b := setupRun(t).submitRun(t, []events.TaskSpec{{ID: "x", Handler: "h"}, {ID: "y", Handler: "h"}, {ID: "z", Handler: "h", Deps: []string{"x", "y"}}}, "z")
	if err := b.c.HSet(b.ctx, b.db.K.RunState(b.run), rdb.MetaField("z"), `{"h":"h","d":["x","y"],"x":{"k":[1,2]}}`).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.c.HSet(b.ctx, b.db.K.RunState(b.run), rdb.ResultField("x"), "1", rdb.ResultField("y"), "2").Err(); err != nil {
		t.Fatal(err)
	}
	cr, err := b.db.Claim(b.ctx, rdb.ClaimArgs{Run: b.run, Task: "z", Worker: "w1", Attempt: 1, EventID: ulid.Make().String(), TimeMS: 2000})
	if err != nil || cr.Outcome != rdb.ClaimOK {
		t.Fatalf("claim = %+v, %v", cr, err)
	}
	want := map[string]json.RawMessage{"x": json.RawMessage("1"), "y": json.RawMessage("2")}
	if diff := cmp.Diff(want, cr.Upstream); diff != "" {
		t.Errorf("upstream (-want +got):\n%s", diff)
	}
}

// Issue #10 defect 7: a claim reply carries upstream results up to the
// call's byte budget; the rest are listed for ReadUpstream, page by page.
func TestClaimBoundsItsUpstreamResults(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	var specs []events.TaskSpec
	var deps []string
	results := map[string]any{}
	for i := range 50 {
		id := fmt.Sprintf("m%02d", i)
		specs = append(specs, events.TaskSpec{ID: id, Handler: "h"})
		deps = append(deps, id)
		results[rdb.ResultField(id)] = fmt.Sprintf(`"%s"`, strings.Repeat("x", 1000))
	}
	specs = append(specs, events.TaskSpec{ID: "fanin", Handler: "h", Deps: deps})
	b = b.submitRun(t, specs, "fanin")
	if err := b.c.HSet(b.ctx, b.db.K.RunState(b.run), results).Err(); err != nil {
		t.Fatal(err)
	}
	db := b.db
	db.ClaimUpstreamBytes = 10_500 // ten results
	cr, err := db.Claim(b.ctx, rdb.ClaimArgs{Run: b.run, Task: "fanin", Worker: "w1", Attempt: 1, EventID: ulid.Make().String(), TimeMS: 2000})
	if err != nil || cr.Outcome != rdb.ClaimOK {
		t.Fatalf("claim = %+v, %v", cr, err)
	}
	if len(cr.Upstream) != 10 || len(cr.UpstreamLeft) != 40 || cr.UpstreamLeft[0] != "m10" {
		t.Fatalf("claim returned %d results and left %d (first %v); want 10 and 40 from m10", len(cr.Upstream), len(cr.UpstreamLeft), cr.UpstreamLeft[:min(1, len(cr.UpstreamLeft))])
	}
	rest, err := db.ReadUpstream(b.ctx, b.run, cr.UpstreamLeft, 7)
	if err != nil {
		t.Fatal(err)
	}
	for dep, v := range rest {
		cr.Upstream[dep] = v
	}
	for _, dep := range deps {
		if string(cr.Upstream[dep]) != results[rdb.ResultField(dep)] {
			t.Fatalf("upstream %s = %.20q", dep, cr.Upstream[dep])
		}
	}
}

// A release (a claim handed back) appends its task_reclaimed before it
// sets the record: on a log of the wrong type the call fails with the
// record unchanged (it was set to dispatched first, with no event in the
// log to say so).
func TestReleaseWritesNothingOnAWrongTypedLog(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	cr := b.claim(t, "a", "w1", 1, false)
	before := b.hash(t, b.db.K.RunState(b.run))["a"]
	if err := b.c.Rename(b.ctx, b.db.K.RunLog(b.run), b.db.K.RunLog(b.run)+"-saved").Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.c.Set(b.ctx, b.db.K.RunLog(b.run), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.db.Release(b.ctx, b.run, "a", "w1", 1, cr.Epoch, ulid.Make().String(), 6000); err == nil {
		t.Fatal("release onto a string log: no error")
	}
	if after := b.hash(t, b.db.K.RunState(b.run))["a"]; after != before {
		t.Errorf("a's record went from %q to %q with no event in the log", before, after)
	}
}
