//go:build graflowtest

package crashpoint

import (
	"os"
	"syscall"
)

// Enabled reports whether this build has crash points (graflowtest).
const Enabled = true

var armed = os.Getenv(Env)

// Hit kills the process with SIGKILL if point is armed.
func Hit(point string) {
	if armed == "" || armed != point {
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // never returns
}
