package rdb_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// pipeCounter counts the pipelines a client sends.
type pipeCounter struct{ n atomic.Int64 }

func (h *pipeCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *pipeCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (h *pipeCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// Many concurrent callers each get their own commands' replies, in order
// (how many share a pipeline depends on the scheduler; the internal test
// pins the batching down).
func TestCombinerSharesRoundTrips(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	h := &pipeCounter{}
	c.AddHook(h)
	db := rdb.New(c, redistest.Namespace(t))
	comb := rdb.NewCombiner(db, 16)
	ctx := context.Background()
	const callers, rounds = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, callers*rounds)
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := db.K.Namespace() + ":combine:" + strconv.Itoa(g)
			for i := 1; i <= rounds; i++ {
				var incr *redis.IntCmd
				if err := comb.Do(ctx, func(p redis.Pipeliner) { incr = p.Incr(ctx, key) }); err != nil {
					errs <- err
					return
				}
				if v, err := incr.Result(); err != nil || v != int64(i) {
					errs <- errors.New(key + ": got " + strconv.FormatInt(v, 10) + ", want " + strconv.Itoa(i))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d pipelines for %d calls", h.n.Load(), callers*rounds)
}

// A caller whose context ended before its commands were sent gets the
// context's error and nothing of it is sent.
func TestCombinerSkipsCancelledCallers(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	db := rdb.New(c, redistest.Namespace(t))
	comb := rdb.NewCombiner(db, 16)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	key := db.K.Namespace() + ":combine:cancelled"
	err := comb.Do(ctx, func(p redis.Pipeliner) { p.Incr(ctx, key) })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Do with a cancelled context = %v, want context.Canceled", err)
	}
	if n, _ := c.Exists(context.Background(), key).Result(); n != 0 {
		t.Errorf("the cancelled caller's command was sent")
	}
}
