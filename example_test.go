package graflow_test

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/scheduler"
)

// printSpec prints each task as "id <- deps [options]".
func printSpec(spec events.RunSubmittedBody) {
	fmt.Println("workflow", spec.Workflow)
	for _, t := range spec.Tasks {
		line := fmt.Sprintf("  %s (%s)", t.ID, t.Handler)
		if len(t.Deps) > 0 {
			line += " <- " + strings.Join(t.Deps, ", ")
		}
		if t.Pool != "" {
			line += " pool=" + t.Pool
		}
		if t.Priority != 0 {
			line += fmt.Sprintf(" priority=%d", t.Priority)
		}
		if t.MaxAttempts != 0 {
			line += fmt.Sprintf(" attempts=%d", t.MaxAttempts)
		}
		if t.TimeoutMS != 0 {
			line += fmt.Sprintf(" timeout=%v", time.Duration(t.TimeoutMS)*time.Millisecond)
		}
		if len(t.Args) > 0 {
			line += " args=" + string(t.Args)
		}
		fmt.Println(line)
	}
}

func ExampleNewWorkflow() {
	wf := graflow.NewWorkflow("etl")
	extract := wf.Task("extract", "etl.extract").Retries(2).Timeout(30 * time.Second)
	transform := wf.Task("transform", "etl.transform").After(extract)
	wf.Task("load", "etl.load").After(transform).Pool("db").Priority(9)

	spec, err := wf.Spec(map[string]string{"date": "2024-06-01"})
	if err != nil {
		fmt.Println(err)
		return
	}
	printSpec(spec)
	fmt.Println("input", string(spec.Input))
	// Output:
	// workflow etl
	//   extract (etl.extract) attempts=3 timeout=30s
	//   transform (etl.transform) <- extract
	//   load (etl.load) <- transform pool=db priority=9
	// input {"date":"2024-06-01"}
}

func ExampleWorkflow_FanOut() {
	wf := graflow.NewWorkflow("thumbnails")
	list := wf.Task("list", "images.list")
	resize := wf.FanOut(list, "resize", "images.resize", 3, func(i int) any {
		return map[string]int{"shard": i}
	})
	resize.Then(wf.Task("publish", "images.publish"))

	spec, _ := wf.Spec(nil)
	printSpec(spec)
	// Output:
	// workflow thumbnails
	//   list (images.list)
	//   resize-0 (images.resize) <- list args={"shard":0}
	//   resize-1 (images.resize) <- list args={"shard":1}
	//   resize-2 (images.resize) <- list args={"shard":2}
	//   publish (images.publish) <- resize-0, resize-1, resize-2
}

func ExampleWorkflow_MapReduce() {
	wf := graflow.NewWorkflow("wordcount")
	split := wf.Task("split", "text.split")
	wf.MapReduce(split, "count", "text.count", 2, nil, "total", "text.sum")

	spec, _ := wf.Spec(nil)
	printSpec(spec)
	// Output:
	// workflow wordcount
	//   split (text.split)
	//   count-0 (text.count) <- split
	//   count-1 (text.count) <- split
	//   total (text.sum) <- count-0, count-1
}

func ExampleWorkflow_Sequence() {
	wf := graflow.NewWorkflow("report")
	fetch := wf.Task("fetch", "http.get")
	left, right := wf.Task("left", "calc"), wf.Task("right", "calc")
	merge := wf.Task("merge", "calc.merge")
	// fetch >> (left | right) >> merge
	wf.Parallel(left, right).After(fetch).Then(merge)
	last := wf.Sequence(merge, wf.Task("mail", "smtp.send"))

	spec, _ := wf.Spec(nil)
	printSpec(spec)
	fmt.Println("last:", last.ID())
	// Output:
	// workflow report
	//   fetch (http.get)
	//   left (calc) <- fetch
	//   right (calc) <- fetch
	//   merge (calc.merge) <- left, right
	//   mail (smtp.send) <- merge
	// last: mail
}

// Invalid workflows are rejected with every problem at once; each problem is
// a typed error for errors.Is. Submit returns the same error and writes
// nothing.
func Example_validation() {
	wf := graflow.NewWorkflow("broken")
	a := wf.Task("a", "noop")
	b := wf.Task("b", "noop").After(a)
	a.After(b) // a cycle
	spec, _ := wf.Spec(nil)

	err := scheduler.Validate(spec, scheduler.ValidateOptions{})
	fmt.Println(err)
	fmt.Println("cycle:", errors.Is(err, scheduler.ErrCycle))

	wf = graflow.NewWorkflow("typos")
	wf.Task("a", "noop")
	wf.Task("a", "noop")
	wf.Task("c", "nope").Priority(11)
	spec, _ = wf.Spec(nil)
	err = scheduler.Validate(spec, scheduler.ValidateOptions{Handlers: map[string]bool{"noop": true}})
	var ve *scheduler.ValidationError
	if errors.As(err, &ve) {
		for _, p := range ve.Problems {
			fmt.Println("-", p)
		}
	}
	fmt.Println("duplicate:", errors.Is(err, scheduler.ErrDuplicateTask), "unknown handler:", errors.Is(err, scheduler.ErrUnknownHandler))
	// Output:
	// invalid workflow "broken": dependency cycle: a -> b -> a
	// cycle: true
	// - duplicate task id: "a" is defined twice
	// - unknown handler: task "c" uses handler "nope", which no worker registers
	// - invalid task option: task "c": priority 11 is outside 0..9
	// duplicate: true unknown handler: true
}

// Workflows can also come from JSON or YAML files (graflow submit).
func Example_specFile() {
	spec, err := scheduler.ParseSpec([]byte(`
workflow: etl
input: {source: orders.csv}
tasks:
  - id: extract
    handler: etl.extract
    retries: 2
    timeout: 1m
  - id: load
    handler: etl.load
    deps: [extract]
    args: {table: orders}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	printSpec(spec)
	fmt.Println("input", string(spec.Input))
	fmt.Println("valid:", scheduler.Validate(spec, scheduler.ValidateOptions{}) == nil)

	_, err = scheduler.ParseSpec([]byte(`{"workflow": "x", "tasks": [{"id": "a", "handler": "h", "retry": 2}]}`))
	fmt.Println(errors.Is(err, scheduler.ErrInvalidSpec), err)
	// Output:
	// workflow etl
	//   extract (etl.extract) attempts=3 timeout=1m0s
	//   load (etl.load) <- extract args={"table":"orders"}
	// input {"source":"orders.csv"}
	// valid: true
	// true invalid workflow spec: json: unknown field "retry"
}
