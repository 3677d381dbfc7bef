// Package statehash is the codec of a run's state hash: the lease record
// of a task, the @-fields of a run, and the stored metadata and result of a
// task (@g: and @r: fields). It holds no Redis client: the Redis boundary (internal/rdb)
// reads and writes these values, and the pure replay package checks them
// against the fold.
package statehash

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/graflow-go/graflow/events"
)

// Hash fields of a run's state hash that are not task records. Task ids may
// not start with "@".
const (
	FieldRunStatus = "@status"
	FieldRunCursor = "@cursor"
	// FieldRunCommit is the commit token: the first event id of the last
	// projector commit that appended decisions.
	FieldRunCommit   = "@commit"
	FieldRunDirty    = "@dirty"
	FieldRunWorkflow = "@workflow"
	// FieldRunInput is the run's input (no field: none).
	FieldRunInput = "@input"
	// FieldRunTasks is the run's task count at submit (the finish's end
	// check adds FieldRunSpawned).
	FieldRunTasks = "@tasks"
	// FieldRunQuarantine holds why the projector set the run aside.
	FieldRunQuarantine = "@quarantine"
	// FieldRunSpawned counts the tasks added to the run by its handlers
	// (dynamic tasks), bounded per run.
	FieldRunSpawned = "@spawned"
	// FieldRunSucceeded counts the successes the finish script accepted
	// (one per succeeded task, as the import writes it): once it reaches
	// the run's task count, a finish checks whether it ends the run.
	FieldRunSucceeded = "@ok"
	// FieldSpawnPrefix prefixes a spawn record (SpawnField).
	FieldSpawnPrefix = "@s:"
	// FieldResultExpiryPrefix prefixes a result's expiry (ResultExpiryField).
	FieldResultExpiryPrefix = "@rx:"
	// FieldSignalPrefix prefixes the id of the signal a run took of a
	// name (SignalField).
	FieldSignalPrefix = "@signal:"
	// FieldChannelWritePrefix prefixes the field of a task's last channel
	// write ("event id|seq|incr's new value"), set by the channel write
	// script (internal/rdb): a write retried after its reply was lost
	// finds its own id there and is not applied twice.
	FieldChannelWritePrefix = "@cw:"
	// FieldMetaPrefix prefixes a task's stored metadata (MetaField).
	FieldMetaPrefix = "@g:"
	// FieldResultPrefix prefixes a task's accepted result (ResultField).
	FieldResultPrefix = "@r:"
)

// MetaField is the state hash field of task's static metadata (TaskMeta,
// JSON), written when the task enters the run (submit, spawn).
func MetaField(task string) string { return FieldMetaPrefix + task }

// ResultField is the state hash field of task's accepted result (JSON),
// written by the finish that accepted it.
func ResultField(task string) string { return FieldResultPrefix + task }

// SignalField is the state hash field that holds the id of the signal of
// name the run took (the signal script: one signal per name, a retried
// delivery of the same id harmless).
func SignalField(name string) string { return FieldSignalPrefix + name }

// ResultExpiryField is the state hash field that holds when task's stored
// result expires (Unix ms), set by the finish script that stored a result
// of a task with a result TTL; it stays after the result is deleted, so a
// read tells an expired result from one never stored.
func ResultExpiryField(task string) string { return FieldResultExpiryPrefix + task }

// SpawnField is the state hash field of task's spawn record: the ids of
// the sinks of the tasks it added (projector.Sinks), comma-separated
// (task ids hold no comma). A worker reads the records to find what a
// task's dependencies spawned (the task's waits).
func SpawnField(task string) string { return FieldSpawnPrefix + task }

// Record is a task's lease record in the run's state hash, maintained by the
// worker scripts and the projector's commits alike.
type Record struct {
	Status  events.TaskStatus
	Attempt int
	Epoch   int64
	Owner   string
}

// String encodes the record as stored: "status|attempt|epoch|owner".
func (r Record) String() string {
	return string(r.Status) + "|" + strconv.Itoa(r.Attempt) + "|" + strconv.FormatInt(r.Epoch, 10) + "|" + r.Owner
}

// ParseRecord decodes a stored record; "" (no field) is a pending task.
func ParseRecord(s string) (Record, error) {
	if s == "" {
		return Record{Status: events.TaskStatusPending}, nil
	}
	parts := strings.SplitN(s, "|", 4)
	if len(parts) != 4 {
		return Record{}, fmt.Errorf("malformed task record %q", s)
	}
	a, err1 := strconv.Atoi(parts[1])
	e, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return Record{}, fmt.Errorf("malformed task record %q: %w", s, err)
	}
	return Record{Status: events.TaskStatus(parts[0]), Attempt: a, Epoch: e, Owner: parts[3]}, nil
}

// TaskMeta is the static part of a task that workers need at claim time,
// stored as JSON in the run's dag hash. Short keys keep memory small.
//
// Deps come first in the encoding: the claim script reads them from the
// head of the JSON without decoding it (user args are never decoded in
// Lua), so keep the field order.
type TaskMeta struct {
	Deps        []string        `json:"d,omitempty"`
	Handler     string          `json:"h"`
	MaxAttempts int             `json:"m,omitempty"`
	TimeoutMS   int64           `json:"t,omitempty"`
	Args        json.RawMessage `json:"x,omitempty"`
	ResultTTLMS int64           `json:"rt,omitempty"`
}

// MetaOf builds the stored metadata of a task spec.
func MetaOf(s events.TaskSpec) TaskMeta {
	return TaskMeta{Handler: s.Handler, Deps: s.Deps, MaxAttempts: s.MaxAttempts, TimeoutMS: s.TimeoutMS, Args: s.Args, ResultTTLMS: s.ResultTTLMS}
}
