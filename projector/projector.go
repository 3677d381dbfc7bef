package projector

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/crashpoint"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Defaults for Config's zero values.
const (
	DefaultBatchSize      = 256
	DefaultReadCount      = 2048
	DefaultCacheSize      = 10000
	DefaultParallel       = 16
	DefaultFeedBlock      = 2 * time.Second
	DefaultRetryInitial   = 1 * time.Second
	DefaultRetryMax       = 5 * time.Minute
	DefaultRetryMultiple  = 2.0
	DefaultRetryJitter    = 0.2
	DefaultDelayedMaxWait = 30 * time.Second
	DefaultFeedReclaim    = 15 * time.Second
)

// Config configures a Projector. A zero field means its default.
type Config struct {
	// Redis is required.
	Redis redis.UniversalClient
	// Namespace is the key prefix (default "graflow").
	Namespace string
	// ID names this projector in the feed's consumer group and in the
	// events it writes. Default: "projector-<host>-<pid>". Keep it stable
	// across restarts so the projector resumes its own pending feed entries.
	ID string
	// Partitions lists the feed partitions to consume (default: all).
	Partitions []int
	// BatchSize bounds the decision events of one commit (default 256), so
	// a 20,000-task dispatch is split into short scripts.
	BatchSize int
	// ReadCount bounds the log entries read per round trip (default 2048).
	ReadCount int
	// CacheSize bounds the runs whose folded state is kept in memory.
	CacheSize int
	// Parallel bounds the runs projected at once, each on its own, per
	// feed partition (default 16): those a batched pass leaves over (long
	// logs, conflicts, big dispatches).
	Parallel int
	// RunTTL, when set, makes a finished run's keys expire this long after
	// it ended, set by the commit that ends it (default 0: runs are kept;
	// "graflow gc" deletes old ones). A requeue reopening the run removes
	// it.
	RunTTL time.Duration
	// CompactLog: the commit that ends a run rewrites its log, if it holds
	// at most this many events, with memory sized to fit (Redis keeps a
	// stream's newest node preallocated, up to 4 KiB). Default
	// rdb.DefaultCompactLog; negative: never.
	CompactLog int
	// FeedBlock is how long one XREADGROUP blocks (default 2s); it only
	// bounds how fast Run notices cancellation.
	FeedBlock time.Duration
	// FeedReclaimIdle: feed entries pending this long (their projector
	// died mid-run) are taken over (default 15s).
	FeedReclaimIdle time.Duration
	// RetryInitial, RetryMax, RetryMultiplier and RetryJitter shape the
	// exponential backoff between attempts (defaults 1s, 5m, 2, 0.2).
	RetryInitial    time.Duration
	RetryMax        time.Duration
	RetryMultiplier float64
	RetryJitter     float64
	// RunFailures: a run that fails to project this many times in a row
	// with an error that is not transient is quarantined (default
	// DefaultRunFailures). Transient errors (Redis unreachable) are
	// retried for as long as they last.
	RunFailures int
	// Logger; nil is quiet.
	Logger *zerolog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.Namespace == "" {
		c.Namespace = rdb.DefaultNamespace
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = "projector-" + host + "-" + strconv.Itoa(os.Getpid())
	}
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.ReadCount <= 0 {
		c.ReadCount = DefaultReadCount
	}
	if c.CompactLog == 0 {
		c.CompactLog = rdb.DefaultCompactLog
	}
	if c.CacheSize <= 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.Parallel <= 0 {
		c.Parallel = DefaultParallel
	}
	if c.FeedBlock <= 0 {
		c.FeedBlock = DefaultFeedBlock
	}
	if c.FeedReclaimIdle <= 0 {
		c.FeedReclaimIdle = DefaultFeedReclaim
	}
	if c.RetryInitial <= 0 {
		c.RetryInitial = DefaultRetryInitial
	}
	if c.RetryMax <= 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.RetryMultiplier <= 0 {
		c.RetryMultiplier = DefaultRetryMultiple
	}
	if c.RetryJitter < 0 {
		c.RetryJitter = 0
	} else if c.RetryJitter == 0 {
		c.RetryJitter = DefaultRetryJitter
	}
	if c.RunFailures <= 0 {
		c.RunFailures = DefaultRunFailures
	}
	if c.Logger == nil {
		l := zerolog.Nop()
		c.Logger = &l
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func (c Config) validate() error {
	errs := rdb.CheckConnection("projector", c.Redis != nil, c.Namespace)
	for _, p := range c.Partitions {
		if p < 0 || p >= rdb.DefaultFeedPartitions {
			errs = append(errs, fmt.Errorf("projector: partition %d out of range 0..%d", p, rdb.DefaultFeedPartitions-1))
		}
	}
	return errors.Join(errs...)
}

// Projector consumes the feed, folds runs' new events and commits the
// decisions they call for. Any number may run; commits are compare-and-set
// on each run's cursor. Safe for concurrent use.
type Projector struct {
	cfg Config
	db  rdb.DB
	log zerolog.Logger

	mu    sync.Mutex
	cache map[string]*cached

	wakeDelayed chan struct{}
}

type cached struct {
	mu   sync.Mutex
	run  *Run
	head rdb.Head // the run's head that the next commit compares and sets
}

// New returns a Projector.
func New(cfg Config) (*Projector, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Projector{
		cfg:         cfg,
		db:          rdb.New(cfg.Redis, cfg.Namespace),
		log:         cfg.Logger.With().Str("projector", cfg.ID).Logger(),
		cache:       map[string]*cached{},
		wakeDelayed: make(chan struct{}, 1),
	}, nil
}

// Run consumes the feed partitions and moves due retries until ctx is
// cancelled; it returns nil then. Redis errors are retried with backoff.
func (p *Projector) Run(ctx context.Context) error {
	parts := p.cfg.Partitions
	if len(parts) == 0 {
		for i := 0; i < p.db.K.Partitions(); i++ {
			parts = append(parts, i)
		}
	}
	var wg sync.WaitGroup
	for _, n := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.consume(ctx, n)
		}()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		p.moveDelayed(ctx)
	}()
	go func() {
		defer wg.Done()
		p.reclaimFeed(ctx, parts)
	}()
	wg.Wait()
	return nil
}

// retry runs op until it succeeds or ctx ends, backing off on errors.
func retry(ctx context.Context, log zerolog.Logger, what string, op func() error) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.MaxElapsedTime = 50*time.Millisecond, 5*time.Second, 0
	return backoff.RetryNotify(op, backoff.WithContext(b, ctx), func(err error, d time.Duration) {
		log.Warn().Err(err).Dur("retry_in", d).Msg(what)
	})
}

func (p *Projector) consume(ctx context.Context, n int) {
	stream := p.db.K.Feed(n)
	log := p.log.With().Int("partition", n).Logger()
	if err := retry(ctx, log, "create feed group", func() error {
		return p.db.EnsureGroup(ctx, stream, rdb.GroupProjectors)
	}); err != nil {
		return
	}
	start := "0"          // our own pending entries first (a restart resumes them)
	var pend acks         // the last batch's acks, sent with the next read
	var ownRead time.Time // when our own pending entries were last read
	defer func() {
		// Leaving: send what is left (a crash here instead leaves the
		// entries pending; another projector takes them over).
		if !pend.empty() {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = p.sendAcks(actx, pend, nil)
		}
	}()
	for ctx.Err() == nil {
		var msgs []redis.XMessage
		if !pend.empty() {
			// Under load: the acks and a non-blocking read of the next
			// batch in one round trip.
			if err := p.sendAcks(ctx, pend, &readArgs{stream: stream, start: start, consumer: p.cfg.ID, out: &msgs}); err != nil {
				// Whatever the read returned is ours to project; the acks
				// are retried alone, and our own pending entries are read
				// again next (a lost reply may have left some there).
				start = "0"
				if err := retry(ctx, log, "ack feed", func() error { return p.sendAcks(ctx, pend, nil) }); err != nil {
					return
				}
			} else if len(msgs) == 0 && time.Since(ownRead) >= p.cfg.FeedBlock {
				// Going idle, everything acked: read our own pending
				// entries before blocking (at most once per FeedBlock, off
				// the hot path). A read whose reply was lost and that
				// go-redis repeated without telling us left its entries
				// delivered to us and unseen; they would otherwise wait
				// for the feed reclaim.
				start = "0"
			}
			pend = acks{}
		}
		if len(msgs) == 0 {
			var res []redis.XStream
			if start == "0" {
				ownRead = time.Now()
			}
			err := retry(ctx, log, "read feed", func() error {
				var err error
				res, err = p.cfg.Redis.XReadGroup(ctx, &redis.XReadGroupArgs{
					Group: rdb.GroupProjectors, Consumer: p.cfg.ID, Streams: []string{stream, start},
					Count: feedCount, Block: p.cfg.FeedBlock,
				}).Result()
				if errors.Is(err, redis.Nil) {
					res, err = nil, nil
				}
				if err != nil && ctx.Err() != nil {
					return backoff.Permanent(err)
				}
				if err != nil && isNoGroup(err) {
					_ = p.db.EnsureGroup(ctx, stream, rdb.GroupProjectors)
				}
				if err != nil {
					start = "0" // a lost reply may have left entries pending for us
				}
				return err
			})
			if err != nil {
				return
			}
			if len(res) > 0 {
				msgs = res[0].Messages
			}
		}
		if start == "0" && len(msgs) == 0 {
			start = ">"
			continue
		}
		if start == ">" && len(msgs) == 0 {
			// A blocking read that timed out: idle, so look at our own
			// pending entries next (see above).
			start = "0"
			continue
		}
		var ok bool
		if pend, ok = p.handle(ctx, log, stream, msgs); !ok {
			return
		}
	}
}

// feedCount bounds the feed entries of one read.
const feedCount = 256

// acks are what a projected feed batch leaves to acknowledge: the relayed
// outboxes of its runs, then its feed entries.
type acks struct {
	stream string
	ids    []string
	outbox []outboxAck
}

func (a acks) empty() bool { return len(a.ids) == 0 && len(a.outbox) == 0 }

// readArgs asks sendAcks to read the next feed entries (non-blocking) in
// the same round trip.
type readArgs struct {
	stream, start, consumer string
	out                     *[]redis.XMessage
}

// sendAcks removes the relayed entries from their outboxes and acks and
// deletes the feed entries, in one pipeline; with next, it also reads the
// next feed entries (non-blocking). An outbox ack refused with NOSCRIPT
// (Redis restarted) is sent again after loading the scripts. A failed
// outbox ack leaves relayed entries in the outbox: the run's next commit
// reads them back and relays them again (duplicates are dropped at claim).
// It returns the acks' errors, or the read's when the read failed; a read
// whose reply was lost (go-redis may also repeat the pipeline) may leave
// entries pending for this consumer, so after an error the caller re-reads
// its own pending entries.
func (p *Projector) sendAcks(ctx context.Context, a acks, next *readArgs) error {
	pipe := p.cfg.Redis.Pipeline()
	outbox := make([]*redis.Cmd, len(a.outbox))
	for i, o := range a.outbox {
		outbox[i] = p.db.OutboxAckCmd(ctx, pipe, o.run, o.entries)
	}
	var acked []redis.Cmder
	if len(a.ids) > 0 {
		acked = append(acked, pipe.XAck(ctx, a.stream, rdb.GroupProjectors, a.ids...), pipe.XDel(ctx, a.stream, a.ids...))
	}
	var read *redis.XStreamSliceCmd
	if next != nil {
		read = pipe.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: rdb.GroupProjectors, Consumer: next.consumer, Streams: []string{next.stream, next.start},
			Count: feedCount, Block: -1,
		})
	}
	_, execErr := pipe.Exec(ctx)
	if read != nil {
		if res, rerr := read.Result(); rerr == nil && len(res) > 0 {
			*next.out = res[0].Messages
		} else if rerr != nil && !errors.Is(rerr, redis.Nil) && isNoGroup(rerr) {
			_ = p.db.EnsureGroup(ctx, next.stream, rdb.GroupProjectors)
		}
	}
	// The acks' own errors (the read's are the caller's business).
	var errs []error
	var again []outboxAck
	for i, c := range outbox {
		switch err := c.Err(); {
		case rdb.IsNoScript(err):
			again = append(again, a.outbox[i])
		case err != nil:
			errs = append(errs, err)
		}
	}
	for _, c := range acked {
		errs = append(errs, c.Err())
	}
	if len(again) > 0 {
		errs = append(errs, p.db.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, o := range again {
				p.db.OutboxAckCmd(ctx, pipe, o.run, o.entries)
			}
			return nil
		}))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if read != nil && execErr != nil && read.Err() != nil && !errors.Is(read.Err(), redis.Nil) {
		return fmt.Errorf("read feed: %w", read.Err())
	}
	return nil
}

// handle projects the runs that feed entries point at (each run once per
// batch: pointers coalesce) and returns the acks that follow: the relayed
// outboxes, then the entries. It returns false when ctx ended.
func (p *Projector) handle(ctx context.Context, log zerolog.Logger, stream string, msgs []redis.XMessage) (acks, bool) {
	ids := make([]string, 0, len(msgs))
	seen := map[string]bool{}
	var runs []string
	for _, m := range msgs {
		ids = append(ids, m.ID)
		run, _ := m.Values[rdb.MsgRun].(string)
		if run == "" || seen[run] {
			continue
		}
		seen[run] = true
		runs = append(runs, run)
	}
	// The common case for every run at once, a pipeline per step; then
	// the runs that need more, up to Parallel of them at once (each is a
	// few round trips; one at a time would leave Redis idle).
	runs, later := p.projectBatch(ctx, runs)
	var wg sync.WaitGroup
	sem := make(chan struct{}, p.cfg.Parallel)
	for _, run := range runs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			p.projectOrQuarantine(ctx, log, run)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return acks{}, false
	}
	return acks{stream: stream, ids: ids, outbox: later}, true
}

// reclaimFeed takes over feed entries left pending by projectors that died
// (idle longer than FeedReclaimIdle), so their runs move on.
func (p *Projector) reclaimFeed(ctx context.Context, parts []int) {
	t := time.NewTicker(p.cfg.FeedReclaimIdle / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, n := range parts {
			stream := p.db.K.Feed(n)
			log := p.log.With().Int("partition", n).Logger()
			start := "0-0"
			for ctx.Err() == nil {
				msgs, next, err := p.cfg.Redis.XAutoClaim(ctx, &redis.XAutoClaimArgs{
					Stream: stream, Group: rdb.GroupProjectors, Consumer: p.cfg.ID,
					MinIdle: p.cfg.FeedReclaimIdle, Start: start, Count: 256,
				}).Result()
				if err != nil {
					if ctx.Err() == nil && !isNoGroup(err) {
						log.Warn().Err(err).Msg("reclaim feed entries")
					}
					break
				}
				if len(msgs) > 0 {
					log.Info().Int("entries", len(msgs)).Msg("took over feed entries of a dead projector")
					if a, ok := p.handle(ctx, log, stream, msgs); ok {
						_ = retry(ctx, log, "ack feed", func() error { return p.sendAcks(ctx, a, nil) })
					}
				}
				if next == "0-0" || next == "" {
					break
				}
				start = next
			}
		}
	}
}

func isNoGroup(err error) bool {
	return err != nil && len(err.Error()) >= 7 && err.Error()[:7] == "NOGROUP"
}

func (p *Projector) forget(run string) {
	p.mu.Lock()
	delete(p.cache, run)
	p.mu.Unlock()
}

func (p *Projector) entry(run string) *cached {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.cache[run]
	if c == nil {
		if len(p.cache) >= p.cfg.CacheSize {
			for k := range p.cache { // evict an arbitrary run
				delete(p.cache, k)
				break
			}
		}
		c = &cached{}
		p.cache[run] = c
	}
	return c
}

// Project folds run's events after its cursor, commits the decisions they
// call for and relays the outbox, until the run is caught up. It is
// idempotent and safe to call concurrently with other projectors.
func (p *Projector) Project(ctx context.Context, run string) error {
	c := p.entry(run)
	c.mu.Lock()
	defer c.mu.Unlock()
	conflicts := 0
	next := stepReadOn
	for {
		if c.run == nil {
			if err := p.load(ctx, run, c); err != nil {
				return err
			}
			next = stepDecide
		}
		if next == stepReadOn {
			// Fold to the end of the log before deciding: a page short of
			// it may not reach decisions already committed (ours, after a
			// commit that was not caught up, or those of the head a run
			// was loaded at), which would then be made again.
			for {
				n, err := p.readInto(ctx, run, c.run)
				if err != nil {
					c.run = nil
					return err
				}
				if n < p.cfg.ReadCount {
					break
				}
			}
		}
		if c.run.Status == RunUnknown {
			return nil // no such run (feed pointer for a deleted run)
		}
		if c.run.Status == RunQuarantined {
			p.forget(run) // set aside for good
			return nil
		}
		decisions, commit := p.prepare(c)
		res, step, err := p.commitStep(ctx, run, c, decisions, commit)
		if err != nil {
			return err
		}
		if res.Conflict {
			conflicts++
			p.log.Debug().Str("run", run).Int("conflicts", conflicts).Str("why", res.Why).Msg("commit refused; folding on")
			if conflicts > maxConflicts {
				c.run = nil
				return fmt.Errorf("project run %s: %d %w (last: %s)", run, conflicts, errConflictStorm, res.Why)
			}
		}
		if step == stepDone {
			return nil
		}
		next = step
	}
}

// maxConflicts bounds the commit conflicts in a row one Project call
// takes before it gives up with an error (and its caller retries later).
const maxConflicts = 100

// step says how Project goes on after a commit.
type step int

const (
	stepDone   step = iota // caught up and nothing more to decide
	stepReadOn             // the log moved on: fold the new entries, then decide
	stepDecide             // caught up with more to decide: decide again from the cache
)

// commitStep commits c's prepared decisions and carries on as far as the
// reply allows: on a conflict it takes the current head and keeps its
// cached fold (the log only grows, so the fold is still a prefix of it;
// what the other commit appended is read next), except when a task's
// record disagreed with the fold, which reloads the run; after a commit it
// relays the outbox and, caught up, applies the decisions to the cache.
func (p *Projector) commitStep(ctx context.Context, run string, c *cached, decisions []events.Event, commit rdb.Commit) (rdb.CommitResult, step, error) {
	res, err := p.db.Commit(ctx, run, commit)
	if err != nil {
		c.run = nil
		return res, stepDone, err
	}
	if res.Conflict {
		c.head = res.Head
		if !res.HeadMoved() {
			c.run = nil // the records disagree with our fold: start afresh
		}
		return res, stepReadOn, nil
	}
	crashpoint.Hit(crashpoint.ProjectorAfterCommit)
	outbox := commit.Outbox
	if res.Outbox > 0 && res.Outbox == int64(len(outbox)) {
		// The outbox holds exactly what we just pushed: relay it
		// without reading it back.
		if err := p.relay(ctx, run, outbox); err != nil {
			c.run = nil
			return res, stepDone, err
		}
	} else if res.Outbox > 0 {
		if err := p.Relay(ctx, run); err != nil {
			c.run = nil
			return res, stepDone, err
		}
	}
	if !res.CaughtUp {
		c.head = res.Head
		return res, stepReadOn, nil
	}
	more, err := p.settle(run, c, decisions, res)
	if err != nil {
		return res, stepDone, err
	}
	if more {
		return res, stepDecide, nil
	}
	return res, stepDone, nil
}

// settle applies a caught-up commit's decisions to c's cached run and
// reports whether the run calls for more decisions. A finished run leaves
// the cache (its TTL, when configured, was set by the commit that ended it).
func (p *Projector) settle(run string, c *cached, decisions []events.Event, res rdb.CommitResult) (bool, error) {
	for i, d := range decisions {
		d.Seq = res.Seqs[i]
		if err := Apply(c.run, d); err != nil {
			c.run = nil
			return false, err
		}
	}
	c.head = res.Head
	// Caught up: @dirty is cleared. If the decisions call for nothing
	// more, the run is done for now (no confirming commit needed).
	if len(decisions) == 0 || len(Decide(c.run, 1, p.retryDelay)) == 0 {
		if c.run.Status.Terminal() {
			p.forget(run)
		}
		return false, nil
	}
	return true, nil
}

// prepare decides what c's folded run calls for (at most BatchSize
// decisions) and builds the commit that appends them with a compare-and-set
// on c's cursor.
func (p *Projector) prepare(c *cached) ([]events.Event, rdb.Commit) {
	decisions := Decide(c.run, p.cfg.BatchSize, p.retryDelay)
	now := p.cfg.Now()
	records := map[string]string{}
	expect := map[string]string{}
	var outbox []string
	for i := range decisions {
		d := &decisions[i]
		d.ID, d.Time, d.Worker, d.Version = ulid.Make().String(), now, p.cfg.ID, events.CurrentVersion
		if d.Type == events.TaskRetryScheduled {
			var b events.TaskRetryScheduledBody
			_ = d.DecodeBody(&b)
			b.DueMS = now.UnixMilli() + b.DelayMS
			*d = d.WithBody(b)
		}
		if t := c.run.Task(d.Task); t != nil {
			// The record this decision was taken on (decisions change
			// their tasks only in the cached fold's successor state).
			expect[d.Task] = RecordOf(t).String()
		}
		rec, disp := p.effect(c.run, *d)
		for f, v := range rec {
			records[f] = v
		}
		if disp != nil {
			outbox = append(outbox, disp.String())
		}
	}
	commit := rdb.Commit{
		Expected: c.head, FoldedTo: c.run.LastSeq, Writer: p.cfg.ID, TimeMS: now.UnixMilli(),
		Events: decisions, Records: records, Expect: expect, Outbox: outbox,
	}
	for _, d := range decisions {
		if d.Type == events.RunSucceeded || d.Type == events.RunFailed {
			commit.CompactLog, commit.TTL = max(p.cfg.CompactLog, 0), p.cfg.RunTTL
		}
	}
	return decisions, commit
}

// effect computes what a decision writes besides its event: task records,
// run fields, and the dispatch for the outbox.
func (p *Projector) effect(r *Run, d events.Event) (map[string]string, *rdb.Dispatch) {
	switch d.Type {
	case events.RunSucceeded:
		return map[string]string{rdb.FieldRunStatus: string(RunSucceeded)}, nil
	case events.RunFailed:
		return map[string]string{rdb.FieldRunStatus: string(RunFailed)}, nil
	}
	t := r.Task(d.Task)
	if t == nil {
		return nil, nil
	}
	next := *t
	switch d.Type {
	case events.TaskSkipped:
		next.Status = TaskSkipped
	case events.TaskRequeued:
		next.Status, next.Owner = TaskPending, ""
	case events.TaskDispatched, events.TaskRetryScheduled:
		next.Status, next.Attempt = TaskDispatched, d.Attempt
	}
	rec := map[string]string{d.Task: RecordOf(&next).String()}
	if next.Status != TaskDispatched {
		return rec, nil
	}
	disp := &rdb.Dispatch{Pool: t.Spec.Pool, Priority: t.Spec.Priority, Run: r.ID, Task: d.Task, Attempt: d.Attempt, EventID: d.ID}
	if d.Type == events.TaskRetryScheduled {
		var b events.TaskRetryScheduledBody
		_ = d.DecodeBody(&b)
		disp.DueMS = b.DueMS
	}
	return rec, disp
}

// RecordOf is the lease record of a task as the Redis state hash stores it.
func RecordOf(t *Task) rdb.Record {
	return rdb.Record{Status: string(t.Status), Attempt: t.Attempt, Epoch: t.Epoch, Owner: t.Owner}
}

func (p *Projector) retryDelay(spec events.TaskSpec, attempt int) time.Duration {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.Multiplier = p.cfg.RetryInitial, p.cfg.RetryMax, p.cfg.RetryMultiplier
	b.RandomizationFactor, b.MaxElapsedTime = p.cfg.RetryJitter, 0
	b.Reset()
	d := b.NextBackOff()
	for i := 2; i < attempt; i++ {
		d = b.NextBackOff()
	}
	return d
}

// load folds run's whole log from the first event.
func (p *Projector) load(ctx context.Context, run string, c *cached) error {
	// The head and the first page of the log in one round trip (the
	// head read first: a commit in between makes ours conflict).
	pipe := p.cfg.Redis.Pipeline()
	hget := p.db.HeadCmd(ctx, pipe, run)
	first := pipe.XRangeN(ctx, p.db.K.RunLog(run), "-", "+", int64(p.cfg.ReadCount))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("load run %s: %w", run, err)
	}
	head, err := rdb.ParseHead(hget)
	if err != nil {
		return fmt.Errorf("load run %s: %w", run, err)
	}
	if rdb.HeadStatus(hget) == string(RunQuarantined) {
		// Set aside for good: nothing to fold or decide (its log may
		// not even decode).
		r := NewRun(run)
		r.Status = RunQuarantined
		c.run, c.head = r, head
		return nil
	}
	r := NewRun(run)
	r.noResults = true // bounded cache memory: decisions never read results
	n, err := p.fold(run, r, first.Val())
	for err == nil && n == p.cfg.ReadCount {
		n, err = p.readInto(ctx, run, r)
	}
	if err != nil {
		return err
	}
	c.run, c.head = r, head
	return nil
}

// readInto folds up to ReadCount log entries after r.LastSeq into r.
func (p *Projector) readInto(ctx context.Context, run string, r *Run) (int, error) {
	start := "-"
	if r.LastSeq != "" {
		start = "(" + r.LastSeq
	}
	msgs, err := p.cfg.Redis.XRangeN(ctx, p.db.K.RunLog(run), start, "+", int64(p.cfg.ReadCount)).Result()
	if err != nil {
		return 0, fmt.Errorf("read log of run %s: %w", run, err)
	}
	return p.fold(run, r, msgs)
}

// fold decodes and applies log entries to r.
func (p *Projector) fold(run string, r *Run, msgs []redis.XMessage) (int, error) {
	for _, m := range msgs {
		e, err := events.Decode(run, m.ID, m.Values)
		if err != nil {
			return 0, err
		}
		if err := Apply(r, e); err != nil {
			return 0, err
		}
	}
	return len(msgs), nil
}

// Relay moves run's outbox onto the queue streams (or the delayed set) and
// removes what it relayed. A crash between the two relays again; the
// duplicate queue message is dropped by the claim script.
func (p *Projector) Relay(ctx context.Context, run string) error {
	for {
		entries, err := p.cfg.Redis.LRange(ctx, p.db.K.RunOutbox(run), 0, relayBatch-1).Result()
		if err != nil {
			return fmt.Errorf("read outbox of run %s: %w", run, err)
		}
		if len(entries) == 0 {
			return nil
		}
		if err := p.relay(ctx, run, entries); err != nil {
			return err
		}
		if len(entries) < relayBatch {
			// Drained as far as we know; entries pushed since then are
			// relayed by the commit that pushed them.
			return nil
		}
	}
}

const relayBatch = 256

// relay queues entries (the head of run's outbox) and then removes them
// from the outbox, each only if still at its head.
func (p *Projector) relay(ctx context.Context, run string, entries []string) error {
	pipe := p.cfg.Redis.Pipeline()
	delayed := p.queue(ctx, pipe, run, entries)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("relay outbox of run %s: %w", run, err)
	}
	if delayed {
		p.wake()
	}
	if _, err := p.db.OutboxAck(ctx, run, entries); err != nil {
		return fmt.Errorf("ack outbox of run %s: %w", run, err)
	}
	return nil
}

// queue adds the commands that put outbox entries of run on their queue
// streams (or, not yet due, in the delayed set) to pipe. It reports whether
// any went to the delayed set.
func (p *Projector) queue(ctx context.Context, pipe redis.Pipeliner, run string, entries []string) bool {
	now := p.cfg.Now().UnixMilli()
	delayed := false
	for _, s := range entries {
		d, err := rdb.ParseDispatch(s)
		if err != nil {
			p.log.Error().Err(err).Str("run", run).Msg("dropping malformed outbox entry")
			continue
		}
		if d.DueMS > now {
			pipe.ZAdd(ctx, p.db.K.Delayed(), redis.Z{Score: float64(d.DueMS), Member: s})
			delayed = true
		} else {
			p.db.XAddDispatch(ctx, pipe, d)
		}
	}
	return delayed
}

// wake makes the delayed mover look at the delayed set again.
func (p *Projector) wake() {
	select {
	case p.wakeDelayed <- struct{}{}:
	default:
	}
}

// moveDelayed moves due dispatches from the delayed set to their queues. It
// sleeps until the earliest due time (or a relay wakes it); the wait is
// capped so entries parked by other processes are not missed for long.
func (p *Projector) moveDelayed(ctx context.Context) {
	for ctx.Err() == nil {
		wait := DefaultDelayedMaxWait
		err := func() error {
			now := p.cfg.Now().UnixMilli()
			due, err := p.cfg.Redis.ZRangeArgs(ctx, redis.ZRangeArgs{
				Key: p.db.K.Delayed(), Start: "-inf", Stop: strconv.FormatInt(now, 10), ByScore: true, Count: 256,
			}).Result()
			if err != nil {
				return err
			}
			if len(due) > 0 {
				pipe := p.cfg.Redis.Pipeline()
				for _, s := range due {
					d, err := rdb.ParseDispatch(s)
					if err != nil {
						p.log.Error().Err(err).Str("entry", s).Msg("dropping malformed delayed entry")
						continue
					}
					p.db.XAddDispatch(ctx, pipe, d)
				}
				if _, err := pipe.Exec(ctx); err != nil {
					return err
				}
				args := make([]any, len(due))
				for i, s := range due {
					args[i] = s
				}
				if err := p.cfg.Redis.ZRem(ctx, p.db.K.Delayed(), args...).Err(); err != nil {
					return err
				}
				wait = 0
				return nil
			}
			next, err := p.cfg.Redis.ZRangeWithScores(ctx, p.db.K.Delayed(), 0, 0).Result()
			if err != nil {
				return err
			}
			if len(next) > 0 {
				if w := time.Duration(int64(next[0].Score)-now) * time.Millisecond; w < wait {
					wait = w
				}
			}
			return nil
		}()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			p.log.Warn().Err(err).Msg("move delayed dispatches")
			wait = time.Second
		}
		if wait <= 0 {
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-p.wakeDelayed:
			t.Stop()
		case <-t.C:
		}
	}
}
