//go:build unix

package bench

// The ceiling is the one place outside internal/rdb that sends Redis
// commands of its own (XADD, XREADGROUP, XACK straight through go-redis):
// it measures what plain Redis does on the queue streams' shape, with no
// engine in between, so it must not go through the engine's boundary. The
// allowed exception (see redisBoundary in cmd/graflow/redisboundary_test.go).

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
)

// ceiling measures the raw Redis floor on the engine's own queue stream
// shape: producers XADD dispatch-like entries (one per round trip, or 100
// per pipeline), consumers XREADGROUP COUNT 100 and XACK each batch with
// one multi-id XACK. Throughput counts entries acked.
func (h *harness) ceiling(ctx context.Context, run int) (_ []Result, err error) {
	s, err := h.startStack(ctx, h.namespace(Ceiling, run), stackOptions{noEngine: true})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, s.done(ctx)) }()
	var out []Result
	for _, mode := range []string{ModeBatched, ModeUnbatched} {
		n, batch := h.cfg.Sizes.CeilingBatched, 100
		if mode == ModeUnbatched {
			n, batch = h.cfg.Sizes.CeilingUnbatched, 1
		}
		stream := s.db.K.Queue(0, "ceiling-"+mode, 0)
		if err := s.db.EnsureGroup(ctx, stream, rdb.GroupWorkers); err != nil {
			return nil, err
		}
		a, err := s.take(ctx)
		if err != nil {
			return nil, err
		}
		wall, err := s.raw(ctx, stream, n, batch)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", mode, err)
		}
		b, err := s.take(ctx)
		if err != nil {
			return nil, err
		}
		r := Result{Workload: Ceiling, Mode: mode, Run: run, Tasks: n, Concurrency: h.cfg.Submitters,
			WallMS: msOf(wall), TasksPerSec: perSec(n, wall)}
		cost(&r, a, b, n)
		out = append(out, r)
	}
	return out, nil
}

// raw runs the ceiling's producers and consumers over n entries.
func (s *stack) raw(ctx context.Context, stream string, n, batch int) (time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	workers := s.h.cfg.Submitters
	var (
		acked    atomic.Int64
		doneOnce sync.Once
		done     = make(chan struct{})
		end      time.Time
		errMu    sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		errMu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		errMu.Unlock()
		cancel()
	}
	values := []any{rdb.MsgRun, "01JBENCHCEILINGRUN00000000", rdb.MsgTask, "task", rdb.MsgAttempt, "1"}
	start := time.Now()
	for c := range workers {
		wg.Add(1)
		go func() { // consumer
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				res, err := s.rc.XReadGroup(ctx, &redis.XReadGroupArgs{Group: rdb.GroupWorkers, Consumer: "c" + strconv.Itoa(c),
					Streams: []string{stream, ">"}, Count: 100, Block: 100 * time.Millisecond}).Result()
				if errors.Is(err, redis.Nil) {
					continue
				}
				if err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("XREADGROUP: %w", err))
					}
					return
				}
				var ids []string
				for _, st := range res {
					for _, m := range st.Messages {
						ids = append(ids, m.ID)
					}
				}
				if len(ids) == 0 {
					continue
				}
				if err := s.rc.XAck(ctx, stream, rdb.GroupWorkers, ids...).Err(); err != nil {
					fail(fmt.Errorf("XACK: %w", err))
					return
				}
				if acked.Add(int64(len(ids))) >= int64(n) {
					doneOnce.Do(func() { end = time.Now(); close(done) })
				}
			}
		}()
	}
	for p := range workers {
		share := n / workers
		if p < n%workers {
			share++
		}
		wg.Add(1)
		go func() { // producer
			defer wg.Done()
			for sent := 0; sent < share; {
				k := min(batch, share-sent)
				var err error
				if k == 1 {
					err = s.rc.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: values}).Err()
				} else {
					pipe := s.rc.Pipeline()
					for range k {
						pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: values})
					}
					_, err = pipe.Exec(ctx)
				}
				if err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("XADD: %w", err))
					}
					return
				}
				sent += k
			}
		}()
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	if end.IsZero() {
		return 0, ctx.Err()
	}
	return end.Sub(start), nil
}
