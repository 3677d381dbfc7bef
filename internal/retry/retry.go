// Package retry is the engine's one retry policy for Redis calls: which
// errors are worth another try, and how long to back off between tries
// (github.com/cenkalti/backoff/v4).
//
// Only transient errors are retried by default: the network, a Redis that
// is restarting, loading, busy or failing over. A script error, a key of
// the wrong type, a missing permission or a reply that does not decode is
// returned at once: trying again would fail again, and a retry loop around
// it would stall whatever else its goroutine serves.
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

// transientPrefixes are Redis error replies that go away by themselves.
var transientPrefixes = []string{
	"LOADING",     // Redis is loading its dataset after a restart
	"BUSY",        // a script runs too long (BUSY, BUSYKEY is not: see Transient)
	"TRYAGAIN",    // cluster: a multi-key command during resharding
	"CLUSTERDOWN", // cluster: slots not served
	"MASTERDOWN",  // replica lost its master
	"READONLY",    // a failover turned the node we talk to into a replica
	"NOSCRIPT",    // the script cache is empty (Redis restarted): reload and retry
	"NOREPLICAS",  // min-replicas-to-write not met for now
	"OOM",         // maxmemory: a TTL or gc may free memory; backs off
}

// Transient reports whether err may go away by itself, so that the same
// call is worth trying again: a network error or timeout, a connection
// closed under us, or one of the Redis replies in transientPrefixes.
// Context errors, script errors ("ERR user_script...", "ERR Error running
// script"), WRONGTYPE, NOPERM and decode errors are not.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	// io.EOF: the server closed the connection (go-redis returns it as
	// is). Not io.ErrUnexpectedEOF, which a truncated payload's decoder
	// also returns.
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, redis.ErrClosed) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var re redis.Error
	if errors.As(err, &re) {
		// A reply from Redis: its first word says what it is.
		msg := re.Error()
		if strings.HasPrefix(msg, "BUSYKEY") || strings.HasPrefix(msg, "BUSYGROUP") {
			return false
		}
		for _, p := range transientPrefixes {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		return false
	}
	// A connection error that lost its type on the way (wrapped as text).
	for _, s := range []string{"connection refused", "connection reset", "broken pipe", "i/o timeout"} {
		if strings.Contains(err.Error(), s) {
			return true
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
