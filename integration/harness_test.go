// Package integration holds end-to-end tests: real graflow processes
// (projector, workers, the CLI) built from ./cmd/graflow, against a real
// Redis from internal/redistest. Each test isolates itself in its own
// namespace and synchronises on log events or process output, never on
// sleeps.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/replay"
	"github.com/redis/go-redis/v9"
)

// TestMain is redistest.Main (os.Exit(redistest.Wrap(m).Run()), so the
// container path is used when a Docker engine answers), plus removal of
// the graflow binaries built for the tests.
func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "graflow-integration-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "integration:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir = dir
		return redistest.Wrap(m).Run()
	}()
	os.Exit(code)
}

// A graflow binary, built once per test binary on first use.
type built struct {
	once sync.Once
	path string
	err  error
}

var (
	// binDir holds the built binaries; TestMain removes it.
	binDir string
	// testBin is built with -tags graflowtest: crash points armed by
	// GRAFLOW_TEST_CRASH_AT and "worker --unsafe-no-fencing" exist in it.
	// Every process of these tests runs it, unless a test asks for prodBin.
	testBin built
	// prodBin is built without tags, as users get it: the tests that prove
	// it cannot turn fencing off or crash on purpose run it.
	prodBin built
)

// binary returns the path of the graflowtest build of graflow (see testBin).
func binary(t testing.TB) string { return build(t, &testBin, "graflow-testhooks", "graflowtest") }

// productionBinary returns the path of graflow built without tags.
func productionBinary(t testing.TB) string { return build(t, &prodBin, "graflow", "") }

// build builds ./cmd/graflow into binDir/name with tags on first call (with
// -race when the tests run with -race, so the processes are checked too).
func build(t testing.TB, b *built, name, tags string) string {
	t.Helper()
	b.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			b.err = err
			return
		}
		path := filepath.Join(binDir, name)
		args := []string{"build", "-o", path}
		if raceEnabled {
			args = append(args, "-race")
		}
		if tags != "" {
			args = append(args, "-tags", tags)
		}
		args = append(args, "./cmd/graflow")
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
			return
		}
		b.path = path
		t.Logf("built %s (race=%v, tags=%q) in %v", name, raceEnabled, tags, time.Since(start).Round(time.Millisecond))
	})
	if b.err != nil {
		t.Fatalf("build %s: %v", name, b.err)
	}
	return b.path
}

// moduleRoot walks up from the working directory to the directory of go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// stack is one test's namespace on the shared Redis, with the processes it
// started and a client.
type stack struct {
	t      *testing.T
	ns     string
	url    string
	rdb    redis.UniversalClient
	keys   rdb.Keys
	client *graflow.Client
	logDir string
	// partitions is the namespace's partition count (0: the default); the
	// processes get it as --partitions.
	partitions int
	// lostWrites says Redis may have lost acknowledged writes (a
	// failover): verifyHistory then accepts outcomes rejected for claims
	// the log lost (replay.InvariantOptions).
	lostWrites bool
}

// newStack returns an empty stack in a fresh namespace; start processes
// with projector and worker.
func newStack(t *testing.T) *stack {
	t.Helper()
	binary(t)
	r := redistest.Client(t)
	ns := redistest.Namespace(t)
	c, err := graflow.NewClient(graflow.Config{Redis: r, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	return &stack{t: t, ns: ns, url: redistest.URL(t), rdb: r, keys: rdb.NewKeys(ns), client: c, logDir: t.TempDir()}
}

// common returns the connection flags of every command.
func (s *stack) common() []string {
	if s.partitions > 0 {
		return []string{"--redis", s.url, "--namespace", s.ns, "--partitions", strconv.Itoa(s.partitions)}
	}
	return []string{"--redis", s.url, "--namespace", s.ns}
}

// projector starts a projector process and waits until it is up.
func (s *stack) projector(id string) *proc {
	s.t.Helper()
	p := s.start(id, append([]string{"projector"}, append(s.common(), "--id", id)...)...)
	p.waitLine(s.t, "projector started")
	return p
}

// worker starts a worker process and waits until it has registered.
func (s *stack) worker(id string, concurrency int, pools ...string) *proc {
	s.t.Helper()
	p := s.startWorker(id, concurrency, pools...)
	p.waitLine(s.t, "worker started")
	return p
}

// workers starts n workers "w-1".."w-n" and waits until all registered.
func (s *stack) workers(n, concurrency int) []*proc {
	s.t.Helper()
	ps := make([]*proc, n)
	for i := range ps {
		ps[i] = s.startWorker("w-"+strconv.Itoa(i+1), concurrency)
	}
	for _, p := range ps {
		p.waitLine(s.t, "worker started")
	}
	return ps
}

func (s *stack) startWorker(id string, concurrency int, pools ...string) *proc {
	args := append([]string{"worker"}, s.common()...)
	args = append(args, "--id", id, "--concurrency", strconv.Itoa(concurrency))
	if len(pools) > 0 {
		args = append(args, "--pools", strings.Join(pools, ","))
	}
	return s.start(id, args...)
}

// cli runs the graflow CLI to completion and returns its output and exit code.
func (s *stack) cli(ctx context.Context, args ...string) (stdout, stderr string, code int) {
	s.t.Helper()
	cmd := exec.CommandContext(ctx, binary(s.t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		s.t.Fatalf("graflow %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), code
}

// proc is a graflow child process whose output goes to a log file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	out     *lineLog
	done    chan struct{} // closed when the process was reaped
	waitErr error
}

// start starts graflow with args. It is killed (if still running) when the
// test ends; its log's tail is printed if the test failed.
func (s *stack) start(name string, args ...string) *proc {
	s.t.Helper()
	return s.spawn(name, nil, args...)
}

// kill SIGKILLs the process if it still runs and reaps it.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// signal sends sig to the process.
func (p *proc) signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s: %v", p.name, err)
	}
}

// exitCode waits for the process to exit and returns its exit code (-1 if
// a signal killed it).
func (p *proc) exitCode(ctx context.Context) (int, error) {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), nil
	case <-ctx.Done():
		return 0, fmt.Errorf("%s still running: %w", p.name, ctx.Err())
	}
}

// waitLine waits until the process printed a line containing substr.
func (p *proc) waitLine(t testing.TB, substr string) string {
	t.Helper()
	return p.waitLineWith(t, substr)
}

// waitLineWith waits until the process printed a line containing every
// one of substrs (waitLine for one).
func (p *proc) waitLineWith(t testing.TB, substrs ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for from := 0; ; {
		lines, changed := p.out.since(from)
	next:
		for _, l := range lines {
			for _, sub := range substrs {
				if !strings.Contains(l, sub) {
					continue next
				}
			}
			return l
		}
		from += len(lines)
		select {
		case <-changed:
		case <-p.done:
			if lines, _ := p.out.since(from); len(lines) == 0 {
				t.Fatalf("%s exited (%v) before printing %q:\n%s", p.name, p.waitErr, substrs, p.tail(40))
			}
		case <-ctx.Done():
			t.Fatalf("%s did not print %q: %v\n%s", p.name, substrs, ctx.Err(), p.tail(40))
		}
	}
}

// tail returns the last n lines of the process's output.
func (p *proc) tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.out.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// lineLog is an io.Writer that copies a process's output to a file and
// keeps its complete lines, announcing each new line.
type lineLog struct {
	mu      sync.Mutex
	w       io.Writer
	all     bytes.Buffer
	partial []byte
	lines   []string
	changed chan struct{} // closed and replaced when lines grow
}

func newLineLog(w io.Writer) *lineLog { return &lineLog{w: w, changed: make(chan struct{})} }

func (l *lineLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all.Write(b)
	l.partial = append(l.partial, b...)
	grew := false
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.partial[:i]))
		l.partial = l.partial[i+1:]
		grew = true
	}
	if grew {
		close(l.changed)
		l.changed = make(chan struct{})
	}
	return l.w.Write(b)
}

// since returns the lines from index from on, and a channel closed when
// more arrive.
func (l *lineLog) since(from int) ([]string, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines[from:]...), l.changed
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.all.String()
}

// readLog returns every event of run's log, in stream order.
func (s *stack) readLog(ctx context.Context, run string) []events.Event {
	s.t.Helper()
	var out []events.Event
	start := "-"
	for {
		msgs, err := s.rdb.XRangeN(ctx, s.keys.RunLog(run), start, "+", 5000).Result()
		if err != nil {
			s.t.Fatalf("read log of %s: %v", run, err)
		}
		for _, m := range msgs {
			e, err := events.Decode(run, m.ID, m.Values)
			if err != nil {
				s.t.Fatalf("decode %s: %v", m.ID, err)
			}
			out = append(out, e)
		}
		if len(msgs) < 5000 {
			return out
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// verifyHistory reads run's log and checks it: every history invariant
// (replay.Analyze), CheckInvariants against the live state, and
// "graflow replay verify". It returns the log.
func (s *stack) verifyHistory(ctx context.Context, run string) []events.Event {
	s.t.Helper()
	evs := s.readLog(ctx, run)
	a, err := replay.Analyze(run, evs)
	if err != nil {
		s.t.Fatal(err)
	}
	if len(a.Problems) > 0 {
		s.t.Fatalf("history problems: %v", a.Problems)
	}
	state, err := s.rdb.HGetAll(ctx, s.keys.RunState(run)).Result()
	if err != nil {
		s.t.Fatal(err)
	}
	if v := replay.CheckInvariantsWith(evs, state, replay.InvariantOptions{LostWrites: s.lostWrites}); !v.OK() {
		s.t.Fatalf("invariants: %v", v.Problems)
	}
	if out, errOut, code := s.cli(ctx, append([]string{"replay", "verify", run}, s.common()...)...); code != 0 {
		s.t.Fatalf("graflow replay verify: exit %d\n%s%s", code, out, errOut)
	}
	return evs
}

// watch feeds run's events, from the first, to fn until fn returns true or
// ctx ends. It blocks on the log (XREAD BLOCK); it does not poll.
func (s *stack) watch(ctx context.Context, run string, fn func(events.Event) bool) error {
	last := "0"
	for {
		block := 2 * time.Second
		if dl, ok := ctx.Deadline(); ok {
			if d := time.Until(dl); d < block {
				block = d
			}
		}
		if block <= 0 || ctx.Err() != nil {
			return fmt.Errorf("watch run %s: %w", run, context.DeadlineExceeded)
		}
		res, err := s.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{s.keys.RunLog(run), last}, Count: 1000, Block: block}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return fmt.Errorf("watch run %s: %w", run, err)
		}
		for _, st := range res {
			for _, m := range st.Messages {
				last = m.ID
				e, err := events.Decode(run, m.ID, m.Values)
				if err != nil {
					return err
				}
				if fn(e) {
					return nil
				}
			}
		}
	}
}

// wait waits for run to end and requires that it succeeded.
func (s *stack) wait(ctx context.Context, run string) *graflow.RunInfo {
	s.t.Helper()
	info, err := s.client.Wait(ctx, run)
	if err != nil {
		s.t.Fatalf("wait for run %s: %v", run, err)
	}
	if !info.Succeeded() {
		s.t.Fatalf("run %s ended %s (failed task %q: %s)", run, info.Status, info.FailedTask, info.Cause)
	}
	return info
}

// nsKeys returns every key of the stack's namespace (SCAN MATCH "<ns>:*").
func (s *stack) nsKeys(ctx context.Context) []string {
	s.t.Helper()
	var keys []string
	iter := s.rdb.Scan(ctx, 0, s.ns+":*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		s.t.Fatalf("scan %s:*: %v", s.ns, err)
	}
	return keys
}

// runLog is a run's log, checked by checkLog.
type runLog struct {
	events  []events.Event
	spec    events.RunSubmittedBody
	claimed map[string]string          // task → worker of its accepted attempt
	results map[string]json.RawMessage // task → accepted result
	claims  []events.Event             // task_claimed events in log order
}

// workers returns the distinct workers that claimed tasks.
func (l *runLog) workers() map[string]int {
	out := map[string]int{}
	for _, e := range l.claims {
		out[e.Worker]++
	}
	return out
}

// checkLog checks the order invariants of a successful run's log:
//   - the log starts with run_submitted (the DAG);
//   - no task is claimed before it was dispatched (same attempt), nor
//     before every one of its dependencies succeeded (earlier in the log);
//   - no task is dispatched before its dependencies succeeded;
//   - every succeeded result belongs to a claim of that epoch by that worker;
//   - every task succeeded exactly once, with no failure, skip or rejection;
//   - run_succeeded appears once, after every task_succeeded, and no
//     decision follows it.
func checkLog(t *testing.T, evs []events.Event) *runLog {
	t.Helper()
	if len(evs) == 0 || evs[0].Type != events.RunSubmitted {
		t.Fatalf("log does not start with run_submitted: %d events", len(evs))
	}
	l := &runLog{events: evs, claimed: map[string]string{}, results: map[string]json.RawMessage{}}
	if err := evs[0].DecodeBody(&l.spec); err != nil {
		t.Fatal(err)
	}
	deps := map[string][]string{}
	for _, ts := range l.spec.Tasks {
		deps[ts.ID] = ts.Deps
	}
	type claim struct {
		epoch  int64
		worker string
	}
	dispatched := map[string]map[int]bool{}
	claims := map[string][]claim{}
	succeeded := map[string]int{}
	runDone := -1
	errs := 0
	fail := func(format string, args ...any) {
		if errs++; errs <= 20 {
			t.Errorf(format, args...)
		}
	}
	depsDone := func(i int, e events.Event) {
		for _, d := range deps[e.Task] {
			if succeeded[d] == 0 {
				fail("event %d %s of %s (seq %s): dependency %s has not succeeded yet", i, e.Type, e.Task, e.Seq, d)
			}
		}
	}
	for i, e := range evs[1:] {
		i++
		if runDone >= 0 {
			switch e.Type {
			case events.TaskDispatched, events.TaskSkipped, events.TaskRetryScheduled, events.TaskSucceeded,
				events.RunSucceeded, events.RunFailed, events.RunCancelled, events.TasksAdded:
				fail("event %d %s of %q after run_succeeded (event %d)", i, e.Type, e.Task, runDone)
			}
		}
		if _, known := deps[e.Task]; e.Task != "" && !known {
			fail("event %d %s of unknown task %q", i, e.Type, e.Task)
			continue
		}
		switch e.Type {
		case events.TaskDispatched:
			depsDone(i, e)
			if dispatched[e.Task] == nil {
				dispatched[e.Task] = map[int]bool{}
			}
			dispatched[e.Task][e.Attempt] = true
		case events.TaskClaimed:
			if !dispatched[e.Task][e.Attempt] {
				fail("event %d: %s claimed (attempt %d) by %s before it was dispatched", i, e.Task, e.Attempt, e.Worker)
			}
			depsDone(i, e)
			if e.Worker == "" {
				fail("event %d: task_claimed of %s has no worker", i, e.Task)
			}
			claims[e.Task] = append(claims[e.Task], claim{e.Epoch, e.Worker})
			l.claims = append(l.claims, e)
		case events.TaskSucceeded:
			succeeded[e.Task]++
			ok := false
			for _, c := range claims[e.Task] {
				ok = ok || (c.epoch == e.Epoch && c.worker == e.Worker)
			}
			if !ok {
				fail("event %d: result of %s by %s (epoch %d) matches no claim", i, e.Task, e.Worker, e.Epoch)
			}
			var body events.TaskSucceededBody
			if err := e.DecodeBody(&body); err != nil {
				fail("event %d: %v", i, err)
			}
			l.results[e.Task] = body.Result
			l.claimed[e.Task] = e.Worker
		case events.RunSucceeded:
			if runDone >= 0 {
				fail("event %d: second run_succeeded", i)
			}
			runDone = i
		case events.TaskFailed, events.TaskTimedOut, events.TaskSkipped, events.ResultRejected, events.RunFailed, events.RunCancelled:
			fail("event %d: unexpected %s of %q by %s: %s", i, e.Type, e.Task, e.Worker, e.Body)
		}
	}
	for _, ts := range l.spec.Tasks {
		if n := succeeded[ts.ID]; n != 1 {
			fail("task %s has %d task_succeeded events, want exactly 1", ts.ID, n)
		}
	}
	if runDone < 0 {
		fail("no run_succeeded in %d events", len(evs))
	}
	if errs > 20 {
		t.Errorf("... %d more problems", errs-20)
	}
	if t.Failed() {
		t.FailNow()
	}
	return l
}

// number decodes a JSON number.
func number(t testing.TB, raw json.RawMessage) float64 {
	t.Helper()
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatalf("result %s is not a number: %v", raw, err)
	}
	return f
}

// withTimeout returns a context for t bounded by d.
func withTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
