package rdb

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// blockFirst holds the test's first pipeline until release is closed.
type blockFirst struct {
	once    sync.Once
	release chan struct{}
	pipes   chan int // size of each pipeline sent
}

func (h *blockFirst) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *blockFirst) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *blockFirst) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) == 0 || cmds[0].Name() != "incrby" {
			return next(ctx, cmds) // go-redis' own (connection set-up)
		}
		h.once.Do(func() { <-h.release })
		h.pipes <- len(cmds)
		return next(ctx, cmds)
	}
}

// Callers that arrive while a pipeline is in flight go together in the
// next one (at most Max per pipeline), and each gets its own replies.
func TestCombinerBatchesCallersBehindAFlush(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	h := &blockFirst{release: make(chan struct{}), pipes: make(chan int, 100)}
	c.AddHook(h)
	db := New(c, redistest.Namespace(t))
	comb := NewCombiner(db, 4)
	const behind = 10
	queued := make(chan struct{}, behind)
	comb.waiting = func() { queued <- struct{}{} }
	ctx := context.Background()
	var wg sync.WaitGroup
	vals := make([]int64, behind+1)
	errs := make([]error, behind+1)
	call := func(i int) {
		defer wg.Done()
		var cmd *redis.IntCmd
		errs[i] = comb.Do(ctx, func(p redis.Pipeliner) {
			cmd = p.IncrBy(ctx, db.K.Namespace()+":combine:"+strconv.Itoa(i), int64(i+1))
		})
		if errs[i] == nil {
			vals[i], errs[i] = cmd.Result()
		}
	}
	wg.Add(1)
	go call(0) // the first caller sends alone; its pipeline is held
	for i := 1; i <= behind; i++ {
		wg.Add(1)
		go call(i)
	}
	timeout := time.After(30 * time.Second)
	for range behind {
		select {
		case <-queued:
		case <-timeout:
			t.Fatal("callers did not queue behind the held pipeline")
		}
	}
	close(h.release)
	wg.Wait()
	close(h.pipes)
	var sizes []int
	for n := range h.pipes {
		sizes = append(sizes, n)
	}
	// 1 alone, then 10 callers in pipelines of at most 4: 4, 4, 2.
	if len(sizes) != 4 || sizes[0] != 1 || sizes[1] != 4 || sizes[2] != 4 || sizes[3] != 2 {
		t.Errorf("pipeline sizes %v, want [1 4 4 2]", sizes)
	}
	for i := range vals {
		if errs[i] != nil || vals[i] != int64(i+1) {
			t.Errorf("caller %d: %d, %v; want %d", i, vals[i], errs[i], i+1)
		}
	}
}
