package projector

import (
	"context"
	"fmt"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
)

// Relay moves run's outbox onto the queue streams (or the delayed set) and
// removes what it relayed. A crash between the two relays again; the
// duplicate queue message is dropped by the claim script.
func (p *Projector) Relay(ctx context.Context, run string) error {
	for {
		entries, err := p.cfg.Redis.LRange(ctx, p.db.K.RunOutbox(run), 0, relayBatch-1).Result()
		if err != nil {
			return fmt.Errorf("read outbox of run %s: %w", run, err)
		}
		if len(entries) == 0 {
			return nil
		}
		if err := p.relay(ctx, run, entries); err != nil {
			return err
		}
		if len(entries) < relayBatch {
			// Drained as far as we know; entries pushed since then are
			// relayed by the commit that pushed them.
			return nil
		}
	}
}

const relayBatch = 256

// relay queues entries (the head of run's outbox) and then removes them
// from the outbox, each only if still at its head.
func (p *Projector) relay(ctx context.Context, run string, entries []string) error {
	pipe := p.cfg.Redis.Pipeline()
	delayed := p.queue(ctx, pipe, run, entries)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("relay outbox of run %s: %w", run, err)
	}
	if delayed {
		p.wake()
	}
	if _, err := p.db.OutboxAck(ctx, run, entries); err != nil {
		return fmt.Errorf("ack outbox of run %s: %w", run, err)
	}
	return nil
}

// queue adds the commands that put outbox entries of run on their queue
// streams (or, not yet due, in the delayed set) to pipe. It reports whether
// any went to the delayed set.
func (p *Projector) queue(ctx context.Context, pipe redis.Pipeliner, run string, entries []string) bool {
	now := p.cfg.Now().UnixMilli()
	delayed := false
	for _, s := range entries {
		d, err := rdb.ParseDispatch(s)
		if err != nil {
			p.log.Error().Err(err).Str("run", run).Msg("dropping malformed outbox entry")
			continue
		}
		if d.DueMS > now {
			pipe.ZAdd(ctx, p.db.K.Delayed(), redis.Z{Score: float64(d.DueMS), Member: s})
			delayed = true
		} else {
			p.db.XAddDispatch(ctx, pipe, d)
		}
	}
	return delayed
}

// wake makes the delayed mover look at the delayed set again.
func (p *Projector) wake() {
	select {
	case p.wakeDelayed <- struct{}{}:
	default:
	}
}
