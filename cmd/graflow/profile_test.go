package main

import (
	"os"
	"path/filepath"
	"testing"
)

// --cpuprofile writes a profile that go tool pprof reads (gzip-compressed
// protobuf), and an empty path profiles nothing.
func TestCPUProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.pprof")
	stop, err := cpuProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Errorf("profile of %d bytes is not gzip data: % x", len(b), b[:min(len(b), 8)])
	}
	stop, err = cpuProfile("")
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if _, err := cpuProfile(filepath.Join(t.TempDir(), "missing", "cpu.pprof")); err == nil {
		t.Error("a profile path in a missing directory was accepted")
	}
}
