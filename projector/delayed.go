package projector

import (
	"context"
	"errors"
	"time"
)

// moveDelayed moves due dispatches from the delayed sets of parts to their
// queues, and deletes the stored results whose result TTL is due. It sleeps
// until the earliest due time (or a commit that parked a dispatch, or a
// projection that saw a result with a TTL, wakes it); the wait is capped so
// entries parked by other processes are not missed for long.
func (p *Projector) moveDelayed(ctx context.Context, parts []int) {
	for ctx.Err() == nil {
		wait := DefaultDelayedMaxWait
		var err error
		for _, part := range parts {
			w, perr := p.moveDue(ctx, part)
			x, xerr := p.expireDue(ctx, part)
			wait, err = min(wait, w, x), errors.Join(err, perr, xerr)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			p.log.Warn().Err(err).Msg("move delayed dispatches")
			wait = time.Second
		}
		if wait <= 0 {
			continue
		}
		t := p.cfg.Clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-p.wakeDelayed:
			t.Stop()
		case <-t.Chan():
		}
	}
}

// stuckRetry is how long a due dispatch whose queue key holds another
// type (or a result expiry whose state key does) waits before the mover
// tries it again.
const stuckRetry = time.Minute

// moveDue moves partition part's due dispatches (a page of them) and
// returns how long until its next one is due.
func (p *Projector) moveDue(ctx context.Context, part int) (time.Duration, error) {
	now := p.cfg.Clock.Now().UnixMilli()
	due, next, err := p.db.DueDispatches(ctx, part, now, 256)
	if err != nil {
		return time.Second, err
	}
	if len(due) > 0 {
		_, malformed, stuck, err := p.db.MoveDue(ctx, part, due, now+stuckRetry.Milliseconds())
		for _, m := range malformed {
			p.log.Error().Int("partition", part).Str("entry", m).Msg("dropped a malformed delayed entry")
		}
		for _, x := range stuck {
			p.log.Error().Int("partition", part).Str("entry", x.Member).Str("queue", x.Queue).
				Dur("again_in", stuckRetry).Msg("a due dispatch cannot be queued: its queue key holds another type than a stream; it stays parked and moves once the key is fixed (deleted, or holding the stream)")
		}
		if err != nil {
			return time.Second, err
		}
		return 0, nil
	}
	if next > 0 {
		return time.Duration(next-now) * time.Millisecond, nil
	}
	return DefaultDelayedMaxWait, nil
}

// expireDue deletes partition part's due stored results (a page of them)
// and returns how long until its next one is due.
func (p *Projector) expireDue(ctx context.Context, part int) (time.Duration, error) {
	now := p.cfg.Clock.Now().UnixMilli()
	n, next, stuck, err := p.db.ExpireResults(ctx, part, now, now+stuckRetry.Milliseconds(), 256)
	for _, m := range stuck {
		p.log.Error().Int("partition", part).Str("entry", m).Dur("again_in", stuckRetry).
			Msg("a stored result cannot be expired: its run's state key holds another type than a hash; its expiry stays parked")
	}
	if err != nil {
		return time.Second, err
	}
	if n > 0 {
		p.log.Debug().Int("partition", part).Int64("results", n).Msg("expired stored results (result TTL)")
	}
	if next > 0 {
		return max(time.Duration(next-now)*time.Millisecond, 0), nil
	}
	return DefaultDelayedMaxWait, nil
}

// wake makes the delayed movers look at the delayed sets again.
func (p *Projector) wake() {
	select {
	case p.wakeDelayed <- struct{}{}:
	default:
	}
}
