package graflow_test

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// faultHook fails the commands (not pipelines) for which fail returns an
// error, with that error: a test's stand-in for a Redis that is gone for
// a moment.
type faultHook struct{ fail func(redis.Cmder) error }

func (h faultHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h faultHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if err := h.fail(cmd); err != nil {
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

func (h faultHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
