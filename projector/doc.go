// Package projector folds a run's events into its state and decides what
// the run calls for next.
//
// The fold (Apply) and the decisions (Decide) are pure: no I/O, clock or
// randomness; replay uses the same code. The Projector service consumes
// the feed partitions, folds each pointed-at run's new events, and commits
// its decisions in one script per run with a compare-and-set on the run's
// head (cursor and commit token); any number of projectors may run. Its
// files are one service each: feed.go (feed reading), project.go (one
// run's projection), commit.go (building a commit), load.go (folding a
// log), delayed.go (due retries onto the queues; the commit queues every
// other dispatch itself), batch.go (a feed batch's runs together), quarantine.go
// (runs that cannot be processed), registry.go (registry and
// housekeeping), repair.go (re-dispatching lost messages).
package projector
