package rdb

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// DeletedEntry is a queue entry DeleteHeldEntry deleted while pending.
type DeletedEntry struct {
	Stream, ID string
	// Holder is the consumer (worker id) it was pending for.
	Holder string
}

// DeleteHeldEntry deletes one queue entry of pool in partition part that
// is pending for a worker holder accepts (XDEL), as an operator's XTRIM or
// XDEL would: the entry chosen by pick among the newest 64 pending entries
// of the first band, from band start on, that has any such. ok is false
// when none is pending. A fault the chaos tool injects; the engine repairs
// it (the holder's lease is no longer renewed, a reclaimer finds the entry
// deleted and requests the repair that hands its task back).
func (d DB) DeleteHeldEntry(ctx context.Context, part int, pool string, start int, holder func(string) bool, pick func(n int) int) (e DeletedEntry, ok bool, err error) {
	for i := range MaxPriority + 1 {
		stream := d.K.Queue(part, pool, (start+i)%(MaxPriority+1))
		// The newest: the oldest are mostly held by workers gone.
		last, err := d.C.XRevRangeN(ctx, stream, "+", "-", 1).Result()
		if err != nil {
			return DeletedEntry{}, false, fmt.Errorf("delete a held entry of %s: %w", stream, err)
		}
		if len(last) == 0 {
			continue
		}
		p, err := d.C.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: GroupWorkers, Start: "-", End: last[0].ID, Count: 4096}).Result()
		if IsNoGroup(err) {
			continue
		}
		if err != nil {
			return DeletedEntry{}, false, fmt.Errorf("delete a held entry of %s: %w", stream, err)
		}
		var held []redis.XPendingExt
		for j := len(p) - 1; j >= 0 && len(held) < 64; j-- {
			if holder(p[j].Consumer) {
				held = append(held, p[j])
			}
		}
		if len(held) == 0 {
			continue
		}
		x := held[pick(len(held))]
		if err := d.C.XDel(ctx, stream, x.ID).Err(); err != nil {
			return DeletedEntry{}, false, fmt.Errorf("delete a held entry of %s: %w", stream, err)
		}
		return DeletedEntry{Stream: stream, ID: x.ID, Holder: x.Consumer}, true, nil
	}
	return DeletedEntry{}, false, nil
}
