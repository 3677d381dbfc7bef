package graflow

import (
	"context"
	"net/http"
	"time"

	"github.com/graflow-go/graflow/internal/metrics"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker"
	"github.com/prometheus/client_golang/prometheus"
)

// MetricsOptions tune NewMetrics. A zero field means its default.
type MetricsOptions struct {
	// Pools whose queues are reported (default: every pool with a queue
	// stream in the namespace). A worker passes its own pools.
	Pools []string
	// CacheFor is how long the gauges read from Redis at a scrape are
	// served again (default 5s): a storm of scrapes costs one read.
	CacheFor time.Duration
	// ReadTimeout bounds the Redis reads of one scrape (default 2s).
	ReadTimeout time.Duration
	// RunsLimit bounds the runs, newest first, that graflow_runs counts
	// (default 10000).
	RunsLimit int
}

// Metrics is the Prometheus collectors of a process that embeds workers
// and projectors, and its health checks: the same that graflow worker and
// graflow projector serve with --metrics-addr (docs/operations.md,
// "Metrics and health", lists them).
//
// Pass Worker() as worker.Config.Metrics and Projector() as
// projector.Config.Metrics; then either register the collectors on your
// registry (Register) or serve Handler. Safe for concurrent use.
type Metrics struct {
	set *metrics.Set
}

// NewMetrics returns the collectors for c's namespace (the gauges read
// from Redis go through c's connection).
func NewMetrics(c *Client, opts MetricsOptions) *Metrics {
	return &Metrics{set: metrics.New(c.db, metrics.Options{Pools: opts.Pools, CacheFor: opts.CacheFor,
		ReadTimeout: opts.ReadTimeout, RunsLimit: opts.RunsLimit, Now: c.clock.Now})}
}

// Worker returns the observer to pass as worker.Config.Metrics (any
// number of workers may share it).
func (m *Metrics) Worker() worker.Observer { return workerObserver{m.set} }

// workerObserver is the metrics set as a worker.Observer (internal/metrics
// imports no engine package, so its TaskDone takes the outcome's text).
type workerObserver struct{ *metrics.Set }

func (o workerObserver) TaskDone(pool, handler string, outcome worker.Outcome) {
	o.Set.TaskDone(pool, handler, string(outcome))
}

var _ projector.Observer = (*metrics.Set)(nil)

// Projector returns the observer to pass as projector.Config.Metrics.
func (m *Metrics) Projector() projector.Observer { return m.set }

// Register registers the collectors on reg (prometheus.DefaultRegisterer,
// or your own registry). It returns the registration errors joined.
func (m *Metrics) Register(reg prometheus.Registerer) error { return m.set.Register(reg) }

// Handler serves /metrics (the collectors plus Go runtime and process
// collectors, on a registry of its own), /healthz (200 while the process
// serves) and /readyz (200 when Redis answers PING and the observed loops
// are alive, else 503 with the reasons). Call it once per Metrics.
func (m *Metrics) Handler() http.Handler { return m.set.Handler() }

// Ready is /readyz's check: nil, or an error saying what is wrong.
func (m *Metrics) Ready(ctx context.Context) error { return m.set.Health.Ready(ctx) }
