package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/graflow-go/graflow/worker/builtin"
)

// invalidCase is one invalid workflow, as a builder and as a spec file.
type invalidCase struct {
	name  string
	want  error
	build func() (*graflow.Workflow, any) // workflow and input
	spec  string                          // spec file (JSON or YAML)
}

// bigInput is a JSON string of more than 1 MiB.
var bigInput = strings.Repeat("x", scheduler.DefaultMaxPayloadBytes+1)

func invalidCases() []invalidCase {
	bigSpec, _ := json.Marshal(map[string]any{
		"workflow": "big", "input": bigInput,
		"tasks": []map[string]any{{"id": "a", "handler": builtin.Echo}},
	})
	return []invalidCase{
		{
			name: "a cycle", want: scheduler.ErrCycle,
			build: func() (*graflow.Workflow, any) {
				wf := graflow.NewWorkflow("cycle")
				a := wf.Task("a", builtin.Noop)
				b := wf.Task("b", builtin.Noop).After(a)
				c := wf.Task("c", builtin.Noop).After(b)
				a.After(c)
				return wf, nil
			},
			spec: `{"workflow":"cycle","tasks":[
				{"id":"a","handler":"noop","deps":["c"]},
				{"id":"b","handler":"noop","deps":["a"]},
				{"id":"c","handler":"noop","deps":["b"]}]}`,
		},
		{
			name: "an unknown dependency", want: scheduler.ErrUnknownDependency,
			build: func() (*graflow.Workflow, any) {
				other := graflow.NewWorkflow("other")
				ghost := other.Task("ghost", builtin.Noop)
				wf := graflow.NewWorkflow("unknown-dep")
				wf.Task("a", builtin.Noop).After(ghost)
				return wf, nil
			},
			spec: `{"workflow":"unknown-dep","tasks":[{"id":"a","handler":"noop","deps":["ghost"]}]}`,
		},
		{
			name: "a duplicate task id", want: scheduler.ErrDuplicateTask,
			build: func() (*graflow.Workflow, any) {
				wf := graflow.NewWorkflow("dup")
				wf.Task("a", builtin.Noop)
				wf.Task("a", builtin.Echo)
				return wf, nil
			},
			spec: "workflow: dup\ntasks:\n  - id: a\n    handler: noop\n  - id: a\n    handler: echo\n",
		},
		{
			name: "an empty workflow", want: scheduler.ErrEmptyWorkflow,
			build: func() (*graflow.Workflow, any) { return graflow.NewWorkflow("empty"), nil },
			spec:  `{"workflow":"empty","tasks":[]}`,
		},
		{
			name: "an input over 1 MiB", want: scheduler.ErrPayloadTooLarge,
			build: func() (*graflow.Workflow, any) {
				wf := graflow.NewWorkflow("big")
				wf.Task("a", builtin.Echo)
				return wf, bigInput
			},
			spec: string(bigSpec),
		},
		{
			name: "a priority above 9", want: scheduler.ErrInvalidOption,
			build: func() (*graflow.Workflow, any) {
				wf := graflow.NewWorkflow("prio")
				wf.Task("a", builtin.Noop).Priority(10)
				return wf, nil
			},
			spec: `{"workflow":"prio","tasks":[{"id":"a","handler":"noop","priority":10}]}`,
		},
		{
			name: "a negative priority", want: scheduler.ErrInvalidOption,
			build: func() (*graflow.Workflow, any) {
				wf := graflow.NewWorkflow("prio")
				wf.Task("a", builtin.Noop).Priority(-1)
				return wf, nil
			},
			spec: `{"workflow":"prio","tasks":[{"id":"a","handler":"noop","priority":-1}]}`,
		},
		{
			name: "a missing handler", want: scheduler.ErrMissingHandler,
			build: func() (*graflow.Workflow, any) {
				wf := graflow.NewWorkflow("nohandler")
				wf.Task("a", "")
				return wf, nil
			},
			spec: `{"workflow":"nohandler","tasks":[{"id":"a"}]}`,
		},
	}
}

// TestInvalidWorkflows submits invalid workflows through the Go client and
// the CLI: each gets its typed error (exit code 2 and a message naming the
// problem) and writes no key at all.
func TestInvalidWorkflows(t *testing.T) {
	t.Parallel()
	for _, c := range invalidCases() {
		t.Run("the Go client rejects "+c.name+" and writes nothing", func(t *testing.T) {
			t.Parallel()
			s := newStack(t)
			ctx := withTimeout(t, 30*time.Second)
			wf, input := c.build()
			run, err := s.client.Submit(ctx, wf, input)
			if err == nil {
				t.Fatalf("Submit accepted it as run %s", run)
			}
			if !errors.Is(err, c.want) || !errors.Is(err, scheduler.ErrInvalidWorkflow) {
				t.Errorf("Submit error %q: want errors.Is %v and %v", err, c.want, scheduler.ErrInvalidWorkflow)
			}
			var ve *scheduler.ValidationError
			if !errors.As(err, &ve) {
				t.Errorf("Submit error %T is not a *scheduler.ValidationError", err)
			}
			if run != "" {
				t.Errorf("Submit returned run id %q with its error", run)
			}
			if keys := s.nsKeys(ctx); len(keys) > 0 {
				t.Errorf("namespace not empty after the rejected submit: %v", keys)
			}
		})

		t.Run("graflow submit rejects "+c.name+" with exit code 2 and writes nothing", func(t *testing.T) {
			t.Parallel()
			s := newStack(t)
			ctx := withTimeout(t, 30*time.Second)
			file := filepath.Join(t.TempDir(), "wf.spec")
			if err := os.WriteFile(file, []byte(c.spec), 0o600); err != nil {
				t.Fatal(err)
			}
			stdout, stderr, code := s.cli(ctx, append(append([]string{"submit"}, s.common()...), file)...)
			if code != 2 {
				t.Errorf("exit code %d, want 2\nstdout: %s\nstderr: %s", code, stdout, stderr)
			}
			for _, want := range []string{scheduler.ErrInvalidWorkflow.Error(), c.want.Error()} {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr does not say %q:\n%s", want, clip(stderr))
				}
			}
			if len(stderr) > 4096 {
				t.Errorf("the message is %d bytes long; a clear message names the problem, it does not echo the input:\n%s", len(stderr), clip(stderr))
			}
			t.Logf("stderr: %s", strings.TrimSpace(stderr))
			if strings.TrimSpace(stdout) != "" {
				t.Errorf("stdout has %q; want no run id", clip(stdout))
			}
			if keys := s.nsKeys(ctx); len(keys) > 0 {
				t.Errorf("namespace not empty after the rejected submit: %v", keys)
			}
		})
	}
}

// clip shortens s for messages.
func clip(s string) string {
	if len(s) > 2000 {
		return fmt.Sprintf("%s...(%d bytes)", s[:2000], len(s))
	}
	return s
}
