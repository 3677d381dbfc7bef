package worker

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/graflow-go/graflow/internal/crashpoint"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/retry"
)

// Group commit: claims and outcomes that are waiting at the same moment go
// to Redis in one pipeline (one round trip) instead of one each. A lone
// request goes at once, so an idle worker pays no latency for it; under
// load the batches grow by themselves. Every script is safe to repeat, so
// a batch that hits a Redis error is retried item by item.

const maxBatch = 128

type claimReq struct {
	args rdb.ClaimArgs
	done chan claimResp
}

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
	done       chan error
}

type batcher struct {
	w        *Worker
	claims   chan claimReq
	finishes chan finishReq
	quit     chan struct{} // closed by stop; the request channels never are
	wg       sync.WaitGroup
}

// errStopped is returned to a request made after the batcher stopped (a
// handler that outlived the drain): its message stays pending for reclaim.
var errStopped = errors.New("worker stopped: outcome not reported; the message stays pending for reclaim")

func newBatcher(w *Worker) *batcher {
	return &batcher{w: w, claims: make(chan claimReq, maxBatch), finishes: make(chan finishReq, maxBatch), quit: make(chan struct{})}
}

// start runs the two loops until stop.
func (b *batcher) start(ctx context.Context) {
	b.wg.Add(2)
	go func() { defer b.wg.Done(); b.claimLoop(ctx) }()
	go func() { defer b.wg.Done(); b.finishLoop(ctx) }()
}

// stop ends the loops (after the batch at hand). Later requests get
// errStopped; requests are never sent on a closed channel.
func (b *batcher) stop() {
	close(b.quit)
	b.wg.Wait()
}

func (b *batcher) claim(ctx context.Context, a rdb.ClaimArgs) (rdb.ClaimResult, error) {
	req := claimReq{args: a, done: make(chan claimResp, 1)}
	select {
	case b.claims <- req:
	case <-ctx.Done():
		return rdb.ClaimResult{}, ctx.Err()
	case <-b.quit:
		return rdb.ClaimResult{}, errStopped
	}
	select {
	case r := <-req.done:
		return r.cr, r.err
	case <-ctx.Done():
		return rdb.ClaimResult{}, ctx.Err()
	case <-b.quit:
		return rdb.ClaimResult{}, errStopped
	}
}

// finish records an outcome (then its feed pointer, dead letter and ack)
// and returns once they are written. It calls queued once the batcher holds
// the request.
func (b *batcher) finish(ctx context.Context, req finishReq, queued func()) error {
	req.done = make(chan error, 1)
	select {
	case b.finishes <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-b.quit:
		return errStopped
	}
	queued()
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-b.quit:
		return errStopped
	}
}

func (b *batcher) claimLoop(ctx context.Context) {
	w := b.w
	for {
		var first claimReq
		select {
		case first = <-b.claims:
		case <-b.quit:
			return
		}
		batch := []claimReq{first}
	drain:
		for len(batch) < maxBatch {
			select {
			case r := <-b.claims:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		// One script call per run (claims of several messages of one run
		// share it), all calls in one pipeline.
		groups := groupBy(batch, func(r claimReq) string { return r.args.Run })
		began := time.Now()
		results, errs := w.db.ClaimGroups(ctx, gather(batch, groups, func(r claimReq) rdb.ClaimArgs { return r.args }))
		w.obs().ClaimBatch(len(batch), time.Since(began))
		for g, idx := range groups {
			crs, err := results[g], errs[g]
			for k, i := range idx {
				r := batch[i]
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
						cr, err = w.db.Claim(ctx, r.args)
						return err
					})
				}
				r.done <- claimResp{cr: cr, err: ierr}
			}
		}
	}
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

func (b *batcher) finishLoop(ctx context.Context) {
	w := b.w
	for {
		var first finishReq
		select {
		case first = <-b.finishes:
		case <-b.quit:
			return
		}
		batch := []finishReq{first}
	drain:
		for len(batch) < maxBatch {
			select {
			case r := <-b.finishes:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		// 1. The outcomes: one script call per run and stream, one round
		// trip. Each call also points the feed at its run if it became
		// dirty and acks its messages (the run, its feed and its queue
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
		// letters, then their acks. The ack comes last: a crash before it
		// leaves the message pending, and its reclaimer redoes the rest.
		var dead []rdb.DeadLetterItem
		var point []string // runs whose finish left the feed pointer to us
		acks := map[string][]string{}
		for i, r := range batch {
			if r.deadLetter != nil && !slices.Contains(point, r.m.run) {
				point = append(point, r.m.run)
			}
			if errs[i] == nil && r.deadLetter != nil {
				dead = append(dead, rdb.DeadLetterItem{Run: r.m.run, Task: r.m.task, TimeMS: r.args.TimeMS, Info: *r.deadLetter})
				acks[r.m.stream] = append(acks[r.m.stream], r.m.id)
			}
		}
		err := w.redisRetry(ctx, func() error { return w.db.RecordDeadLetters(ctx, dead, point) })
		if err == nil {
			err = w.redisRetry(ctx, func() error { return w.db.QueueAcks(ctx, w.cfg.ID, acks) })
		}
		if err != nil {
			// The outcomes are recorded; their messages stay pending and
			// whoever reclaims them re-points the feed and acks.
			w.log.Warn().Err(err).Int("outcomes", len(batch)).Msg("dead letter or ack after outcome failed; reclaim will finish the job")
		}
		b.observeFinishes(batch, errs, err, time.Since(began))
		for i, r := range batch {
			r.done <- errs[i]
		}
	}
}
