// Package testlog holds what tests use to wait on a component's log: a
// writer that signals when a line holding a text is written. Tests wait on
// it rather than sleep. No production code imports it.
package testlog
