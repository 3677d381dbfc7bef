package graflow_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
)

// failFeedOnce fails the first XADD to a projector feed sent as a command
// of its own, as a connection lost right after the requeue script would.
func failFeedOnce() faultHook {
	var fired atomic.Bool
	return faultHook{fail: func(cmd redis.Cmder) error {
		a := cmd.Args()
		if strings.EqualFold(cmd.Name(), "xadd") && len(a) > 1 && strings.HasSuffix(fmt.Sprint(a[1]), ":feed") && !fired.Swap(true) {
			return errors.New("i/o timeout (injected)")
		}
		return nil
	}}
}

// A requeue cut off after its script must not leave the reopened run
// with no feed entry: running, dirty, and never projected again (Wait
// hung; found by review). The script now points the feed itself.
func TestARequeueCutOffAfterItsScriptStillRunsTheTask(t *testing.T) {
	b := setup(t, 1)
	wf := graflow.NewWorkflow("dlq")
	a := wf.Task("a", builtin.Flaky).Args(map[string]any{"fail": 1, "permanent": true, "value": 2})
	wf.Task("b", builtin.Sum).After(a)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run, info := b.submitAndWait(ctx, t, wf)
	if info.Status != "failed" {
		t.Fatalf("the run ended %s; want failed (a's permanent failure)", info.Status)
	}
	opt := *b.rdb.Options()
	hooked := redis.NewClient(&opt)
	defer func() { _ = hooked.Close() }()
	hooked.AddHook(failFeedOnce())
	hc, err := graflow.NewClient(graflow.Config{Redis: hooked, Namespace: b.ns})
	if err != nil {
		t.Fatal(err)
	}
	if err := hc.Requeue(ctx, run, "a"); err != nil {
		t.Logf("requeue: %v", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	info, err = b.client.Wait(wctx, run)
	if err != nil || !info.Succeeded() {
		t.Fatalf("after the requeue the run: %+v, %v; want it to run a again and succeed", info, err)
	}
	if dls, err := b.client.DeadLetters(ctx, 0); err != nil || len(dls) != 0 {
		t.Errorf("dead letters after the run succeeded: %+v, %v; want none", dls, err)
	}
}

// A requeue whose dead-letter removal was cut off (the script ran; the
// dead letters are in another slot, removed after it) left a dead letter
// for a task that is no longer failed, and its retry was refused with the
// dead letter kept for good: a retried requeue now drops it. A requeue of
// a run that does not exist says so (it said "nosuch/t is pending (run )").
func TestARetriedRequeueDropsItsStaleDeadLetter(t *testing.T) {
	b := setup(t, 1)
	wf := graflow.NewWorkflow("dlq")
	wf.Task("a", builtin.Flaky).Args(map[string]any{"fail": 1, "permanent": true, "value": 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run, info := b.submitAndWait(ctx, t, wf)
	if info.Status != "failed" {
		t.Fatalf("the run ended %s; want failed", info.Status)
	}
	dls, err := b.client.DeadLetters(ctx, 0)
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters: %+v, %v; want a's", dls, err)
	}
	if err := b.client.Requeue(ctx, run, "a"); err != nil {
		t.Fatal(err)
	}
	// As if the removal had been cut off.
	k := rdb.New(b.rdb, b.ns).K
	if err := b.rdb.ZAdd(ctx, k.DeadLetter(), redis.Z{Score: 1, Member: rdb.DeadLetterMember(run, "a")}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.client.Requeue(ctx, run, "a"); !errors.Is(err, graflow.ErrNotRequeueable) {
		t.Errorf("the retried requeue: %v; want ErrNotRequeueable (a was requeued)", err)
	}
	if dls, err := b.client.DeadLetters(ctx, 0); err != nil || len(dls) != 0 {
		t.Errorf("dead letters after the retry: %+v, %v; want the stale one dropped", dls, err)
	}
	if err := b.client.Requeue(ctx, "nosuch", "t"); !errors.Is(err, graflow.ErrRunNotFound) {
		t.Errorf("requeue of a missing run: %v; want ErrRunNotFound", err)
	}
}
