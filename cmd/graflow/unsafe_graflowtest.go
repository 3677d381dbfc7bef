//go:build graflowtest

package main

import (
	"github.com/spf13/pflag"

	"github.com/graflow-go/graflow/worker"
)

// testHooks says this binary has the test-only switches (graflowtest).
const testHooks = true

// unsafeWorkerFlags adds --unsafe-no-fencing to the worker command.
func unsafeWorkerFlags(fs *pflag.FlagSet) func(worker.Config) worker.Config {
	off := fs.Bool("unsafe-no-fencing", false, "TEST-ONLY: record results without the epoch check (chaos --break-fencing)")
	return func(c worker.Config) worker.Config {
		if *off {
			return worker.UnsafeNoFencing(c)
		}
		return c
	}
}
