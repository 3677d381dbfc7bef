package projector

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/retry"
	"github.com/rs/zerolog"
)

// consume is feed partition n's loop: it reads the partition's entries
// with the projectors' consumer group (its own pending entries first),
// projects the runs they name, and acks them with its next read, until ctx
// ends.
func (p *Projector) consume(ctx context.Context, n int) {
	stream := p.db.K.Feed(n)
	log := p.log.With().Int("partition", n).Logger()
	if err := retryAll(ctx, log, "create feed group", func() error {
		return p.db.EnsureGroup(ctx, stream, rdb.GroupProjectors)
	}); err != nil {
		return
	}
	start := "0"          // our own pending entries first (a restart resumes them)
	var pend acks         // the last batch's acks, sent with the next read
	var ownRead time.Time // when our own pending entries were last read
	defer func() {
		// Leaving: send what is left (a crash here instead leaves the
		// entries pending; another projector takes them over).
		if !pend.empty() {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = p.sendAcks(actx, pend, nil)
		}
	}()
	for ctx.Err() == nil {
		p.obs().Alive("projector.feed."+strconv.Itoa(n), p.feedLoopWithin())
		var msgs []rdb.Message
		if !pend.empty() {
			// Under load: the acks and a non-blocking read of the next
			// batch in one round trip.
			if err := p.sendAcks(ctx, pend, &readArgs{stream: stream, start: start, consumer: p.cfg.ID, out: &msgs}); err != nil {
				// Whatever the read returned is ours to project; the acks
				// are retried alone, and our own pending entries are read
				// again next (a lost reply may have left some there).
				start = "0"
				if err := retryAll(ctx, log, "ack feed", func() error { return p.sendAcks(ctx, pend, nil) }); err != nil {
					return
				}
			} else if len(msgs) == 0 && time.Since(ownRead) >= p.cfg.FeedBlock {
				// Going idle, everything acked: read our own pending
				// entries before blocking (at most once per FeedBlock, off
				// the hot path). A read whose reply was lost and that
				// go-redis repeated without telling us left its entries
				// delivered to us and unseen; they would otherwise wait
				// for the feed reclaim.
				start = "0"
			}
			pend = acks{}
		}
		if len(msgs) == 0 {
			var res []rdb.Stream
			if start == "0" {
				ownRead = time.Now() // real time, as Redis's BLOCK
			}
			err := retryAll(ctx, log, "read feed", func() error {
				var err error
				res, err = p.db.ReadGroup(ctx, rdb.GroupProjectors, p.cfg.ID, []string{stream}, start, feedCount, p.cfg.FeedBlock)
				if err != nil && ctx.Err() != nil {
					return retry.Permanent(err)
				}
				if err != nil && isNoGroup(err) {
					_ = p.db.EnsureGroup(ctx, stream, rdb.GroupProjectors)
				}
				if err != nil {
					start = "0" // a lost reply may have left entries pending for us
				}
				return err
			})
			if err != nil {
				return
			}
			if len(res) > 0 {
				msgs = res[0].Messages
			}
		}
		if start == "0" && len(msgs) == 0 {
			start = ">"
			continue
		}
		if start == ">" && len(msgs) == 0 {
			// A blocking read that timed out: idle, so look at our own
			// pending entries next (see above).
			start = "0"
			continue
		}
		var ok bool
		if pend, ok = p.handle(ctx, log, stream, msgs); !ok {
			return
		}
	}
}

// feedCount bounds the feed entries of one read.
const feedCount = 256

// acks are what a projected feed batch leaves to acknowledge: its feed
// entries.
type acks struct {
	stream string
	ids    []string
}

func (a acks) empty() bool { return len(a.ids) == 0 }

// readArgs asks sendAcks to read the next feed entries (non-blocking) in
// the same round trip.
type readArgs struct {
	stream, start, consumer string
	out                     *[]rdb.Message
}

// sendAcks acks and deletes the feed entries, in one round trip; with
// next, it also reads the next feed entries (non-blocking). It returns the
// acks' errors, or the read's when the read failed; a read whose reply was
// lost (go-redis may also repeat the pipeline) may leave entries pending
// for this consumer, so after an error the caller re-reads its own pending
// entries.
func (p *Projector) sendAcks(ctx context.Context, a acks, next *readArgs) error {
	var fr *rdb.FeedRead
	if next != nil {
		fr = &rdb.FeedRead{Stream: next.stream, Start: next.start, Consumer: next.consumer, Count: feedCount}
	}
	msgs, ackErr, readErr := p.db.AckFeed(ctx, a.stream, a.ids, fr)
	if next != nil {
		*next.out = msgs
	}
	if ackErr != nil {
		return ackErr
	}
	return readErr
}

// handle projects the runs that feed entries point at (each run once per
// batch: pointers coalesce) and returns the acks that follow. It returns
// false when ctx ended.
func (p *Projector) handle(ctx context.Context, log zerolog.Logger, stream string, msgs []rdb.Message) (acks, bool) {
	ids := make([]string, 0, len(msgs))
	seen := map[string]bool{}
	var runs []string
	for _, m := range msgs {
		ids = append(ids, m.ID)
		run, _ := m.Values[rdb.MsgRun].(string)
		if run == "" || seen[run] {
			continue
		}
		seen[run] = true
		runs = append(runs, run)
	}
	// The common case for every run at once, a pipeline per step; then
	// the runs that need more, up to Parallel of them at once (each is a
	// few round trips; one at a time would leave Redis idle).
	runs = p.projectBatch(ctx, runs)
	var wg sync.WaitGroup
	sem := make(chan struct{}, p.cfg.Parallel)
	for _, run := range runs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			p.projectOrQuarantine(ctx, log, run)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return acks{}, false
	}
	return acks{stream: stream, ids: ids}, true
}

// reclaimFeed takes over feed entries left pending by projectors that died
// (idle longer than FeedReclaimIdle), so their runs move on.
func (p *Projector) reclaimFeed(ctx context.Context, parts []int) {
	t := p.cfg.Clock.NewTicker(p.cfg.FeedReclaimIdle / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
		}
		for _, n := range parts {
			stream := p.db.K.Feed(n)
			log := p.log.With().Int("partition", n).Logger()
			start := "0-0"
			for ctx.Err() == nil {
				msgs, next, deleted, err := p.db.ReclaimFeed(ctx, n, p.cfg.ID, p.cfg.FeedReclaimIdle, start, 256)
				if err != nil {
					if ctx.Err() == nil && !isNoGroup(err) {
						log.Warn().Err(err).Msg("reclaim feed entries")
					}
					break
				}
				if len(deleted) > 0 {
					log.Error().Strs("ids", deleted).Msg("pending feed entries were deleted from the stream; a repair of the running runs points the feed at them again")
				}
				if len(msgs) > 0 {
					log.Info().Int("entries", len(msgs)).Msg("took over feed entries of a dead projector")
					if a, ok := p.handle(ctx, log, stream, msgs); ok {
						_ = retryAll(ctx, log, "ack feed", func() error { return p.sendAcks(ctx, a, nil) })
					}
				}
				if next == "0-0" || next == "" {
					break
				}
				start = next
			}
		}
	}
}

func isNoGroup(err error) bool { return rdb.IsNoGroup(err) }
