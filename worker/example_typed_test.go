package worker_test

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/graflow-go/graflow/worker"
	"github.com/redis/go-redis/v9"
)

type ResizeArgs struct{ W, H int }

type Image struct {
	Pixels int    `json:"pixels"`
	Label  string `json:"label"`
}

// A typed handler takes its arguments as a Go value and returns its
// result as one: no BindArgs, no json calls (docs/workflows.md, "Typed
// handlers").
func ExampleHandleTyped() {
	rc := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rc.Close()
	w, err := worker.New(worker.Config{Redis: rc, Pools: []string{"default"}})
	if err != nil {
		panic(err)
	}
	worker.HandleTyped(w, "resize", func(ctx context.Context, t *worker.Task, a ResizeArgs) (Image, error) {
		in, err := worker.Input[map[string]string](t) // the run's input, typed
		if err != nil {
			return Image{}, err
		}
		return Image{Pixels: a.W * a.H, Label: in["label"]}, nil
	})
	worker.HandleTyped(w, "describe", func(ctx context.Context, t *worker.Task, _ struct{}) (string, error) {
		img, err := worker.Upstream[Image](t, "resize") // a dependency's result, typed
		return fmt.Sprintf("%s: %d pixels", img.Label, img.Pixels), err
	})
	fmt.Println(w.Handlers())
	// Output: [describe resize]
}

// Upstream and Input decode a dependency's result and the run's input
// into Go values. (A Task built by hand, as in a handler's unit test; in a
// worker, the claim builds it.)
func ExampleUpstream() {
	t := &worker.Task{Run: "r", ID: "describe", Handler: "describe",
		Input:    json.RawMessage(`{"label":"cat"}`),
		Upstream: map[string]json.RawMessage{"resize": json.RawMessage(`{"pixels":300,"label":"cat"}`)}}
	img, err := worker.Upstream[Image](t, "resize")
	fmt.Println(img.Pixels, img.Label, err)
	in, err := worker.Input[map[string]string](t)
	fmt.Println(in["label"], err)
	// Output:
	// 300 cat <nil>
	// cat <nil>
}
