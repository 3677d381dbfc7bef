package graflow_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
)

func TestMain(m *testing.M) { redistest.Main(m) }

type bundle struct {
	rdb    *redis.Client
	ns     string
	client *graflow.Client
}

// setup starts a projector and n in-process workers in a fresh namespace.
func setup(t *testing.T, workers int) bundle {
	t.Helper()
	rdb := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	p, err := projector.New(projector.Config{Redis: rdb, Namespace: ns, FeedBlock: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = p.Run(ctx) }()
	for i := 0; i < workers; i++ {
		w, err := worker.New(worker.Config{Redis: rdb, Namespace: ns, ID: "w" + string(rune('a'+i)), Concurrency: 4, FetchBlock: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		builtin.Register(w)
		wg.Add(1)
		go func() { defer wg.Done(); _ = w.Run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	c, err := graflow.NewClient(graflow.Config{Redis: rdb, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	return bundle{rdb: rdb, ns: ns, client: c}
}

func TestETLRunSucceeds(t *testing.T) {
	t.Parallel()
	b := setup(t, 3)
	wf := graflow.NewWorkflow("etl")
	ex := wf.Task("extract", builtin.Echo).Args(map[string]any{"value": 1})
	g := wf.FanOut(ex, "transform", builtin.Sleep, 4, func(i int) any { return map[string]any{"ms": 10, "value": i + 1} })
	g.Then(wf.Task("load", builtin.Sum))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	run, err := b.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := b.client.Wait(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Succeeded() {
		t.Fatalf("run %s: %+v", info.Status, info)
	}
	if got := string(info.Task("load").Result); got != "10" {
		t.Fatalf("load result = %s, want 10", got)
	}
	t.Logf("events=%d elapsed=%v", info.Events, time.Since(start))
}
