package retry_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/internal/retry"
	"github.com/redis/go-redis/v9"
)

// The classifier on errors from a real Redis, not hand-typed strings.
func TestTransientOnRealErrors(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx := context.Background()
	str := ns + ":str"
	if err := c.Set(ctx, str, "x", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	user := strings.ReplaceAll(ns, ":", "-") + "-ro"
	if err := c.Do(ctx, "ACL", "SETUSER", user, "on", ">pw", "~other:*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Do(context.Background(), "ACL", "DELUSER", user) })
	opts := *c.Options()
	opts.Username, opts.Password = user, "pw"
	limited := redis.NewClient(&opts)
	t.Cleanup(func() { _ = limited.Close() })
	closed := redis.NewClient(c.Options())
	_ = closed.Close()
	refused := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: time.Second})
	t.Cleanup(func() { _ = refused.Close() })

	for name, tc := range map[string]struct {
		err  error
		want bool
	}{
		"a script runtime error":         {c.Eval(ctx, "return redis.call('NOSUCHCMD')", nil).Err(), false},
		"a script that does not compile": {c.Eval(ctx, "return (", nil).Err(), false},
		"cjson nesting in a script":      {c.Eval(ctx, "return cjson.decode(ARGV[1])", nil, strings.Repeat("[", 1100)+strings.Repeat("]", 1100)).Err(), false},
		"WRONGTYPE":                      {c.XAdd(ctx, &redis.XAddArgs{Stream: str, Values: []any{"a", "1"}}).Err(), false},
		"WRONGTYPE, wrapped":             {fmt.Errorf("relay outbox of run R: %w", c.HSet(ctx, str, "f", "v").Err()), false},
		"NOPERM":                         {limited.Get(ctx, ns+":any").Err(), false},
		"NOSCRIPT":                       {c.EvalSha(ctx, strings.Repeat("0", 40), nil).Err(), true},
		"BUSYGROUP":                      {busyGroup(ctx, t, c, ns), false},
		"a closed client":                {closed.Get(ctx, "k").Err(), true},
		"connection refused":             {refused.Get(ctx, "k").Err(), true},
		"connection refused, wrapped":    {fmt.Errorf("commit: %w", refused.Get(ctx, "k").Err()), true},
		"io.EOF":                         {fmt.Errorf("read: %w", io.EOF), true},
		"a truncated payload":            {fmt.Errorf("decode body: %w", io.ErrUnexpectedEOF), false},
		"context canceled":               {context.Canceled, false},
		"nil":                            {nil, false},
	} {
		if tc.err == nil && name != "nil" {
			t.Errorf("%s: the call did not fail", name)
			continue
		}
		if got := retry.Transient(tc.err); got != tc.want {
			t.Errorf("%s: Transient(%v) = %v, want %v", name, tc.err, got, tc.want)
		}
	}
}

func busyGroup(ctx context.Context, t *testing.T, c *redis.Client, ns string) error {
	t.Helper()
	if err := c.XGroupCreateMkStream(ctx, ns+":s", "g", "0").Err(); err != nil {
		t.Fatal(err)
	}
	return c.XGroupCreateMkStream(ctx, ns+":s", "g", "0").Err()
}

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
