package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// An interrupt (the signal context cancelled) exits 0 quietly; an error
// that wraps context.Canceled from an internal cancel while nobody
// interrupted is a failure, and it is printed (it used to exit 0 silently).
func TestExitCodeCancellation(t *testing.T) {
	failed := fmt.Errorf("floor fanout claim: %w", errors.Join(errors.New("reply stale"), context.Canceled))

	var out bytes.Buffer
	m := &Main{Stderr: &out}
	if code := m.exitCode(context.Background(), failed); code != ExitError {
		t.Errorf("internal cancel: exit %d, want %d", code, ExitError)
	}
	if !strings.Contains(out.String(), "reply stale") {
		t.Errorf("internal cancel: stderr %q does not say what failed", out.String())
	}

	out.Reset()
	interrupted, cancel := context.WithCancel(context.Background())
	cancel()
	if code := m.exitCode(interrupted, failed); code != ExitOK {
		t.Errorf("interrupt: exit %d, want %d", code, ExitOK)
	}
	if out.Len() != 0 {
		t.Errorf("interrupt: printed %q", out.String())
	}
	if code := m.exitCode(context.Background(), nil); code != ExitOK {
		t.Errorf("no error: exit %d", code)
	}
}
