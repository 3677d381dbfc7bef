package rdb

import (
	"context"
	"fmt"
)

// The reads of the metrics collector (internal/metrics) that the other
// inspect files do not already offer. Nothing here writes.

// DeadLetterCount is the number of dead letters (ZCARD).
func (d DB) DeadLetterCount(ctx context.Context) (int64, error) {
	n, err := d.C.ZCard(ctx, d.K.DeadLetter()).Result()
	if err != nil {
		return 0, fmt.Errorf("count dead letters: %w", err)
	}
	return n, nil
}

// FeedStat is what Redis reports about one feed partition.
type FeedStat struct {
	// Length is the entries in the partition (acked entries are deleted).
	Length int64
	// Lag is the entries not yet delivered to the projectors' group
	// (Length - Pending when Redis cannot compute it, or Length when no
	// projector has read the partition yet); Pending those delivered and
	// not yet acked.
	Lag, Pending int64
}

// FeedStat reads feed partition n's statistics (zero when it does not
// exist yet).
func (d DB) FeedStat(ctx context.Context, n int) (FeedStat, error) {
	stream := d.K.Feed(n)
	var f FeedStat
	ex, err := d.C.Exists(ctx, stream).Result()
	if err != nil || ex == 0 {
		return f, err
	}
	if f.Length, err = d.C.XLen(ctx, stream).Result(); err != nil {
		return f, fmt.Errorf("feed %s: %w", stream, err)
	}
	groups, err := d.C.XInfoGroups(ctx, stream).Result()
	if err != nil {
		return f, fmt.Errorf("feed %s: %w", stream, err)
	}
	f.Lag = f.Length
	for _, g := range groups {
		if g.Name != GroupProjectors {
			continue
		}
		f.Pending, f.Lag = g.Pending, g.Lag
		if f.Lag < 0 {
			f.Lag = max(f.Length-f.Pending, 0)
		}
	}
	return f, nil
}
