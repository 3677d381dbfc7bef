//go:build !linux

package integration

import "syscall"

// sysProcAttr: without Pdeathsig, children are killed by the tests' cleanups.
func sysProcAttr() *syscall.SysProcAttr { return nil }
