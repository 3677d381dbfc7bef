package projector

import (
	"encoding/json"
	"time"

	"github.com/graflow-go/graflow/events"
)

// TaskStatus is the lifecycle state of a task (events.TaskStatus: the
// statuses are defined once, where the Redis boundary can use them too).
type TaskStatus = events.TaskStatus

// Task statuses (see events).
const (
	TaskPending       = events.TaskStatusPending
	TaskDispatched    = events.TaskStatusDispatched
	TaskRunning       = events.TaskStatusRunning
	TaskAwaitingRetry = events.TaskStatusAwaitingRetry
	TaskSucceeded     = events.TaskStatusSucceeded
	TaskFailed        = events.TaskStatusFailed
	TaskSkipped       = events.TaskStatusSkipped
	TaskCancelled     = events.TaskStatusCancelled
)

// RunStatus is the lifecycle state of a run (events.RunStatus).
type RunStatus = events.RunStatus

// Run statuses (see events).
const (
	RunUnknown     = events.RunStatusUnknown
	RunRunning     = events.RunStatusRunning
	RunSucceeded   = events.RunStatusSucceeded
	RunFailed      = events.RunStatusFailed
	RunCancelled   = events.RunStatusCancelled
	RunQuarantined = events.RunStatusQuarantined
)

// Task is the folded state of one task.
type Task struct {
	Spec events.TaskSpec `json:"spec"`
	// Lease fields, also maintained by the worker scripts in Redis.
	Status  TaskStatus `json:"status"`
	Attempt int        `json:"attempt"`
	Epoch   int64      `json:"epoch"`
	Owner   string     `json:"owner,omitempty"`
	// Error is the last failure message.
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	// ResultExpiresMS is when the stored result expires (Unix ms: the
	// task_succeeded event's time plus Spec.ResultTTLMS; 0: never). Result
	// keeps the value the log holds.
	ResultExpiresMS int64 `json:"result_expires_ms,omitempty"`
	// Waits lists the spawned tasks this task waits for besides
	// Spec.Deps: the sinks of what its dependencies spawned, transitively
	// (see spawn.go and docs/workflows.md, "Dynamic tasks").
	Waits []string `json:"waits,omitempty"`

	// readyMS is when the task last became ready (the time of the event
	// that made it so, eventMS: its entry into the run, its last
	// dependency's success, a requeue; Unix ms), failedMS when its last
	// failure put it in awaiting_retry: the delays of its start_after and
	// of its retry count from them, not from the projector's commit.
	readyMS  int64
	failedMS int64
	doomedMS int64     // when a dependency's end doomed it to be skipped (Unix ms)
	waiting  int       // dependencies and waits not yet succeeded
	succ     []int     // indexes of dependent (and waiting) tasks
	sinks    []int     // the sinks of the tasks this task spawned
	tally    joinTally // a tolerant join's dependencies by how they ended (join.go)
}

// Run is the folded state of a run: a pure function of its events.
//
// A Run is not safe for concurrent use.
type Run struct {
	ID       string          `json:"id"`
	Workflow string          `json:"workflow"`
	Status   RunStatus       `json:"status"`
	Input    json.RawMessage `json:"input,omitempty"`
	Tasks    []*Task         `json:"tasks"`
	// Traceparent is run_submitted's W3C trace context ("" untraced): the
	// parent of the projector's spans for the run.
	Traceparent string `json:"traceparent,omitempty"`
	// FailedTask and Cause explain a failed run.
	FailedTask string `json:"failed_task,omitempty"`
	Cause      string `json:"cause,omitempty"`
	// LastSeq is the stream id of the last event folded.
	LastSeq string `json:"last_seq"`
	// Events counts the events folded (duplicates excluded).
	Events int `json:"events"`

	index map[string]int
	open  int // tasks not terminal
	// depScans counts the dependencies depsAlive looked at: a test bounds
	// the fold's work on a wide fan-in with it.
	depScans int
	fails    int // tasks failed for good

	// Work queues read by Decide, in deterministic order. Entries go stale
	// when the task moves on; Apply drops stale entries at the head.
	ready queue // pending tasks whose dependencies all succeeded
	retry queue // tasks awaiting a retry
	skip  queue // pending tasks with a failed/skipped dependency
	// unskip holds skipped tasks behind a requeued task.
	unskip queue
	// requeues holds the ids of the task_requeued events applied.
	requeues map[string]bool
	// noResults drops results as they are folded (the live projector's
	// cache: decisions never read them, and they may be large).
	noResults bool
	// at is the time of the event being applied (Unix ms).
	at int64
}

// NewRun returns the empty state of run id, before any event.
func NewRun(id string) *Run { return &Run{ID: id, index: map[string]int{}} }

// Task returns the task with the given id, or nil.
func (r *Run) Task(id string) *Task {
	i, ok := r.index[id]
	if !ok {
		return nil
	}
	return r.Tasks[i]
}

// Open is the number of tasks not yet in a terminal state.
func (r *Run) Open() int { return r.open }

type queueEntry struct {
	task  int
	cause string
}

type queue struct {
	items []queueEntry
	head  int
}

func (q *queue) push(e queueEntry) { q.items = append(q.items, e) }

// trim drops stale entries at the head, and the backing array when empty.
func (q *queue) trim(stale func(queueEntry) bool) {
	for q.head < len(q.items) && stale(q.items[q.head]) {
		q.head++
	}
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
}

// ResultExpired reports whether the task's stored result has expired at
// now (its ResultTTL passed since it succeeded).
func (t *Task) ResultExpired(now time.Time) bool {
	return t.ResultExpiresMS > 0 && now.UnixMilli() >= t.ResultExpiresMS
}
