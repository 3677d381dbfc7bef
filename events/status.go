package events

// TaskStatus is the lifecycle state of a task, as the fold derives it and
// the run's state hash stores it (the worker scripts keep the same strings
// in Lua: "status|attempt|epoch|owner" records).
type TaskStatus string

// Task statuses.
const (
	TaskStatusPending       TaskStatus = "pending"        // waiting for dependencies
	TaskStatusDispatched    TaskStatus = "dispatched"     // in a queue (or the delayed set) for its attempt
	TaskStatusRunning       TaskStatus = "running"        // claimed by a worker under an epoch
	TaskStatusAwaitingRetry TaskStatus = "awaiting_retry" // failed, a retry is to be scheduled
	TaskStatusSucceeded     TaskStatus = "succeeded"
	TaskStatusFailed        TaskStatus = "failed" // failed for good
	TaskStatusSkipped       TaskStatus = "skipped"
	TaskStatusCancelled     TaskStatus = "cancelled"
)

// Terminal reports whether no further transition is possible.
func (s TaskStatus) Terminal() bool {
	switch s {
	case TaskStatusSucceeded, TaskStatusFailed, TaskStatusSkipped, TaskStatusCancelled:
		return true
	}
	return false
}

// RunStatus is the lifecycle state of a run (the state hash's @status).
type RunStatus string

// Run statuses.
const (
	RunStatusUnknown   RunStatus = ""
	RunStatusRunning   RunStatus = "running"
	RunStatusSucceeded RunStatus = "succeeded"
	RunStatusFailed    RunStatus = "failed"
	RunStatusCancelled RunStatus = "cancelled"
	// RunStatusQuarantined: set aside for good by the projector (the
	// event RunQuarantined); terminal.
	RunStatusQuarantined RunStatus = "quarantined"
)

// Terminal reports whether the run has ended.
func (s RunStatus) Terminal() bool {
	return s == RunStatusSucceeded || s == RunStatusFailed || s == RunStatusCancelled || s == RunStatusQuarantined
}
