package metrics

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/prometheus/client_golang/prometheus"
)

// redisCollector reports the namespace's gauges that live in Redis. A
// scrape reads them all (a bounded number of round trips, under
// ReadTimeout) unless the last read is younger than CacheFor; concurrent
// scrapes share one read.
type redisCollector struct {
	db   rdb.DB
	opts Options

	mu   sync.Mutex
	at   time.Time
	last snapshot
}

type bandKey struct {
	pool string
	band int
}

type bandStat struct {
	length, lag, pending int64
	oldestAge            time.Duration // of the oldest pending message, 0 if none
}

type snapshot struct {
	ok          bool
	took        time.Duration
	queues      map[bandKey]*bandStat
	feeds       []rdb.FeedStat
	deadLetters int64
	runs        map[string]int64
}

var (
	descQueueLength = prometheus.NewDesc("graflow_queue_length",
		"Messages in a pool's band (summed over partitions): pending plus not yet delivered.", []string{"pool", "band"}, nil)
	descQueueLag = prometheus.NewDesc("graflow_queue_lag",
		"Messages of a pool's band not yet delivered to any worker.", []string{"pool", "band"}, nil)
	descQueuePending = prometheus.NewDesc("graflow_queue_pending",
		"Messages of a pool's band delivered and not yet acked (running or awaiting reclaim).", []string{"pool", "band"}, nil)
	descQueueOldest = prometheus.NewDesc("graflow_queue_oldest_pending_age_seconds",
		"Age, since it was queued, of the oldest pending message of a pool's band (0 when none).", []string{"pool", "band"}, nil)
	descFeedLag = prometheus.NewDesc("graflow_projector_feed_lag",
		"Feed entries of a partition not yet delivered to any projector.", []string{"partition"}, nil)
	descFeedPending = prometheus.NewDesc("graflow_projector_feed_pending",
		"Feed entries of a partition delivered to a projector and not yet acked.", []string{"partition"}, nil)
	descDeadLetters = prometheus.NewDesc("graflow_dead_letters",
		"Dead letters in the namespace (tasks that failed for good, until requeued or purged).", nil, nil)
	descRuns = prometheus.NewDesc("graflow_runs",
		"Runs of the run index by status (the newest RunsLimit runs, default 10000).", []string{"status"}, nil)
	descScrapeOK = prometheus.NewDesc("graflow_redis_scrape_success",
		"1 if the last read of the Redis gauges succeeded (they are left out when it failed).", nil, nil)
	descScrapeSeconds = prometheus.NewDesc("graflow_redis_scrape_duration_seconds",
		"How long the last read of the Redis gauges took.", nil, nil)
)

func newRedisCollector(db rdb.DB, opts Options) *redisCollector {
	return &redisCollector{db: db, opts: opts}
}

func (c *redisCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueueLength, descQueueLag, descQueuePending, descQueueOldest,
		descFeedLag, descFeedPending, descDeadLetters, descRuns, descScrapeOK, descScrapeSeconds} {
		ch <- d
	}
}

func (c *redisCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snapshot()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descScrapeSeconds, s.took.Seconds())
	if !s.ok {
		gauge(descScrapeOK, 0)
		return
	}
	gauge(descScrapeOK, 1)
	for k, q := range s.queues {
		band := strconv.Itoa(k.band)
		gauge(descQueueLength, float64(q.length), k.pool, band)
		gauge(descQueueLag, float64(q.lag), k.pool, band)
		gauge(descQueuePending, float64(q.pending), k.pool, band)
		gauge(descQueueOldest, q.oldestAge.Seconds(), k.pool, band)
	}
	for n, f := range s.feeds {
		gauge(descFeedLag, float64(f.Lag), strconv.Itoa(n))
		gauge(descFeedPending, float64(f.Pending), strconv.Itoa(n))
	}
	gauge(descDeadLetters, float64(s.deadLetters))
	for status, n := range s.runs {
		gauge(descRuns, float64(n), status)
	}
}

// snapshot returns the cached reads, reading anew when they are older
// than CacheFor. The lock makes concurrent scrapes wait for one read.
func (c *redisCollector) snapshot() snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.opts.Now()
	if !c.at.IsZero() && now.Sub(c.at) < c.opts.CacheFor {
		return c.last
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.ReadTimeout)
	defer cancel()
	s, err := c.read(ctx, now)
	s.ok, s.took = err == nil, c.opts.Now().Sub(now)
	c.at, c.last = now, s
	return s
}

func (c *redisCollector) read(ctx context.Context, now time.Time) (snapshot, error) {
	s := snapshot{queues: map[bandKey]*bandStat{}, runs: map[string]int64{}}
	pools := c.opts.Pools
	if len(pools) == 0 {
		set, err := c.db.QueuePools(ctx)
		if err != nil {
			return s, err
		}
		for p := range set {
			pools = append(pools, p)
		}
		sort.Strings(pools)
	}
	for _, pool := range pools {
		for _, stream := range c.db.K.AllQueues(pool) {
			st, ok, err := c.db.QueueStat(ctx, stream)
			if err != nil {
				return s, err
			}
			_, _, band, _ := c.db.K.ParseQueue(stream)
			k := bandKey{pool: pool, band: band}
			b := s.queues[k]
			if b == nil {
				b = &bandStat{}
				s.queues[k] = b
			}
			if !ok {
				continue
			}
			lag := st.Lag
			switch {
			case !st.HasGroup:
				lag = st.Length
			case lag < 0:
				lag = max(st.Length-st.Pending, 0)
			}
			b.length += st.Length
			b.lag += lag
			b.pending += st.Pending
			if o := st.Oldest; o != nil {
				b.oldestAge = max(b.oldestAge, now.Sub(time.UnixMilli(streamMS(o.ID))))
			}
		}
	}
	for n := range c.db.K.Partitions() {
		f, err := c.db.FeedStat(ctx, n)
		if err != nil {
			return s, err
		}
		s.feeds = append(s.feeds, f)
	}
	var err error
	if s.deadLetters, err = c.db.DeadLetterCount(ctx); err != nil {
		return s, err
	}
	const page = 500
	for start := int64(0); start < int64(c.opts.RunsLimit); start += page {
		rows, err := c.db.RunPage(ctx, start, min(page, int64(c.opts.RunsLimit)-start))
		if err != nil {
			return s, err
		}
		for _, r := range rows {
			status := r.Status
			switch {
			case r.Err != nil:
				status = "unreadable"
			case status == "":
				status = "unknown"
			}
			s.runs[status]++
		}
		if len(rows) < page {
			break
		}
	}
	return s, nil
}

// streamMS is the milliseconds part of a stream id.
func streamMS(id string) int64 {
	ms, _, _ := strings.Cut(id, "-")
	n, _ := strconv.ParseInt(ms, 10, 64)
	return n
}
