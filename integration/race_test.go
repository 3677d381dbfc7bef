//go:build race

package integration

// raceEnabled builds the graflow binary with -race too.
const raceEnabled = true
