package cpucap

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCapHoldsAProcess caps a child process and reads the limit and the
// membership back from the cgroup files.
func TestCapHoldsAProcess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("cgroups need root")
	}
	c, err := New("graflow-cpucap-test-"+strconv.Itoa(os.Getpid()), 0.25)
	if err != nil {
		t.Skipf("no writable cgroup cpu controller here: %v", err)
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	}()
	if err := c.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	procs, err := os.ReadFile(filepath.Join(c.dir, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(procs), strconv.Itoa(cmd.Process.Pid)) {
		t.Errorf("cgroup.procs = %q, want pid %d", procs, cmd.Process.Pid)
	}
	file, want := "cpu.cfs_quota_us", "25000"
	if c.v2 {
		file, want = "cpu.max", "25000 100000"
	}
	got, err := os.ReadFile(filepath.Join(c.dir, file))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != want {
		t.Errorf("%s = %q, want %q", file, got, want)
	}
}

func TestNewRefusesNoCPU(t *testing.T) {
	for _, cpus := range []float64{0, -1, 0.001} {
		if _, err := New("x", cpus); err == nil {
			t.Errorf("New(%v) succeeded", cpus)
		}
	}
}
