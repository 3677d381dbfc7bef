package projector

import (
	"context"
	"strconv"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
)

// moveDelayed moves due dispatches from the delayed set to their queues. It
// sleeps until the earliest due time (or a relay wakes it); the wait is
// capped so entries parked by other processes are not missed for long.
func (p *Projector) moveDelayed(ctx context.Context) {
	for ctx.Err() == nil {
		wait := DefaultDelayedMaxWait
		err := func() error {
			now := p.cfg.Now().UnixMilli()
			due, err := p.cfg.Redis.ZRangeArgs(ctx, redis.ZRangeArgs{
				Key: p.db.K.Delayed(), Start: "-inf", Stop: strconv.FormatInt(now, 10), ByScore: true, Count: 256,
			}).Result()
			if err != nil {
				return err
			}
			if len(due) > 0 {
				pipe := p.cfg.Redis.Pipeline()
				for _, s := range due {
					d, err := rdb.ParseDispatch(s)
					if err != nil {
						p.log.Error().Err(err).Str("entry", s).Msg("dropping malformed delayed entry")
						continue
					}
					p.db.XAddDispatch(ctx, pipe, d)
				}
				if _, err := pipe.Exec(ctx); err != nil {
					return err
				}
				args := make([]any, len(due))
				for i, s := range due {
					args[i] = s
				}
				if err := p.cfg.Redis.ZRem(ctx, p.db.K.Delayed(), args...).Err(); err != nil {
					return err
				}
				wait = 0
				return nil
			}
			next, err := p.cfg.Redis.ZRangeWithScores(ctx, p.db.K.Delayed(), 0, 0).Result()
			if err != nil {
				return err
			}
			if len(next) > 0 {
				if w := time.Duration(int64(next[0].Score)-now) * time.Millisecond; w < wait {
					wait = w
				}
			}
			return nil
		}()
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
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-p.wakeDelayed:
			t.Stop()
		case <-t.C:
		}
	}
}
