package graflow_test

import (
	"context"
	"errors"
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
func refuseReads(n int) faultHook {
	var mu sync.Mutex
	return faultHook{fail: func(cmd redis.Cmder) error {
		switch cmd.Name() {
		case "exists", "xread", "xrange":
			mu.Lock()
			defer mu.Unlock()
			if n--; n >= 0 {
				return &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
			}
		}
		return nil
	}}
}

// A waiter whose Redis calls fail for a moment (a failover: TestCluster's
// waiters got "connection refused" right after the replica's promotion)
// waits on and returns the run's end, instead of the error.
func TestWaitRetriesARefusedConnection(t *testing.T) {
	t.Parallel()
	s := newSignalStack(t)
	rc := redistest.Client(t)
	rc.AddHook(refuseReads(3))
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

// countCmds counts the commands a client sends, by name, but for a new
// connection's handshake (HELLO, CLIENT SETINFO).
type countCmds struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *countCmds) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countCmds) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		if n := cmd.Name(); n != "hello" && n != "client" {
			h.n[n]++
		}
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}
func (h *countCmds) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.mu.Lock()
		for _, c := range cmds {
			if n := c.Name(); n != "hello" && n != "client" {
				h.n[n]++
			}
		}
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

// Wait reads a run's log once: on a run that has ended, one XRANGE is
// the whole wait (it was EXISTS, XREAD and an XRANGE of the log again
// for the fold), and the RunInfo is the fold of what it read.
func TestWaitOnAnEndedRunIsOneRead(t *testing.T) {
	t.Parallel()
	s := newSignalStack(t)
	wf := graflow.NewWorkflow("once")
	wf.Task("a", builtin.Echo).Args(map[string]any{"value": 7})
	run, err := s.client.Submit(s.ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	if _, err := s.client.Wait(ctx, run); err != nil {
		t.Fatal(err)
	}
	rc := redistest.Client(t)
	h := &countCmds{n: map[string]int{}}
	rc.AddHook(h)
	c, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: s.ns})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Wait(ctx, run)
	if err != nil || !info.Succeeded() || len(info.Tasks) != 1 || string(info.Tasks[0].Result) != "7" {
		t.Fatalf("Wait = %+v, %v; want the run's success with a = 7", info, err)
	}
	h.mu.Lock()
	if len(h.n) != 1 || h.n["xrange"] != 1 {
		t.Errorf("Wait on an ended run sent %v, want one xrange", h.n)
	}
	h.mu.Unlock()
	if _, err := c.Wait(ctx, "no-such-run"); !errors.Is(err, graflow.ErrRunNotFound) {
		t.Errorf("Wait(no-such-run) = %v, want ErrRunNotFound", err)
	}
}
