package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/crashpoint"
)

// runExe runs the graflow binary at exe to completion and returns its
// combined output and exit code.
func runExe(t *testing.T, ctx context.Context, exe string, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee):
		return out.String(), ee.ExitCode()
	}
	t.Fatalf("%s %s: %v", exe, strings.Join(args, " "), err)
	return "", 0
}

// TestProductionBuildCannotDisableFencing: fencing can be switched off, and
// crash points armed, only in a build with the graflowtest tag. graflow as
// users build it (no tags) has no flag, variable or API for either.
// (Defect 8 of issue 10: GRAFLOW_UNSAFE_NO_FENCING=1 silently turned
// fencing off in any graflow worker.)
func TestProductionBuildCannotDisableFencing(t *testing.T) {
	t.Parallel()
	t.Run("the worker command rejects --unsafe-no-fencing as an unknown flag", func(t *testing.T) {
		t.Parallel()
		ctx := withTimeout(t, 60*time.Second)
		out, code := runExe(t, ctx, productionBinary(t), nil, "worker", "--unsafe-no-fencing", "--redis", "redis://127.0.0.1:1")
		if code != 2 || !strings.Contains(out, "flag provided but not defined: -unsafe-no-fencing") {
			t.Errorf("graflow worker --unsafe-no-fencing: exit %d, output:\n%s\nwant exit 2 (usage) and an unknown-flag error", code, out)
		}
	})
	t.Run("chaos --break-fencing says it needs a graflowtest build", func(t *testing.T) {
		t.Parallel()
		ctx := withTimeout(t, 60*time.Second)
		out, code := runExe(t, ctx, productionBinary(t), nil, "chaos", "--break-fencing")
		if code != 2 || !strings.Contains(out, "-tags graflowtest") {
			t.Errorf("graflow chaos --break-fencing: exit %d, output:\n%s\nwant exit 2 and a pointer to the graflowtest build", code, out)
		}
	})
	t.Run("the binary reads neither environment variable and has no fencing switch", func(t *testing.T) {
		t.Parallel()
		b, err := os.ReadFile(productionBinary(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"GRAFLOW_UNSAFE_NO_FENCING", crashpoint.Env, "UnsafeDisableFencing"} {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("the production binary contains %q", s)
			}
		}
		// The control: the test build does hold them.
		tb, err := os.ReadFile(binary(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{crashpoint.Env} {
			if !bytes.Contains(tb, []byte(s)) {
				t.Errorf("the graflowtest binary does not contain %q: the check above proves nothing", s)
			}
		}
	})
	// The old variable and an armed crash point change nothing: the claimer
	// survives its claim (no crash point) and, stopped past its lease, has
	// its late result rejected (fencing on).
	t.Run("with GRAFLOW_UNSAFE_NO_FENCING=1 and a crash point armed a worker stopped past its lease still has its late result rejected", func(t *testing.T) {
		testStoppedPastLease(t, recWorker{production: true,
			env: []string{"GRAFLOW_UNSAFE_NO_FENCING=1", crashpoint.Env + "=" + crashpoint.WorkerAfterClaim}})
	})
}
