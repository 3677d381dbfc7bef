package rdb_test

import (
	"testing"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/oklog/ulid/v2"
)

// FetchClaim claims, in the fetch's own call, exactly the messages whose
// task is dispatched for the message's attempt in a running run, with the
// event id of the message's position; every other message comes back
// unclaimed and untouched, for the claim script after the worker's checks.
func TestFetchClaimClaimsOnlyDispatchedTasksOfTheMessagesAttempt(t *testing.T) {
	t.Parallel()
	b := setupRun(t) // a: dispatched, attempt 1; b: pending (waits for a)
	for _, s := range b.db.K.AllQueues("default") {
		if err := b.db.EnsureGroup(b.ctx, s, rdb.GroupWorkers); err != nil {
			t.Fatal(err)
		}
	}
	queue := func(run, task string, attempt int) string {
		t.Helper()
		id, err := b.db.XAddDispatch(b.ctx, b.c, rdb.Dispatch{Pool: "default", Run: run, Task: task, Attempt: attempt}).Text()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	msgA := queue(b.run, "a", 1)
	queue(b.run, "b", 1)           // pending: not claimable
	queue(b.run, "a", 2)           // another attempt: stale
	queue("R-no-such-run", "a", 1) // no run
	stateBefore := b.hash(t, b.db.K.RunState(b.run))
	logBefore := len(b.log(t))

	// A plain Fetch claims nothing.
	ids := []string{ulid.Make().String(), ulid.Make().String(), ulid.Make().String(), ulid.Make().String(), ulid.Make().String()}
	res, claims, err := b.db.FetchClaim(b.ctx, 0, "default", "w1", ids, 3000)
	if err != nil {
		t.Fatal(err)
	}
	var read int
	for _, s := range res {
		read += len(s.Messages)
	}
	if read != 4 {
		t.Fatalf("read %d messages, want 4", read)
	}
	stream := b.db.K.QueueFor(b.run, "default", 0)
	if len(claims) != 1 {
		t.Fatalf("claims = %+v, want one (a, attempt 1)", claims)
	}
	cr, ok := claims[rdb.MessageKey(stream, msgA)]
	if !ok || cr.Outcome != rdb.ClaimOK || cr.Epoch != 1 || cr.Meta.Handler != "h.a" || string(cr.Input) != `{"in":true}` {
		t.Fatalf("claim of a = %+v (found %v); want ok at epoch 1 with a's handler and the run's input", cr, ok)
	}
	state := b.hash(t, b.db.K.RunState(b.run))
	if state["a"] != "running|1|1|w1" {
		t.Errorf("a's record = %q, want running|1|1|w1", state["a"])
	}
	state["a"] = stateBefore["a"]
	for f, v := range stateBefore {
		if state[f] != v {
			t.Errorf("state field %s changed: %q -> %q", f, v, state[f])
		}
	}
	log := b.log(t)
	if len(log) != logBefore+1 {
		t.Fatalf("the fetch appended %d events, want 1", len(log)-logBefore)
	}
	if e := log[len(log)-1]; e.Type != events.TaskClaimed || e.ID != ids[0] || e.Task != "a" || e.Epoch != 1 || e.Worker != "w1" {
		t.Errorf("appended %+v, want task_claimed of a at epoch 1 by w1 with the first event id", e)
	}

	// A second message of the same attempt finds the task claimed: it is
	// not claimed again (the claim script answers it after the worker's
	// checks), and nothing is written.
	queue(b.run, "a", 1)
	res, claims, err = b.db.FetchClaim(b.ctx, 0, "default", "w1", []string{ulid.Make().String()}, 3000)
	if err != nil || len(res) != 1 || len(claims) != 0 {
		t.Fatalf("second copy: read %v, claims %v, err %v; want one message, unclaimed", res, claims, err)
	}
	if n := len(b.log(t)); n != logBefore+1 {
		t.Errorf("the second fetch appended %d events", n-logBefore-1)
	}

	// Fetch never claims.
	queue(b.run, "a", 1)
	if _, err := b.db.Fetch(b.ctx, 0, "default", "w2", 1); err != nil {
		t.Fatal(err)
	}
	if got := b.hash(t, b.db.K.RunState(b.run))["a"]; got != "running|1|1|w1" {
		t.Errorf("after Fetch, a's record = %q", got)
	}
}

// go-redis sends a script call again after a lost reply. The second
// ClaimFresh of the same messages with the same event ids must hand back
// the claim the first made (not report the message unclaimed: the worker
// would then give back or ack a message whose task it holds), and write
// nothing.
func TestClaimFreshSentAgainReturnsItsClaim(t *testing.T) {
	t.Parallel()
	b := setupRun(t) // a: dispatched, attempt 1
	for _, s := range b.db.K.AllQueues("default") {
		if err := b.db.EnsureGroup(b.ctx, s, rdb.GroupWorkers); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.db.XAddDispatch(b.ctx, b.c, rdb.Dispatch{Pool: "default", Run: b.run, Task: "a", Attempt: 1}).Err(); err != nil {
		t.Fatal(err)
	}
	res, err := b.db.ReadGroup(b.ctx, rdb.GroupWorkers, "w1", b.db.K.Queues(0, "default"), ">", 1, 0)
	if err != nil || len(res) != 1 {
		t.Fatalf("read: %v %v", res, err)
	}
	id := ulid.Make().String()
	ids := func() string { return id }
	first, err := b.db.ClaimFresh(b.ctx, 0, "w1", res, ids, 3000)
	if err != nil || len(first) != 1 {
		t.Fatalf("first claim: %v %v", first, err)
	}
	n := len(b.log(t))
	again, err := b.db.ClaimFresh(b.ctx, 0, "w1", res, ids, 3000)
	if err != nil || len(again) != 1 {
		t.Fatalf("the same call again: claims %v, err %v; want its claim back", again, err)
	}
	key := rdb.MessageKey(res[0].Stream, res[0].Messages[0].ID)
	if again[key].Outcome != rdb.ClaimOK || again[key].Epoch != first[key].Epoch {
		t.Errorf("the same call again = %+v, want the first's claim %+v", again[key], first[key])
	}
	if len(b.log(t)) != n {
		t.Errorf("the same call again appended %d events", len(b.log(t))-n)
	}
	// Another call (another event id) of the same worker is not answered
	// here: it is a copy, for the worker's checks and the claim script.
	other, err := b.db.ClaimFresh(b.ctx, 0, "w1", res, func() string { return ulid.Make().String() }, 3000)
	if err != nil || len(other) != 0 {
		t.Errorf("another call: claims %v, err %v; want none", other, err)
	}
}

// A FetchClaim call sent again after a lost reply (go-redis resends a
// command whose reply timed out) answers with the messages and claims of
// its first execution: it reads no other message and claims nothing
// again, so no claim event id is used twice and the first execution's
// claims reach the worker instead of waiting for the reclaimer. A new
// call (new ids) reads on.
func TestFetchClaimSentAgainAnswersWhatItFirstRead(t *testing.T) {
	t.Parallel()
	b := setupRun(t) // a: dispatched, attempt 1
	for _, s := range b.db.K.AllQueues("default") {
		if err := b.db.EnsureGroup(b.ctx, s, rdb.GroupWorkers); err != nil {
			t.Fatal(err)
		}
	}
	second := b.submitRun(t, parallel(1))
	second.commit(t, second.last(t), events.Event{ID: ulid.Make().String(), Type: events.TaskDispatched, Task: "t00", Attempt: 1}.
		WithBody(events.TaskDispatchedBody{Pool: "default"}), "t00", "dispatched|1|0|")
	var msgs []string
	for _, d := range []rdb.Dispatch{{Pool: "default", Run: b.run, Task: "a", Attempt: 1}, {Pool: "default", Run: second.run, Task: "t00", Attempt: 1}} {
		id, err := b.db.XAddDispatch(b.ctx, b.c, d).Text()
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, id)
	}
	stream := b.db.K.QueueFor(b.run, "default", 0)
	ids := []string{ulid.Make().String()}
	fetch := func(ids []string) (string, map[string]rdb.ClaimResult) {
		t.Helper()
		res, claims, err := b.db.FetchClaim(b.ctx, 0, "default", "w1", ids, 3000)
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 1 || len(res[0].Messages) != 1 {
			t.Fatalf("fetch read %+v, want one message", res)
		}
		return res[0].Messages[0].ID, claims
	}
	first, claims := fetch(ids)
	if first != msgs[0] || claims[rdb.MessageKey(stream, first)].Outcome != rdb.ClaimOK {
		t.Fatalf("first fetch: message %s, claims %+v; want %s claimed", first, claims, msgs[0])
	}
	again, claims := fetch(ids) // the same call, sent again
	if cr := claims[rdb.MessageKey(stream, again)]; again != first || cr.Outcome != rdb.ClaimOK || cr.Epoch != 1 {
		t.Errorf("the call sent again read %s with claim %+v; want %s and its claim at epoch 1", again, cr, first)
	}
	for _, bb := range []scriptBundle{b, second} {
		for _, e := range bb.log(t) {
			if e.Type == events.TaskClaimed && e.ID == ids[0] && (bb.run != b.run || e.Task != "a") {
				t.Errorf("run %s: task_claimed of %s with the first call's event id %s", bb.run, e.Task, e.ID)
			}
		}
	}
	next, claims := fetch([]string{ulid.Make().String()})
	if next != msgs[1] || claims[rdb.MessageKey(stream, next)].Outcome != rdb.ClaimOK {
		t.Errorf("a new call read %s with claims %+v; want %s claimed", next, claims, msgs[1])
	}
}
