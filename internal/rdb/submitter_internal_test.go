package rdb

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// holdFirst holds the test's first pipeline of script calls until release
// is closed, and reports the script calls of each pipeline sent.
type holdFirst struct {
	once    sync.Once
	release chan struct{}
	holding chan struct{} // closed when the first pipeline is held
	scripts chan int      // script calls of each pipeline sent
}

func (h *holdFirst) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *holdFirst) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *holdFirst) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		n := 0
		for _, c := range cmds {
			if c.Name() == "evalsha" {
				n++
			}
		}
		if n == 0 {
			return next(ctx, cmds) // go-redis' own (connection set-up)
		}
		h.once.Do(func() {
			close(h.holding)
			<-h.release
		})
		h.scripts <- n
		return next(ctx, cmds)
	}
}

// oneTaskReq is the submit of a new single-task run, left to the projector.
func oneTaskReq(t *testing.T) SubmitReq {
	t.Helper()
	run := "R" + ulid.Make().String()
	body := events.RunSubmittedBody{Workflow: "wf", Tasks: []events.TaskSpec{{ID: "a", Handler: "h"}}, Input: json.RawMessage(`1`)}
	ev := events.Event{ID: ulid.Make().String(), Run: run, Type: events.RunSubmitted, Time: time.UnixMilli(1000)}.WithBody(body)
	req, err := NewSubmitReq(run, ev, body, Initial{}, ev.Time)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// Submits that arrive while a round trip is in flight go together in the
// next one, as ONE script call of at most max runs (one partition), and
// each caller gets its own run's reply. A caller whose ctx ends while it
// waits leaves at once, nothing of it sent.
func TestSubmitterBatchesSubmitsBehindAFlush(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	h := &holdFirst{release: make(chan struct{}), holding: make(chan struct{}), scripts: make(chan int, 100)}
	c.AddHook(h)
	db := New(c, redistest.Namespace(t))
	ctx := context.Background()
	if err := db.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	s := NewSubmitter(db, 4)
	const behind = 10
	queued := make(chan struct{}, behind+1)
	s.g.Waiting = func() { queued <- struct{}{} }
	reqs := make([]SubmitReq, behind+1)
	reps := make([]SubmitReply, behind+1)
	errs := make([]error, behind+1)
	var wg sync.WaitGroup
	call := func(i int) {
		defer wg.Done()
		reps[i], errs[i] = s.Submit(ctx, reqs[i])
	}
	for i := range reqs {
		reqs[i] = oneTaskReq(t)
	}
	wg.Add(1)
	go call(0) // the first caller sends alone; its round trip is held
	select {
	case <-h.holding:
	case <-time.After(30 * time.Second):
		t.Fatal("the first submit was not sent")
	}
	cctx, cancel := context.WithCancel(ctx)
	left := make(chan error, 1)
	gone := oneTaskReq(t)
	go func() {
		_, err := s.Submit(cctx, gone)
		left <- err
	}()
	for i := 1; i <= behind; i++ {
		wg.Add(1)
		go call(i)
	}
	timeout := time.After(30 * time.Second)
	for range behind + 1 {
		select {
		case <-queued:
		case <-timeout:
			t.Fatal("submits did not queue behind the held round trip")
		}
	}
	cancel()
	select {
	case err := <-left:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled waiter: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a cancelled waiter did not leave while the round trip ahead was held")
	}
	close(h.release)
	wg.Wait()
	close(h.scripts)
	var sizes []int
	for n := range h.scripts {
		sizes = append(sizes, n)
	}
	// 1 alone, then 10 submits in round trips of at most 4, each one
	// script call (one partition).
	if len(sizes) != 4 || sizes[0] != 1 || sizes[1] != 1 || sizes[2] != 1 || sizes[3] != 1 {
		t.Errorf("script calls per round trip %v, want [1 1 1 1]", sizes)
	}
	for i, r := range reqs {
		if errs[i] != nil || reps[i].Err != nil || !reps[i].Created || reps[i].Workflow != "wf" {
			t.Errorf("caller %d: %+v, %v; want created", i, reps[i], errs[i])
		}
		if n, _ := c.Exists(ctx, db.K.RunLog(r.Run)).Result(); n != 1 {
			t.Errorf("caller %d: run %s has no log", i, r.Run)
		}
	}
	if n, _ := c.Exists(ctx, db.K.RunLog(gone.Run), db.K.RunState(gone.Run)).Result(); n != 0 {
		t.Error("the cancelled waiter's run was created")
	}
	if n, _ := c.ZCard(ctx, db.K.Runs()).Result(); n != int64(len(reqs)) {
		t.Errorf("the run index holds %d runs, want %d", n, len(reqs))
	}
}
