package main

import "runtime/debug"

// defaultGCPercent is the GOGC the graflow binary runs with when the
// environment sets none. A worker's or projector's live heap is a few
// megabytes, so with Go's default of 100 the collector ran every few
// thousand tasks and took about a third of the process' CPU (allocation,
// marking, sweeping: docs/performance.md, "Garbage collection"). At 400 the
// heap may grow to five times the live data before a cycle (tens of
// megabytes for the engine's own state) and the collector's share drops to
// a few percent. Set GOGC (or GOMEMLIMIT with GOGC=off) to choose otherwise;
// library users embedding a worker keep their own process' setting.
const defaultGCPercent = 400

// applyGCPolicy sets defaultGCPercent unless GOGC is set in the
// environment. It returns the percent in force.
func applyGCPolicy(getenv func(string) string) int {
	if getenv("GOGC") != "" {
		old := debug.SetGCPercent(100)
		debug.SetGCPercent(old)
		return old
	}
	debug.SetGCPercent(defaultGCPercent)
	return defaultGCPercent
}
