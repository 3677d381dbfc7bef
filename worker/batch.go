package worker

import (
	"context"
	"errors"
	"time"

	"github.com/graflow-go/graflow/internal/crashpoint"
	"github.com/graflow-go/graflow/internal/groupcommit"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/retry"
)

// Group commit (internal/groupcommit): claims and outcomes that are
// waiting at the same moment go to Redis in one pipeline (one round trip)
// instead of one each. A lone request goes at once, so an idle worker pays
// no latency for it; under load the batches grow by themselves. Every
// script is safe to repeat, so a batch that hits a Redis error is retried
// item by item.

const maxBatch = 128

type claimResp struct {
	cr  rdb.ClaimResult
	err error
}

// finishReq is an outcome to record (with, in the same script, the feed
// pointer and the ack), or, for a task that failed for good, to record
// and then dead-letter and ack.
type finishReq struct {
	args       rdb.FinishArgs
	m          message
	deadLetter *rdb.DeadLetterDetails // for a task that failed for good
	handler    string                 // for the Observer
}

type batcher struct {
	w        *Worker
	ctx      context.Context // the flushes' Redis calls and retries
	claims   *groupcommit.Group[rdb.ClaimArgs, claimResp]
	finishes *groupcommit.Group[finishReq, error]
}

// errStopped is returned to a request made after the batcher stopped (a
// handler that outlived the drain): its message stays pending for reclaim.
var errStopped = errors.New("worker stopped: outcome not reported; the message stays pending for reclaim")

// newBatcher returns the worker's batcher; its flushes call Redis under ctx
// (cancelled to end their retries at the drain's deadline).
func newBatcher(ctx context.Context, w *Worker) *batcher {
	b := &batcher{w: w, ctx: ctx}
	// Bounded as the channels they replace were: with maxBatch outcomes
	// waiting, a finished task keeps its concurrency slot (the worker
	// stops fetching) until a flush makes room.
	b.claims = groupcommit.New(maxBatch, b.flushClaims).Bound(maxBatch)
	b.finishes = groupcommit.New(maxBatch, b.flushFinishes).Bound(maxBatch)
	return b
}

// stop drops the requests not yet sent (errStopped) and waits for the
// batches under way.
func (b *batcher) stop() {
	b.claims.Stop()
	b.finishes.Stop()
}

func stoppedErr(err error) error {
	if errors.Is(err, groupcommit.ErrStopped) {
		return errStopped
	}
	return err
}

func (b *batcher) claim(ctx context.Context, a rdb.ClaimArgs) (rdb.ClaimResult, error) {
	r, err := b.claims.Do(ctx, a)
	if err != nil {
		return rdb.ClaimResult{}, stoppedErr(err)
	}
	return r.cr, r.err
}

// finish records an outcome (then its feed pointer, dead letter and ack)
// and returns once they are written. It calls queued once the batcher holds
// the request.
func (b *batcher) finish(ctx context.Context, req finishReq, queued func()) error {
	ferr, err := b.finishes.DoQueued(ctx, req, queued)
	if err != nil {
		return stoppedErr(err)
	}
	return ferr
}

// flushClaims claims a batch: one script call per run (claims of several
// messages of one run share it), all calls in one pipeline.
func (b *batcher) flushClaims(_ context.Context, batch []rdb.ClaimArgs) []claimResp {
	w, ctx := b.w, b.ctx
	out := make([]claimResp, len(batch))
	groups := groupBy(batch, func(a rdb.ClaimArgs) string { return a.Run })
	began := time.Now()
	results, errs := w.db.ClaimGroups(ctx, gather(batch, groups, func(a rdb.ClaimArgs) rdb.ClaimArgs { return a }))
	w.obs().ClaimBatch(len(batch), time.Since(began))
	for g, idx := range groups {
		crs, err := results[g], errs[g]
		for k, i := range idx {
			a := batch[i]
			var cr rdb.ClaimResult
			var ierr error
			switch {
			case err == nil:
				cr = crs[k]
			case !retry.Transient(err):
				// The script failed on the run's data: alone it would
				// fail the same way. The message waits for its reclaim
				// (and the poison limit).
				ierr = err
			default:
				// Retry alone (a second claim by this worker returns the
				// first one's claim unchanged).
				ierr = w.redisRetry(ctx, func() error {
					var err error
					cr, err = w.db.Claim(ctx, a)
					return err
				})
			}
			out[i] = claimResp{cr: cr, err: ierr}
		}
	}
	return out
}

// groupBy returns the indexes of items by key, keys in first-seen order.
func groupBy[T any](items []T, key func(T) string) [][]int {
	pos := map[string]int{}
	var out [][]int
	for i, it := range items {
		k := key(it)
		g, ok := pos[k]
		if !ok {
			g = len(out)
			pos[k] = g
			out = append(out, nil)
		}
		out[g] = append(out[g], i)
	}
	return out
}

// gather returns f of the items of each group (groupBy's indexes).
func gather[T, A any](items []T, groups [][]int, f func(T) A) [][]A {
	out := make([][]A, len(groups))
	for g, idx := range groups {
		out[g] = make([]A, len(idx))
		for k, i := range idx {
			out[g][k] = f(items[i])
		}
	}
	return out
}

// flushFinishes records a batch of outcomes, then the dead letters and
// acks of those that failed for good.
func (b *batcher) flushFinishes(_ context.Context, batch []finishReq) []error {
	w, ctx := b.w, b.ctx
	// 1. The outcomes: one script call per partition and stream (of
	// one or more runs), one round trip. Each call also points the feed
	// at each run that became dirty and acks the messages (the run, its feed and its queue
	// share a slot), except those of outcomes with a dead letter: their
	// ack waits for the dead letter.
	for i := range batch {
		r := &batch[i]
		r.args.Stream, r.args.Consumer = r.m.stream, w.cfg.ID
		if r.deadLetter == nil {
			r.args.MessageID = r.m.id
		}
	}
	began := time.Now()
	groups := groupBy(batch, func(r finishReq) string { return r.args.Run + "\x00" + r.m.stream })
	results, callErrs := w.db.FinishGroups(ctx, gather(batch, groups, func(r finishReq) rdb.FinishArgs { return r.args }))
	errs := make([]error, len(batch))
	for g, idx := range groups {
		outs, err := results[g], callErrs[g]
		for k, i := range idx {
			if err == nil {
				errs[i] = outs[k].Err
				continue
			}
			r := batch[i]
			errs[i] = w.redisRetry(ctx, func() error {
				_, err := w.db.Finish(ctx, r.args)
				if errors.Is(err, rdb.ErrStaleClaim) {
					return retry.Permanent(err)
				}
				return err
			})
		}
	}
	crashpoint.Hit(crashpoint.WorkerAfterFinish)
	// 2. Then, for accepted outcomes that failed for good: their dead
	// letters, then their runs' feed pointers, each with the acks of its
	// run's messages in the same step (a run must not end while they
	// are pending). The acks come last: a crash before them leaves the
	// messages pending, and their reclaimer redoes the rest.
	var dead []rdb.DeadLetterItem
	var point []rdb.PointAck // runs whose finish left the feed pointer to us
	at := map[string]int{}   // run -> its place in point
	for i, r := range batch {
		if r.deadLetter == nil {
			continue
		}
		k, ok := at[r.m.run]
		if !ok {
			k = len(point)
			at[r.m.run] = k
			point = append(point, rdb.PointAck{Run: r.m.run, Acks: map[string][]string{}})
		}
		if errs[i] == nil {
			dead = append(dead, rdb.DeadLetterItem{Run: r.m.run, Task: r.m.task, TimeMS: r.args.TimeMS, Info: *r.deadLetter})
			point[k].Acks[r.m.stream] = append(point[k].Acks[r.m.stream], r.m.id)
		}
	}
	err := w.redisRetry(ctx, func() error { return w.db.RecordDeadLetters(ctx, w.cfg.ID, dead, point) })
	if err != nil {
		// The outcomes are recorded; their messages stay pending and
		// whoever reclaims them re-points the feed and acks.
		w.log.Warn().Err(err).Int("outcomes", len(batch)).Msg("dead letter or ack after outcome failed; reclaim will finish the job")
	}
	b.observeFinishes(batch, errs, err, time.Since(began))
	return errs
}
