//go:build !unix

package redistest

// processAlive cannot check cheaply here; report alive so stale containers
// are never removed by mistake.
func processAlive(int) bool { return true }
