package worker

import (
	"context"
	"errors"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
)

// Observer is told what a worker does, at the points where the worker
// already knows it: a handler starts and returns, an outcome is recorded,
// a batch of claims or outcomes makes its round trip, dead letters are
// written, a loop goes round. graflow.NewMetrics returns one that feeds
// Prometheus collectors; Config.Metrics nil observes nothing.
//
// Methods are called from many goroutines at once, on the worker's hot
// path: they must be safe for concurrent use and must not block. Labels
// are pool and handler names (bounded); no run or task id is passed.
// Methods may be added: embed NopObserver to keep compiling.
type Observer interface {
	// HandlerStarted is called before a claimed task's handler runs.
	HandlerStarted(pool, handler string)
	// HandlerReturned is called when it returned (or panicked), after d,
	// with what it returned.
	HandlerReturned(pool, handler string, d time.Duration, err error)
	// TaskDone is called once per handled attempt with what became of it,
	// after DeadLettered for a task dead-lettered.
	TaskDone(pool, handler string, outcome Outcome)
	// ClaimBatch is called after a batch of n claims made its round trip.
	ClaimBatch(n int, d time.Duration)
	// FinishBatch is called after a batch of n outcomes was recorded (with
	// its dead letters and acks).
	FinishBatch(n int, d time.Duration)
	// DeadLettered is called when the dead letter of a task that failed
	// for good was written.
	DeadLettered(pool, handler string)
	// Alive is called by a loop each time round; it promises to call
	// again within the given time (readiness turns false past it).
	Alive(loop string, within time.Duration)
}

// Outcome is what became of a handled task attempt (Observer.TaskDone).
type Outcome string

const (
	// OutcomeSucceeded: the result was accepted.
	OutcomeSucceeded Outcome = "succeeded"
	// OutcomeRetry: the failure was recorded; another attempt follows.
	OutcomeRetry Outcome = "retry"
	// OutcomeFailed: the failure was recorded; the task failed for good.
	OutcomeFailed Outcome = "failed"
	// OutcomeRejected: the outcome was refused because the claim is stale
	// (another worker holds the task now): result_rejected.
	OutcomeRejected Outcome = "rejected"
	// OutcomeLost: a heartbeat found the claim gone while the handler ran;
	// its outcome was discarded without being sent.
	OutcomeLost Outcome = "lost"
	// OutcomeHandedBack: the drain timeout cancelled the handler; the task
	// was handed back to the queue.
	OutcomeHandedBack Outcome = "handed_back"
	// OutcomeUnrecorded: recording the outcome failed (Redis); the message
	// stays pending and is reclaimed.
	OutcomeUnrecorded Outcome = "unrecorded"
)

// NopObserver observes nothing; embed it in an Observer to implement only
// some methods.
type NopObserver struct{}

func (NopObserver) HandlerStarted(string, string)                        {}
func (NopObserver) HandlerReturned(string, string, time.Duration, error) {}
func (NopObserver) TaskDone(string, string, Outcome)                     {}
func (NopObserver) ClaimBatch(int, time.Duration)                        {}
func (NopObserver) FinishBatch(int, time.Duration)                       {}
func (NopObserver) DeadLettered(string, string)                          {}
func (NopObserver) Alive(string, time.Duration)                          {}

// obs returns the configured Observer, or a NopObserver.
func (w *Worker) obs() Observer {
	if w.cfg.Metrics == nil {
		return NopObserver{}
	}
	return w.cfg.Metrics
}

// observedCall is call, observed: the handler's start, duration and
// error, and the outcomes process settles without finish (lease lost,
// handed back at the drain).
func (w *Worker) observedCall(ctx context.Context, m message, t *Task) (any, error) {
	o, pool := w.obs(), w.poolOf(m.stream)
	o.HandlerStarted(pool, t.Handler)
	begin := time.Now()
	res, err := w.call(ctx, t)
	o.HandlerReturned(pool, t.Handler, time.Since(begin), err)
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errLeaseLost):
		o.TaskDone(pool, t.Handler, OutcomeLost)
	case errors.Is(cause, errDrainTimeout) && err != nil:
		o.TaskDone(pool, t.Handler, OutcomeHandedBack)
	}
	return res, err
}

// observeFinishes reports a recorded batch of outcomes: each one's
// outcome, the dead letters written (deadErr is the error of writing them
// and the acks), and the batch's round trips.
func (b *batcher) observeFinishes(batch []finishReq, errs []error, deadErr error, d time.Duration) {
	o := b.w.obs()
	o.FinishBatch(len(batch), d)
	for i, r := range batch {
		pool := b.w.poolOf(r.m.stream)
		var out Outcome
		switch {
		case errors.Is(errs[i], rdb.ErrStaleClaim):
			out = OutcomeRejected
		case errs[i] != nil:
			out = OutcomeUnrecorded
		case r.args.Status == events.TaskStatusFailed:
			out = OutcomeFailed
		case r.args.Type != events.TaskSucceeded:
			out = OutcomeRetry
		default:
			out = OutcomeSucceeded
		}
		// The dead letter first: TaskDone is the last word on an outcome,
		// so an observer that waits for it sees the dead letter counted.
		if errs[i] == nil && r.deadLetter != nil && deadErr == nil {
			o.DeadLettered(pool, r.handler)
		}
		o.TaskDone(pool, r.handler, out)
	}
}
