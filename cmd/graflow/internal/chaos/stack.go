//go:build unix

package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/proc"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/rediscluster"
	"github.com/graflow-go/graflow/internal/redisserver"
	"github.com/graflow-go/graflow/internal/redisurl"
	"github.com/graflow-go/graflow/worker"
	"github.com/redis/go-redis/v9"
)

// stack is one chaos deployment: a Redis, worker processes, projector
// processes on the same feed, the fault injector, and tracing (the
// Client's TracerProvider, and a loopback OTLP receiver for the processes'
// spans: tracing.go). Its process fields
// are guarded by mu; faults run one at a time under it.
type stack struct {
	cfg  Config
	soak bool
	ns   string
	url  string
	srv  *redisserver.Server
	// cluster is the local Redis Cluster of a Config.Cluster run (srv is
	// then nil).
	cluster *rediscluster.Cluster
	// lastMasterKill is when the last failover's master was SIGKILLed
	// (under mu): the writes it had not replicated are lost.
	lastMasterKill time.Time
	rc             redis.UniversalClient
	db             rdb.DB // through rc
	client         *graflow.Client
	// tracer is the Client's TracerProvider and the runs' expected
	// traces; collector receives the processes' spans (tracing.go).
	tracer    *tracer
	collector *collector
	start     time.Time
	// tmpDir: cfg.Dir was made for this run; removeDir: remove it on close.
	tmpDir, removeDir bool

	mu      sync.Mutex
	rng     *rand.Rand
	workers []*proc.Proc
	gens    []int
	paused  []bool
	projs   []*proc.Proc
	projIDs []string
	projGen []int
	// projPaused: SIGSTOPped now; projPauses: every pause of a projector
	// id, for late_commits (see Touches).
	projPaused []bool
	projPauses map[string][]span
	// killed: the ids of the processes SIGKILLed (a restarted projector
	// may take its id again): their unexported spans are lost.
	killed map[string]bool
	report *Report
	// pauseWait: the SIGCONTs to come; lastCont: the last one. A pause
	// runs its full length on life (the stack's context), even when the
	// faults stop, so a zombie always resumes while the stack runs.
	pauseWait sync.WaitGroup
	lastCont  time.Time
	life      context.Context
}

// span is a projector's SIGSTOP: from SIGSTOP to SIGCONT (zero while
// stopped).
type span struct{ from, to time.Time }

func (s *stack) logf(format string, args ...any) {
	fmt.Fprintf(s.cfg.Out, "  t+%5.1fs  %s\n", time.Since(s.start).Seconds(), fmt.Sprintf(format, args...))
}

// newStack starts Redis (unless cfg.RedisURL), the projectors and the
// workers. soak gives the projectors cfg.RunTTL.
func newStack(ctx context.Context, cfg Config, soak bool) (_ *stack, err error) {
	if cfg.Exe == "" {
		return nil, errors.New("chaos: Config.Exe (the graflow binary) is required")
	}
	s := &stack{cfg: cfg, soak: soak, ns: "chaos" + strconv.FormatUint(cfg.Seed, 10), start: time.Now(),
		rng:        rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		projPauses: map[string][]span{}, killed: map[string]bool{}, report: &Report{}, life: ctx}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.cfg.Dir == "" {
		s.tmpDir = true
		if s.cfg.Dir, err = os.MkdirTemp("", "graflow-chaos-*"); err != nil {
			return nil, err
		}
	} else if err = os.MkdirAll(s.cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	switch {
	case cfg.RedisURL != "":
		s.url = cfg.RedisURL
		s.ns += "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	case cfg.Cluster:
		s.cluster, err = rediscluster.Start(ctx, rediscluster.Config{Dir: filepath.Join(s.cfg.Dir, "redis"), AOF: true, Fsync: redisserver.FsyncAlways})
		if err != nil {
			return nil, err
		}
		s.url = s.cluster.URL()
	default:
		s.srv, err = redisserver.Start(ctx, redisserver.Config{Dir: filepath.Join(s.cfg.Dir, "redis"), AOF: true, Fsync: redisserver.FsyncAlways})
		if err != nil {
			return nil, err
		}
		s.url = s.srv.URL()
	}
	if s.rc, err = client(s.url); err != nil {
		return nil, err
	}
	s.db = rdb.NewP(s.rc, s.ns, cfg.Partitions)
	s.tracer = newTracer()
	if s.collector, err = startCollector(); err != nil {
		return nil, err
	}
	if s.client, err = graflow.NewClient(graflow.Config{Redis: s.rc, Namespace: s.ns, NamespacePartitions: s.cfg.Partitions,
		TracerProvider: s.tracer.client}); err != nil {
		return nil, err
	}
	s.projs, s.projIDs, s.projGen, s.projPaused = make([]*proc.Proc, cfg.Projectors), make([]string, cfg.Projectors), make([]int, cfg.Projectors), make([]bool, cfg.Projectors)
	for i := range cfg.Projectors {
		if err := s.startProjector(i); err != nil {
			return nil, err
		}
	}
	s.workers, s.gens, s.paused = make([]*proc.Proc, cfg.Workers), make([]int, cfg.Workers), make([]bool, cfg.Workers)
	for i := range cfg.Workers {
		if err := s.startWorker(i); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// close stops every process and Redis, and removes the directory if a
// verified run asked for it.
func (s *stack) close() {
	s.stopAll()
	if s.collector != nil {
		s.collector.close()
	}
	if s.tracer != nil {
		s.tracer.shutdown()
	}
	if s.rc != nil {
		_ = s.rc.Close()
	}
	if s.srv != nil {
		_ = s.srv.Stop()
	}
	if s.cluster != nil {
		_ = s.cluster.Stop()
	}
	if s.removeDir {
		_ = os.RemoveAll(s.cfg.Dir)
	}
}

// client returns the stack's client to url: a cluster client for a
// redis+cluster:// URL, else a plain one; both retry a command 10 times.
func client(url string) (redis.UniversalClient, error) {
	if redisurl.IsCluster(url) {
		opts, err := redisurl.ClusterOptions(url)
		if err != nil {
			return nil, err
		}
		opts.MaxRetries = 10
		return redis.NewClusterClient(opts), nil
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	opts.MaxRetries = 10
	return redis.NewClient(opts), nil
}

// isProjector reports whether an event's writer is one of the projectors.
func (s *stack) isProjector(writer string) bool { return strings.HasPrefix(writer, "projector-") }

func (s *stack) startProjector(i int) error {
	id := fmt.Sprintf("projector-%d-%d", i, s.projGen[i])
	args := []string{"projector", "--redis", s.url, "--namespace", s.ns, "--partitions", strconv.Itoa(s.cfg.Partitions), "--id", id,
		"--feed-reclaim-idle", s.cfg.FeedReclaimIdle.String(), "--retry-initial", "100ms", "--log-level", "warn",
		// Compact every run's log when it ends, however long: the compaction
		// runs under kills and Redis restarts too.
		"--compact-log", "1000000"}
	if s.soak {
		args = append(args, "--run-ttl", s.cfg.RunTTL.String())
	}
	// Projectors differ in how many decisions one commit holds (any mix
	// is a valid deployment): with small commits a run's dispatches span
	// many commits, completions land between them, and a second projector
	// is pointed at the run while the first still commits.
	args = append(args, "--batch-size", strconv.Itoa(projectorBatch[i%len(projectorBatch)]))
	p, err := proc.Start(id, s.cfg.Exe, args, tracingEnv(s.collector.url, "graflow-projector"), filepath.Join(s.cfg.Dir, "projectors.log"))
	if err != nil {
		return err
	}
	s.projs[i], s.projIDs[i] = p, id
	return nil
}

func (s *stack) startWorker(i int) error {
	id := fmt.Sprintf("w%d-%d", i, s.gens[i])
	args := []string{"worker", "--redis", s.url, "--namespace", s.ns, "--partitions", strconv.Itoa(s.cfg.Partitions), "--id", id,
		"--concurrency", strconv.Itoa(s.cfg.Concurrency), "--lease", s.cfg.Lease.String(),
		"--reclaim-interval", (s.cfg.Lease / 4).String(), "--drain-timeout", "5s", "--log-level", "warn"}
	if s.cfg.BreakFencing {
		args = append(args, "--unsafe-no-fencing") // a graflowtest build only
	}
	p, err := proc.Start(id, s.cfg.Exe, args, tracingEnv(s.collector.url, "graflow-worker"), filepath.Join(s.cfg.Dir, "workers.log"))
	if err != nil {
		return err
	}
	s.workers[i] = p
	return nil
}

// projectorBatch are the projectors' --batch-size, by index.
var projectorBatch = []int{256, 8, 2}

// Fault kinds.
const (
	faultKill           = "kill"            // SIGKILL a worker, start a new one
	faultPause          = "pause"           // SIGSTOP a worker past its lease
	faultProjector      = "projector"       // SIGKILL a projector, restart it
	faultProjectorPause = "projector-pause" // SIGSTOP a projector past the feed reclaim
	faultRedis          = "redis"           // SIGKILL Redis, restart it from its AOF; on a cluster, SIGKILL a master (failover)
	faultDeleteEntry    = "delete-entry"    // XDEL a queue entry a running worker holds; half the time SIGKILL its holder half a lease later
)

// inject applies faults at seeded random intervals in [lo, hi) until ctx
// ends. The first faults are one of each kind (in seeded order), so every
// run exercises every kind; then kinds are drawn with weights.
func (s *stack) inject(ctx context.Context, lo, hi time.Duration) {
	kinds := []string{faultKill, faultPause, faultProjector, faultProjectorPause, faultRedis, faultDeleteEntry}
	if s.cfg.BreakFencing {
		// Zombies are what broken fencing lets through: pause often.
		kinds = []string{faultPause, faultPause, faultPause, faultKill, faultPause}
	}
	s.mu.Lock()
	s.rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	s.mu.Unlock()
	for n := 0; ; n++ {
		s.mu.Lock()
		d := lo + time.Duration(s.rng.Int64N(int64(hi-lo)))
		x := s.rng.IntN(100)
		s.mu.Unlock()
		if !wait(ctx, d) {
			return
		}
		kind := ""
		if n < len(kinds) {
			kind = kinds[n]
		} else {
			switch {
			case x < 30:
				kind = faultKill
			case x < 50:
				kind = faultPause
			case x < 62:
				kind = faultProjector
			case x < 75:
				kind = faultProjectorPause
			case x < 82:
				kind = faultRedis
			case x < 90:
				kind = faultDeleteEntry
			}
		}
		s.fault(ctx, kind)
	}
}

func (s *stack) fault(ctx context.Context, kind string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch kind {
	case faultKill:
		i := s.rng.IntN(len(s.workers))
		if s.paused[i] {
			return
		}
		s.killWorker(i, "")
	case faultDeleteEntry:
		s.deleteEntry(ctx)
	case faultPause:
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
			wait(s.life, d)
			s.mu.Lock()
			defer s.mu.Unlock()
			_ = p.Signal(syscall.SIGCONT)
			s.paused[i] = false
			s.lastCont = time.Now()
			s.logf("SIGCONT worker %s", p.Name)
		}()
	case faultProjector:
		// Under load a projector is mostly inside a commit, a relay or an
		// ack: a kill lands in one of them.
		i := s.rng.IntN(len(s.projs))
		if s.projPaused[i] {
			return
		}
		old := s.projs[i]
		old.Kill()
		s.killed[old.Name] = true
		how := "restarted it under its id (it resumes its own pending feed entries)"
		if s.rng.IntN(2) == 0 {
			s.projGen[i]++
			how = "started a new id (its feed entries wait for the reclaim)"
		}
		if err := s.startProjector(i); err != nil {
			s.logf("restart projector: %v", err)
			return
		}
		s.report.ProjectorKills++
		s.logf("SIGKILL projector %s while the others run, %s: %s", old.Name, how, s.projs[i].Name)
	case faultProjectorPause:
		i := s.busiestProjector(ctx)
		if i < 0 {
			return
		}
		s.pauseProjector(i, "the one holding the most feed entries")
	case faultRedis:
		if s.cluster != nil {
			s.failover()
			return
		}
		if s.srv == nil {
			return
		}
		if err := s.srv.Kill(); err != nil {
			s.logf("kill redis: %v", err)
			return
		}
		// On the stack's context, not the faults': faults stop when the
		// runs end, and a restart cut short would leave Redis down for the
		// check.
		if err := s.srv.Restart(s.life); err != nil {
			s.logf("restart redis: %v; trying once more", err)
			if err := s.srv.Restart(s.life); err != nil {
				s.logf("restart redis: %v", err)
				return
			}
		}
		s.report.RedisRestarts++
		s.logf("SIGKILL redis-server and restarted it from its AOF (appendfsync always)")
	}
}

// killWorker SIGKILLs worker i and starts a new one in its place. Caller
// holds mu.
func (s *stack) killWorker(i int, why string) {
	old := s.workers[i]
	old.Kill()
	s.killed[old.Name] = true
	s.gens[i]++
	if err := s.startWorker(i); err != nil {
		s.logf("restart worker: %v", err)
		return
	}
	s.report.Kills++
	s.logf("SIGKILL worker %s%s, started %s", old.Name, why, s.workers[i].Name)
}

// deleteEntry deletes a queue entry of the default pool that a running,
// unpaused worker holds (rdb.DeleteHeldEntry), as an operator's XTRIM or
// XDEL would, and half the time SIGKILLs its holder half a lease later
// (after a heartbeat that found the entry gone, if its task still runs).
// Its task must still run to an outcome: the holder finishes it within its
// lease, or a reclaimer finds the entry deleted and a projector's repair
// hands the task back. Caller holds mu.
func (s *stack) deleteEntry(ctx context.Context) {
	live := func(holder string) bool {
		i := slices.IndexFunc(s.workers, func(p *proc.Proc) bool { return p.Name == holder })
		return i >= 0 && !s.paused[i]
	}
	// The partitions from a random one on: the busy ones are few.
	parts := max(s.cfg.Partitions, 1)
	first := s.rng.IntN(parts)
	var e rdb.DeletedEntry
	ok := false
	for n := 0; n < parts && !ok; n++ {
		var err error
		e, ok, err = s.db.DeleteHeldEntry(ctx, (first+n)%parts, worker.DefaultPool, s.rng.IntN(rdb.MaxPriority+1), live, s.rng.IntN)
		if err != nil {
			s.logf("delete a held queue entry: %v", err)
			return
		}
	}
	if !ok {
		s.logf("delete a held queue entry: none pending for a running worker")
		return
	}
	s.report.DeletedEntries++
	i := slices.IndexFunc(s.workers, func(p *proc.Proc) bool { return p.Name == e.Holder })
	kill := i >= 0 && s.rng.IntN(2) == 0
	s.logf("XDEL queue entry %s of %s, held by %s (kill it: %t)", e.ID, e.Stream, e.Holder, kill)
	if !kill {
		return
	}
	gen := s.gens[i]
	s.pauseWait.Add(1)
	go func() {
		defer s.pauseWait.Done()
		if !wait(ctx, s.cfg.Lease/2) {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if ctx.Err() == nil && s.gens[i] == gen && !s.paused[i] { // the faults may have stopped meanwhile
			s.killWorker(i, " (its queue entry deleted half a lease before)")
		}
	}()
}

// failover SIGKILLs a random master of the cluster, waits until its
// replica took its slots over, and restarts the killed node, which
// rejoins as a replica. Replication is asynchronous: the writes the dead
// master acknowledged but had not yet sent to its replica are lost, and
// the checks after the runs say what that did. Caller holds mu.
func (s *stack) failover() {
	masters, err := s.cluster.Masters(s.life)
	if err != nil || len(masters) == 0 {
		s.logf("failover: list masters: %v", err)
		return
	}
	victim := masters[s.rng.IntN(len(masters))]
	killed := time.Now()
	s.lastMasterKill = killed // the caller holds mu
	if err := s.cluster.KillMaster(victim); err != nil {
		s.logf("failover: kill node %d: %v", victim, err)
		return
	}
	// On the stack's context (see the Redis restart above).
	if err := s.cluster.WaitFailover(s.life); err != nil {
		s.logf("failover: %v", err)
		return
	}
	promoted := time.Since(killed)
	if err := s.cluster.Rejoin(s.life, victim); err != nil {
		s.logf("failover: rejoin node %d: %v", victim, err)
		return
	}
	s.report.Failovers++
	s.logf("SIGKILL master node %d: a replica took its slots over after %s; the node rejoined as a replica after %s",
		victim, promoted.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
}

// busiestProjector returns the running projector with the most pending
// feed entries (the one most likely inside a projection), or a random
// running one; -1 if pausing one would leave no projector running.
// Caller holds mu.
func (s *stack) busiestProjector(ctx context.Context) int {
	var running []int
	for i, p := range s.projPaused {
		if !p {
			running = append(running, i)
		}
	}
	if len(running) < 2 {
		return -1
	}
	qctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	// A partition that did not answer counts nothing: the choice is a
	// heuristic.
	pending, _ := s.db.FeedPending(qctx)
	sort.SliceStable(running, func(a, b int) bool { return pending[s.projIDs[running[a]]] > pending[s.projIDs[running[b]]] })
	if pending[s.projIDs[running[0]]] > 0 {
		return running[0]
	}
	return running[s.rng.IntN(len(running))]
}

// pauseProjectorID pauses the projector now running as id (see
// pauseProjector); false if it is not running or is the last one running.
func (s *stack) pauseProjectorID(id, why string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	running := 0
	for _, p := range s.projPaused {
		if !p {
			running++
		}
	}
	for i, pid := range s.projIDs {
		if pid == id && !s.projPaused[i] && running >= 2 {
			s.pauseProjector(i, why)
			return true
		}
	}
	return false
}

// pauseProjector SIGSTOPs projector i for longer than the feed reclaim
// (plus the reclaim's tick): another projector takes its feed entries
// over, and it resumes later with its cached fold (a zombie). Caller holds
// mu.
func (s *stack) pauseProjector(i int, why string) {
	p, id := s.projs[i], s.projIDs[i]
	_ = p.Signal(syscall.SIGSTOP)
	s.projPaused[i] = true
	s.projPauses[id] = append(s.projPauses[id], span{from: time.Now()})
	k := len(s.projPauses[id]) - 1
	d := s.cfg.FeedReclaimIdle*3/2 + time.Duration(500+s.rng.IntN(1500))*time.Millisecond
	s.report.ProjectorPauses++
	s.logf("SIGSTOP projector %s (%s) for %s, past the %s feed reclaim", p.Name, why, d.Round(time.Millisecond), s.cfg.FeedReclaimIdle)
	s.pauseWait.Add(1)
	go func() {
		defer s.pauseWait.Done()
		wait(s.life, d)
		s.mu.Lock()
		defer s.mu.Unlock()
		_ = p.Signal(syscall.SIGCONT)
		s.projPaused[i] = false
		s.lastCont = time.Now()
		s.projPauses[id][k].to = time.Now()
		s.logf("SIGCONT projector %s (it resumes with its cached fold)", p.Name)
	}()
}

// stall SIGSTOPs a random running projector for a few to a hundred
// milliseconds, every 50-300 ms, until ctx ends: the scheduling delays and
// GC pauses of a loaded machine, far shorter than the feed reclaim, at
// random instructions. They widen the windows in which two projectors work
// on one run (one folded, the other commits, the first commits on).
func (s *stack) stall(ctx context.Context) {
	rng := rand.New(rand.NewPCG(s.cfg.Seed+2, s.cfg.Seed^0x2545f4914f6cdd1d))
	for wait(ctx, time.Duration(50+rng.IntN(250))*time.Millisecond) {
		d := time.Duration(5+rng.IntN(95)) * time.Millisecond
		s.mu.Lock()
		i := rng.IntN(len(s.projs))
		p := s.projs[i]
		if s.projPaused[i] {
			s.mu.Unlock()
			continue
		}
		_ = p.Signal(syscall.SIGSTOP)
		s.projPaused[i] = true
		s.report.ProjectorStalls++
		s.mu.Unlock()
		wait(s.life, d)
		s.mu.Lock()
		_ = p.Signal(syscall.SIGCONT)
		s.projPaused[i] = false
		s.mu.Unlock()
	}
}

func (s *stack) stopAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range append(append([]*proc.Proc{}, s.workers...), s.projs...) {
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
