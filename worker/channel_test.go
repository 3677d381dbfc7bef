package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker"
	"github.com/redis/go-redis/v9"
)

// xreads is a go-redis hook that reports each XREAD (the channel's
// blocking wait; a worker fetches with XREADGROUP) before it is sent.
type xreads chan struct{}

func (x xreads) DialHook(next redis.DialHook) redis.DialHook { return next }
func (x xreads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (x xreads) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "xread" {
			select {
			case x <- struct{}{}:
			default:
			}
		}
		return next(ctx, cmd)
	}
}

type config struct {
	Mode    string `json:"mode"`
	Workers int    `json:"workers"`
}

// Two parallel tasks of a run talk through its channel: "waiter" blocks
// in Channel.Wait (its XREAD on the run's log is under way before the
// writer starts writing) and returns what "writer" Set, decoded by
// ChannelWait[T]; "reader", after both, reads every key with
// ChannelGet[T] and Keys. Each write is a channel_written of the writer's
// claim, and the history verifies.
func TestChannelWaitReturnsAnotherTasksWrite(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.config("w-chan")
	c := redis.NewClient(b.c.Options())
	t.Cleanup(func() { _ = c.Close() })
	waiting := make(xreads, 1)
	c.AddHook(waiting)
	cfg.Redis = c
	type read struct {
		Config config
		Count  int64
		Seen   []string
		Keys   []string
	}
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"write": func(ctx context.Context, task *worker.Task) (any, error) {
			select { // the waiter is blocked on the log
			case <-waiting:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			ch := task.Channel()
			if _, err := ch.Incr(ctx, "count", 2); err != nil {
				return nil, err
			}
			if err := ch.Append(ctx, "seen", task.ID); err != nil {
				return nil, err
			}
			return nil, ch.Set(ctx, "config", config{Mode: "fast", Workers: 3})
		},
		"wait": func(ctx context.Context, task *worker.Task) (any, error) {
			v, err := worker.ChannelWait[config](ctx, task.Channel(), "config")
			if err != nil {
				return nil, err
			}
			if n, err := task.Channel().Incr(ctx, "count", 1); err != nil || n != 3 {
				return nil, errors.Join(err, errors.New("count is not 3 after the writer's 2"))
			}
			return v, task.Channel().Append(ctx, "seen", task.ID)
		},
		"read": func(ctx context.Context, task *worker.Task) (any, error) {
			var r read
			var err error
			ch := task.Channel()
			if r.Config, _, err = worker.ChannelGet[config](ctx, ch, "config"); err != nil {
				return nil, err
			}
			if r.Count, _, err = worker.ChannelGet[int64](ctx, ch, "count"); err != nil {
				return nil, err
			}
			if r.Seen, _, err = worker.ChannelGet[[]string](ctx, ch, "seen"); err != nil {
				return nil, err
			}
			if _, ok, err := worker.ChannelGet[string](ctx, ch, "nothing"); ok || err != nil {
				return nil, errors.Join(err, errors.New("a key never written has a value"))
			}
			r.Keys, err = ch.Keys(ctx)
			return r, err
		},
	})
	run := b.submit(t,
		events.TaskSpec{ID: "waiter", Handler: "wait", TimeoutMS: 20000},
		events.TaskSpec{ID: "writer", Handler: "write", TimeoutMS: 20000},
		events.TaskSpec{ID: "reader", Handler: "read", Deps: []string{"waiter", "writer"}})
	end := b.waitFor(t, run, "0", func(e events.Event) bool {
		return e.Type == events.RunSucceeded || e.Type == events.RunFailed
	})
	evs, err := b.db.ReadLogAfter(b.ctx, run, "", 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	if end.Type != events.RunSucceeded {
		t.Fatalf("run ended %s: %s", end.Type, end.Body)
	}
	a, err := replay.Analyze(run, evs)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Problems) > 0 {
		t.Fatalf("history problems: %v", a.Problems)
	}
	var waited config
	if err := json.Unmarshal(a.Run.Task("waiter").Result, &waited); err != nil || waited != (config{Mode: "fast", Workers: 3}) {
		t.Fatalf("waiter returned %s (%v), want the writer's config", a.Run.Task("waiter").Result, err)
	}
	var got read
	if err := json.Unmarshal(a.Run.Task("reader").Result, &got); err != nil {
		t.Fatal(err)
	}
	want := read{Config: config{Mode: "fast", Workers: 3}, Count: 3, Seen: []string{"writer", "waiter"},
		Keys: []string{"config", "count", "seen"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reader read (-want +got):\n%s", diff)
	}

	claims := map[string]events.Event{}
	writes := map[string]int{}
	for _, e := range evs {
		switch e.Type {
		case events.TaskClaimed:
			claims[e.Task] = e
		case events.ChannelWritten:
			cl := claims[e.Task]
			if e.Worker != "w-chan" || e.Attempt != cl.Attempt || e.Epoch != cl.Epoch {
				t.Errorf("channel_written of %s by %s a%d e%d; its claim is %s a%d e%d", e.Task, e.Worker, e.Attempt, e.Epoch,
					cl.Worker, cl.Attempt, cl.Epoch)
			}
			writes[e.Task]++
		}
	}
	if diff := cmp.Diff(map[string]int{"writer": 3, "waiter": 2}, writes); diff != "" {
		t.Errorf("channel_written per task (-want +got):\n%s", diff)
	}
	if n := a.Timeline.Tasks[1].Attempts[0].ChannelWrites; n != 3 {
		t.Errorf("timeline: writer's attempt made %d channel writes, want 3", n)
	}
}

// A handler whose run was cancelled cannot write: the write returns an
// error wrapping ErrStaleClaim and ErrRunCancelled, and the log records a
// result_rejected (what "channel"), no channel_written.
func TestChannelWriteAfterTheRunIsCancelledIsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	errs := make(chan error, 1)
	b.start(t, b.config("w-cancel"), map[string]worker.HandlerFunc{
		"cancel-then-write": func(ctx context.Context, task *worker.Task) (any, error) {
			if err := task.CancelRun("stop"); err != nil {
				return nil, err
			}
			err := task.Channel().Set(context.WithoutCancel(ctx), "k", 1)
			errs <- err
			return nil, err
		},
	})
	run := b.submit(t, events.TaskSpec{ID: "a", Handler: "cancel-then-write"})
	var err error
	select {
	case err = <-errs:
	case <-time.After(waitTimeout):
		t.Fatal("the handler did not write")
	}
	if !errors.Is(err, worker.ErrStaleClaim) || !errors.Is(err, worker.ErrRunCancelled) {
		t.Fatalf("write after the cancel = %v, want ErrStaleClaim and ErrRunCancelled", err)
	}
	rej := b.waitFor(t, run, "0", func(e events.Event) bool { return e.Type == events.ResultRejected })
	var body events.ResultRejectedBody
	if err := rej.DecodeBody(&body); err != nil || body.What != "channel" || rej.Task != "a" || rej.Worker != "w-cancel" {
		t.Errorf("result_rejected %s by %s: %+v (%v)", rej.Task, rej.Worker, body, err)
	}
	evs, err := b.db.ReadLogAfter(b.ctx, run, "", 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.Type == events.ChannelWritten {
			t.Errorf("a refused write left %s", e.Body)
		}
	}
	if h, err := b.db.Channel(b.ctx, run); err != nil || len(h) != 0 {
		t.Errorf("channel after a refused write: %v, %v", h, err)
	}
}

// A Task the worker did not claim (a handler called by hand in a unit
// test) has no channel: every method returns an error.
func TestChannelOfAHandBuiltTaskFails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ch := (&worker.Task{ID: "x"}).Channel()
	if err := ch.Set(ctx, "k", 1); err == nil || !strings.Contains(err.Error(), "did not claim") {
		t.Errorf("Set = %v", err)
	}
	if _, err := ch.Incr(ctx, "k", 1); err == nil {
		t.Error("Incr: no error")
	}
	if _, err := worker.ChannelWait[int](ctx, ch, "k"); err == nil {
		t.Error("ChannelWait: no error")
	}
	if _, _, err := worker.ChannelGet[int](ctx, ch, "k"); err == nil {
		t.Error("ChannelGet: no error")
	}
}
