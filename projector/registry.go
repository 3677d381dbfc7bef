package projector

import (
	"context"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
)

// registryInterval is how often a projector refreshes its registry entry:
// a third of FeedReclaimIdle (5s by default), so an entry outlives a missed
// beat or two.
func (p *Projector) registryInterval() time.Duration { return p.cfg.FeedReclaimIdle / 3 }

// registryTTL is how long a projector's entry survives without a beat.
func (p *Projector) registryTTL() time.Duration {
	return p.cfg.FeedReclaimIdle + p.registryInterval()
}

// registryLoop registers the projector (<ns>:projectors, <ns>:projector:<id>)
// and rewrites its whole record every registryInterval until ctx ends, then
// deregisters; "graflow workers" lists projectors from there, so "no
// projector is running" is visible. Errors are logged and retried at the
// next beat.
func (p *Projector) registryLoop(ctx context.Context, parts []int) {
	started := p.cfg.Clock.Now()
	ps := make([]string, len(parts))
	for i, n := range parts {
		ps[i] = strconv.Itoa(n)
	}
	reg := p.db.ProjectorRegistry()
	var cur sweepCursor
	beat := func() {
		now := p.cfg.Clock.Now()
		host, _ := os.Hostname()
		err := p.db.BeatRecord(ctx, rdb.Beat{Registry: reg, ID: p.cfg.ID, Now: now, TTL: p.registryTTL(), Fields: map[string]any{
			"id":             p.cfg.ID,
			"host":           host,
			"pid":            os.Getpid(),
			"partitions":     strings.Join(ps, ","),
			"started_at":     started.UnixMilli(),
			"last_heartbeat": now.UnixMilli(),
		}})
		if err != nil && ctx.Err() == nil {
			p.log.Warn().Err(err).Msg("projector registry heartbeat")
		}
	}
	beat()
	t := p.cfg.Clock.NewTicker(p.registryInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := p.db.DeregisterFrom(dctx, reg, p.cfg.ID); err != nil {
				p.log.Warn().Err(err).Msg("projector deregister")
			}
			cancel()
			return
		case <-t.Chan():
		}
		beat()
		p.housekeep(ctx, &cur)
	}
}

// consumerIdleReclaims: a feed consumer idle this many FeedReclaimIdle,
// with nothing pending and no registry entry, belongs to a projector that
// is gone (a live one reads every FeedBlock).
const consumerIdleReclaims = 4

// housekeep does the namespace's periodic chores that fall to projectors,
// each under a lock so one projector does it per interval: prune dead
// projectors from the registry and their consumers from the feed streams,
// and sweep the run index and the dead-letter set.
func (p *Projector) housekeep(ctx context.Context, cur *sweepCursor) {
	if ok, err := p.db.TryLock(ctx, "consumers:feed", p.cfg.ID, p.cfg.FeedReclaimIdle); err == nil && ok {
		for n := 0; n < p.db.K.Partitions(); n++ {
			gone, err := p.db.PruneConsumers(ctx, p.db.K.Feed(n), rdb.GroupProjectors, consumerIdleReclaims*p.cfg.FeedReclaimIdle, p.db.ProjectorRegistry())
			if err != nil {
				if ctx.Err() == nil {
					p.log.Warn().Err(err).Msg("prune dead feed consumers")
				}
				break
			}
			if len(gone) > 0 {
				p.log.Info().Int("partition", n).Strs("consumers", gone).Msg("deleted the feed consumers of dead projectors")
			}
		}
	}
	every := p.registryInterval()
	if ok, err := p.db.TryLock(ctx, "index-sweep", p.cfg.ID, every); err == nil && ok {
		p.sweep(ctx, cur)
	}
	if ok, err := p.db.TryLock(ctx, "repair", p.cfg.ID, every); err == nil && ok {
		p.autoRepair(ctx, &cur.repair)
	}
	if ok, err := p.db.TryLock(ctx, "projectors-registry", p.cfg.ID, every); err == nil && ok {
		dead, err := p.db.PruneRegistry(ctx, p.db.ProjectorRegistry(), p.cfg.Clock.Now(), 100)
		if err != nil && ctx.Err() == nil {
			p.log.Warn().Err(err).Msg("prune projector registry")
		}
		for _, id := range dead {
			p.log.Info().Str("dead_projector", id).Msg("removed a dead projector from the registry")
		}
	}
}

// sweepCursor is where the next sweep pass starts (ranks), owned by one
// registry loop.
type sweepCursor struct {
	runs, dlq int64
	repair    repairCursor
}

// sweepPage bounds the index entries and the dead letters checked per pass.
const sweepPage = 200

// sweep checks one page of the run index and one of the dead-letter set and
// removes the entries whose run is gone (its keys expired by RunTTL or
// were deleted): without it both grow forever. The pages advance every
// pass and wrap, so every entry is checked within (size / sweepPage)
// passes.
func (p *Projector) sweep(ctx context.Context, cur *sweepCursor) {
	next, gone, err := p.db.SweepRunIndex(ctx, cur.runs, sweepPage, p.cfg.Clock.Now())
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn().Err(err).Msg("sweep the run index")
		}
		return
	}
	cur.runs = next
	if len(gone) > 0 {
		p.log.Info().Int("runs", len(gone)).Msg("removed index entries of runs that are gone")
	}
	next, gone, err = p.db.SweepDeadLetters(ctx, cur.dlq, sweepPage)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn().Err(err).Msg("sweep the dead-letter set")
		}
		return
	}
	cur.dlq = next
	if len(gone) > 0 {
		p.log.Info().Int("dead_letters", len(gone)).Msg("forgot dead letters of runs that are gone")
	}
}
