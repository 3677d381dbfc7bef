package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redisserver"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker"
	"github.com/redis/go-redis/v9"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// buildGraflow builds this command into a temporary directory of t:
// "graflow dev" starts its workers as child processes of Main.Exe.
func buildGraflow(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	exe := filepath.Join(t.TempDir(), "graflow")
	if out, err := exec.Command(gobin, "build", "-o", exe, ".").CombinedOutput(); err != nil {
		t.Fatalf("build graflow: %v\n%s", err, out)
	}
	return exe
}

// lockedBuffer is a bytes.Buffer safe for the concurrent writes of a
// command and a test reading it.
// Writes signal wrote, so a test can wait for output without polling.
type lockedBuffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	wrote chan struct{} // capacity 1
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case l.wrote <- struct{}{}:
	default:
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTestMain(exe string, env map[string]string) (*Main, *lockedBuffer) {
	out := &lockedBuffer{wrote: make(chan struct{}, 1)}
	return &Main{Stdin: strings.NewReader(""), Stdout: out, Stderr: out, Getenv: func(k string) string { return env[k] }, Exe: exe}, out
}

// checkDemoOutput checks what "graflow dev" printed for a successful demo.
func checkDemoOutput(t *testing.T, out string) {
	t.Helper()
	for _, want := range []string{
		"succeeded on", "retry (attempt 2)", "[8/8 succeeded | 0 running | 0 pending]",
		"load = " + demoResult, "graflow status ",
		"dev-worker-1 exit 0", "dev-worker-2 exit 0", "dev-worker-3 exit 0", "projector  stopped",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestDev(t *testing.T) {
	t.Parallel()
	exe := buildGraflow(t) // removed after the parallel subtests

	t.Run("runs the demo on worker processes against --redis", func(t *testing.T) {
		t.Parallel()
		ns := redistest.Namespace(t)
		m, out := newTestMain(exe, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		args := []string{"dev", "--redis", redistest.URL(t), "--namespace", ns, "--data", t.TempDir(), "--workers", "3", "--concurrency", "2"}
		if err := m.Run(ctx, args); err != nil {
			t.Fatalf("graflow dev: %v\n%s", err, out)
		}
		checkDemoOutput(t, out.String())

		// The run, as folded from its log in Redis.
		c := redistest.Client(t)
		keys := rdb.NewKeys(ns)
		runs, err := c.ZRange(ctx, keys.Runs(), 0, -1).Result()
		if err != nil || len(runs) != 1 {
			t.Fatalf("runs in %s = %v, %v; want one", keys.Runs(), runs, err)
		}
		cl, err := graflow.NewClient(graflow.Config{Redis: c, Namespace: ns})
		if err != nil {
			t.Fatal(err)
		}
		info, err := cl.Status(ctx, runs[0])
		if err != nil {
			t.Fatal(err)
		}
		if !info.Succeeded() {
			t.Fatalf("run %s: %+v", info.Status, info)
		}
		if got := string(info.Task("load").Result); got != demoResult {
			t.Errorf("load result = %s, want %s", got, demoResult)
		}
		if got := info.Task("transform-6").Attempt; got != 2 {
			t.Errorf("flaky transform-6 attempt = %d, want 2 (one retry)", got)
		}
		// Workers drained and deregistered.
		if n, err := c.SCard(ctx, keys.Workers()).Result(); err != nil || n != 0 {
			t.Errorf("registered workers after dev = %d, %v; want 0", n, err)
		}
	})

	t.Run("embeds redis-server with AOF in the data directory", func(t *testing.T) {
		t.Parallel()
		if _, err := redisserver.LookPath(); err != nil {
			t.Skip(err)
		}
		data := t.TempDir()
		m, out := newTestMain(exe, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := m.Run(ctx, []string{"dev", "--data", data, "--embed", "redis-server"}); err != nil {
			t.Fatalf("graflow dev: %v\n%s", err, out)
		}
		checkDemoOutput(t, out.String())
		if !strings.Contains(out.String(), "redis-server child process") {
			t.Errorf("output does not name the embedded redis-server:\n%s", out)
		}
		if _, err := os.Stat(filepath.Join(data, "appendonlydir")); err != nil {
			t.Errorf("no AOF in the data directory: %v", err)
		}
	})

	t.Run("sets aside the data of an older key layout and runs the demo", func(t *testing.T) {
		t.Parallel()
		if _, err := redisserver.LookPath(); err != nil {
			t.Skip(err)
		}
		data := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// What an earlier release's "graflow dev" left: layout-1 keys in
		// the AOF of the data directory.
		srv, err := redisserver.Start(ctx, redisserver.Config{Dir: data, AOF: true, Fsync: redisserver.FsyncAlways})
		if err != nil {
			t.Fatal(err)
		}
		old := redis.NewClient(&redis.Options{Addr: srv.Addr()})
		if err := old.ZAdd(ctx, "graflow:runs", redis.Z{Score: 1, Member: "R1"}).Err(); err != nil {
			t.Fatal(err)
		}
		if err := old.XAdd(ctx, &redis.XAddArgs{Stream: "graflow:{R1}:log", Values: []any{"id", "x"}}).Err(); err != nil {
			t.Fatal(err)
		}
		_ = old.Close()
		if err := srv.Stop(); err != nil {
			t.Fatal(err)
		}

		m, out := newTestMain(exe, nil)
		if err := m.Run(ctx, []string{"dev", "--data", data, "--embed", "redis-server"}); err != nil {
			t.Fatalf("graflow dev on an older layout's data: %v\n%s", err, out)
		}
		checkDemoOutput(t, out.String())
		if !strings.Contains(out.String(), "moving that data aside") {
			t.Errorf("output does not say the older data was set aside:\n%s", out)
		}
		aside, _ := filepath.Glob(filepath.Join(data, "older-layout-*", "appendonlydir"))
		if len(aside) != 1 {
			t.Errorf("the older AOF is not in an older-layout-* directory: %v", aside)
		}
	})

	t.Run("falls back to the in-process Redis", func(t *testing.T) {
		t.Parallel()
		m, out := newTestMain(exe, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := m.Run(ctx, []string{"dev", "--data", t.TempDir(), "--embed", "memory"}); err != nil {
			t.Fatalf("graflow dev: %v\n%s", err, out)
		}
		checkDemoOutput(t, out.String())
		if !strings.Contains(out.String(), "in-process (miniredis)") {
			t.Errorf("output does not name the in-process Redis:\n%s", out)
		}
	})

	t.Run("stops the stack cleanly when cancelled", func(t *testing.T) {
		t.Parallel()
		m, out := newTestMain(exe, nil)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() {
			done <- m.Run(ctx, []string{"dev", "--redis", redistest.URL(t), "--namespace", redistest.Namespace(t), "--data", t.TempDir(), "--no-demo"})
		}()
		// Cancel once the stack says it is up.
		up := time.NewTimer(15 * time.Second)
		defer up.Stop()
		for !strings.Contains(out.String(), "The stack is up") {
			select {
			case err := <-done:
				t.Fatalf("dev returned before the stack was up: %v\n%s", err, out)
			case <-up.C:
				t.Fatalf("stack not up after 15s:\n%s", out)
			case <-out.wrote:
			}
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("dev: %v\n%s", err, out)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("dev did not stop within 20s of cancel:\n%s", out)
		}
		for _, want := range []string{"dev-worker-1 exit 0", "dev-worker-2 exit 0", "dev-worker-3 exit 0", "projector  stopped"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("rejects bad flags with a usage error", func(t *testing.T) {
		t.Parallel()
		for _, args := range [][]string{
			{"dev", "--workers", "0"},
			{"dev", "--concurrency", "0"},
			{"dev", "--embed", "docker"},
			{"dev", "--namespace", "a b"},
			{"dev", "extra"},
		} {
			m, out := newTestMain(exe, nil)
			err := m.Run(context.Background(), args)
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != ExitUsage {
				t.Errorf("%v: err = %v, want exit code %d\n%s", args, err, ExitUsage, out)
			}
		}
	})
}

// TestDevDataDirLock checks that two stacks cannot share a data directory.
func TestDevDataDirLock(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	unlock, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := lockDir(dir); err == nil && runtime.GOOS == "linux" {
		t.Fatal("second lock of the same data directory succeeded")
	}
}

// TestDevDemoWorkflowIsValid checks the demo's DAG without Redis.
func TestDevDemoWorkflowIsValid(t *testing.T) {
	t.Parallel()
	spec, err := demoWorkflow().Spec(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Tasks) != 8 {
		t.Fatalf("demo has %d tasks, want 8", len(spec.Tasks))
	}
	load := spec.Tasks[len(spec.Tasks)-1]
	if load.ID != "load" || len(load.Deps) != 6 {
		t.Fatalf("load = %+v, want 6 deps", load)
	}
}

// TestReadmeQuickStart runs the README's Go quick start (same code, with the
// test's Redis and namespace) so the README stays accurate.
func TestReadmeQuickStart(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// --- README quick start, from here ---
	wf := graflow.NewWorkflow("greet")
	upper := wf.Task("upper", "strings.upper").Args(map[string]string{"text": "hello"})
	wf.Task("exclaim", "strings.exclaim").After(upper).Retries(2).Timeout(time.Minute)

	w, err := worker.New(worker.Config{Redis: rdb, Namespace: ns, ID: "worker-1", Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("strings.upper", worker.HandlerFunc(func(ctx context.Context, t *worker.Task) (any, error) {
		var args struct {
			Text string `json:"text"`
		}
		if err := t.BindArgs(&args); err != nil {
			return nil, err // a bad argument fails for good (no retry)
		}
		return strings.ToUpper(args.Text), nil
	}))
	w.HandleFunc("strings.exclaim", func(ctx context.Context, t *worker.Task) (any, error) {
		var s string
		if err := t.BindUpstream("upper", &s); err != nil {
			return nil, err
		}
		return s + "!", nil
	})
	p, err := projector.New(projector.Config{Redis: rdb, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = w.Run(runCtx) })
	wg.Go(func() { _ = p.Run(runCtx) })
	defer func() { stop(); wg.Wait() }()

	client, err := graflow.NewClient(graflow.Config{Redis: rdb, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	run, err := client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := client.Wait(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	// --- to here ---

	var got string
	if err := json.Unmarshal(info.Task("exclaim").Result, &got); err != nil || info.Status != "succeeded" || got != "HELLO!" {
		t.Fatalf("run %s, exclaim = %s (%v); want succeeded, \"HELLO!\"", info.Status, info.Task("exclaim").Result, err)
	}
}
