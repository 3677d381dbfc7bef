// Package cpucap caps a process's CPU with a Linux cgroup: a benchmark's
// way to give each redis-server a fixed share of a core, as each master of
// a real cluster has its own machine. Root only; cgroup v2 (cpu.max) or v1
// (the cpu controller's CFS quota).
package cpucap

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// period is the CFS period the quota is a share of (100 ms, the kernel's
// default).
const period = 100_000 // µs

// Cap is one cgroup holding capped processes.
type Cap struct {
	dir string
	v2  bool
}

// roots are where the cgroup hierarchies are mounted.
var (
	rootV2 = "/sys/fs/cgroup"
	rootV1 = "/sys/fs/cgroup/cpu"
)

// New creates cgroup name (a fresh one) limited to cpus cores (0.25: a
// quarter of one core).
func New(name string, cpus float64) (*Cap, error) {
	if cpus <= 0 {
		return nil, fmt.Errorf("cpucap: %v cores: want more than 0", cpus)
	}
	quota := int(cpus * period)
	if quota < 1000 {
		return nil, fmt.Errorf("cpucap: %v cores: want at least 0.01", cpus)
	}
	c := &Cap{}
	if _, err := os.Stat(filepath.Join(rootV2, "cgroup.controllers")); err == nil {
		c.v2, c.dir = true, filepath.Join(rootV2, name)
	} else if _, err := os.Stat(filepath.Join(rootV1, "cpu.cfs_quota_us")); err == nil {
		c.dir = filepath.Join(rootV1, name)
	} else {
		return nil, errors.New("cpucap: no cgroup cpu controller found (neither cgroup v2 at /sys/fs/cgroup nor v1 at /sys/fs/cgroup/cpu)")
	}
	if err := os.Mkdir(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("cpucap: create cgroup (root needed): %w", err)
	}
	var err error
	if c.v2 {
		err = c.write("cpu.max", strconv.Itoa(quota)+" "+strconv.Itoa(period))
	} else {
		err = errors.Join(c.write("cpu.cfs_period_us", strconv.Itoa(period)), c.write("cpu.cfs_quota_us", strconv.Itoa(quota)))
	}
	if err != nil {
		_ = os.Remove(c.dir)
		return nil, err
	}
	return c, nil
}

// Add moves process pid into the cgroup.
func (c *Cap) Add(pid int) error { return c.write("cgroup.procs", strconv.Itoa(pid)) }

// Close removes the cgroup; its processes must have exited.
func (c *Cap) Close() error {
	if err := os.Remove(c.dir); err != nil {
		return fmt.Errorf("cpucap: remove cgroup: %w", err)
	}
	return nil
}

func (c *Cap) write(file, value string) error {
	if err := os.WriteFile(filepath.Join(c.dir, file), []byte(value), 0o644); err != nil {
		return fmt.Errorf("cpucap: %w", err)
	}
	return nil
}
