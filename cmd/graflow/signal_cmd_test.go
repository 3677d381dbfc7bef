package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
)

// "graflow signal" in process, against a projector and a worker with the
// built-in handlers: usage errors (exit 2) are caught before anything is
// sent, an unknown or finished run and a second signal of a name exit 3,
// and a delivered signal (--data, or --data-file - from stdin) is the
// waiting task's result.
func TestSignalVerb(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	p, err := projector.New(projector.Config{Redis: rc, Namespace: ns, FeedBlock: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Redis: rc, Namespace: ns, ID: "w-cli", FetchBlock: 200 * time.Millisecond, DrainTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	builtin.Register(w)
	wg.Go(func() { _ = p.Run(runCtx) })
	wg.Go(func() { _ = w.Run(runCtx) })
	client, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}

	cli := func(stdin string, args ...string) (int, string) {
		t.Helper()
		m, out := newTestMain("", map[string]string{"USER": "carol"})
		m.Stdin = strings.NewReader(stdin)
		err := m.Run(ctx, append(args, "--redis", redistest.URL(t), "--namespace", ns))
		return m.exitCode(ctx, err), out.String()
	}
	expect := func(code int, want, stdin string, args ...string) {
		t.Helper()
		got, out := cli(stdin, args...)
		if got != code || !strings.Contains(out, want) {
			t.Errorf("graflow %s: exit %d, want %d with %q:\n%s", strings.Join(args, " "), got, code, want, out)
		}
	}

	wf := graflow.NewWorkflow("cli-approval")
	wf.Task("sum", builtin.Sum).After(
		wf.Task("approve", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "approve", Timeout: "1h"}),
		wf.Task("budget", builtin.WaitSignal).Args(builtin.WaitSignalArgs{Name: "budget"}),
	)
	run, err := client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("bad arguments are usage errors and send nothing", func(t *testing.T) {
		expect(ExitUsage, "signal takes a run id and a signal name", "", "signal", run)
		expect(ExitUsage, "--data is not valid JSON", "", "signal", run, "approve", "--data", "{")
		expect(ExitUsage, "--data-file - is not valid JSON", "yes", "signal", run, "approve", "--data-file", "-")
		expect(ExitUsage, "not both", "", "signal", run, "approve", "--data", "1", "--data-file", "x.json")
		expect(ExitUsage, "no such file", "", "signal", run, "approve", "--data-file", "nope.json")
		expect(ExitUsage, `invalid signal: name "@approve"`, "", "signal", run, "@approve")
		expect(ExitUsage, "is over 1048576 bytes", strings.Repeat(" ", rdb.MaxSignalBytes+1), "signal", run, "approve", "--data-file", "-")
		evs, err := client.Log(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Type == events.SignalReceived {
				t.Errorf("a refused signal was recorded: %s", e.Body)
			}
		}
	})
	t.Run("an unknown run exits 3", func(t *testing.T) {
		expect(ExitError, "run not found: no-such-run", "", "signal", "no-such-run", "approve")
	})
	t.Run("delivered signals are the waiting tasks' results", func(t *testing.T) {
		// A name no @wait_signal task of the run waits for (a typo) is
		// delivered (a handler of the user's may wait for it) and warned
		// about, naming the names the run's tasks do wait for.
		expect(ExitOK, `warning: no @wait_signal task of run `+run+` waits for signal "aprove" (they wait for: approve, budget)`, "", "signal", run, "aprove")
		if _, out := cli("", "signal", run, "approve", "--data", "40", "--id", "t-1"); strings.Contains(out, "warning") {
			t.Errorf("a signal a task waits for was warned about:\n%s", out)
		}
		expect(ExitOK, "run "+run+": signal approve delivered", "", "signal", run, "approve", "--data", "40", "--id", "t-1") // a retry
		expect(ExitError, "signal already received", "", "signal", run, "approve", "--data", "0")
		expect(ExitOK, "signal budget delivered", " 2\n", "signal", "--data-file", "-", run, "budget")
		info, err := client.Wait(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if !info.Succeeded() || string(info.Task("sum").Result) != "42" {
			t.Fatalf("run %s, sum = %s, want succeeded with 42", info.Status, info.Task("sum").Result)
		}
		evs, err := client.Log(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		var by []string
		for _, e := range evs {
			var b events.SignalReceivedBody
			if e.Type == events.SignalReceived && e.DecodeBody(&b) == nil {
				by = append(by, b.Name+" by "+b.By)
			}
		}
		if strings.Join(by, ", ") != "aprove by carol, approve by carol, budget by carol" {
			t.Errorf("signals recorded: %v, want approve and budget by $USER", by)
		}
		expect(ExitError, "already finished (succeeded)", "", "signal", run, "late")
	})
}
