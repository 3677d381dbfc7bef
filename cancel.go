package graflow

import (
	"context"
	"errors"
	"fmt"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
)

// ErrRunFinished is returned by Cancel for a run that had already ended
// (succeeded, failed or quarantined); nothing was written. errors.Is works
// on the wrapped error, which names the run's status.
var ErrRunFinished = errors.New("run has already finished")

// Cancel cancels a running run, in one atomic step on the run's slot: it
// appends run_cancelled (with reason) and a task_cancelled for every task
// not yet terminal, and the run's status becomes cancelled at once (Wait
// returns). Queued and delayed tasks never run (their claims are refused).
// A running handler is fenced: its context is cancelled at its worker's
// next heartbeat (within one heartbeat interval) and whatever it reports
// afterwards is recorded as result_rejected. Cancelling a cancelled run
// does nothing and returns nil; cancelling a finished run returns an error
// wrapping ErrRunFinished; an unknown run, ErrRunNotFound.
func (c *Client) Cancel(ctx context.Context, run, reason string) error {
	now := c.clock.Now()
	res, err := c.db.CancelRun(ctx, run, c.id, reason, now.UnixMilli(), func() string { return events.NewID(now) })
	switch {
	case errors.Is(err, rdb.ErrRunMissing):
		return c.notFound(run)
	case err != nil:
		return err
	case res.Outcome == "finished":
		return fmt.Errorf("cancel run %s: %w (%s)", run, ErrRunFinished, res.Status)
	}
	return nil
}
