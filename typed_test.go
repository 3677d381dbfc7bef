package graflow_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker"
)

type resizeArgs struct {
	W, H int
}

type image struct {
	Pixels int    `json:"pixels"`
	Label  string `json:"label"`
}

// Typed handlers get their arguments, inputs and upstream results as Go
// values; arguments that do not decode fail the task for good (no retry).
func TestTypedHandlers(t *testing.T) {
	t.Parallel()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	p, err := projector.New(projector.Config{Redis: rc, Namespace: ns, FeedBlock: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Redis: rc, Namespace: ns, FetchBlock: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	worker.HandleTyped(w, "resize", func(ctx context.Context, task *worker.Task, a resizeArgs) (image, error) {
		in, err := worker.Input[map[string]string](task)
		if err != nil {
			return image{}, err
		}
		return image{Pixels: a.W * a.H, Label: in["label"]}, nil
	})
	worker.HandleTyped(w, "describe", func(ctx context.Context, task *worker.Task, _ struct{}) (string, error) {
		img, err := worker.Upstream[image](task, "resize")
		if err != nil {
			return "", err
		}
		return img.Label + ":" + strings.Repeat("#", img.Pixels/100), nil
	})
	runCtx, stop := context.WithCancel(context.Background())
	wg.Add(2)
	go func() { defer wg.Done(); _ = p.Run(runCtx) }()
	go func() { defer wg.Done(); _ = w.Run(runCtx) }()
	t.Cleanup(func() { stop(); wg.Wait() })
	c, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}

	wf := graflow.NewWorkflow("typed")
	wf.Task("describe", "describe").After(wf.Task("resize", "resize").Args(resizeArgs{W: 20, H: 15}))
	run, err := c.Submit(ctx, wf, map[string]string{"label": "cat"})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Wait(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Succeeded() || string(info.Task("resize").Result) != `{"pixels":300,"label":"cat"}` || string(info.Task("describe").Result) != `"cat:###"` {
		t.Fatalf("run %s: resize %s, describe %s", info.Status, info.Task("resize").Result, info.Task("describe").Result)
	}

	bad := graflow.NewWorkflow("typed-bad")
	bad.Task("resize", "resize").Args(map[string]any{"W": "wide"}).Retries(3)
	run, err = c.Submit(ctx, bad, nil)
	if err != nil {
		t.Fatal(err)
	}
	if info, err = c.Wait(ctx, run); err != nil {
		t.Fatal(err)
	}
	task := info.Task("resize")
	if info.Status != string(events.RunStatusFailed) || task.Attempt != 1 || !strings.Contains(task.Error, "handler resize, task resize: decode args") {
		t.Fatalf("bad args: run %s, attempt %d, error %q; want failed at attempt 1 with a decode error", info.Status, task.Attempt, task.Error)
	}
}
