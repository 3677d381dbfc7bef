package rdb

import (
	"fmt"

	"github.com/graflow-go/graflow/internal/statehash"
	"hash/fnv"
	"regexp"
	"strconv"
	"strings"
)

// DefaultNamespace is the key prefix used when none is configured.
const DefaultNamespace = "graflow"

// DefaultPartitions is the number of partitions of a namespace: slots
// {p0}..{p<P-1>}, each holding its runs' keys, its feed stream, its share
// of every pool's queue streams and its delayed set, so that a run's every
// step is one script on one slot with no relay. One is right for a single
// Redis; on a cluster, partitions spread the work over masters. Every
// process of a namespace must use the same number (see CheckLayout).
const DefaultPartitions = 1

// MaxPartitions bounds a namespace's partitions.
const MaxPartitions = 1024

// LayoutVersion names the key layout CheckLayout records: 4 keeps a run's
// task metadata, results and input in its state hash (@g:, @r:, @input);
// 3 kept them in dag and results hashes of their own, with partition tags
// spread over the cluster's slot space (see partitionTags) as in 4; 2
// tagged partition N {pN}, wherever that hashed; 1 gave each run its own
// slot ({<run>}) and relayed dispatches through an outbox. A namespace of
// one partition had the same keys in layouts 2 and 3 ({p0}) and recorded
// "2:1".
const LayoutVersion = 4

// MaxPriority is the highest priority band; bands are 0..MaxPriority.
const MaxPriority = 9

// Consumer groups.
const (
	GroupWorkers    = "workers"
	GroupProjectors = "projectors"
)

// Hash fields of a run's state hash that are not task records (see
// statehash).
const (
	FieldRunStatus     = statehash.FieldRunStatus
	FieldRunCursor     = statehash.FieldRunCursor
	FieldRunCommit     = statehash.FieldRunCommit
	FieldRunDirty      = statehash.FieldRunDirty
	FieldRunWorkflow   = statehash.FieldRunWorkflow
	FieldRunInput      = statehash.FieldRunInput
	FieldRunQuarantine = statehash.FieldRunQuarantine
	FieldRunSpawned    = statehash.FieldRunSpawned
	FieldRunTasks      = statehash.FieldRunTasks
)

// MetaField and ResultField are a task's metadata and result fields in its
// run's state hash (see statehash).
func MetaField(task string) string { return statehash.MetaField(task) }

// ResultField is a task's result field in its run's state hash.
func ResultField(task string) string { return statehash.ResultField(task) }

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
//
// Layout (version 4): partition N's keys share one hash tag {T}, where T
// is "pN" or "pN.K" (partitionTags: the tags spread the partitions evenly
// over the slot space; one partition's tag is "p0"):
//
//	<ns>:{T}:r:<run>:log|state|channel   a run of partition N (its tasks'
//	                                    metadata and results: state fields)
//	<ns>:{T}:q:<pool>:<band>            the pool's queue streams in N
//	<ns>:{T}:qhi:<pool>                 set while a band above 0 may hold a message
//	<ns>:{T}:feed                                   N's projector feed
//	<ns>:{T}:delayed                                N's parked dispatches
//	<ns>:{T}:expiries                               N's result expiries
//
// A run's partition is a hash of its id (Partition). Keys of no run
// (indexes, registries, dead letters) keep their own slots.
type Keys struct {
	ns         string
	partitions int
	tags       []string // partition n's key prefix, hash tag included
}

// NewKeys returns the key builder for namespace ns ("" means
// DefaultNamespace) with DefaultPartitions.
func NewKeys(ns string) Keys { return NewKeysP(ns, DefaultPartitions) }

// NewKeysP returns the key builder for namespace ns with p partitions
// (p < 1 means DefaultPartitions).
func NewKeysP(ns string, p int) Keys {
	if ns == "" {
		ns = DefaultNamespace
	}
	if p < 1 {
		p = DefaultPartitions
	}
	p = min(p, MaxPartitions)
	k := Keys{ns: ns, partitions: p, tags: make([]string, p)}
	for n, t := range partitionTags(p) {
		k.tags[n] = ns + ":{" + t + "}:"
	}
	return k
}

// Namespace returns the key prefix.
func (k Keys) Namespace() string { return k.ns }

// Partitions returns the number of partitions.
func (k Keys) Partitions() int { return k.partitions }

// tag is partition n's key prefix, hash tag included.
func (k Keys) tag(n int) string { return k.tags[n] }

// PartitionTag is partition n's hash tag, braces included ("{p0}" for a
// namespace of one partition; see partitionTags for more).
func (k Keys) PartitionTag(n int) string {
	t := k.tags[n]
	return t[len(k.ns)+1 : len(t)-1]
}

// run is the prefix of run's keys.
func (k Keys) run(run string) string { return k.RunPrefix(k.Partition(run)) + run + ":" }

// RunPrefix is the prefix of the keys of partition part's runs: a run's
// keys are RunPrefix(Partition(run)) + run + ":" + what (the fetch script
// builds them from a message's run id).
func (k Keys) RunPrefix(part int) string { return k.tag(part) + "r:" }

// RunLog is the run's event stream: the source of truth.
func (k Keys) RunLog(run string) string { return k.run(run) + "log" }

// RunLogCompact is where the commit script copies a finished run's log to
// rename it over the log (a copy's listpacks are sized to fit); it never
// outlives the script.
func (k Keys) RunLogCompact(run string) string { return k.run(run) + "log-compact" }

// RunState is the run's hash: task records and @-fields, among them each
// task's metadata (@g:<task>) and accepted result (@r:<task>) and the
// run's input (@input).
func (k Keys) RunState(run string) string { return k.run(run) + "state" }

// RunOutbox was layout 1's list of dispatches decided but not yet
// relayed. Layout 2 enqueues in the deciding script and never writes it;
// it is kept in RunKeys so that deleting a run deletes one left by hand.
func (k Keys) RunOutbox(run string) string { return k.run(run) + "outbox" }

// RunChannel is the run-scoped key/value hash.
func (k Keys) RunChannel(run string) string { return k.run(run) + "channel" }

// Layout records the namespace's key layout and partition count
// ("2:<P>"), written by the first process (see CheckLayout).
func (k Keys) Layout() string { return k.ns + ":layout" }

// RepairRequested counts the requests of a repair made when queue entries
// were deleted while pending: a projector then repairs the running runs
// (rdb.Repair) and clears it if no newer request came meanwhile.
func (k Keys) RepairRequested() string { return k.ns + ":repair-requested" }

// RepairRequestedIn is partition n's repair request (RepairRequested's
// kind), set by the reclaim script in the step that finds its queue
// entries deleted. (Not "r…": a partition's keys that start with "r:" are
// its runs'.)
func (k Keys) RepairRequestedIn(n int) string { return k.tag(n) + "wants-repair" }

// RepairRequests lists every key a repair request may be in: the
// namespace's and each partition's.
func (k Keys) RepairRequests() []string {
	keys := []string{k.RepairRequested()}
	for n := range k.Partitions() {
		keys = append(keys, k.RepairRequestedIn(n))
	}
	return keys
}

// Quarantined maps quarantined runs to why (run id → reason): an index
// for operators, written even when the run's own keys cannot be.
func (k Keys) Quarantined() string { return k.ns + ":quarantined" }

// RunKeys lists every key of a run (for deletion and retention).
func (k Keys) RunKeys(run string) []string {
	return []string{k.RunLog(run), k.RunState(run), k.RunOutbox(run), k.RunChannel(run)}
}

// Queue is partition part's dispatch stream of a pool and priority band.
func (k Keys) Queue(part int, pool string, priority int) string {
	return k.tag(part) + "q:" + pool + ":" + strconv.Itoa(priority)
}

// QueuesPattern is a SCAN MATCH pattern that every queue stream of the
// namespace matches (every partition, pool and band; other keys of a
// partition may match too: check each with ParseQueue). Namespaces and
// pool names hold no glob characters.
func (k Keys) QueuesPattern() string { return k.ns + ":{p*}:q:*" }

// QueueHigh marks that a message may wait on one of a pool's bands above
// 0 in partition part: every writer of such a message sets it, and a fetch
// that finds those bands with nothing new deletes it, so that a fetch of a
// pool that only uses band 0 reads band 0 alone (enqueueLua derives the
// same name from a band stream's key).
func (k Keys) QueueHigh(part int, pool string) string {
	return k.tag(part) + "qhi:" + pool
}

// QueueFor is the dispatch stream that carries run's tasks of a pool and
// band: the one in run's partition.
func (k Keys) QueueFor(run, pool string, priority int) string {
	return k.Queue(k.Partition(run), pool, priority)
}

// Queues lists partition part's band streams of a pool, highest priority
// first (one slot: one XREADGROUP reads them all).
func (k Keys) Queues(part int, pool string) []string {
	out := make([]string, 0, MaxPriority+1)
	for p := MaxPriority; p >= 0; p-- {
		out = append(out, k.Queue(part, pool, p))
	}
	return out
}

// FetchMark is where consumer's last claiming fetch of a pool in
// partition part records what it read, so that the same call sent again
// answers the same (see fetchScript); it expires within a minute.
func (k Keys) FetchMark(part int, pool, consumer string) string {
	return k.tag(part) + "fetch:" + pool + ":" + consumer
}

// SignalWake is the stream that wakes worker's signal loop of partition
// part when a new wait joins it (see DB.WakeSignalLoop); it keeps one
// entry and expires SignalWakeTTL after the last wake.
func (k Keys) SignalWake(part int, worker string) string {
	return k.tag(part) + "signal-wake:" + worker
}

// AllQueues lists a pool's band streams of every partition.
func (k Keys) AllQueues(pool string) []string {
	out := make([]string, 0, k.partitions*(MaxPriority+1))
	for n := range k.partitions {
		out = append(out, k.Queues(n, pool)...)
	}
	return out
}

// DeadLetter is the dead-letter set: tasks that failed for good, member
// "<run>|<task>" scored by time (a set, so recording twice is harmless).
func (k Keys) DeadLetter() string { return k.ns + ":{dlq}" }

// DeadLetterInfo holds each dead letter's details (JSON), same slot.
func (k Keys) DeadLetterInfo() string { return k.ns + ":{dlq}:info" }

// Feed is partition n's projector feed.
func (k Keys) Feed(n int) string { return k.tag(n) + "feed" }

// FloorFeed is the bench floor's feed of lane l (-1: the fan-out floor's),
// in partition 0's slot with the runs the floor writes there.
func (k Keys) FloorFeed(l int) string { return k.tag(0) + "floor-feed:" + strconv.Itoa(l) }

// FeedFor is the feed partition that carries run's pointers.
func (k Keys) FeedFor(run string) string { return k.Feed(k.Partition(run)) }

// Partition returns run's partition.
func (k Keys) Partition(run string) int {
	if k.partitions == 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(run))
	return int(h.Sum32() % uint32(k.partitions))
}

// Delayed is partition n's set of dispatches due later (retries), scored
// by due ms.
func (k Keys) Delayed(n int) string { return k.tag(n) + "delayed" }

// DelayedFor is the delayed set of run's partition.
func (k Keys) DelayedFor(run string) string { return k.Delayed(k.Partition(run)) }

// Expiries is partition n's set of stored results to expire (tasks with a
// result TTL), members "<run>|<task>" scored by due Unix ms.
func (k Keys) Expiries(n int) string { return k.tag(n) + "expiries" }

// ExpiriesFor is the expiry set of run's partition.
func (k Keys) ExpiriesFor(run string) string { return k.Expiries(k.Partition(run)) }

// EndPolicy is partition n's end policy (a hash: compact, ttl ms), which a
// projector records for the finishes that end runs.
func (k Keys) EndPolicy(n int) string { return k.tag(n) + "end-policy" }

// EndPolicyFor is the end policy of run's partition.
func (k Keys) EndPolicyFor(run string) string { return k.EndPolicy(k.Partition(run)) }

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

// CheckPartitions returns the configuration error of a namespace
// partition count p (0 means DefaultPartitions), prefixed with the
// component's name, or nil.
func CheckPartitions(component string, p int) error {
	if p < 0 || p > MaxPartitions {
		return fmt.Errorf("%s: NamespacePartitions %d out of range 1..%d (0: the default, %d)", component, p, MaxPartitions, DefaultPartitions)
	}
	return nil
}

// ParseQueue returns the partition, pool and priority band of a queue
// stream key built by Queue; ok is false for any other key.
func (k Keys) ParseQueue(stream string) (part int, pool string, priority int, ok bool) {
	rest, found := strings.CutPrefix(stream, k.ns+":{p")
	if !found {
		return 0, "", 0, false
	}
	num, _, _ := strings.Cut(rest, "}")
	num, _, _ = strings.Cut(num, ".")
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 || n >= k.partitions {
		return 0, "", 0, false
	}
	rest, found = strings.CutPrefix(stream, k.tags[n]+"q:")
	if !found {
		return 0, "", 0, false
	}
	i := strings.LastIndexByte(rest, ':')
	if i < 1 {
		return 0, "", 0, false
	}
	p, err := strconv.Atoi(rest[i+1:])
	if err != nil || p < 0 || p > MaxPriority {
		return 0, "", 0, false
	}
	return n, rest[:i], p, true
}
