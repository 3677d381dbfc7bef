package projector

import (
	"context"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
)

// load folds run's whole log from the first event.
func (p *Projector) load(ctx context.Context, run string, c *cached) error {
	// The head and the first page of the log in one round trip.
	head, status, first, err := p.db.LoadRun(ctx, run, p.cfg.ReadCount)
	if err != nil {
		return err
	}
	if status == string(RunQuarantined) {
		// Set aside for good: nothing to fold or decide (its log may
		// not even decode).
		r := NewRun(run)
		r.Status = RunQuarantined
		c.run, c.head = r, head
		return nil
	}
	r := NewRun(run)
	r.noResults = true // bounded cache memory: decisions never read results
	n, err := p.fold(run, r, first)
	for err == nil && n == p.cfg.ReadCount {
		n, err = p.readInto(ctx, run, r)
	}
	if err != nil {
		return err
	}
	c.run, c.head = r, head
	return nil
}

// readInto folds up to ReadCount log entries after r.LastSeq into r.
func (p *Projector) readInto(ctx context.Context, run string, r *Run) (int, error) {
	msgs, err := p.db.LogPageAfter(ctx, run, r.LastSeq, p.cfg.ReadCount)
	if err != nil {
		return 0, err
	}
	return p.fold(run, r, msgs)
}

// fold decodes and applies log entries to r.
func (p *Projector) fold(run string, r *Run, msgs []rdb.Message) (int, error) {
	for _, m := range msgs {
		e, err := events.Decode(run, m.ID, m.Values)
		if err != nil {
			return 0, err
		}
		if err := Apply(r, e); err != nil {
			return 0, err
		}
		if e.Type == events.TaskSucceeded {
			if t := r.Task(e.Task); t != nil && t.ResultExpiresMS > 0 {
				p.wake() // the delayed mover deletes the result when due
			}
		}
	}
	return len(msgs), nil
}
