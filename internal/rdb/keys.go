// Package rdb owns the Redis key schema and every Lua script of Graflow.
// Nobody else formats a key string or holds Lua source.
//
// A run's keys share the hash tag {<run id>}; a pool's queue streams share
// {q:<pool>}; every script touches the keys of one hash slot, so the engine
// runs unchanged on Redis Cluster.
package rdb

import (
	"fmt"
	"hash/fnv"
	"regexp"
	"strconv"
	"strings"
)

// DefaultNamespace is the key prefix used when none is configured.
const DefaultNamespace = "graflow"

// DefaultFeedPartitions is the number of projector feed streams. Every
// process of a namespace must use the same number.
const DefaultFeedPartitions = 4

// MaxPriority is the highest priority band; bands are 0..MaxPriority.
const MaxPriority = 9

// Consumer groups.
const (
	GroupWorkers    = "workers"
	GroupProjectors = "projectors"
)

// Hash fields of a run's state hash that are not task records. Task ids may
// not start with "@".
const (
	FieldRunStatus = "@status"
	FieldRunCursor = "@cursor"
	// FieldRunCommit is the commit token: the first event id of the last
	// projector commit that appended decisions (see Head).
	FieldRunCommit   = "@commit"
	FieldRunDirty    = "@dirty"
	FieldRunWorkflow = "@workflow"
	FieldRunInput    = "@input" // in the results hash
	// FieldRunQuarantine holds why the projector set the run aside.
	FieldRunQuarantine = "@quarantine"
)

var namespaceRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// ValidNamespace reports whether ns can prefix keys.
func ValidNamespace(ns string) error {
	if !namespaceRE.MatchString(ns) {
		return fmt.Errorf("invalid namespace %q: use 1-64 letters, digits, '_', '.', '-'", ns)
	}
	return nil
}

// Keys builds the keys of one namespace. The zero value is not usable; use
// NewKeys.
type Keys struct {
	ns         string
	partitions int
}

// NewKeys returns the key builder for namespace ns ("" means
// DefaultNamespace) with DefaultFeedPartitions.
func NewKeys(ns string) Keys {
	if ns == "" {
		ns = DefaultNamespace
	}
	return Keys{ns: ns, partitions: DefaultFeedPartitions}
}

// Namespace returns the key prefix.
func (k Keys) Namespace() string { return k.ns }

// Partitions returns the number of feed partitions.
func (k Keys) Partitions() int { return k.partitions }

// RunLog is the run's event stream: the source of truth.
func (k Keys) RunLog(run string) string { return k.ns + ":{" + run + "}:log" }

// RunLogCompact is where the commit script copies a finished run's log to
// rename it over the log (a copy's listpacks are sized to fit); it never
// outlives the script.
func (k Keys) RunLogCompact(run string) string { return k.ns + ":{" + run + "}:log-compact" }

// RunState is the run's projection hash: task records and @-fields.
func (k Keys) RunState(run string) string { return k.ns + ":{" + run + "}:state" }

// RunDAG is the run's static task metadata hash (task id → JSON meta).
func (k Keys) RunDAG(run string) string { return k.ns + ":{" + run + "}:dag" }

// RunResults holds accepted task results (task id → JSON) and @input.
func (k Keys) RunResults(run string) string { return k.ns + ":{" + run + "}:results" }

// RunOutbox is the list of dispatches decided but not yet relayed.
func (k Keys) RunOutbox(run string) string { return k.ns + ":{" + run + "}:outbox" }

// RunChannel is the run-scoped key/value hash.
func (k Keys) RunChannel(run string) string { return k.ns + ":{" + run + "}:channel" }

// RepairRequested is set when queue entries were deleted while pending: a
// projector then repairs the running runs (rdb.Repair) and clears it.
func (k Keys) RepairRequested() string { return k.ns + ":repair-requested" }

// Quarantined maps quarantined runs to why (run id → reason): an index
// for operators, written even when the run's own keys cannot be.
func (k Keys) Quarantined() string { return k.ns + ":quarantined" }

// RunKeys lists every key of a run (for deletion and retention).
func (k Keys) RunKeys(run string) []string {
	return []string{k.RunLog(run), k.RunState(run), k.RunDAG(run), k.RunResults(run), k.RunOutbox(run), k.RunChannel(run)}
}

// Queue is the dispatch stream of a pool and priority band.
func (k Keys) Queue(pool string, priority int) string {
	return k.ns + ":{q:" + pool + "}:" + strconv.Itoa(priority)
}

// Queues lists a pool's band streams, highest priority first.
func (k Keys) Queues(pool string) []string {
	out := make([]string, 0, MaxPriority+1)
	for p := MaxPriority; p >= 0; p-- {
		out = append(out, k.Queue(pool, p))
	}
	return out
}

// DeadLetter is the dead-letter set: tasks that failed for good, member
// "<run>|<task>" scored by time (a set, so recording twice is harmless).
func (k Keys) DeadLetter() string { return k.ns + ":{dlq}" }

// DeadLetterInfo holds each dead letter's details (JSON), same slot.
func (k Keys) DeadLetterInfo() string { return k.ns + ":{dlq}:info" }

// Feed is projector feed partition n.
func (k Keys) Feed(n int) string { return k.ns + ":{feed:" + strconv.Itoa(n) + "}" }

// FeedFor is the feed partition that carries run's pointers.
func (k Keys) FeedFor(run string) string { return k.Feed(k.Partition(run)) }

// Partition returns run's feed partition.
func (k Keys) Partition(run string) int {
	h := fnv.New32a()
	h.Write([]byte(run))
	return int(h.Sum32() % uint32(k.partitions))
}

// Delayed is the set of dispatches due later (retries), scored by due ms.
func (k Keys) Delayed() string { return k.ns + ":delayed" }

// Runs is the run index, scored by submit time in ms.
func (k Keys) Runs() string { return k.ns + ":runs" }

// Workers is the set of live worker ids.
func (k Keys) Workers() string { return k.ns + ":workers" }

// Worker is a worker's metadata hash (expires unless refreshed).
func (k Keys) Worker(id string) string { return k.ns + ":worker:" + id }

// WorkersExpiry scores each registered worker by when its registry hash
// expires (ms), so pruning reads only the expired ones.
func (k Keys) WorkersExpiry() string { return k.ns + ":workers:expiry" }

// Projectors is the set of live projector ids.
func (k Keys) Projectors() string { return k.ns + ":projectors" }

// Projector is a projector's metadata hash (expires unless refreshed).
func (k Keys) Projector(id string) string { return k.ns + ":projector:" + id }

// ProjectorsExpiry scores each registered projector by when its hash
// expires (ms).
func (k Keys) ProjectorsExpiry() string { return k.ns + ":projectors:expiry" }

// Lock is a housekeeping lock (SET NX PX): one process of the namespace
// does a periodic chore per interval.
func (k Keys) Lock(name string) string { return k.ns + ":lock:" + name }

// Idempotency maps a caller's idempotency key to a run id.
func (k Keys) Idempotency(key string) string { return k.ns + ":idem:" + key }

// CheckConnection returns the configuration errors every component shares:
// a missing Redis client and an invalid namespace, prefixed with the
// component's name (for errors.Join in each Config.validate).
func CheckConnection(component string, hasRedis bool, ns string) []error {
	var errs []error
	if !hasRedis {
		errs = append(errs, fmt.Errorf("%s: Config.Redis is required", component))
	}
	if err := ValidNamespace(ns); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", component, err))
	}
	return errs
}

// ParseQueue returns the pool and priority band of a queue stream key
// built by Queue; ok is false for any other key.
func (k Keys) ParseQueue(stream string) (pool string, priority int, ok bool) {
	rest, found := strings.CutPrefix(stream, k.ns+":{q:")
	if !found {
		return "", 0, false
	}
	pool, band, found := strings.Cut(rest, "}:")
	if !found {
		return "", 0, false
	}
	p, err := strconv.Atoi(band)
	if err != nil || p < 0 || p > MaxPriority {
		return "", 0, false
	}
	return pool, p, true
}
