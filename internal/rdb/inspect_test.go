package rdb_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/redis/go-redis/v9"
)

func TestRunPageKeepsTheRowsAroundAnUnreadableState(t *testing.T) {
	t.Parallel()
	rc := redistest.Client(t)
	d := rdb.New(rc, redistest.Namespace(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, run := range []string{"r1", "r2", "r3"} {
		rc.ZAdd(ctx, d.K.Runs(), redis.Z{Score: float64(i + 1), Member: run})
	}
	rc.HSet(ctx, d.K.RunState("r1"), rdb.FieldRunStatus, "succeeded", rdb.FieldRunWorkflow, "w")
	rc.Set(ctx, d.K.RunState("r2"), "not a hash", 0)
	rc.HSet(ctx, d.K.RunState("r3"), rdb.FieldRunStatus, "running", rdb.FieldRunWorkflow, "w")

	rows, err := d.RunPage(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 {
		t.Fatalf("got %d rows, want 3: %+v", len(rows), rows)
	}
	// Newest first.
	if r := rows[0]; r.ID != "r3" || r.Status != "running" || r.Err != nil {
		t.Errorf("row 0 = %+v, want r3 running", r)
	}
	if r := rows[1]; r.ID != "r2" || r.Err == nil || r.Status != "" {
		t.Errorf("row 1 = %+v, want r2 with an error", r)
	}
	if r := rows[2]; r.ID != "r1" || r.Status != "succeeded" || r.SubmittedMS != 1 || r.Err != nil {
		t.Errorf("row 2 = %+v, want r1 succeeded submitted at 1", r)
	}
}

// scanCounter counts the SCAN commands a client sends.
type scanCounter struct{ n atomic.Int64 }

func (s *scanCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (s *scanCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "scan" {
			s.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (s *scanCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// QueuePools walked the whole keyspace once per partition and band (a
// SCAN's MATCH filters what a walk returns, not what it visits): 30 walks
// for 3 partitions, seconds on a Redis of a few hundred thousand keys,
// past a metrics scrape's read budget (a flaky metrics test showed it on
// a test Redis full of keys). One walk now.
func TestQueuePoolsWalksTheKeyspaceOnce(t *testing.T) {
	t.Parallel()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	d := rdb.NewP(rc, ns, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, q := range []string{d.K.Queue(0, "a", 0), d.K.Queue(2, "b", 7), d.K.Queue(1, "a", 3)} {
		if err := rc.XAdd(ctx, &redis.XAddArgs{Stream: q, Values: []any{"r", "x"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	pipe := rc.Pipeline()
	for i := range 3000 { // a keyspace a walk takes several calls over
		pipe.Set(ctx, fmt.Sprintf("%s:filler:%d", ns, i), "x", time.Minute)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	// One walk, as QueuePools makes it: how many calls it takes.
	walk := 0
	for cursor := uint64(0); ; {
		_, next, err := rc.ScanType(ctx, cursor, d.K.QueuesPattern(), 1000, "stream").Result()
		if err != nil {
			t.Fatal(err)
		}
		walk++
		if cursor = next; cursor == 0 {
			break
		}
	}
	c := redistest.Client(t)
	var scans scanCounter
	c.AddHook(&scans)
	pools, err := rdb.NewP(c, ns, 3).QueuePools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 2 || !pools["a"] || !pools["b"] {
		t.Errorf("pools = %v, want a and b", pools)
	}
	// Other tests share this Redis: allow the keyspace to grow between
	// the two walks, not a walk per band.
	if n := scans.n.Load(); n > int64(2*walk+2) {
		t.Errorf("QueuePools sent %d SCANs; one walk of this keyspace takes %d", n, walk)
	}
}
