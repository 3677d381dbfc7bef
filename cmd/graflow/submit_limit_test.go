package main

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
)

// endless is a reader of garbage that never ends, counting what was read.
type endless struct{ n atomic.Int64 }

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	e.n.Add(int64(len(p)))
	return len(p), nil
}

// Issue #10 defect 7: "graflow submit -" read all of its standard input
// (30 MB of garbage, or more) before looking at it. It reads at most the
// spec limit and refuses the rest, before connecting to Redis.
func TestSubmitBoundsItsInput(t *testing.T) {
	t.Parallel()
	in := &endless{}
	m, out := newTestMain("", nil)
	m.Stdin = in
	err := m.Run(context.Background(), []string{"submit", "--redis", "redis://127.0.0.1:1", "-"})
	code := m.exitCode(context.Background(), err)
	if code != ExitUsage || !strings.Contains(out.String(), "limit of a spec") {
		t.Errorf("exit %d, want %d:\n%s", code, ExitUsage, out.String())
	}
	if n := in.n.Load(); n > maxSpecFile+64<<10 {
		t.Errorf("read %d bytes of standard input, want at most the limit %d (plus a buffer)", n, maxSpecFile)
	}
}
