package graflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
)

var (
	// ErrResultExpired is returned when a task's stored result is read
	// after its result TTL (Task.ResultTTL). The run's log still holds the
	// task_succeeded event with the result (Log, Export, replay).
	ErrResultExpired = rdb.ErrResultExpired
	// ErrNoResult is returned for the result of a task that has not
	// succeeded (or is not a task of the run).
	ErrNoResult = errors.New("the task has no result")
)

// Result returns task's stored result (JSON, as the handler returned it),
// the value dependent tasks read. ErrRunNotFound for a run
// that does not exist, ErrNoResult for a task that has not succeeded, and
// ErrResultExpired once the task's result TTL has passed: from the due
// time on, whether or not the projector has deleted the value yet.
func (c *Client) Result(ctx context.Context, run, task string) (json.RawMessage, error) {
	s, err := c.db.ReadResult(ctx, run, task)
	if err != nil {
		return nil, err
	}
	if s.RunStatus == "" {
		// A succeeded run keeps only its log (its end deleted the rest):
		// the result is its task_succeeded's, as the fold reads it.
		r, err := c.Fold(ctx, run)
		if err != nil {
			return nil, err
		}
		t := r.Task(task)
		if t == nil {
			return nil, fmt.Errorf("%w: %s is not a task of run %s", ErrNoResult, task, run)
		}
		s.RunStatus, s.Record.Status, s.Result, s.ExpiresMS = string(r.Status), t.Status, t.Result, t.ResultExpiresMS
	}
	if s.Record.Status != events.TaskStatusSucceeded {
		return nil, fmt.Errorf("%w: task %s of run %s is %s", ErrNoResult, task, run, s.Record.Status)
	}
	if s.Expired(c.clock.Now().UnixMilli()) {
		return nil, fmt.Errorf("%w: task %s of run %s (expired at %s)", ErrResultExpired, task, run, time.UnixMilli(s.ExpiresMS).UTC().Format(time.RFC3339Nano))
	}
	return s.Result, nil
}
