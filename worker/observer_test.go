package worker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/worker"
)

// orderObserver records the order of the calls about outcomes.
type orderObserver struct {
	worker.NopObserver
	mu    sync.Mutex
	calls []string
	done  chan struct{}
}

func (o *orderObserver) DeadLettered(pool, handler string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, "dead_lettered")
}

func (o *orderObserver) TaskDone(pool, handler string, outcome worker.Outcome) {
	o.mu.Lock()
	o.calls = append(o.calls, "task_done:"+string(outcome))
	o.mu.Unlock()
	select {
	case o.done <- struct{}{}:
	default:
	}
}

// TaskDone is an outcome's last word: an observer that waits for it (a
// metrics reader) finds a dead letter already counted.
func TestADeadLetterIsObservedBeforeItsTaskDone(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run := b.submit(t, events.TaskSpec{ID: "t", Handler: "fail", MaxAttempts: 1})
	obs := &orderObserver{done: make(chan struct{}, 1)}
	cfg := b.config("w1")
	cfg.Metrics = obs
	b.start(t, cfg, map[string]worker.HandlerFunc{
		"fail": func(ctx context.Context, task *worker.Task) (any, error) { return nil, errors.New("no") },
	})
	select {
	case <-obs.done:
	case <-time.After(waitTimeout):
		t.Fatalf("no TaskDone for run %s", run)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if want := []string{"dead_lettered", "task_done:failed"}; len(obs.calls) != 2 || obs.calls[0] != want[0] || obs.calls[1] != want[1] {
		t.Errorf("observed %v, want %v", obs.calls, want)
	}
}
