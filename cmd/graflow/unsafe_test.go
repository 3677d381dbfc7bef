//go:build !graflowtest

package main

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Issue #10 defect 8: GRAFLOW_UNSAFE_NO_FENCING=1 turned fencing off in
// "graflow worker" of every build. A production build has no way to: the
// flag does not exist, the variable is not read, and chaos cannot break
// fencing with it.
func TestProductionBinaryCannotSwitchFencingOff(t *testing.T) {
	t.Parallel()
	if testHooks {
		t.Fatal("a build without the graflowtest tag has test hooks")
	}
	exe := buildGraflow(t)
	run := func(env []string, args ...string) (int, string) {
		cmd := exec.Command(exe, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := run(nil, "worker", "--unsafe-no-fencing", "--redis", "redis://127.0.0.1:1"); code != ExitUsage || !strings.Contains(out, "not defined: -unsafe-no-fencing") {
		t.Errorf("graflow worker --unsafe-no-fencing: exit %d, want %d (no such flag):\n%s", code, ExitUsage, out)
	}
	if code, out := run([]string{"GRAFLOW_UNSAFE_NO_FENCING=1"}, "chaos", "--seeds", "1", "--break-fencing"); code != ExitUsage || !strings.Contains(out, "graflowtest") {
		t.Errorf("graflow chaos --break-fencing: exit %d, want %d (needs a graflowtest build):\n%s", code, ExitUsage, out)
	}
	src, err := os.ReadFile("run_cmds.go")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(src), "GRAFLOW_UNSAFE_NO_FENCING") {
		t.Error("the worker command still reads GRAFLOW_UNSAFE_NO_FENCING")
	}
}
