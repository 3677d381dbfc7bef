package retry_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/retry"
)

func TestDoRetriesOnlyTransientErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := retry.Policy{Initial: time.Millisecond, Max: time.Millisecond}
	hard := errors.New("WRONGTYPE-like data error")
	n := 0
	if err := retry.Do(ctx, p, func() error { n++; return hard }); !errors.Is(err, hard) || n != 1 {
		t.Errorf("a hard error: %v after %d tries, want it after 1", err, n)
	}
	n = 0
	p.Tolerate = 2
	if err := retry.Do(ctx, p, func() error { n++; return hard }); !errors.Is(err, hard) || n != 3 {
		t.Errorf("Tolerate 2: %v after %d tries, want it after 3", err, n)
	}
	n = 0
	if err := retry.Do(ctx, p, func() error {
		if n++; n < 5 {
			return io.EOF
		}
		return nil
	}); err != nil || n != 5 {
		t.Errorf("transient errors: %v after %d tries, want success after 5", err, n)
	}
	n = 0
	if err := retry.Do(ctx, p, func() error { n++; return retry.Permanent(io.EOF) }); !errors.Is(err, io.EOF) || n != 1 {
		t.Errorf("Permanent: %v after %d tries", err, n)
	}
	cctx, cancel := context.WithCancel(ctx)
	n = 0
	err := retry.Do(cctx, p, func() error {
		if n++; n == 3 {
			cancel()
		}
		return io.EOF
	})
	if err == nil || n != 3 {
		t.Errorf("cancelled: %v after %d tries", err, n)
	}
}
