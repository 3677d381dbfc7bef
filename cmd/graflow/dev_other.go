//go:build !linux

package main

import "syscall"

// devSysProcAttr: outside Linux there is no Pdeathsig, so workers share the
// terminal's process group (Ctrl-C reaches them too, and they drain), and a
// "graflow dev" killed with SIGKILL leaves them running.
func devSysProcAttr() *syscall.SysProcAttr { return nil }

// lockDir does not lock outside Linux: do not run two "graflow dev" on one
// data directory there.
func lockDir(string) (func(), error) { return func() {}, nil }
