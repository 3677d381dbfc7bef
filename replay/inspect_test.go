package replay_test

import (
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
)

func TestInspect(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start([]string{"wa", "wb"}, nil, nil)
	ctx := ctxT(t)

	// Follow a run from before it exists until it ends.
	type followed struct {
		evs []events.Event
		err error
	}
	done := make(chan followed, 1)
	go func() {
		var f followed
		f.err = e.rc.Follow(ctx, "followed-run", graflow.FollowOptions{UntilEnd: true}, func(ev events.Event) error {
			f.evs = append(f.evs, ev)
			return nil
		})
		done <- f
	}()
	ok, _ := e.runToEnd(ctx, sequence(), graflow.WithRunID("followed-run"))
	failing := graflow.NewWorkflow("failing")
	failing.Task("boom", builtin.Fail).Args(map[string]any{"permanent": true})
	bad, _ := e.runToEnd(ctx, failing)

	t.Run("follow delivers the log in order and resumes from a seq", func(t *testing.T) {
		f := <-done
		if f.err != nil {
			t.Fatal(f.err)
		}
		log, err := e.rc.Log(ctx, ok)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(log, f.evs); diff != "" {
			t.Fatalf("followed events (-log +followed):\n%s", diff)
		}
		rest, err := e.rc.Events(ctx, ok, log[2].Seq, 0)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(log[3:], rest); diff != "" {
			t.Fatalf("events after %s (-want +got):\n%s", log[2].Seq, diff)
		}
		two, err := e.rc.Events(ctx, ok, "", 2)
		if err != nil || len(two) != 2 || two[0].Type != events.RunSubmitted {
			t.Fatalf("first two events: %v %v", two, err)
		}
	})

	t.Run("runs lists the index newest first with live status", func(t *testing.T) {
		all, err := e.rc.Runs(ctx, graflow.RunsOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range all {
			ids = append(ids, r.ID+":"+r.Status+":"+r.Workflow)
		}
		want := []string{bad + ":failed:failing", ok + ":succeeded:sequence"}
		if diff := cmp.Diff(want, ids); diff != "" {
			t.Fatalf("runs (-want +got):\n%s", diff)
		}
		failed, err := e.rc.Runs(ctx, graflow.RunsOptions{Status: "failed"})
		if err != nil || len(failed) != 1 || failed[0].ID != bad {
			t.Fatalf("failed runs: %+v %v", failed, err)
		}
		one, err := e.rc.Runs(ctx, graflow.RunsOptions{Limit: 1})
		if err != nil || len(one) != 1 || one[0].ID != bad || one[0].SubmittedAt.IsZero() {
			t.Fatalf("limit 1: %+v %v", one, err)
		}
	})

	t.Run("workers lists the registry", func(t *testing.T) {
		ws, err := e.rc.Workers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(ws) != 2 || ws[0].ID != "wa" || ws[1].ID != "wb" {
			t.Fatalf("workers = %+v", ws)
		}
		for _, w := range ws {
			if w.Expired || !slices.Equal(w.Pools, []string{"default"}) || w.Concurrency != 4 || w.LastHeartbeat.IsZero() ||
				w.StartedAt.IsZero() || !slices.Contains(w.Handlers, builtin.Sum) {
				t.Fatalf("worker = %+v", w)
			}
		}
		// Counters are refreshed with each heartbeat; not asserted here.
	})

	t.Run("queues shows backlog per pool and band", func(t *testing.T) {
		stuck := graflow.NewWorkflow("stuck")
		stuck.Task("waits", builtin.Noop).Pool("nobody").Priority(7)
		run, err := e.client.Submit(ctx, stuck, nil)
		if err != nil {
			t.Fatal(err)
		}
		e.waitFor(ctx, run, "dispatch", func(evs []events.Event) bool { return has(evs, events.TaskDispatched, "waits") })
		// The commit queues the dispatch: block on the queue stream until the message is there.
		if err := e.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{rdb.NewKeys(e.ns).Queue(0, "nobody", 7), "0"}, Block: 10 * time.Second}).Err(); err != nil {
			t.Fatal(err)
		}
		qs, err := e.rc.Queues(ctx, graflow.QueuesOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(qs) != 1 || qs[0].Pool != "nobody" || qs[0].Priority != 7 || qs[0].Length != 1 || qs[0].Lag != 1 || qs[0].Pending != 0 {
			t.Fatalf("queues = %+v", qs)
		}
		all, err := e.rc.Queues(ctx, graflow.QueuesOptions{Empty: true})
		if err != nil {
			t.Fatal(err)
		}
		pools := map[string]int{}
		for _, q := range all {
			pools[q.Pool]++
		}
		if pools["default"] != 10 || pools["nobody"] != 1 {
			t.Fatalf("bands per pool = %v", pools)
		}
	})
}
