package worker

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// resetOnce fails, once, the first call (a command or a pipeline) that
// reads key without blocking (a connection reset: transient).
type resetOnce struct {
	key  string
	done atomic.Bool
}

func (r *resetOnce) hit(cmds []redis.Cmder) error {
	for _, cmd := range cmds {
		if s := fmt.Sprint(cmd.Args()); cmd.Name() == "xread" && !strings.Contains(s, " block ") &&
			strings.Contains(s, r.key) && r.done.CompareAndSwap(false, true) {
			err := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
			for _, c := range cmds {
				c.SetErr(err)
			}
			return err
		}
	}
	return nil
}

func (r *resetOnce) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *resetOnce) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if err := r.hit([]redis.Cmder{cmd}); err != nil {
			return err
		}
		return next(ctx, cmd)
	}
}
func (r *resetOnce) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if err := r.hit(cmds); err != nil {
			return err
		}
		return next(ctx, cmds)
	}
}

// A run whose log refuses reads fails its own signal waits, not those of
// the other runs of its partition, even when the reads that find it fail
// for a moment: they failed every wait of the partition (found by a
// review of 72d0aa8).
func TestABadLogWhoseProbeFailsForAMomentFailsItsOwnWaitsOnly(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	ctx := context.Background()
	db := rdb.New(c, redistest.Namespace(t))
	good, bad := "good-0", ""
	for i := 1; bad == ""; i++ {
		if r := fmt.Sprintf("bad-%d", i); db.K.Partition(r) == db.K.Partition(good) {
			bad = r
		}
	}
	last, err := c.XAdd(ctx, &redis.XAddArgs{Stream: db.K.RunLog(good), Values: []any{"id", "x"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, db.K.RunLog(bad), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	hooked := redis.NewClient(c.Options())
	hooked.AddHook(&resetOnce{key: db.K.RunLog(bad)})
	t.Cleanup(func() { _ = hooked.Close() })
	h := newSignalHub(rdb.New(hooked, db.K.Namespace()), "w1", 200*time.Millisecond, clockwork.NewRealClock(), zerolog.Nop())
	defer h.close()
	wg, err := h.register(context.Background(), good, "go", last)
	if err != nil {
		t.Fatal(err)
	}
	wb, err := h.register(context.Background(), bad, "go", "0-0")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-wb.got:
		if r.err == nil || !strings.Contains(r.err.Error(), "WRONGTYPE") {
			t.Errorf("the bad run's wait ended with %v, want WRONGTYPE", r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the bad run's wait never failed")
	}
	select { // its end came alone: a failure of all would have ended this one with it
	case r := <-wg.got:
		t.Errorf("the good run's wait ended: %v", r.err)
	default:
	}
}
