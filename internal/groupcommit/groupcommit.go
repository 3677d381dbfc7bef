// Package groupcommit is the engine's one group-commit mechanism: the
// requests of concurrent callers that wait at the same moment go to Redis
// in one flush (one pipeline, one round trip) instead of one each, as
// databases commit several transactions with one log write.
//
// A caller that finds no flush in progress flushes its own request with
// those of every caller waiting at that moment; callers arriving meanwhile
// wait, and the first of them flushes the next batch. A lone caller pays
// no extra latency; under load, batches grow by themselves. No goroutine
// runs in the background: the flushes run in the callers' goroutines.
//
// The worker's claims and outcomes, the projector's commits and the
// scheduler's submits go through a Group (rdb.Submitter is a Group of
// submits).
package groupcommit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// ErrStopped is returned to a caller whose request was not flushed
// because the Group stopped.
var ErrStopped = errors.New("groupcommit: stopped")

// ErrPanic is the error of callers whose shared flush panicked (in
// another caller's request or a client hook).
var ErrPanic = errors.New("the shared flush panicked")

// Flush sends reqs together and returns one response per request, in
// order. ctx is the context of the batch's first caller still waiting,
// without its cancellation or deadline: a flush under way is not cut short
// by one caller leaving (the Redis client's timeouts bound it).
type Flush[Req, Resp any] func(ctx context.Context, reqs []Req) []Resp

// Group batches the requests of concurrent callers. The zero value is not
// usable; use New.
type Group[Req, Resp any] struct {
	flush Flush[Req, Resp]
	max   int

	// Waiting, when set, is called when a caller queues behind a flush in
	// progress (a hook for tests).
	Waiting func()

	room chan struct{} // a token per request held (Bound); nil: no bound
	quit chan struct{} // closed by Stop

	mu       sync.Mutex
	pending  []*call[Req, Resp]
	flushing bool
	stopped  bool
	idle     *sync.Cond // signalled when flushing ends
}

type call[Req, Resp any] struct {
	ctx  context.Context
	req  Req
	resp Resp
	err  error
	done chan struct{} // closed once the request was flushed (or dropped)
	lead chan struct{} // closed when this caller is to flush the next batch
}

func (c *call[Req, Resp]) finish(resp Resp, err error) {
	c.resp, c.err = resp, err
	close(c.done)
}

// New returns a Group that flushes at most max requests at a time (max <=
// 0 means 128).
func New[Req, Resp any](max int, flush Flush[Req, Resp]) *Group[Req, Resp] {
	if max <= 0 {
		max = 128
	}
	g := &Group[Req, Resp]{flush: flush, max: max, quit: make(chan struct{})}
	g.idle = sync.NewCond(&g.mu)
	return g
}

// Bound makes callers wait (before the Group holds their request, so
// before DoQueued's queued) while n requests wait for a flush: back-pressure
// when flushes stall. Call it before the Group's first use.
func (g *Group[Req, Resp]) Bound(n int) *Group[Req, Resp] {
	if n > 0 {
		g.room = make(chan struct{}, n)
	}
	return g
}

// release frees the room of k requests that left the queue (g.mu held).
func (g *Group[Req, Resp]) release(k int) {
	if g.room == nil {
		return
	}
	for range k {
		<-g.room
	}
}

// Do queues req, waits until a flush sent it, and returns its response.
// It returns an error only when req was not sent: ctx ended while it waited
// (ctx.Err()), the Group stopped (ErrStopped), or the flush panicked
// (ErrPanic). A caller whose request is in a flush under way waits for it.
func (g *Group[Req, Resp]) Do(ctx context.Context, req Req) (Resp, error) {
	return g.DoQueued(ctx, req, nil)
}

// DoQueued is Do that calls queued (when not nil) once the Group holds req
// (it may already be in a flush by then), before DoQueued returns. With a
// bound (Bound), a caller waits for room before the Group holds req.
func (g *Group[Req, Resp]) DoQueued(ctx context.Context, req Req, queued func()) (Resp, error) {
	var zero Resp
	if ctx == nil {
		return zero, errors.New("groupcommit: Do with a nil context")
	}
	c := &call[Req, Resp]{ctx: ctx, req: req, done: make(chan struct{}), lead: make(chan struct{})}
	if g.room != nil {
		select {
		case g.room <- struct{}{}:
		case <-ctx.Done():
			return zero, ctx.Err()
		case <-g.quit:
			return zero, ErrStopped
		}
	}
	g.mu.Lock()
	if g.stopped {
		g.release(1)
		g.mu.Unlock()
		return zero, ErrStopped
	}
	g.pending = append(g.pending, c)
	if g.flushing {
		g.mu.Unlock()
		if queued != nil {
			queued()
		}
		if g.Waiting != nil {
			g.Waiting()
		}
		if done := g.wait(c); done {
			return c.resp, c.err
		}
		g.mu.Lock()
		if g.stopped { // Stop finished c's request while it was to lead
			g.flushing = false
			g.idle.Broadcast()
			g.mu.Unlock()
			return c.resp, c.err
		}
		queued = nil // called above
	}
	g.flushing = true
	n := min(len(g.pending), g.max)
	batch := g.pending[:n:n]
	g.pending = g.pending[n:]
	g.release(n)
	g.mu.Unlock()

	if queued != nil {
		queued()
	}
	g.run(batch)
	<-c.done // c is in batch: the first pending caller always leads
	return c.resp, c.err
}

// wait waits until c was flushed (true) or is to lead (false). A caller
// whose ctx ends while it is still queued leaves the queue.
func (g *Group[Req, Resp]) wait(c *call[Req, Resp]) (done bool) {
	select {
	case <-c.done:
		// Stop may have dropped c after the lead was handed to it: then c
		// must still take the lead, to end the hand-off (flushing).
		select {
		case <-c.lead:
			return false
		default:
		}
		return true
	case <-c.lead:
		return false
	case <-c.ctx.Done():
	}
	g.mu.Lock()
	select {
	case <-c.lead:
		g.mu.Unlock() // chosen to lead meanwhile: lead
		return false
	default:
	}
	if i := slices.Index(g.pending, c); i >= 0 {
		g.pending = slices.Delete(slices.Clip(g.pending), i, i+1)
		g.release(1)
		g.mu.Unlock()
		var zero Resp
		c.resp, c.err = zero, c.ctx.Err()
		return true
	}
	g.mu.Unlock()
	// Already in a flush under way (or dropped by Stop): its outcome is ours.
	<-c.done
	select {
	case <-c.lead: // dropped by Stop after the lead was handed to it
		return false
	default:
	}
	return true
}

// run flushes batch, then hands the lead on, also when something panics
// (the callers of the batch get ErrPanic and the panic goes on in this
// goroutine).
func (g *Group[Req, Resp]) run(batch []*call[Req, Resp]) {
	var zero Resp
	finished := false
	defer func() {
		p := recover()
		if !finished { // a panic, or runtime.Goexit (p nil) in the flush
			for _, c := range batch {
				select {
				case <-c.done:
				default:
					c.finish(zero, fmt.Errorf("%w: %v", ErrPanic, p))
				}
			}
		}
		g.mu.Lock()
		if len(g.pending) > 0 && !g.stopped {
			close(g.pending[0].lead)
		} else {
			g.flushing = false
			g.idle.Broadcast()
		}
		g.mu.Unlock()
		if p != nil {
			panic(p)
		}
	}()
	live := make([]*call[Req, Resp], 0, len(batch))
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.finish(zero, err)
			continue
		}
		live = append(live, c)
	}
	if len(live) > 0 {
		reqs := make([]Req, len(live))
		for i, c := range live {
			reqs[i] = c.req
		}
		resps := g.flush(context.WithoutCancel(live[0].ctx), reqs)
		if len(resps) != len(live) {
			panic(fmt.Sprintf("groupcommit: flush returned %d responses for %d requests", len(resps), len(live)))
		}
		for i, c := range live {
			c.finish(resps[i], nil)
		}
	}
	finished = true
}

// Stop makes later calls return ErrStopped, drops the requests waiting for
// a flush (their callers get ErrStopped), and returns once the flush under
// way, if any, has ended.
func (g *Group[Req, Resp]) Stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.stopped {
		close(g.quit)
	}
	g.stopped = true
	var zero Resp
	for _, c := range g.pending {
		c.finish(zero, ErrStopped)
	}
	g.release(len(g.pending))
	g.pending = nil
	for g.flushing {
		g.idle.Wait()
	}
}
