// Package retry is the engine's one retry helper and its one rule for which
// errors are worth retrying.
//
// Do runs an operation again, with exponential backoff and jitter
// (github.com/cenkalti/backoff/v4), only while it fails with an error that
// Transient accepts: one that a later identical call can succeed past
// without anybody changing the data. Every other error is returned at once,
// so a broken run (a script error, a key of the wrong type, a missing ACL
// permission, an entry that does not decode) costs one call, not thirty
// seconds of calls inside a loop that other runs are waiting behind.
//
// # Transient (retried with backoff)
//
//   - network errors: connection refused, reset or aborted, broken pipe,
//     EOF, timeouts and any other net.Error (a dial that failed is
//     transient even when go-redis wraps it in a context error);
//   - go-redis pool timeouts and exhaustion;
//   - replies of a server that is loading, failing over or resharding:
//     LOADING, BUSY (another script is running past busy-reply-threshold),
//     TRYAGAIN, CLUSTERDOWN, MASTERDOWN, READONLY (also inside a script
//     error), NOREPLICAS (min-replicas-to-write), MISCONF (a failed RDB save
//     refuses writes until one succeeds), UNBLOCKED (a blocked read whose
//     stream was deleted or whose server changed role), MOVED and ASK
//     (surfaced only when the cluster client ran out of redirects), "ERR max
//     number of clients reached". A server refuses these before a command
//     runs, and a script at its first write, so nothing was written;
//   - NOSCRIPT: the script cache is empty after a restart. A pipelined
//     EVALSHA does not fall back to EVAL by itself: give Do the OnNoScript
//     option so it reloads the scripts before the next try;
//   - OOM (also inside a script error). A decision, not an accident: Redis
//     refuses a command, and a script at its first write, before it writes
//     anything, so the call changed nothing and is safe to repeat; memory
//     comes back by TTL expiry, eviction, a consumer catching up or an
//     operator, and giving up at once would turn a full Redis into lost
//     progress. Do's time bound (MaxElapsed) still applies, so a Redis that
//     stays full surfaces as an error after it.
//
// # Not transient (returned at once)
//
//   - script errors: "ERR user_script:…", "ERR Error running script …",
//     "ERR Error compiling script …" (a Lua runtime error fails the same way
//     on every call; a script may have written before it failed, and a
//     retry would write again);
//   - WRONGTYPE, NOPERM, NOAUTH/WRONGPASS, CROSSSLOT, EXECABORT, BUSYGROUP,
//     BUSYKEY, NOGROUP and every other "ERR …" reply (syntax, invalid
//     argument, unknown command); NOGROUP is one a caller may choose to
//     retry after recreating the group: see Also;
//   - context.Canceled and context.DeadlineExceeded; redis.ErrClosed (this
//     client was closed and will not reopen);
//   - everything that is not a Redis or network error: decode and
//     validation errors, the engine's own sentinels (a stale claim, a bad
//     event) and redis.Nil.
//
// The classifier is an allow-list: an error it does not know is not
// retried. A caller that knows better for one call (a conflict it will
// resolve by reading again) passes Also.
package retry
