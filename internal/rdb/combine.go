package rdb

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Combiner sends the commands of concurrent callers in one pipeline (group
// commit): a caller that finds no flush in progress sends its own commands
// with those of every caller waiting at that moment; callers arriving
// meanwhile wait, and one of them sends the next pipeline. A lone caller
// pays no extra latency; under load, N callers share a round trip. No
// goroutine runs in the background.
type Combiner struct {
	db DB
	// Max bounds the callers of one pipeline.
	Max int

	mu       sync.Mutex
	pending  []*combined
	flushing bool
	waiting  func() // test hook: a caller queued behind a flush
}

type combined struct {
	ctx   context.Context
	queue func(redis.Pipeliner)
	err   error
	done  chan struct{} // closed once the pipeline ran (err set)
	lead  chan struct{} // closed when this caller is to send the next pipeline
}

// NewCombiner returns a Combiner of at most max callers per pipeline.
func NewCombiner(db DB, max int) *Combiner {
	if max <= 0 {
		max = 128
	}
	return &Combiner{db: db, Max: max}
}

// Do queues commands on the shared pipeline and returns once it ran. queue
// must only queue commands (it cannot fail) and may be called more than
// once: the pipeline is sent again, with fresh commands, after a NOSCRIPT
// reply (Redis lost its script cache). The caller reads the commands it
// queued, each with its own error; Do returns an error only when ctx ended
// before the commands were sent (then none was).
func (c *Combiner) Do(ctx context.Context, queue func(redis.Pipeliner)) error {
	r := &combined{ctx: ctx, queue: queue, done: make(chan struct{}), lead: make(chan struct{})}
	c.mu.Lock()
	c.pending = append(c.pending, r)
	if c.flushing {
		c.mu.Unlock()
		if c.waiting != nil {
			c.waiting()
		}
		// Another caller is sending; it sends ours or makes us send next.
		// ctx is not watched here: the wait is one pipeline, bounded by
		// the client's timeouts, and a caller that left would strand the
		// callers behind it.
		select {
		case <-r.done:
			return r.err
		case <-r.lead:
		}
		c.mu.Lock()
	}
	c.flushing = true
	n := min(len(c.pending), c.Max)
	batch := c.pending[:n:n]
	c.pending = c.pending[n:]
	c.mu.Unlock()

	c.flush(batch)

	c.mu.Lock()
	if len(c.pending) > 0 {
		close(c.pending[0].lead)
	} else {
		c.flushing = false
	}
	c.mu.Unlock()
	<-r.done // r is in batch: the first pending caller always leads
	return r.err
}

func (c *Combiner) flush(batch []*combined) {
	live := make([]*combined, 0, len(batch))
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.err = err
			close(r.done)
			continue
		}
		live = append(live, r)
	}
	if len(live) > 0 {
		// Each caller reads its own commands' errors; the pipeline's own
		// error (the first failed command, of any caller) is not theirs.
		_ = c.db.Pipelined(context.WithoutCancel(live[0].ctx), func(p redis.Pipeliner) error {
			for _, r := range live {
				r.queue(p)
			}
			return nil
		})
	}
	for _, r := range live {
		close(r.done)
	}
}
