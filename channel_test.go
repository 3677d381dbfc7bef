package graflow_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
)

// channelWorkflow has six parallel tasks that increment "count" (by 1..6)
// and append their number to "ids", a "ready" signal set after them, and
// a waiter, with no dependency, that blocks until "ready" has a value.
func channelWorkflow() *graflow.Workflow {
	wf := graflow.NewWorkflow("channels")
	var adders []*graflow.Task
	for i := range 6 {
		id := string(rune('a' + i))
		adders = append(adders,
			wf.Task("incr-"+id, builtin.ChannelIncr).Args(map[string]any{"key": "count", "by": i + 1}),
			wf.Task("append-"+id, builtin.ChannelAppend).Args(map[string]any{"key": "ids", "value": i}))
	}
	wf.Task("signal", builtin.ChannelSet).Args(map[string]any{"key": "ready", "value": map[string]bool{"go": true}}).After(adders...)
	wf.Task("waiter", builtin.ChannelWait).Args(map[string]any{"key": "ready"}).Timeout(20 * time.Second)
	return wf
}

// Tasks on two workers write the run's channel concurrently (atomic incr
// and append) and one waits for a key another sets; the client reads the
// values after the run; export carries them to another namespace; the
// history verifies.
func TestChannelIsSharedByTheRunsTasksAndOutlivesTheRun(t *testing.T) {
	t.Parallel()
	b := setup(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run, info := b.submitAndWait(ctx, t, channelWorkflow())
	if !info.Succeeded() {
		t.Fatalf("run %s: %+v", info.Status, info)
	}
	if got := string(info.Task("waiter").Result); got != `{"go":true}` {
		t.Errorf("waiter returned %s, want the signal's value", got)
	}

	ch, err := b.client.Channel(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(ch["count"]); got != "21" {
		t.Errorf("count = %s, want 21 (1+...+6)", got)
	}
	var ids []int
	if err := json.Unmarshal(ch["ids"], &ids); err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	if diff := cmp.Diff([]int{0, 1, 2, 3, 4, 5}, ids); diff != "" {
		t.Errorf("ids (-want +got):\n%s", diff)
	}
	if v, ok, err := b.client.ChannelGet(ctx, run, "ready"); err != nil || !ok || string(v) != `{"go":true}` {
		t.Errorf("ChannelGet ready = %s, %v, %v", v, ok, err)
	}
	if _, ok, err := b.client.ChannelGet(ctx, run, "nothing"); ok || err != nil {
		t.Errorf("ChannelGet of a key never written = %v, %v", ok, err)
	}
	if _, err := b.client.Channel(ctx, "no-such-run"); !errors.Is(err, graflow.ErrRunNotFound) {
		t.Errorf("Channel of a missing run = %v, want ErrRunNotFound", err)
	}
	if _, _, err := b.client.ChannelGet(ctx, "no-such-run", "k"); !errors.Is(err, graflow.ErrRunNotFound) {
		t.Errorf("ChannelGet of a missing run = %v, want ErrRunNotFound", err)
	}

	rep, err := b.client.Verify(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("verify: %v", rep.Err())
	}
	tl, err := b.client.Timeline(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	writes := 0
	for _, task := range tl.Tasks {
		for _, at := range task.Attempts {
			writes += at.ChannelWrites
		}
	}
	if writes != 13 {
		t.Errorf("the timeline counts %d channel writes, want 13", writes)
	}

	var export bytes.Buffer
	if _, err := b.client.Export(ctx, run, &export); err != nil {
		t.Fatal(err)
	}
	other, err := graflow.NewClient(graflow.Config{Redis: b.rdb, Namespace: redistest.Namespace(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Import(ctx, &export, replay.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	imported, err := other.Channel(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ch, imported); diff != "" {
		t.Errorf("the imported run's channel (-exported +imported):\n%s", diff)
	}
}

// A finished run's channel stays readable and expires with the run's
// other keys: the commit that ends the run gives it the projectors'
// RunTTL.
func TestChannelExpiresWithTheRun(t *testing.T) {
	t.Parallel()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := projector.New(projector.Config{Redis: rc, Namespace: ns, FeedBlock: 200 * time.Millisecond, RunTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Redis: rc, Namespace: ns, FetchBlock: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	builtin.Register(w)
	runCtx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = p.Run(runCtx) }()
	go func() { defer wg.Done(); _ = w.Run(runCtx) }()
	t.Cleanup(func() { stop(); wg.Wait() })
	c, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}

	wf := graflow.NewWorkflow("ttl")
	wf.Task("set", builtin.ChannelSet).Args(map[string]any{"key": "k", "value": 1})
	run, err := c.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := c.Wait(ctx, run); err != nil || !info.Succeeded() {
		t.Fatalf("run: %+v, %v", info, err)
	}
	if v, ok, err := c.ChannelGet(ctx, run, "k"); err != nil || !ok || string(v) != "1" {
		t.Fatalf("k after the run = %s, %v, %v", v, ok, err)
	}
	ttl, err := rc.PTTL(ctx, rdb.NewKeys(ns).RunChannel(run)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl <= 0 || ttl > time.Hour {
		t.Errorf("the channel's TTL is %v, want (0, 1h]: the run's RunTTL", ttl)
	}
}
