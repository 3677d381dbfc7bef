//go:build !graflowtest

package crashpoint

// Enabled reports whether this build has crash points (graflowtest).
const Enabled = false

// Hit does nothing: crash points exist only in graflowtest builds.
func Hit(string) {}
