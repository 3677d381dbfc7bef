//go:build !unix

package redisserver

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }
