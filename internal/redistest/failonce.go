package redistest

import (
	"context"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// FailOnce is a go-redis hook that fails the first command Match accepts
// (given the command's arguments) with Err, without sending it: a fault at
// one chosen call, such as a connection reset by a Redis restarting then.
type FailOnce struct {
	Match  func(args []any) bool
	Err    error
	failed atomic.Bool
}

// Failed reports whether the hook has failed a command.
func (h *FailOnce) Failed() bool { return h.failed.Load() }

// DialHook passes dials through.
func (h *FailOnce) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook fails the first matching command.
func (h *FailOnce) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
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
