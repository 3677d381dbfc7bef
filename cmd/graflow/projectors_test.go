package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
)

// "graflow projectors" says when no projector runs, and lists a running one.
func TestProjectorsVerb(t *testing.T) {
	t.Parallel()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli := func() (int, string) {
		m, out := newTestMain("", nil)
		err := m.Run(ctx, []string{"projectors", "--redis", redistest.URL(t), "--namespace", ns})
		return m.exitCode(ctx, err), out.String()
	}
	if code, out := cli(); code != ExitOK || !strings.Contains(out, "no projector is running") {
		t.Errorf("graflow projectors with none: exit %d:\n%s", code, out)
	}
	p, err := projector.New(projector.Config{Redis: rc, Namespace: ns, ID: "p-cli", FeedBlock: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = p.Run(pctx) })
	defer func() { stop(); wg.Wait() }()
	// Run registers before its first tick; wait for the record.
	key := rdb.NewKeys(ns).Projector("p-cli")
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for rc.Exists(ctx, key).Val() == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("the projector never registered")
		case <-tick.C:
		}
	}
	if code, out := cli(); code != ExitOK || !strings.Contains(out, "p-cli") || strings.Contains(out, "no projector is running") {
		t.Errorf("graflow projectors with one: exit %d:\n%s", code, out)
	}
}
