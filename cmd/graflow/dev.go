package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redisserver"
	"github.com/graflow-go/graflow/internal/redisurl"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

func init() {
	register(&command{
		name:    "dev",
		summary: "run a local stack (embedded Redis, projector, worker processes) and a demo workflow with live progress",
		long: `Runs a complete local stack and, unless --no-demo, an ETL demo workflow with
live progress. With no --redis flag and no REDIS_URL it embeds Redis: a
redis-server child process with AOF (appendfsync always) in --data when
redis-server is installed, otherwise an in-process Redis (in memory).
Ctrl-C stops everything.`,
		setup: runDev,
	})
}

// Defaults of "graflow dev".
const (
	DevDefaultData        = ".data/dev"
	DevDefaultWorkers     = 3
	DevDefaultConcurrency = 4

	// Embedded Redis choices (--embed).
	embedAuto        = "auto"         // redis-server if installed, else in-process
	embedRedisServer = "redis-server" // a redis-server child process with AOF
	embedMemory      = "memory"       // in-process miniredis, nothing persisted

	devWorkerPrefix = "dev-worker-"
	devProjectorID  = "dev-projector"
	// devWorkerReady is the log line a worker process prints once it takes tasks.
	devWorkerReady = "worker started"

	devReadyTimeout = 30 * time.Second // worker processes start
	devWorkerDrain  = 10 * time.Second // --drain-timeout passed to the workers
	devStopTimeout  = 15 * time.Second // SIGTERM → SIGKILL
	devBlock        = time.Second      // XREAD BLOCK: bounds Ctrl-C latency only
)

// devOptions are the parsed flags of "graflow dev".
type devOptions struct {
	c           common
	data        string
	workers     int
	concurrency int
	embed       string
	port        int
	noDemo      bool
	keep        bool
	external    bool // --redis given or REDIS_URL set: no embedded Redis
}

// devFlags binds the flags of "graflow dev" to o.
func devFlags(fs *pflag.FlagSet, o *devOptions) {
	fs.StringVar(&o.data, "data", DevDefaultData, "data directory: the embedded Redis's AOF and the stack's logs")
	fs.IntVar(&o.workers, "workers", DevDefaultWorkers, "worker processes to start")
	fs.IntVar(&o.concurrency, "concurrency", DevDefaultConcurrency, "tasks each worker runs at once")
	fs.StringVar(&o.embed, "embed", embedAuto, "embedded Redis: auto (redis-server if installed, else in-process), redis-server, or memory")
	fs.IntVar(&o.port, "port", 0, "port of the embedded Redis on 127.0.0.1 (0 picks a free one)")
	fs.BoolVar(&o.noDemo, "no-demo", false, "run the stack until Ctrl-C without the demo")
	fs.BoolVar(&o.keep, "keep", false, "keep the stack running after the demo until Ctrl-C")
}

// checkDev completes and checks o once the flags are parsed.
func checkDev(m *Main, fs *pflag.FlagSet, c *common, o *devOptions, args []string) error {
	o.c = *c
	if len(args) != 0 {
		return usagef("dev takes no arguments (got %q)", args)
	}
	if fs.Changed("redis") || m.Getenv("REDIS_URL") != "" || m.Getenv(envName("redis")) != "" {
		o.external = true
	}
	var errs []error
	if o.workers < 1 {
		errs = append(errs, fmt.Errorf("--workers %d: want at least 1", o.workers))
	}
	if o.concurrency < 1 {
		errs = append(errs, fmt.Errorf("--concurrency %d: want at least 1", o.concurrency))
	}
	switch o.embed {
	case embedAuto, embedRedisServer, embedMemory:
	default:
		errs = append(errs, fmt.Errorf("--embed %q: want %s, %s or %s", o.embed, embedAuto, embedRedisServer, embedMemory))
	}
	if o.port < 0 || o.port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d out of range", o.port))
	}
	if err := rdb.ValidNamespace(o.c.namespace); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return withCode(ExitUsage, err)
	}
	return nil
}

// runDev is "graflow dev": start the stack, run the demo, stop the stack.
func runDev(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	o := &devOptions{}
	devFlags(fs, o)
	return func(ctx context.Context, args []string) (err error) {
		if err := checkDev(m, fs, c, o, args); err != nil {
			return err
		}
		return o.run(ctx, m)
	}
}

func (o *devOptions) run(ctx context.Context, m *Main) (err error) {
	s := &devStack{m: m, o: o}
	defer func() { err = errors.Join(err, s.stop()) }()
	if err := s.start(ctx); err != nil {
		return err
	}
	if o.noDemo {
		s.printf("\nThe stack is up (Ctrl-C stops it). Submit work, e.g.:\n  %s\n", s.cli("submit", "--wait", "examples/etl.yaml"))
		<-ctx.Done()
		return nil
	}
	err = s.demo(ctx)
	if o.keep && ctx.Err() == nil {
		s.printf("\n--keep: the stack keeps running (Ctrl-C stops it). Redis: %s\n", s.url)
		<-ctx.Done()
	}
	return err
}

// devStack is the running local stack. Its methods are called from one
// goroutine, except printf and the worker watchers.
type devStack struct {
	m *Main
	o *devOptions

	outMu sync.Mutex

	dir     string   // absolute data directory
	logFile *os.File // dev.log: projector and redis-server
	log     zerolog.Logger
	unlock  func()

	url  string
	desc string
	srv  *redisserver.Server
	mini *miniredis.Miniredis
	rdb  redis.UniversalClient

	projStop func()
	projDone chan struct{}

	workers  []*devWorker
	stopping atomic.Bool
	stopped  bool
}

// devWorker is one worker child process.
type devWorker struct {
	id      string
	logPath string
	cmd     *exec.Cmd
	logFile *os.File
	ready   chan struct{} // closed when the worker logged devWorkerReady
	done    chan struct{} // closed when the process exited
	err     error         // cmd.Wait's error, valid after done
}

func (s *devStack) printf(format string, args ...any) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	fmt.Fprintf(s.m.Stdout, format, args...)
}

// cli formats "graflow <command> --redis URL [--namespace NS] <rest>"
// against this stack's Redis (flags go before arguments).
func (s *devStack) cli(command string, rest ...string) string {
	args := []string{s.exeName(), command, "--redis", redisurl.Redact(s.url)}
	if s.o.c.namespace != rdb.DefaultNamespace {
		args = append(args, "--namespace", s.o.c.namespace)
	}
	if s.o.c.partitions > 1 {
		args = append(args, "--partitions", strconv.Itoa(s.o.c.partitions))
	}
	return strings.Join(append(args, rest...), " ")
}

// exeName is how the user can run this binary: "graflow" when PATH finds
// it, "./bin/graflow" under the working directory, else its full path.
func (s *devStack) exeName() string {
	if s.m.Exe == "" {
		return "graflow"
	}
	if p, err := exec.LookPath("graflow"); err == nil && sameFile(p, s.m.Exe) {
		return "graflow"
	}
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, s.m.Exe); err == nil && !strings.HasPrefix(rel, "..") {
			return "./" + rel
		}
	}
	return s.m.Exe
}

func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

func (s *devStack) start(ctx context.Context) error {
	dir, err := filepath.Abs(s.o.data)
	if err != nil {
		return withCode(ExitUsage, fmt.Errorf("--data %s: %w", s.o.data, err))
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	s.dir = dir
	if s.unlock, err = lockDir(dir); err != nil {
		return err
	}
	if s.logFile, err = os.OpenFile(filepath.Join(dir, "dev.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640); err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	lvl, err := zerolog.ParseLevel(s.o.c.logLevel)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	s.log = zerolog.New(zerolog.ConsoleWriter{Out: s.logFile, TimeFormat: "15:04:05.000", NoColor: true}).
		Level(lvl).With().Timestamp().Logger()

	s.printf("graflow dev: data and logs in %s\n", dir)
	if err := s.startRedis(ctx); err != nil {
		return err
	}
	s.printf("  redis      %s\n", s.desc)

	c := s.o.c
	c.redisURL = s.url
	if s.rdb, err = c.connect(ctx); err != nil {
		return err
	}
	if err := s.checkLayout(ctx, c); err != nil {
		return err
	}
	if err := s.startProjector(); err != nil {
		return err
	}
	s.printf("  projector  in-process (%s), log %s\n", devProjectorID, s.logFile.Name())
	s.printf("  schedules  in-process scheduler: recurring runs of \"graflow schedule add\" fire here\n")
	return s.startWorkers(ctx)
}

// checkLayout makes sure the embedded Redis's data is of this release's key
// layout. Data an older release wrote (layout 1) is set aside, not
// deleted: its AOF moves to a subdirectory of the data directory, and the
// stack starts on an empty Redis. An external Redis is left alone (its
// workers then say what is wrong).
func (s *devStack) checkLayout(ctx context.Context, c common) error {
	err := rdb.NewP(s.rdb, c.namespace, c.partitions).CheckLayout(ctx)
	if s.srv == nil || !errors.Is(err, rdb.ErrLayout) {
		return err
	}
	aside := filepath.Join(s.dir, fmt.Sprintf("older-layout-%d", time.Now().Unix()))
	s.printf("  redis      %v\n             moving that data aside to %s and starting on an empty Redis\n", err, aside)
	_ = s.rdb.Close()
	if err := s.srv.Stop(); err != nil {
		return fmt.Errorf("stop the embedded Redis: %w", err)
	}
	s.srv = nil
	if err := os.MkdirAll(aside, 0o750); err != nil {
		return err
	}
	for _, name := range []string{"appendonlydir", "appendonly.aof", "dump.rdb"} {
		if err := os.Rename(filepath.Join(s.dir, name), filepath.Join(aside, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("set the older data aside: %w", err)
		}
	}
	if err := s.startRedis(ctx); err != nil {
		return err
	}
	s.printf("  redis      %s\n", s.desc)
	c.redisURL = s.url
	if s.rdb, err = c.connect(ctx); err != nil {
		return err
	}
	return rdb.NewP(s.rdb, c.namespace, c.partitions).CheckLayout(ctx)
}

// startRedis picks the Redis: --redis/REDIS_URL, else a redis-server child
// process with AOF in the data directory, else an in-process miniredis.
func (s *devStack) startRedis(ctx context.Context) error {
	if s.o.external {
		s.url, s.desc = s.o.c.redisURL, "external, "+redisurl.Redact(s.o.c.redisURL)+" (--redis / REDIS_URL; nothing embedded)"
		return nil
	}
	if s.o.embed != embedMemory {
		srv, err := redisserver.Start(ctx, redisserver.Config{
			Dir: s.dir, Port: s.o.port, AOF: true, Fsync: redisserver.FsyncAlways,
			Logger: s.log.With().Str("component", "redis-server").Logger(),
		})
		switch {
		case err == nil:
			s.srv, s.url = srv, srv.URL()
			s.desc = fmt.Sprintf("redis-server child process (pid %d) at %s, AOF appendfsync always in %s", srv.PID(), srv.URL(), s.dir)
			return nil
		case !errors.Is(err, redisserver.ErrNotFound) || s.o.embed == embedRedisServer:
			return fmt.Errorf("embedded Redis: %w", err)
		}
		s.printf("  redis-server is not installed (Debian/Ubuntu: apt-get install redis-server); using the in-process Redis\n")
	}
	mini := miniredis.NewMiniRedis()
	addr := "127.0.0.1:0"
	if s.o.port != 0 {
		addr = "127.0.0.1:" + strconv.Itoa(s.o.port)
	}
	if err := mini.StartAddr(addr); err != nil {
		return fmt.Errorf("in-process Redis: %w", err)
	}
	s.mini, s.url = mini, "redis://"+mini.Addr()
	s.desc = fmt.Sprintf("in-process (miniredis) at %s, in memory only: nothing survives exit", s.url)
	return nil
}

func (s *devStack) startProjector() error {
	l := s.log.With().Str("component", "projector").Logger()
	p, err := projector.New(projector.Config{
		Redis: s.rdb, Namespace: s.o.c.namespace, NamespacePartitions: s.o.c.partitions, ID: devProjectorID, FeedBlock: devBlock, Logger: &l,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.projStop, s.projDone = cancel, make(chan struct{})
	schedDone := s.startSchedules(ctx) // the scheduler of recurring runs (schedule_cmds.go), stopped with the projector
	go func() {
		defer close(s.projDone)
		defer func() { <-schedDone }()
		if err := p.Run(ctx); err != nil {
			l.Error().Err(err).Msg("projector stopped")
		}
	}()
	return nil
}

// startWorkers starts the worker processes and waits until each one takes
// tasks (it logs devWorkerReady), exits, or ctx ends.
func (s *devStack) startWorkers(ctx context.Context) error {
	if s.m.Exe == "" {
		return errors.New("cannot start workers: the path of the graflow binary is unknown (Main.Exe)")
	}
	lvl := "info" // the log goes to a file; keep the start line visible
	if trimLower(s.o.c.logLevel) == "debug" {
		lvl = "debug"
	}
	for i := 1; i <= s.o.workers; i++ {
		w := &devWorker{id: devWorkerPrefix + strconv.Itoa(i), ready: make(chan struct{}), done: make(chan struct{})}
		w.logPath = filepath.Join(s.dir, w.id+".log")
		f, err := os.Create(w.logPath)
		if err != nil {
			return fmt.Errorf("worker log: %w", err)
		}
		w.logFile = f
		w.cmd = exec.Command(s.m.Exe, "worker",
			"--redis", s.url, "--namespace", s.o.c.namespace, "--partitions", strconv.Itoa(s.o.c.partitions), "--id", w.id,
			"--concurrency", strconv.Itoa(s.o.concurrency), "--drain-timeout", devWorkerDrain.String(),
			"--log-level", lvl)
		out := &markerWriter{w: f, marker: []byte(devWorkerReady), found: w.ready}
		w.cmd.Stdout, w.cmd.Stderr = out, out
		w.cmd.SysProcAttr = devSysProcAttr()
		w.cmd.WaitDelay = time.Second
		if err := w.cmd.Start(); err != nil {
			_ = f.Close()
			return fmt.Errorf("start worker %s: %w", w.id, err)
		}
		s.workers = append(s.workers, w)
		go s.watch(w)
	}
	timer := time.NewTimer(devReadyTimeout)
	defer timer.Stop()
	for _, w := range s.workers {
		select {
		case <-w.ready:
		case <-w.done:
			return fmt.Errorf("worker %s exited during startup (%w); its log %s ends with:\n%s", w.id, w.err, w.logPath, tail(w.logPath, 10))
		case <-timer.C:
			return fmt.Errorf("worker %s did not start within %s; see %s", w.id, devReadyTimeout, w.logPath)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	pids := make([]string, len(s.workers))
	for i, w := range s.workers {
		pids[i] = fmt.Sprintf("%s (pid %d)", w.id, w.cmd.Process.Pid)
	}
	s.printf("  workers    %d processes × concurrency %d: %s\n             logs %s\n",
		len(s.workers), s.o.concurrency, strings.Join(pids, ", "), filepath.Join(s.dir, devWorkerPrefix+"*.log"))
	return nil
}

// watch waits for w's process and reports an exit we did not ask for.
func (s *devStack) watch(w *devWorker) {
	w.err = w.cmd.Wait()
	_ = w.logFile.Close()
	close(w.done)
	if !s.stopping.Load() {
		s.printf("!! worker %s exited unexpectedly (%s); its log %s ends with:\n%s\n", w.id, exitDesc(w.cmd, w.err), w.logPath, tail(w.logPath, 10))
	}
}

// liveWorkers counts worker processes that have not exited.
func (s *devStack) liveWorkers() int {
	n := 0
	for _, w := range s.workers {
		select {
		case <-w.done:
		default:
			n++
		}
	}
	return n
}

// stop stops the workers (SIGTERM: they drain and exit 0), the projector
// and the embedded Redis, and reports how each ended. It is idempotent.
func (s *devStack) stop() error {
	if s.stopped {
		return nil
	}
	s.stopped = true
	s.stopping.Store(true)
	var errs []error
	if len(s.workers) > 0 {
		s.printf("\nstopping: SIGTERM to %d worker processes...\n", len(s.workers))
		for _, w := range s.workers {
			_ = w.cmd.Process.Signal(syscall.SIGTERM)
		}
		deadline := time.NewTimer(devStopTimeout)
		defer deadline.Stop()
		codes := make([]string, 0, len(s.workers))
		for _, w := range s.workers {
			select {
			case <-w.done:
			case <-deadline.C:
				_ = w.cmd.Process.Kill()
				<-w.done
			}
			codes = append(codes, w.id+" "+exitDesc(w.cmd, w.err))
			if w.err != nil {
				errs = append(errs, fmt.Errorf("worker %s: %s (log %s)", w.id, exitDesc(w.cmd, w.err), w.logPath))
			}
		}
		s.printf("  workers    %s\n", strings.Join(codes, ", "))
	}
	if s.projStop != nil {
		s.projStop()
		<-s.projDone
		s.printf("  projector  stopped\n")
	}
	if s.rdb != nil {
		_ = s.rdb.Close()
	}
	if s.srv != nil {
		if err := s.srv.Stop(); err != nil {
			errs = append(errs, err)
		}
		s.printf("  redis      redis-server stopped; its AOF stays in %s\n", s.dir)
	}
	if s.mini != nil {
		s.mini.Close()
		s.printf("  redis      in-process Redis stopped (its data is gone)\n")
	}
	if s.logFile != nil {
		_ = s.logFile.Close()
	}
	if s.unlock != nil {
		s.unlock()
	}
	return errors.Join(errs...)
}

// Expected result of the demo's load task: the sum of the transforms' values.
const demoResult = "21"

// demoWorkflow is the ETL demo: extract, six parallel transforms (five
// sleeps of a few hundred ms and one flaky task that fails its first
// attempt and succeeds on the retry), and a load that sums them.
func demoWorkflow() *graflow.Workflow {
	wf := graflow.NewWorkflow("etl-demo")
	extract := wf.Task("extract", builtin.Echo).Args(map[string]any{"value": []int{1, 2, 3, 4, 5, 6}})
	var transforms []*graflow.Task
	for i := 1; i <= 5; i++ {
		transforms = append(transforms, wf.Task(fmt.Sprintf("transform-%d", i), builtin.Sleep).
			Args(map[string]any{"ms": 200 + 100*i, "value": i}))
	}
	transforms = append(transforms, wf.Task("transform-6", builtin.Flaky).
		Args(map[string]any{"fail": 1, "value": 6}).Retries(2))
	wf.Parallel(transforms...).After(extract).Then(wf.Task("load", builtin.Sum))
	return wf
}

// demo submits the demo workflow, follows its log until the run ends, and
// prints the outcome.
func (s *devStack) demo(ctx context.Context) error {
	cl, err := graflow.NewClient(graflow.Config{Redis: s.rdb, Namespace: s.o.c.namespace, NamespacePartitions: s.o.c.partitions})
	if err != nil {
		return err
	}
	wf := demoWorkflow()
	started := time.Now()
	run, err := cl.Submit(ctx, wf, nil)
	if err != nil {
		return err
	}
	s.printf("\ndemo: workflow %s, run %s\n      extract → transform-1..6 (in parallel; transform-6 fails once, then retries) → load\n\n", wf.Name(), run)
	f, err := s.follow(ctx, run)
	if err != nil {
		if ctx.Err() != nil {
			s.printf("\ninterrupted: run %s is unfinished; its events are in Redis", run)
			if s.srv != nil {
				s.printf(" (AOF in %s: \"graflow dev --no-demo --port %d\" resumes it)", s.dir, s.srv.Port())
			}
			s.printf("\n")
		}
		return err
	}
	elapsed := time.Since(started)
	db := rdb.NewP(s.rdb, s.o.c.namespace, s.o.c.partitions)
	n, err := db.LogLen(ctx, run)
	if err != nil {
		return err
	}

	r := f.run
	s.printf("\nrun %s %s in %s\n", run, r.Status, elapsed.Round(time.Millisecond))
	if load := r.Task("load"); load != nil && load.Status == projector.TaskSucceeded {
		s.printf("  result     load = %s\n", load.Result)
	}
	if r.FailedTask != "" {
		s.printf("  failed     task %s: %s\n", r.FailedTask, r.Cause)
	}
	s.printf("  events     %d in %s\n", n, db.K.RunLog(run))
	s.printf("  per worker %s\n", f.perWorker(s.workers))
	s.printf("\nInspect the run:\n  %s\n  %s\n", s.cli("status", run), s.cli("wait", "--json", run))
	switch {
	case s.o.keep:
	case s.srv != nil:
		s.printf("  (the stack stops now; \"graflow dev --keep\" keeps it up, and \"graflow dev --no-demo --port %d\"\n   brings this data back from the AOF in %s)\n", s.srv.Port(), s.dir)
	case s.mini != nil:
		s.printf("  (the in-process Redis keeps nothing after exit: use \"graflow dev --keep\" to inspect)\n")
	}
	if r.Status != projector.RunSucceeded {
		return withCode(ExitFailed, errors.Join(fmt.Errorf("demo run %s %s", run, r.Status), errQuiet))
	}
	return nil
}

// follower folds a run's log as it grows and prints one line per task
// state change.
type follower struct {
	printf func(format string, args ...any)
	run    *projector.Run
	width  int                  // task id column
	claims map[string][]string  // worker → "task" or "task#attempt", in order
	since  map[string]time.Time // task → claim time of its running attempt
}

// newFollower returns a follower of run printing with printf ("graflow
// dev"'s demo and "graflow wait --follow").
func newFollower(run string, printf func(format string, args ...any)) *follower {
	return &follower{printf: printf, run: projector.NewRun(run), width: 4, claims: map[string][]string{}, since: map[string]time.Time{}}
}

// follow reads the run's log with XREAD BLOCK from the first event until
// the run ends (or ctx does), printing progress.
func (s *devStack) follow(ctx context.Context, run string) (*follower, error) {
	f := newFollower(run, s.printf)
	db := rdb.NewP(s.rdb, s.o.c.namespace, s.o.c.partitions)
	last := "0"
	for {
		msgs, err := db.TailLog(ctx, run, last, 512, devBlock)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			return nil, fmt.Errorf("follow run %s: %w", run, err)
		}
		for _, msg := range msgs {
			last = msg.ID
			e, err := events.Decode(run, msg.ID, msg.Values)
			if err != nil {
				s.printf("  ?? %v\n", err)
				continue
			}
			if err := f.apply(e); err != nil {
				s.printf("  ?? %v\n", err)
			}
		}
		if f.run.Status.Terminal() {
			return f, nil
		}
		if s.liveWorkers() == 0 {
			return nil, fmt.Errorf("every worker process exited; run %s cannot finish (see the logs in %s)", run, s.dir)
		}
	}
}

// apply folds e and prints what it changed.
func (f *follower) apply(e events.Event) error {
	if err := projector.Apply(f.run, e); err != nil {
		return err
	}
	var msg string
	switch e.Type {
	case events.RunSubmitted:
		for _, t := range f.run.Tasks {
			f.width = max(f.width, len(t.Spec.ID))
		}
		msg = fmt.Sprintf("submitted: %d tasks", len(f.run.Tasks))
	case events.TaskDispatched:
		msg = "dispatched"
		if e.Attempt > 1 {
			msg += fmt.Sprintf(" (attempt %d)", e.Attempt)
		}
	case events.TaskClaimed:
		f.since[e.Task] = e.Time
		label := e.Task
		if e.Attempt > 1 {
			label += "#" + strconv.Itoa(e.Attempt)
		}
		f.claims[e.Worker] = append(f.claims[e.Worker], label)
		msg = fmt.Sprintf("running on %s (attempt %d)", e.Worker, e.Attempt)
	case events.TaskSucceeded:
		msg = "succeeded on " + e.Worker + f.took(e)
		if t := f.run.Task(e.Task); t != nil && len(t.Result) > 0 {
			msg += " → " + clip(string(t.Result), 40)
		}
	case events.TaskFailed:
		var b events.TaskFailedBody
		_ = e.DecodeBody(&b)
		msg = fmt.Sprintf("failed on %s (attempt %d)%s: %s", e.Worker, e.Attempt, f.took(e), clip(b.Error, 60))
		if b.Final {
			msg += " [final]"
		}
	case events.TaskRetryScheduled:
		var b events.TaskRetryScheduledBody
		_ = e.DecodeBody(&b)
		msg = fmt.Sprintf("retry (attempt %d) in %s", e.Attempt, (time.Duration(b.DelayMS) * time.Millisecond).Round(10*time.Millisecond))
	case events.TaskReclaimed:
		var b events.TaskReclaimedBody
		_ = e.DecodeBody(&b)
		msg = fmt.Sprintf("reclaimed from %s (attempt %d)", b.From, e.Attempt)
	case events.TaskTimedOut:
		msg = fmt.Sprintf("timed out (attempt %d)", e.Attempt)
	case events.TaskSkipped:
		msg = "skipped"
	case events.TaskCancelled:
		msg = "cancelled"
	case events.ResultRejected:
		var b events.ResultRejectedBody
		_ = e.DecodeBody(&b)
		msg = fmt.Sprintf("stale %s from %s rejected (epoch %d < %d)", b.What, e.Worker, e.Epoch, b.CurrentEpoch)
	case events.TasksAdded:
		msg = "tasks added"
	case events.RunSucceeded, events.RunFailed, events.RunCancelled, events.RunQuarantined:
		msg = string(f.run.Status)
	default: // heartbeats, channel writes: no state change worth a line
		return nil
	}
	subject := e.Task
	if subject == "" {
		subject = "run"
	}
	f.printf("  %s  %-*s  %-52s %s\n", e.Time.Format("15:04:05.000"), f.width, subject, msg, summary(f.run))
	return nil
}

// took is " in <duration>" since the task's claim, or "".
func (f *follower) took(e events.Event) string {
	if t, ok := f.since[e.Task]; ok {
		if d := e.Time.Sub(t); d > 0 {
			return " in " + d.String()
		}
		return " in <1ms"
	}
	return ""
}

// perWorker lists how many task attempts each worker process ran.
func (f *follower) perWorker(ws []*devWorker) string {
	ids := make([]string, 0, len(ws))
	seen := map[string]bool{}
	for _, w := range ws {
		ids, seen[w.id] = append(ids, w.id), true
	}
	var extra []string
	for id := range f.claims {
		if !seen[id] {
			extra = append(extra, id)
		}
	}
	sort.Strings(extra)
	parts := make([]string, 0, len(ids)+len(extra))
	for _, id := range append(ids, extra...) {
		c := f.claims[id]
		p := fmt.Sprintf("%s ran %d", id, len(c))
		if len(c) > 0 {
			p += " (" + strings.Join(c, ", ") + ")"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "\n             ")
}

// summary is "[7/8 succeeded | 1 running | 0 pending]" (other states when
// non-zero).
func summary(r *projector.Run) string {
	n := map[projector.TaskStatus]int{}
	for _, t := range r.Tasks {
		n[t.Status]++
	}
	parts := []string{
		fmt.Sprintf("%d/%d succeeded", n[projector.TaskSucceeded], len(r.Tasks)),
		fmt.Sprintf("%d running", n[projector.TaskRunning]),
	}
	for _, s := range []projector.TaskStatus{projector.TaskDispatched, projector.TaskAwaitingRetry} {
		if n[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[s], strings.ReplaceAll(string(s), "_", " ")))
		}
	}
	parts = append(parts, fmt.Sprintf("%d pending", n[projector.TaskPending]))
	for _, s := range []projector.TaskStatus{projector.TaskFailed, projector.TaskSkipped, projector.TaskCancelled} {
		if n[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[s], s))
		}
	}
	return "[" + strings.Join(parts, " | ") + "]"
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// exitDesc describes how a process ended: "exit 0", "exit 1", "signal: killed".
func exitDesc(cmd *exec.Cmd, err error) string {
	if st := cmd.ProcessState; st != nil {
		if st.ExitCode() >= 0 {
			return "exit " + strconv.Itoa(st.ExitCode())
		}
		return st.String()
	}
	if err != nil {
		return err.Error()
	}
	return "running"
}

// tail returns the last n lines of a file, indented.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "    (" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// markerWriter copies a process's output to w and closes found the first
// time a line contains marker. exec.Cmd calls Write from one goroutine.
type markerWriter struct {
	w      io.Writer
	marker []byte
	found  chan struct{}
	line   []byte
	seen   bool
}

func (m *markerWriter) Write(p []byte) (int, error) {
	if !m.seen {
		m.line = append(m.line, p...)
		for {
			i := bytes.IndexByte(m.line, '\n')
			if i < 0 {
				break
			}
			if bytes.Contains(m.line[:i], m.marker) {
				m.seen = true
				close(m.found)
				m.line = nil
				break
			}
			m.line = m.line[i+1:]
		}
	}
	return m.w.Write(p)
}
