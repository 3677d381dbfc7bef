//go:build unix

// Package chaos runs a workflow of a thousand tasks across worker processes
// while injecting faults from a seed — SIGKILLed and SIGSTOPped workers,
// a killed projector, a restarted Redis — and then checks the whole event
// history (Check). "graflow chaos" and "make chaos" drive it.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/proc"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redisserver"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
)

// Config configures one chaos run. A zero field means its default.
type Config struct {
	// Exe is the graflow binary that runs the workers and the projector.
	Exe  string
	Seed uint64
	// Tasks in the workflow (default 1000).
	Tasks int
	// Workers processes (default 4), each with Concurrency (default 8).
	Workers     int
	Concurrency int
	// Lease of the workers (default 2s; reclaim every Lease/4).
	Lease time.Duration
	// Dir holds Redis' AOF and the processes' logs (default: a temp dir,
	// removed after a verified run).
	Dir string
	// RedisURL uses an existing Redis instead of starting one; Redis
	// restarts are then skipped.
	RedisURL string
	// BreakFencing runs the workers with fencing off (test-only): the
	// checker must then report duplicate accepts.
	BreakFencing bool
	// Timeout bounds the run (default 4m).
	Timeout time.Duration
	// Out receives one progress line per fault; nil is quiet.
	Out io.Writer
}

// Report is the outcome of a chaos run.
type Report struct {
	Seed           uint64
	Verdict        Verdict
	Kills          int
	Pauses         int
	ProjectorKills int
	RedisRestarts  int
	Events         int
	Elapsed        time.Duration
	Dir            string
}

// Line is the one-line summary "chaos seed=S tasks=N kills=K ...".
func (r Report) Line() string {
	return fmt.Sprintf("chaos seed=%d tasks=%d kills=%d pauses=%d projector_kills=%d redis_restarts=%d lost=%d duplicate_accepts=%d rejected_stale=%d events=%d elapsed=%s verified=%t",
		r.Seed, r.Verdict.Tasks, r.Kills, r.Pauses, r.ProjectorKills, r.RedisRestarts, r.Verdict.Lost,
		r.Verdict.DuplicateAccepts, r.Verdict.RejectedStale, r.Events, r.Elapsed.Round(100*time.Millisecond), r.Verdict.OK())
}

func (c Config) withDefaults() Config {
	if c.Tasks <= 0 {
		c.Tasks = 1000
	}
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 8
	}
	if c.Lease <= 0 {
		c.Lease = 2 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 4 * time.Minute
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	return c
}

type stack struct {
	cfg   Config
	ns    string
	url   string
	srv   *redisserver.Server
	start time.Time
	rng   *rand.Rand

	mu        sync.Mutex
	workers   []*proc.Proc
	gens      []int
	paused    []bool
	proj      *proc.Proc
	projGen   int
	report    *Report
	pauseWait sync.WaitGroup
}

func (s *stack) logf(format string, args ...any) {
	fmt.Fprintf(s.cfg.Out, "  t+%5.1fs  %s\n", time.Since(s.start).Seconds(), fmt.Sprintf(format, args...))
}

// Run performs one chaos run. It returns an error only if the run could
// not be carried out; a failed check is in the Report's Verdict.
func Run(ctx context.Context, cfg Config) (rep Report, err error) {
	cfg = cfg.withDefaults()
	if cfg.Exe == "" {
		return rep, errors.New("chaos: Config.Exe (the graflow binary) is required")
	}
	rep.Seed = cfg.Seed
	start := time.Now()
	tmp := cfg.Dir == ""
	if tmp {
		if cfg.Dir, err = os.MkdirTemp("", "graflow-chaos-*"); err != nil {
			return rep, err
		}
	} else if err = os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return rep, err
	}
	rep.Dir = cfg.Dir
	s := &stack{cfg: cfg, ns: "chaos" + strconv.FormatUint(cfg.Seed, 10), start: start, report: &rep,
		rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))}
	if cfg.RedisURL != "" {
		s.url = cfg.RedisURL
		s.ns += "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	} else {
		s.srv, err = redisserver.Start(ctx, redisserver.Config{Dir: filepath.Join(cfg.Dir, "redis"), AOF: true, Fsync: redisserver.FsyncAlways})
		if err != nil {
			return rep, err
		}
		defer s.srv.Stop()
		s.url = s.srv.URL()
	}
	opts, err := redis.ParseURL(s.url)
	if err != nil {
		return rep, err
	}
	opts.MaxRetries = 10
	rc := redis.NewClient(opts)
	defer rc.Close()

	if err := s.startProjector(); err != nil {
		return rep, err
	}
	s.workers, s.gens, s.paused = make([]*proc.Proc, cfg.Workers), make([]int, cfg.Workers), make([]bool, cfg.Workers)
	for i := range cfg.Workers {
		if err := s.startWorker(i); err != nil {
			return rep, err
		}
	}
	defer s.stopAll()

	client, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: s.ns})
	if err != nil {
		return rep, err
	}
	wf := s.workflow()
	var run string
	if err := retryRedis(ctx, func() error {
		var err error
		run, err = client.Submit(ctx, wf, map[string]any{"seed": cfg.Seed}, graflow.WithRunID("chaos-"+strconv.FormatUint(cfg.Seed, 10)))
		return err
	}); err != nil {
		return rep, fmt.Errorf("submit: %w", err)
	}
	s.logf("submitted run %s: %d tasks, %d workers x %d, lease %s", run, cfg.Tasks, cfg.Workers, cfg.Concurrency, cfg.Lease)

	runCtx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	faultsDone := make(chan struct{})
	faultCtx, stopFaults := context.WithCancel(runCtx)
	go func() {
		defer close(faultsDone)
		s.inject(faultCtx)
	}()
	var info *graflow.RunInfo
	err = retryRedis(runCtx, func() error {
		var err error
		info, err = client.Wait(runCtx, run)
		return err
	})
	stopFaults()
	<-faultsDone
	s.pauseWait.Wait()
	if err != nil {
		return rep, fmt.Errorf("run %s did not end within %s: %w (logs in %s)", run, cfg.Timeout, err, cfg.Dir)
	}
	s.logf("run %s %s; stopping workers", run, info.Status)
	s.stopAll()

	evs, live, err := s.history(ctx, rc, run)
	if err != nil {
		return rep, err
	}
	rep.Events = len(evs)
	rep.Verdict = Check(evs, live)
	// And the audit tool's own verdict on the same run (graflow replay
	// verify): the live projection, results and DAG against the log.
	rc2, err := replay.New(replay.Config{Redis: rc, Namespace: s.ns})
	if err != nil {
		return rep, err
	}
	vr, err := rc2.Verify(ctx, run)
	if err != nil {
		return rep, fmt.Errorf("replay verify: %w", err)
	}
	for _, p := range vr.Problems {
		rep.Verdict.Problems = append(rep.Verdict.Problems, "replay verify: "+p.String())
	}
	rep.Elapsed = time.Since(start)
	if tmp && rep.Verdict.OK() && !cfg.BreakFencing {
		defer os.RemoveAll(cfg.Dir)
	}
	return rep, nil
}

// workflow builds the chaos DAG: a root, four parallel groups of sleep
// tasks (some flaky, with retries), a sum per group and a final sum.
func (s *stack) workflow() *graflow.Workflow {
	wf := graflow.NewWorkflow("chaos")
	root := wf.Task("root", builtin.Noop)
	per := (s.cfg.Tasks - 6) / 4
	var sums []*graflow.Task
	for g := range 4 {
		n := per
		if g == 3 {
			n = s.cfg.Tasks - 6 - 3*per
		}
		members := make([]*graflow.Task, 0, n)
		for i := range n {
			id := fmt.Sprintf("g%d-%d", g, i)
			var t *graflow.Task
			if i%50 == 7 {
				t = wf.Task(id, builtin.Flaky).Args(map[string]any{"fail": 1, "value": 1}).Retries(2)
			} else {
				t = wf.Task(id, builtin.Sleep).Args(map[string]any{"ms": 20 + s.rng.IntN(130), "value": 1})
			}
			members = append(members, t.After(root))
		}
		sums = append(sums, wf.Parallel(members...).Then(wf.Task(fmt.Sprintf("sum-%d", g), builtin.Sum)))
	}
	wf.Task("total", builtin.Sum).After(sums...)
	return wf
}

func (s *stack) startProjector() error {
	id := fmt.Sprintf("projector-%d", s.projGen)
	p, err := proc.Start(id, s.cfg.Exe, []string{"projector", "--redis", s.url, "--namespace", s.ns, "--id", id,
		"--feed-reclaim-idle", "2s", "--retry-initial", "100ms", "--log-level", "warn",
		// Compact every run's log when it ends, however long: the compaction
		// runs under kills and Redis restarts too.
		"--compact-log", "1000000"}, nil,
		filepath.Join(s.cfg.Dir, "projector.log"))
	if err != nil {
		return err
	}
	s.proj = p
	return nil
}

func (s *stack) startWorker(i int) error {
	id := fmt.Sprintf("w%d-%d", i, s.gens[i])
	args := []string{"worker", "--redis", s.url, "--namespace", s.ns, "--id", id,
		"--concurrency", strconv.Itoa(s.cfg.Concurrency), "--lease", s.cfg.Lease.String(),
		"--reclaim-interval", (s.cfg.Lease / 4).String(), "--drain-timeout", "5s", "--log-level", "warn"}
	if s.cfg.BreakFencing {
		args = append(args, "--unsafe-no-fencing") // a graflowtest build only
	}
	p, err := proc.Start(id, s.cfg.Exe, args, nil,
		filepath.Join(s.cfg.Dir, "workers.log"))
	if err != nil {
		return err
	}
	s.workers[i] = p
	return nil
}

// inject applies faults at seeded random intervals until ctx ends. The
// first four faults are one of each kind (in seeded order), so every run
// exercises every kind; then kinds are drawn with weights.
func (s *stack) inject(ctx context.Context) {
	kinds := []string{"kill", "pause", "projector", "redis"}
	if s.cfg.BreakFencing {
		// Zombies are what broken fencing lets through: pause often.
		kinds = []string{"pause", "pause", "pause", "kill", "pause"}
	}
	s.rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	for n := 0; ; n++ {
		wait := time.Duration(300+s.rng.IntN(900)) * time.Millisecond
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		kind := ""
		if n < len(kinds) {
			kind = kinds[n]
		} else {
			switch x := s.rng.IntN(100); {
			case x < 35:
				kind = "kill"
			case x < 60:
				kind = "pause"
			case x < 75:
				kind = "projector"
			case x < 82:
				kind = "redis"
			}
		}
		s.fault(ctx, kind)
	}
}

func (s *stack) fault(ctx context.Context, kind string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch kind {
	case "kill":
		i := s.rng.IntN(len(s.workers))
		if s.paused[i] {
			return
		}
		old := s.workers[i]
		old.Kill()
		s.gens[i]++
		if err := s.startWorker(i); err != nil {
			s.logf("restart worker: %v", err)
			return
		}
		s.report.Kills++
		s.logf("SIGKILL worker %s, started %s", old.Name, s.workers[i].Name)
	case "pause":
		i := s.rng.IntN(len(s.workers))
		if s.paused[i] {
			return
		}
		p := s.workers[i]
		_ = p.Signal(syscall.SIGSTOP)
		s.paused[i] = true
		d := s.cfg.Lease + time.Duration(500+s.rng.IntN(1000))*time.Millisecond
		s.report.Pauses++
		s.logf("SIGSTOP worker %s for %s (past its lease: a zombie)", p.Name, d.Round(time.Millisecond))
		s.pauseWait.Add(1)
		go func() {
			defer s.pauseWait.Done()
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			_ = p.Signal(syscall.SIGCONT)
			s.paused[i] = false
			s.logf("SIGCONT worker %s", p.Name)
		}()
	case "projector":
		old := s.proj
		old.Kill()
		s.projGen++
		if err := s.startProjector(); err != nil {
			s.logf("restart projector: %v", err)
			return
		}
		s.report.ProjectorKills++
		s.logf("SIGKILL projector %s, started %s", old.Name, s.proj.Name)
	case "redis":
		if s.srv == nil {
			return
		}
		if err := s.srv.Kill(); err != nil {
			s.logf("kill redis: %v", err)
			return
		}
		if err := s.srv.Restart(ctx); err != nil {
			s.logf("restart redis: %v", err)
			return
		}
		s.report.RedisRestarts++
		s.logf("SIGKILL redis-server and restarted it from its AOF (appendfsync always)")
	}
}

func (s *stack) stopAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range append(append([]*proc.Proc{}, s.workers...), s.proj) {
		if p == nil || p.Exited() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Stop(10 * time.Second)
		}()
	}
	wg.Wait()
}

// history reads the run's events and live state hash.
func (s *stack) history(ctx context.Context, rc *redis.Client, run string) ([]events.Event, map[string]string, error) {
	k := rdb.NewKeys(s.ns)
	evs, err := rdb.New(rc, s.ns).ReadLog(ctx, run, "-", "+", 10000, 0)
	if err != nil {
		return nil, nil, err
	}
	live, err := rc.HGetAll(ctx, k.RunState(run)).Result()
	return evs, live, err
}

// retryRedis retries op while Redis is restarting (connection errors).
func retryRedis(ctx context.Context, op func() error) error {
	delay := 50 * time.Millisecond
	for {
		err := op()
		if err == nil || ctx.Err() != nil || errors.Is(err, graflow.ErrRunNotFound) || !transient(err) {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if delay < time.Second {
			delay *= 2
		}
	}
}

func transient(err error) bool {
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"connection refused", "EOF", "connection reset", "broken pipe", "LOADING", "i/o timeout"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
