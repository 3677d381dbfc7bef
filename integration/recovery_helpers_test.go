package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/crashpoint"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/redis/go-redis/v9"
)

// Timing of the recovery tests' workers: short leases so that a dead
// worker's task is reclaimed within seconds.
const (
	recLease   = 2 * time.Second
	recReclaim = 500 * time.Millisecond
)

// stackOn is newStack on a Redis of the test's own (at url) instead of the
// shared one, for tests that kill and restart it.
func stackOn(t *testing.T, url string) *stack {
	t.Helper()
	binary(t)
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	r := redis.NewClient(opts)
	t.Cleanup(func() { _ = r.Close() })
	ns := redistest.Namespace(t)
	c, err := graflow.NewClient(graflow.Config{Redis: r, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	return &stack{t: t, ns: ns, url: url, rdb: r, keys: rdb.NewKeys(ns), client: c, logDir: t.TempDir()}
}

// spawn starts graflow (the graflowtest build) with args and extra
// environment variables (crash points); nil env inherits ours unchanged. It
// is killed (if still running) when the test ends; its log tail is printed
// if the test failed. It is what stack.start runs, with no extra
// environment.
func (s *stack) spawn(name string, env []string, args ...string) *proc {
	s.t.Helper()
	return s.spawnExe(binary(s.t), name, env, args...)
}

// spawnExe is spawn with the graflow binary at exe.
func (s *stack) spawnExe(exe, name string, env []string, args ...string) *proc {
	t := s.t
	t.Helper()
	path := filepath.Join(s.logDir, name+".log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, logPath: path, out: newLineLog(f), done: make(chan struct{})}
	p.cmd = exec.Command(exe, args...)
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = sysProcAttr()
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		_ = f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		_ = f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("---- %s (%s %v) log tail:\n%s", name, args[0], env, p.tail(40))
		}
		if raceEnabled && strings.Contains(p.out.String(), "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race:\n%s", name, p.tail(200))
		}
	})
	return p
}

// recWorker describes a worker process of the recovery tests.
type recWorker struct {
	concurrency int // default 2
	pools       []string
	lease       time.Duration // default recLease
	drain       time.Duration // default 30s
	poisonLimit int           // default the worker's
	hbEvents    time.Duration // --heartbeat-event-every, default the worker's
	crashAt     string        // crashpoint to arm, "" for none
	unfenced    bool          // --unsafe-no-fencing (graflowtest build only)
	production  bool          // run the build without tags (productionBinary)
	env         []string      // more environment variables
}

// recoveryWorker starts a worker with short leases and waits until it has
// registered.
func (s *stack) recoveryWorker(id string, o recWorker) *proc {
	s.t.Helper()
	if o.concurrency == 0 {
		o.concurrency = 2
	}
	if o.lease == 0 {
		o.lease = recLease
	}
	args := append([]string{"worker"}, s.common()...)
	args = append(args, "--id", id, "--concurrency", strconv.Itoa(o.concurrency),
		"--lease", o.lease.String(), "--reclaim-interval", recReclaim.String())
	if len(o.pools) > 0 {
		args = append(args, "--pools", strings.Join(o.pools, ","))
	}
	if o.drain > 0 {
		args = append(args, "--drain-timeout", o.drain.String())
	}
	if o.poisonLimit > 0 {
		args = append(args, "--poison-limit", strconv.Itoa(o.poisonLimit))
	}
	if o.hbEvents > 0 {
		args = append(args, "--heartbeat-event-every", o.hbEvents.String())
	}
	if o.unfenced {
		args = append(args, "--unsafe-no-fencing")
	}
	env := o.env
	if o.crashAt != "" {
		env = append(env, crashpoint.Env+"="+o.crashAt)
	}
	exe := binary(s.t)
	if o.production {
		exe = productionBinary(s.t)
	}
	p := s.spawnExe(exe, id, env, args...)
	p.waitLine(s.t, "worker started")
	return p
}

// recoveryProjector starts a projector with fast retries and a short feed
// takeover, optionally with a crash point armed, and waits until it is up.
func (s *stack) recoveryProjector(id, crashAt string) *proc {
	s.t.Helper()
	args := append([]string{"projector"}, s.common()...)
	args = append(args, "--id", id, "--retry-initial", "100ms", "--feed-reclaim-idle", "2s")
	var env []string
	if crashAt != "" {
		env = append(env, crashpoint.Env+"="+crashAt)
	}
	p := s.spawn(id, env, args...)
	p.waitLine(s.t, "projector started")
	return p
}

// await watches run's log (from its first event; XREAD BLOCK) until pred
// matches an event and returns it; the test fails with what it waited for.
func (s *stack) await(ctx context.Context, run, what string, pred func(events.Event) bool) events.Event {
	s.t.Helper()
	var got events.Event
	err := s.watch(ctx, run, func(e events.Event) bool {
		if pred(e) {
			got = e
			return true
		}
		return false
	})
	if err != nil {
		s.t.Fatalf("waiting for %s: %v\nlog so far:\n%s", what, err, timeline(s.readLog(context.Background(), run)))
	}
	return got
}

// awaitExit waits for p to exit and returns its exit code (-1 if a signal
// killed it).
func awaitExit(t testing.TB, ctx context.Context, p *proc) int {
	t.Helper()
	code, err := p.exitCode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// killedBy reports whether p was ended by sig.
func killedBy(p *proc, sig syscall.Signal) bool {
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// pending returns the number of pending queue messages on every band
// stream of pool.
func (s *stack) pending(ctx context.Context, pool string) map[string]int64 {
	s.t.Helper()
	out := map[string]int64{}
	for _, q := range s.keys.AllQueues(pool) {
		p, err := s.rdb.XPending(ctx, q, rdb.GroupWorkers).Result()
		if err != nil && !strings.Contains(err.Error(), "NOGROUP") {
			s.t.Fatalf("XPENDING %s: %v", q, err)
		}
		if p != nil && p.Count > 0 {
			out[q] = p.Count
		}
	}
	return out
}

// pendingTasks returns the task ids of the queue messages of pool that are
// pending (read and not acked), with their consumers.
func (s *stack) pendingTasks(ctx context.Context, pool string) map[string]string {
	s.t.Helper()
	out := map[string]string{}
	for _, q := range s.keys.AllQueues(pool) {
		ps, err := s.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: q, Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 1000}).Result()
		if err != nil && !strings.Contains(err.Error(), "NOGROUP") {
			s.t.Fatalf("XPENDING %s: %v", q, err)
		}
		for _, p := range ps {
			msgs, err := s.rdb.XRange(ctx, q, p.ID, p.ID).Result()
			if err != nil {
				s.t.Fatalf("XRANGE %s %s: %v", q, p.ID, err)
			}
			for _, m := range msgs {
				task, _ := m.Values[rdb.MsgTask].(string)
				out[task] = p.Consumer
			}
		}
	}
	return out
}

// queuedTasks returns the tasks of run that have a message on pool's queue
// streams (pending or not).
func (s *stack) queuedTasks(ctx context.Context, pool, run string) map[string]bool {
	s.t.Helper()
	out := map[string]bool{}
	for _, q := range s.keys.AllQueues(pool) {
		msgs, err := s.rdb.XRange(ctx, q, "-", "+").Result()
		if err != nil {
			s.t.Fatalf("XRANGE %s: %v", q, err)
		}
		for _, m := range msgs {
			if m.Values[rdb.MsgRun] == run {
				task, _ := m.Values[rdb.MsgTask].(string)
				out[task] = true
			}
		}
	}
	return out
}

// record returns the live lease record of task (HGET <ns>:{run}:state task).
//
// A succeeded run keeps only its log (its end deleted the state hash):
// its record is then the fold's.
func (s *stack) record(ctx context.Context, run, task string) string {
	s.t.Helper()
	v, err := s.rdb.HGet(ctx, s.keys.RunState(run), task).Result()
	if errors.Is(err, redis.Nil) {
		r, ferr := s.client.Fold(ctx, run)
		if ferr != nil || r.Status != projector.RunSucceeded || r.Task(task) == nil {
			s.t.Fatalf("HGET %s %s: no state hash, and the fold of the log is %v (%v), not a succeeded run with %s", s.keys.RunState(run), task, r, ferr, task)
		}
		return projector.RecordOf(r.Task(task)).String()
	}
	if err != nil {
		s.t.Fatalf("HGET %s %s: %v", s.keys.RunState(run), task, err)
	}
	return v
}

// stop SIGTERMs the processes and requires that each exits 0 (drained).
func stop(t testing.TB, ctx context.Context, ps ...*proc) {
	t.Helper()
	for _, p := range ps {
		p.signal(t, syscall.SIGTERM)
	}
	for _, p := range ps {
		if code := awaitExit(t, ctx, p); code != 0 {
			t.Fatalf("%s exited %d after SIGTERM, want 0:\n%s", p.name, code, p.tail(20))
		}
	}
}

// filter returns the events of type typ for task ("" = any task).
func filter(evs []events.Event, typ events.Type, task string) []events.Event {
	var out []events.Event
	for _, e := range evs {
		if e.Type == typ && (task == "" || e.Task == task) {
			out = append(out, e)
		}
	}
	return out
}

// body decodes e's body into a T.
func body[T any](t testing.TB, e events.Event) T {
	t.Helper()
	var b T
	if err := e.DecodeBody(&b); err != nil {
		t.Fatalf("%s body %s: %v", e.Type, e.Body, err)
	}
	return b
}

// timeline renders events one a line, for failure messages.
func timeline(evs []events.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "  %s %-22s %-10s a=%d e=%d w=%-10s %s\n", e.Time.Format("15:04:05.000"), e.Type, e.Task, e.Attempt, e.Epoch, e.Worker, e.Body)
	}
	return b.String()
}

// jsonOf decodes CLI output.
func jsonOf[T any](t testing.TB, out string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("decode %q: %v", out, err)
	}
	return v
}
