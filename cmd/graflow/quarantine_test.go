package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/redis/go-redis/v9"
)

// Issue #10 defect 5: a quarantined run never ended ("graflow wait" waited
// forever, "graflow status" exited 3 as for an unknown run) and verify
// named only its first bad entry. It now ends: wait exits 5, status shows
// the reason and every bad entry, and verify names each of them.
func TestAQuarantinedRunEnds(t *testing.T) {
	t.Parallel()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	wf := graflow.NewWorkflow("q")
	wf.Task("a", "h.a")
	run, err := client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	k := rdb.NewKeys(ns)
	var bad []string
	for _, fields := range [][]any{{"id", "x", "t", "no_such_type", "v", "1"}, {"garbage", "1"}} {
		id, err := rc.XAdd(ctx, &redis.XAddArgs{Stream: k.RunLog(run), Values: fields}).Result()
		if err != nil {
			t.Fatal(err)
		}
		bad = append(bad, id)
	}
	// Every writer of a log points the feed at the run (the submit
	// dispatched a and left nothing else for the projector to do).
	if err := rdb.New(rc, ns).PointFeed(ctx, rc, run).Err(); err != nil {
		t.Fatal(err)
	}
	p, err := projector.New(projector.Config{Redis: rc, Namespace: ns, FeedBlock: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = p.Run(pctx) })
	defer func() { stop(); wg.Wait() }()

	cli := func(verb []string, args ...string) (int, string) {
		m, out := newTestMain("", nil)
		err := m.Run(ctx, append(append(verb, "--redis", redistest.URL(t), "--namespace", ns), args...))
		return m.exitCode(ctx, err), out.String()
	}
	if code, out := cli([]string{"wait"}, "--timeout", "20s", run); code != ExitQuarantined || !strings.Contains(out, "quarantined") {
		t.Errorf("graflow wait: exit %d, want %d (quarantined):\n%s", code, ExitQuarantined, out)
	}
	code, out := cli([]string{"status"}, run)
	if code != ExitOK || !strings.Contains(out, "status quarantined") || !strings.Contains(out, "quarantined: ") {
		t.Errorf("graflow status: exit %d:\n%s", code, out)
	}
	for _, id := range bad {
		if !strings.Contains(out, "bad log entry "+id) {
			t.Errorf("graflow status does not name bad entry %s:\n%s", id, out)
		}
	}
	code, out = cli([]string{"replay", "verify"}, run)
	for _, id := range bad {
		if !strings.Contains(out, id) {
			t.Errorf("graflow replay verify (exit %d) does not name bad entry %s:\n%s", code, id, out)
		}
	}
}
