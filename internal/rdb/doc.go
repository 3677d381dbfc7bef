// Package rdb is the Redis boundary of Graflow: the key schema, every Lua
// script and the Go wrapper of every Redis call of the engine. Nobody else
// formats a key string, holds Lua source or issues a Redis command (besides
// the connection constructor, tests and the benchmark's raw ceiling).
//
// Layout 2 is partition-scoped: a run's keys, its partition's feed, its
// partition's share of every pool's queue streams and its partition's
// delayed set share the hash tag {p<N>} (see Keys), so each step of a run
// is one script on one slot: submit appends and points the feed, a
// projector commit appends its decisions and enqueues their dispatches, a
// finish appends the outcome, points the feed and acks its queue message.
// Every script touches the keys of one hash slot, so the engine runs
// unchanged on Redis Cluster.
//
// # Where things live
//
// The files follow the flows. Each script is a package-level redis.Script
// with a comment giving its KEYS, ARGV and reply, right above the Go method
// that runs it.
//
//   - keys.go, layout.go: the key schema and the namespace's layout record.
//   - rdb.go: the DB and what several flows share (dispatches, the feed
//     pointer, consumer groups, script loading, pipelines, reply readers).
//   - lua.go: the Lua several scripts share (prelude, ackLua) and Scripts,
//     the list of every engine script.
//   - submit.go: creating a run (the submit script) and indexing it.
//   - project.go: the projector's feed, run loads and log reads, delayed
//     moves and quarantine; project_commit.go: its commit.
//   - queue_claim.go: fetching and claiming queue messages;
//     queue_finish.go: recording outcomes; queue.go: the rest of a claim's
//     life (heartbeats, acks, release and moves, redeliveries, dead letters).
//   - registry.go: the worker and projector registries, housekeeping locks,
//     consumer pruning; housekeeping.go: sweeping the run index and the dead
//     letters; repair.go: re-dispatching tasks whose message was lost.
//   - cancel.go: cancelling a run (the cancel script).
//   - signal.go: signals delivered to a run (the signal script), and the
//     reads a task waiting for one makes (FindSignal, BlockOnLogs).
//   - admin.go: the operators' writes (import, resume, gc, requeue,
//     dead-letter and index upkeep).
//   - inspect.go: reading runs and their logs, following a log;
//     inspect_queues.go: where a dispatch is, queue statistics, dead letters.
//   - observe.go: what graflow bench, chaos and dev watch from outside.
//   - submitter.go: concurrent submits sent together (Submitter).
//   - floor.go, floor_fanout.go: the bench's floor workload (its scripts and
//     their pipelines), not part of the engine.
package rdb
