package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/spf13/cobra"
)

// run runs args on a test Main with env and returns the exit code and
// everything printed.
func runCLI(t *testing.T, ctx context.Context, env map[string]string, args ...string) (int, string) {
	t.Helper()
	m, out := newTestMain("", env)
	err := m.Run(ctx, args)
	return m.exitCode(ctx, err), out.String()
}

func TestHelpVersionAndCompletion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("help VERB prints the verb's flags on stdout and exits 0", func(t *testing.T) {
		m, _ := newTestMain("", nil)
		var stdout, stderr strings.Builder
		m.Stdout, m.Stderr = &stdout, &stderr
		if code := m.exitCode(ctx, m.Run(ctx, []string{"help", "submit"})); code != ExitOK {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		for _, want := range []string{"--input-file", "--json", "--redis", "$GRAFLOW_RUN_ID", "$REDIS_URL"} {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("help submit: no %q on stdout:\n%s", want, stdout.String())
			}
		}
		if stderr.Len() != 0 {
			t.Errorf("help wrote to stderr: %s", stderr.String())
		}
	})
	t.Run("--version prints the build's version", func(t *testing.T) {
		code, out := runCLI(t, ctx, nil, "--version")
		if code != ExitOK || !strings.HasPrefix(out, "graflow version ") || !strings.Contains(out, "go1.") {
			t.Errorf("exit %d: %q", code, out)
		}
	})
	t.Run("completion bash, zsh and fish print scripts", func(t *testing.T) {
		for _, sh := range []string{"bash", "zsh", "fish"} {
			code, out := runCLI(t, ctx, nil, "completion", sh)
			if code != ExitOK || !strings.Contains(out, "graflow") || len(out) < 500 {
				t.Errorf("completion %s: exit %d, %d bytes", sh, code, len(out))
			}
		}
	})
	t.Run("an unknown verb or flag is a usage error", func(t *testing.T) {
		if code, out := runCLI(t, ctx, nil, "nosuchverb"); code != ExitUsage || !strings.Contains(out, "unknown command") {
			t.Errorf("exit %d: %s", code, out)
		}
		if code, out := runCLI(t, ctx, nil, "status", "--nosuchflag", "x"); code != ExitUsage || !strings.Contains(out, "not defined: -nosuchflag") {
			t.Errorf("exit %d: %s", code, out)
		}
	})
}

// Every flag can come from GRAFLOW_<FLAG>; the command line wins; REDIS_URL
// still sets --redis.
func TestFlagsFromTheEnvironment(t *testing.T) {
	t.Parallel()
	bound := func(env map[string]string, args ...string) *common {
		t.Helper()
		m, _ := newTestMain("", env)
		root := m.rootCommand(context.Background())
		cmd, rest, err := root.Find(args)
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.ParseFlags(rest); err != nil {
			t.Fatal(err)
		}
		if err := m.bindEnv(cmd); err != nil {
			t.Fatal(err)
		}
		return commonOf(t, cmd)
	}
	env := map[string]string{
		"GRAFLOW_NAMESPACE":  "fromenv",
		"GRAFLOW_LOG_LEVEL":  "debug",
		"GRAFLOW_LOG_FORMAT": "console",
		"GRAFLOW_PARTITIONS": "4",
		"GRAFLOW_TLS_CA":     "/ca.pem",
		"REDIS_URL":          "redis://from-redis-url:1",
	}
	c := bound(env, "status")
	if c.namespace != "fromenv" || c.logLevel != "debug" || c.logFormat != "console" || c.partitions != 4 || c.tls.ca != "/ca.pem" || c.redisURL != "redis://from-redis-url:1" {
		t.Errorf("from the environment: %+v", *c)
	}
	c = bound(env, "status", "--namespace", "fromflag", "--partitions", "2")
	if c.namespace != "fromflag" || c.partitions != 2 || c.logLevel != "debug" {
		t.Errorf("flags win: %+v", *c)
	}
	env["GRAFLOW_REDIS"] = "redis://from-graflow-redis:2"
	if c := bound(env, "status"); c.redisURL != "redis://from-graflow-redis:2" {
		t.Errorf("GRAFLOW_REDIS before REDIS_URL: %s", c.redisURL)
	}
	// A verb's own flag: worker --concurrency from GRAFLOW_CONCURRENCY.
	m, _ := newTestMain("", map[string]string{"GRAFLOW_CONCURRENCY": "17"})
	root := m.rootCommand(context.Background())
	cmd, _, _ := root.Find([]string{"worker"})
	if err := m.bindEnv(cmd); err != nil {
		t.Fatal(err)
	}
	if v := cmd.Flags().Lookup("concurrency").Value.String(); v != "17" {
		t.Errorf("GRAFLOW_CONCURRENCY: --concurrency %s", v)
	}
	// The switches that weaken safety are not read from the environment.
	m, _ = newTestMain("", map[string]string{"GRAFLOW_BREAK_FENCING": "true"})
	root = m.rootCommand(context.Background())
	cmd, _, _ = root.Find([]string{"chaos"})
	if err := m.bindEnv(cmd); err != nil {
		t.Fatal(err)
	}
	if v := cmd.Flags().Lookup("break-fencing").Value.String(); v != "false" {
		t.Errorf("GRAFLOW_BREAK_FENCING set --break-fencing to %s", v)
	}
	// A bad value from the environment is a usage error naming it.
	code, out := runCLI(t, context.Background(), map[string]string{"GRAFLOW_CONCURRENCY": "lots"}, "worker", "--redis", "redis://127.0.0.1:1")
	if code != ExitUsage || !strings.Contains(out, "GRAFLOW_CONCURRENCY") {
		t.Errorf("GRAFLOW_CONCURRENCY=lots: exit %d: %s", code, out)
	}
}

// commonOf digs the common flags back out of a built command.
func commonOf(t *testing.T, cmd *cobra.Command) *common {
	t.Helper()
	c := &common{}
	f := cmd.Flags()
	get := func(name string) string { return f.Lookup(name).Value.String() }
	c.namespace, c.logLevel, c.logFormat, c.redisURL, c.tls.ca = get("namespace"), get("log-level"), get("log-format"), get("redis"), get("tls-ca")
	n, err := f.GetInt("partitions")
	if err != nil {
		t.Fatal(err)
	}
	c.partitions = n
	return c
}

// Invalid values exit 2 with a message, before anything connects (the
// Redis address is unreachable: a connection attempt would exit 3).
func TestInvalidValuesAreRejected(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"status", "r", "--log-level", "loud"}, nil, `--log-level "loud"`},
		{[]string{"status", "r", "--log-format", "xml"}, nil, `--log-format "xml"`},
		{[]string{"status", "r"}, map[string]string{"GRAFLOW_LOG_LEVEL": "verbose"}, `--log-level "verbose"`},
		{[]string{"runs", "--status", "finished"}, nil, `--status "finished"`},
		{[]string{"worker", "--concurrency", "0"}, nil, "--concurrency 0: want at least 1"},
		{[]string{"worker", "--concurrency", "-3"}, nil, "--concurrency -3"},
		{[]string{"worker", "--lease", "-5s"}, nil, "--lease -5s: a duration may not be negative"},
		{[]string{"wait", "r", "--timeout", "-1m"}, nil, "--timeout -1m0s"},
		{[]string{"projector", "--run-ttl", "-1h"}, nil, "--run-ttl -1h0m0s"},
		{[]string{"runs", "--limit", "-1"}, nil, "--limit -1: may not be negative"},
		{[]string{"worker", "--tls-cert", "c.pem"}, nil, "--tls-cert and --tls-key go together"},
		{[]string{"submit", "../../examples/etl.yaml", "--input", "{not json"}, nil, "--input is not valid JSON"},
	} {
		env := tc.env
		code, out := runCLI(t, context.Background(), env, append(tc.args, "--redis", "redis://127.0.0.1:1")...)
		if code != ExitUsage || !strings.Contains(out, tc.want) {
			t.Errorf("graflow %s: exit %d, want %d and %q:\n%s", strings.Join(tc.args, " "), code, ExitUsage, tc.want, out)
		}
	}
}

// Ctrl-C or SIGTERM during "graflow wait" exits 128+signal, never 0: the
// run did not end.
func TestWaitInterruptedExits130Or143(t *testing.T) {
	t.Parallel()
	ns := redistest.Namespace(t)
	ctx := withTestTimeout(t, 60*time.Second)
	code, out := runCLI(t, ctx, nil, "submit", "../../examples/etl.yaml", "--redis", redistest.URL(t), "--namespace", ns)
	if code != ExitOK {
		t.Fatalf("submit: exit %d: %s", code, out)
	}
	run := strings.TrimSpace(lastLine(out))
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		// No projector runs in ns: the run never ends, wait blocks until
		// the signal context is cancelled.
		sctx, cancel := context.WithCancelCause(ctx)
		m, buf := newTestMain("", nil)
		done := make(chan int, 1)
		go func() {
			done <- m.exitCode(sctx, m.Run(sctx, []string{"wait", run, "--follow", "--redis", redistest.URL(t), "--namespace", ns}))
		}()
		// wait --follow prints the submitted line once it reads the log:
		// it is blocked in the follow then.
		waitForText(t, buf, "submitted: ")
		cancel(&interrupted{sig: sig})
		if code := <-done; code != 128+int(sig) {
			t.Errorf("wait interrupted by %s: exit %d, want %d\n%s", sig, code, 128+int(sig), buf.String())
		}
	}
}

// Ctrl-C during "graflow events --follow --until-end" exits 130, as wait
// does: the run did not end (it exited 0, as if it had); and a run that
// does not exist exits 3 at once instead of following nothing forever.
func TestEventsUntilEndInterruptedOrMissing(t *testing.T) {
	t.Parallel()
	ns := redistest.Namespace(t)
	ctx := withTestTimeout(t, 60*time.Second)
	code, out := runCLI(t, ctx, nil, "submit", "../../examples/etl.yaml", "--redis", redistest.URL(t), "--namespace", ns)
	if code != ExitOK {
		t.Fatalf("submit: exit %d: %s", code, out)
	}
	run := strings.TrimSpace(lastLine(out))
	// No projector runs in ns: the run never ends.
	sctx, cancel := context.WithCancelCause(ctx)
	m, buf := newTestMain("", nil)
	done := make(chan int, 1)
	go func() {
		done <- m.exitCode(sctx, m.Run(sctx, []string{"events", run, "--follow", "--until-end", "--text", "--redis", redistest.URL(t), "--namespace", ns}))
	}()
	waitForText(t, buf, "run_submitted")
	cancel(&interrupted{sig: syscall.SIGINT})
	if code := <-done; code != 130 {
		t.Errorf("events --follow --until-end interrupted: exit %d, want 130\n%s", code, buf.String())
	}
	code, out = runCLI(t, ctx, nil, "events", "nosuch", "--follow", "--until-end", "--redis", redistest.URL(t), "--namespace", ns)
	if code != ExitError || !strings.Contains(out, "not found") {
		t.Errorf("events --follow --until-end of a missing run: exit %d, want %d and not found:\n%s", code, ExitError, out)
	}
}

// "graflow repair" of a run that does not exist (a typo) says so and exits
// 3, as other commands do: it said "not running, nothing to do" and exited
// 0.
func TestRepairOfAMissingRunExits3(t *testing.T) {
	t.Parallel()
	ctx := withTestTimeout(t, 30*time.Second)
	code, out := runCLI(t, ctx, nil, "repair", "nosuch", "--redis", redistest.URL(t), "--namespace", redistest.Namespace(t))
	if code != ExitError || !strings.Contains(out, "not found") {
		t.Errorf("repair of a missing run: exit %d, want %d and not found:\n%s", code, ExitError, out)
	}
}

// dlq requeue of a run that does not exist exits 3, as repair of one does
// (it exited 1, "requeues failed", as for a task not requeueable).
func TestDLQRequeueOfAMissingRunExits3(t *testing.T) {
	t.Parallel()
	ctx := withTestTimeout(t, 30*time.Second)
	code, out := runCLI(t, ctx, nil, "dlq", "requeue", "nosuch", "t", "--redis", redistest.URL(t), "--namespace", redistest.Namespace(t))
	if code != ExitError || !strings.Contains(out, "not found") {
		t.Errorf("dlq requeue of a missing run: exit %d, want %d and not found:\n%s", code, ExitError, out)
	}
}

// The real thing: the built binary gets SIGINT while it waits.
func TestWaitProcessInterrupted(t *testing.T) {
	t.Parallel()
	ns := redistest.Namespace(t)
	ctx := withTestTimeout(t, 120*time.Second)
	exe := filepath.Join(t.TempDir(), "graflow")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", exe, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	code, out := runCLI(t, ctx, nil, "submit", "../../examples/etl.yaml", "--redis", redistest.URL(t), "--namespace", ns)
	if code != ExitOK {
		t.Fatalf("submit: exit %d: %s", code, out)
	}
	run := strings.TrimSpace(lastLine(out))
	buf := &lockedBuffer{wrote: make(chan struct{}, 1)}
	cmd := exec.CommandContext(ctx, exe, "wait", run, "--follow", "--redis", redistest.URL(t), "--namespace", ns)
	cmd.Stdout, cmd.Stderr = buf, buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitForText(t, buf, "submitted: ")
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 130 {
		t.Errorf("graflow wait after SIGINT: %v, exit %d, want 130\n%s", err, code, buf.String())
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func withTestTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitForText blocks until buf holds want, failing after 30 s.
func waitForText(t *testing.T, buf *lockedBuffer, want string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for !strings.Contains(buf.String(), want) {
		select {
		case <-buf.wrote:
		case <-deadline:
			t.Fatalf("no %q within 30s:\n%s", want, buf.String())
		}
	}
}
