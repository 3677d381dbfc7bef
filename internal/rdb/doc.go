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
package rdb
