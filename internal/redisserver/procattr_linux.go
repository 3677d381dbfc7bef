package redisserver

import "syscall"

// sysProcAttr puts redis-server in its own process group, so a terminal's
// Ctrl-C reaches only us and we shut Redis down after our own workers, and
// asks the kernel to SIGKILL it if we die first.
//
// Pdeathsig fires when the OS thread that forked the child exits. Go only
// retires threads whose goroutine called runtime.LockOSThread and exited
// still locked, so do not call Start from such a goroutine.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
