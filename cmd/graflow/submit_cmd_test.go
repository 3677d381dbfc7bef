package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/redistest"
)

// submit --json prints the run as JSON, --input and --input-file replace
// the spec's input, and with no worker or projector in the namespace it
// warns once on stderr.
func TestSubmitJSONInputAndWarnings(t *testing.T) {
	t.Parallel()
	ctx := withTestTimeout(t, 60*time.Second)
	ns := redistest.Namespace(t)
	conn := []string{"--redis", redistest.URL(t), "--namespace", ns}
	submit := func(args ...string) (submitted, string) {
		t.Helper()
		m, _ := newTestMain("", nil)
		var stdout, stderr lockedBuffer
		m.Stdout, m.Stderr = &stdout, &stderr
		if code := m.exitCode(ctx, m.Run(ctx, append(append([]string{"submit", "../../examples/etl.yaml", "--json"}, args...), conn...))); code != ExitOK {
			t.Fatalf("submit %v: exit %d\n%s%s", args, code, stdout.String(), stderr.String())
		}
		var s submitted
		if err := json.Unmarshal([]byte(stdout.String()), &s); err != nil {
			t.Fatalf("submit --json printed %q: %v", stdout.String(), err)
		}
		return s, stderr.String()
	}
	input := func(run string) string {
		t.Helper()
		code, out := runCLI(t, ctx, nil, append([]string{"events", "--run", run, "--limit", "1"}, conn...)...)
		var e events.Event
		if err := json.Unmarshal([]byte(out), &e); code != ExitOK || err != nil {
			t.Fatalf("events: exit %d, %v: %s", code, err, out)
		}
		var b events.RunSubmittedBody
		if err := e.DecodeBody(&b); err != nil {
			t.Fatal(err)
		}
		return string(b.Input)
	}

	s, stderr := submit("--input", `{"day":"2026-12-04"}`)
	if s.Run == "" || s.Workflow != "etl" || s.Tasks != 6 || s.Namespace != ns {
		t.Errorf("submit --json: %+v", s)
	}
	if got := input(s.Run); got != `{"day":"2026-12-04"}` {
		t.Errorf("--input: the run's input is %s", got)
	}
	for _, want := range []string{"warning: no projector is registered", "warning: no live worker serves pool default"} {
		if strings.Count(stderr, want) != 1 {
			t.Errorf("want %q once on stderr:\n%s", want, stderr)
		}
	}

	file := filepath.Join(t.TempDir(), "input.json")
	if err := os.WriteFile(file, []byte(`[1, 2]`), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ = submit("--input-file", file)
	if got := input(s.Run); got != `[1,2]` {
		t.Errorf("--input-file: the run's input is %s", got)
	}
}
