package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// holdScripts holds every script call until release is closed, telling
// entered when the first one is held.
type holdScripts struct {
	entered chan struct{}
	release chan struct{}
}

func (h *holdScripts) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *holdScripts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *holdScripts) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n == "evalsha" || n == "eval" {
			select {
			case h.entered <- struct{}{}:
			default:
			}
			<-h.release
		}
		return next(ctx, cmd)
	}
}

// The writes of one claim go one at a time; a write waiting for its turn
// gives up when its context does. It waited for the other write and its
// retries (up to 30 s of a failover) whatever its deadline (found by a
// review of 9b81498).
func TestAChannelWriteWaitingForItsTurnHonoursItsContext(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	hold := &holdScripts{entered: make(chan struct{}, 1), release: make(chan struct{})}
	hooked := redis.NewClient(c.Options())
	hooked.AddHook(hold)
	t.Cleanup(func() { _ = hooked.Close() })
	w, err := New(Config{Redis: hooked, Namespace: redistest.Namespace(t), ID: "W"})
	if err != nil {
		t.Fatal(err)
	}
	ch := w.channelOf("r1", "t", 1, 1)
	first := make(chan error, 1)
	go func() { first <- ch.Set(context.Background(), "a", 1) }()
	<-hold.entered // the first write holds the claim's turn
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	second := make(chan error, 1)
	go func() { second <- ch.Set(ctx, "b", 2) }()
	select {
	case err := <-second:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("a write whose context ended while waiting: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("a write whose context ended waited for the other write")
	}
	close(hold.release)
	if err := <-first; err == nil {
		t.Error("a write to a run that does not exist succeeded")
	}
}
