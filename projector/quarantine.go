package projector

import (
	"context"
	"errors"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/retry"
	"github.com/rs/zerolog"
)

// DefaultRunFailures is how many times in a row a run may fail to project
// with an error that is not transient before it is quarantined.
const DefaultRunFailures = 5

// errConflictStorm: a run's commits kept conflicting (other projectors
// committing all along). Progress is being made elsewhere: not a reason to
// set the run aside.
var errConflictStorm = errors.New("commit conflicts in a row")

// projectOrQuarantine projects run, retrying with backoff. Transient errors
// (Redis unreachable, restarting, failing over) are retried for as long as
// they last: every run of the partition waits for Redis alike. Any other
// error (a log entry that does not decode or fold, a key of the wrong type,
// a permission the ACL user lacks, a script error) is retried at most
// RunFailures times, a second or two in all, and then the run is
// quarantined: run_quarantined in its log, @status quarantined, and an
// entry in the namespace's quarantine index. The partition moves on either
// way; a quarantined run is skipped from then on, by every projector.
func (p *Projector) projectOrQuarantine(ctx context.Context, log zerolog.Logger, run string) {
	failures := 0
	err := retry.Do(ctx, retry.Policy{
		Tolerate: p.cfg.RunFailures - 1,
		// Commits that kept conflicting: other projectors are making
		// progress on the run, so it is not a reason to set it aside.
		AlsoTransient: func(err error) bool { return errors.Is(err, errConflictStorm) },
		OnError: func(err error, d time.Duration) {
			log.Warn().Err(err).Str("run", run).Int("failures", failures).Stringer("retry_in", d).Msg("project run failed")
		},
	}, func() error {
		err := p.Project(ctx, run)
		if err != nil && undecodable(err) {
			return retry.Permanent(err) // folding it again fails the same way
		}
		if err != nil && !retry.Transient(err) && !errors.Is(err, errConflictStorm) {
			failures++
		}
		return err
	})
	if err != nil && ctx.Err() == nil {
		p.quarantine(ctx, run, err)
	}
}

func undecodable(err error) bool {
	return errors.Is(err, ErrInvalidEvent) || errors.Is(err, events.ErrMalformed) ||
		errors.Is(err, events.ErrUnknownType) || errors.Is(err, events.ErrUnknownVersion)
}

// quarantine sets run aside for good (see projectOrQuarantine).
func (p *Projector) quarantine(ctx context.Context, run string, cause error) {
	p.forget(run)
	body := events.RunQuarantinedBody{Reason: cause.Error()}
	var de *events.DecodeError
	if errors.As(cause, &de) {
		body.Entries = []string{de.Seq}
	}
	now := p.cfg.Clock.Now()
	ev := events.Event{ID: events.NewID(now), Type: events.RunQuarantined, Time: now, Worker: p.cfg.ID,
		Version: events.CurrentVersion}.WithBody(body)
	// The script is tried again for as long as Redis is unreachable, as
	// any Redis call of the feed loop is: its feed entry is acked once
	// this returns, so a run left running and dirty here would be woken
	// by nothing. A retry after a reply that was lost finds the run set
	// aside already and appends nothing.
	var done bool
	var indexErr error
	err := retry.Do(ctx, retry.Policy{OnError: func(err error, d time.Duration) {
		p.log.Warn().Err(err).Str("run", run).Stringer("retry_in", d).Msg("quarantine run")
	}}, func() (err error) {
		done, indexErr, err = p.db.Quarantine(ctx, run, ev, cause.Error())
		return err
	})
	l := p.log.Error().Err(cause).Str("run", run)
	if indexErr != nil {
		l = l.AnErr("index_error", indexErr)
	}
	switch {
	case err != nil:
		// Its own keys refuse the script (a state key of another type),
		// or ctx ended: nothing more to do here.
		l.AnErr("quarantine_error", err).Msg("run cannot be projected, and it could not be set aside: fix its keys, then run graflow repair on it")
	case done:
		l.Msg("run quarantined: it cannot be projected; its keys are kept for inspection (graflow status, graflow replay verify)")
	}
}
