package worker

import (
	"context"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// A message the fetch claimed but the worker never started (it stopped
// first) is given back with its claim handed back: another worker then
// claims the fresh copy. A copy given back with the claim still ours would
// be refused as busy and acked, and the task would be left running with
// no message at all.
func TestAnUnstartedFetchClaimedMessageIsGivenBackWithItsClaim(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := scheduler.New(scheduler.Config{Redis: c, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	run, _, err := s.Submit(ctx, events.RunSubmittedBody{Workflow: "w", Tasks: []events.TaskSpec{{ID: "t", Handler: "h"}}}, scheduler.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{Redis: c, Namespace: ns, ID: "W"})
	if err != nil {
		t.Fatal(err)
	}
	db := w.db
	for _, q := range db.K.AllQueues("default") {
		if err := db.EnsureGroup(ctx, q, rdb.GroupWorkers); err != nil {
			t.Fatal(err)
		}
	}
	res, claims, err := db.FetchClaim(ctx, 0, "default", "W", []string{ulid.Make().String()}, time.Now().UnixMilli())
	if err != nil || len(claims) != 1 {
		t.Fatalf("fetch as W: %v claims, %v", claims, err)
	}
	buf := w.messages(res, claims, nil)
	if len(buf) != 1 || buf[0].pre == nil {
		t.Fatalf("buffered %+v, want one fetch-claimed message", buf)
	}

	w.requeueUnstarted(buf)

	// Another worker gets the fresh copy and claims it.
	res, claims, err = db.FetchClaim(ctx, 0, "default", "X", []string{ulid.Make().String()}, time.Now().UnixMilli())
	if err != nil || len(res) != 1 || len(res[0].Messages) != 1 {
		t.Fatalf("fetch as X: %v, %v; want the given-back copy", res, err)
	}
	m := w.messages(res, claims, nil)[0]
	if m.pre == nil {
		cr, err := db.Claim(ctx, rdb.ClaimArgs{Run: run, Task: "t", Worker: "X", Attempt: 1, EventID: ulid.Make().String(), TimeMS: time.Now().UnixMilli()})
		t.Fatalf("X's fetch did not claim the given-back copy; its claim: %+v, %v", cr, err)
	}
	if m.pre.Outcome != rdb.ClaimOK || m.pre.Epoch != 3 {
		t.Errorf("X's claim = %+v, want ok at epoch 3 (W's claim, its hand-back, X's claim)", *m.pre)
	}
	// W's message was acked: nothing of W's is pending.
	p, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: db.K.Queue(0, "default", 0), Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 10, Consumer: "W"}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 0 {
		t.Errorf("W still has %d messages pending", len(p))
	}
}
