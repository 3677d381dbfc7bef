// Package worker runs task handlers: it claims dispatched tasks from its
// pools' queue streams, runs them under a lease kept alive by heartbeats,
// and reports results through epoch-checked scripts.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/graflow-go/graflow/internal/logbridge"
	"github.com/jonboulle/clockwork"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/crashpoint"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/retry"
	"github.com/graflow-go/graflow/internal/tracing"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/trace"
)

// Defaults for Config's zero values.
const (
	DefaultPool                = events.DefaultPool
	DefaultConcurrency         = 8
	DefaultLease               = 15 * time.Second
	DefaultHeartbeatEventEvery = 30 * time.Second
	DefaultDrainTimeout        = 30 * time.Second
	DefaultFetchBlock          = 2 * time.Second
	DefaultMaxResultBytes      = 1 << 20
	DefaultPoisonLimit         = 5
)

// Config configures a Worker. A zero field means its default.
type Config struct {
	// Redis is required.
	Redis redis.UniversalClient
	// Namespace is the key prefix (default "graflow").
	Namespace string
	// NamespacePartitions is the namespace's partition count (default
	// rdb.DefaultPartitions, 1): fixed per namespace and checked at start
	// (see docs/operations.md, "Key layout and partitions").
	NamespacePartitions int
	// ID names the worker: consumer name in the queue groups and owner of
	// its claims. Default "<host>-<pid>". Letters, digits and "_.:-".
	ID string
	// Pools the worker takes tasks from (default ["default"]).
	Pools []string
	// Concurrency is the number of handlers run at once (default 8). A
	// task's slot is free once its handler returned and its outcome is
	// queued for recording; recording (a batched round trip or three) does
	// not hold it.
	Concurrency int
	// Lease is how long a claim survives without a heartbeat (default 15s):
	// the reclaimer takes over messages idle for longer.
	Lease time.Duration
	// HeartbeatInterval (default Lease/3) renews leases and the registry.
	HeartbeatInterval time.Duration
	// HeartbeatEventEvery rate-limits task_heartbeat events in the log
	// (default 30s; progress changes are always recorded).
	HeartbeatEventEvery time.Duration
	// DrainTimeout bounds how long Run waits for in-flight tasks after its
	// context is cancelled (default 30s); then their contexts are cancelled.
	DrainTimeout time.Duration
	// FetchBlock is how long one XREADGROUP blocks (default 2s); it only
	// bounds how fast Run notices cancellation.
	FetchBlock time.Duration
	// MaxResultBytes bounds an encoded result (default 1 MiB); a larger one
	// fails the task permanently.
	MaxResultBytes int
	// ReclaimInterval is how often the reclaimer looks for messages idle
	// longer than Lease (default Lease/3). A task of a dead worker runs
	// again within Lease + ReclaimInterval.
	ReclaimInterval time.Duration
	// PoisonLimit fails a task as poison when its message was delivered
	// more than this many times without an outcome (default 5): a task
	// that kills its worker every time does not loop forever.
	PoisonLimit int
	// noFencing disables the epoch check on results. TEST-ONLY, and only
	// settable in graflowtest builds (UnsafeNoFencing): the chaos suite
	// proves with it that its checker detects duplicate accepts.
	noFencing bool
	// Logger; nil is quiet.
	Logger *zerolog.Logger
	// Slog, when Logger is nil, receives the logs instead (bridged: see
	// internal/logbridge).
	Slog *slog.Logger
	// Clock decides what time it is and when timers fire (default the real
	// clock; tests pass clockwork.NewFakeClock()).
	Clock clockwork.Clock
	// Metrics observes the worker (graflow.NewMetrics); nil observes nothing.
	Metrics Observer
	// TracerProvider makes the worker's spans (graflow.claim,
	// graflow.handler, graflow.finish per attempt, children of the span
	// that dispatched the task); nil means otel.GetTracerProvider(), a
	// no-op unless the program set one. A handler's context carries its
	// graflow.handler span.
	TracerProvider trace.TracerProvider

	// MaxDynamicTasks bounds the tasks handlers spawn into one run, all
	// spawns together (default DefaultMaxDynamicTasks, 100,000); a spawn
	// past it fails its attempt for good.
	MaxDynamicTasks int
	// MaxIterations bounds a loop (Task.Continue): a task and its
	// iterations (default DefaultMaxIterations, 100); the spawn of one
	// more fails its attempt for good.
	MaxIterations int

	// claimUpstreamBytes overrides rdb.DefaultClaimUpstreamBytes (tests).
	claimUpstreamBytes int
	// slotWait, when set, is called when a message a fetch loop read
	// waits for a slot (tests).
	slotWait func(task string, claimed bool)
}

// validID reports whether s can be a worker id or pool name: 1-128 of
// letters, digits and "_.:-" (they appear in keys and task records).
func validID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("_.:-", c)) {
			return false
		}
	}
	return true
}

func (c Config) withDefaults() Config {
	if c.Namespace == "" {
		c.Namespace = rdb.DefaultNamespace
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = host + "-" + strconv.Itoa(os.Getpid())
	}
	if len(c.Pools) == 0 {
		c.Pools = []string{DefaultPool}
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = c.Lease / 3
	}
	if c.HeartbeatEventEvery <= 0 {
		c.HeartbeatEventEvery = DefaultHeartbeatEventEvery
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.FetchBlock <= 0 {
		c.FetchBlock = DefaultFetchBlock
	}
	if c.MaxResultBytes <= 0 {
		c.MaxResultBytes = DefaultMaxResultBytes
	}
	if c.ReclaimInterval <= 0 {
		c.ReclaimInterval = c.Lease / 3
	}
	if c.PoisonLimit <= 0 {
		c.PoisonLimit = DefaultPoisonLimit
	}
	if c.MaxDynamicTasks <= 0 {
		c.MaxDynamicTasks = DefaultMaxDynamicTasks
	}
	if c.MaxIterations <= 0 {
		c.MaxIterations = DefaultMaxIterations
	}
	if c.Logger == nil {
		c.Logger = logbridge.Zerolog(c.Slog)
	}
	if c.Logger == nil {
		l := zerolog.Nop()
		c.Logger = &l
	}
	if c.Clock == nil {
		c.Clock = clockwork.NewRealClock()
	}
	return c
}

func (c Config) validate() error {
	errs := rdb.CheckConnection("worker", c.Redis != nil, c.Namespace)
	if err := rdb.CheckPartitions("worker", c.NamespacePartitions); err != nil {
		errs = append(errs, err)
	}
	if !validID(c.ID) {
		errs = append(errs, fmt.Errorf("worker: invalid ID %q: use 1-128 letters, digits, '_', '.', ':', '-'", c.ID))
	}
	for _, p := range c.Pools {
		if !validID(p) {
			errs = append(errs, fmt.Errorf("worker: invalid pool %q", p))
		}
	}
	if c.HeartbeatInterval >= c.Lease {
		errs = append(errs, fmt.Errorf("worker: HeartbeatInterval %v must be shorter than Lease %v", c.HeartbeatInterval, c.Lease))
	}
	return errors.Join(errs...)
}

// Worker claims and runs tasks. Create it with New, register handlers, then
// call Run once. Handle must not be called after Run started.
type Worker struct {
	cfg    Config
	db     rdb.DB
	log    zerolog.Logger
	tracer trace.Tracer

	handlers map[string]Handler

	sem      chan struct{}
	mu       sync.Mutex
	inflight map[string]*attempt       // by message key (stream and id)
	handling map[string]bool           // message keys being processed (claim included)
	attempts map[string]*attemptInHand // attempts (run, task, attempt) in hand, until their outcome is recorded

	// Set by Run for the reclaimer: where tasks run and how they are counted.
	workCtx context.Context
	runCtx  context.Context // Run's: done once the worker drains
	tasks   sync.WaitGroup
	signals *signalHub // the handlers' signal waits
	batch   *batcher

	started   time.Time
	processed atomic.Int64
	failed    atomic.Int64
	running   atomic.Int64
}

// attempt is a claimed task being run.
type attempt struct {
	task      *Task
	stream    string
	msgID     string
	cancel    context.CancelCauseFunc
	lastEvent time.Time
	lastNote  string
	lost      bool // the claim is gone; only the heartbeat loop reads and writes it
	deleted   bool // its queue entry was deleted while pending (reported once); heartbeat loop only
	unpended  int  // heartbeats in a row that found its entry pending for nobody; heartbeat loop only
}

type message struct {
	stream   string
	priority int
	id       string
	run      string
	task     string
	attempt  int
	trace    string // the dispatching span's traceparent ("" for none)
	// Set for messages taken over by the reclaimer.
	reclaimed bool
	// deliveries is the message's delivery count when this copy was
	// delivered (1 for a read, XPENDING's after a reclaim, the touch's
	// after the buffer; 0: unknown). Its ack is refused above it.
	deliveries int64
	// fetched is when the message was read (its idle time starts then).
	fetched time.Time
	// pre is the claim the fetch that read the message made (nil: none;
	// the claim script runs after the worker's own checks).
	pre *rdb.ClaimResult
}

// poolOf returns the pool of a queue stream key.
func (w *Worker) poolOf(stream string) string {
	if _, pool, _, ok := w.db.K.ParseQueue(stream); ok {
		return pool
	}
	return DefaultPool
}

// key identifies a message within the worker: stream ids are unique only
// within their stream (two bands or pools can hold the same id).
func (m message) key() string { return rdb.MessageKey(m.stream, m.id) }

// attemptInHand is a task attempt a message of which is being processed.
type attemptInHand struct {
	// Guarded by Worker.mu.
	claimed bool          // our claim holds it
	epoch   int64         // the claim's epoch, once claimed
	parked  []message     // other messages of the attempt that came while the claim was unresolved
	over    chan struct{} // closed once the attempt is no longer in hand
}

// attemptKey names the task attempt m carries; several messages may.
func (m message) attemptKey() string {
	return m.run + "\x00" + m.task + "\x00" + strconv.Itoa(m.attempt)
}

// New returns a Worker.
func New(cfg Config) (*Worker, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	db := rdb.NewP(cfg.Redis, cfg.Namespace, cfg.NamespacePartitions)
	db.ClaimUpstreamBytes = cfg.claimUpstreamBytes
	return &Worker{
		cfg:      cfg,
		db:       db,
		log:      cfg.Logger.With().Str("worker", cfg.ID).Logger(),
		tracer:   tracing.Tracer(cfg.TracerProvider),
		handlers: map[string]Handler{},
		sem:      make(chan struct{}, cfg.Concurrency),
		inflight: map[string]*attempt{},
		handling: map[string]bool{},
		attempts: map[string]*attemptInHand{},
		signals:  newSignalHub(db, cfg.ID, cfg.FetchBlock, cfg.Clock, cfg.Logger.With().Str("worker", cfg.ID).Logger()),
	}, nil
}

// ID returns the worker's id.
func (w *Worker) ID() string { return w.cfg.ID }

// Handle registers h for handler name. Registering a name twice replaces it.
func (w *Worker) Handle(name string, h Handler) { w.handlers[name] = h }

// HandleFunc registers fn for handler name.
func (w *Worker) HandleFunc(name string, fn func(ctx context.Context, t *Task) (any, error)) {
	w.Handle(name, HandlerFunc(fn))
}

// Handlers lists the registered handler names, sorted.
func (w *Worker) Handlers() []string {
	out := make([]string, 0, len(w.handlers))
	for n := range w.handlers {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// startUp prepares the queues' consumer groups, checks the key layout,
// loads the scripts and registers the worker.
func (w *Worker) startUp(ctx context.Context) error {
	for _, pool := range w.cfg.Pools {
		for _, q := range w.db.K.AllQueues(pool) {
			if err := w.db.EnsureGroup(ctx, q, rdb.GroupWorkers); err != nil {
				return fmt.Errorf("worker %s: %w (is Redis reachable?)", w.cfg.ID, err)
			}
		}
	}
	if err := w.db.CheckLayout(ctx); err != nil {
		return fmt.Errorf("worker %s: %w", w.cfg.ID, err)
	}
	if err := w.db.LoadScripts(ctx); err != nil {
		return fmt.Errorf("worker %s: %w", w.cfg.ID, err)
	}
	if err := w.register(ctx); err != nil {
		return fmt.Errorf("worker %s: register: %w", w.cfg.ID, err)
	}
	return nil
}

// Run registers the worker, claims and runs tasks until ctx is cancelled,
// then drains: it stops claiming, lets in-flight tasks finish (up to
// DrainTimeout), deregisters and returns nil. It returns an error only if
// the worker cannot start (a ctx cancelled while it starts is a clean
// stop: nil).
func (w *Worker) Run(ctx context.Context) error {
	w.started = w.cfg.Clock.Now()
	if err := w.startUp(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting: nothing claimed, nothing to drain
		}
		return err
	}
	w.log.Info().Strs("pools", w.cfg.Pools).Int("concurrency", w.cfg.Concurrency).Strs("handlers", w.Handlers()).Msg("worker started")

	// Handlers run under workCtx, which outlives ctx by the drain timeout.
	workCtx, cancelWork := context.WithCancelCause(context.Background())
	defer cancelWork(nil)
	w.workCtx, w.runCtx = workCtx, ctx
	tasks := &w.tasks
	batchCtx, stopBatch := context.WithCancel(context.Background())
	defer stopBatch()
	w.batch = newBatcher(batchCtx, w)
	var loops sync.WaitGroup
	for _, pool := range w.cfg.Pools {
		for part := range w.db.K.Partitions() {
			loops.Add(1)
			go func() {
				defer loops.Done()
				w.fetch(ctx, part, pool)
			}()
		}
	}
	loops.Add(1)
	go func() {
		defer loops.Done()
		w.reclaimLoop(ctx)
	}()
	hbCtx, stopHB := context.WithCancel(context.Background())
	var hb sync.WaitGroup
	hb.Add(1)
	go func() {
		defer hb.Done()
		w.heartbeats(hbCtx)
	}()

	<-ctx.Done()
	w.log.Info().Int64("in_flight", w.running.Load()).Msg("worker draining")
	t := w.cfg.Clock.NewTimer(w.cfg.DrainTimeout) // from the signal, not from when the fetchers notice it
	// The batcher's retries end with the drain's grace at the latest, so a
	// Redis outage during shutdown cannot hold Run for long.
	batchDeadline := w.cfg.Clock.AfterFunc(w.cfg.DrainTimeout+15*time.Second, stopBatch)
	defer batchDeadline.Stop()
	loops.Wait() // no new task starts after this
	drained := make(chan struct{})
	go func() {
		tasks.Wait()
		close(drained)
	}()
	select {
	case <-drained:
		t.Stop()
	case <-t.Chan():
		w.log.Warn().Int64("in_flight", w.running.Load()).Msg("drain timeout: handing in-flight tasks back")
		cancelWork(errDrainTimeout)
		grace := w.cfg.Clock.NewTimer(10 * time.Second)
		select {
		case <-drained:
		case <-grace.Chan():
			// A handler ignores its context: do not hang the process on it.
			w.log.Error().Int64("in_flight", w.running.Load()).Msg("handlers ignore cancellation; exiting without them (their messages stay pending for reclaim)")
		}
		grace.Stop()
	}
	w.signals.close()
	w.batch.stop()
	stopHB()
	hb.Wait()
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w.deregister(dctx)
	w.log.Info().Int64("processed", w.processed.Load()).Msg("worker stopped")
	return nil
}

// fetch reads a pool's band streams of partition part and starts tasks,
// highest band first.
func (w *Worker) fetch(ctx context.Context, part int, pool string) {
	streams := w.db.K.Queues(part, pool) // highest priority first
	var buf []message                    // read, not claimed: each waits for a slot
	defer func() {
		// Stopping: the messages read but not started are given back (none
		// holds a claim: a claimed message starts at once, on its slot).
		w.requeueUnstarted(buf)
	}()
	wait := retry.NewBackoff(retry.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second})
	for {
		if len(buf) == 0 {
			// Reserve the free slots (waiting for one) before reading: a
			// read claims what it reads, and every claim it makes starts at
			// once on a slot reserved for it. A claim that waited for a
			// slot would hold a task that another worker could be running,
			// and a cancel of its run would not reach it; with a fetch loop
			// per pool and partition, slots counted instead of reserved
			// were claimed by several loops at once.
			select {
			case <-ctx.Done():
				return
			case w.sem <- struct{}{}:
			}
			held := 1 + w.tryAcquire(cap(w.sem)-1)
			res, claims, err := w.fetchClaim(ctx, part, pool, held)
			if err == nil && len(res) == 0 {
				// Nothing queued: block until something arrives in any band,
				// without holding slots (the reclaimer and the other loops
				// need them), then claim what the slots free now take, as
				// the fetch would have.
				w.release(held)
				res, err = w.db.ReadGroup(ctx, rdb.GroupWorkers, w.cfg.ID, streams, ">", 1, w.cfg.FetchBlock)
				held = 0
				// A read sent before a stop can return after it (go-redis
				// does not cut a BLOCK on the wire short): what it read is
				// given back, not claimed.
				if err == nil && len(res) > 0 && ctx.Err() == nil {
					// One message per band: when messages landed in several
					// bands before the read, it returns one of each, maybe
					// more than the free slots. Those the slots take are
					// claimed (highest band first); the rest wait unclaimed
					// and are claimed when they start.
					if held = w.tryAcquire(countMessages(res)); held > 0 {
						claims = w.claimFresh(ctx, part, firstMessages(res, held))
					}
				}
			}
			if err != nil {
				w.release(held)
				if ctx.Err() != nil {
					return
				}
				w.log.Warn().Err(err).Str("pool", pool).Msg("read queue")
				if strings.Contains(err.Error(), "NOGROUP") {
					for _, q := range streams {
						_ = w.db.EnsureGroup(ctx, q, rdb.GroupWorkers)
					}
				}
				wait.Wait(ctx) // longer after each failed read in a row
				continue
			}
			wait.Reset()
			buf = w.startReserved(w.messages(res, claims, nil), held)
			continue
		}
		if ctx.Err() != nil {
			return // the buffered messages are given back
		}
		select {
		case w.sem <- struct{}{}:
		default:
			if w.cfg.slotWait != nil {
				w.cfg.slotWait(buf[0].task, buf[0].pre != nil)
			}
			select {
			case <-ctx.Done():
				return
			case w.sem <- struct{}{}:
			}
		}
		m := buf[0]
		buf = buf[1:]
		w.start(m)
	}
}

// startReserved starts msgs (ordered by band, highest first) on the held
// slots reserved for them: every claimed message, then unclaimed ones in
// order while slots remain. It frees the slots left over and returns the
// messages not started (none claimed), which wait for a slot.
func (w *Worker) startReserved(msgs []message, held int) (rest []message) {
	for _, m := range msgs {
		if m.pre == nil {
			continue
		}
		if held == 0 {
			// Cannot happen: a read claims no more than the slots it holds.
			// Had it, the claim is checked again when the message starts.
			w.log.Error().Str("run", m.run).Str("task", m.task).Msg("a read claimed more messages than the slots it held")
			m.pre = nil
			rest = append(rest, m)
			continue
		}
		held--
		w.start(m)
	}
	for _, m := range msgs {
		switch {
		case m.pre != nil:
		case held > 0:
			held--
			w.start(m)
		default:
			rest = append(rest, m)
		}
	}
	w.release(held)
	return rest
}

// countMessages is the number of messages of a read.
func countMessages(res []rdb.Stream) int {
	n := 0
	for _, s := range res {
		n += len(s.Messages)
	}
	return n
}

// fetchClaim reads up to n new messages of a pool and claims, in the same
// call, those whose task is dispatched for the message's attempt
// (rdb.FetchClaim): claims maps message keys to their claims.
func (w *Worker) fetchClaim(ctx context.Context, part int, pool string, n int) ([]rdb.Stream, map[string]rdb.ClaimResult, error) {
	now := w.cfg.Clock.Now()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = events.NewID(now)
	}
	began := time.Now()
	res, claims, err := w.db.FetchClaim(ctx, part, pool, w.cfg.ID, ids, now.UnixMilli())
	if len(claims) > 0 {
		w.obs().ClaimBatch(len(claims), time.Since(began))
	}
	return res, claims, err
}

// firstMessages returns the first n messages of res, in its order (a
// read's streams come in the order asked: highest band first).
func firstMessages(res []rdb.Stream, n int) []rdb.Stream {
	var out []rdb.Stream
	for _, s := range res {
		if n <= 0 {
			break
		}
		if len(s.Messages) > n {
			s.Messages = s.Messages[:n]
		}
		out = append(out, s)
		n -= len(s.Messages)
	}
	return out
}

// claimFresh claims what a blocking read returned as a fetch claims what
// it reads (rdb.ClaimFresh). After a failed call the messages go to the
// claim script after the worker's checks, as unclaimed ones do: they are
// ours and pending either way, and a claim whose reply was lost is
// answered "already ours".
func (w *Worker) claimFresh(ctx context.Context, part int, res []rdb.Stream) map[string]rdb.ClaimResult {
	now := w.cfg.Clock.Now()
	began := time.Now()
	claims, err := w.db.ClaimFresh(ctx, part, w.cfg.ID, res, func() string { return events.NewID(now) }, now.UnixMilli())
	if err != nil {
		if ctx.Err() == nil {
			w.log.Debug().Err(err).Msg("claim what the blocking read returned; the claim script will")
		}
		return nil
	}
	if len(claims) > 0 {
		w.obs().ClaimBatch(len(claims), time.Since(began))
	}
	return claims
}

// requeueUnstarted gives back messages read but not started at shutdown:
// a fresh copy is queued and ours acked, in one step (a duplicate copy is
// dropped at claim). A message whose task we hold (a claim whose reply was
// lost; a read's claims start at once and are not given back) has its
// claim handed back in that step too (a fresh copy of a task claimed by us
// would be refused as busy).
func (w *Worker) requeueUnstarted(buf []message) {
	if len(buf) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var items []rdb.MoveItem
	for _, m := range buf {
		w.mu.Lock()
		busy := w.handling[m.key()] // the reclaimer took it over: it is running
		_, inHand := w.attempts[m.attemptKey()]
		w.mu.Unlock()
		if busy {
			continue
		}
		epoch, ours := int64(0), m.pre != nil
		if ours {
			epoch = m.pre.Epoch
		} else if !inHand { // a copy of an attempt a handler of ours holds: that claim is the handler's
			rec, err := w.db.TaskRecord(ctx, m.run, m.task)
			if err == nil && rec.Status == events.TaskStatusRunning && rec.Owner == w.cfg.ID && rec.Attempt == m.attempt {
				// Claimed by a call whose reply was lost: ours all the same.
				epoch, ours = rec.Epoch, true
			}
		}
		disp := rdb.Dispatch{Pool: w.poolOf(m.stream), Priority: m.priority, Run: m.run, Task: m.task, Attempt: m.attempt, Trace: m.trace}
		if ours {
			// Released, queued afresh and acked in one step.
			now := w.cfg.Clock.Now()
			if err := w.db.HandBack(ctx, w.cfg.ID, epoch, events.NewID(now), now.UnixMilli(), disp, m.stream, m.id); err != nil {
				// Still ours (or gone): it stays pending for reclaim.
				w.log.Warn().Err(err).Str("run", m.run).Str("task", m.task).Msg("give back an unstarted claimed message: hand-back failed; it stays pending for reclaim")
			}
			continue
		}
		items = append(items, rdb.MoveItem{Stream: m.stream, ID: m.id, Dispatch: disp})
	}
	if err := w.db.QueueMoves(ctx, w.cfg.ID, items); err != nil {
		w.log.Warn().Err(err).Int("messages", len(buf)).Msg("give back unstarted messages; they stay pending for reclaim")
		return
	}
	w.log.Info().Int("messages", len(buf)).Msg("gave back unstarted messages")
}

// start runs m in a new goroutine; the caller holds a semaphore slot,
// which the goroutine releases as soon as the handler's outcome is queued
// for the batcher (recording it is the batcher's round trips, not the
// slot's: a slot held through them would idle the handlers). The drain
// still waits for the outcome to be recorded.
func (w *Worker) start(m message) {
	w.running.Add(1)
	w.tasks.Add(1)
	var once sync.Once
	release := func() { once.Do(func() { <-w.sem }) }
	go func() {
		defer func() {
			release()
			w.running.Add(-1) // in flight until its outcome is recorded
			w.tasks.Done()
		}()
		next := []message{m}
		for len(next) > 0 {
			m := next[0]
			next = append(next[1:], w.process(w.workCtx, m, release)...)
		}
	}()
}

// messages appends the read messages to buf, ordered by band, highest
// first; claims holds the claims the fetch made (by message key).
func (w *Worker) messages(res []rdb.Stream, claims map[string]rdb.ClaimResult, buf []message) []message {
	for _, s := range res {
		_, _, prio, _ := w.db.K.ParseQueue(s.Stream)
		for _, m := range s.Messages {
			run, _ := m.Values[rdb.MsgRun].(string)
			task, _ := m.Values[rdb.MsgTask].(string)
			a, _ := m.Values[rdb.MsgAttempt].(string)
			att, _ := strconv.Atoi(a)
			tp, _ := m.Values[rdb.MsgTrace].(string)
			msg := message{stream: s.Stream, priority: prio, id: m.ID, run: run, task: task, attempt: att, trace: tp,
				deliveries: 1,          // a new message, read once (the reclaimer sets its own)
				fetched:    time.Now()} // real time: Redis measures the lease
			if cr, ok := claims[msg.key()]; ok {
				msg.pre = &cr
			}
			buf = append(buf, msg)
		}
	}
	sort.SliceStable(buf, func(i, j int) bool { return buf[i].priority > buf[j].priority })
	return buf
}

func (w *Worker) now() int64 { return w.cfg.Clock.Now().UnixMilli() }

// process claims one message's task, runs it and reports the outcome. It
// calls release (the task's slot) once the outcome is queued for the
// batcher. It returns the other messages of the same attempt that arrived
// while its claim was unresolved, if that claim did not hold: they are
// processed next, each on its own.
func (w *Worker) process(ctx context.Context, m message, release func()) (parked []message) {
	log := newTaskLog(&w.log, m)
	if m.run == "" || m.task == "" {
		log.Error().Str("msg", m.id).Msg("malformed queue message; dropping")
		w.ack(ctx, m)
		return
	}
	// The attempt's spans are children of the span that dispatched it.
	ctx = tracing.WithTraceparent(ctx, m.trace)
	// One attempt per message in this worker: the reclaimer may take over a
	// message the fetcher still holds in its buffer (it waited past the
	// lease for a slot); the second start must not run it again.
	// One run per attempt, too: a second message of an attempt in hand
	// here (a repair's or a hand-back's copy) would pass the claim
	// script as "already ours" and run the handler again. The first message
	// stays pending until that attempt's outcome is recorded, so the copy
	// is redundant while our claim holds: ack it (owner-checked, and only
	// while the claim holds: a claim handed back meanwhile makes the copy
	// the task's only message, left pending for the reclaim).
	w.mu.Lock()
	if w.handling[m.key()] {
		w.mu.Unlock()
		log.Debug().Str("msg", m.id).Msg("message already being handled here")
		return
	}
	if held, ok := w.attempts[m.attemptKey()]; ok {
		claimed, epoch := held.claimed, held.epoch
		if claimed && m.pre != nil && m.pre.Epoch > held.epoch {
			// This message's fetch claimed the task afresh: the claim we
			// hold was handed back meanwhile (a repair or a release), and
			// its outcome will be refused. This message carries the live
			// claim: it runs, on the slot reserved for it, as soon as the
			// stale attempt is over (its next heartbeat cancels it), not a
			// lease later at its reclaim.
			over := held.over
			w.mu.Unlock()
			log.Info().Str("msg", m.id).Int64("epoch", m.pre.Epoch).Int64("held_epoch", held.epoch).
				Msg("a newer claim of an attempt in hand; it runs once the stale attempt is over")
			select {
			case <-over:
			case <-ctx.Done(): // the drain timed out, the stale handler still on
			}
			if ctx.Err() != nil || (w.runCtx != nil && w.runCtx.Err() != nil) {
				// Draining: no task starts now. Its claim goes back
				// with a fresh message, as an unstarted message's does.
				w.requeueUnstarted([]message{m})
				return nil
			}
			return w.process(ctx, m, release)
		}
		if !claimed && !slices.ContainsFunc(held.parked, func(p message) bool { return p.key() == m.key() }) {
			// The other message's claim is unresolved and may yet be
			// refused (another owner holds the task, maybe a dead one whose
			// message this is): park this one. If the claim succeeds it is
			// acked; if not, it is processed then.
			held.parked = append(held.parked, m)
		}
		w.mu.Unlock()
		if claimed {
			// Our claim holds the attempt and its message stays pending
			// until the outcome is recorded: this copy is redundant.
			w.ackCopy(ctx, log, m, epoch)
			return
		}
		log.Debug().Str("msg", m.id).Msg("a second message of an attempt being claimed here; parked")
		return
	}
	held := &attemptInHand{over: make(chan struct{})}
	w.handling[m.key()] = true
	w.attempts[m.attemptKey()] = held
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.handling, m.key())
		delete(w.attempts, m.attemptKey())
		parked = held.parked // left over only when our claim did not hold
		close(held.over)
		w.mu.Unlock()
	}()
	if !m.reclaimed && time.Since(m.fetched) > w.cfg.Lease/3 {
		// It waited in the buffer for a slot: renew its lease before the
		// claim, or a reclaimer could take it right after we start.
		n, deliveries, err := w.db.TouchMessage(ctx, m.stream, w.cfg.ID, m.id)
		if err == nil && n == -2 {
			// Left pending: a reclaimer finds it deleted and requests the
			// repair that gives the task a fresh message.
			log.Warn().Str("msg", m.id).Msg("buffered message was deleted from its stream; leaving it to the reclaim and repair")
			return
		}
		if err == nil && n != 1 {
			log.Debug().Int64("touch", n).Msg("buffered message no longer ours; dropping it")
			return
		}
		if deliveries > 1 {
			// Delivered again since we read it: another worker's
			// reclaimer took it over (and may have claimed the task,
			// then died), and ours took it back, its holder's lease
			// expired. That reclaimed copy was dropped here as handled
			// (this copy held the mark), so this copy is the reclaim: a
			// plain claim would find the task busy and ack its only
			// message, leaving it running for a dead worker.
			m.reclaimed, m.deliveries = true, deliveries
			log.Info().Int64("deliveries", deliveries).Msg("buffered message was reclaimed away and back; reclaiming its task")
		}
		// A claim its read made may have been handed back or its run
		// cancelled meanwhile: the claim script checks it again ("already
		// ours" with the current epoch if it holds).
		m.pre = nil
	}
	cctx, span := w.startSpan(ctx, tracing.SpanClaim, m, trace.SpanKindConsumer, tracing.Reclaimed.Bool(m.reclaimed))
	var cr rdb.ClaimResult
	var err error
	if m.pre != nil {
		cr = *m.pre // claimed by the fetch that read it
	} else {
		now := w.cfg.Clock.Now()
		cr, err = w.batch.claim(cctx, rdb.ClaimArgs{
			Run: m.run, Task: m.task, Worker: w.cfg.ID, Attempt: m.attempt,
			EventID: events.NewID(now), TimeMS: now.UnixMilli(),
			Reclaim: m.reclaimed, Deliveries: m.deliveries, ReclaimEventID: events.NewID(now),
		})
	}
	if err == nil && cr.Outcome == rdb.ClaimBad {
		err = fmt.Errorf("%w: %s", rdb.ErrBadTaskMeta, cr.Detail) // nothing was written
	}
	span.SetAttributes(tracing.Outcome.String(string(cr.Outcome)), tracing.Epoch.Int64(cr.Epoch), tracing.Handler.String(cr.Meta.Handler))
	tracing.End(span, err)
	if err != nil {
		if m.reclaimed && m.deliveries > int64(w.cfg.PoisonLimit) && !retry.Transient(err) {
			// Its claims keep failing (the run's data cannot be read):
			// the poison limit applies as to a handler that kills its
			// worker. The run is set aside and the message dead-lettered
			// and acked, so it stops cycling.
			w.poisonClaim(ctx, log, m, err)
			return
		}
		log.Error().Err(err).Int64("deliveries", m.deliveries).Msg("claim failed; the message stays pending for reclaim")
		return
	}
	switch cr.Outcome {
	case rdb.ClaimOK:
		w.mu.Lock()
		held.claimed, held.epoch = true, cr.Epoch
		parked := held.parked
		held.parked = nil
		w.mu.Unlock()
		for _, p := range parked {
			w.ackCopy(ctx, log, p, cr.Epoch)
		}
	default:
		// Finished already (maybe by a worker that died before pointing the
		// feed, dead-lettering and acking), or a stale or duplicate message:
		// point the feed at the run again (harmless when not needed: the
		// crashed reporter may have been the one that set @dirty) and ack.
		// The dead letter first, then the pointer and the ack in one step
		// (an ack alone would leave the run dirty with no pointer; an ack
		// after the pointer could trail the run's end).
		log.Debug().Str("outcome", string(cr.Outcome)).Str("detail", cr.Detail).Msg("dropping queue message")
		if cr.Outcome == rdb.ClaimMissing {
			w.ack(ctx, m)
			return
		}
		var dead *rdb.DeadLetterItem
		if cr.Outcome == rdb.ClaimDone && cr.Detail == string(events.TaskStatusFailed) {
			dead = &rdb.DeadLetterItem{Run: m.run, Task: m.task, TimeMS: w.now(), Info: rdb.DeadLetterDetails{
				Attempt: m.attempt, Error: "failed (recorded on redelivery)", Worker: w.cfg.ID}}
		}
		var acked int64
		err := w.redisRetry(ctx, func() (err error) {
			acked, err = w.db.Redeliver(ctx, m.run, dead, w.cfg.ID, m.stream, m.id, m.deliveries)
			return err
		})
		if err != nil {
			log.Warn().Err(err).Msg("re-point the feed; the message stays pending for reclaim")
			return
		}
		w.acked(m, acked)
		return
	}

	t := &Task{
		Run: m.run, ID: m.task, Handler: cr.Meta.Handler, Attempt: m.attempt, MaxAttempts: max(cr.Meta.MaxAttempts, 1),
		Epoch: cr.Epoch, Input: cr.Input, Args: cr.Meta.Args, Upstream: cr.Upstream,
		timeout: time.Duration(cr.Meta.TimeoutMS) * time.Millisecond, resultTTLMS: cr.Meta.ResultTTLMS, expired: withoutExpired(cr.Upstream),
		deps: cr.Meta.Deps, left: cr.UpstreamLeft,
		read: func(ctx context.Context, deps []string) (res map[string]json.RawMessage, err error) {
			// Retried like the worker's own calls (a failover's refused
			// dial must not fail the task).
			err = w.redisRetry(ctx, func() (err error) {
				res, err = w.db.ReadUpstream(ctx, m.run, deps, upstreamPage)
				return err
			})
			return res, err
		},
		cancelRun: func(ctx context.Context, reason string) error {
			now := w.cfg.Clock.Now()
			// Retried like a channel write: cancelling twice is harmless.
			return w.redisRetry(ctx, func() error {
				_, err := w.db.CancelRun(ctx, m.run, w.cfg.ID, reason, now.UnixMilli(), func() string { return events.NewID(now) })
				return err
			})
		},
		channel: w.channelOf(m.run, m.task, m.attempt, cr.Epoch),
		readSpawned: func(ctx context.Context, deps []string) (ids []string, err error) {
			// Retried like the worker's own calls: a failover's refused
			// dial failed the attempt (for good at max_attempts 1).
			err = w.redisRetry(ctx, func() (err error) {
				ids, err = w.db.ReadSpawned(ctx, m.run, deps)
				return err
			})
			return ids, err
		},
		pool: w.poolOf(m.stream), priority: m.priority,
		limits:  spawnLimits{maxTasks: w.cfg.MaxDynamicTasks, maxIterations: w.cfg.MaxIterations},
		signals: w.signals,
	}
	log.claim(t.Epoch, t.Handler)
	if m.reclaimed && m.deliveries > int64(w.cfg.PoisonLimit) {
		log.Error().Int64("deliveries", m.deliveries).Msg("poison task: delivered too often without an outcome; failing it")
		w.finish(ctx, log, m, t, nil, &poisonError{deliveries: m.deliveries, limit: w.cfg.PoisonLimit}, nil, release)
		return
	}
	crashpoint.Hit(crashpoint.WorkerAfterClaim) // as if the handler crashed its worker

	tctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if cr.Meta.TimeoutMS > 0 {
		var stop context.CancelFunc
		tctx, stop = context.WithTimeoutCause(tctx, time.Duration(cr.Meta.TimeoutMS)*time.Millisecond, errTimeout)
		defer stop()
	}
	t.ctx, t.stop = tctx, cancel
	a := &attempt{task: t, stream: m.stream, msgID: m.id, cancel: cancel, lastEvent: w.cfg.Clock.Now()}
	w.mu.Lock()
	w.inflight[m.key()] = a
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.inflight, m.key())
		w.mu.Unlock()
	}()

	hctx, span := w.startSpan(tctx, tracing.SpanHandler, m, trace.SpanKindInternal, tracing.Epoch.Int64(t.Epoch), tracing.Handler.String(t.Handler))
	result, runErr := w.observedCall(hctx, m, t)
	tracing.End(span, runErr)
	switch cause := context.Cause(tctx); {
	case errors.Is(cause, errLeaseLost):
		// Our message may be a duplicate that another claim made stale; if
		// it is still ours, ack it (owner-checked), or its reclaim would
		// take the task from the live claim in turn.
		log.Warn().Msg("claim lost while running; outcome discarded")
		w.ack(ctx, m)
		return
	case errors.Is(cause, errDrainTimeout) && runErr != nil:
		w.handBack(log, m, t)
		return
	}
	w.finish(ctx, log, m, t, result, runErr, context.Cause(tctx), release)
	return
}

// ackCopy acks m, a second message of an attempt this worker runs under
// its claim at epoch, while that claim holds (rdb.AckCopy); a claim handed
// back meanwhile leaves m pending: the task's only message now, which the
// reclaim runs once the lease passes.
func (w *Worker) ackCopy(ctx context.Context, log *taskLog, m message, epoch int64) {
	n, err := w.db.AckCopy(ctx, m.stream, w.cfg.ID, m.id, m.run, m.task, m.attempt, epoch)
	switch {
	case err != nil:
		log.Warn().Err(err).Str("msg", m.id).Msg("ack a second message of an attempt in hand; it stays pending for reclaim")
	case n == 0:
		log.Info().Str("msg", m.id).Int64("held_epoch", epoch).Msg("a second message of an attempt in hand whose claim was handed back; it stays pending for reclaim")
	default:
		log.Debug().Str("msg", m.id).Msg("a second message of an attempt in hand; dropping it")
	}
}

// ErrRunCancelled is the cause (context.Cause) of a handler's context
// cancelled because its run was cancelled (graflow cancel, Client.Cancel,
// Task.CancelRun). Whatever the handler returns then is recorded as
// result_rejected.
var ErrRunCancelled = errors.New("run cancelled")

var (
	errTimeout      = errors.New("task timeout")
	errLeaseLost    = errors.New("lease lost: the task was reclaimed by another worker")
	errDrainTimeout = errors.New("worker drain timeout")
)

// poisonClaim gives up on a message whose claims keep failing with an
// error that is not transient: it quarantines the run (run_quarantined,
// as the projector does for a run it cannot process), dead-letters the
// task with the claim error, and acks the message.
func (w *Worker) poisonClaim(ctx context.Context, log *taskLog, m message, cause error) {
	reason := fmt.Sprintf("claims of task %s keep failing (%d deliveries): %v", m.task, m.deliveries, cause)
	log.Error().Err(cause).Int64("deliveries", m.deliveries).Msg("poison message: its claims keep failing; quarantining the run and dead-lettering the task")
	now := w.cfg.Clock.Now()
	ev := events.Event{ID: events.NewID(now), Type: events.RunQuarantined, Time: now, Worker: w.cfg.ID,
		Version: events.CurrentVersion}.WithBody(events.RunQuarantinedBody{Reason: reason})
	// Retried while Redis is unreachable, as the dead letter is: once the
	// message is acked, nothing would try again. Past that the message
	// stays pending for a later reclaim. A retry after a lost reply finds
	// the run set aside already and appends nothing. A run whose own keys
	// refuse the script (a state key of another type) cannot be set
	// aside: its task is dead-lettered anyway.
	var indexErr error
	err := w.redisRetry(ctx, func() (err error) {
		_, indexErr, err = w.db.Quarantine(ctx, m.run, ev, reason)
		return err
	})
	switch {
	case err != nil && (ctx.Err() != nil || retry.Transient(err)):
		log.Warn().Err(err).Msg("quarantine the run; the message stays pending")
		return
	case err != nil:
		log.Warn().Err(err).Msg("quarantine the run: its keys refuse it; the task is dead-lettered all the same")
	case indexErr != nil:
		log.Warn().Err(indexErr).Msg("index the quarantined run in the namespace's quarantine hash")
	}
	err = w.redisRetry(ctx, func() error {
		return w.db.RecordDeadLetters(ctx, w.cfg.ID, []rdb.DeadLetterItem{{Run: m.run, Task: m.task, TimeMS: w.now(), Info: rdb.DeadLetterDetails{
			Attempt: m.attempt, Error: "claim failed: " + cause.Error(), Worker: w.cfg.ID}}}, nil)
	})
	if err != nil {
		log.Warn().Err(err).Msg("dead-letter the task; the message stays pending")
		return
	}
	w.ack(ctx, m)
}

type poisonError struct {
	deliveries int64
	limit      int
}

func (e *poisonError) Error() string {
	return fmt.Sprintf("poison: delivered %d times without an outcome (limit %d): it may crash its worker", e.deliveries, e.limit)
}

// handBack returns a claim the drain could not finish, so another worker
// takes it now instead of after the lease: one script bumps the epoch,
// marks the task dispatched, queues a fresh message and acks ours (if it
// is still ours). A failure leaves the claim and our message as they
// were: the message is reclaimed after the lease.
func (w *Worker) handBack(log *taskLog, m message, t *Task) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now := w.cfg.Clock.Now()
	disp := rdb.Dispatch{Pool: w.poolOf(m.stream), Priority: m.priority, Run: m.run, Task: m.task, Attempt: t.Attempt, Trace: m.trace}
	if err := w.db.HandBack(ctx, w.cfg.ID, t.Epoch, events.NewID(now), now.UnixMilli(), disp, m.stream, m.id); err != nil {
		log.Warn().Err(err).Msg("hand back failed; the lease will expire instead")
		return
	}
	log.Info().Msg("handed back unfinished task")
}

// call runs the handler, turning a panic into an error.
func (w *Worker) call(ctx context.Context, t *Task) (res any, err error) {
	h, ok := w.handlers[t.Handler]
	if !ok {
		return nil, &unknownHandlerError{name: t.Handler, worker: w.cfg.ID}
	}
	defer func() {
		if p := recover(); p != nil {
			err = &panicError{value: p, stack: debug.Stack()}
		}
	}()
	return h.ProcessTask(ctx, t)
}

type unknownHandlerError struct{ name, worker string }

func (e *unknownHandlerError) Error() string {
	return fmt.Sprintf("no handler %q registered on worker %s (register it with Worker.Handle)", e.name, e.worker)
}

type panicError struct {
	value any
	stack []byte
}

func (e *panicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.value) }

// finish reports the attempt's outcome and acks its message; it calls
// queued once the batcher has the outcome.
func (w *Worker) finish(ctx context.Context, log *taskLog, m message, t *Task, result any, runErr, cause error, queued func()) {
	ctx, span := w.startSpan(ctx, tracing.SpanFinish, m, trace.SpanKindInternal, tracing.Epoch.Int64(t.Epoch), tracing.Handler.String(t.Handler))
	var recordErr error // the outcome was not recorded (or was rejected)
	defer func() { tracing.End(span, recordErr) }()
	now := w.cfg.Clock.Now()
	args := rdb.FinishArgs{
		Run: m.run, Task: m.task, Worker: w.cfg.ID, Attempt: t.Attempt, Epoch: t.Epoch,
		EventID: events.NewID(now), RejectID: events.NewID(now), TimeMS: now.UnixMilli(),
		Unfenced: w.cfg.noFencing,
	}
	var encoded []byte
	if sp, err := t.takeSpawn(now); runErr == nil && err != nil {
		runErr = err
	} else if runErr == nil {
		args.Spawn = sp
	}
	if runErr == nil {
		var err error
		encoded, err = json.Marshal(result)
		switch {
		case err != nil:
			runErr = Permanent(fmt.Errorf("encode result: %w", err))
		case len(encoded) > w.cfg.MaxResultBytes:
			runErr = Permanent(fmt.Errorf("result of %d bytes exceeds the limit of %d", len(encoded), w.cfg.MaxResultBytes))
		}
	}
	if runErr == nil {
		body, _ := json.Marshal(events.TaskSucceededBody{Result: encoded})
		args.Type, args.Body, args.Status, args.Result = events.TaskSucceeded, body, events.TaskStatusSucceeded, encoded
		// If this success is the run's last (a small run: see
		// rdb.EndMaxTasks), the finish ends the run with this id.
		args.EndID = events.NewID(now)
		// The dependents it dispatches itself (rdb.Handoff) carry this
		// span's trace: the run's.
		args.Trace = tracing.Traceparent(ctx)
		if t.resultTTLMS > 0 {
			args.ResultExpiresMS = args.TimeMS + t.resultTTLMS
		}
	} else {
		args.Spawn = nil
		kind := events.FailureError
		var pe *panicError
		var ue *unknownHandlerError
		var poison *poisonError
		switch {
		case errors.As(runErr, &poison):
			kind = events.FailurePoison
			runErr = Permanent(runErr)
		case errors.Is(cause, errTimeout):
			kind = events.FailureTimeout
			runErr = fmt.Errorf("timed out after %s: %w", t.timeout, runErr)
		case errors.As(runErr, &pe):
			kind = events.FailurePanic
			log.Error().Str("stack", string(pe.stack)).Msg("handler panicked")
		case errors.As(runErr, &ue):
			kind = events.FailureUnknown
		}
		final := errors.Is(runErr, ErrPermanent) || t.Attempt >= t.MaxAttempts
		body, _ := json.Marshal(events.TaskFailedBody{Error: runErr.Error(), Kind: kind, Final: final})
		args.Type, args.Body, args.Status = events.TaskFailed, body, "awaiting_retry"
		if kind == events.FailureTimeout {
			args.Type = events.TaskTimedOut
		}
		if final {
			args.Status = events.TaskStatusFailed
		}
	}
	span.SetAttributes(tracing.Outcome.String(string(args.Status)))
	req := finishReq{args: args, m: m}
	req.handler = t.Handler
	if args.Status == events.TaskStatusFailed {
		req.deadLetter = &rdb.DeadLetterDetails{Attempt: t.Attempt, Error: runErr.Error(), Worker: w.cfg.ID, Handler: t.Handler}
	}
	// Report even when the drain's deadline cancelled ctx: the handler
	// finished, so its outcome must not be thrown away. No deadline while it
	// waits for its flush either (a request dropped from the queue is never
	// sent): the flushes' retries end with the batcher's context, and stop
	// answers whatever still waits.
	err := w.batch.finish(context.WithoutCancel(ctx), req, queued)
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	recordErr = err
	if errors.Is(err, rdb.ErrSpawnRefused) {
		// Nothing was written and the claim holds: the attempt fails for
		// good instead (a retry would spawn the same).
		log.Warn().Err(err).Msg("spawn refused; failing the attempt")
		w.finish(ctx, log, m, t, nil, Permanent(fmt.Errorf("task %s: %w", t.ID, err)), nil, func() {})
		return
	}
	if errors.Is(err, rdb.ErrStaleClaim) {
		log.Warn().Err(err).Msg("outcome rejected: claim lost")
		w.ack(fctx, m) // owner-checked: only if the message is still ours
		return
	}
	if err != nil {
		log.Error().Err(err).Msg("report outcome failed; the message stays pending for reclaim")
		return
	}
	if runErr == nil {
		w.processed.Add(1)
		log.Debug().Msg("task succeeded")
	} else {
		w.failed.Add(1)
		log.Info().Err(runErr).Str("status", string(args.Status)).Msg("task failed")
	}
}

// ack drops a message this worker holds, unless a reclaimer took it over
// since this copy was delivered (its delivery count is above the copy's):
// the copy is stale then. A reclaimed copy that comes back here while
// this one is in hand is dropped as handled (the message's mark), and
// this one may find its claim gone (taken by the worker whose reclaimer
// took the message, which may have died since): its ack would drop the
// only message of a task running for a dead worker. Left pending, the
// message is reclaimed again and its task taken over.
func (w *Worker) ack(ctx context.Context, m message) {
	n, err := w.db.AckMessage(ctx, m.stream, w.cfg.ID, m.id, m.deliveries)
	if err != nil {
		w.log.Warn().Err(err).Str("msg", m.id).Msg("ack queue message")
		return
	}
	w.acked(m, n)
}

// acked logs an ack's answer n (AckMessage's) that left m pending.
func (w *Worker) acked(m message, n int64) {
	if n == -2 {
		w.log.Info().Str("run", m.run).Str("task", m.task).Str("msg", m.id).Int64("deliveries", m.deliveries).
			Msg("queue message reclaimed since this copy's delivery; left pending for its reclaim")
	}
}

// redisRetry retries op while it fails with a transient error (Redis
// restarting, the network), for at most 30 s; any other error (a script
// error, WRONGTYPE, NOPERM) is returned at once: retrying it would fail
// again and stall whatever else the calling goroutine serves.
func (w *Worker) redisRetry(ctx context.Context, op func() error) error {
	return retry.Do(ctx, retry.Policy{Initial: 20 * time.Millisecond, Max: 2 * time.Second, MaxElapsed: 30 * time.Second,
		OnError: func(err error, _ time.Duration) {
			if rdb.IsNoScript(err) {
				// Redis restarted and lost its script cache; pipelined
				// EVALSHA does not fall back to EVAL by itself.
				_ = w.db.LoadScripts(ctx)
			}
		}}, op)
}
