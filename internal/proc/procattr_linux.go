package proc

import "syscall"

// sysProcAttr: own process group (a terminal's Ctrl-C reaches only the
// parent, which stops children in order) and SIGKILL if the parent dies.
// Pdeathsig fires when the forking OS thread exits; Go retires threads only
// for goroutines that exit while locked with runtime.LockOSThread.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
