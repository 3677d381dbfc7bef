//go:build !graflowtest

package main

import (
	"github.com/spf13/pflag"

	"github.com/graflow-go/graflow/worker"
)

// testHooks says this binary has the test-only switches: it does not.
// Fencing cannot be switched off, and crash points do nothing; "make
// build-testhooks" builds a binary that has them (-tags graflowtest).
const testHooks = false

// unsafeWorkerFlags adds nothing: no flag or variable of a production
// binary weakens fencing.
func unsafeWorkerFlags(*pflag.FlagSet) func(worker.Config) worker.Config {
	return func(c worker.Config) worker.Config { return c }
}
