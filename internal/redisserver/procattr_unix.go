//go:build unix && !linux

package redisserver

import "syscall"

// sysProcAttr puts redis-server in its own process group, so a terminal's
// Ctrl-C reaches only us. Without Pdeathsig outside Linux, a parent that
// dies without calling Stop leaves the server running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
