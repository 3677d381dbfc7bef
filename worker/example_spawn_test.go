package worker_test

import (
	"errors"
	"fmt"

	"github.com/graflow-go/graflow/worker"
)

// A handler spawns one task per item; what it spawns is checked at once,
// as a submit is, and committed with its success. (A Task built by hand,
// as in a handler's unit test; in a worker, the claim builds it.)
func ExampleTask_Spawn() {
	t := &worker.Task{Run: "r", ID: "split", Handler: "split"}
	var tasks []worker.NewTask
	for i, file := range []string{"a.csv", "b.csv"} {
		tasks = append(tasks, worker.NewTask{ID: fmt.Sprintf("convert-%d", i), Handler: "convert", Args: map[string]string{"file": file}})
	}
	fmt.Println(t.Spawn(tasks...))

	err := t.Spawn(worker.NewTask{ID: "merge", Handler: "merge", Deps: []string{"split"}})
	fmt.Println(errors.Is(err, worker.ErrInvalidSpawn))
	fmt.Println(err)
	// Output:
	// <nil>
	// true
	// invalid spawn by task split: task "merge" depends on its spawner: spawned tasks run after it anyway; pass what they need in Args
}

// A loop continues into its next iteration until its condition holds;
// worker.Config.MaxIterations (default 100) bounds it.
func ExampleTask_Continue() {
	t := &worker.Task{Run: "r", ID: "poll:100", Handler: "poll"}
	fmt.Println(t.Iteration())
	err := t.Continue(map[string]string{"job": "42"})
	fmt.Println(errors.Is(err, worker.ErrTooManyIterations))
	fmt.Println(err)
	// Output:
	// 100
	// true
	// too many loop iterations: loop poll would run iteration 101; the limit is 100 (worker Config.MaxIterations)
}
