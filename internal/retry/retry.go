package retry

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/redis/go-redis/v9"
)

// Transient reports whether a later identical call may succeed where this
// one failed with err, without anybody changing the data: a network error,
// a server that is restarting, loading, failing over or out of memory. It
// is false for nil, script errors, data errors (WRONGTYPE, decode errors),
// permission errors (NOPERM), context errors and anything it does not
// know. The package documentation lists every case. Safe for concurrent
// use.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	// A dial that failed is transient even when go-redis wraps it in a
	// context error (its dial timeout is a context deadline).
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed) {
		return false
	}
	var reply redis.Error
	if errors.As(err, &reply) {
		return transientReply(reply.Error())
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redis.ErrPoolExhausted) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// transientPrefixes are the error codes of replies worth retrying. Each ends
// with a space: "BUSY " is a script running too long, "BUSYGROUP" and
// "BUSYKEY" are data errors.
var transientPrefixes = []string{
	"LOADING ", "BUSY ", "TRYAGAIN ", "CLUSTERDOWN ", "MASTERDOWN ", "READONLY ",
	"NOREPLICAS ", "UNBLOCKED ", "MOVED ", "ASK ", "NOSCRIPT ", "OOM ", "MISCONF ",
}

// transientInScript are the transient errors a script error can carry
// from a redis.call (Redis 6 reports them inside "ERR Error running
// script"; Redis 7 puts the code first, which the prefixes cover). Neither
// can come after a write of the script's own: Redis refuses a script's
// first write only.
var transientInScript = []string{
	"-READONLY You can't write against a read only replica",
	"-OOM command not allowed",
}

func transientReply(msg string) bool {
	for _, p := range transientPrefixes {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	if msg == "ERR max number of clients reached" {
		return true
	}
	if strings.Contains(msg, "@user_script") {
		for _, s := range transientInScript {
			if strings.Contains(msg, s) {
				return true
			}
		}
	}
	return false
}

// Policy shapes Do. A zero field means its default.
type Policy struct {
	// Initial and Max bound the exponential backoff between tries
	// (defaults 50ms and 5s; multiplier 1.5, jitter 0.5).
	Initial, Max time.Duration
	// MaxElapsed gives up on transient errors after this long (0: retry
	// them until ctx ends).
	MaxElapsed time.Duration
	// Tolerate is how many errors that are not transient Do tries again
	// before it gives up (default 0: it returns the first at once).
	Tolerate int
	// AlsoTransient, when set, names more errors to retry like transient
	// ones (not counted against Tolerate).
	AlsoTransient func(err error) bool
	// OnError, when set, sees every failed try before the wait (to log
	// it, or to reload the scripts after NOSCRIPT).
	OnError func(err error, wait time.Duration)
}

// Do runs op until it succeeds, returns an error that is not transient
// (once Policy.Tolerate of them were retried), ctx ends, or MaxElapsed
// passes; it returns op's last error (ctx's error if op never ran). An
// error wrapped with Permanent is returned at once, unwrapped.
func Do(ctx context.Context, p Policy, op func() error) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.MaxElapsedTime = p.Initial, p.Max, p.MaxElapsed
	if b.InitialInterval <= 0 {
		b.InitialInterval = 50 * time.Millisecond
	}
	if b.MaxInterval <= 0 {
		b.MaxInterval = 5 * time.Second
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	hard := 0
	err := backoff.RetryNotify(func() error {
		err := op()
		if err == nil || Transient(err) || (p.AlsoTransient != nil && p.AlsoTransient(err)) {
			return err
		}
		var pe *backoff.PermanentError
		if errors.As(err, &pe) {
			return err
		}
		if hard++; hard > p.Tolerate {
			return backoff.Permanent(err)
		}
		return err
	}, backoff.WithContext(b, ctx), func(err error, d time.Duration) {
		if p.OnError != nil {
			p.OnError(err, d)
		}
	})
	var pe *backoff.PermanentError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Permanent wraps err so that Do returns it at once.
func Permanent(err error) error { return backoff.Permanent(err) }

// Backoff is the wait between the tries of a loop that retries by itself
// (a consumer loop that reads again after a failed read): each Wait is
// longer, up to Policy.Max, until Reset after a success. Not safe for
// concurrent use.
type Backoff struct{ b *backoff.ExponentialBackOff }

// NewBackoff returns a Backoff shaped by p (Initial, Max).
func NewBackoff(p Policy) *Backoff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.MaxElapsedTime = p.Initial, p.Max, 0
	if b.InitialInterval <= 0 {
		b.InitialInterval = 50 * time.Millisecond
	}
	if b.MaxInterval <= 0 {
		b.MaxInterval = 5 * time.Second
	}
	b.Reset()
	return &Backoff{b: b}
}

// Wait blocks for the next interval; false if ctx ended first.
func (b *Backoff) Wait(ctx context.Context) bool {
	t := time.NewTimer(b.b.NextBackOff())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Reset starts the intervals over (after a success).
func (b *Backoff) Reset() { b.b.Reset() }
