package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/worker"
	"github.com/redis/go-redis/v9"
)

// beatHook signals every pipeline that wrote a registry heartbeat (an
// HSET with "last_heartbeat"), after it ran.
type beatHook struct{ beats chan struct{} }

func (h beatHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h beatHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (h beatHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			if strings.EqualFold(c.Name(), "hset") && argsContain(c.Args(), "last_heartbeat") {
				select {
				case h.beats <- struct{}{}:
				default:
				}
				break
			}
		}
		return err
	}
}

func argsContain(args []any, s string) bool {
	for _, a := range args {
		if v, ok := a.(string); ok && v == s {
			return true
		}
	}
	return false
}

// waitBeats waits for n heartbeats of the registry.
func waitBeats(t *testing.T, beats <-chan struct{}, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-beats:
		case <-time.After(waitTimeout):
			t.Fatalf("no registry heartbeat within %s", waitTimeout)
		}
	}
}

// After Redis loses the registry (a failover to a replica that missed the
// writes, a restore), the next heartbeat writes the whole record back:
// host, pid, pools, concurrency and handlers, not only the counters.
func TestHeartbeatRewritesTheWholeRegistryRecord(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := beatHook{beats: make(chan struct{}, 16)}
	cfg := b.config("w-reg")
	cfg.Redis, cfg.HeartbeatInterval, cfg.Pools, cfg.Concurrency = b.clientWith(t, h), 20*time.Millisecond, []string{"default", "other"}, 3
	b.start(t, cfg, map[string]worker.HandlerFunc{"h": func(context.Context, *worker.Task) (any, error) { return nil, nil }})
	waitBeats(t, h.beats, 1)
	want, err := b.c.HGetAll(b.ctx, b.db.K.Worker("w-reg")).Result()
	if err != nil {
		t.Fatal(err)
	}
	// The simulated data loss.
	if err := b.c.Del(b.ctx, b.db.K.Worker("w-reg"), b.db.K.Workers()).Err(); err != nil {
		t.Fatal(err)
	}
	// Beats signalled before this point (the channel holds 16) ran before
	// the loss; of those signalled after it, the first may have run before
	// the loss too (it signals after its round trip); the second began after.
	for drained := false; !drained; {
		select {
		case <-h.beats:
		default:
			drained = true
		}
	}
	waitBeats(t, h.beats, 2)
	got, err := b.c.HGetAll(b.ctx, b.db.K.Worker("w-reg")).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"id", "host", "pid", "pools", "concurrency", "handlers", "started_at", "lease_ms"} {
		if got[f] == "" || got[f] != want[f] {
			t.Errorf("after the loss, field %s = %q, want %q", f, got[f], want[f])
		}
	}
	if ok, err := b.c.SIsMember(b.ctx, b.db.K.Workers(), "w-reg").Result(); err != nil || !ok {
		t.Errorf("worker not back in the registry set (err %v)", err)
	}
	if ttl := b.c.PTTL(b.ctx, b.db.K.Worker("w-reg")).Val(); ttl <= 0 {
		t.Errorf("registry hash TTL = %s, want one", ttl)
	}
}
