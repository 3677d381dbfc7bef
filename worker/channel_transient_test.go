package worker_test

import (
	"context"
	"encoding/json"
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

// refuseOnce is a go-redis hook that fails the first command of each
// name its match gives (and the first pipeline whose first command match
// names "xrevrange": Channel.Wait's first read) with the error a dial to
// a dead Redis master gives (a failover).
type refuseOnce struct {
	// match names what cmd is ("" for nothing to refuse); each name is
	// refused once.
	match func(cmd redis.Cmder) string

	mu   sync.Mutex
	done map[string]bool
}

// newRefuseOnce returns a hook refusing the first command of each name
// match gives.
func newRefuseOnce(match func(cmd redis.Cmder) string) *refuseOnce {
	return &refuseOnce{match: match, done: map[string]bool{}}
}

// channelReads names the channel HGETs, XREADs and XREVRANGEs (the
// first command of Channel.Wait's first pipeline).
func channelReads(cmd redis.Cmder) string {
	key, _ := cmd.Args()[min(1, len(cmd.Args())-1)].(string)
	if name := cmd.Name(); name == "hget" && strings.HasSuffix(key, ":channel") || name == "xread" || name == "xrevrange" {
		return name
	}
	return ""
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
		if len(cmds) > 0 && r.match(cmds[0]) == "xrevrange" && r.first("xrevrange") {
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
		if what := r.match(cmd); what != "" && r.first(what) {
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
	c.AddHook(newRefuseOnce(channelReads))
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

// spawnedRead names the EVALSHA that reads what task "a" spawned (one
// key, the run's state, and "a": the spawned-task read of a task whose
// only dependency is "a").
func spawnedRead(cmd redis.Cmder) string {
	if a := cmd.Args(); cmd.Name() == "evalsha" && len(a) == 5 && a[len(a)-1] == "a" {
		return "spawned"
	}
	return ""
}

// A refused connection while a task reads what its dependencies spawned
// (EachUpstream) is retried, not the
// task's error: before, it failed "total" for good (max_attempts 1).
func TestSpawnedReadRetriesARefusedConnection(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.config("w-refused-spawned")
	c := redistest.Client(t)
	hook := newRefuseOnce(spawnedRead)
	c.AddHook(hook)
	cfg.Redis = c
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"two": func(context.Context, *worker.Task) (any, error) { return 2, nil },
		"sum": func(ctx context.Context, task *worker.Task) (any, error) {
			n := 0
			return n, task.EachUpstream(ctx, func(_ string, r json.RawMessage) error {
				var v int
				err := json.Unmarshal(r, &v)
				n += v
				return err
			})
		},
	})
	run := b.submit(t,
		events.TaskSpec{ID: "a", Handler: "two"},
		events.TaskSpec{ID: "total", Handler: "sum", Deps: []string{"a"}})
	if end := b.waitFor(t, run, "0", ends); end.Type != events.RunSucceeded {
		t.Fatalf("run ended %s: %s", end.Type, end.Body)
	}
	if hook.first("spawned") {
		t.Fatal("the hook refused no spawned-task read: the test no longer tests the retry")
	}
}

// upstreamRead names the HMGET of results the claim did not carry (a
// dependency's result read by BindUpstream or EachUpstream: the @r:
// fields of the run's state hash).
func upstreamRead(cmd redis.Cmder) string {
	args := cmd.Args()
	key, _ := args[min(1, len(args)-1)].(string)
	field, _ := args[min(2, len(args)-1)].(string)
	if cmd.Name() == "hmget" && strings.HasSuffix(key, ":state") && strings.HasPrefix(field, "@r:") {
		return "upstream"
	}
	return ""
}

// A refused connection while a task reads a result its claim did not
// carry (a claim's byte budget of 1 byte: a's 5 are read later) is
// retried, not the task's error: before, it failed "total" for good
// (max_attempts 1).
func TestUpstreamReadRetriesARefusedConnection(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := worker.WithClaimUpstreamBytes(b.config("w-refused-upstream"), 1)
	c := redistest.Client(t)
	hook := newRefuseOnce(upstreamRead)
	c.AddHook(hook)
	cfg.Redis = c
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"big": func(context.Context, *worker.Task) (any, error) { return 22222, nil },
		"sum": func(ctx context.Context, task *worker.Task) (any, error) {
			var v int
			return v, task.BindUpstream("a", &v)
		},
	})
	run := b.submit(t,
		events.TaskSpec{ID: "a", Handler: "big"},
		events.TaskSpec{ID: "total", Handler: "sum", Deps: []string{"a"}})
	if end := b.waitFor(t, run, "0", ends); end.Type != events.RunSucceeded {
		t.Fatalf("run ended %s: %s", end.Type, end.Body)
	}
	if hook.first("upstream") {
		t.Fatal("the hook refused no upstream read: the test no longer tests the retry")
	}
}

// channelWrites names the channel write script's calls (the run's channel
// hash among its keys).
func channelWrites(cmd redis.Cmder) string {
	if name := cmd.Name(); name != "evalsha" && name != "eval" {
		return ""
	}
	for _, a := range cmd.Args() {
		if s, ok := a.(string); ok && strings.HasSuffix(s, ":channel") {
			return "write"
		}
	}
	return ""
}

// A refused connection while a task writes its run's channel (a master
// failing over) is retried, not the task's error: before, it failed the
// channel.incr task for good (max_attempts 1) and its run with it (seen in
// make test's "graflow chaos --cluster" seed 51: g0-156 failed).
func TestChannelWriteRetriesARefusedConnection(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.config("w-refused-write")
	c := redistest.Client(t)
	hook := newRefuseOnce(channelWrites)
	c.AddHook(hook)
	cfg.Redis = c
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"incr": func(ctx context.Context, task *worker.Task) (any, error) {
			return task.Channel().Incr(ctx, "n", 5)
		},
	})
	run := b.submit(t, events.TaskSpec{ID: "a", Handler: "incr"})
	if end := b.waitFor(t, run, "0", ends); end.Type != events.RunSucceeded {
		t.Fatalf("run ended %s: %s", end.Type, end.Body)
	}
	if hook.first("write") {
		t.Fatal("the hook refused no channel write: the test no longer tests the retry")
	}
	evs, err := b.db.ReadLogAfter(b.ctx, run, "", 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	writes := 0
	for _, e := range evs {
		if e.Type == events.ChannelWritten {
			writes++
		}
		if e.Type == events.TaskSucceeded && string(e.Body) != `{"result":5}` {
			t.Errorf("a's result: %s, want 5 (the increment applied once)", e.Body)
		}
	}
	if writes != 1 {
		t.Errorf("%d channel_written events, want 1", writes)
	}
}
