package groupcommit_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/groupcommit"
)

const wait = 10 * time.Second

// held is a Flush whose first call blocks until release is closed; it
// records each batch and answers each request with its double.
type held struct {
	once    sync.Once
	holding chan struct{}
	release chan struct{}
	mu      sync.Mutex
	batches [][]int
}

func newHeld() *held {
	return &held{holding: make(chan struct{}), release: make(chan struct{})}
}

func (h *held) flush(_ context.Context, reqs []int) []int {
	h.once.Do(func() {
		close(h.holding)
		<-h.release
	})
	h.mu.Lock()
	h.batches = append(h.batches, slices.Clone(reqs))
	h.mu.Unlock()
	out := make([]int, len(reqs))
	for i, r := range reqs {
		out[i] = 2 * r
	}
	return out
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

type result struct {
	req, resp int
	err       error
}

// Callers that arrive while a flush is under way go together in the next
// flushes (at most max each), and each gets its own response.
func TestCallersBehindAFlushShareTheNext(t *testing.T) {
	t.Parallel()
	h := newHeld()
	g := groupcommit.New(4, h.flush)
	queued := make(chan struct{}, 100)
	g.Waiting = func() { queued <- struct{}{} }
	ctx := context.Background()
	out := make(chan result, 100)
	do := func(req int) {
		resp, err := g.Do(ctx, req)
		out <- result{req, resp, err}
	}
	go do(0)
	recv(t, h.holding, "the first flush")
	const behind = 10
	for i := 1; i <= behind; i++ {
		go do(i)
		recv(t, queued, "a caller queued behind the flush")
	}
	close(h.release)
	for range behind + 1 {
		r := recv(t, out, "a caller's response")
		if r.err != nil || r.resp != 2*r.req {
			t.Errorf("Do(%d) = %d, %v; want %d", r.req, r.resp, r.err, 2*r.req)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var sizes []int
	for _, b := range h.batches {
		sizes = append(sizes, len(b))
	}
	if !slices.Equal(sizes, []int{1, 4, 4, 2}) {
		t.Errorf("flush sizes %v, want [1 4 4 2] (the lone first, then the waiters 4 at a time)", sizes)
	}
}

// A caller whose context ends while it waits leaves at once, and its
// request is never flushed.
func TestAWaiterLeavesOnCancel(t *testing.T) {
	t.Parallel()
	h := newHeld()
	g := groupcommit.New(4, h.flush)
	queued := make(chan struct{}, 1)
	g.Waiting = func() { queued <- struct{}{} }
	ctx := context.Background()
	first := make(chan error, 1)
	go func() { _, err := g.Do(ctx, 1); first <- err }()
	recv(t, h.holding, "the first flush")
	wctx, cancel := context.WithCancel(ctx)
	second := make(chan error, 1)
	go func() { _, err := g.Do(wctx, 2); second <- err }()
	recv(t, queued, "the second caller queued")
	cancel()
	if err := recv(t, second, "the cancelled caller"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled waiter: %v, want context.Canceled", err)
	}
	close(h.release)
	if err := recv(t, first, "the first caller"); err != nil {
		t.Fatal(err)
	}
	if resp, err := g.Do(ctx, 3); err != nil || resp != 6 {
		t.Fatalf("Do after = %d, %v", resp, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if want := [][]int{{1}, {3}}; !slices.EqualFunc(h.batches, want, slices.Equal) {
		t.Errorf("flushed %v, want %v (the cancelled request never sent)", h.batches, want)
	}
}

// A flush that panics fails its callers with ErrPanic, goes on panicking in
// the leading caller's goroutine, and leaves the Group usable.
func TestAPanicFailsItsBatchAndTheGroupGoesOn(t *testing.T) {
	t.Parallel()
	g := groupcommit.New(4, func(_ context.Context, reqs []int) []int {
		if reqs[0] < 0 {
			panic("boom")
		}
		return reqs
	})
	ctx := context.Background()
	func() {
		defer func() {
			if p := recover(); p == nil {
				t.Error("the panic did not reach the leading caller")
			}
		}()
		_, _ = g.Do(ctx, -1)
	}()
	done := make(chan result, 1)
	go func() { resp, err := g.Do(ctx, 5); done <- result{5, resp, err} }()
	if r := recv(t, done, "Do after a panic (the Group is wedged)"); r.err != nil || r.resp != 5 {
		t.Errorf("Do after a panic = %d, %v", r.resp, r.err)
	}
	if _, err := g.Do(nil, 1); err == nil { //nolint:staticcheck // a nil ctx is refused
		t.Error("Do with a nil context was accepted")
	}
}

// Stop drops the waiting requests (ErrStopped), waits for the flush under
// way, and refuses later calls.
func TestStopDropsTheWaitersAndWaitsForTheFlush(t *testing.T) {
	t.Parallel()
	h := newHeld()
	g := groupcommit.New(4, h.flush)
	queued := make(chan struct{}, 1)
	g.Waiting = func() { queued <- struct{}{} }
	ctx := context.Background()
	first := make(chan result, 1)
	go func() { resp, err := g.Do(ctx, 1); first <- result{1, resp, err} }()
	recv(t, h.holding, "the first flush")
	second := make(chan error, 1)
	go func() { _, err := g.Do(ctx, 2); second <- err }()
	recv(t, queued, "the second caller queued")
	stopped := make(chan struct{})
	go func() { g.Stop(); close(stopped) }()
	if err := recv(t, second, "the waiting caller"); !errors.Is(err, groupcommit.ErrStopped) {
		t.Errorf("waiter at Stop: %v, want ErrStopped", err)
	}
	select {
	case <-stopped:
		t.Fatal("Stop returned while a flush was under way")
	default:
	}
	close(h.release)
	recv(t, stopped, "Stop, once the flush ended")
	if r := recv(t, first, "the flushing caller"); r.err != nil || r.resp != 2 {
		t.Errorf("the flush under way at Stop: %d, %v; want 2, nil", r.resp, r.err)
	}
	if _, err := g.Do(ctx, 3); !errors.Is(err, groupcommit.ErrStopped) {
		t.Errorf("Do after Stop: %v, want ErrStopped", err)
	}
}

// DoQueued calls queued before the request is flushed, leader or waiter.
func TestQueuedIsCalledBeforeTheFlush(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var order []string
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	g := groupcommit.New(4, func(_ context.Context, reqs []int) []int {
		note("flush")
		return reqs
	})
	if _, err := g.DoQueued(context.Background(), 1, func() { note("queued") }); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(order, []string{"queued", "flush"}) {
		t.Errorf("order %v, want [queued flush]", order)
	}
}

// Stop that drops a caller the lead was just handed to still returns: the
// dropped caller ends the hand-off. (Stop hung forever when that caller,
// seeing both its drop and its lead, took the drop: about half the time.)
func TestStopDuringALeadHandOffReturns(t *testing.T) {
	t.Parallel()
	for round := range 50 {
		h := newHeld()
		g := groupcommit.New(4, h.flush)
		queued := make(chan struct{}, 1)
		hold := make(chan struct{})
		var waiters atomic.Int32
		g.Waiting = func() {
			if waiters.Add(1) == 1 { // the second caller only
				queued <- struct{}{}
				<-hold
			}
		}
		ctx := context.Background()
		first := make(chan error, 1)
		go func() { _, err := g.Do(ctx, 1); first <- err }()
		recv(t, h.holding, "the first flush")
		second := make(chan error, 1)
		go func() { _, err := g.Do(ctx, 2); second <- err }()
		recv(t, queued, "the second caller queued (and held before it waits)")
		close(h.release)
		if err := recv(t, first, "the first caller"); err != nil { // it handed the lead to the second
			t.Fatal(err)
		}
		stopped := make(chan struct{})
		go func() { g.Stop(); close(stopped) }()
		for { // until Stop has dropped the second caller
			if _, err := g.Do(ctx, 3); errors.Is(err, groupcommit.ErrStopped) {
				break
			}
		}
		close(hold)
		recv(t, stopped, "Stop (round "+strconv.Itoa(round)+")")
		if err := recv(t, second, "the dropped caller"); !errors.Is(err, groupcommit.ErrStopped) {
			t.Fatalf("round %d: the dropped caller got %v, want ErrStopped", round, err)
		}
	}
}

// With a bound, a caller waits for room before the Group holds its request
// (its queued is not called), while that many requests wait for a flush.
func TestABoundHoldsCallersBack(t *testing.T) {
	t.Parallel()
	h := newHeld()
	g := groupcommit.New(4, h.flush).Bound(2)
	queued := make(chan int, 10)
	ctx := context.Background()
	out := make(chan result, 10)
	do := func(req int) {
		resp, err := g.DoQueued(ctx, req, func() { queued <- req })
		out <- result{req, resp, err}
	}
	go do(1)
	recv(t, h.holding, "the first flush")
	recv(t, queued, "the leader queued")
	go do(2)
	go do(3)
	recv(t, queued, "a waiter queued")
	recv(t, queued, "a waiter queued")
	go do(4) // no room: two wait already
	cctx, cancel := context.WithCancel(ctx)
	cancelled := make(chan error, 1)
	go func() {
		_, err := g.DoQueued(cctx, 5, func() { t.Error("a caller with no room was queued") })
		cancelled <- err
	}()
	cancel()
	if err := recv(t, cancelled, "the cancelled caller waiting for room"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled while waiting for room: %v", err)
	}
	select {
	case r := <-queued:
		t.Fatalf("request %d queued past the bound", r)
	default:
	}
	close(h.release)
	if r := recv(t, queued, "the held-back caller, once room was made"); r != 4 {
		t.Errorf("queued %d, want 4", r)
	}
	for range 4 {
		if r := recv(t, out, "a response"); r.err != nil || r.resp != 2*r.req {
			t.Errorf("Do(%d) = %d, %v", r.req, r.resp, r.err)
		}
	}
}
