package worker_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/worker"
	"github.com/redis/go-redis/v9"
)

// refuseOnce is a go-redis hook that fails, once each, the first HGET of
// a run's channel, the first pipeline that starts with XREVRANGE (the
// first read of Channel.Wait) and the first XREAD (its blocking read),
// with the error a dial to a dead Redis master gives (a failover).
type refuseOnce struct {
	mu   sync.Mutex
	done map[string]bool
}

func (r *refuseOnce) first(what string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done[what] {
		return false
	}
	r.done[what] = true
	return true
}

var errRefused = &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}

func (r *refuseOnce) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *refuseOnce) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() == "xrevrange" && r.first("xrevrange") {
			for _, c := range cmds {
				c.SetErr(errRefused)
			}
			return errRefused
		}
		return next(ctx, cmds)
	}
}
func (r *refuseOnce) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		name := cmd.Name()
		key, _ := cmd.Args()[min(1, len(cmd.Args())-1)].(string)
		if (name == "hget" && strings.HasSuffix(key, ":channel") || name == "xread") && r.first(name) {
			cmd.SetErr(errRefused)
			return errRefused
		}
		return next(ctx, cmd)
	}
}

// A Redis that refuses connections for a moment (a master failing over)
// does not fail a task that reads or waits on its run's channel: the
// reads are retried. "waiter" waits for a key "writer" sets after the
// wait blocked; "reader" reads it and lists the keys. Before the retry a
// single refused read failed the task for good and the run with it (seen
// in "graflow chaos --cluster": channel.wait during a failover).
func TestChannelReadsRetryARefusedConnection(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.config("w-refused")
	c := redistest.Client(t)
	c.AddHook(&refuseOnce{done: map[string]bool{}})
	waiting := make(xreads, 1)
	c.AddHook(waiting)
	cfg.Redis = c
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"write": func(ctx context.Context, task *worker.Task) (any, error) {
			if err := waiting.next(ctx); err != nil { // the waiter is blocked on the log
				return nil, err
			}
			return nil, task.Channel().Set(ctx, "k", "v")
		},
		"wait": func(ctx context.Context, task *worker.Task) (any, error) {
			return worker.ChannelWait[string](ctx, task.Channel(), "k")
		},
		"read": func(ctx context.Context, task *worker.Task) (any, error) {
			v, _, err := worker.ChannelGet[string](ctx, task.Channel(), "k")
			if err != nil {
				return nil, err
			}
			keys, err := task.Channel().Keys(ctx)
			return []any{v, keys}, err
		},
	})
	run := b.submit(t,
		events.TaskSpec{ID: "waiter", Handler: "wait", TimeoutMS: 20000},
		events.TaskSpec{ID: "writer", Handler: "write", TimeoutMS: 20000},
		events.TaskSpec{ID: "reader", Handler: "read", Deps: []string{"waiter", "writer"}})
	if end := b.waitFor(t, run, "0", ends); end.Type != events.RunSucceeded {
		t.Fatalf("run ended %s: %s", end.Type, end.Body)
	}
	evs, err := b.db.ReadLogAfter(b.ctx, run, "", 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.Type == events.TaskSucceeded && e.Task == "reader" {
			if got := string(e.Body); !strings.Contains(got, `["v",["k"]]`) {
				t.Errorf("reader's result: %s, want [\"v\",[\"k\"]]", got)
			}
		}
	}
}

// next waits for the next XREAD x reports, or ctx's end.
func (x xreads) next(ctx context.Context) error {
	select {
	case <-x:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ends reports whether e ends a run (succeeded or failed).
func ends(e events.Event) bool { return e.Type == events.RunSucceeded || e.Type == events.RunFailed }
