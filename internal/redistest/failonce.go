package redistest

import (
	"context"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// FailOnce is a go-redis hook that fails the first command Match accepts
// (given the command's arguments) with Err, without sending it: a fault at
// one chosen call, such as a connection reset by a Redis restarting then.
//
// With AfterSend, the command is sent and, once Redis ran it, failed with
// Err as if its reply were lost on the way back: the fault after a write.
type FailOnce struct {
	Match     func(args []any) bool
	Err       error
	AfterSend bool
	failed    atomic.Bool
}

// Failed reports whether the hook has failed a command.
func (h *FailOnce) Failed() bool { return h.failed.Load() }

// DialHook passes dials through.
func (h *FailOnce) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook fails the first matching command (after it ran, with
// AfterSend).
func (h *FailOnce) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.AfterSend {
			err := next(ctx, cmd)
			if err == nil && h.Match(cmd.Args()) && h.failed.CompareAndSwap(false, true) {
				cmd.SetErr(h.Err)
				return h.Err
			}
			return err
		}
		if h.Match(cmd.Args()) && h.failed.CompareAndSwap(false, true) {
			cmd.SetErr(h.Err)
			return h.Err
		}
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook passes pipelines through.
func (h *FailOnce) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
