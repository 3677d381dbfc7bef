package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("the examples are valid", func(t *testing.T) {
		files, _ := filepath.Glob("../../examples/*.yaml")
		code, out := runCLI(t, ctx, nil, append([]string{"validate"}, files...)...)
		if code != ExitOK || !strings.Contains(out, ": ok") {
			t.Errorf("exit %d:\n%s", code, out)
		}
	})
	t.Run("problems come with file, line and task", func(t *testing.T) {
		dir := t.TempDir()
		file := filepath.Join(dir, "bad.yaml")
		spec := "workflow: w\n" + // 1
			"tasks:\n" + // 2
			"  - id: a\n" + // 3
			"    handler: echo\n" + // 4
			"  - id: b\n" + // 5
			"    handler: echo\n" + // 6
			"    timeout: soon\n" // 7
		if err := os.WriteFile(file, []byte(spec), 0o600); err != nil {
			t.Fatal(err)
		}
		code, out := runCLI(t, ctx, nil, "validate", "--json", file)
		var got []specProblem
		if err := json.Unmarshal([]byte(out), &got); err != nil || code != ExitUsage {
			t.Fatalf("exit %d, %v:\n%s", code, err, out)
		}
		if len(got) != 1 || got[0].File != file || got[0].Line != 7 || got[0].Task != "b" || !strings.Contains(got[0].Message, "timeout") {
			t.Errorf("problems: %+v, want one at %s:7 in task b about its timeout", got, file)
		}

		// A rule only the loader knows (an unknown dependency): the line
		// of the task that names it.
		spec = "workflow: w\ntasks:\n  - id: a\n    handler: echo\n  - id: b\n    handler: echo\n    deps: [a, nope]\n"
		if err := os.WriteFile(file, []byte(spec), 0o600); err != nil {
			t.Fatal(err)
		}
		code, out = runCLI(t, ctx, nil, "validate", file)
		want := file + `:5: task b: unknown dependency: task "b" depends on "nope", which is not in the workflow` + "\n"
		if code != ExitUsage || out != want {
			t.Errorf("exit %d (want %d), output (-want +got):\n%s", code, ExitUsage, cmp.Diff(want, out))
		}

		// A syntax error: the YAML parser's line.
		if err := os.WriteFile(file, []byte("tasks:\n  - id: a\n    handler: [echo\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if code, out := runCLI(t, ctx, nil, "validate", file); code != ExitUsage || !strings.HasPrefix(out, file+":") {
			t.Errorf("syntax error: exit %d:\n%s", code, out)
		}
	})
}
