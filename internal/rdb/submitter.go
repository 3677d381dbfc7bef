package rdb

import (
	"context"

	"github.com/graflow-go/graflow/internal/groupcommit"
)

// Submitter sends the submits of concurrent callers together
// (SubmitRuns): the submits waiting at the same moment go in one round
// trip, as one submit script call per partition and one run index write.
// A lone caller pays no extra latency; under load, batches grow by
// themselves. No goroutine runs in the background.
type Submitter struct {
	db DB
	g  *groupcommit.Group[SubmitReq, SubmitReply]
}

// ErrCombinedPanic is the error of callers whose shared flush panicked (in
// a client hook).
var ErrCombinedPanic = groupcommit.ErrPanic

// NewSubmitter returns a Submitter of at most max submits per round trip.
func NewSubmitter(db DB, max int) *Submitter {
	s := &Submitter{db: db}
	s.g = groupcommit.New(max, db.SubmitRuns)
	return s
}

// Submit sends req with the submits waiting with it and returns its reply.
// It returns an error only when req was not sent: ctx ended first
// (ctx.Err()), or the shared flush panicked (ErrCombinedPanic). A caller
// whose ctx ends while it waits leaves the queue at once; one already in a
// flush being sent waits for it (bounded by the client's timeouts).
func (s *Submitter) Submit(ctx context.Context, req SubmitReq) (SubmitReply, error) {
	return s.g.Do(ctx, req)
}
