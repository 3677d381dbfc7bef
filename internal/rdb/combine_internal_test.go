package rdb

import (
	"context"
	"errors"
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
	holding chan struct{} // closed when the first pipeline is held (optional)
	pipes   chan int      // size of each pipeline sent
}

func (h *blockFirst) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *blockFirst) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *blockFirst) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) == 0 || cmds[0].Name() != "incrby" {
			return next(ctx, cmds) // go-redis' own (connection set-up)
		}
		h.once.Do(func() {
			if h.holding != nil {
				close(h.holding)
			}
			<-h.release
		})
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
	comb.g.Waiting = func() { queued <- struct{}{} }
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

// A panic while the shared pipeline is built (here: a caller's queue
// function) fails that pipeline's callers with ErrCombinedPanic, goes on in
// the sending goroutine, and leaves the Combiner usable.
func TestCombinerSurvivesAPanic(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	db := New(c, redistest.Namespace(t))
	comb := NewCombiner(db, 4)
	ctx := context.Background()
	func() {
		defer func() {
			if p := recover(); p == nil {
				t.Error("the panic did not reach the sending caller")
			}
		}()
		_ = comb.Do(ctx, func(redis.Pipeliner) { panic("boom") })
	}()
	done := make(chan error, 1)
	go func() {
		var cmd *redis.IntCmd
		err := comb.Do(ctx, func(p redis.Pipeliner) { cmd = p.Incr(ctx, db.K.Namespace()+":after-panic") })
		if err == nil {
			err = cmd.Err()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Do after a panic = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Do after a panic never returned: the Combiner is wedged")
	}
	if err := comb.Do(nil, func(redis.Pipeliner) {}); err == nil { //nolint:staticcheck // a nil ctx is refused
		t.Error("Do with a nil context was accepted")
	}
}

// A caller whose context ends while it waits behind a pipeline in flight
// returns at once with the context's error, and nothing of it is sent.
func TestCombinerWaiterLeavesOnCancel(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	h := &blockFirst{release: make(chan struct{}), holding: make(chan struct{}), pipes: make(chan int, 100)}
	c.AddHook(h)
	db := New(c, redistest.Namespace(t))
	comb := NewCombiner(db, 4)
	queued := make(chan struct{}, 1)
	comb.g.Waiting = func() { queued <- struct{}{} }
	ctx := context.Background()
	first := make(chan error, 1)
	go func() {
		first <- comb.Do(ctx, func(p redis.Pipeliner) { p.IncrBy(ctx, db.K.Namespace()+":first", 1) })
	}()
	select {
	case <-h.holding: // the first caller's pipeline is in flight, held
	case <-time.After(30 * time.Second):
		t.Fatal("the first pipeline was not sent")
	}
	wctx, cancel := context.WithCancel(ctx)
	second := make(chan error, 1)
	key := db.K.Namespace() + ":cancelled"
	go func() {
		second <- comb.Do(wctx, func(p redis.Pipeliner) { p.IncrBy(ctx, key, 1) })
	}()
	select {
	case <-queued:
	case <-time.After(30 * time.Second):
		t.Fatal("the second caller did not queue behind the held pipeline")
	}
	cancel()
	select {
	case err := <-second:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled waiter: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a cancelled waiter did not leave while the pipeline ahead was held")
	}
	close(h.release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Exists(ctx, key).Result(); n != 0 {
		t.Error("the cancelled waiter's command was sent")
	}
}
