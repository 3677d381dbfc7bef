// Package metrics holds Graflow's Prometheus collectors and its health
// checks. A Set is told what a worker or a projector does in-process
// (graflow.Metrics adapts it to worker.Observer and projector.Observer:
// this package imports no engine package) and reads the
// namespace's gauges (queues, feed, runs, dead letters) from Redis when it
// is scraped. The public surface is graflow.Metrics; graflow worker and
// graflow projector serve it with --metrics-addr.
package metrics

import (
	"errors"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults for Options' zero values.
const (
	DefaultCacheFor    = 5 * time.Second
	DefaultReadTimeout = 2 * time.Second
	DefaultRunsLimit   = 10000
)

// Options tune a Set. A zero field means its default.
type Options struct {
	// Pools whose queues are reported (default: every pool with a queue
	// stream, found by SCAN).
	Pools []string
	// CacheFor is how long the Redis gauges read at a scrape are served
	// again before they are read anew (default 5s): a storm of scrapes
	// costs one read.
	CacheFor time.Duration
	// ReadTimeout bounds the Redis reads of one scrape (default 2s).
	ReadTimeout time.Duration
	// RunsLimit bounds the runs, newest first, that graflow_runs counts
	// (default 10000).
	RunsLimit int
	// Now is the clock of the health checks and ages (default time.Now).
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.CacheFor <= 0 {
		o.CacheFor = DefaultCacheFor
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = DefaultReadTimeout
	}
	if o.RunsLimit <= 0 {
		o.RunsLimit = DefaultRunsLimit
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Label values are pool and handler names (bounded by the deployment),
// outcomes and results (fixed sets), bands (0-9) and feed partitions:
// never a run or task id.
var (
	latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	handlerBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}
)

// Set is the collectors of one process. Create it with New, pass it as
// worker.Config.Metrics and projector.Config.Metrics, and register it
// (Collectors) on a registry. Safe for concurrent use.
type Set struct {
	opts   Options
	db     rdb.DB
	Health *Health

	tasks          *prometheus.CounterVec
	running        *prometheus.GaugeVec
	handlerSeconds *prometheus.HistogramVec
	claimSeconds   prometheus.Histogram
	finishSeconds  prometheus.Histogram
	deadLettered   *prometheus.CounterVec
	commitSeconds  prometheus.Histogram
	commits        *prometheus.CounterVec
	redis          *redisCollector
}

// New returns a Set reading the namespace of db.
func New(db rdb.DB, opts Options) *Set {
	opts = opts.withDefaults()
	s := &Set{opts: opts, db: db, Health: newHealth(db, opts.Now)}
	s.tasks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "graflow_worker_tasks_total",
		Help: "Task attempts handled by this worker, by what became of them: succeeded, retry (failed, another attempt follows), failed (for good, dead-lettered), rejected (stale claim: result_rejected), lost (claim lost while running), handed_back (drain timeout), unrecorded (Redis failed; reclaimed later).",
	}, []string{"pool", "handler", "outcome"})
	s.running = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "graflow_worker_tasks_running",
		Help: "Handlers running now in this worker.",
	}, []string{"pool", "handler"})
	s.handlerSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "graflow_worker_handler_duration_seconds",
		Help:    "Time handlers took, by what they returned (result: ok or error).",
		Buckets: handlerBuckets,
	}, []string{"pool", "handler", "result"})
	s.claimSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "graflow_worker_claim_batch_duration_seconds",
		Help:    "Round trip of one batch of claims: a fetch that claimed what it read, the claim of what a blocking read returned, or one pipeline of claim scripts.",
		Buckets: latencyBuckets,
	})
	s.finishSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "graflow_worker_finish_batch_duration_seconds",
		Help:    "Recording one batch of outcomes: the finish scripts, then the dead letters and acks.",
		Buckets: latencyBuckets,
	})
	s.deadLettered = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "graflow_worker_dead_letters_total",
		Help: "Dead letters written by this worker for tasks that failed for good.",
	}, []string{"pool", "handler"})
	s.commitSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "graflow_projector_commit_duration_seconds",
		Help:    "Round trip of one projector commit (one run's script, or a batch's pipeline).",
		Buckets: latencyBuckets,
	})
	s.commits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "graflow_projector_commits_total",
		Help: "Projector commits, by result: committed, conflict (another commit moved the run's head; folded on), error.",
	}, []string{"result"})
	s.redis = newRedisCollector(db, opts)
	return s
}

// Collectors are the Set's collectors, to register on a registry.
func (s *Set) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.tasks, s.running, s.handlerSeconds, s.claimSeconds, s.finishSeconds,
		s.deadLettered, s.commitSeconds, s.commits, s.redis}
}

// Register registers the Set's collectors on reg.
func (s *Set) Register(reg prometheus.Registerer) error {
	var errs []error
	for _, c := range s.Collectors() {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// HandlerStarted is worker.Observer's.
func (s *Set) HandlerStarted(pool, handler string) {
	s.running.WithLabelValues(pool, handler).Inc()
}

// HandlerReturned is worker.Observer's.
func (s *Set) HandlerReturned(pool, handler string, d time.Duration, err error) {
	s.running.WithLabelValues(pool, handler).Dec()
	result := "ok"
	if err != nil {
		result = "error"
	}
	s.handlerSeconds.WithLabelValues(pool, handler, result).Observe(d.Seconds())
}

// TaskDone is worker.Observer's, with the outcome as its text.
func (s *Set) TaskDone(pool, handler, outcome string) {
	s.tasks.WithLabelValues(pool, handler, outcome).Inc()
}

// ClaimBatch is worker.Observer's.
func (s *Set) ClaimBatch(_ int, d time.Duration) { s.claimSeconds.Observe(d.Seconds()) }

// FinishBatch is worker.Observer's.
func (s *Set) FinishBatch(_ int, d time.Duration) { s.finishSeconds.Observe(d.Seconds()) }

// DeadLettered is worker.Observer's.
func (s *Set) DeadLettered(pool, handler string) {
	s.deadLettered.WithLabelValues(pool, handler).Inc()
}

// Committed is projector.Observer's.
func (s *Set) Committed(commits, conflicts, failed int, d time.Duration, _ error) {
	s.commitSeconds.Observe(d.Seconds())
	if ok := commits - conflicts - failed; ok > 0 {
		s.commits.WithLabelValues("committed").Add(float64(ok))
	}
	if conflicts > 0 {
		s.commits.WithLabelValues("conflict").Add(float64(conflicts))
	}
	if failed > 0 {
		s.commits.WithLabelValues("error").Add(float64(failed))
	}
}

// Alive is worker.Observer's and projector.Observer's: it feeds the
// readiness check.
func (s *Set) Alive(loop string, within time.Duration) { s.Health.Alive(loop, within) }
