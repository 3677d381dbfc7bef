package graflow_test

import (
	"context"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
)

// refuseReads fails the first n log reads (XREAD, XRANGE, EXISTS) with
// the error a dial to a dead Redis master gives (a failover).
type refuseReads struct {
	mu sync.Mutex
	n  int
}

func (h *refuseReads) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *refuseReads) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		switch cmd.Name() {
		case "exists", "xread", "xrange":
			h.mu.Lock()
			refuse := h.n > 0
			h.n--
			h.mu.Unlock()
			if refuse {
				err := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
				cmd.SetErr(err)
				return err
			}
		}
		return next(ctx, cmd)
	}
}
func (h *refuseReads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A waiter whose Redis calls fail for a moment (a failover: TestCluster's
// waiters got "connection refused" right after the replica's promotion)
// waits on and returns the run's end, instead of the error.
func TestWaitRetriesARefusedConnection(t *testing.T) {
	t.Parallel()
	s := newSignalStack(t)
	rc := redistest.Client(t)
	rc.AddHook(&refuseReads{n: 3})
	c, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: s.ns})
	if err != nil {
		t.Fatal(err)
	}
	wf := graflow.NewWorkflow("refused")
	wf.Task("a", builtin.Echo).Args(map[string]any{"value": 1})
	run, err := s.client.Submit(s.ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	info, err := c.Wait(ctx, run)
	if err != nil || !info.Succeeded() {
		t.Fatalf("Wait = %+v, %v; want the run's success", info, err)
	}
}
