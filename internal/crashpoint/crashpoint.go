// Package crashpoint lets recovery tests kill a process at a named point
// between two steps that must survive a crash (after the finish script,
// before the ack; after a projector commit, before its relay...).
//
// It is armed only by the environment variable GRAFLOW_TEST_CRASH_AT=<point>
// and never in normal operation: the process then SIGKILLs itself the
// first time it reaches that point.
package crashpoint

import (
	"os"
	"syscall"
)

// Env is the variable that arms a crash point.
const Env = "GRAFLOW_TEST_CRASH_AT"

// Points.
const (
	WorkerAfterFinish    = "worker-after-finish"    // outcome appended, feed not pointed, message not acked
	WorkerAfterClaim     = "worker-after-claim"     // task claimed, handler not started
	ProjectorAfterCommit = "projector-after-commit" // decisions committed, outbox not relayed
)

var armed = os.Getenv(Env)

// Hit kills the process with SIGKILL if point is armed.
func Hit(point string) {
	if armed == "" || armed != point {
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // never returns
}
