package worker_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/testlog"
	"github.com/graflow-go/graflow/worker"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// handBackGate makes the first blocking XREADGROUP wait for open and then
// return nothing (so the next read is the fetch script's), and holds every
// pipeline that runs the heartbeat script until beat is closed.
type handBackGate struct {
	open, beat chan struct{}
	once       sync.Once
	heartbeat  string
}

func (h *handBackGate) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *handBackGate) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		a := cmd.Args()
		if len(a) > 0 && fmt.Sprint(a[0]) == "xreadgroup" && slices.ContainsFunc(a, func(v any) bool { return fmt.Sprint(v) == "block" }) {
			skip := false
			h.once.Do(func() {
				skip = true
				select {
				case <-h.open:
				case <-ctx.Done():
				}
			})
			if skip {
				cmd.SetErr(redis.Nil)
				return redis.Nil
			}
		}
		return next(ctx, cmd)
	}
}
func (h *handBackGate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if a := c.Args(); len(a) > 1 && a[1] == h.heartbeat {
				select {
				case <-h.beat:
				case <-ctx.Done():
				}
				break
			}
		}
		return next(ctx, cmds)
	}
}

// A worker holds a claim (epoch 1) whose task is handed back meanwhile (a
// repair that took the worker for dead: epoch 2) and re-dispatched; the
// worker's fetch reads the copy and claims it afresh (epoch 3). That copy
// carries the live claim: it must not be acked as a redundant copy of the
// attempt in hand (the stale attempt's outcome is refused, and the task
// would be left running with no message). It stays pending, and runs
// under the fetch's claim as soon as the stale attempt is over (it waited
// for its reclaim, a lease later).
func TestAFetchClaimedCopyOfAHandedBackAttemptIsKept(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run, q := b.dispatchedTask(t)
	gate := &handBackGate{open: make(chan struct{}), beat: make(chan struct{}), heartbeat: rdb.Scripts()["heartbeat"].Hash()}
	wc := b.clientWith(t, gate)
	newer := testlog.NewLineSignal("a newer claim of an attempt in hand")
	lg := zerolog.New(newer).Level(zerolog.InfoLevel)
	cfg := b.config("W")
	cfg.Logger, cfg.Redis, cfg.Concurrency = &lg, wc, 2
	cfg.Lease, cfg.ReclaimInterval = time.Second, 100*time.Millisecond
	started := make(chan int64, 2)
	var ran atomic.Int64
	r := b.start(t, cfg, map[string]worker.HandlerFunc{
		"h": func(ctx context.Context, tk *worker.Task) (any, error) {
			n := ran.Add(1)
			started <- tk.Epoch
			if n == 1 {
				<-ctx.Done() // until the lost lease cancels it
				return nil, ctx.Err()
			}
			return "ok", nil
		},
	})
	select {
	case e := <-started:
		if e != 1 {
			t.Fatalf("first attempt at epoch %d, want 1", e)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the handler did not start")
	}
	now := time.Now()
	if err := b.db.Release(b.ctx, run, "t", "W", 1, 1, ulid.Make().String(), now.UnixMilli()); err != nil {
		t.Fatal(err)
	}
	b.queueCopy(t, run)
	close(gate.open)
	select {
	case <-newer.Seen:
	case <-time.After(waitTimeout):
		t.Fatal("the fetch-claimed copy was not kept pending")
	}
	close(gate.beat)
	b.waitFor(t, run, "0", func(e events.Event) bool { return e.Type == events.RunSucceeded })
	select {
	case e := <-started:
		if e != 3 {
			// claim 1, hand-back 2, the fetch's claim 3 (a reclaim would
			// have made it 5: its task_reclaimed 4 and task_claimed 5)
			t.Errorf("second attempt at epoch %d, want 3", e)
		}
	default:
		t.Error("the task did not run a second time")
	}
	r.wait(t)
	p, err := b.c.XPending(b.ctx, q, rdb.GroupWorkers).Result()
	if err != nil {
		t.Fatal(err)
	}
	if p.Count != 0 {
		t.Errorf("%d messages still pending after the run ended", p.Count)
	}
}
