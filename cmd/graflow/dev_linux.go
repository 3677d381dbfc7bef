package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// devSysProcAttr puts a worker process in its own process group, so a
// terminal's Ctrl-C reaches only "graflow dev", which then stops the workers
// in order (SIGTERM: drain, exit 0); and it asks the kernel to SIGKILL the
// worker if "graflow dev" dies first, so no worker outlives it.
//
// Pdeathsig fires when the OS thread that forked the child exits; Go only
// retires threads locked with runtime.LockOSThread, which dev never does.
func devSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// lockDir takes an exclusive lock on dir for this process's lifetime, so two
// "graflow dev" never run one redis-server AOF. The returned func releases it.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("data directory %s is in use by another \"graflow dev\" (%w): stop it, or pass --data DIR", dir, err)
	}
	return func() { _ = f.Close() }, nil
}
