package rdb

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	ctx    context.Context
	queue  func(redis.Pipeliner)
	err    error
	done   chan struct{} // closed once the pipeline ran (err set)
	closed bool          // done is closed (touched by the leader only)
	lead   chan struct{} // closed when this caller is to send the next pipeline
}

func (r *combined) finish(err error) {
	if !r.closed {
		r.err, r.closed = err, true
		close(r.done)
	}
}

// ErrCombinedPanic is the error of callers whose shared pipeline panicked
// (in another caller's queue function or a client hook).
var ErrCombinedPanic = errors.New("the shared pipeline panicked")

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
// queued, each with its own error. Do returns an error only when none of
// its commands was sent: ctx ended first (ctx.Err()), or the shared
// pipeline panicked (ErrCombinedPanic).
//
// A caller whose ctx ends while it waits leaves the queue at once; one
// already in a pipeline being sent waits for it (bounded by the client's
// timeouts).
func (c *Combiner) Do(ctx context.Context, queue func(redis.Pipeliner)) error {
	if ctx == nil {
		return errors.New("rdb: Combiner.Do with a nil context")
	}
	r := &combined{ctx: ctx, queue: queue, done: make(chan struct{}), lead: make(chan struct{})}
	c.mu.Lock()
	c.pending = append(c.pending, r)
	if c.flushing {
		c.mu.Unlock()
		if c.waiting != nil {
			c.waiting()
		}
		if err, done := c.wait(r); done {
			return err
		}
		c.mu.Lock()
	}
	c.flushing = true
	n := min(len(c.pending), c.Max)
	batch := c.pending[:n:n]
	c.pending = c.pending[n:]
	c.mu.Unlock()

	c.flush(batch)
	<-r.done // r is in batch: the first pending caller always leads
	return r.err
}

// wait waits until r's pipeline ran (done) or r is to lead (not done). A
// caller whose ctx ends while it is still queued leaves the queue.
func (c *Combiner) wait(r *combined) (err error, done bool) {
	select {
	case <-r.done:
		return r.err, true
	case <-r.lead:
		return nil, false
	case <-r.ctx.Done():
	}
	c.mu.Lock()
	select {
	case <-r.lead:
		c.mu.Unlock() // chosen to lead meanwhile: lead
		return nil, false
	default:
	}
	if i := slices.Index(c.pending, r); i >= 0 {
		c.pending = slices.Delete(slices.Clip(c.pending), i, i+1)
		c.mu.Unlock()
		return r.ctx.Err(), true
	}
	c.mu.Unlock()
	// Already in a pipeline being sent: its outcome is ours.
	<-r.done
	return r.err, true
}

// flush sends batch's pipeline, then hands the lead on, also when
// something panics (the callers of the batch get ErrCombinedPanic and the
// panic goes on in this goroutine).
func (c *Combiner) flush(batch []*combined) {
	defer func() {
		p := recover()
		if p != nil {
			for _, r := range batch {
				r.finish(fmt.Errorf("%w: %v", ErrCombinedPanic, p))
			}
		}
		c.mu.Lock()
		if len(c.pending) > 0 {
			close(c.pending[0].lead)
		} else {
			c.flushing = false
		}
		c.mu.Unlock()
		if p != nil {
			panic(p)
		}
	}()
	live := make([]*combined, 0, len(batch))
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.finish(err)
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
		r.finish(nil)
	}
}
