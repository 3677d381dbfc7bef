package projector

import (
	"context"
	"errors"
	"strings"

	"github.com/cenkalti/backoff/v4"
	"github.com/graflow-go/graflow/events"
	"github.com/oklog/ulid/v2"
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
	err := retry(ctx, log, "project run", func() error {
		err := p.Project(ctx, run)
		if err == nil || transient(err) || errors.Is(err, errConflictStorm) {
			return err
		}
		failures++
		if failures >= p.cfg.RunFailures || undecodable(err) {
			return backoff.Permanent(err)
		}
		log.Warn().Err(err).Str("run", run).Int("failures", failures).Msg("project run failed; retrying before quarantine")
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
	ev := events.Event{ID: ulid.Make().String(), Type: events.RunQuarantined, Time: p.cfg.Now(), Worker: p.cfg.ID,
		Version: events.CurrentVersion}.WithBody(body)
	done, err := p.db.Quarantine(ctx, run, ev, cause.Error())
	l := p.log.Error().Err(cause).Str("run", run)
	if err != nil {
		l = l.AnErr("quarantine_error", err)
	}
	if done || err != nil {
		l.Msg("run quarantined: it cannot be projected; its keys are kept for inspection (graflow status, graflow replay verify)")
	}
}

// transient reports an error that goes away by itself: Redis unreachable,
// loading, busy or failing over, or a timeout.
func transient(err error) bool {
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"connection refused", "connection reset", "broken pipe", "EOF", "i/o timeout",
		"LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "NOSCRIPT", "client is closed"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
