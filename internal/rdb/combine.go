package rdb

import (
	"context"

	"github.com/graflow-go/graflow/internal/groupcommit"
	"github.com/redis/go-redis/v9"
)

// Combiner sends the commands of concurrent callers in one pipeline: a
// groupcommit.Group whose requests are functions that queue commands. A
// lone caller pays no extra latency; under load, N callers share a round
// trip. No goroutine runs in the background.
type Combiner struct {
	db DB
	g  *groupcommit.Group[func(redis.Pipeliner), struct{}]
}

// ErrCombinedPanic is the error of callers whose shared pipeline panicked
// (in another caller's queue function or a client hook).
var ErrCombinedPanic = groupcommit.ErrPanic

// NewCombiner returns a Combiner of at most max callers per pipeline.
func NewCombiner(db DB, max int) *Combiner {
	c := &Combiner{db: db}
	c.g = groupcommit.New(max, c.flush)
	return c
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
	_, err := c.g.Do(ctx, queue)
	return err
}

// flush sends the callers' commands in one pipeline. Each caller reads its
// own commands' errors; the pipeline's own error (the first failed command,
// of any caller) is not theirs.
func (c *Combiner) flush(ctx context.Context, queues []func(redis.Pipeliner)) []struct{} {
	_ = c.db.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, q := range queues {
			q(p)
		}
		return nil
	})
	return make([]struct{}, len(queues))
}
