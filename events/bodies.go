package events

import "encoding/json"

// TaskSpec is one node of a workflow DAG as carried by run_submitted and
// tasks_added. Zero values mean the defaults documented on each field.
type TaskSpec struct {
	// ID is unique in the run: letters, digits and "_.:-", not starting with "@".
	ID string `json:"id"`
	// Handler is the registered handler name (a stable string, not a Go name).
	Handler string `json:"handler"`
	// Deps are the ids of the tasks that must succeed first.
	Deps []string `json:"deps,omitempty"`
	// Pool routes the task to workers serving it; "" means DefaultPool.
	Pool string `json:"pool,omitempty"`
	// Priority is 0 (default, lowest) to 9 (highest) within the pool.
	Priority int `json:"priority,omitempty"`
	// MaxAttempts bounds retries; 0 means 1 (no retry).
	MaxAttempts int `json:"max_attempts,omitempty"`
	// TimeoutMS bounds one attempt; 0 means no timeout.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// Args are static, handler-specific arguments.
	Args json.RawMessage `json:"args,omitempty"`
	// Join is the policy over Deps (nil: every dependency must succeed).
	Join *Join `json:"join,omitempty"`
	// StartAfterMS delays the task's dispatch by this long after it
	// became ready (its dependencies met); 0: at once.
	StartAfterMS int64 `json:"start_after_ms,omitempty"`
	// ResultTTLMS expires the task's stored result this long after the
	// task succeeded (0: kept as long as the run). The task_succeeded
	// event keeps the result in the log; reads of the stored result
	// (dependent tasks, Client.Result) after the TTL are an error.
	ResultTTLMS int64 `json:"result_ttl_ms,omitempty"`
}

// RunSubmittedBody is the body of run_submitted: the whole DAG and input.
type RunSubmittedBody struct {
	Workflow string          `json:"workflow"`
	Tasks    []TaskSpec      `json:"tasks"`
	Input    json.RawMessage `json:"input,omitempty"`
	// Traceparent is the W3C trace context of the submit (its span's
	// traceparent), absent when the submitter was not traced: the spans
	// of the run's projection and tasks, in any process, join its trace.
	Traceparent string `json:"traceparent,omitempty"`
}

// TaskDispatchedBody is the body of task_dispatched.
type TaskDispatchedBody struct {
	Pool     string `json:"pool"`
	Priority int    `json:"priority"`
	// DelayMS is the task's StartAfterMS, and DueMS (Unix ms) when it is
	// due: the dispatch waits in the partition's delayed set until then.
	// The task is due DelayMS after it became ready: the time of the
	// event that made it so (its run_submitted's own time, or the log
	// entry's time of its tasks_added, its last dependency's success, a
	// requeue), or of the projector's commit that dispatched it if that
	// is earlier.
	DelayMS int64 `json:"delay_ms,omitempty"`
	DueMS   int64 `json:"due_ms,omitempty"`
}

// TaskHeartbeatBody is the body of task_heartbeat.
type TaskHeartbeatBody struct {
	Progress string `json:"progress,omitempty"`
}

// TaskSucceededBody is the body of task_succeeded.
type TaskSucceededBody struct {
	Result json.RawMessage `json:"result,omitempty"`
}

// FailureKind says why an attempt failed.
type FailureKind string

// Failure kinds.
const (
	FailureError   FailureKind = "error"   // the handler returned an error
	FailurePanic   FailureKind = "panic"   // the handler panicked
	FailureTimeout FailureKind = "timeout" // the attempt ran past its timeout
	FailurePoison  FailureKind = "poison"  // delivered too often without finishing
	FailureUnknown FailureKind = "unknown_handler"
)

// TaskFailedBody is the body of task_failed.
type TaskFailedBody struct {
	Error string      `json:"error"`
	Kind  FailureKind `json:"kind"`
	// Final is true when no retry follows (permanent error or attempts used up).
	Final bool `json:"final"`
}

// TaskRetryScheduledBody is the body of task_retry_scheduled. The event's
// Attempt is the new attempt number.
type TaskRetryScheduledBody struct {
	// DelayMS is the backoff; DueMS (Unix ms) is DelayMS after the
	// failure's log entry (or the projector's commit, if earlier).
	DelayMS int64 `json:"delay_ms"`
	DueMS   int64 `json:"due_ms"`
}

// TaskReclaimedBody is the body of task_reclaimed.
type TaskReclaimedBody struct {
	From       string `json:"from"`
	Deliveries int64  `json:"deliveries,omitempty"`
	// Reason is "lease expired" (XAUTOCLAIM) or "handed back" (drain).
	Reason string `json:"reason,omitempty"`
}

// TaskSkippedBody is the body of task_skipped.
type TaskSkippedBody struct {
	Cause string `json:"cause"`
}

// TaskRequeuedBody is the body of task_requeued: a task that failed for
// good (or was skipped behind one) is given another attempt, reopening its
// run. Written by "graflow dlq requeue" for the failed task and by the
// projector for the skipped tasks behind it.
type TaskRequeuedBody struct {
	Cause string `json:"cause"`
}

// TasksAddedBody is the body of tasks_added.
type TasksAddedBody struct {
	Tasks []TaskSpec `json:"tasks"`
}

// ChannelWrittenBody is the body of channel_written: a task wrote a key
// of its run's channel (the event's task, attempt, epoch and worker are
// the writer's claim).
type ChannelWrittenBody struct {
	Key string `json:"key"`
	// Op is the write: "set", "append" (an element appended to a JSON
	// array) or "incr" (an integer increment).
	Op string `json:"op"`
	// Value is the key's whole new value (JSON), whatever the op: the
	// last channel_written of a key holds its value.
	Value json.RawMessage `json:"value"`
}

// SignalReceivedBody is the body of signal_received.
type SignalReceivedBody struct {
	// Name is the signal's name (like a task id: letters, digits and
	// "_.:-", not starting with "@"); a run takes one signal per name.
	Name string `json:"name"`
	// ID is the sender's idempotency key: a delivery retried with the
	// same id is not recorded twice.
	ID string `json:"id"`
	// By names the sender as it said (free text: a user name).
	By string `json:"by,omitempty"`
	// Payload is the signal's JSON value, the waiting task's result.
	Payload json.RawMessage `json:"payload"`
}

// RunFailedBody is the body of run_failed.
type RunFailedBody struct {
	Task  string `json:"task,omitempty"`
	Cause string `json:"cause"`
}

// RunCancelledBody is the body of run_cancelled.
type RunCancelledBody struct {
	// Reason is the canceller's, free text.
	Reason string `json:"reason,omitempty"`
	// Tasks counts the tasks the cancel ended (each has its
	// task_cancelled right after this event).
	Tasks int `json:"tasks"`
}

// TaskCancelledBody is the body of task_cancelled.
type TaskCancelledBody struct {
	// From is the task's status when the run was cancelled (pending,
	// dispatched, running or awaiting_retry).
	From TaskStatus `json:"from"`
	// Owner is the worker that held the claim of a running task (its
	// handler is told through its next heartbeat; its result is
	// rejected).
	Owner string `json:"owner,omitempty"`
}

// RunQuarantinedBody is the body of run_quarantined.
type RunQuarantinedBody struct {
	// Reason is the error that set the run aside.
	Reason string `json:"reason"`
	// Entries are the ids of the log entries that cannot be decoded or
	// folded, when that is the reason.
	Entries []string `json:"entries,omitempty"`
}

// ResultRejectedBody is the body of result_rejected: a worker sent something
// for a claim it no longer holds.
type ResultRejectedBody struct {
	// What was rejected: "result", "failure", "heartbeat".
	What   string `json:"what"`
	Reason string `json:"reason"`
	// CurrentEpoch is the task's epoch when the stale message arrived.
	CurrentEpoch int64 `json:"current_epoch"`
}

// DefaultPool is the pool of a task that names none.
const DefaultPool = "default"
