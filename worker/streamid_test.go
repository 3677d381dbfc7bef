package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker"
	"github.com/redis/go-redis/v9"
)

// Stream ids are unique only within a stream: two bands (or pools) can hold
// messages with the same id. A worker that keyed its in-flight tasks by id
// alone dropped the second message as "already being handled" (or lost its
// heartbeats), leaving it to wait for a reclaim after the lease.
func TestMessagesWithTheSameIDInTwoBandsBothRunAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run := b.submit(t,
		events.TaskSpec{ID: "low", Handler: "h", Priority: 0},
		events.TaskSpec{ID: "high", Handler: "h", Priority: 1},
	)
	// No worker yet: wait for both dispatches, then replace the relayed
	// messages by two that share one id, as two streams may.
	dispatched := 0
	b.waitFor(t, run, "0", func(e events.Event) bool {
		if e.Type == events.TaskDispatched {
			dispatched++
		}
		return dispatched == 2
	})
	for task, band := range map[string]int{"low": 0, "high": 1} {
		q := b.db.K.Queue(0, "default", band)
		for {
			// The relay may still be in flight: wait for the message, then
			// drop it (never delivered: no consumer has read it).
			res, err := b.c.XRead(b.ctx, &redis.XReadArgs{Streams: []string{q, "0"}, Block: waitTimeout}).Result()
			if err != nil {
				t.Fatalf("waiting for the dispatch of %s: %v", task, err)
			}
			if len(res[0].Messages) > 0 {
				break
			}
		}
		if err := b.c.XTrimMaxLen(b.ctx, q, 0).Err(); err != nil {
			t.Fatal(err)
		}
		if err := b.c.XAdd(b.ctx, &redis.XAddArgs{Stream: q, ID: "9999999999999-7",
			Values: []any{rdb.MsgRun, run, rdb.MsgTask, task, rdb.MsgAttempt, "1"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// A long lease: if either message were left pending, the run could only
	// end through a reclaim, far later than this test waits.
	cfg := b.config("w")
	cfg.Lease, cfg.Concurrency = time.Hour, 4
	b.start(t, cfg, map[string]worker.HandlerFunc{"h": func(context.Context, *worker.Task) (any, error) { return 1, nil }})
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	quick := b
	quick.ctx = ctx
	_, r := quick.waitEnd(t, run)
	if r.Status != projector.RunSucceeded {
		t.Fatalf("run %s, want succeeded", r.Status)
	}
}
