// Package crashpoint lets recovery tests kill a process at a named point
// between two steps that must survive a crash (after the finish script,
// before what the worker does next; after a projector commit, before its
// feed ack...).
//
// Crash points exist only in binaries built with the build tag graflowtest
// (the recovery tests and "make chaos-broken-fencing" build such a binary):
// there the environment variable GRAFLOW_TEST_CRASH_AT=<point> arms one,
// and the process SIGKILLs itself the first time it reaches it. In every
// other build Hit does nothing and no environment variable is read.
package crashpoint

// Env is the variable that arms a crash point (graflowtest builds only).
const Env = "GRAFLOW_TEST_CRASH_AT"

// Points.
const (
	WorkerAfterFinish    = "worker-after-finish"    // outcome appended, feed pointed and message acked in the same script; a dead letter not yet written
	WorkerAfterClaim     = "worker-after-claim"     // task claimed, handler not started
	ProjectorAfterCommit = "projector-after-commit" // decisions committed and their dispatches queued, feed entry not acked
)
