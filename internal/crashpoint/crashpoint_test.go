//go:build !graflowtest

package crashpoint_test

import (
	"os"
	"os/exec"
	"testing"

	"github.com/graflow-go/graflow/internal/crashpoint"
)

// Issue #10 defect 8: without the graflowtest tag, the crash points are
// inert whatever the environment says.
func TestCrashPointsAreInertWithoutTheTag(t *testing.T) {
	if os.Getenv("CRASHPOINT_CHILD") == "1" {
		crashpoint.Hit(crashpoint.WorkerAfterFinish)
		os.Exit(0) // still alive
	}
	if crashpoint.Enabled {
		t.Fatal("crash points enabled in a build without the graflowtest tag")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashPointsAreInertWithoutTheTag$")
	cmd.Env = append(os.Environ(), "CRASHPOINT_CHILD=1", crashpoint.Env+"="+crashpoint.WorkerAfterFinish)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("a process with %s armed died at the point: %v\n%s", crashpoint.Env, err, out)
	}
}
