package worker_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/worker"
	"github.com/redis/go-redis/v9"
)

// eventually polls cond until it holds, failing the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// Worker restarts under new ids do not grow the consumer groups of the
// queue streams without bound: the consumers of dead workers (nothing
// pending, idle for several leases, not registered) are deleted.
func TestDeadWorkersConsumersArePruned(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := map[string]worker.HandlerFunc{"h": func(context.Context, *worker.Task) (any, error) { return nil, nil }}
	lease := 200 * time.Millisecond
	// consumers lists the consumers of every band of the default pool.
	consumers := func() []string {
		var names []string
		for _, stream := range b.db.K.AllQueues("default") {
			cs, err := b.c.XInfoConsumers(b.ctx, stream, "workers").Result()
			if err != nil && !strings.Contains(err.Error(), "no such key") {
				t.Fatal(err)
			}
			for _, c := range cs {
				names = append(names, c.Name)
			}
		}
		return names
	}
	for i := 0; i < 20; i++ {
		cfg := b.config(fmt.Sprintf("restart-%02d", i))
		cfg.Lease = lease
		r := b.start(t, cfg, h)
		// A consumer appears once it is delivered a message.
		run := b.submit(t, events.TaskSpec{ID: "t", Handler: "h"})
		b.waitFor(t, run, "0", func(e events.Event) bool { return e.Type == events.RunSucceeded })
		r.wait(t)
	}
	if n := len(consumers()); n < 2 {
		t.Fatalf("%d consumers after 20 restarts: the test does not create them", n)
	}
	cfg := b.config("live")
	cfg.Lease = lease
	b.start(t, cfg, h)
	run := b.submit(t, events.TaskSpec{ID: "t", Handler: "h"})
	b.waitFor(t, run, "0", func(e events.Event) bool { return e.Type == events.RunSucceeded })
	eventually(t, waitTimeout, "the dead workers' consumers to be deleted", func() bool {
		cs := consumers()
		return len(cs) == 1 && cs[0] == "live"
	})
}

// countHook counts the commands a client sends, by name.
type countHook struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *countHook) add(c redis.Cmder) {
	name := strings.ToLower(c.Name())
	if a := c.Args(); (name == "evalsha" || name == "eval") && len(a) > 4 && strings.HasSuffix(fmt.Sprint(a[4]), ":wants-repair") {
		name = "reclaim" // the reclaim script: XAUTOCLAIM of one band
	}
	h.mu.Lock()
	h.n[name]++
	h.mu.Unlock()
}

func (h *countHook) get(name string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[name]
}

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, c redis.Cmder) error { h.add(c); return next(ctx, c) }
}
func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			h.add(c)
		}
		return next(ctx, cmds)
	}
}

// Pruning the registry costs a few commands per interval, not one per
// registered worker: W live workers registered, and dead ones still pruned.
func TestRegistryPruningDoesNotScaleWithWorkers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const live, dead = 300, 5
	pipe := b.c.Pipeline()
	for i := 0; i < live; i++ {
		id := fmt.Sprintf("other-%03d", i)
		pipe.SAdd(b.ctx, b.db.K.Workers(), id)
		pipe.HSet(b.ctx, b.db.K.Worker(id), "id", id)
		pipe.PExpire(b.ctx, b.db.K.Worker(id), time.Hour)
	}
	for i := 0; i < dead; i++ {
		pipe.SAdd(b.ctx, b.db.K.Workers(), fmt.Sprintf("dead-%d", i))
	}
	if _, err := pipe.Exec(b.ctx); err != nil {
		t.Fatal(err)
	}
	hook := &countHook{n: map[string]int{}}
	cfg := b.config("counted")
	cfg.Redis, cfg.ReclaimInterval = b.clientWith(t, hook), 20*time.Millisecond
	b.start(t, cfg, map[string]worker.HandlerFunc{"h": func(context.Context, *worker.Task) (any, error) { return nil, nil }})
	// Ten reclaim passes (one reclaim script call per band, ten bands).
	eventually(t, waitTimeout, "ten reclaim passes", func() bool { return hook.get("reclaim") >= 100 })
	passes := hook.get("reclaim") / 10
	checks := hook.get("exists") + hook.get("pttl") + hook.get("sismember")
	if per := checks / passes; per > 20 {
		t.Errorf("%d registry checks in %d reclaim passes (%d per pass) with %d registered workers; want a few per pass, not one per worker", checks, passes, per, live)
	}
	eventually(t, waitTimeout, "the dead workers pruned", func() bool {
		return b.c.SCard(b.ctx, b.db.K.Workers()).Val() == live+1
	})
}
