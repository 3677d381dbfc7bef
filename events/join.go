package events

// JoinPolicy says when a task with several dependencies (a fan-in, the
// successor of a parallel group) runs, and when it is skipped.
type JoinPolicy string

// Join policies.
const (
	// JoinAll (the default, also ""): every dependency must succeed; the
	// task is skipped as soon as one fails, is skipped or is cancelled.
	JoinAll JoinPolicy = "all"
	// JoinBestEffort: the task runs once every dependency has ended,
	// whatever succeeded (even none); it is never skipped for a
	// dependency.
	JoinBestEffort JoinPolicy = "best_effort"
	// JoinAtLeast: the task runs once every dependency has ended if at
	// least Join.N of them succeeded; it is skipped as soon as N can no
	// longer be reached.
	JoinAtLeast JoinPolicy = "at_least"
	// JoinCritical: the task runs once every dependency has ended if every
	// dependency in Join.Critical succeeded (the others may fail); it is
	// skipped as soon as a critical one fails, is skipped or is cancelled.
	JoinCritical JoinPolicy = "critical"
)

// Join is a task's join policy over its dependencies. A task that runs
// after some dependencies failed sees which ones (worker.Task.FailedDeps):
// they have no result.
type Join struct {
	Policy JoinPolicy `json:"policy"`
	// N is at_least's bar (1 to the number of dependencies).
	N int `json:"n,omitempty"`
	// Critical lists critical's dependencies that must succeed (a
	// non-empty subset of Deps).
	Critical []string `json:"critical,omitempty"`
}

// Strict reports whether j is the default policy (every dependency must
// succeed). A nil Join is strict.
func (j *Join) Strict() bool { return j == nil || j.Policy == "" || j.Policy == JoinAll }
