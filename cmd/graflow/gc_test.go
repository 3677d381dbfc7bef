package main

import (
	"runtime/debug"
	"testing"
)

func TestGCPolicyDefaultsToItsPercentAndHonoursGOGC(t *testing.T) {
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)

	if got := applyGCPolicy(func(string) string { return "" }); got != defaultGCPercent {
		t.Errorf("no GOGC: percent %d, want %d", got, defaultGCPercent)
	}
	if got := debug.SetGCPercent(100); got != defaultGCPercent {
		t.Errorf("no GOGC: the runtime's percent is %d, want %d", got, defaultGCPercent)
	}
	// GOGC set (the runtime read it at start; here it is 100): left alone.
	env := func(k string) string {
		if k == "GOGC" {
			return "100"
		}
		return ""
	}
	if got := applyGCPolicy(env); got != 100 {
		t.Errorf("GOGC=100: percent %d, want 100 left alone", got)
	}
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC=100: the runtime's percent is %d, want 100", got)
	}
}
