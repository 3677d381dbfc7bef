package worker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// fetchClaimed is a one-task run (task "t", handler "h") in a fresh
// namespace, a worker "W" that is not running, and the run's message as W's
// fetch read and claimed it (buffered by W.messages, claim in m.pre).
type fetchClaimed struct {
	ctx context.Context
	c   *redis.Client
	w   *Worker
	run string
	m   message
	res []redis.XStream
}

func newFetchClaimed(t *testing.T) fetchClaimed {
	t.Helper()
	c := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
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
	for _, q := range w.db.K.AllQueues("default") {
		if err := w.db.EnsureGroup(ctx, q, rdb.GroupWorkers); err != nil {
			t.Fatal(err)
		}
	}
	res, claims, err := w.db.FetchClaim(ctx, 0, "default", "W", []string{ulid.Make().String()}, time.Now().UnixMilli())
	if err != nil || len(claims) != 1 {
		t.Fatalf("fetch as W: %v claims, %v", claims, err)
	}
	buf := w.messages(res, claims, nil)
	if len(buf) != 1 || buf[0].pre == nil || buf[0].pre.Outcome != rdb.ClaimOK {
		t.Fatalf("buffered %+v, want one message its fetch claimed", buf)
	}
	return fetchClaimed{ctx: ctx, c: c, w: w, run: run, m: buf[0], res: res}
}

// pendingFor counts the messages of stream pending for consumer.
func (f fetchClaimed) pendingFor(t *testing.T, stream, consumer string) int {
	t.Helper()
	p, err := f.c.XPendingExt(f.ctx, &redis.XPendingExtArgs{Stream: stream, Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 10, Consumer: consumer}).Result()
	if err != nil {
		t.Fatal(err)
	}
	return len(p)
}

// running makes f's worker ready to process messages as Run would (its
// work context and batcher) with a handler "h" that records it ran.
func (f fetchClaimed) running(t *testing.T) *atomic.Bool {
	t.Helper()
	f.w.workCtx, f.w.batch = f.ctx, newBatcher(f.ctx, f.w)
	t.Cleanup(f.w.batch.stop)
	var ran atomic.Bool
	f.w.Handle("h", HandlerFunc(func(context.Context, *Task) (any, error) {
		ran.Store(true)
		return nil, nil
	}))
	return &ran
}

// autoclaim takes f's message over for consumer with XAUTOCLAIM, as a
// reclaimer whose lease check passed would.
func (f fetchClaimed) autoclaim(t *testing.T, consumer string) []redis.XMessage {
	t.Helper()
	msgs, _, err := f.c.XAutoClaim(f.ctx, &redis.XAutoClaimArgs{Stream: f.m.stream, Group: rdb.GroupWorkers, Consumer: consumer, MinIdle: 0, Start: "0-0", Count: 10}).Result()
	if err != nil || len(msgs) != 1 || msgs[0].ID != f.m.id {
		t.Fatalf("XAUTOCLAIM as %s: %v, %v; want the message", consumer, msgs, err)
	}
	return msgs
}
